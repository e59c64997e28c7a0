"""sslkit.atomic: a file is replaced whole or not at all."""

import pytest

from sslkit import atomic
from sslkit.atomic import write_atomic


def test_bytes_and_a_writer_give_the_same_file(tmp_path):
    write_atomic(tmp_path / "a", b"abc")
    write_atomic(tmp_path / "b", lambda f: f.write(b"abc"))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == b"abc"
    write_atomic(tmp_path / "a", b"new")
    assert (tmp_path / "a").read_bytes() == b"new"


@pytest.mark.parametrize("where", ["while writing", "at the rename"])
def test_a_failure_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, where):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"ne")
        raise OSError("disk full")

    def no_rename(src, dst):
        raise OSError("disk full")

    if where == "at the rename":
        monkeypatch.setattr(atomic.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail if where == "while writing" else b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_failure_in_a_read_only_folder_raises_the_first_error(tmp_path, monkeypatch):
    """Where the temporary file cannot be made, its clean-up fails too (EROFS): the error
    raised is the one that says why the write failed, not the clean-up's."""
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("builtins.open", read_only)
    monkeypatch.setattr(atomic.Path, "unlink", lambda self, missing_ok=False: read_only())
    with pytest.raises(OSError) as err:
        write_atomic(tmp_path / "run.json", b"{}")
    assert err.value.errno == 30 and err.value.__context__ is None


def test_the_file_then_the_folder_are_flushed_after_the_rename(tmp_path, monkeypatch):
    """The data reach the disk before the rename, and the folder (which holds the rename)
    after it: without the second, a power cut could bring back the old file."""
    events = []
    real_fsync, real_replace, real_open = atomic.os.fsync, atomic.os.replace, atomic.os.open
    folders = {}

    def fsync(fd):
        events.append(("fsync", folders.get(fd, "file")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", None))
        real_replace(src, dst)

    def open_(path, flags, *args):
        fd = real_open(path, flags, *args)
        folders[fd] = str(path)
        return fd

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    monkeypatch.setattr(atomic.os, "open", open_)
    write_atomic(tmp_path / "a", b"abc")
    assert events == [("fsync", "file"), ("rename", None), ("fsync", str(tmp_path))]
    assert (tmp_path / "a").read_bytes() == b"abc"
