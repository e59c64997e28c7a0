"""Tests for the CIFAR, STL-10 and ImageFolder readers on small files in the real formats.

Every test writes its own tiny data set into ``tmp_path``; nothing touches the network.
Pixel values encode their position, so a channel-, row- or column-order mistake in a reader
shows up as a wrong value at a known index.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslkit.data.cifar import load_cifar
from sslkit.data.folder import load_image_folder
from sslkit.data.stl10 import load_stl10
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

    with pytest.raises(SSLKitError, match="image_size"):
        load_image_folder(tmp_path, image_size=0)


def test_subset_draws_from_every_class_of_a_class_sorted_set():
    # ImageFolder trees come sorted by class: the first n images would all be class 0.
    from sslkit.data import ImageData

    labels = torch.arange(10).repeat_interleave(50)  # (500,) sorted by class
    images = torch.arange(500, dtype=torch.int64).view(500, 1, 1, 1).to(torch.uint8)
    data = ImageData("folder", images, labels, images, labels, [str(c) for c in range(10)])
    sub = data.subset(n_train=100, n_test=40)
    assert len(sub.train_x) == 100 and len(sub.test_x) == 40
    assert len(sub.train_y.unique()) == 10 and len(sub.test_y.unique()) >= 8
    assert bool((sub.train_y[1:] >= sub.train_y[:-1]).all())  # original order kept
    again = data.subset(n_train=100, n_test=40)
    assert torch.equal(sub.train_y, again.train_y) and torch.equal(sub.train_x, again.train_x)
    assert data.subset().train_x is images  # None keeps everything, no copy
