"""Benchmark: plain ``nbgrader autograde`` against the parallel grader on the same submissions.

    python autograder/bench_grading.py                        20 solved 04_simclr, 2 workers
    python autograder/bench_grading.py --submissions 4 --assignment 03_infonce

Builds a temporary course (this folder's configuration, the assignment's source from
solutions/), releases it, writes N copies of the solved notebook as students student01..N and
copies the course twice. In one copy ``nbgrader autograde ASSIGNMENT`` grades them one at a
time (one nbgrader process, as ``make grade`` does); in the other the parallel grader
(parallel.py, as ``course.py run`` does) grades them with ``--workers`` workers. Both run every
kernel in the sandbox, in the ci profile. It prints both wall times, their ratio, and the
machine's load average before and after, since other work on the machine disturbs the figures;
both runs must give every student the same score.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import parallel  # noqa: E402 -- this folder's module, importable through the line above

GENERATED = ("gradebook.db", "submitted", "autograded", "feedback", "reports", ".work", "*.csv",
             "__pycache__")  # fmt: skip


def solved(release, source):
    """The release with every solution cell replaced by the source's (the solution)."""
    sources = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in source.cells}
    for cell in release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            cell.source = sources[meta["grade_id"]]
    return release


def make_course(root: Path, assignment: str, submissions: int) -> Path:
    shutil.copytree(HERE, root / "autograder", ignore=shutil.ignore_patterns(*GENERATED))
    shutil.copytree(REPO / "solutions" / assignment, root / "solutions" / assignment,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))  # fmt: skip
    course = root / "autograder"
    subprocess.run([sys.executable, str(course / "course.py"), "release"], check=True,
                   capture_output=True)  # fmt: skip
    source = nbformat.read(root / "solutions" / assignment / f"{assignment}.ipynb", 4)
    release = nbformat.read(root / "notebooks" / assignment / f"{assignment}.ipynb", 4)
    nb = solved(release, source)
    for i in range(1, submissions + 1):
        folder = course / "submitted" / f"student{i:02d}" / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{assignment}.ipynb")
    return root


def scores(course: Path, assignment: str) -> dict[str, float]:
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id="sslkit") as gb:
        return {s.student.id: float(s.score) for s in gb.find_assignment(assignment).submissions}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assignment", default="04_simclr")
    parser.add_argument("--submissions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parallel-first", action="store_true",
                        help="run the parallel grader first (to see how a changing load on the "
                             "machine favours one of the two)")  # fmt: skip
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        plain_root = make_course(Path(tmp) / "plain", args.assignment, args.submissions)
        shutil.copytree(plain_root, Path(tmp) / "parallel", symlinks=True)
        plain, fast = plain_root / "autograder", Path(tmp) / "parallel" / "autograder"
        load_before = os.getloadavg()

        def run_plain() -> float:
            start = time.monotonic()
            subprocess.run([sys.executable, "-m", "nbgrader", "autograde", args.assignment],
                           cwd=plain, env=parallel.nbgrader_env(), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            return time.monotonic() - start

        def run_parallel() -> float:
            start = time.monotonic()
            parallel.Grader(fast, args.assignment, args.workers, log=lambda _: None).run()
            return time.monotonic() - start

        if args.parallel_first:
            parallel_s, plain_s = run_parallel(), run_plain()
        else:
            plain_s, parallel_s = run_plain(), run_parallel()
        load_after = os.getloadavg()

        expected, got = scores(plain, args.assignment), scores(fast, args.assignment)
    n = args.submissions
    first = "parallel" if args.parallel_first else "plain"
    print(f"{n} solved submissions of {args.assignment} on {os.cpu_count()} CPU cores "
          f"({first} run first)")
    print(f"plain nbgrader autograde : {plain_s:7.1f} s ({plain_s / n:.1f} s per submission)")
    print(f"parallel, {args.workers} workers      : {parallel_s:7.1f} s "
          f"({parallel_s / n:.1f} s per submission)")
    print(f"speed-up                 : {plain_s / parallel_s:.2f}x")
    print(f"load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in load_before)}; "
          f"after: {', '.join(f'{x:.1f}' for x in load_after)}")
    if expected != got:
        sys.exit(f"the two runs disagree on scores: plain {expected}, parallel {got}")
    print(f"both runs agree on every score ({sorted(set(got.values()))})")


if __name__ == "__main__":
    main()
