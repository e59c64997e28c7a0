"""CIFAR-10 and CIFAR-100 from torchvision's on-disk layout (the original python pickles).

Expected files::

    ROOT/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
    ROOT/cifar-100-python/train, test, meta

Each batch file is a pickled dict with bytes keys: ``b"data"`` is a uint8 array of shape
(N, 3072) whose rows hold one 32x32 image in channel-major order (1024 red values, then
1024 green, then 1024 blue, each plane row by row), so it reshapes to (N, 3, 32, 32).
Labels are ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100); the meta file holds
``b"label_names"`` or ``b"fine_label_names"``.

The files are read by our own reader, which does not check MD5 sums (so small test files in
the real format load too). torchvision is used only to download and extract the archive.
Unpickling is restricted to the few numpy/builtin names these files need.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from sslkit.data import DataNotFound
from sslkit.errors import SSLKitError, one_line

IMAGE_SHAPE = (3, 32, 32)
ROW_SIZE = 3 * 32 * 32

# Per variant: display name, folder, train files, test file, meta file, label key,
# class-name key, torchvision class name, download size.
_VARIANTS = {
    10: {
        "name": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": "test_batch",
        "meta": "batches.meta",
        "label_key": "labels",
        "names_key": "label_names",
        "torchvision": "CIFAR10",
        "size": "163 MB",
    },
    100: {
        "name": "CIFAR-100",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": "test",
        "meta": "meta",
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
        "torchvision": "CIFAR100",
        "size": "161 MB",
    },
}

# The only globals a CIFAR pickle may reference (numpy arrays, python-2 str data).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def _refetch(folder: Path) -> str:
    """The fix for a damaged file in the data set's folder: fetch the data set again."""
    return f"delete {folder} and pass --download to fetch it again"


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except the numpy/builtin ones CIFAR needs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    """Load one CIFAR pickle as a dict with ``str`` keys (original files use bytes keys)."""
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # corrupt, truncated or foreign file
        raise SSLKitError(
            f"cannot read CIFAR file {path} ({one_line(exc)}): {_refetch(path.parent)}"
        ) from exc
    if not isinstance(obj, dict):
        raise SSLKitError(
            f"cannot read CIFAR file {path} (expected a pickled dict): {_refetch(path.parent)}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    batch = _read_pickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise SSLKitError(f"CIFAR file {path} has no '{key}' entry: {_refetch(path.parent)}")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_SIZE:
        raise SSLKitError(
            f"CIFAR file {path}: 'data' must be uint8 of shape (N, {ROW_SIZE}), "
            f"got {data.dtype} {tuple(data.shape)}: {_refetch(path.parent)}"
        )
    labels = np.asarray(batch[label_key])
    # not cast to int64 first: that would truncate 0.7 to 0, and read "3" or True as a label
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise SSLKitError(
            f"CIFAR file {path}: '{label_key}' must be a list of whole numbers, got "
            f"{labels.dtype} of shape {labels.shape}: {_refetch(path.parent)}"
        )
    labels = labels.astype(np.int64)
    if len(labels) != len(data):
        raise SSLKitError(
            f"CIFAR file {path}: {len(data)} images but {len(labels)} '{label_key}': "
            f"{_refetch(path.parent)}"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _read_class_names(path: Path, names_key: str) -> list[str]:
    meta = _read_pickle(path)
    if names_key not in meta:
        raise SSLKitError(f"CIFAR file {path} has no '{names_key}' entry: {_refetch(path.parent)}")
    names = meta[names_key]
    if not isinstance(names, (list, tuple)):
        raise SSLKitError(
            f"CIFAR file {path}: '{names_key}' must be a list of class names, "
            f"got {type(names).__name__}: {_refetch(path.parent)}"
        )
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError as exc:
        raise SSLKitError(
            f"CIFAR file {path}: class names are not UTF-8 ({one_line(exc)}): "
            f"{_refetch(path.parent)}"
        ) from exc


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """Contiguous, writable torch tensor sharing memory with ``array`` where possible."""
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C")
    return torch.from_numpy(array)


def _missing_files(folder: Path, spec: dict) -> list[str]:
    wanted = [*spec["train"], spec["test"], spec["meta"]]
    return [name for name in wanted if not (folder / name).is_file()]


def _download(root: Path, spec: dict) -> None:
    """Fetch and extract the archive into ``root`` with torchvision (its data is not used)."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, spec["torchvision"])
    try:
        root.mkdir(parents=True, exist_ok=True)
        # train=False: after extracting, torchvision only loads the small test batch.
        dataset_class(root=str(root), train=False, download=True)
    except Exception as exc:
        raise SSLKitError(
            f"downloading {spec['name']} with torchvision into {root} failed "
            f"({one_line(exc)}): check the network connection, or put the unpacked "
            f"{spec['folder']} folder there yourself"
        ) from exc


def load_cifar(root: str | Path, classes: int = 10, download: bool = False) -> dict:
    """Load CIFAR-10 (``classes=10``) or CIFAR-100 (``classes=100``, fine labels) from ``root``.

    Returns a dict with ``train_x`` (50000, 3, 32, 32) uint8, ``train_y`` (50000,) int64,
    ``test_x`` (10000, 3, 32, 32) uint8, ``test_y`` (10000,) int64, ``classes`` (list of
    ``classes`` names) and ``unlabeled_x`` = None. (Sizes are those of the real data sets;
    whatever the files hold is returned.) With ``download=True`` missing files are fetched
    with torchvision first; otherwise missing files raise :class:`SSLKitError`.
    """
    if classes not in _VARIANTS:
        raise SSLKitError(f"CIFAR has 10 or 100 classes, got classes={classes!r}: use 10 or 100")
    spec = _VARIANTS[classes]
    root = Path(root)
    folder = root / spec["folder"]

    missing = _missing_files(folder, spec)
    if missing and not _missing_files(root, spec):  # ROOT is the data folder itself
        raise SSLKitError(
            f"--data-root {root} is the {spec['folder']} folder itself: "
            f"pass the folder that holds it, --data-root {root.parent}"
        )
    if missing and download:
        _download(root, spec)
        missing = _missing_files(folder, spec)
        if missing:
            raise SSLKitError(
                f"{spec['name']} download into {root} did not produce {folder}/"
                f"{missing[0]}: delete {folder} and try again"
            )
    if missing:
        hint = (
            f"pass --download to fetch it with torchvision ({spec['size']}), "
            f"or --data-root to the folder that holds it"
        )
        if folder.is_dir():
            raise SSLKitError(
                f"{spec['name']} in {folder} is incomplete (missing {', '.join(missing)}): {hint}"
            )
        raise DataNotFound(f"{spec['name']} not found in {root} (expected {folder}): {hint}",
                           spec['name'], root)

    train = [_read_batch(folder / name, spec["label_key"]) for name in spec["train"]]
    test_x, test_y = _read_batch(folder / spec["test"], spec["label_key"])
    names = _read_class_names(folder / spec["meta"], spec["names_key"])
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])

    if len(names) != classes:
        raise SSLKitError(
            f"{folder / spec['meta']} lists {len(names)} class names, expected {classes}: "
            f"{_refetch(folder)}"
        )
    for split, y in (("train", train_y), ("test", test_y)):
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise SSLKitError(
                f"{spec['name']} {split} labels in {folder} must lie in 0..{classes - 1}, "
                f"found {int(y.min())}..{int(y.max())}: {_refetch(folder)}"
            )

    return {
        "train_x": _to_tensor(train_x),
        "train_y": _to_tensor(train_y),
        "test_x": _to_tensor(test_x),
        "test_y": _to_tensor(test_y),
        "classes": names,
        "unlabeled_x": None,
    }
