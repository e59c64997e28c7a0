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
  a solution, 0/3 for a blank release), and the gradebook passes SQLite's integrity check.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import tiny_course as tiny
from nbgrader.api import Gradebook

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
