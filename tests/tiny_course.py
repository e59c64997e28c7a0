"""A course with one tiny assignment, for the grader's tests (sandbox, parallel, workflow).

The real notebooks take a minute each to grade; these tests need many submissions, so they use
``00_tiny``: three exercises of one point each, graded like the real ones (a visible check and
a hidden one; ``mean_of``'s hidden check goes through sslkit's delegation guard, so a kernel in
the sandbox imports sslkit and torch as the real notebooks do).

    double(x)      -> 2 x
    square(x)      -> x ** 2
    mean_of(xs)    -> the mean, without calling statistics.mean (the "reference")

``make_course(root)`` copies the course root (``autograder/``) under ``root``, writes the
assignment's source and generates its release; ``submission(course, answers)`` is the release
with each named exercise's solution cell replaced.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "00_tiny"
EXERCISES = ("double", "square", "mean_of")
SOLUTIONS = {
    "double": "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
    "square": "def square(x):\n    ### BEGIN SOLUTION\n    return x**2\n    ### END SOLUTION",
    "mean_of": "def mean_of(xs):\n    ### BEGIN SOLUTION\n    return sum(xs) / len(xs)\n"
               "    ### END SOLUTION",
}  # fmt: skip
TESTS = {
    "double": 'assert double(2) == 4, "double(2) should be 4"\n'
              "### BEGIN HIDDEN TESTS\n"
              'assert double(-3) == -6, "double(-3) should be -6 (hidden)"\n'
              "### END HIDDEN TESTS",
    "square": 'assert square(3) == 9, "square(3) should be 9"\n'
              "### BEGIN HIDDEN TESTS\n"
              'assert square(-4) == 16, "square(-4) should be 16 (hidden)"\n'
              "### END HIDDEN TESTS",
    "mean_of": "from sslkit.grading.guard import call\n"
               'assert call("mean_of", mean_of, [1.0, 2.0, 6.0]) == 3.0\n'
               "### BEGIN HIDDEN TESTS\n"
               'assert call("mean_of", mean_of, [4.0, 8.0], '
               'blocked={"mean": statistics.mean}) == 6.0\n'
               "### END HIDDEN TESTS",
}  # fmt: skip
HIDDEN_LINES = [line for test in TESTS.values() for line in test.splitlines()
                if "hidden" in line or "blocked" in line]  # fmt: skip
# Test cells that exceed this are cut (the tests' course; the real course has 120 s): the cells
# that call a student's function are short, the one importing sslkit and torch is not.
CELL_TIMEOUT = 15
TEST_CONFIG = f"""
c.Execute.timeout_func = (
    lambda cell, default=c.Execute.timeout:
    {CELL_TIMEOUT} if "double(" in cell.source or "square(" in cell.source else default
)
"""


def meta(grade_id: str, *, solution: bool = False, points: int | None = None) -> dict:
    nbgrader = {"grade": points is not None, "grade_id": grade_id, "locked": not solution,
                "schema_version": 3, "solution": solution, "task": False}  # fmt: skip
    if points is not None:
        nbgrader["points"] = points
    return {"nbgrader": nbgrader}


def source_notebook():
    cells = [nbformat.v4.new_markdown_cell("# A tiny assignment\n\nThree one-point exercises."),
             nbformat.v4.new_code_cell("import statistics")]  # fmt: skip
    for name in EXERCISES:
        solution, test = meta(name, solution=True), meta(f"test_{name}", points=1)
        cells.append(nbformat.v4.new_code_cell(SOLUTIONS[name], metadata=solution))
        cells.append(nbformat.v4.new_code_cell(TESTS[name], metadata=test))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    return nb


def course_py(course: Path, *args: str, timeout: float = 600, check: bool = True):
    """``python autograder/course.py ARGS`` in the course; the CompletedProcess."""
    result = subprocess.run([sys.executable, str(course / "autograder" / "course.py"), *args],
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if check:
        assert result.returncode == 0, (
            f"course.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def copy_autograder(root: Path) -> Path:
    """A copy of autograder/ under ``root`` without what grading made in it; returns the copy."""
    shutil.copytree(REPO / "autograder", root / "autograder",
                    ignore=shutil.ignore_patterns("gradebook.db", "submitted", "autograded",
                                                  "feedback", "reports", ".work", "*.csv",
                                                  "__pycache__", ".grading.lock"))  # fmt: skip
    return root / "autograder"


def make_course(root: Path) -> Path:
    """The course root and the tiny assignment under ``root``, released; returns ``root``."""
    copy_autograder(root)
    with open(root / "autograder" / "nbgrader_config.py", "a") as config:
        config.write(TEST_CONFIG)
    source = root / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    source.parent.mkdir(parents=True)
    nbformat.write(source_notebook(), source)
    course_py(root, "release")
    return root


def release(course: Path):
    return nbformat.read(course / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)


def submission(course: Path, answers: dict[str, str] | None = None, *, solved: bool = True):
    """The release with every exercise solved (or left blank) and ``answers`` (exercise ->
    code) in place of the named exercises' solution cells."""
    nb = release(course)
    answers = dict(answers or {})
    for cell in nb.cells:
        name = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if name in answers:
            cell.source = answers.pop(name)
        elif name in SOLUTIONS and solved:
            cell.source = SOLUTIONS[name]
    assert not answers, f"no exercise named {sorted(answers)}"
    return nb


def submit(course: Path, student: str, nb) -> Path:
    folder = course / "autograder" / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{ASSIGNMENT}.ipynb")
    return folder


def sandbox_processes() -> list[str]:
    """Processes still alive of the sandbox uids (61000 + slot) whose slot no grader holds.

    A grader that ended, however it ended, has given its slots back (autograder/locks.py), so
    a process of a free slot's uid outlived its grader. Slots that another grader on this
    machine holds right now are its business, not this test's."""
    sys.path.insert(0, str(REPO / "autograder"))
    try:
        import locks
    finally:
        sys.path.remove(str(REPO / "autograder"))
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        uid = int(text.split("Uid:")[1].split()[0])
        if 61000 <= uid < 61000 + locks.SLOTS and locks.slot_is_free(uid - 61000):
            found.append(f"{status.parent.name} uid {uid}")
    return found
