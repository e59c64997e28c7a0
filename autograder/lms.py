"""Import submissions from an LMS download (Canvas "Download Submissions" zip) into nbgrader.

Canvas names each file ``<student>_<canvas user id>_<submission id>_<file name>``, with
``LATE_`` before the user id for a late submission and ``-1``, ``-2``... before the extension
when a student uploaded a file of the same name again:

    doejohn_12345_6789012_04_simclr.ipynb          -> submitted/doejohn/04_simclr/04_simclr.ipynb
    doejohn_LATE_12345_6789013_04_simclr-1.ipynb   -> the same place (a newer upload wins)

The student id is the name part (``doejohn``), or the ``student_id`` that a roster CSV
(columns ``canvas_id,student_id``) gives the Canvas user id. A file is imported when its name
parses and names a notebook of the assignment; of several uploads of the same notebook the one
with the largest submission id, then the largest ``-N``, wins. Everything else is listed in the
import report (``reports/ASSIGNMENT/import.txt``) with the reason: a name that does not parse,
a file that is not one of the assignment's notebooks, an older upload, an unsafe student id.
Late submissions are listed there too (the zip carries no submission time nbgrader could use
for a late penalty; apply it by hand or with a timestamp.txt).
"""

from __future__ import annotations

import csv
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

LATE_LINE = "marked LATE by the LMS: "  # the import report's line naming the late students
CANVAS = re.compile(r"^(?P<student>.+?)_(?P<late>LATE_)?(?P<user>\d+)_(?P<submission>\d+)_"
                    r"(?P<file>.+)$")  # fmt: skip
UPLOAD = re.compile(r"^(?P<stem>.+?)(?:-(?P<copy>\d+))?\.ipynb$")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")


class ImportFailed(Exception):
    """The archive or the roster cannot be used; the message names the file and the fix."""


@dataclass
class Imported:
    files: dict[str, Path] = field(default_factory=dict)  # archive name -> where it went
    unmatched: list[str] = field(default_factory=list)  # "archive name: why"
    late: list[str] = field(default_factory=list)  # student ids


def read_roster(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ImportFailed(f"cannot read the roster {path}: {error}") from None
    if rows and not {"canvas_id", "student_id"} <= set(rows[0]):
        raise ImportFailed(f"the roster {path} needs the columns canvas_id,student_id; its "
                           f"header is {','.join(k for k in rows[0] if k)}")  # fmt: skip
    return {(row["canvas_id"] or "").strip(): (row["student_id"] or "").strip() for row in rows}


def import_zip(archive: Path, course: Path, assignment: str, notebooks: list[str],
               roster: Path | None = None) -> Imported:
    """Put the archive's notebooks for ``assignment`` (whose notebooks are named ``notebooks``)
    into ``course/submitted``; write and return the import report."""
    ids = read_roster(roster)
    result = Imported()
    chosen: dict[tuple[str, str], tuple[tuple[int, int], str]] = {}  # (student, nb) -> best
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as error:
        raise ImportFailed(f"cannot open the LMS archive {archive}: {error}; pass the zip of "
                           "Canvas' Download Submissions with --zip") from None  # fmt: skip
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = PurePosixPath(info.filename).name
            match = CANVAS.match(name)
            upload = UPLOAD.match(match["file"]) if match else None
            if match is None:
                result.unmatched.append(f"{info.filename}: not a Canvas submission file name")
                continue
            if upload is None or upload["stem"] not in notebooks:
                result.unmatched.append(f"{info.filename}: not a notebook of {assignment} "
                                        f"({', '.join(n + '.ipynb' for n in notebooks)})")
                continue
            student = ids.get(match["user"], match["student"])
            if not SAFE_ID.match(student):
                result.unmatched.append(f"{info.filename}: unusable student id {student!r}")
                continue
            if match["late"] and student not in result.late:
                result.late.append(student)
            rank = (int(match["submission"]), int(upload["copy"] or 0))
            key = (student, upload["stem"])
            if key in chosen:
                older = min(chosen[key], (rank, info.filename))
                chosen[key] = max(chosen[key], (rank, info.filename))
                result.unmatched.append(f"{older[1]}: an older upload of {key[1]}.ipynb by "
                                        f"{student}")  # fmt: skip
            else:
                chosen[key] = (rank, info.filename)
        for (student, notebook), (_, filename) in sorted(chosen.items()):
            target = course / "submitted" / student / assignment / f"{notebook}.ipynb"
            try:
                content = zf.read(filename)
            except (zipfile.BadZipFile, EOFError, OSError) as error:
                result.unmatched.append(f"{filename}: damaged in the archive ({error})")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.part")  # a kill leaves no cut notebook
            partial.write_bytes(content)
            partial.replace(target)
            result.files[filename] = target
    write_report(result, course, assignment, archive)
    return result


def write_report(result: Imported, course: Path, assignment: str, archive: Path) -> Path:
    folder = course / "reports" / assignment
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"Import of {archive.name} into submitted/ for {assignment}",
             f"imported: {len(result.files)} notebooks of "
             f"{len({p.parent.parent.name for p in result.files.values()})} students",
             f"not imported: {len(result.unmatched)}"]  # fmt: skip
    lines += [f"  {text}" for text in result.unmatched]
    if result.late:
        lines.append(f"{LATE_LINE}{', '.join(sorted(result.late))}")
    path = folder / "import.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
