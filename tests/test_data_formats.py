"""Tests for the CIFAR, STL-10 and ImageFolder readers on small files in the real formats.

Every test writes its own tiny data set into ``tmp_path``; nothing touches the network.
Pixel values encode their position, so a channel-, row- or column-order mistake in a reader
shows up as a wrong value at a known index.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslkit.data.cifar import load_cifar
from sslkit.data.folder import decode_rgb, load_image_folder
from sslkit.data.stl10 import IMAGE_BYTES, load_stl10
from sslkit.errors import SSLKitError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]  # fmt: skip


# ----------------------------------------------------------------------------- helpers
def cifar_images(n: int, offset: int) -> np.ndarray:
    """(n, 3, 32, 32) uint8 images whose pixel [i, c, h, w] = (offset + i + 7c + 3h + w) % 256."""
    i, c, h, w = np.meshgrid(
        np.arange(n), np.arange(3), np.arange(32), np.arange(32), indexing="ij"
    )
    return ((offset + i + 7 * c + 3 * h + w) % 256).astype(np.uint8)


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


class Python2Pickler(pickle._Pickler):
    """Pickles as the original CIFAR files were written (Python 2's cPickle, protocol 2): every
    str as a byte string (BINSTRING, read back as bytes), numpy under its old name numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_byte_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_old_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_byte_string
    dispatch[type] = dispatch[type(len)] = save_old_global


def write_python2_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump(obj)


def write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> dict:
    """Write cifar-10-batches-py with 5 train batches; return the arrays written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for b in range(5):
        x = cifar_images(per_batch, offset=10 * b)
        y = [(b + k) % 10 for k in range(per_batch)]
        write_pickle(
            folder / f"data_batch_{b + 1}",
            {b"batch_label": b"training batch", b"labels": y, b"data": x.reshape(per_batch, -1)},
        )
        xs.append(x)
        ys += y
    test_x = cifar_images(n_test, offset=100)
    test_y = [9 - k for k in range(n_test)]
    write_pickle(folder / "test_batch", {b"labels": test_y, b"data": test_x.reshape(n_test, -1)})
    write_pickle(
        folder / "batches.meta",
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072},
    )
    return {"train_x": np.concatenate(xs), "train_y": ys, "test_x": test_x, "test_y": test_y}


def write_cifar100(root: Path) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train_x, test_x = cifar_images(5, offset=1), cifar_images(2, offset=50)
    train_y, test_y = [0, 99, 42, 7, 7], [99, 3]
    write_pickle(
        folder / "train",
        {b"fine_labels": train_y, b"coarse_labels": [0] * 5, b"data": train_x.reshape(5, -1)},
    )
    write_pickle(
        folder / "test",
        {b"fine_labels": test_y, b"coarse_labels": [0] * 2, b"data": test_x.reshape(2, -1)},
    )
    write_pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{k:02d}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
        },
    )
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def stl_images(n: int, offset: int) -> np.ndarray:
    """(n, 3, 96, 96) uint8 (C, H, W) images with an asymmetric pattern (2h + w, not 2w + h)."""
    i, c, h, w = np.meshgrid(
        np.arange(n), np.arange(3), np.arange(96), np.arange(96), indexing="ij"
    )
    return ((offset + 5 * i + 11 * c + 2 * h + w) % 256).astype(np.uint8)


def write_stl10(root: Path, unlabeled: bool = True) -> dict:
    """Write stl10_binary with column-major images as in the original files."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    data = {
        "train_x": stl_images(4, 0),
        "train_y": [1, 10, 3, 1],
        "test_x": stl_images(3, 77),
        "test_y": [2, 2, 10],
        "unlabeled_x": stl_images(2, 150),
    }
    for split in ("train", "test", "unlabeled"):
        if split == "unlabeled" and not unlabeled:
            continue
        # Column-major on disk: each plane is stored as (W, H).
        data[f"{split}_x"].transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            np.array(data[f"{split}_y"], dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    data["classes"] = names
    return data


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def check_result_types(result: dict) -> None:
    assert set(result) == {"train_x", "train_y", "test_x", "test_y", "classes", "unlabeled_x"}
    for key in ("train_x", "test_x"):
        assert result[key].dtype == torch.uint8 and result[key].is_contiguous()
        assert result[key].ndim == 4
    for key in ("train_y", "test_y"):
        assert result[key].dtype == torch.int64 and result[key].ndim == 1
    assert len(result["train_x"]) == len(result["train_y"])
    assert len(result["test_x"]) == len(result["test_y"])
    assert all(isinstance(name, str) for name in result["classes"])


def assert_one_line_hint(message: str) -> None:
    assert "\n" not in message
    assert "--download" in message and "--data-root" in message


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_reads_real_layout(tmp_path):
    written = write_cifar10(tmp_path)
    result = load_cifar(tmp_path, classes=10)
    check_result_types(result)
    assert result["train_x"].shape == (15, 3, 32, 32)
    assert result["test_x"].shape == (4, 3, 32, 32)
    assert result["classes"] == CIFAR10_NAMES
    assert result["unlabeled_x"] is None
    # Position-coded pixels: image 7 is batch 3 (offset 20), index 1 in it.
    assert result["train_x"][7, 2, 5, 9].item() == (20 + 1 + 14 + 15 + 9) % 256
    assert result["test_x"][3, 1, 31, 0].item() == (100 + 3 + 7 + 93) % 256
    np.testing.assert_array_equal(result["train_x"].numpy(), written["train_x"])
    np.testing.assert_array_equal(result["test_x"].numpy(), written["test_x"])
    assert result["train_y"].tolist() == written["train_y"]
    assert result["test_y"].tolist() == written["test_y"]


def test_cifar100_reads_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    result = load_cifar(str(tmp_path), classes=100)
    check_result_types(result)
    assert result["train_x"].shape == (5, 3, 32, 32)
    assert result["test_x"].shape == (2, 3, 32, 32)
    assert result["classes"][:2] == ["fine00", "fine01"] and len(result["classes"]) == 100
    assert result["train_y"].tolist() == [0, 99, 42, 7, 7]
    assert result["test_y"].tolist() == [99, 3]
    assert result["train_x"][4, 1, 0, 31].item() == (1 + 4 + 7 + 31) % 256
    np.testing.assert_array_equal(result["test_x"].numpy(), written["test_x"])


def test_cifar_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(SSLKitError) as info:
        load_cifar(tmp_path / "data", classes=10)
    message = str(info.value)
    assert_one_line_hint(message)
    assert "CIFAR-10" in message and "cifar-10-batches-py" in message

    with pytest.raises(SSLKitError) as info:
        load_cifar(tmp_path, classes=100)
    assert_one_line_hint(str(info.value))
    assert "CIFAR-100" in str(info.value)

    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(SSLKitError, match="data_batch_4") as info:
        load_cifar(tmp_path)
    assert_one_line_hint(str(info.value))


def test_cifar_rejects_other_class_counts(tmp_path):
    with pytest.raises(SSLKitError, match="10 or 100"):
        load_cifar(tmp_path, classes=20)


def test_cifar_corrupt_or_unsafe_pickle_is_one_line_error(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(b"not a pickle at all")
    with pytest.raises(SSLKitError, match="data_batch_2") as info:
        load_cifar(tmp_path)
    assert "\n" not in str(info.value)

    # A pickle that names any other global (here pathlib) is refused, never imported.
    write_pickle(batch, {b"data": Path("x"), b"labels": []})
    with pytest.raises(SSLKitError, match="refusing"):
        load_cifar(tmp_path)


def test_cifar_truncated_batch_is_one_line_error(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    whole = batch.read_bytes()
    for cut in (len(whole) // 2, len(whole) - 1, 0):  # interrupted download / copy, empty
        batch.write_bytes(whole[:cut])
        with pytest.raises(SSLKitError, match="cannot read CIFAR file .*data_batch_3") as info:
            load_cifar(tmp_path)
        assert "\n" not in str(info.value) and "--download" in str(info.value)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({b"labels": [0, 1], b"data": np.zeros((3, 3072), np.uint8)}, "3 images but 2 'labels'"),
        ({b"labels": [0, None, 1], b"data": np.zeros((3, 3072), np.uint8)},
         "'labels' must be a list of whole numbers"),
        ({b"labels": [b"cat"] * 3, b"data": np.zeros((3, 3072), np.uint8)},
         "'labels' must be a list of whole numbers"),
        # a cast to int64 read these as labels 0, 9, 1 and 1, 0, 1 without a word
        ({b"labels": [0.7, 9.9, 1.0], b"data": np.zeros((3, 3072), np.uint8)}, "got float64"),
        ({b"labels": [True, False, True], b"data": np.zeros((3, 3072), np.uint8)}, "got bool"),
        ({b"labels": [[0], [1], [2]], b"data": np.zeros((3, 3072), np.uint8)},
         r"of shape \(3, 1\)"),
        ({b"labels": [0, 1, 2], b"data": np.zeros((3, 3, 32, 32), np.uint8)},
         r"'data' must be uint8 of shape \(N, 3072\)"),
        ({b"labels": [0, 1, 2], b"data": np.zeros((3, 3072), np.int64)}, "got int64"),
        ({b"data": np.zeros((3, 3072), np.uint8)}, "no 'labels' entry"),
        ({b"labels": [0, 1, 10], b"data": np.zeros((3, 3072), np.uint8)},
         r"train labels .* must lie in 0\.\.9, found 0\.\.10"),
    ],
)
def test_cifar_bad_batch_contents_are_one_line_errors(tmp_path, entries, expected):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1", entries)
    with pytest.raises(SSLKitError, match=expected) as info:
        load_cifar(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "delete" in message and "--download" in message  # the fix: fetch it again


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (7, "'label_names' must be a list of class names, got int"),
        (b"airplane", "'label_names' must be a list of class names, got bytes"),
        ([b"\xff\xfe"] * 10, "class names are not UTF-8"),
        ([b"a", b"b"], "lists 2 class names, expected 10"),
    ],
)
def test_cifar_bad_meta_file_is_one_line_error(tmp_path, names, expected):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", {b"label_names": names})
    with pytest.raises(SSLKitError, match=expected) as info:
        load_cifar(tmp_path)
    assert "\n" not in str(info.value) and "batches.meta" in str(info.value)


def test_cifar_root_pointing_at_the_batches_folder_names_its_parent(tmp_path, monkeypatch):
    import torchvision.datasets

    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    # Refused before any download (which would put a second copy inside the first).
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", None)
    for download in (False, True):
        with pytest.raises(SSLKitError, match="is the cifar-10-batches-py folder itself") as info:
            load_cifar(folder, download=download)
        assert str(info.value).endswith(f"--data-root {tmp_path}")


def test_cifar_download_path_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        """Stands in for torchvision's class: 'downloads' by writing the small files."""

        def __init__(self, root, train=True, download=False, **kwargs):
            calls.append({"root": root, "download": download})
            write_cifar10(Path(root), per_batch=2, n_test=3)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    result = load_cifar(tmp_path / "new", classes=10, download=True)
    assert calls == [{"root": str(tmp_path / "new"), "download": True}]
    assert result["train_x"].shape == (10, 3, 32, 32)
    assert result["test_y"].tolist() == [9, 8, 7]

    # Files present: no second download.
    load_cifar(tmp_path / "new", classes=10, download=True)
    assert len(calls) == 1


def test_cifar_download_failure_is_one_line_error(tmp_path, monkeypatch):
    import torchvision.datasets

    class OfflineCIFAR100:
        def __init__(self, root, train=True, download=False, **kwargs):
            raise OSError("[Errno -3] Temporary failure in name resolution\nmore detail")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", OfflineCIFAR100)
    with pytest.raises(SSLKitError, match="CIFAR-100") as info:
        load_cifar(tmp_path, classes=100, download=True)
    assert "\n" not in str(info.value) and "name resolution" in str(info.value)


def test_cifar_python2_pickles_read_as_torchvision_reads_them(tmp_path, monkeypatch):
    """The original files are Python 2 pickles (byte-string keys, numpy.core globals): the same
    pixels (ours (C, H, W), torchvision's (H, W, C)), labels and class names as torchvision."""
    import torchvision.datasets
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    for classes, folder, label_key, names_key, train_files, test_file, meta in (
        (10, "cifar-10-batches-py", "labels", "label_names",
         [f"data_batch_{b}" for b in range(1, 6)], "test_batch", "batches.meta"),
        (100, "cifar-100-python", "fine_labels", "fine_label_names", ["train"], "test", "meta"),
    ):
        (tmp_path / folder).mkdir()
        for k, name in enumerate([*train_files, test_file]):
            x = cifar_images(3, offset=40 * k)
            labels = [(7 * k + 3 * i) % classes for i in range(3)]
            write_python2_pickle(tmp_path / folder / name, {
                "batch_label": f"batch {k}", label_key: labels, "coarse_labels": [19, 0, 5],
                "data": x.reshape(3, -1), "filenames": [f"{k}_{i}.png" for i in range(3)]})
        write_python2_pickle(tmp_path / folder / meta,
                             {names_key: [f"class{c}" for c in range(classes)], "num_vis": 3072})
        ours = load_cifar(tmp_path, classes=classes)
        reference = getattr(torchvision.datasets, f"CIFAR{classes}")
        for split, train in (("train", True), ("test", False)):
            theirs = reference(str(tmp_path), train=train)
            np.testing.assert_array_equal(ours[f"{split}_x"].permute(0, 2, 3, 1), theirs.data)
            assert ours[f"{split}_y"].tolist() == theirs.targets
        assert ours["classes"] == theirs.classes


# ----------------------------------------------------------------------------- STL-10
def test_stl10_reads_column_major_binary(tmp_path):
    written = write_stl10(tmp_path)
    result = load_stl10(tmp_path)
    check_result_types(result)
    assert result["train_x"].shape == (4, 3, 96, 96)
    assert result["test_x"].shape == (3, 3, 96, 96)
    assert result["unlabeled_x"].shape == (2, 3, 96, 96)
    assert result["unlabeled_x"].dtype == torch.uint8 and result["unlabeled_x"].is_contiguous()
    # Pixel [n, c, h, w] = offset + 5n + 11c + 2h + w: h and w have different weights.
    assert result["train_x"][2, 1, 10, 3].item() == (10 + 11 + 20 + 3) % 256
    assert result["test_x"][0, 2, 0, 95].item() == (77 + 22 + 95) % 256
    np.testing.assert_array_equal(result["train_x"].numpy(), written["train_x"])
    np.testing.assert_array_equal(result["test_x"].numpy(), written["test_x"])
    np.testing.assert_array_equal(result["unlabeled_x"].numpy(), written["unlabeled_x"])
    assert result["train_y"].tolist() == [0, 9, 2, 0]
    assert result["test_y"].tolist() == [1, 1, 9]
    assert result["classes"] == written["classes"]


def test_stl10_reads_as_torchvision_reads_it(tmp_path, monkeypatch):
    import torchvision.datasets
    import torchvision.datasets.stl10

    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", lambda *a, **k: True)
    write_stl10(tmp_path)
    ours = load_stl10(tmp_path)
    for split in ("train", "test", "unlabeled"):
        theirs = torchvision.datasets.STL10(str(tmp_path), split=split)
        np.testing.assert_array_equal(ours[f"{split}_x"], theirs.data)
        if split != "unlabeled":
            assert ours[f"{split}_y"].tolist() == theirs.labels.tolist()
    assert ours["classes"] == theirs.classes


def test_stl10_without_unlabeled_split(tmp_path):
    write_stl10(tmp_path, unlabeled=False)
    result = load_stl10(tmp_path, unlabeled=False)
    assert result["unlabeled_x"] is None
    assert result["train_x"].shape == (4, 3, 96, 96)
    with pytest.raises(SSLKitError, match="unlabeled_X.bin") as info:
        load_stl10(tmp_path, unlabeled=True)
    assert_one_line_hint(str(info.value))


def test_stl10_missing_and_bad_files(tmp_path):
    with pytest.raises(SSLKitError) as info:
        load_stl10(tmp_path)
    assert_one_line_hint(str(info.value))
    assert "STL-10" in str(info.value) and "stl10_binary" in str(info.value)

    write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    with open(folder / "test_X.bin", "ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(SSLKitError, match="test_X.bin"):
        load_stl10(tmp_path)

    write_stl10(tmp_path / "b")
    np.array([1, 2], dtype=np.uint8).tofile(tmp_path / "b" / "stl10_binary" / "train_y.bin")
    with pytest.raises(SSLKitError, match="4 images but 2 labels"):
        load_stl10(tmp_path / "b")

    write_stl10(tmp_path / "c")
    np.array([0, 1, 1, 1], dtype=np.uint8).tofile(tmp_path / "c" / "stl10_binary" / "train_y.bin")
    with pytest.raises(SSLKitError, match="1..10"):
        load_stl10(tmp_path / "c")


def test_stl10_bad_files_name_the_file_and_the_fix(tmp_path):
    write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    for name, content, expected in [
        ("train_y.bin", b"", "4 images but 0 labels"),
        ("test_X.bin", b"", r"size \(0 bytes\) is not a positive multiple of 27648"),
        ("unlabeled_X.bin", b"\0" * (IMAGE_BYTES + 1), "unlabeled_X.bin is not an STL-10"),
        ("class_names.txt", b"\n\n", "lists 0 class names, not 10"),
        ("class_names.txt", "airplane\n".encode("utf-16"), "cannot read STL-10 file"),
    ]:
        original = (folder / name).read_bytes()
        (folder / name).write_bytes(content)
        with pytest.raises(SSLKitError, match=expected) as info:
            load_stl10(tmp_path)
        message = str(info.value)
        assert "\n" not in message and name in message
        assert f"delete {folder} and pass --download" in message
        (folder / name).write_bytes(original)


def test_stl10_other_class_counts_blame_class_names_txt(tmp_path):
    """STL-10 has 10 classes; 11 names loaded as an 11-class dataset."""
    write_stl10(tmp_path)
    for names in ("airplane\nbird\ncar\n", "".join(f"c{i}\n" for i in range(11))):
        (tmp_path / "stl10_binary" / "class_names.txt").write_text(names)
        count = len(names.split())
        expected = f"class_names.txt lists {count} class names, not 10"
        with pytest.raises(SSLKitError, match=expected):
            load_stl10(tmp_path)


def test_stl10_root_pointing_at_the_binary_folder_names_its_parent(tmp_path, monkeypatch):
    import torchvision.datasets

    write_stl10(tmp_path)
    monkeypatch.setattr(torchvision.datasets, "STL10", None)  # refused before downloading
    with pytest.raises(SSLKitError, match="is the stl10_binary folder itself") as info:
        load_stl10(tmp_path / "stl10_binary", download=True)
    assert str(info.value).endswith(f"--data-root {tmp_path}")


def test_stl10_download_path_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeSTL10:
        def __init__(self, root, split="train", download=False, **kwargs):
            calls.append({"root": root, "download": download})
            write_stl10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "STL10", FakeSTL10)
    result = load_stl10(tmp_path, download=True)
    assert calls == [{"root": str(tmp_path), "download": True}]
    assert result["unlabeled_x"].shape == (2, 3, 96, 96)


# ----------------------------------------------------------------------------- ImageFolder
def folder_pixels(seed: int, size: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_image_folder_reads_pngs_with_sorted_classes(tmp_path):
    # Classes created out of order; class order must be sorted names.
    save_png(tmp_path / "train" / "zebra" / "a.png", folder_pixels(1))
    save_png(tmp_path / "train" / "zebra" / "b.png", folder_pixels(2))
    save_png(tmp_path / "train" / "ant" / "a.png", folder_pixels(3))
    save_png(tmp_path / "train" / "moth" / "x.png", folder_pixels(4))
    save_png(tmp_path / "test" / "moth" / "y.png", folder_pixels(5))
    save_png(tmp_path / "test" / "zebra" / "z.png", folder_pixels(6))
    # Ignored: hidden folders (notebook checkpoints) and non-image files.
    save_png(tmp_path / "train" / ".ipynb_checkpoints" / "a.png", folder_pixels(7))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")

    result = load_image_folder(tmp_path, image_size=8)
    check_result_types(result)
    assert result["classes"] == ["ant", "moth", "zebra"]
    assert result["train_x"].shape == (4, 3, 8, 8)
    assert result["test_x"].shape == (2, 3, 8, 8)
    assert result["train_y"].tolist() == [0, 1, 2, 2]
    assert result["test_y"].tolist() == [1, 2]
    assert result["unlabeled_x"] is None
    # PNG is lossless: exact pixels, (H, W, C) on disk -> (C, H, W) in the tensor.
    expected = torch.from_numpy(folder_pixels(2)).permute(2, 0, 1)
    assert torch.equal(result["train_x"][3], expected)
    assert result["train_x"][0, 2, 1, 6].item() == folder_pixels(3)[1, 6, 2]


def test_image_folder_accepts_val_grey_jpeg_and_resizes(tmp_path):
    save_png(tmp_path / "train" / "a" / "0.png", folder_pixels(1, size=16))
    big = np.zeros((40, 64, 3), dtype=np.uint8)
    big[:, 12:52] = (200, 10, 30)  # centre square; the side strips are cropped away
    Image.fromarray(big).save(tmp_path / "train" / "a" / "big.jpg", quality=95)
    (tmp_path / "val" / "b").mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 77, dtype=np.uint8), mode="L").save(
        tmp_path / "val" / "b" / "grey.png"
    )
    (tmp_path / "train" / "b").mkdir()
    Image.fromarray(folder_pixels(9, size=20)).save(tmp_path / "train" / "b" / "c.bmp")

    result = load_image_folder(tmp_path, image_size=16)
    assert result["classes"] == ["a", "b"]
    assert result["train_x"].shape == (3, 3, 16, 16)
    assert result["train_y"].tolist() == [0, 0, 1]
    assert result["test_y"].tolist() == [1]
    # Already 16x16: kept exactly. 40x64 JPEG: shorter side -> 16, centre crop -> red square.
    assert torch.equal(
        result["train_x"][0], torch.from_numpy(folder_pixels(1, 16)).permute(2, 0, 1)
    )
    red = result["train_x"][1].float().mean(dim=(1, 2))
    assert red[0] > 180 and red[1] < 40 and red[2] < 60
    # Grey image -> 3 equal channels.
    assert (result["test_x"][0] == 77).all()


def test_image_folder_errors(tmp_path):
    with pytest.raises(SSLKitError, match="train/"):
        load_image_folder(tmp_path)

    save_png(tmp_path / "train" / "a" / "0.png", folder_pixels(1))
    with pytest.raises(SSLKitError, match="test/ or val/"):
        load_image_folder(tmp_path, image_size=8)

    save_png(tmp_path / "test" / "b" / "0.png", folder_pixels(2))
    with pytest.raises(SSLKitError, match="'b'") as info:
        load_image_folder(tmp_path, image_size=8)
    assert "\n" not in str(info.value)

    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(SSLKitError, match="no image files"):
        load_image_folder(tmp_path, image_size=8)

    bad = tmp_path / "train" / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(SSLKitError, match="broken.jpg") as info:
        load_image_folder(tmp_path, image_size=8)
    assert "\n" not in str(info.value)

    with pytest.raises(SSLKitError, match="image_size") as info:
        load_image_folder(tmp_path, image_size=0)
    # the message named the problem only; now it names the flag that fixes it
    assert "got 0: use e.g. --image-size 32" in str(info.value) and "\n" not in str(info.value)


def test_image_folder_mixed_modes_and_sizes_become_rgb(tmp_path):
    rgb = folder_pixels(1)  # (8, 8, 3)
    cls = tmp_path / "train" / "a"
    save_png(cls / "00_rgb.png", rgb)
    Image.fromarray(rgb).convert("L").save(cls / "01_grey.png")
    Image.fromarray(rgb).convert("RGBA").save(cls / "02_rgba.png")
    Image.fromarray(rgb).convert("P").save(cls / "03_palette.png")
    Image.fromarray(rgb).convert("P").save(cls / "04_palette.gif")
    Image.fromarray(rgb).convert("LA").save(cls / "05_grey_alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(cls / "06_cmyk.jpg", quality=100)
    grey16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(grey16).save(cls / "07_grey16.png")
    save_png(cls / "08_big.png", np.full((20, 30, 3), 9, dtype=np.uint8))
    save_png(tmp_path / "test" / "a" / "0.png", rgb)

    result = load_image_folder(tmp_path, image_size=8)
    x = result["train_x"]  # (9, 3, 8, 8)
    assert x.shape == (9, 3, 8, 8) and result["train_y"].tolist() == [0] * 9

    def as_pil_rgb(name):
        with Image.open(cls / name) as img:
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)

    for i, name in enumerate(sorted(p.name for p in cls.iterdir())[:6]):
        assert torch.equal(x[i], as_pil_rgb(name)), name
    assert (x[6].int() - torch.from_numpy(rgb).permute(2, 0, 1).int()).abs().max() <= 8
    # 16-bit grey is scaled to 0..255 (PIL's convert would clip it to 255) on all 3 channels.
    expected = torch.from_numpy(grey16 / 257)  # (8, 8) float64, 0..245.1
    assert all(torch.equal(x[7, c], x[7, 0]) for c in range(3))
    assert (x[7, 0] - expected).abs().max() <= 1
    assert (x[8] == 9).all()


def test_image_folder_reads_as_torchvision_image_folder(tmp_path):
    """Class order (uppercase, digits, punctuation sort as strings), labels, file order and the
    pixels of every mode and format match torchvision's ImageFolder, which decodes with PIL."""
    from torchvision.datasets import ImageFolder

    from sslkit.data.folder import IMAGE_EXTENSIONS

    modes, formats = ["RGB", "L", "RGBA", "P", "LA", "1"], ["png", "bmp", "gif", "tif", "webp"]
    k = 0
    for split in ("train", "test"):
        for name in ("dog", "Cat", "10", "2", "b_c", "b-c"):
            for i in range(3):
                mode, ext = modes[k % 6], formats[k % 5]
                mode = "L" if (ext, mode) == ("bmp", "LA") else mode
                path = tmp_path / split / name / f"{i}_{k}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(folder_pixels(k)).convert(mode).save(path, lossless=True)
                k += 1
    ours = load_image_folder(tmp_path, image_size=8)
    assert ours["classes"] == ["10", "2", "Cat", "b-c", "b_c", "dog"]
    for split in ("train", "test"):
        theirs = ImageFolder(str(tmp_path / split),
                             is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS))
        assert ours["classes"] == theirs.classes and ours[f"{split}_y"].tolist() == theirs.targets
        for i, (image, _) in enumerate(theirs):
            expected = torch.from_numpy(np.array(image)).permute(2, 0, 1)
            assert torch.equal(ours[f"{split}_x"][i], expected), theirs.samples[i][0]


def test_image_folder_reads_images_in_subfolders_of_a_class(tmp_path):
    # As torchvision's ImageFolder: train/a/part1/x.png is an image of class a.
    save_png(tmp_path / "train" / "a" / "z.png", folder_pixels(1))
    save_png(tmp_path / "train" / "a" / "part1" / "x.png", folder_pixels(2))
    save_png(tmp_path / "train" / "a" / ".ipynb_checkpoints" / "x.png", folder_pixels(3))
    save_png(tmp_path / "train" / "b" / "only" / "y.png", folder_pixels(4))
    save_png(tmp_path / "test" / "b" / "y.png", folder_pixels(5))
    result = load_image_folder(tmp_path, image_size=8)
    assert result["classes"] == ["a", "b"]
    assert result["train_y"].tolist() == [0, 0, 1]
    pixels = [torch.from_numpy(folder_pixels(k)).permute(2, 0, 1) for k in (2, 1, 4)]
    assert all(torch.equal(result["train_x"][i], pixels[i]) for i in range(3))


def test_image_folder_labels_follow_train_class_order(tmp_path):
    # test/ lists its folders in another order and lacks a class: labels still match train/.
    for split, names in (("train", ["b", "c", "a"]), ("test", ["c", "a"])):
        for name in names:
            value = ord(name)  # every pixel of class x holds ord(x)
            save_png(tmp_path / split / name / "0.png", np.full((8, 8, 3), value, np.uint8))
            save_png(tmp_path / split / name / "1.png", np.full((8, 8, 3), value, np.uint8))
    result = load_image_folder(tmp_path, image_size=8)
    assert result["classes"] == ["a", "b", "c"]
    for split in ("train", "test"):
        x, y = result[f"{split}_x"], result[f"{split}_y"]
        assert [result["classes"][label] for label in y] == [chr(v) for v in x[:, 0, 0, 0]]


def test_image_folder_unreadable_files_are_one_line_errors(tmp_path):
    save_png(tmp_path / "train" / "a" / "0.png", folder_pixels(1))
    save_png(tmp_path / "test" / "a" / "0.png", folder_pixels(2))
    cls = tmp_path / "train" / "a"
    buffer = io.BytesIO()
    Image.fromarray(folder_pixels(3, size=64)).save(buffer, "PNG")
    cases = [
        ("empty.png", b"", "empty file"),
        ("notes.jpg", b"shopping list", "not an image format PIL knows"),
        ("cut.png", buffer.getvalue()[:200], "truncated"),
    ]
    for name, content, expected in cases:
        (cls / name).write_bytes(content)
        with pytest.raises(SSLKitError, match=expected) as info:
            load_image_folder(tmp_path, image_size=8)
        message = str(info.value)
        assert "\n" not in message and name in message and "0x" not in message
        assert message.endswith("replace or delete the file")
        (cls / name).unlink()

    (cls / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling link
    with pytest.raises(SSLKitError, match="cannot read image file .*gone.png"):
        load_image_folder(tmp_path, image_size=8)


def test_image_folder_16_bit_grey_keeps_its_top_8_bits_in_every_format(tmp_path):
    """PIL's convert("RGB") clipped 16-bit PGM and TIFF pixels to 255; 16-bit PNG (decoded by
    torchvision) keeps the top 8 bits. All three now agree; float pixels are an error."""
    values = np.array([[0, 255, 256, 30000], [40000, 65279, 65280, 65535]], dtype=np.uint16)
    for ext in ("png", "pgm", "tif"):
        Image.fromarray(values).save(tmp_path / f"g.{ext}")
        img = decode_rgb(tmp_path / f"g.{ext}")
        assert img.dtype == torch.uint8 and img.shape == (3, 2, 4)
        top = torch.from_numpy((values >> 8).astype(np.uint8))  # (2, 4)
        assert torch.equal(img, top.expand(3, -1, -1)), ext
    Image.fromarray(np.full((2, 4), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(SSLKitError, match="floating-point pixels") as info:
        decode_rgb(tmp_path / "f.tif")
    assert "\n" not in str(info.value)


def test_image_folder_root_pointing_at_a_split_names_its_parent(tmp_path):
    save_png(tmp_path / "train" / "a" / "0.png", folder_pixels(1))
    save_png(tmp_path / "test" / "a" / "0.png", folder_pixels(2))
    with pytest.raises(SSLKitError, match="is itself a split folder") as info:
        load_image_folder(tmp_path / "train", image_size=8)
    assert str(info.value).endswith(f"--data-root {tmp_path}")


def test_subset_draws_from_every_class_of_a_class_sorted_set():
    # ImageFolder trees come sorted by class: the first n images would all be class 0.
    from sslkit.data import ImageData

    labels = torch.arange(10).repeat_interleave(50)  # (500,) sorted by class
    images = torch.arange(500, dtype=torch.int64).view(500, 1, 1, 1).to(torch.uint8)
    data = ImageData("folder", images, labels, images, labels, [str(c) for c in range(10)])
    sub = data.subset(n_train=100, n_test=40)
    assert len(sub.train_x) == 100 and len(sub.test_x) == 40
    # stratified: every class keeps its share, 100 / 10 and 40 / 10 of each
    assert torch.equal(sub.train_y.bincount(), torch.full((10,), 10))
    assert torch.equal(sub.test_y.bincount(), torch.full((10,), 4))
    assert bool((sub.train_y[1:] >= sub.train_y[:-1]).all())  # original order kept
    again = data.subset(n_train=100, n_test=40)
    assert torch.equal(sub.train_y, again.train_y) and torch.equal(sub.train_x, again.train_x)
    assert data.subset().train_x is images  # None keeps everything, no copy


def test_stratified_draw_gives_each_class_its_share_by_largest_remainder():
    from sslkit.data import stratified_draw

    # classes of 50, 30 and 20 images in shuffled order; a draw of 7 is 3.5, 2.1 and 1.4:
    # whole parts 3, 2, 1 and the one left over to the largest remainder (class 0)
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100, generator=g)]
    for seed in range(5):
        idx = stratified_draw(labels, 7, torch.Generator().manual_seed(seed))
        assert torch.equal(labels[idx].bincount(), torch.tensor([4, 2, 1]))
        assert len(idx.unique()) == 7 and bool((idx[1:] > idx[:-1]).all())  # distinct, sorted
    # within a class the draw is random: different seeds pick different images of class 0
    firsts = {tuple(stratified_draw(labels, 7, torch.Generator().manual_seed(s)).tolist())
              for s in range(5)}
    assert len(firsts) == 5
    # fewer images than classes: the largest classes first, ties to the lower class
    assert torch.equal(labels[stratified_draw(labels, 2, g)].sort().values, torch.tensor([0, 1]))
    even = torch.arange(4).repeat(5)  # 4 classes of 5
    assert torch.equal(even[stratified_draw(even, 3, g)].sort().values, torch.tensor([0, 1, 2]))
    # a plain random draw of 100 of CIFAR-100-sized classes misses about a third of them
    hundred = torch.arange(100).repeat_interleave(500)
    assert len(hundred[stratified_draw(hundred, 100, g)].unique()) == 100


# ----------------------------------------------------------------------- not found, one class
def test_missing_roots_are_data_not_found_with_the_root(tmp_path):
    """`sslkit eval` tells a missing dataset from other errors to suggest its --data-root."""
    from sslkit.data import DataNotFound

    for load, what in ((lambda r: load_cifar(r), "CIFAR-10"), (lambda r: load_stl10(r), "STL-10"),
                       (lambda r: load_image_folder(r), "image folder")):
        with pytest.raises(DataNotFound) as info:
            load(tmp_path / "nowhere")
        assert info.value.what == what and info.value.root == tmp_path / "nowhere"


def test_one_class_folder_loads_but_is_not_labelled_for_evaluation(tmp_path):
    """One class folder is fine for self-supervised training; evaluation needs 2 classes."""
    from sslkit.data import ImageData, load_dataset

    save_png(tmp_path / "train" / "all" / "a.png", folder_pixels(1))
    save_png(tmp_path / "train" / "all" / "b.png", folder_pixels(2))
    save_png(tmp_path / "test" / "all" / "c.png", folder_pixels(3))
    data = load_dataset("folder", tmp_path, image_size=8)
    assert data.classes == ["all"] and len(data.pretrain_images()) == 2
    with pytest.raises(SSLKitError, match="only one class") as info:
        data.check_labelled()
    assert "ROOT/train/<class>/" in str(info.value) and "\n" not in str(info.value)
    two = ImageData("folder", data.train_x, torch.tensor([0, 1]), data.test_x, data.test_y,
                    ["a", "b"])
    two.check_labelled()  # no error


def test_evaluating_an_stl10_run_does_not_read_the_unlabeled_split(tmp_path):
    """Pre-training uses train + unlabeled; evaluation loaded the unlabeled split too (2.6 GiB
    of STL-10's 100,000 images) and needed it present."""
    from sslkit.train import TrainConfig, load_trained, train

    write_stl10(tmp_path / "data")
    cfg = TrainConfig(dataset="stl10", data_root=str(tmp_path / "data"), batch_size=2, epochs=1,
                      warmup_epochs=0, device="cpu")
    train(cfg, tmp_path / "run", progress=False)
    (tmp_path / "data" / "stl10_binary" / "unlabeled_X.bin").unlink()
    method, saved, data = load_trained(tmp_path / "run")
    assert saved.dataset == "stl10" and data.unlabeled_x is None and len(data.train_x) == 4
    with pytest.raises(SSLKitError, match="unlabeled_X.bin"):  # pre-training still needs it
        train(cfg, tmp_path / "again", progress=False)


# ----------------------------------------------------------------------------- ImageData layout
def _image_data(train_x, test_x=None):
    from sslkit.data import ImageData

    n = len(train_x)
    test_x = train_x[:2] if test_x is None else test_x
    return ImageData("folder", train_x, torch.zeros(n, dtype=torch.int64), test_x,
                     torch.zeros(len(test_x), dtype=torch.int64), ["a"])


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_images_are_refused_with_the_permute_that_fixes_them(channels):
    """(N, H, W, C) images trained as images of side C: "--image-size 1 is too small for
    --arch convnet-small", deep in training. Now ImageData says what to do."""
    from one_line import one_line_error

    last = torch.zeros(4, 32, 32, channels, dtype=torch.uint8)
    msg = one_line_error(lambda: _image_data(last))
    assert "(4, 32, 32, " in msg and "channels-last" in msg
    assert msg.endswith("x.permute(0, 3, 1, 2)")
    data = _image_data(last.permute(0, 3, 1, 2))  # the fix works
    assert data.channels == channels and data.image_size == 32


def test_images_of_another_type_or_shape_are_one_line_errors():
    from one_line import one_line_error

    good = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    for bad, expected in ((good.float() + 255, "got float images in [255, 255]"),  # no / 255
                          (good.long(), "x.to(torch.uint8)"),
                          (good[:, 0], "x[:, None]"),
                          (good[None], "got shape (1, 4, 3, 8, 8)"),
                          (good.numpy(), "torch.as_tensor(...)")):
        msg = one_line_error(lambda bad=bad: _image_data(bad))
        assert "ImageData.train_x" in msg and expected in msg, msg
    # what the views take is taken: floats in [0, 1], and any number of channels (RGBA, 2, 5)
    for fine in (good.float() / 255, torch.zeros(4, 4, 8, 8, dtype=torch.uint8),
                 torch.zeros(4, 2, 8, 8, dtype=torch.uint8), torch.zeros(4, 5, 8, 8)):
        assert _image_data(fine, test_x=fine[:2]).channels == fine.shape[1]
    msg = one_line_error(lambda: _image_data(good, test_x=torch.zeros(2, 3, 9, 9,
                                                                      dtype=torch.uint8)))
    assert "ImageData.test_x" in msg and "(3, 9, 9)" in msg and "(3, 8, 8)" in msg
    msg = one_line_error(lambda: _image_data(good, test_x=good.permute(0, 2, 3, 1)))
    assert "ImageData.test_x" in msg and "x.permute(0, 3, 1, 2)" in msg
