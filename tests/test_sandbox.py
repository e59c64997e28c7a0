"""Malicious submissions are contained by the sandbox (autograder/sandbox.py).

A tiny course (tests/tiny_course.py) is graded with ``course.py run --workers 2``. Each
malicious submission does its harm in ``double`` and returns the right answer only if the harm
worked, so a hole in the sandbox shows up as a point it should not have:

    reads_source      reads the source notebook, the autograded notebook being graded
                      (hidden tests) and any notebook in its folder
    links             hands in a symbolic link to the source notebook next to its notebook
    lists_others      lists the submitted/ folder and its own parent folder
    writes_gradebook  appends to gradebook.db and writes a file into the course
    network           connects to a server this test runs on the machine's loopback
    forks             forks sleeping children without bound
    memory            allocates 8 GiB under a 4.5 GiB limit
    sleeps            sleeps forever in double (the cell's time limit cuts it)

Each must score 0 on double's test and full marks on square and mean_of; the solved submission
next to them full marks; the gradebook must be intact; nothing of the sandbox may outlive the
run; and the run must finish.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_course as tiny
from nbgrader.api import Gradebook

pytestmark = pytest.mark.slow

MEMORY_MIB = 4608  # the sandbox's address-space limit in this test (torch maps ~3.5 GiB)
MARK = "PWNED-BY-A-SUBMISSION"

EVIL = {
    "reads_source": """
import glob
def double(x):
    places = [{source!r}, {autograded!r}, *glob.glob("*.ipynb"), *glob.glob("../*/*.ipynb")]
    for place in places:
        try:
            if "BEGIN HIDDEN TESTS" in open(place).read():
                return 2 * x  # read the hidden tests: the sandbox leaks
        except OSError:
            pass
    raise RuntimeError("no notebook with hidden tests in reach")
""",
    "links": """
def double(x):
    try:
        if "BEGIN HIDDEN TESTS" in open("data.txt").read():
            return 2 * x  # the link was followed
    except OSError:
        pass
    raise RuntimeError("the link did not come through")
""",
    "lists_others": """
import os
def double(x):
    seen = []
    for place in ({submitted!r}, ".."):
        try:
            seen += os.listdir(place)
        except OSError:
            pass
    if "solved" in seen:
        return 2 * x  # saw another student's submission
    raise RuntimeError(f"no other submission in sight: {{seen}}")
""",
    "writes_gradebook": """
def double(x):
    wrote = 0
    for place in ({gradebook!r}, {course_file!r}):
        try:
            with open(place, "a") as f:
                f.write({mark!r})
            wrote += 1
        except OSError:
            pass
    if wrote:
        return 2 * x
    raise RuntimeError("could not write outside its folder")
""",
    "network": """
import socket
def double(x):
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
        return 2 * x  # reached a server outside the sandbox
    except OSError:
        raise RuntimeError("no network") from None
""",
    "forks": """
import os, time
def double(x):
    children = 0
    for _ in range(5000):  # without bound for any sane limit; a safety stop if the limit fails
        pid = os.fork()  # raises once the process limit is reached
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        children += 1
    return 2 * x  # 5000 processes: no limit
""",
    "memory": """
def double(x):
    hog = bytearray(8 * 2**30)  # MemoryError under the limit
    return 2 * x
""",
    "sleeps": """
import time
def double(x):
    time.sleep(10**6)
    return 2 * x
""",
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tiny.make_course(tmp_path_factory.mktemp("sandbox"))
    ag = course / "autograder"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    places = {
        "source": str(course / "solutions" / tiny.ASSIGNMENT / f"{tiny.ASSIGNMENT}.ipynb"),
        "autograded": str(ag / ".work" / tiny.ASSIGNMENT / "reads_source" / "autograded"
                          / "reads_source" / tiny.ASSIGNMENT / f"{tiny.ASSIGNMENT}.ipynb"),
        "submitted": str(ag / "submitted"), "gradebook": str(ag / "gradebook.db"),
        "course_file": str(ag / "pwned.txt"), "mark": MARK, "port": server.getsockname()[1],
    }  # fmt: skip
    tiny.submit(course, "solved", tiny.submission(course))
    for student, code in EVIL.items():
        tiny.submit(course, student, tiny.submission(course, {"double": code.format(**places)}))
    (ag / "submitted" / "links" / tiny.ASSIGNMENT / "data.txt").symlink_to(places["source"])
    env = dict(os.environ, SSLKIT_SANDBOX_MEMORY=str(MEMORY_MIB))
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ag / "course.py"), "run", tiny.ASSIGNMENT, "--workers", "2"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    seconds = time.monotonic() - start
    try:
        connection, _ = server.accept()
        reached = True
        connection.close()
    except BlockingIOError:
        reached = False
    server.close()
    time.sleep(2)  # sandboxes being torn down
    scores = {}
    with Gradebook(f"sqlite:///{ag / 'gradebook.db'}", course_id="sslkit") as gb:
        for student in ["solved", *EVIL]:
            nb = gb.find_submission_notebook(tiny.ASSIGNMENT, tiny.ASSIGNMENT, student)
            scores[student] = {g.name: float(g.score) for g in nb.grades}
    return {"course": course, "result": result, "scores": scores, "seconds": seconds,
            "reached": reached, "left": tiny.sandbox_processes()}  # fmt: skip


def test_the_run_finishes(graded):
    result = graded["result"]
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"{len(EVIL) + 1} submissions" in result.stdout, result.stdout
    assert "removed the symbolic link submitted/links/00_tiny/data.txt" in result.stdout


def test_the_solution_next_to_them_scores_full_marks(graded):
    assert graded["scores"]["solved"] == dict.fromkeys(
        ["test_double", "test_square", "test_mean_of"], 1.0)


@pytest.mark.parametrize("student", list(EVIL))
def test_malicious_submission_loses_only_what_it_broke(graded, student):
    expected = {"test_double": 0.0, "test_square": 1.0, "test_mean_of": 1.0}
    assert graded["scores"][student] == expected, graded["result"].stdout


def test_no_connection_reached_the_machine(graded):
    assert not graded["reached"]


def test_gradebook_and_course_are_intact(graded):
    ag = graded["course"] / "autograder"
    assert MARK.encode() not in (ag / "gradebook.db").read_bytes()
    assert not (ag / "pwned.txt").exists()
    with sqlite3.connect(ag / "gradebook.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_nothing_of_the_sandbox_outlives_the_run(graded):
    assert graded["left"] == [], "sandboxed processes still running after the run"


def test_the_sleeper_is_flagged_as_a_timeout(graded):
    report = (graded["course"] / "autograder" / "reports" / tiny.ASSIGNMENT / "report.md")
    line = next(line for line in report.read_text().splitlines() if "| sleeps |" in line)
    assert "timeout: cell test_double" in line


def test_bwrap_check_passes_here_and_names_the_fix_when_missing(tmp_path):
    check = [sys.executable, str(tiny.REPO / "autograder" / "sandbox.py"), "check"]
    assert subprocess.run(check, capture_output=True).returncode == 0
    missing = subprocess.run(check, capture_output=True, text=True,
                             env=dict(os.environ, PATH=str(tmp_path)))  # fmt: skip
    assert missing.returncode == 1
    assert "apt-get install bubblewrap" in missing.stdout
    assert len(missing.stdout.strip().splitlines()) == 1


def load_sandbox_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sandbox_under_test", tiny.REPO / "autograder" / "sandbox.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_interpreter_and_sslkit_are_reachable_inside_wherever_the_checkout_lives():
    """The private /tmp is mounted before the read-only binds, so a checkout or venv under /tmp
    (CI clones there) is still visible inside: bwrap applies its mounts in order."""
    import shutil
    import tempfile

    sandbox = load_sandbox_module()
    root = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    os.chmod(root, 0o711)
    try:
        stage = root / "stage" if os.geteuid() == 0 else None
        command = sandbox.sandbox_command(0, {"PATH": "/usr/bin:/bin"}, stage)
        bwrap = command[command.index("bwrap"):]
        tmpfs = bwrap.index("--tmpfs")
        binds = [i for i, arg in enumerate(bwrap) if arg == "--ro-bind"]
        assert binds and all(tmpfs < i for i in binds)
        probe = "import sslkit, sys; print(sys.prefix)"
        done = subprocess.run([*command, sys.executable, "-c", probe], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == sys.prefix
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_check_starts_the_interpreter_and_names_why_it_cannot(monkeypatch, capsys):
    sandbox = load_sandbox_module()
    assert sandbox.main(["check"]) == 0
    assert f"starts {sys.executable}" in capsys.readouterr().out
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python")  # not in the sandbox
    assert sandbox.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "the kernel cannot start in it" in out and "/nonexistent/bin/python" in out
    assert len(out.strip().splitlines()) == 1


def test_a_virtual_environment_behind_a_symbolic_link_starts_in_the_sandbox(tmp_path):
    """bwrap binds the venv at its real path; the kernel is started as sys.executable, under
    the link, which must exist in the sandbox too."""
    link = tmp_path / "venv"
    link.symlink_to(os.path.realpath(sys.prefix))
    python = link / "bin" / Path(sys.executable).name
    check = subprocess.run([python, tiny.REPO / "autograder" / "sandbox.py", "check"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"starts {python}" in check.stdout


def test_matplotlib_imports_in_the_sandbox_without_writing_to_stderr(tmp_path):
    """The first `import matplotlib.pyplot` in a fresh MPLCONFIGDIR scans the fonts with
    fc-list; without fontconfig's configuration it writes "Fontconfig error: ..." to stderr,
    which lands in every notebook's setup cell and feedback (and scores 0 in a test cell)."""
    import shutil
    import tempfile

    sandbox = load_sandbox_module()
    root = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    os.chmod(root, 0o711)
    try:
        stage = root / "stage" if os.geteuid() == 0 else None
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib",
               "MPLBACKEND": "agg"}  # fmt: skip
        command = sandbox.sandbox_command(0, env, stage)
        done = subprocess.run([*command, sys.executable, "-c", "import matplotlib.pyplot"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
    finally:
        shutil.rmtree(root, ignore_errors=True)
