"""Locks that keep grading runs out of each other's way on one machine.

    with course_lock(COURSE_ROOT, "run"):      one command that writes the course at a time
    with sandbox_slots(2) as slots:            sandbox slots no other grader on the machine holds

Both are ``flock`` locks, which the kernel drops when their process ends, however it ends: a
killed grader never leaves a stale lock behind.

The course lock: two commands writing one course at once (``run`` twice, ``run`` during a
``release``) would both write gradebook.db and autograded/, and the first ``run`` to finish
deletes the work folder the other is grading in. The second one stops at once, naming the first.

Sandbox slots: as root, sandbox.py runs each kernel as uid 61000 + slot, and its process limit
counts every process of that uid. Two graders on one machine (two courses, two assignments)
that both used slots 0 and 1 would share those uids: one submission's fork bomb would leave the
other grader's kernels unable to start a thread. Each grader claims slots no one else holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

SLOTS = 100  # sandbox uids 61000..61099 (sandbox.UID_BASE + slot)
SLOT_DIR = Path(tempfile.gettempdir()) / "sslkit-sandbox-slots"
COURSE_LOCK = ".grading.lock"  # in the course root, git-ignored


def _try_lock(path: Path, mode: int = os.O_RDONLY) -> int | None:
    """An open descriptor holding an exclusive flock on path (created if missing), or None if
    another open file holds it. Read-only by default: a lock file another user made (0644)
    can still be locked."""
    fd = os.open(path, mode | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def course_lock(course: Path, command: str):
    """Hold the course for `command`; exit with one line if another command holds it."""
    path = Path(course) / COURSE_LOCK
    fd = _try_lock(path, os.O_RDWR)
    if fd is None:
        holder = path.read_text().strip() or "another grading command"
        raise SystemExit(f"{holder} is working on the course in {course}: wait for it to "
                         f"finish, then run `course.py {command}` again")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"`course.py {command}` (process {os.getpid()})".encode())
        yield
    finally:
        os.close(fd)


def slot_is_free(slot: int) -> bool:
    """Whether no grader on this machine holds `slot` now (its lock is taken and released)."""
    if not SLOT_DIR.is_dir():  # no grader has run on this machine since it started
        return True
    fd = _try_lock(SLOT_DIR / f"slot-{slot}")
    if fd is not None:
        os.close(fd)
    return fd is not None


@contextlib.contextmanager
def sandbox_slots(n: int):
    """Claim n sandbox slots that no other grader on this machine holds; yields their numbers
    (the lowest free ones). Exits with one line when fewer than n are free."""
    SLOT_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):  # every user's graders share the folder
        os.chmod(SLOT_DIR, 0o1777)
    held: dict[int, int] = {}  # slot -> descriptor holding its lock
    try:
        for slot in range(SLOTS):
            if len(held) == n:
                break
            fd = _try_lock(SLOT_DIR / f"slot-{slot}")
            if fd is not None:
                held[slot] = fd
        if len(held) < n:
            raise SystemExit(f"only {len(held)} of the {SLOTS} sandbox slots are free on this "
                             f"machine (other graders hold the rest): use --workers "
                             f"{max(len(held), 1)} or wait for them to finish")
        yield list(held)
    finally:
        for fd in held.values():
            os.close(fd)
