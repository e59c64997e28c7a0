"""A course's grading run in one command: LMS zip -> autograde -> feedback -> CSV -> report.

The tiny course (tests/tiny_course.py) gets a Canvas-style zip and one submission collected by
hand, and ``course.py run 00_tiny --zip submissions.zip --workers 2`` does the rest:

    solvedsam_1001_5001_00_tiny.ipynb          the solution                    3/3, no flag
    delegdan_1002_5002_00_tiny.ipynb           mean_of calls statistics.mean   2/3, "calls the
                                                                                reference"
    tampertom_1003_5003_00_tiny.ipynb          a wrong square, its test `pass` 2/3, "tampered"
    crashcarl_1004_5004_00_tiny.ipynb          os._exit in a cell              no grade, "crash"
    latelucy_1005_5000_00_tiny.ipynb           a blank first upload            replaced by:
    latelucy_LATE_1005_5005_00_tiny-1.ipynb    the solution, late              3/3, listed late
    readme.txt, solvedsam_1001_5001_notes.py   not submissions of 00_tiny      in the import report
    hackhank_1006_5006_00_tiny.ipynb           a wrong square behind an input  "check by hand"
                                               transformer that blanks tests   (see README)
    submitted/nobook/00_tiny/mywork.ipynb      (by hand) a misnamed notebook   0, "missing notebook"
    submitted/wrongcase/00_Tiny/00_tiny.ipynb  (by hand) a misnamed folder     0, "missing notebook"
    submitted/loose/00_tiny.ipynb              (by hand) no assignment folder  0, "missing notebook"

``course.py grade 00_tiny`` (plain nbgrader, what ``make grade`` runs) on the solution, the
blank release and the os._exit submission: the crash costs only its own grade, the others get
feedback and a grades.csv row, and the command ends with a line naming the crashed one.
"""

from __future__ import annotations

import csv
import re
import zipfile
from html import unescape

import nbformat
import pytest
import tiny_course as tiny

pytestmark = pytest.mark.slow

DELEGATING = "import statistics\ndef mean_of(xs):\n    return statistics.mean(xs)"
WRONG_SQUARE = "def square(x):\n    return 2 * x"
CRASHING = "import os\nos._exit(1)"
HIDING = """get_ipython().input_transformers_post.append(
    lambda lines: ["pass\\n"] if any("square(3)" in line for line in lines) else lines)
def square(x):
    return 2 * x
"""
EXPECTED = {"solvedsam": 3.0, "delegdan": 2.0, "tampertom": 2.0, "crashcarl": 0.0,
            "latelucy": 3.0, "nobook": 0.0, "wrongcase": 0.0, "loose": 0.0}  # fmt: skip
HIDDEN_SNIPPETS = ["double(-3)", "square(-4)", "[4.0, 8.0]", "blocked="]
FLAGGED = {"delegdan": "calls the reference: test_mean_of", "crashcarl": "crash:",
           "tampertom": "tampered: test cell test_square edited",
           "nobook": "missing notebook: 00_tiny.ipynb",
           "hackhank": "check by hand: the answers use get_ipython, input_transformers",
           "wrongcase": "missing notebook: no folder submitted/wrongcase/00_tiny/, but "
                        "notebooks in submitted/wrongcase/00_Tiny/",
           "loose": "missing notebook: no folder submitted/loose/00_tiny/, but notebooks in "
                    "submitted/loose/;",
           }  # fmt: skip


def tampered(course):
    nb = tiny.submission(course, {"square": WRONG_SQUARE})
    for cell in nb.cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "test_square":
            cell.source = "pass  # the test passes"
    return nb


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    course = tiny.make_course(tmp_path_factory.mktemp("workflow"))
    archive = course / "submissions.zip"
    notebooks = {
        "solvedsam_1001_5001_00_tiny.ipynb": tiny.submission(course),
        "delegdan_1002_5002_00_tiny.ipynb": tiny.submission(course, {"mean_of": DELEGATING}),
        "tampertom_1003_5003_00_tiny.ipynb": tampered(course),
        "crashcarl_1004_5004_00_tiny.ipynb": tiny.submission(course, {"square": CRASHING}),
        "latelucy_1005_5000_00_tiny.ipynb": tiny.submission(course, solved=False),
        "latelucy_LATE_1005_5005_00_tiny-1.ipynb": tiny.submission(course),
        "hackhank_1006_5006_00_tiny.ipynb": tiny.submission(course, {"square": HIDING}),
    }
    with zipfile.ZipFile(archive, "w") as zf:
        for name, nb in notebooks.items():
            zf.writestr(f"submissions/{name}", nbformat.writes(nb))
        zf.writestr("submissions/readme.txt", "collected by Canvas")
        zf.writestr("submissions/solvedsam_1001_5001_notes.py", "print('notes')")
    tiny.submit(course, "nobook", tiny.submission(course)).joinpath(
        f"{tiny.ASSIGNMENT}.ipynb").rename(course / "autograder" / "submitted" / "nobook"
                                           / tiny.ASSIGNMENT / "mywork.ipynb")  # fmt: skip
    submitted = course / "autograder" / "submitted"
    (submitted / "wrongcase" / "00_Tiny").mkdir(parents=True)
    nbformat.write(tiny.submission(course), submitted / "wrongcase" / "00_Tiny" / "00_tiny.ipynb")
    (submitted / "loose").mkdir()
    nbformat.write(tiny.submission(course), submitted / "loose" / "00_tiny.ipynb")
    result = tiny.course_py(course, "run", tiny.ASSIGNMENT, "--zip", str(archive),
                            "--workers", "2", timeout=900)  # fmt: skip
    return {"course": course, "result": result,
            "reports": course / "autograder" / "reports" / tiny.ASSIGNMENT}  # fmt: skip


def test_the_zip_lands_in_nbgraders_layout(ran):
    submitted = ran["course"] / "autograder" / "submitted"
    for student in ("solvedsam", "delegdan", "tampertom", "crashcarl", "latelucy"):
        assert (submitted / student / tiny.ASSIGNMENT / f"{tiny.ASSIGNMENT}.ipynb").is_file()
    # the newer upload (larger submission id) wins over the blank first one
    lucy = nbformat.read(submitted / "latelucy" / tiny.ASSIGNMENT / f"{tiny.ASSIGNMENT}.ipynb",
                         as_version=4)  # fmt: skip
    assert any("return 2 * x" in cell.source for cell in lucy.cells)


def test_the_import_report_lists_what_it_could_not_match(ran):
    text = (ran["reports"] / "import.txt").read_text()
    assert "submissions/readme.txt: not a Canvas submission file name" in text
    assert "submissions/solvedsam_1001_5001_notes.py: not a notebook of 00_tiny" in text
    assert "submissions/latelucy_1005_5000_00_tiny.ipynb: an older upload" in text
    assert "marked LATE by the LMS: latelucy" in text
    report = (ran["reports"] / "report.md").read_text()  # where the instructor reads it
    assert "## Submitted late" in report and "- latelucy: 3/3" in report


def test_grades_csv_has_every_student_with_the_expected_score(ran):
    with open(ran["reports"] / "grades.csv", newline="") as f:
        scores = {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}
    assert set(scores) == set(EXPECTED) | {"hackhank"}  # whose score the README does not vouch for
    assert {s: scores[s] for s in EXPECTED} == EXPECTED


def test_the_report_flags_each_problem_and_nothing_else(ran):
    with open(ran["reports"] / "flags.csv", newline="") as f:
        flags = {row["student_id"]: row["flags"] for row in csv.DictReader(f)}
    assert set(flags) == set(EXPECTED) | {"hackhank"}
    for student, text in flags.items():
        if student in FLAGGED:
            assert FLAGGED[student] in text, f"{student}: {text!r}"
        else:
            assert text == "", f"{student} flagged: {text!r}"
    report = (ran["reports"] / "report.md").read_text()
    for student in FLAGGED:
        assert f"| {student} |" in report
    assert "| solvedsam |" not in report


def test_the_run_names_each_misplaced_folder(ran):
    out = ran["result"].stdout
    assert "  wrongcase: not graded  [missing notebook: no folder submitted/wrongcase/00_tiny/, " \
           "but notebooks in submitted/wrongcase/00_Tiny/; move them there and run again]" in out
    assert "  loose: not graded  [missing notebook: no folder submitted/loose/00_tiny/" in out


def visible_text(html: str) -> str:
    """What a browser shows of an HTML page (code is split into highlighting spans)."""
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_feedback_shows_results_without_hidden_test_code(ran):
    ag = ran["course"] / "autograder"
    for student in ("solvedsam", "delegdan", "tampertom"):
        path = f"{student}/{tiny.ASSIGNMENT}/{tiny.ASSIGNMENT}"
        graded = (ag / "autograded" / f"{path}.ipynb").read_text()
        shown = visible_text((ag / "feedback" / f"{path}.html").read_text())
        for snippet in HIDDEN_SNIPPETS:
            assert snippet in graded  # the hidden tests ran ...
            assert snippet not in shown, f"{student}'s feedback shows the hidden {snippet}"
        assert "hidden tests ran here" in shown
        assert "square(3) should be 9" in shown  # ... and the visible ones are still there
    delegating = visible_text((ag / "feedback" / "delegdan" / tiny.ASSIGNMENT
                               / f"{tiny.ASSIGNMENT}.html").read_text())  # fmt: skip
    assert "your answer calls the reference mean" in delegating


def test_the_instructor_guide_shows_the_one_command():
    guide = (tiny.REPO / "autograder" / "README.md").read_text()
    assert "course.py run 04_simclr --zip" in guide


# ----------------------------------------------------------------------------- course.py grade
@pytest.fixture(scope="module")
def graded_plainly(tmp_path_factory):
    course = tiny.make_course(tmp_path_factory.mktemp("grade"))
    tiny.submit(course, "solvedsam", tiny.submission(course))
    tiny.submit(course, "blankbob", tiny.submission(course, solved=False))
    tiny.submit(course, "crashcarl", tiny.submission(course, {"square": CRASHING}))
    result = tiny.course_py(course, "grade", tiny.ASSIGNMENT, timeout=900, check=False)
    return {"course": course, "result": result}


def test_grade_gives_the_others_feedback_and_grades_when_one_crashes(graded_plainly):
    ag = graded_plainly["course"] / "autograder"
    result = graded_plainly["result"]
    for student in ("solvedsam", "blankbob"):
        feedback = ag / "feedback" / student / tiny.ASSIGNMENT / f"{tiny.ASSIGNMENT}.html"
        assert feedback.is_file(), f"no feedback for {student}:\n{result.stderr[-3000:]}"
    assert not (ag / "feedback" / "crashcarl").exists()
    with open(ag / "grades.csv", newline="") as f:
        scores = {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}
    assert scores == {"solvedsam": 3.0, "blankbob": 0.0, "crashcarl": 0.0}


def test_grade_ends_with_autogrades_status_and_one_line_naming_the_crash(graded_plainly):
    result = graded_plainly["result"]
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "nbgrader autograde could not grade crashcarl (00_tiny): no grade (0 in grades.csv) and "
        "no feedback for them (see their errors above); the other submissions are graded")
