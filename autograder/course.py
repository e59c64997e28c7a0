"""Run nbgrader on this course from any folder, with the environment grading needs.

    python autograder/course.py release              notebooks/ from solutions/, all assignments
    python autograder/course.py grade [ASSIGNMENT]   autograde, generate_feedback, export grades.csv
    python autograder/course.py nbgrader ARGS...     any other nbgrader command in this course

Each step is ``python -m nbgrader ...`` run with this interpreter in the course root (the folder
of this file), with

* the interpreter's bin folder first on PATH: nbgrader runs the ``alembic`` executable to check
  the gradebook, which is not found when the virtual environment is not activated (``make``);
* SSLKIT_PROFILE=ci: the submissions run at their test size even when the instructor's shell
  asks for another profile (nbgrader's NBGRADER_EXECUTION alone would lose to it).

``grade`` with no assignment grades every assignment that has submissions; options after the
assignment (``--student=alice``, ``--Execute.timeout=300``) are passed to ``nbgrader autograde``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent


def nbgrader(*args: str) -> None:
    """Run one nbgrader command in the course root; exit with its status if it fails."""
    env = dict(os.environ, SSLKIT_PROFILE="ci")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    command = [sys.executable, "-m", "nbgrader", *args]
    print("+ nbgrader", *args, flush=True)
    status = subprocess.run(command, cwd=COURSE_ROOT, env=env).returncode
    if status:
        sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["nbgrader"]:  # passed through untouched, options included
        nbgrader(*argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("release", help="generate notebooks/ from solutions/ (overwrites notebooks/)")
    grade = sub.add_parser("grade", help="autograde, generate feedback and export grades.csv")
    grade.add_argument("assignment", nargs="?", default="*", help="e.g. 04_simclr (default: all)")
    sub.add_parser("nbgrader", help="run any nbgrader command in the course root")
    args, autograde_options = parser.parse_known_args(argv)

    if args.command == "release":
        if autograde_options:
            parser.error(f"unrecognized arguments: {' '.join(autograde_options)}")
        nbgrader("generate_assignment", "*", "--force")
    else:
        nbgrader("autograde", args.assignment, *autograde_options)
        nbgrader("generate_feedback", args.assignment, "--force")
        nbgrader("export")


if __name__ == "__main__":
    main()
