"""What a grading run flags, and the report that lists it.

A flag is one line naming a reason to look at a submission by hand; a flagged submission may
still have its grade (a tampered test cell is graded with the original) or have none (a crash):

    missing notebook   the submission folder lacks a notebook of the assignment (scored 0)
    unreadable notebook  the notebook is not a Jupyter notebook (cut JSON...; scored 0)
    wrong notebook     it has none of the assignment's cells (another assignment's notebook)
    output cut         a cell printed more than CappedExecute.max_output_bytes
    stale grade        (parallel.py) this grading failed; the gradebook keeps an earlier one
    tampered           a test or read-only cell edited or deleted, or its points or nbgrader
                       flags (grade, solution, locked) changed, in the submitted notebook
                       (nbgrader graded it with the original cell)
    calls the reference  a test failed with sslkit.grading's delegation message: the answer only
                       calls sslkit's reference implementation
    timeout            a cell ran past Execute.timeout (scored 0), or the whole notebook ran past
                       its budget (no grade)
    crash              nbgrader could not grade it: the kernel died (memory, a signal,
                       os._exit), could not start, or nbgrader failed
    check by hand      the student's code (answer cells and cells the student added) reaches into
                       the kernel's machinery (IPython's hooks, traceback display, exception
                       hooks, a function's ``__code__``), which could hide a failing test, or
                       reads IPython's input history (``In``, ``_ih``, ``_i1``, ``%history``),
                       which holds the test cells run before, hidden tests included, and can put
                       them into the feedback (README, "What the sandbox does not protect")

``reports/ASSIGNMENT/report.md`` lists every flagged submission and why; ``flags.csv`` holds
the same with one row per submission, ``grades.csv`` is nbgrader's export.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import nbformat
from capped_output import CUT
from feedback import HIDDEN, is_test_cell
from lms import LATE_LINE
from restore_cells import released_flags

BUDGET_MESSAGE = "ran past its time budget"  # printed by sandbox.py and parallel.py
DELEGATION = "your answer calls the reference"  # sslkit.grading.guard.call's message
KERNEL_MACHINERY = re.compile(
    r"get_ipython|input_transformers|ast_transformers|showtraceback|set_custom_exc|excepthook"
    r"|events\.register|__code__|sys\.settrace|builtins"
    # IPython's input history: In (not the first word of a sentence in a comment), _ih, _i,
    # _ii, _iii, _i1, _i2..., %hist and %history
    r"|\bIn\b(?!\s+\w)|\b_ih\b|\b_i(?:i{0,2}|\d+)\b|%hist(?:ory)?\b"
)
NBGRADER_EPILOGUE = r"the above traceback|There was an error processing assignment"
CRASHES = {
    "DeadKernelError": "the kernel died (memory, a signal, os._exit)",
    "Kernel didn't respond": "the kernel did not start",
    "Kernel died before replying": "the kernel did not start",
}


def nbgrader_meta(cell) -> dict:
    """A cell's nbgrader metadata; {} where a submission mangled it (not a mapping)."""
    metadata = cell.get("metadata") if isinstance(cell, dict) else None
    meta = metadata.get("nbgrader") if isinstance(metadata, dict) else None
    return meta if isinstance(meta, dict) else {}


def source_of(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def points_of(cell) -> float | None:
    try:
        return float(nbgrader_meta(cell).get("points", 0))
    except (TypeError, ValueError):  # "points": "lots"
        return None


def normalised(source: str) -> list[str]:
    """Non-blank lines, stripped: the release's test cell as nbgrader wrote it."""
    return [line.strip() for line in HIDDEN.sub("", source).splitlines() if line.strip()]


def read_notebook(path: Path) -> list:
    """The cells of a notebook. FileNotFoundError if there is none; ValueError, with the reason
    in a few words, if the file is not a notebook (a student's file can hold anything: cut
    JSON, a list, cells without metadata)."""
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        nb = nbformat.read(path, as_version=4)
        return [c for c in nb.cells if isinstance(c, dict)]
    except Exception as error:  # noqa: BLE001 -- whatever nbformat makes of a broken file
        reason = " ".join(str(error).split())[:120] or type(error).__name__
        raise ValueError(reason) from None


def by_grade_id(cells: list) -> dict[str, object]:
    """grade_id -> cell; of a copied and pasted cell the first copy, the one nbgrader grades
    (restore_cells.CleanMetadata)."""
    found: dict[str, object] = {}
    for cell in cells:
        if nbgrader_meta(cell).get("grade_id"):
            found.setdefault(str(nbgrader_meta(cell)["grade_id"]), cell)
    return found


def read_cells(path: Path) -> dict[str, object]:
    """grade_id -> cell of a notebook; the errors of ``read_notebook``."""
    return by_grade_id(read_notebook(path))


def changed_flags(meta: dict, released: dict) -> list[str]:
    """Which of a cell's nbgrader flags differ from the released cell's, as nbgrader reads them
    (utils.is_grade, is_solution, is_locked): grade, solution, or else locked, which a grade or
    solution flag decides."""
    changed = [key for key in ("grade", "solution") if bool(meta.get(key)) != released[key]]
    locked = not meta.get("solution") and bool(meta.get("grade") or meta.get("locked"))
    return changed or (["locked"] if locked != released["locked"] else [])


def tampered(submitted: dict, notebook) -> list[str]:
    """Cells of the gradebook's ``notebook`` that the submitted cells (grade_id -> cell) lack
    or changed: a test or read-only cell deleted or edited, a test cell's points, or any
    cell's nbgrader flags."""
    found = []
    points = {cell.name: float(cell.max_score) for cell in notebook.grade_cells}
    released = released_flags(notebook)
    for cell in notebook.source_cells:
        mine = submitted.get(cell.name)
        kind = ("test cell" if cell.name in points else "read-only cell" if cell.locked
                else "answer cell")  # fmt: skip
        if mine is None:
            if cell.locked:
                found.append(f"{kind} {cell.name} deleted")
            continue
        changed = changed_flags(nbgrader_meta(mine), released[cell.name])
        if cell.locked and normalised(source_of(mine)) != normalised(cell.source):
            found.append(f"{kind} {cell.name} edited")
        elif cell.name in points and points_of(mine) != points[cell.name]:
            found.append(f"{kind} {cell.name}: points changed")
        elif changed:
            found.append(f"{kind} {cell.name}: nbgrader flags changed ({', '.join(changed)})")
    return found


def from_outputs(graded: dict) -> list[str]:
    """Delegation, cell timeouts, cut output and a dead kernel, read from the autograded
    cells."""
    found = []
    for name, cell in graded.items():
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and CUT in str(output.get("text")):
                found.append(f"output cut: cell {name} printed more than "
                             "CappedExecute.max_output_bytes")  # fmt: skip
            if output.get("output_type") != "error":
                continue
            ename, evalue = output.get("ename", ""), " ".join(str(output.get("evalue")).split())
            if DELEGATION in evalue and is_test_cell(cell):
                found.append(f"calls the reference: {name}: {evalue.split(';')[0]}")
            elif ename == "CellTimeoutError":
                found.append(f"timeout: cell {name} ran past Execute.timeout")
            elif ename == "DeadKernelError":
                found.append(f"crash: {CRASHES['DeadKernelError']} in cell {name}")
    return found


def last_error(output: str) -> str:
    """The last line of nbgrader's output that names an error, shortened; not nbgrader's
    closing lines, which only point at the traceback above them."""
    lines = [line.strip() for line in output.splitlines()
             if re.search(r"Error|error|died|Killed|budget", line)
             and not re.search(NBGRADER_EPILOGUE, line)]  # fmt: skip
    return (lines[-1] if lines else "no error message")[:200]


def flags(course: Path, course_id: str, assignment: str, student: str, output: str,
          graded: Path) -> list[str]:
    """Every flag of one submission. ``output`` is its nbgrader's log, ``graded`` the folder of
    its autograded notebooks (possibly absent)."""
    from nbgrader.api import Gradebook

    found: list[str] = []
    submitted = course / "submitted" / student / assignment
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id=course_id) as gb:
        for notebook in gb.find_assignment(assignment).notebooks:
            name = f"{notebook.name}.ipynb"
            try:
                cells = read_notebook(submitted / name)
            except FileNotFoundError:
                found.append(f"missing notebook: {name}")
                continue
            except ValueError as error:
                found.append(f"unreadable notebook: {name} is not a Jupyter notebook ({error}); "
                             "ask the student for the file again")  # fmt: skip
                continue
            mine = by_grade_id(cells)
            if notebook.source_cells and not set(mine) & {c.name for c in notebook.source_cells}:
                found.append(f"wrong notebook: {name} has none of {assignment}'s cells (another "
                             "assignment's notebook?); graded with its tests put back")  # fmt: skip
            else:
                found += [f"tampered: {text}" for text in tampered(mine, notebook)]
            # the student's code: every code cell but the test and read-only cells, which
            # nbgrader replaces by the gradebook's copy (a pasted copy of one is the student's)
            restored = {id(mine[c.name]) for c in notebook.source_cells
                        if c.locked and c.name in mine}  # fmt: skip
            answers = [source_of(c) for c in cells
                       if c.get("cell_type") == "code" and id(c) not in restored]  # fmt: skip
            touched = sorted({m.group() for s in answers for m in KERNEL_MACHINERY.finditer(s)})
            if touched:
                found.append(f"check by hand: the answers use {', '.join(touched)}")
            try:
                found += from_outputs(read_cells(graded / name))
            except (FileNotFoundError, ValueError):  # not graded: nbgrader failed before
                pass
    if BUDGET_MESSAGE in output:
        found.append("timeout: the notebook ran past its time budget; no grade")
    for needle, text in CRASHES.items():
        if needle in output and not any(text in f for f in found):
            found.append(f"crash: {text}")
    return list(dict.fromkeys(found))  # each once, in order


def import_notes(folder: Path) -> tuple[list[str], list[str]]:
    """(the files not imported, the students marked late) from the import report
    ``folder/import.txt`` that lms.py wrote; both empty when there was no import."""
    path = folder / "import.txt"
    if not path.exists():
        return [], []
    lines = path.read_text().splitlines()
    unmatched = [line.strip() for line in lines if line.startswith("  ")]
    late = [name.strip() for line in lines if line.startswith(LATE_LINE)
            for name in line[len(LATE_LINE):].split(",") if name.strip()]  # fmt: skip
    return unmatched, late


def write(course: Path, assignment: str, entries: list, unmatched: list[str],
          late: list[str] = ()) -> Path:  # fmt: skip
    """reports/ASSIGNMENT/report.md and flags.csv from the journal's entries (one per
    submission), the import's unmatched files and the students the LMS marked late; returns
    the report's path."""
    folder = course / "reports" / assignment
    folder.mkdir(parents=True, exist_ok=True)
    flagged = [e for e in entries if e.flags]
    graded = [e for e in entries if e.status == "graded"]
    lines = [f"# Grading report: {assignment}", "",
             f"- submissions: {len(entries)}; graded: {len(graded)}; "
             f"without a grade: {len(entries) - len(graded)}; flagged: {len(flagged)}",
             "- grades: `grades.csv` (nbgrader export); feedback: `feedback/<student>/`",
             ""]  # fmt: skip
    if flagged:
        lines += ["## Flagged submissions", "", "| student | grade | why |", "|---|---|---|"]
        for e in flagged:
            grade = f"{e.score:g}/{e.max_score:g}" if e.score is not None else "none"
            lines.append(f"| {e.student} | {grade} | {'<br>'.join(e.flags)} |")
        lines.append("")
    if late:
        scores = {e.student: e for e in entries}
        lines += ["## Submitted late (marked LATE by the LMS)", "",
                  "The zip has no submission times: nbgrader applied no late penalty "
                  "(`late_submission_penalty` is 0 in grades.csv). Apply it by hand.",
                  ""]  # fmt: skip
        for student in late:
            e = scores.get(student)
            grade = (f"{e.score:g}/{e.max_score:g}" if e is not None and e.score is not None
                     else "no grade")  # fmt: skip
            lines.append(f"- {student}: {grade}")
        lines.append("")
    if unmatched:
        lines += ["## Files in the LMS archive that were not imported", ""]
        lines += [f"- {text}" for text in unmatched] + [""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    with open(folder / "flags.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student_id", "status", "score", "max_score", "flags"])
        for e in entries:
            writer.writerow([e.student, e.status, e.score, e.max_score, "; ".join(e.flags)])
    return report
