"""Run a submission's Jupyter kernel inside a bubblewrap sandbox.

nbgrader stays outside: it reads the gradebook, restores the instructor's test cells and saves
the grades, and it holds the notebook it executes (with the hidden tests) in its own memory.
Only the kernel, the process that runs student code, is sandboxed. nbgrader starts it through
the kernelspec ``kernels/sslkit-sandbox/kernel.json``, whose command is this file:

    python sandbox.py kernel -f CONNECTION_FILE      (run by jupyter_client, not by hand)
    python sandbox.py check                          (does the kernel start here? exit 1 if not)

The kernel process tree sees (see README.md, "The sandbox", for what this does not cover):

    /usr, /bin, /lib...   the system, read-only (and /etc/fonts, fontconfig's settings)
    the interpreter       sys.prefix (the virtual environment) and sys.base_prefix, read-only
                          (at their real paths, and where a symbolic link leads there, at the
                          linked path too)
    sslkit                the installed package's folder, read-only
    /submission           a private copy of the submission's folder without its notebooks
                          (read-write; its working directory and HOME)
    /ipc                  the kernel's unix sockets and connection file (read-write)
    /tmp                  a private empty tmpfs;  /proc, /dev: its own, minimal

and nothing else: not the course folder (source notebooks, gradebook, other submissions), not
the autograded notebook holding the hidden tests, not the instructor's home. It has its own
network namespace (loopback only: no network), pid namespace (everything it starts dies with
it), runs as an unprivileged uid (61000 + SSLKIT_SANDBOX_SLOT when the grader is root) with no
capabilities, and under these limits (environment variables, read when a kernel starts):

    SSLKIT_SANDBOX_CPU       CPU seconds per process                    (default 600)
    SSLKIT_SANDBOX_MEMORY    address space per process, MiB              (default 6144)
    SSLKIT_SANDBOX_NPROC     processes and threads of the sandbox uid    (default 128)
    SSLKIT_SANDBOX_FSIZE     largest file it may write, MiB              (default 512)
    SSLKIT_SANDBOX_WALL      wall-clock seconds for the whole notebook   (default 1800)

The per-cell wall-clock limit is nbgrader's ``Execute.timeout`` (nbgrader_config.py).

jupyter_client talks to a kernel over TCP by default, which a kernel without network cannot
serve; nbgrader_config.py selects the ``ipc`` transport (unix sockets). jupyter_client expects
the sockets at ``<ip>-<port>`` beside its connection file; the kernel creates them as
``/ipc/kernel-<port>`` in the sandbox, and symbolic links at the expected paths point there.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MISSING_BWRAP = (
    "sslkit-sandbox: bubblewrap (bwrap) is not installed or cannot create namespaces; "
    "install it with `apt-get install bubblewrap` (make test does this when run as root)"
)
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies
UID_BASE = 61000  # sandbox uids when grading as root: 61000 + slot, not a login on this machine
# Run in the kernel when it starts (ipykernel's exec_lines), in a namespace of its own: after
# every cell, processes the cell left behind in the sandbox are killed and reaped, so that a
# fork bomb in one exercise does not hold the process limit, or the CPU, for the next ones.
REAPER = """
import os, signal
from IPython import get_ipython

def reap(*_):
    mine = os.getpid()
    others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, mine)]
    for pid in others:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in others:  # a killed child of the kernel counts against the limit until reaped
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass

get_ipython().events.register("post_run_cell", reap)
"""
PASSED_ENV = ("SSLKIT_PROFILE", "NBGRADER_EXECUTION", "MPLBACKEND", "OMP_NUM_THREADS",
              "MKL_NUM_THREADS", "PYTHONHASHSEED")  # fmt: skip


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 600  # per process: a busy loop that outlives the cell timeouts
    memory_mib: int = 6144  # address space per process; torch on CPU maps about 2 GiB at import
    processes: int = 128  # of the sandbox uid, threads included: a fork bomb stops here
    file_mib: int = 512  # the largest file it may write (its folder and /tmp)
    wall_seconds: int = 1800  # the whole notebook, all cells: the kernel is killed after this

    @classmethod
    def from_env(cls) -> Limits:
        names = {"cpu_seconds": "CPU", "memory_mib": "MEMORY", "processes": "NPROC",
                 "file_mib": "FSIZE", "wall_seconds": "WALL"}  # fmt: skip
        values = {}
        for field, name in names.items():
            text = os.environ.get(f"SSLKIT_SANDBOX_{name}")
            if text is not None:
                values[field] = int(text)
        return cls(**values)


def bwrap_error() -> str | None:
    """None if bubblewrap can start a sandbox here, else a one-line message naming the fix."""
    if shutil.which("bwrap") is None:
        return MISSING_BWRAP
    probe = subprocess.run(
        [*as_sandbox_user(0), "bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"],
        capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode:
        return f"{MISSING_BWRAP} ({' '.join(probe.stderr.split())})"
    return None


def interpreter_error() -> str | None:
    """None if this interpreter starts in the sandbox and imports ipykernel and sslkit there,
    as the kernel does; else a one-line message."""
    base = os.environ.get("SSLKIT_SANDBOX_TMP") or None
    root = Path(tempfile.mkdtemp(prefix="sslkit-check-", dir=base))
    stage = root / "stage" if os.geteuid() == 0 else None
    try:
        os.chmod(root, 0o711)  # as root, the sandbox uid passes through it to the stage
        command = [*sandbox_command(0, {"PATH": "/usr/bin:/bin"}, stage),
                   sys.executable, "-c", "import ipykernel, sslkit"]  # fmt: skip
        probe = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if probe.returncode:
        reason = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return f"sslkit-sandbox: bubblewrap works, but the kernel cannot start in it ({reason})"
    return None


def as_sandbox_user(slot: int) -> list[str]:
    """The command prefix that drops root to the slot's unprivileged uid (nothing if not root).

    As root, processes would count against root's RLIMIT_NPROC, which the kernel never enforces,
    and bwrap's user namespace would map the sandbox to root outside."""
    if os.geteuid() != 0:
        return []
    uid = str(UID_BASE + slot)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def readonly_mounts(stage: Path | None) -> tuple[list[str], list[tuple[str, Path]]]:
    """bwrap arguments for the system, the interpreter and sslkit, all read-only; and the
    (folder, stage point) bind mounts to make first when ``stage`` is given.

    As root the sandbox is started by an unprivileged uid, which cannot reach a folder by name
    where a parent is private (a pyenv Python under /root): such folders are first bind-mounted
    under ``stage`` in a private mount namespace (``unshare --mount``), and bwrap binds them
    from there to their own paths."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_symlink():  # merged /usr (Debian 12): /bin -> usr/bin
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    # fontconfig's configuration: without it matplotlib's font scan (fc-list, run on the first
    # `import matplotlib.pyplot` in a fresh MPLCONFIGDIR) writes "Fontconfig error: Cannot load
    # default config file" to stderr, into the cell's output and the feedback
    if Path("/etc/fonts").is_dir():
        args += ["--ro-bind", "/etc/fonts", "/etc/fonts"]
    sslkit = importlib.util.find_spec("sslkit")
    if sslkit is None or not sslkit.submodule_search_locations:
        raise SystemExit("sslkit-sandbox: sslkit is not installed in this interpreter; "
                         "run `make test` or `pip install -e .` first")
    # Each folder at its real path, and also at the path this interpreter knows it by where a
    # symbolic link leads there (a linked .venv): the kernel is started as sys.executable.
    binds: dict[str, str] = {}  # path in the sandbox -> the folder bound there
    for path in (sys.prefix, sys.base_prefix, *sslkit.submodule_search_locations):
        binds[os.path.realpath(path)] = os.path.realpath(path)
    for path in (sys.prefix, sys.base_prefix, *sslkit.submodule_search_locations):
        inside = [f for f in binds.values() if os.path.abspath(path).startswith(f"{f}/")]
        if not inside:  # a link inside a bound folder is in the sandbox already, as a link
            binds.setdefault(os.path.abspath(path), os.path.realpath(path))
    staged: dict[str, Path] = {}
    for place in sorted(p for p in binds if p != "/usr" and not p.startswith("/usr/")):
        folder = source = binds[place]
        if stage is not None:
            if folder not in staged:
                staged[folder] = stage / str(len(staged))
                staged[folder].mkdir(parents=True)
            source = staged[folder]
        args += ["--ro-bind", str(source), place]
    return args, list(staged.items())


def sandbox_command(slot: int, env: dict[str, str], stage: Path | None) -> list[str]:
    """[unshare + setpriv +] bwrap with the system, interpreter and sslkit read-only, to which
    the caller appends its own folders and the command to run."""
    mounts, staged = readonly_mounts(stage)
    command = [*as_sandbox_user(slot), "bwrap", "--unshare-all", "--die-with-parent",
               "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
               # the private /tmp first: a checkout or venv under /tmp is bound on top of it
               "--tmpfs", "/tmp", *mounts, "--proc", "/proc", "--dev", "/dev",
               "--clearenv"]  # fmt: skip
    for key, value in env.items():
        command += ["--setenv", key, value]
    if staged:
        binds = " && ".join(f"mount --bind {shlex.quote(a)} {shlex.quote(str(b))}"
                            for a, b in staged)  # fmt: skip
        command = ["unshare", "--mount", "--propagation", "private", "--",
                   "sh", "-c", f'{binds} && exec "$@"', "sh", *command]  # fmt: skip
    return command


def threads_of(uid: int) -> int:
    """How many threads (processes included) the user runs now."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        if int(fields["Uid"].split()[0]) == uid:
            count += int(fields["Threads"])
    return count


def set_limits(limits: Limits, processes: int) -> None:
    """Applied in the child before exec; inherited by everything the kernel starts."""
    mib = 1024 * 1024
    for kind, value in ((resource.RLIMIT_CPU, limits.cpu_seconds),
                        (resource.RLIMIT_AS, limits.memory_mib * mib),
                        (resource.RLIMIT_NPROC, processes),
                        (resource.RLIMIT_FSIZE, limits.file_mib * mib),
                        (resource.RLIMIT_CORE, 0)):  # fmt: skip
        resource.setrlimit(kind, (value, value))


def private_copy(folder: Path, work: Path) -> None:
    """The submission's files without notebooks (the notebook being graded holds the hidden
    tests once nbgrader has restored them, and the kernel gets its cells from nbgrader) and
    without symbolic links (copied as root, a link would bring in what it points to)."""

    def left_out(parent: str, names: list[str]) -> set[str]:
        return {n for n in names if n.endswith(".ipynb") or n == ".ipynb_checkpoints"
                or os.path.islink(os.path.join(parent, n))}  # fmt: skip

    shutil.copytree(folder, work, ignore=left_out, symlinks=True, dirs_exist_ok=True)


def remove_links(folder: Path) -> list[Path]:
    """Delete the symbolic links under a submitted folder and return them: nbgrader copies a
    submission following links, so a link to the gradebook would hand the sandbox a copy."""
    links = [p for p in folder.rglob("*") if p.is_symlink()]
    for link in links:
        link.unlink()
    return links


def chown_tree(root: Path, uid: int) -> None:
    for folder, dirs, files in os.walk(root):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.lchown(name, uid, uid)


def run_kernel(connection_file: str) -> int:
    """Start ipykernel in a sandbox for jupyter_client; return its exit status."""
    error = bwrap_error()
    if error:
        print(error, file=sys.stderr)
        return 1
    limits = Limits.from_env()
    slot = int(os.environ.get("SSLKIT_SANDBOX_SLOT", "0"))
    connection = json.loads(Path(connection_file).read_text())
    if connection.get("transport") != "ipc":
        print("sslkit-sandbox: the kernel needs jupyter_client's ipc transport; set "
              "c.KernelManager.transport = 'ipc' (nbgrader_config.py does)", file=sys.stderr)
        return 1

    base = os.environ.get("SSLKIT_SANDBOX_TMP") or None
    root = Path(tempfile.mkdtemp(prefix="sslkit-sandbox-", dir=base))
    work, ipc = root / "submission", root / "ipc"
    private_copy(Path.cwd(), work)
    ipc.mkdir()
    inside = dict(connection, ip="/ipc/kernel")
    (ipc / "connection.json").write_text(json.dumps(inside))
    links = []
    for key in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        link = Path(f"{connection['ip']}-{connection[key]}")
        link.unlink(missing_ok=True)
        link.symlink_to(ipc / f"kernel-{connection[key]}")
        links.append(link)
    as_root = os.geteuid() == 0
    if as_root:  # the sandbox uid owns its two folders and can only pass through the rest
        chown_tree(work, UID_BASE + slot)
        chown_tree(ipc, UID_BASE + slot)
        os.chmod(root, 0o711)

    # IPython and Jupyter read their configuration from the private /tmp, not from a folder
    # the submission could have brought along.
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": "/submission",
           "USER": "student", "TMPDIR": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib",
           "IPYTHONDIR": "/tmp/ipython", "JUPYTER_CONFIG_DIR": "/tmp/jupyter",
           "PYTHONNOUSERSITE": "1"}  # fmt: skip
    env |= {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    command = [*sandbox_command(slot, env, root / "stage" if as_root else None),
               "--bind", str(work), "/submission", "--bind", str(ipc), "/ipc",
               "--chdir", "/submission",
               sys.executable, "-m", "ipykernel_launcher", "-f", "/ipc/connection.json",
               f"--IPKernelApp.exec_lines=exec({REAPER!r}, {{}})"]  # fmt: skip
    # jupyter_client stops the kernel by a shutdown message, or by SIGTERM/SIGKILL to this
    # process; bwrap --die-with-parent takes the sandbox down with it in the last case. If
    # nbgrader itself dies (a grader killed half-way), this process gets SIGTERM.
    kernel: subprocess.Popen | None = None
    signal.signal(signal.SIGTERM, lambda *_: kernel and kernel.kill())
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl
        return 1
    # RLIMIT_NPROC counts every process of the uid: the sandbox uid has none when grading as
    # root; as another user, the sandbox may start `processes` more than that user runs now.
    processes = limits.processes + (0 if as_root else threads_of(os.getuid()))
    kernel = subprocess.Popen(command, preexec_fn=lambda: set_limits(limits, processes))
    try:
        status = kernel.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        print(f"sslkit-sandbox: the notebook ran past its time budget ({limits.wall_seconds} s,"
              " SSLKIT_SANDBOX_WALL); the kernel was killed", file=sys.stderr)
        kernel.kill()
        status = kernel.wait()
    finally:
        for link in links:
            link.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    kernel = sub.add_parser("kernel", help="start a sandboxed ipykernel (jupyter_client does)")
    kernel.add_argument("-f", dest="connection_file", required=True)
    sub.add_parser("check", help="exit 1 with a message if the kernel cannot start in the "
                   "sandbox (bubblewrap missing or unusable, the interpreter not reachable)")
    args = parser.parse_args(argv)
    if args.command == "check":
        error = bwrap_error() or interpreter_error()
        print(error or f"sslkit-sandbox: bubblewrap works and starts {sys.executable} with "
              "ipykernel and sslkit")  # fmt: skip
        return 1 if error else 0
    return run_kernel(args.connection_file)


if __name__ == "__main__":
    sys.exit(main())
