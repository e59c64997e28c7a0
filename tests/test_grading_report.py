"""The grading report (autograder/report.py) names what the instructor must act on."""

from __future__ import annotations

import csv
import sys
from types import SimpleNamespace

import tiny_course as tiny

sys.path.insert(0, str(tiny.REPO / "autograder"))
import lms  # noqa: E402 -- the course's modules, importable through the line above
import report  # noqa: E402


def entry(student, status="graded", score=3.0, max_score=3.0, flags=()):
    return SimpleNamespace(student=student, status=status, score=score, max_score=max_score,
                           flags=list(flags))  # fmt: skip


def test_the_report_lists_the_students_the_lms_marked_late(tmp_path):
    """The zip carries no submission time, so nbgrader applies no late penalty; the report,
    which the instructor reads, must say who was late, not only import.txt."""
    imported = lms.Imported(unmatched=["notes.py: not a notebook of 00_tiny (00_tiny.ipynb)"],
                            late=["latelucy", "slowsid"])  # fmt: skip
    lms.write_report(imported, tmp_path, "00_tiny", tmp_path / "submissions.zip")
    unmatched, late = report.import_notes(tmp_path / "reports" / "00_tiny")
    assert unmatched == ["notes.py: not a notebook of 00_tiny (00_tiny.ipynb)"]
    assert late == ["latelucy", "slowsid"]
    entries = [entry("solvedsam"), entry("latelucy"),
               entry("slowsid", "failed", None, None, ["crash: the kernel died"])]  # fmt: skip
    text = report.write(tmp_path, "00_tiny", entries, unmatched, late).read_text()
    assert "## Submitted late" in text and "no late penalty" in text
    assert "- latelucy: 3/3" in text and "- slowsid: no grade" in text
    assert "- solvedsam" not in text
    # flags.csv stays what the grading found: lateness is listed, not flagged
    with open(tmp_path / "reports" / "00_tiny" / "flags.csv", newline="") as f:
        flags = {row["student_id"]: row["flags"] for row in csv.DictReader(f)}
    assert flags == {"solvedsam": "", "latelucy": "", "slowsid": "crash: the kernel died"}


def test_without_an_import_there_is_nothing_late(tmp_path):
    assert report.import_notes(tmp_path) == ([], [])
    text = report.write(tmp_path, "00_tiny", [entry("solvedsam")], [], []).read_text()
    assert "late" not in text.lower()
