"""The GPU checks and measurements of the kit as one prepared run, sized for a short lease.

A session that is lent a GPU has minutes of device time in all, machine start included, and
each command may run 10 minutes and carry 64 MiB. So everything the GPU has to show runs from
this one script, most important first, each step with its own time limit inside one deadline,
writing as it goes to $OUT (what a killed call leaves there still comes back).

Here, on the CPU machine, once (needs PyPI and ../shared/data; no GPU):

    python3 tests/gpu/device_checks.py kit
        .gpu/wheels/          lightly and kornia for the benchmark's rows (c) and (v2), with
                              what they need that the device image lacks (about 8 MB)
        .gpu/cifar10.tar.xz   the 60,000 CIFAR-10 JPEGs of ../shared/data/cifar10-jpeg.zip,
                              byte for byte, as tar.xz: 18 MB instead of 63, because every
                              small JPEG repeats the same header tables. Data and wheels
                              then travel together in one call.

On the device machine (the device tool's `run`, carry [".gpu"], timeout_s 600):

    python3 tests/gpu/device_checks.py run                       # tests, bench, simclr, compile
    python3 tests/gpu/device_checks.py run moco dino mae --epochs 20   # a second call

Steps (in the order given; default: tests bench simclr compile):

    tests    the CUDA-only tests (tests/test_cuda.py and the CUDA cases of the others)
    bench    sslkit bench at full size, batch 512: rows (a)-(d), a/c, a/d, and the views table
    simclr   SimCLR, ResNet-18, CIFAR-10, the gpu profile's 100 epochs, kNN (k=200) at the end;
             continued with --resume when a call before this one (same warm machine) ran out
    compile  sslkit bench again with --compile
    moco, dino, mae, cpc   that method's full-size recipe for --epochs epochs, kNN at the end

$OUT gets summary.md (each step: status, seconds, command; then the benchmark tables and the
`sslkit results` rows), logs.txt (every step's whole output) and runs.tar.gz (metrics.jsonl and
run.json of every run: the checkpoints are too large to bring back).

`--tiny` runs the same steps on the CPU at the smallest sizes (tests/test_device_checks.py does
that, so a typo here never costs device time).
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
if str(ROOT) not in sys.path:  # run as a script, only tests/gpu is on the path
    sys.path.insert(0, str(ROOT))
KIT = ROOT / ".gpu"  # git-ignored
DATA_ARCHIVE = KIT / "cifar10.tar.xz"
WHEELS = KIT / "wheels"
SHARED_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
DEFAULT_STEPS = ("tests", "bench", "simclr", "compile")
METHOD_STEPS = ("moco", "dino", "mae", "cpc")
RESERVE_S = 20  # kept back from the deadline to write the summary and pack the runs
RESULTS_S = 25  # kept back from every step before `results` (a training run that reaches
#                  the deadline would otherwise leave no time for the table of the runs)

# The benchmark's wheels: versions measured on the CPU (README), and what they need that the
# device image (torch, torchvision, pytorch-lightning, numpy, requests, ...) does not have.
BENCH_WHEELS = ("lightly==1.6.0", "kornia==0.9.0", "kornia_rs", "hydra-core", "omegaconf>=2.2,<2.4")
SDIST_ONLY = ("antlr4-python3-runtime==4.9.3",)  # hydra's parser: built into a wheel here


# ---------------------------------------------------------------------------------------------
# kit: prepared here, carried to the device


def repack_zip(zip_path: Path, archive: Path) -> int:
    """The files of a zip as a tar.xz with the same names and bytes -> number of files.

    Written to a temporary name and renamed, so an interrupted kit never leaves half an
    archive behind."""
    partial = archive.with_name(archive.name + ".partial")
    count = 0
    with zipfile.ZipFile(zip_path) as source, tarfile.open(partial, "w:xz", preset=9) as tar:
        for entry in source.infolist():
            info = tarfile.TarInfo(entry.filename.rstrip("/"))
            info.mtime = time.mktime((*entry.date_time, 0, 0, -1))
            if entry.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            data = source.read(entry)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
            count += 1
    partial.replace(archive)
    return count


def build_kit() -> None:
    if not SHARED_ZIP.is_file():
        sys.exit(f"device_checks: {SHARED_ZIP} is missing: the kit repacks the shared CIFAR-10 "
                 "zip, run this from a checkout that has ../shared/data beside it")
    KIT.mkdir(exist_ok=True)
    files = repack_zip(SHARED_ZIP, DATA_ARCHIVE)
    print(f"{DATA_ARCHIVE}: {files} files, {DATA_ARCHIVE.stat().st_size / 2**20:.1f} MiB")
    WHEELS.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *[f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                                  "manylinux2014_x86_64")],
                    "-d", str(WHEELS), *BENCH_WHEELS], check=True)
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(WHEELS), *SDIST_ONLY],
                   check=True)
    size = sum(f.stat().st_size for f in KIT.rglob("*") if f.is_file())
    print(f"{WHEELS}: {len(list(WHEELS.glob('*.whl')))} wheels; .gpu/ holds {size / 2**20:.1f} "
          "MiB in all (a call carries at most 64 MiB with the working tree)")


# ---------------------------------------------------------------------------------------------
# run: on the device machine


@dataclass
class Step:
    name: str
    command: list[str]
    cap_s: float  # this step's own limit (the deadline may cut it shorter)
    status: str = "not run"
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)


def _interruptible() -> None:
    """In a step's process before it starts: SIGINT back to its default. A script started in
    the background (nohup ... &, or a tool that runs it so) inherits SIGINT ignored, and a
    Python that starts with SIGINT ignored never raises KeyboardInterrupt: sslkit train would
    not save its epoch at the step's limit, and would be killed 15 s later."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Runner:
    """Runs steps one after another inside one deadline, logging to OUT as it goes."""

    def __init__(self, out: Path, deadline_s: float, env: dict[str, str]):
        self.out, self.env, self.steps = out, env, []
        self.started = time.monotonic()
        self.deadline = self.started + deadline_s
        self.log = out / "logs.txt"

    def left(self) -> float:
        return self.deadline - RESERVE_S - time.monotonic()

    def run(self, step: Step) -> Step:
        """Run one step's command within its limit; its output goes straight to logs.txt.
        Every step but the last, `results`, leaves RESULTS_S for it."""
        self.steps.append(step)
        limit = min(step.cap_s, self.left() - (0 if step.name == "results" else RESULTS_S))
        if limit < 10:
            step.status = "skipped: no time left before the deadline"
            self.write_summary()
            return step
        with open(self.log, "a") as log:
            log.write(f"\n===== {step.name}: {shown(step.command)} (limit {limit:.0f} s)\n")
            log.flush()
            start = log.tell()
            begun = time.monotonic()
            proc = subprocess.Popen(step.command, cwd=ROOT, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_interruptible)
            try:
                proc.wait(timeout=limit)
                step.status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGINT)  # sslkit train saves its last epoch and stops
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                step.status = f"stopped at its limit ({limit:.0f} s)"
            step.seconds = time.monotonic() - begun
        with open(self.log) as log:
            log.seek(start)
            step.output = log.read().splitlines()
        with open(self.log, "a") as log:
            log.write(f"===== {step.name}: {step.status}, {step.seconds:.1f} s\n")
        self.write_summary()
        return step

    def record(self, name: str, status: str, seconds: float, what: str) -> None:
        """A step done inside this script (unpacking the data)."""
        self.steps.append(Step(name, what.split(" ", 1), 0, status, seconds))
        self.write_summary()

    def write_summary(self, extra: str = "") -> None:
        lines = ["# Device checks", "",
                 f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
                 f"{time.monotonic() - self.started:.0f} s since the start", "",
                 "| step | status | seconds | command |", "|---|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | `{shown(s.command)}` |"
                  for s in self.steps]
        for s in self.steps:
            if s.name in ("env", "tests", "bench", "compile", "results") and s.output:
                keep = s.output[-40:] if s.name != "tests" else s.output[-15:]
                lines += ["", f"## {s.name}", "", "```", *keep, "```"]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n" + extra)


def shown(command: list[str]) -> str:
    """The command as typed: python3 for this interpreter, paths inside the repo relative."""
    words = ["python3" if w == sys.executable else w.replace(f"{ROOT}/", "") for w in command]
    return shlex.join(words) if len(" ".join(words)) < 300 else " ".join(words)[:300] + " ..."


def unpack(archive: Path, into: Path) -> Path:
    """Extract the data archive (once per machine) -> the folder holding train/ and test/."""
    marker = into / ".complete"
    if not marker.exists():
        into.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
        marker.touch()
    tops = [p for p in into.iterdir() if p.is_dir() and (p / "train").is_dir()]
    if not tops:
        raise SystemExit(f"device_checks: {archive} holds no <name>/train folder")
    return tops[0]


def scaled_warmup(method: str, epochs: int) -> int:
    """The gpu recipe's warm-up of `method` scaled from the profile's epochs to `epochs`: a
    20-epoch run of a 100-epoch recipe with 10 warm-up epochs warms up for 2, not for half the
    run (MoCo's recipe has none, and keeps none)."""
    from sslkit.profiles import get_profile
    from sslkit.recipes import recipe_for

    profile = get_profile("gpu")
    warmup = recipe_for("gpu", method).train.get("warmup_epochs", profile.warmup_epochs)
    return round(warmup * epochs / profile.epochs)


def plan(names: list[str], tiny: bool, data_root: Path | None, runs: Path,
         epochs: int) -> list[Step]:
    """The steps' commands: full size on CUDA, or the smallest sizes on the CPU (--tiny)."""
    from sslkit.cores import usable_cpus

    py = [sys.executable]
    sslkit = [*py, "-m", "sslkit"]
    device = "cpu" if tiny else "cuda"
    bench = [*sslkit, "bench", "--device", device]
    bench += (["--size", "tiny", "--batch", "32", "--steps", "2", "--warmup", "1", "--workers",
               "0"] if tiny else ["--size", "full", "--batch", "512", "--steps", "30", "--workers",
                             str(max(1, usable_cpus() - 1))])  # all but main
    tests = [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rs",
             "tests/test_cuda.py", "tests/test_no_host_sync.py",
             "tests/test_losses.py::test_cuda_half_under_autocast_matches_cpu",
             "tests/test_train.py::test_resume_on_a_gpu_continues_the_devices_random_stream"]

    def train(method: str, n_epochs: int | None) -> list[str]:
        out = runs / method
        cmd = [*sslkit, "train", method, "--profile", "ci" if tiny else "gpu", "--device",
               device, "--no-progress", "--out", str(out)]
        if (out / "last.pt").is_file():
            return [*cmd, "--resume"]  # a call before this one ran out of time
        if data_root is None:
            return [*cmd, "--dataset", "cifar10"]  # fails with the one-line missing-data error
        cmd += ["--dataset", "folder", "--data-root", str(data_root)]
        if tiny:
            cmd += ["--batch-size", "16", "--n-train", "64", "--n-test", "32"]
        if n_epochs is not None:
            cmd += ["--epochs", str(n_epochs)]
            if not tiny:  # the recipe's warm-up, scaled to the shorter run
                cmd += ["--warmup-epochs", str(scaled_warmup(method, n_epochs))]
        every = n_epochs or (2 if tiny else 25)
        return [*cmd, "--knn-every", str(every)]

    steps = []
    for name in names:
        if name == "tests":
            steps.append(Step("tests", tests, 120 if tiny else 180))
        elif name == "bench":
            steps.append(Step("bench", bench, 120 if tiny else 240))
        elif name == "compile":
            steps.append(Step("compile", [*bench, "--compile"], 240 if tiny else 300))
        elif name == "simclr":
            steps.append(Step("simclr", train("simclr", 2 if tiny else None), 1e9))
        elif name in METHOD_STEPS:
            steps.append(Step(name, train(name, 2 if tiny else epochs), 1e9))
        else:
            raise SystemExit(f"device_checks: unknown step {name!r}: use "
                             f"{', '.join((*DEFAULT_STEPS, *METHOD_STEPS))}")
    return steps


def trained_runs(runs: Path) -> list[Path]:
    """The run folders under runs that hold a checkpoint."""
    return sorted(p for p in runs.glob("*") if (p / "last.pt").is_file())


def pack_runs(runs: Path, out: Path) -> None:
    """OUT/runs.tar.gz: metrics.jsonl, run.json and eval.json of every run under runs (not the
    checkpoints), written to a temporary name and renamed, so a killed call leaves the last
    whole archive."""
    trained = trained_runs(runs)
    if not trained:
        return
    partial = out / "runs.tar.gz.partial"
    with tarfile.open(partial, "w:gz") as tar:
        for run in trained:
            for name in ("metrics.jsonl", "run.json", "eval.json"):
                if (run / name).is_file():
                    tar.add(run / name, arcname=f"{run.name}/{name}")
    partial.replace(out / "runs.tar.gz")


def run_checks(args) -> int:
    out = Path(args.out or os.environ.get("OUT") or KIT / "out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs.txt").write_text("")
    runs, site, archive = Path(args.runs), Path(args.site), Path(args.data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runner = Runner(out, args.deadline, env)
    wheels = sorted(Path(args.wheels).glob("*.whl"))
    if wheels:
        runner.run(Step("wheels", [sys.executable, "-m", "pip", "install", "-q", "--no-index",
                                   "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                                   "--target", str(site), *map(str, wheels)], 120))
    data_root = None
    if archive.is_file():
        begun = time.monotonic()
        try:
            data_root = unpack(archive, Path(args.unpack_to))
            status = "ok"
        except (OSError, tarfile.TarError, SystemExit) as err:
            status = f"failed ({' '.join(str(err).split())})"
        runner.record("data", status, time.monotonic() - begun, f"unpack {archive}")
    env_probe = ("import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, "
                 "'cuda', torch.version.cuda, [torch.cuda.get_device_name(i) for i in "
                 "range(torch.cuda.device_count())]); import importlib.util as u; "
                 "print({m: bool(u.find_spec(m)) for m in ('lightly', 'kornia')})")
    runner.run(Step("env", [sys.executable, "-c", env_probe], 60))
    steps = plan(args.steps or list(DEFAULT_STEPS), args.tiny, data_root, runs, args.epochs)
    if data_root is None and any(s.name not in ("tests", "bench", "compile") for s in steps):
        print(f"device_checks: no {archive}: training steps need the data; build it with "
              "`python3 tests/gpu/device_checks.py kit` and carry .gpu", file=sys.stderr)
    for step in steps:
        runner.run(step)
        if step.name not in ("tests", "bench", "compile"):
            pack_runs(runs, out)  # after every training step: a call killed later keeps them
    trained = trained_runs(runs)
    if trained:
        runner.run(Step("results", [sys.executable, "-m", "sslkit", "results",
                                    *map(str, trained)], 60))
        pack_runs(runs, out)
    runner.write_summary()
    print((out / "summary.md").read_text())
    return 0 if all(s.status == "ok" for s in runner.steps) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("kit", help="here: .gpu/wheels and .gpu/cifar10.tar.xz for the device call")
    p = sub.add_parser("run", help="on the device: the steps, inside one deadline")
    p.add_argument("steps", nargs="*", help=f"default: {' '.join(DEFAULT_STEPS)}")
    p.add_argument("--deadline", type=float, default=570, help="seconds for the whole run")
    p.add_argument("--epochs", type=int, default=20, help="epochs of moco, dino, mae, cpc")
    p.add_argument("--tiny", action="store_true", help="the smallest sizes, on the CPU")
    p.add_argument("--out", help="where the summary goes (default: $OUT, else .gpu/out)")
    p.add_argument("--data", default=str(DATA_ARCHIVE), help="the data archive (tar.xz)")
    p.add_argument("--wheels", default=str(WHEELS), help="wheels to install first")
    p.add_argument("--runs", default=str(ROOT / "runs"), help="folder of the training runs")
    p.add_argument("--site", default="/tmp/sslkit-site", help="where the wheels are installed")
    p.add_argument("--unpack-to", default="/tmp/sslkit-data", help="where the data is unpacked")
    args = parser.parse_args(argv)
    if args.command == "kit":
        build_kit()
        return 0
    return run_checks(args)


if __name__ == "__main__":
    sys.exit(main())
