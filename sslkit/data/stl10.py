"""STL-10 from its binary layout (the ``stl10_binary`` folder of the original archive).

Expected files::

    ROOT/stl10_binary/train_X.bin, train_y.bin, test_X.bin, test_y.bin,
                      unlabeled_X.bin, class_names.txt

``*_X.bin`` is raw uint8 with 3 * 96 * 96 = 27648 bytes per image: three colour planes, each
stored column-major (column by column). Read as (N, 3, 96, 96) the last two axes are
(width, height), so they are swapped to give (N, 3, H, W). ``*_y.bin`` holds one uint8 label
per image, 1..10, which is shifted to 0..9. ``class_names.txt`` has one name per line.

The unlabeled split (100000 images, 2.6 GiB in memory) is read in chunks straight into the
result tensor, so loading it needs no second copy. torchvision is used only to download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslkit.data import DataNotFound
from sslkit.errors import SSLKitError, one_line

FOLDER = "stl10_binary"
IMAGE_SIZE = 96
IMAGE_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE
_CHUNK = 2048  # images copied (and transposed) per step
_LABELED_FILES = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
_UNLABELED_FILE = "unlabeled_X.bin"


def _refetch(folder: Path) -> str:
    """The fix for a damaged file in the data set's folder: fetch the data set again."""
    return f"delete {folder} and pass --download to fetch it again"


def _read_images(path: Path) -> torch.Tensor:
    """Read an ``*_X.bin`` file into a (N, 3, 96, 96) uint8 tensor in (C, H, W) order."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise SSLKitError(
            f"{path} is not an STL-10 image file: its size ({size} bytes) is not a positive "
            f"multiple of {IMAGE_BYTES} (one 3x96x96 image): {_refetch(path.parent)}"
        )
    n = size // IMAGE_BYTES
    out = torch.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    target = out.numpy()
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, IMAGE_SIZE, IMAGE_SIZE))
        for start in range(0, n, _CHUNK):
            # Stored column-major: swap (W, H) -> (H, W).
            target[start : start + _CHUNK] = raw[start : start + _CHUNK].transpose(0, 1, 3, 2)
        del raw
    except OSError as exc:
        raise SSLKitError(
            f"cannot read STL-10 file {path} ({one_line(exc)}): {_refetch(path.parent)}"
        ) from exc
    return out


def _read_labels(path: Path, num_classes: int) -> torch.Tensor:
    """Read a ``*_y.bin`` file (uint8 labels 1..K) into an int64 tensor of labels 0..K-1.

    K is the number of names in class_names.txt."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SSLKitError(
            f"cannot read STL-10 file {path} ({one_line(exc)}): {_refetch(path.parent)}"
        ) from exc
    labels = raw.astype(np.int64) - 1
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise SSLKitError(
            f"STL-10 labels in {path} must lie in 1..{num_classes} (class_names.txt lists "
            f"{num_classes} names), found {int(raw.min())}..{int(raw.max())}: "
            f"{_refetch(path.parent)}"
        )
    return torch.from_numpy(labels)


def _read_class_names(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SSLKitError(
            f"cannot read STL-10 file {path} ({one_line(exc)}): {_refetch(path.parent)}"
        ) from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 10:
        raise SSLKitError(f"STL-10 file {path} lists {len(names)} class names, not 10: "
                          f"{_refetch(path.parent)}")
    return names


def _missing_files(folder: Path, unlabeled: bool) -> list[str]:
    wanted = _LABELED_FILES + ([_UNLABELED_FILE] if unlabeled else [])
    return [name for name in wanted if not (folder / name).is_file()]


def _download(root: Path) -> None:
    """Fetch and extract the archive into ``root`` with torchvision (its data is not used)."""
    import torchvision.datasets

    try:
        root.mkdir(parents=True, exist_ok=True)
        # split="test": after extracting, torchvision only loads the smallest split.
        torchvision.datasets.STL10(root=str(root), split="test", download=True)
    except Exception as exc:
        raise SSLKitError(
            f"downloading STL-10 with torchvision into {root} failed ({one_line(exc)}): "
            f"check the network connection, or put the unpacked {FOLDER} folder there yourself"
        ) from exc


def load_stl10(root: str | Path, download: bool = False, unlabeled: bool = True) -> dict:
    """Load STL-10 from ``root``.

    Returns a dict with ``train_x`` (5000, 3, 96, 96) uint8, ``train_y`` (5000,) int64 in
    0..9, ``test_x`` (8000, 3, 96, 96), ``test_y`` (8000,), ``classes`` (10 names) and
    ``unlabeled_x`` (100000, 3, 96, 96) uint8, or None when ``unlabeled=False`` (then
    ``unlabeled_X.bin`` is neither needed nor read). Sizes are those of the real data set;
    whatever the files hold is returned. With ``download=True`` missing files are fetched
    with torchvision first; otherwise missing files raise :class:`SSLKitError`.
    """
    root = Path(root)
    folder = root / FOLDER

    missing = _missing_files(folder, unlabeled)
    if missing and not _missing_files(root, unlabeled):  # ROOT is the data folder itself
        raise SSLKitError(
            f"--data-root {root} is the {FOLDER} folder itself: "
            f"pass the folder that holds it, --data-root {root.parent}"
        )
    if missing and download:
        _download(root)
        missing = _missing_files(folder, unlabeled)
        if missing:
            raise SSLKitError(
                f"STL-10 download into {root} did not produce {folder}/{missing[0]}: "
                f"delete {folder} and try again"
            )
    if missing:
        hint = (
            "pass --download to fetch it with torchvision (2.6 GB), "
            "or --data-root to the folder that holds it"
        )
        if folder.is_dir():
            raise SSLKitError(
                f"STL-10 in {folder} is incomplete (missing {', '.join(missing)}): {hint}"
            )
        raise DataNotFound(f"STL-10 not found in {root} (expected {folder}): {hint}",
                           "STL-10", root)

    classes = _read_class_names(folder / "class_names.txt")
    result: dict = {"classes": classes, "unlabeled_x": None}
    for split in ("train", "test"):
        x = _read_images(folder / f"{split}_X.bin")
        y = _read_labels(folder / f"{split}_y.bin", len(classes))
        if len(x) != len(y):
            raise SSLKitError(
                f"STL-10 {split} split in {folder} has {len(x)} images "
                f"but {len(y)} labels (one byte each) in {split}_y.bin: the files do not "
                f"match, {_refetch(folder)}"
            )
        result[f"{split}_x"], result[f"{split}_y"] = x, y
    if unlabeled:
        result["unlabeled_x"] = _read_images(folder / _UNLABELED_FILE)
    return result
