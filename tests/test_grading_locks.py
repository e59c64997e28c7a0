"""autograder/locks.py: one writer of a course at a time, and sandbox slots (uids) that no two
graders on one machine share.

Before it, two `course.py run` on one course both wrote its gradebook and the first to finish
deleted the other's work folder; and every grader on a machine used slots 0, 1, ..., so two of
them shared the sandbox uids whose process limit one submission's fork bomb fills.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import tiny_course as tiny

sys.path.insert(0, str(tiny.REPO / "autograder"))
import locks  # noqa: E402 -- autograder/locks.py, through the line above


@pytest.fixture
def slot_dir(tmp_path, monkeypatch):
    """The slots' lock folder, private to the test (real graders on this machine use theirs)."""
    monkeypatch.setattr(locks, "SLOT_DIR", tmp_path / "slots")
    return tmp_path / "slots"


def test_two_graders_get_disjoint_slots_and_freed_slots_are_reused(slot_dir):
    with locks.sandbox_slots(2) as first:
        assert first == [0, 1]
        with locks.sandbox_slots(3) as second:
            assert second == [2, 3, 4]
        with locks.sandbox_slots(1) as third:  # the second grader's slots are free again
            assert third == [2]
    with locks.sandbox_slots(2) as again:
        assert again == [0, 1]


def test_a_slot_is_free_exactly_when_no_grader_holds_it(slot_dir):
    with locks.sandbox_slots(2):
        assert [locks.slot_is_free(s) for s in range(3)] == [False, False, True]
        assert not locks.slot_is_free(1)  # asking does not take it
    assert locks.slot_is_free(0) and locks.slot_is_free(1)


def test_too_few_free_slots_is_one_line_naming_the_fix(slot_dir, monkeypatch):
    monkeypatch.setattr(locks, "SLOTS", 3)
    with locks.sandbox_slots(2):
        with pytest.raises(SystemExit) as stop:
            with locks.sandbox_slots(2):
                pass
    message = str(stop.value)
    assert "only 1 of the 3 sandbox slots are free" in message and "--workers 1" in message
    assert "\n" not in message
    with locks.sandbox_slots(3) as all_of_them:  # the failed claim released its one slot
        assert all_of_them == [0, 1, 2]


def test_a_killed_grader_leaves_no_stale_lock(tmp_path, slot_dir):
    """flock locks die with their process: kill -9 the holder and both locks are free."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); import locks; "
         "locks.SLOT_DIR = locks.Path(sys.argv[3])\n"
         "with locks.course_lock(locks.Path(sys.argv[2]), 'run'), locks.sandbox_slots(2):\n"
         "    print('held', flush=True); time.sleep(600)",
         str(tiny.REPO / "autograder"), str(tmp_path), str(slot_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=r"`course.py run` \(process \d+\) is working"):
            with locks.course_lock(tmp_path, "release"):
                pass
        with locks.sandbox_slots(1) as slots:
            assert slots == [2]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with locks.course_lock(tmp_path, "run"), locks.sandbox_slots(2) as slots:
        assert slots == [0, 1]


def test_course_py_refuses_a_second_writer_of_the_course(tmp_path):
    """`course.py release` while a `run` holds the course: one line naming the holder and the
    fix, exit 1, and nothing of nbgrader started."""
    course = tiny.copy_autograder(tmp_path)
    with locks.course_lock(course, "run"):
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(course / "course.py"), "release"],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "`course.py run` (process" in line and f"is working on the course in {course}" in line
    assert "then run `course.py release` again" in line
    assert "nbgrader" not in result.stdout and not (course / "gradebook.db").exists()
    assert time.monotonic() - started < 60
