"""Files written so that a crash never leaves half of one.

    write_atomic(path, data)    data: the bytes, or a function that writes to an open file

The contents go to a temporary file beside ``path``, are flushed to disk, and the temporary file
is renamed over ``path`` (a rename within one folder is atomic): ``path`` holds its old contents
or the new ones, never a mix. The folder is flushed after the rename too, so that after a power
cut the rename itself is not lost. If writing fails, the temporary file is removed and ``path`` is
untouched. Checkpoints, the run log and the experiments' results are all written this way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # e.g. a read-only folder: the first error counts
            tmp.unlink(missing_ok=True)
        raise
    _flush_folder(path.parent)


def _flush_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it is on disk; where a system or file system cannot
    (Windows, some network mounts) the file itself is written and that has to do."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
