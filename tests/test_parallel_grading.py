"""Parallel grading survives a kill: the rerun grades the rest and regrades nothing.

Six submissions of the tiny course (tests/tiny_course.py), three solved and three blank, are
graded by ``course.py run --workers 2`` started in its own process group. Once two have
finished (two journal lines), the whole group is killed with SIGKILL, as an instructor's ^C or
a crash would. Then:

- the sandboxes of the submissions being graded at that moment are gone (their kernels got
  SIGTERM from the dying nbgrader and took their pid namespaces down);
- the rerun grades only the submissions without a journal line, and leaves the finished ones'
  autograded notebooks untouched;
- every submission ends with exactly one journal line and its grade in the gradebook (3/3 for
  a solution, 0/3 for a blank release), and the gradebook passes SQLite's integrity check;
- a submission whose grading failed (here: ``--timeout`` too short) is graded again by the next
  run, which says so.

Bad input (second half): an empty submission folder, a notebook that is not JSON or not a
notebook, another assignment's notebook, mangled nbgrader metadata (points "lots", metadata
that is a string, a renamed test cell, changed cell ids) and a cell that prints without end
each end with one journal line naming the problem, and the others are graded; a failed regrade
says that the gradebook keeps an earlier grade; a new gradebook or changed tests regrade; bad
arguments stop with one line; a student folder whose notebooks are in no assignment's folder is
flagged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import nbformat
import pytest
import tiny_course as tiny
from nbgrader.api import Gradebook

sys.path.insert(0, str(tiny.REPO / "autograder"))
import lms  # noqa: E402 -- the course's modules, importable through the line above
import parallel  # noqa: E402

pytestmark = pytest.mark.slow

STUDENTS = {f"solved{i}": 3.0 for i in range(3)} | {f"blank{i}": 0.0 for i in range(3)}


def journal_lines(course) -> list[dict]:
    path = course / "autograder" / "reports" / tiny.ASSIGNMENT / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def autograded_mtime(course, student) -> float:
    path = course / "autograder" / "autograded" / student / tiny.ASSIGNMENT
    return (path / f"{tiny.ASSIGNMENT}.ipynb").stat().st_mtime


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    course = tiny.make_course(tmp_path_factory.mktemp("resume"))
    for student in STUDENTS:
        tiny.submit(course, student, tiny.submission(course, solved=student.startswith("solved")))
    command = [sys.executable, str(course / "autograder" / "course.py"), "run", tiny.ASSIGNMENT,
               "--workers", "2"]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while len(journal_lines(course)) < 2 and first.poll() is None:
        assert time.monotonic() < deadline, "no submission finished in 10 minutes"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {line["student"]: autograded_mtime(course, line["student"])
              for line in journal_lines(course)}  # fmt: skip
    time.sleep(3)  # SIGTERM reaches the orphaned sandboxes
    left = tiny.sandbox_processes()
    second = subprocess.run(command, capture_output=True, text=True, timeout=900)
    return {"course": course, "before": before, "left": left, "second": second}


def test_the_kill_came_half_way(resumed):
    assert 2 <= len(resumed["before"]) < len(STUDENTS), resumed["before"]


def test_killed_sandboxes_do_not_outlive_the_grader(resumed):
    assert resumed["left"] == []


def test_the_rerun_grades_only_the_rest(resumed):
    second = resumed["second"]
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    finished = len(resumed["before"])
    assert (f"grading {len(STUDENTS) - finished} of {len(STUDENTS)} submissions" in second.stdout)
    for student, mtime in resumed["before"].items():
        assert autograded_mtime(resumed["course"], student) == mtime, f"{student} was regraded"


def test_every_submission_has_one_journal_line_and_its_grade(resumed):
    course = resumed["course"]
    lines = journal_lines(course)
    assert sorted(line["student"] for line in lines) == sorted(STUDENTS)
    assert all(line["status"] == "graded" for line in lines), lines
    db = course / "autograder" / "gradebook.db"
    with Gradebook(f"sqlite:///{db}", course_id="sslkit") as gb:
        scores = {s: float(gb.find_submission(tiny.ASSIGNMENT, s).score) for s in STUDENTS}
    assert scores == STUDENTS
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()


def test_a_recollected_submission_is_graded_again(resumed, tmp_path):
    # blank0 hands in the solution after all: its content hash changes, so `run` grades it
    # again, and only it.
    course = resumed["course"]
    tiny.submit(course, "blank0", tiny.submission(course))
    again = tiny.course_py(course, "run", tiny.ASSIGNMENT, "--workers", "2")
    assert f"grading 1 of {len(STUDENTS)} submissions" in again.stdout
    db = course / "autograder" / "gradebook.db"
    with Gradebook(f"sqlite:///{db}", course_id="sslkit") as gb:
        assert float(gb.find_submission(tiny.ASSIGNMENT, "blank0").score) == 3.0


def test_a_rerun_grades_again_what_failed_last_time(resumed, tmp_path):
    # A new submission whose grading fails for the grading machine's reason (a --timeout too
    # short for nbgrader to start), in a copy of the graded course: the next run grades it.
    course = tmp_path / "copy"
    shutil.copytree(resumed["course"], course)
    tiny.submit(course, "late0", tiny.submission(course))
    first = tiny.course_py(course, "run", tiny.ASSIGNMENT, "--timeout", "0.5")
    assert "late0: failed, no grade" in first.stdout, first.stdout
    again = tiny.course_py(course, "run", tiny.ASSIGNMENT)
    total = len(STUDENTS) + 1
    assert (f"grading 1 of {total} submissions of {tiny.ASSIGNMENT} with 2 workers "
            f"({total - 1} already graded, 1 failed last time: tried again)") in again.stdout
    assert "late0: graded, 3/3" in again.stdout, again.stdout
    assert journal_lines(course)[-1]["status"] == "graded"


# ----------------------------------------------------------------------------- bad input
# One run over submissions an instructor meets in practice; each must end with a journal line
# that says what is wrong, and none may stop the run or lose the others' grades.
LOUD = "def double(x):\n    for _ in range(3000):\n        print('x' * 100)\n    return 2 * x"
BAD = {  # student -> (status, score, a flag it must have)
    "good": ("graded", 3.0, None),
    "emptydir": ("failed", None, "missing notebook: 00_tiny.ipynb"),
    "badjson": ("failed", None, "unreadable notebook: 00_tiny.ipynb is not a Jupyter notebook"),
    "jsonlist": ("failed", None, "unreadable notebook: 00_tiny.ipynb is not a Jupyter notebook"),
    "otherassign": ("graded", 0.0, "wrong notebook: 00_tiny.ipynb has none of 00_tiny's cells"),
    "badpoints": ("graded", 3.0, "tampered: test cell test_double: points changed"),
    "metastr": ("graded", 3.0, "tampered: test cell test_square deleted"),
    "renamed": ("graded", 3.0, "tampered: test cell test_square deleted"),
    "loud": ("graded", 3.0, "output cut: cell test_double printed more than"),
}


def nbgrader_cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def submit_bad(course) -> None:
    folder = course / "autograder" / "submitted"
    tiny.submit(course, "good", tiny.submission(course))
    (folder / "emptydir" / tiny.ASSIGNMENT).mkdir(parents=True)
    for student, text in (("badjson", '{"cells": ['), ("jsonlist", "[]")):
        tiny.submit(course, student, tiny.submission(course))
        (folder / student / tiny.ASSIGNMENT / f"{tiny.ASSIGNMENT}.ipynb").write_text(text)
    other = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 1", metadata=tiny.meta("other", points=5))])
    tiny.submit(course, "otherassign", other)
    nb = tiny.submission(course)
    nbgrader_cell(nb, "test_double").metadata.nbgrader.points = "lots"
    tiny.submit(course, "badpoints", nb)
    nb = tiny.submission(course)
    nbgrader_cell(nb, "test_square").metadata.nbgrader = "mangled"
    tiny.submit(course, "metastr", nb)
    nb = tiny.submission(course)
    nbgrader_cell(nb, "test_square").metadata.nbgrader.grade_id = "my_test"
    for cell in nb.cells:
        cell.id = f"changed-{cell.id}"
    tiny.submit(course, "renamed", nb)
    tiny.submit(course, "loud", tiny.submission(course, {"double": LOUD}))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    course = tiny.make_course(tmp_path_factory.mktemp("bad"))
    with open(course / "autograder" / "nbgrader_config.py", "a") as config:
        config.write("\nc.CappedExecute.max_output_bytes = 20_000\n")
    submit_bad(course)
    first = tiny.course_py(course, "run", tiny.ASSIGNMENT, "--workers", "2", check=False)
    return {"course": course, "first": first, "lines": journal_lines(course)}


def test_bad_submissions_are_flagged_and_the_rest_graded(bad):
    first = bad["first"]
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    assert "Traceback" not in first.stdout + first.stderr
    lines = {line["student"]: line for line in bad["lines"]}
    assert sorted(lines) == sorted(BAD)
    for student, (status, score, flag) in BAD.items():
        line = lines[student]
        assert (line["status"], line["score"]) == (status, score), line
        flags = "; ".join(line["flags"])
        if flag is None:
            assert flags == "", f"{student}: {flags}"
        else:
            assert flag in flags, f"{student}: {flags}"
            assert "Traceback" not in flags and "above traceback" not in flags
    loud = (bad["course"] / "autograder" / "autograded" / "loud" / tiny.ASSIGNMENT
            / f"{tiny.ASSIGNMENT}.ipynb")  # fmt: skip
    assert loud.stat().st_size < 100_000  # 300 kB printed, 20 kB kept


def test_a_failed_regrade_says_the_gradebook_keeps_the_earlier_grade(bad):
    course = bad["course"]
    (course / "autograder" / "submitted" / "good" / tiny.ASSIGNMENT
     / f"{tiny.ASSIGNMENT}.ipynb").write_text("{")  # re-collected, broken  # fmt: skip
    again = tiny.course_py(course, "run", tiny.ASSIGNMENT)
    # good, and the three that failed the first run, tried again (and failing again)
    assert (f"grading 4 of {len(BAD)} submissions of {tiny.ASSIGNMENT} with 2 workers "
            f"({len(BAD) - 4} already graded, 3 failed last time: tried again)") in again.stdout
    line = [line for line in journal_lines(course) if line["student"] == "good"][-1]
    assert line["status"] == "failed"
    assert any(f.startswith("stale grade:") and "3/3" in f for f in line["flags"]), line


def test_a_new_gradebook_or_new_tests_regrade(bad, tmp_path):
    # A copy of the graded course: its gradebook deleted and released again (same tests), then
    # released with a changed test. Only which submissions `run` would grade is checked.
    course = tmp_path / "copy"
    shutil.copytree(bad["course"], course)
    ag = course / "autograder"
    last = {line["student"]: line["status"] for line in journal_lines(course)}
    failed = {student for student, status in last.items() if status == "failed"}
    assert set(parallel.Grader(ag, tiny.ASSIGNMENT).todo()) == failed  # tried again, always
    (ag / "gradebook.db").unlink()
    tiny.course_py(course, "release")
    assert set(parallel.Grader(ag, tiny.ASSIGNMENT).todo()) == set(BAD)
    source = course / "solutions" / tiny.ASSIGNMENT / f"{tiny.ASSIGNMENT}.ipynb"
    nb = nbformat.read(source, as_version=4)
    nbgrader_cell(nb, "test_double").source += "\nassert double(0) == 0"
    nbformat.write(nb, source)
    tiny.course_py(course, "release")
    assert set(parallel.Grader(ag, tiny.ASSIGNMENT).todo()) == set(BAD)


@pytest.mark.parametrize("args, message", [
    (["run", "00_tinny"], "00_tinny is not an assignment of this course's gradebook (it has: "
                          "00_tiny); check the name"),
    (["run", "00_tiny", "--workers", "0"], "argument --workers: expected a number above 0"),
    (["run", "00_tiny", "--zip", "missing.zip"], "cannot open the LMS archive missing.zip"),
    (["run", "00_tiny", "--zip", "autograder/course.py"], "File is not a zip file"),
])  # fmt: skip
def test_bad_arguments_stop_with_one_line(bad, args, message):
    result = subprocess.run([sys.executable, str(bad["course"] / "autograder" / "course.py"),
                             *args], cwd=bad["course"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_notebooks_outside_every_assignment_folder_are_flagged(tmp_path):
    # A gradebook with two assignments (only its assignment table is read) and student folders
    # with notebooks in every place: only those in no assignment's folder are flagged.
    with sqlite3.connect(tmp_path / "gradebook.db") as db:
        db.execute("CREATE TABLE assignment (name TEXT)")
        db.executemany("INSERT INTO assignment VALUES (?)", [("00_tiny",), ("01_other",)])
    db.close()
    notebooks = ["right/00_tiny/00_tiny.ipynb", "other/01_other/01_other.ipynb",
                 "wrongcase/00_Tiny/00_tiny.ipynb", "loose/00_tiny.ipynb",
                 "deep/work/00_tiny/00_tiny.ipynb", "checkpoint/.ipynb_checkpoints/a.ipynb",
                 "both/00_tiny/00_tiny.ipynb", "both/00_tiny.ipynb"]  # fmt: skip
    for name in notebooks:
        (tmp_path / "submitted" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "submitted" / name).write_text("{}")
    (tmp_path / "submitted" / "notes").mkdir()
    (tmp_path / "submitted" / "notes" / "readme.txt").write_text("not a notebook")
    entries = parallel.Grader(tmp_path, "00_tiny").misplaced()
    flags = {entry.student: (entry.status, entry.flags) for entry in entries}
    assert flags == {
        "deep": ("failed", ["missing notebook: no folder submitted/deep/00_tiny/, but notebooks "
                            "in submitted/deep/work/00_tiny/; move them there and run again"]),
        "loose": ("failed", ["missing notebook: no folder submitted/loose/00_tiny/, but "
                             "notebooks in submitted/loose/; move them there and run again"]),
        "wrongcase": ("failed", ["missing notebook: no folder submitted/wrongcase/00_tiny/, but "
                                 "notebooks in submitted/wrongcase/00_Tiny/; move them there "
                                 "and run again"]),
    }  # fmt: skip


def test_a_roster_without_its_columns_is_refused(tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name\n1,a\n")
    with pytest.raises(lms.ImportFailed, match="needs the columns canvas_id,student_id"):
        lms.read_roster(roster)


def test_no_gradebook_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="there is no gradebook .* run `python autograder/"):
        parallel.connect(tmp_path / "gradebook.db")
    assert not (tmp_path / "gradebook.db").exists()


def test_a_failed_plain_autograde_is_no_earlier_grade(tmp_path):
    """A failed plain ``nbgrader autograde`` (``make grade``) leaves the submission in the
    gradebook with every score NULL; a later ``course.py run`` that fails too must not flag it
    "stale grade ... from an earlier grading": there was none. Only the tables read are made."""
    with sqlite3.connect(tmp_path / "gradebook.db") as db:
        db.executescript("""
            CREATE TABLE assignment (id TEXT, name TEXT);
            CREATE TABLE submitted_assignment (id TEXT, assignment_id TEXT, student_id TEXT);
            CREATE TABLE submitted_notebook (id TEXT, assignment_id TEXT);
            CREATE TABLE grade (notebook_id TEXT, auto_score FLOAT, manual_score FLOAT,
                                extra_credit FLOAT);
            INSERT INTO assignment VALUES ('a', '00_tiny'), ('b', '01_other');
            INSERT INTO submitted_assignment VALUES
                ('s1', 'a', 'graded'), ('s2', 'a', 'leftover'), ('s3', 'a', 'byhand'),
                ('s4', 'b', 'other');
            INSERT INTO submitted_notebook VALUES ('n1', 's1'), ('n2', 's2'), ('n3', 's3'),
                                                  ('n4', 's4');
            INSERT INTO grade VALUES ('n1', 0.0, NULL, NULL), ('n1', NULL, NULL, NULL),
                                     ('n2', NULL, NULL, NULL), ('n2', NULL, NULL, NULL),
                                     ('n3', NULL, 1.0, NULL), ('n4', 2.0, NULL, NULL);
        """)
    db.close()
    gradebook = tmp_path / "gradebook.db"
    assert parallel.graded_students(gradebook, "00_tiny") == {"graded", "leftover", "byhand"}
    assert parallel.graded_students(gradebook, "00_tiny", scored=True) == {"graded", "byhand"}
