"""Autograde an assignment's submissions in parallel, resumably, with nbgrader underneath.

Each submission is graded by its own ``nbgrader autograde ASSIGNMENT --student=S`` process in a
private copy of the course (its own ``gradebook.db`` copied from the course's, its own
``submitted/S`` and ``autograded/S``), so the workers never write the same database. When a
worker ends, this process, and only this process, merges its result into the course: the
autograded folder is copied into ``autograded/S``, the scores, comments and late penalty into
``gradebook.db`` (one transaction), then one line is appended to the run's journal
``reports/ASSIGNMENT/journal.jsonl``. Writes to the gradebook are therefore serial, and the
gradebook never holds a half-graded submission.

Resuming: a submission whose journal line says ``graded`` is not graded again, unless its hash
changed: the hash covers the submitted folder (a re-collected submission is graded again) and
the assignment's cells in the gradebook (after a release with changed tests, every submission
is graded again). A ``graded`` line whose scores are not in the gradebook (a gradebook deleted
and released again) is graded again too, and so is every submission whose last line says
``failed``: the cause may have been the grading machine's (memory, a time limit), fixed since.
Killing the grader loses at most the submissions being graded at that moment; running it again
grades them and the rest. A kill between a gradebook commit and its journal line
(microseconds) grades that one submission again, which replaces its scores with the same ones.

Every submission ends with a journal line: ``graded`` (its scores are in the gradebook) or
``failed`` (nbgrader could not grade it: a crash, a kernel that died, the notebook's time
budget), each with the flags of report.py.

A student folder ``submitted/S/`` without a folder of the assignment, but with notebooks that
are in no folder of another assignment (``submitted/S/00_Tiny/``, notebooks straight in
``submitted/S/``), is not graded: it is flagged (``missing notebook``) and gets a row with 0 in
grades.csv, so that no student is left out of the report without a word.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import locks
import report
import sandbox
from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy.exc import SAWarning

CONFIG_SHIM = """# A private copy of the course for one worker of parallel.py: the course's
# configuration, with this folder as the root (its own gradebook.db, submitted/, autograded/).
import os
_root, _config = {root!r}, {config!r}
_names = {{"__file__": _config, "get_config": get_config}}
exec(compile(open(_config).read(), _config, "exec"), _names)
c = get_config()
for _name, _default in (("source_directory", "source"), ("release_directory", "release")):
    c.CourseDirectory[_name] = os.path.join(_root, c.CourseDirectory.get(_name, _default))
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
"""


@dataclass
class Entry:
    """One journal line: how one submission ended."""

    student: str
    digest: str  # of the submitted folder: a re-collected submission is graded again
    status: str  # "graded": scores in the gradebook; "failed": nbgrader could not grade it
    flags: list[str] = field(default_factory=list)
    score: float | None = None
    max_score: float | None = None
    seconds: float = 0.0


def submission_digest(folder: Path) -> str:
    """sha256 over the submitted folder's file names and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class Journal:
    """reports/ASSIGNMENT/journal.jsonl: one JSON line per finished submission, appended and
    fsync'ed as each one is merged; the last line of a student wins."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def entries(self) -> dict[str, Entry]:
        if not self.path.exists():
            return {}
        entries = {}
        for line in self.path.read_text().splitlines():
            try:
                entry = Entry(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut by a kill: that submission is graded again
            entries[entry.student] = entry
        return entries

    def append(self, entry: Entry) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(asdict(entry)) + "\n")
            f.flush()
            os.fsync(f.fileno())


def nbgrader_env(slot: int | None = None, threads: int | None = None) -> dict[str, str]:
    """The environment nbgrader runs in (see course.py): the interpreter's bin/ on PATH, the ci
    profile; for a worker, its sandbox slot (uid) and its share of the CPU threads."""
    env = dict(os.environ, SSLKIT_PROFILE="ci")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if slot is not None:
        env["SSLKIT_SANDBOX_SLOT"] = str(slot)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def copy_gradebook(source: Path, target: Path) -> None:
    """A consistent copy of an SQLite gradebook (the backup API, not a file copy)."""
    target.unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def connect(gradebook: Path) -> sqlite3.Connection:
    """The gradebook, read-only; exit naming the fix if there is none (a fresh clone)."""
    if not gradebook.is_file():
        raise SystemExit(f"there is no gradebook at {gradebook}; run `python autograder/course.py "
                         "release` (nbgrader generate_assignment) first")  # fmt: skip
    return sqlite3.connect(f"{gradebook.resolve().as_uri()}?mode=ro", uri=True)


def released_cells(gradebook: Path, assignment: str) -> str:
    """sha256 over the assignment's cells in the gradebook: sources (hidden tests included),
    checksums and points. It changes when the assignment is released with other tests."""
    with connect(gradebook) as db:
        cells = db.execute(
            "SELECT notebook.name, source_cell.name, source_cell.source, source_cell.checksum "
            "FROM source_cell JOIN notebook ON source_cell.notebook_id = notebook.id "
            "JOIN assignment ON notebook.assignment_id = assignment.id "
            "WHERE assignment.name = ? ORDER BY notebook.name, source_cell.name", (assignment,)
        ).fetchall()
        points = db.execute(
            "SELECT notebook.name, base_cell.name, grade_cells.max_score FROM grade_cells "
            "JOIN base_cell ON grade_cells.id = base_cell.id "
            "JOIN notebook ON base_cell.notebook_id = notebook.id "
            "JOIN assignment ON notebook.assignment_id = assignment.id "
            "WHERE assignment.name = ? ORDER BY notebook.name, base_cell.name", (assignment,)
        ).fetchall()
    db.close()
    return hashlib.sha256(json.dumps([cells, points]).encode()).hexdigest()


def graded_students(gradebook: Path, assignment: str, scored: bool = False) -> set[str]:
    """The students with a submission of the assignment in the gradebook. scored: only those
    whose submission has a score, an earlier grading, not the empty record that a failed plain
    ``nbgrader autograde`` (``make grade``) leaves behind, every score of which is NULL."""
    query = ("SELECT DISTINCT submitted_assignment.student_id FROM submitted_assignment "
             "JOIN assignment ON submitted_assignment.assignment_id = assignment.id ")
    if scored:
        query += ("JOIN submitted_notebook ON submitted_notebook.assignment_id = "
                  "submitted_assignment.id JOIN grade ON grade.notebook_id = submitted_notebook.id "
                  "WHERE assignment.name = ? AND (grade.auto_score IS NOT NULL OR "
                  "grade.manual_score IS NOT NULL OR grade.extra_credit IS NOT NULL)")
    else:
        query += "WHERE assignment.name = ?"
    with connect(gradebook) as db:
        rows = db.execute(query, (assignment,)).fetchall()
    db.close()
    return {student for (student,) in rows}


def assignment_names(gradebook: Path) -> set[str]:
    """The names of the course's assignments in the gradebook."""
    with connect(gradebook) as db:
        names = {name for (name,) in db.execute("SELECT name FROM assignment")}
    db.close()
    return names


def course_id(gradebook: Path, assignment: str) -> str:
    """The nbgrader course id the assignment was released under (nbgrader's API needs it)."""
    with connect(gradebook) as db:
        query = "SELECT course_id FROM assignment WHERE name = ?"
        row = db.execute(query, (assignment,)).fetchone()
    db.close()
    if row is None:
        raise SystemExit(f"{assignment} is not in {gradebook}; run `python autograder/course.py "
                         "release` (nbgrader generate_assignment) first")
    return row[0]


@dataclass
class Grader:
    """Grades one assignment of the course rooted at ``course`` (the autograder/ folder)."""

    course: Path
    assignment: str
    workers: int = 2
    timeout: float = 3600  # seconds for one submission's nbgrader process, kernel included
    log: object = print

    def __post_init__(self):
        self.course = Path(self.course).resolve()
        self.reports = self.course / "reports" / self.assignment
        self.work = self.course / ".work" / self.assignment
        self.journal = Journal(self.reports / "journal.jsonl")

    # ------------------------------------------------------------------ what to grade
    def students(self) -> list[str]:
        submitted = self.course / "submitted"
        return sorted(p.parent.name for p in submitted.glob(f"*/{self.assignment}") if p.is_dir())

    def todo(self, force: bool = False) -> list[str]:
        """The students to grade: no journal line, a changed hash, a last line that says
        ``failed``, or scores missing from the gradebook; every student with ``force``."""
        done = {} if force else self.journal.entries()
        in_gradebook = graded_students(self.course / "gradebook.db", self.assignment)
        return [s for s in self.students()
                if s not in done or done[s].digest != self.digest(s)
                or done[s].status == "failed" or s not in in_gradebook]  # fmt: skip

    def misplaced(self) -> list[Entry]:
        """A ``failed`` entry, flagged, for each submitted/S/ that has no folder of the
        assignment but has notebooks outside the folders of the course's assignments (a
        misnamed folder, notebooks straight in submitted/S/); hidden folders do not count."""
        submitted = self.course / "submitted"
        assignments = assignment_names(self.course / "gradebook.db")
        entries = []
        for folder in sorted(p for p in submitted.glob("*") if p.is_dir()):
            if (folder / self.assignment).is_dir():
                continue
            notebooks = [nb.relative_to(submitted) for nb in folder.rglob("*.ipynb")]
            found = sorted({f"submitted/{nb.parent}/" for nb in notebooks
                            if nb.parts[1] not in assignments
                            and not any(part.startswith(".") for part in nb.parts)})  # fmt: skip
            if found:
                flag = (f"missing notebook: no folder submitted/{folder.name}/{self.assignment}/, "
                        f"but notebooks in {', '.join(found)}; move them there and run again")
                entries.append(Entry(folder.name, "", "failed", [flag]))
        return entries

    @cached_property
    def released(self) -> str:
        return released_cells(self.course / "gradebook.db", self.assignment)

    def digest(self, student: str) -> str:
        """The submission's files and the assignment's released cells (tests, points)."""
        folder = submission_digest(self.course / "submitted" / student / self.assignment)
        return hashlib.sha256(f"{self.released}\0{folder}".encode()).hexdigest()

    # ------------------------------------------------------------------ one worker
    def prepare(self, student: str, template: Path) -> Path:
        """A private course for one student: config shim, gradebook copy, the submission."""
        private = self.work / student
        shutil.rmtree(private, ignore_errors=True)
        (private / "submitted").mkdir(parents=True)
        shutil.copytree(self.course / "submitted" / student / self.assignment,
                        private / "submitted" / student / self.assignment,
                        symlinks=True)  # fmt: skip
        sandbox.remove_links(private / "submitted")  # nbgrader would copy what a link points to
        shutil.copy(template, private / "gradebook.db")
        (private / "nbgrader_config.py").write_text(CONFIG_SHIM.format(
            root=str(self.course), config=str(self.course / "nbgrader_config.py")))
        return private

    def grade_one(self, student: str, private: Path, slot: int) -> tuple[int, str, float]:
        """Run nbgrader autograde for one student in its private course; (status, log, s)."""
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        command = [sys.executable, "-m", "nbgrader", "autograde", self.assignment,
                   f"--student={student}", "--force"]  # fmt: skip
        start = time.monotonic()
        with open(private / "nbgrader.log", "w") as out:
            process = subprocess.Popen(command, cwd=private, stdout=out, stderr=subprocess.STDOUT,
                                       env=nbgrader_env(slot, threads))  # fmt: skip
            try:
                status = process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                process.kill()  # its sandboxed kernel gets SIGTERM and takes the sandbox down
                process.wait()
                out.write(f"\n{report.BUDGET_MESSAGE} ({self.timeout:.0f} s, --timeout)\n")
                status = -9
        return status, (private / "nbgrader.log").read_text(), time.monotonic() - start

    # ------------------------------------------------------------------ merging, serially
    def gradebook(self, course: Path) -> Gradebook:
        return Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id=self.course_id)

    def merge(self, student: str, private: Path) -> bool:
        """Copy one worker's result into the course; False if it has no grades to merge."""
        with warnings.catch_warnings():  # nbgrader's add_submission trips SQLAlchemy warnings
            warnings.simplefilter("ignore", SAWarning)
            return self._merge(student, private)

    def _merge(self, student: str, private: Path) -> bool:
        graded = private / "autograded" / student / self.assignment
        if not graded.is_dir():
            return False
        with self.gradebook(private) as mine:
            try:
                done = mine.find_submission(self.assignment, student)
            except MissingEntry:
                return False
            notebooks = {nb.name: nb for nb in done.notebooks}
            if any(g.auto_score is None and g.cell.cell_type == "code"
                   for nb in notebooks.values() for g in nb.grades):  # fmt: skip
                return False
            target = self.course / "autograded" / student / self.assignment
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(graded, target)
            with self.gradebook(self.course) as gb:
                student_row = mine.find_student(student)
                gb.update_or_create_student(student, first_name=student_row.first_name,
                                            last_name=student_row.last_name,
                                            email=student_row.email)  # fmt: skip
                gb.update_or_create_submission(self.assignment, student,
                                               timestamp=done.timestamp)  # fmt: skip
                for name, nb in notebooks.items():
                    into = gb.find_submission_notebook(name, self.assignment, student)
                    into.late_submission_penalty = nb.late_submission_penalty
                    for grade in nb.grades:
                        row = gb.find_grade(grade.name, name, self.assignment, student)
                        row.auto_score = grade.auto_score
                        row.needs_manual_grade = (row.manual_score is not None
                                                  or grade.auto_score is None)  # fmt: skip
                    for comment in nb.comments:
                        row = gb.find_comment(comment.name, name, self.assignment, student)
                        row.auto_comment = comment.auto_comment
                gb.db.commit()
        return True

    def finish(self, student: str, digest: str, status: int, output: str, seconds: float,
               private: Path) -> Entry:
        merged = status == 0 and self.merge(student, private)
        graded = private / "autograded" / student / self.assignment
        try:
            flags = report.flags(self.course, self.course_id, self.assignment, student, output,
                                 graded)  # fmt: skip
        except Exception as error:  # noqa: BLE001 -- one odd submission must not stop the run
            flags = [f"check by hand: the grader could not inspect this submission "
                     f"({type(error).__name__}: {str(error)[:120]})"]  # fmt: skip
        reasons = ("crash", "timeout", "missing", "unreadable")
        if not merged and not any(f.startswith(reasons) for f in flags):
            flags.append(f"crash: nbgrader could not grade it ({report.last_error(output)})")
        earlier = graded_students(self.course / "gradebook.db", self.assignment, scored=True)
        if not merged and student in earlier:
            score, top = self.score(student)
            flags.append(f"stale grade: the gradebook and grades.csv still hold {score:g}/{top:g}"
                         " from an earlier grading, not of this submission")  # fmt: skip
        entry = Entry(student, digest, "graded" if merged else "failed", flags,
                      seconds=round(seconds, 1))  # fmt: skip
        if merged:
            entry.score, entry.max_score = self.score(student)
        self.journal.append(entry)
        shutil.rmtree(private, ignore_errors=True)
        return entry

    def score(self, student: str) -> tuple[float, float]:
        with self.gradebook(self.course) as gb:
            submission = gb.find_submission(self.assignment, student)
            return float(submission.score), float(submission.max_score)

    # ------------------------------------------------------------------ the run
    def run(self, force: bool = False) -> list[Entry]:
        """Grade every submission not yet graded (all with ``force``); return what finished
        in this run, in the order it finished."""
        todo = self.todo(force)
        total = len(self.students())
        done = {} if force else self.journal.entries()
        retried = sum(done[s].status == "failed" for s in todo if s in done)
        again = f", {retried} failed last time: tried again" if retried else ""
        self.log(f"grading {len(todo)} of {total} submissions of {self.assignment} "
                 f"with {self.workers} workers ({total - len(todo)} already graded{again})")
        misplaced = self.misplaced()
        for entry in misplaced:
            self.log(f"  {entry.student}: not graded  [{entry.flags[0]}]")
        if not todo and not misplaced:
            return []
        self.course_id = course_id(self.course / "gradebook.db", self.assignment)
        with self.gradebook(self.course) as gb:  # everyone gets a row in grades.csv, graded or not
            for student in [*todo, *(entry.student for entry in misplaced)]:
                gb.update_or_create_student(student)
        if not todo:
            return []
        self.work.mkdir(parents=True, exist_ok=True)
        template = self.work / "gradebook-template.db"
        copy_gradebook(self.course / "gradebook.db", template)

        finished: list[Entry] = []
        running: dict[Future, tuple[str, str, Path, int]] = {}
        queue = list(todo)
        # sandbox uids no other grader on this machine uses (locks.py)
        with locks.sandbox_slots(self.workers) as slots, ThreadPoolExecutor(self.workers) as pool:
            while queue or running:
                while queue and slots:
                    student, slot = queue.pop(0), slots.pop(0)
                    digest = self.digest(student)  # of what is graded, before it is copied
                    private = self.prepare(student, template)
                    future = pool.submit(self.grade_one, student, private, slot)
                    running[future] = (student, digest, private, slot)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    student, digest, private, slot = running.pop(future)
                    slots.append(slot)
                    entry = self.finish(student, digest, *future.result(), private)
                    finished.append(entry)
                    flags = f"  [{'; '.join(entry.flags)}]" if entry.flags else ""
                    score = (f"{entry.score:g}/{entry.max_score:g}"
                             if entry.score is not None else "no grade")  # fmt: skip
                    self.log(f"  {len(finished)}/{len(todo)} {student}: {entry.status}, "
                             f"{score}, {entry.seconds:.0f} s{flags}")
        shutil.rmtree(self.work, ignore_errors=True)
        return finished
