"""Run nbgrader on this course from any folder, with the environment grading needs.

    python autograder/course.py release              notebooks/ from solutions/, all assignments
    python autograder/course.py run ASSIGNMENT [--zip Z] [--workers N]
                                                     the whole grading run (below)
    python autograder/course.py grade [ASSIGNMENT]   autograde, generate_feedback, export grades.csv
                                                     with plain nbgrader, one submission at a time
    python autograder/course.py nbgrader ARGS...     any other nbgrader command in this course

``run`` does a course's grading in one command: import the LMS zip into submitted/ (lms.py),
autograde every submission not yet graded in parallel workers (parallel.py; each kernel in the
sandbox of sandbox.py), generate feedback without hidden tests, export
reports/ASSIGNMENT/grades.csv and write reports/ASSIGNMENT/report.md, which lists each flagged
submission and why (report.py), and each student folder whose notebooks are not in a folder
named ASSIGNMENT. Run it again after a kill, after importing more submissions, or after fixing
what made gradings fail: what is graded stays graded, what failed is graded again. ``--force``
grades everything again.

Each step is ``python -m nbgrader ...`` run with this interpreter in the course root (the folder
of this file), with

* the interpreter's bin folder first on PATH: nbgrader runs the ``alembic`` executable to check
  the gradebook, which is not found when the virtual environment is not activated (``make``);
* SSLKIT_PROFILE=ci: the submissions run at their test size even when the instructor's shell
  asks for another profile (nbgrader's NBGRADER_EXECUTION alone would lose to it).

``grade`` with no assignment grades every assignment that has submissions; options after the
assignment (``--student=alice``, ``--Execute.timeout=300``) are passed to ``nbgrader autograde``.
A submission nbgrader cannot grade (a kernel killed by the student's code) does not stop it:
feedback and grades.csv are made for the others, then it exits with autograde's status and a
line naming the submissions without a grade.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(COURSE_ROOT))
import lms  # noqa: E402 -- the course's modules, importable through the line above
import locks  # noqa: E402
import parallel  # noqa: E402
import report  # noqa: E402
import sandbox  # noqa: E402

# the line nbgrader autograde ends with for each submission it could not grade
AUTOGRADE_ERROR = re.compile(
    r"There was an error processing assignment '(?P<assignment>.*)' for student '(?P<student>.*)'"
)


def nbgrader(*args: str, check: bool = True) -> int:
    """Run one nbgrader command in the course root; exit with its status if it fails (or
    return the status when ``check`` is false)."""
    command = [sys.executable, "-m", "nbgrader", *args]
    print("+ nbgrader", *args, flush=True)
    status = subprocess.run(command, cwd=COURSE_ROOT, env=parallel.nbgrader_env()).returncode
    if status and check:
        sys.exit(status)
    return status


def autograde(assignment: str, options: list[str], slot: int) -> tuple[int, list[str]]:
    """``nbgrader autograde`` with its kernels in sandbox slot `slot`, its log shown as it runs;
    (its status, "student (assignment)" of each submission it could not grade, from the errors
    nbgrader lists at its end)."""
    command = [sys.executable, "-m", "nbgrader", "autograde", assignment, *options]
    print("+ nbgrader autograde", assignment, *options, flush=True)
    failed = []
    env = parallel.nbgrader_env(slot)
    with subprocess.Popen(command, cwd=COURSE_ROOT, env=env, stderr=subprocess.PIPE, text=True,
                          errors="replace") as process:  # fmt: skip
        for line in process.stderr:
            sys.stderr.write(line)
            found = AUTOGRADE_ERROR.search(line)
            if found:
                failed.append(f"{found['student']} ({found['assignment']})")
    return process.returncode, failed


def grade(assignment: str, options: list[str]) -> None:
    """autograde -> feedback -> grades.csv, each step whatever the one before did: a
    submission that nbgrader cannot grade must not cost the others their feedback and grades."""
    with locks.sandbox_slots(1) as (slot,):  # a sandbox uid no other grader uses
        status, failed = autograde(assignment, options, slot)
    feedback = nbgrader("generate_feedback", assignment, "--force", check=False)
    export = nbgrader("export", check=False)
    if failed:
        print(f"nbgrader autograde could not grade {', '.join(failed)}: no grade (0 in "
              "grades.csv) and no feedback for them (see their errors above); the other "
              "submissions are graded", file=sys.stderr)  # fmt: skip
    elif status:
        print(f"nbgrader autograde failed (status {status}, see its errors above); feedback and "
              "grades.csv hold what it graded", file=sys.stderr)  # fmt: skip
    if status or feedback or export:
        sys.exit(status or feedback or export)


def require_sandbox() -> None:
    """Autograding runs student code in bubblewrap; stop with the fix if it cannot. Symbolic
    links in submitted/ are removed first (nbgrader would copy what they point to)."""
    error = sandbox.bwrap_error()
    if error:
        sys.exit(error)
    for link in sandbox.remove_links(COURSE_ROOT / "submitted"):
        print(f"removed the symbolic link {link.relative_to(COURSE_ROOT)} from a submission",
              flush=True)  # fmt: skip


def assignment_notebooks(assignment: str) -> list[str]:
    """The notebook names of a released assignment, from the gradebook."""
    with parallel.connect(COURSE_ROOT / "gradebook.db") as db:
        rows = db.execute("SELECT notebook.name FROM notebook JOIN assignment ON "
                          "notebook.assignment_id = assignment.id WHERE assignment.name = ?",
                          (assignment,)).fetchall()  # fmt: skip
    db.close()
    if not rows:
        names = sorted(parallel.assignment_names(COURSE_ROOT / "gradebook.db"))
        sys.exit(f"{assignment} is not an assignment of this course's gradebook (it has: "
                 f"{', '.join(names) or 'none'}); check the name, or run `python "
                 "autograder/course.py release` if solutions/ has it")  # fmt: skip
    return sorted(name for (name,) in rows)


def positive(kind):
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
        return value

    return parse


def run(args) -> None:
    """import -> autograde in parallel -> feedback -> grades.csv -> report."""
    require_sandbox()
    notebooks = assignment_notebooks(args.assignment)
    reports = COURSE_ROOT / "reports" / args.assignment
    if args.zip:
        try:
            imported = lms.import_zip(Path(args.zip), COURSE_ROOT, args.assignment, notebooks,
                                      Path(args.roster) if args.roster else None)  # fmt: skip
        except lms.ImportFailed as error:
            sys.exit(str(error))
        print(f"imported {len(imported.files)} notebooks, {len(imported.unmatched)} files not "
              f"imported (see {reports / 'import.txt'})", flush=True)
    grader = parallel.Grader(COURSE_ROOT, args.assignment, args.workers, args.timeout)
    grader.run(force=args.force)
    nbgrader("generate_feedback", args.assignment, "--force", check=False)
    nbgrader("export", f"--to={reports / 'grades.csv'}", f"--assignment={args.assignment}",
             check=False)  # fmt: skip
    entries = grader.journal.entries()
    current = [entries[s] for s in grader.students() if s in entries] + grader.misplaced()
    unmatched, late = report.import_notes(reports)
    path = report.write(COURSE_ROOT, args.assignment, current, unmatched, late)
    flagged = sum(bool(e.flags) for e in current)
    print(f"{len(current)} submissions, {flagged} flagged: {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["nbgrader"]:  # passed through untouched, options included
        nbgrader(*argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("release", help="generate notebooks/ from solutions/ (overwrites notebooks/)")
    grade_parser = sub.add_parser("grade",
                                  help="autograde, generate feedback and export grades.csv")
    grade_parser.add_argument("assignment", nargs="?", default="*",
                              help="e.g. 04_simclr (default: all)")  # fmt: skip
    sub.add_parser("nbgrader", help="run any nbgrader command in the course root")
    run_parser = sub.add_parser("run", help="import, autograde in parallel, feedback, export, "
                                            "report (resumable)")  # fmt: skip
    run_parser.add_argument("assignment", help="e.g. 04_simclr")
    run_parser.add_argument("--zip", help="Canvas submissions zip to import first")
    run_parser.add_argument("--roster", help="CSV canvas_id,student_id for the zip's students")
    run_parser.add_argument("--workers", type=positive(int), default=2,
                            help="parallel graders (2)")  # fmt: skip
    run_parser.add_argument("--timeout", type=positive(float), default=3600,
                            help="seconds for one submission, all cells (3600)")
    run_parser.add_argument("--force", action="store_true", help="grade everything again")
    args, autograde_options = parser.parse_known_args(argv)
    if args.command in ("run", "release") and autograde_options:
        parser.error(f"unrecognized arguments: {' '.join(autograde_options)}")
    with locks.course_lock(COURSE_ROOT, args.command):  # one writer of the course at a time
        if args.command == "run":
            run(args)
        elif args.command == "release":
            nbgrader("generate_assignment", "*", "--force")
        else:
            require_sandbox()
            grade(args.assignment, autograde_options)


if __name__ == "__main__":
    main()
