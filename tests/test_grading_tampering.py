"""Submissions whose nbgrader metadata a student changed are graded, not crashed, and flagged.

nbgrader 0.9 stops with a traceback, leaving the submission without a grade, on metadata a
student produces without meaning harm or on purpose (restore_cells.CleanMetadata fixes it):

    dupsol     a solution cell copied and pasted in JupyterLab (two cells with one grade_id:
               nbgrader's DeduplicateIds empties one copy's metadata, then KeyError: 'grade_id')
    duptest    the same with a test cell
    flipsol    a test cell marked as a solution cell ("Inconsistent checksums")
    flipgrade  a test cell marked as not graded (the same)
    gradesol   a solution cell marked as a test cell worth 10 points (MissingEntry)

Each is graded (3/3, all answers right) with the released cells' tests and points; a changed
flag is reported as tampering. ``history`` reads IPython's input history (``In``, ``_ih``),
which holds the test cells run before with their hidden tests, and is flagged for checking by
hand; the pattern that finds it is tested on its own below.
"""

from __future__ import annotations

import copy
import json
import sys

import nbformat
import pytest
import tiny_course as tiny
from traitlets.config.loader import PyFileConfigLoader

sys.path.insert(0, str(tiny.REPO / "autograder"))
import report  # noqa: E402 -- the course's modules, importable through the line above


def nbgrader_cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def duplicated(nb, grade_id):
    """``nb`` with the cell ``grade_id`` copied and pasted below itself, as JupyterLab does (a
    new cell id, the same metadata)."""
    cell = nbgrader_cell(nb, grade_id)
    pasted = copy.deepcopy(cell)
    pasted.id = "pasted-copy"
    nb.cells.insert(nb.cells.index(cell) + 1, pasted)
    return nb


def flipped(nb, grade_id, **flags):
    nbgrader_cell(nb, grade_id).metadata.nbgrader.update(flags)
    return nb


HISTORY = "print(In)\ndef mean_of(xs):\n    return sum(xs) / len(xs)"
CASES = {  # student -> (submission of a course, the flag it must have, or None)
    "dupsol": (lambda c: duplicated(tiny.submission(c), "square"), None),
    "duptest": (lambda c: duplicated(tiny.submission(c), "test_square"), None),
    "flipsol": (lambda c: flipped(tiny.submission(c), "test_square", solution=True),
                "tampered: test cell test_square: nbgrader flags changed (solution)"),
    "flipgrade": (lambda c: flipped(tiny.submission(c), "test_square", grade=False),
                  "tampered: test cell test_square: nbgrader flags changed (grade)"),
    "gradesol": (lambda c: flipped(tiny.submission(c), "square", grade=True, points=10),
                 "tampered: answer cell square: nbgrader flags changed (grade)"),
}  # fmt: skip


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return tiny.make_course(tmp_path_factory.mktemp("tampering"))


def sanitized(course, nb, monkeypatch):
    """``nb`` after autograde's sanitising preprocessors, as nbgrader_config.py lists them."""
    ag = course / "autograder"
    monkeypatch.setenv("JUPYTER_PATH", "")  # the configuration sets it (and sys.path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    config = PyFileConfigLoader("nbgrader_config.py", path=str(ag)).load_config()
    resources = {"nbgrader": {"notebook": tiny.ASSIGNMENT, "assignment": tiny.ASSIGNMENT,
                              "db_url": f"sqlite:///{ag / 'gradebook.db'}"}}  # fmt: skip
    for preprocessor in config.Autograde.sanitize_preprocessors:
        nb, resources = preprocessor(config=config).preprocess(nb, resources)
    return nb


@pytest.mark.parametrize("student", list(CASES))
def test_each_released_cell_is_graded_once_with_its_released_flags(course, student,
                                                                   monkeypatch):  # fmt: skip
    nb = sanitized(course, CASES[student][0](course), monkeypatch)
    released = [c.metadata.nbgrader for c in tiny.release(course).cells if "nbgrader" in c.metadata]
    kept = [c.metadata.nbgrader for c in nb.cells if c.metadata.get("nbgrader")]
    assert [m["grade_id"] for m in kept] == [m["grade_id"] for m in released]
    for mine, theirs in zip(kept, released):
        for key in ("grade", "solution", "locked", "points"):
            assert mine.get(key) == theirs.get(key), f"{mine['grade_id']}: {key}"
    pasted = [c for c in nb.cells if c.id == "pasted-copy"]
    assert all("nbgrader" not in c.metadata for c in pasted)  # an ordinary cell


@pytest.mark.slow
def test_such_submissions_are_graded_and_flagged(course):
    for student, (make, _) in CASES.items():
        tiny.submit(course, student, make(course))
    nb = tiny.submission(course, {"mean_of": HISTORY})
    nb.cells.append(nbformat.v4.new_code_cell("last = _ih[-2]"))  # a cell of the student's
    tiny.submit(course, "history", nb)
    run = tiny.course_py(course, "run", tiny.ASSIGNMENT, "--workers", "2", timeout=900)
    journal = course / "autograder" / "reports" / tiny.ASSIGNMENT / "journal.jsonl"
    lines = {line["student"]: line for line in map(json.loads, journal.read_text().splitlines())}
    expected = {student: flag for student, (_, flag) in CASES.items()}
    expected["history"] = "check by hand: the answers use In, _ih"
    assert sorted(lines) == sorted(expected), run.stdout
    for student, flag in expected.items():
        line = lines[student]
        assert (line["status"], line["score"]) == ("graded", 3.0), line
        assert line["flags"] == ([flag] if flag else []), line


@pytest.mark.parametrize("line", [
    "print(In)", "x = In[3]", "for source in In:", "text = '\\n'.join(In[1:])",
    "globals()['_ih']", "print(_ih[-1])", "print(_i)", "_ii", "print(_iii)", "print(_i12)",
    "%history -g", "%hist -n", "import __main__; __main__.In",
])  # fmt: skip
def test_reading_the_input_history_is_found(line):
    assert report.KERNEL_MACHINERY.search(line), line


@pytest.mark.parametrize("line", [
    "# In this exercise x is doubled", "# In PyTorch, a tensor", "Input = 3", "x = int(y)",
    "print('Index')", "self._index = 1", "x_i = 2", "for i in range(3): pass", "_internal = 1",
    "history = []", "In_place = True", "plt.hist(x)", "%histogram",
])  # fmt: skip
def test_ordinary_code_is_not_taken_for_the_input_history(line):
    assert not report.KERNEL_MACHINERY.search(line), line
