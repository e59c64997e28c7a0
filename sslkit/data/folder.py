"""Any ImageFolder tree: ``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>``.

``val/`` is accepted in place of ``test/``. Classes are the sorted names of the folders in
``train/``; ``test/`` must use the same names (a subset is fine) and gets the same label
numbers. As in torchvision's ImageFolder, images in subfolders of a class folder belong to
that class. Images are decoded to RGB (grey and RGBA images are converted), then resized so the
shorter side is ``image_size`` and centre-cropped to ``image_size`` x ``image_size``; images
already that size are kept as they are, pixel for pixel.

Decoding uses ``torchvision.io.decode_image`` on the file bytes (JPEG, PNG, GIF, WebP), which
is several times faster than PIL for small images, and falls back to PIL for other formats
(BMP, TIFF, PPM, ...). Hidden files and folders (``.ipynb_checkpoints``) are skipped, as are
files whose extension is not an image extension.

One class folder is enough for self-supervised training, which uses no labels (put unlabelled
images in ``ROOT/train/all/`` and a few in ``ROOT/test/all/``). Evaluation needs labels of at
least 2 classes, since with one every prediction is right: ``sslkit eval``, the kNN monitor
(``--knn-every``) and ``knn_accuracy`` refuse a single class with a one-line error that says
how to lay the classes out (``ImageData.check_labelled``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

try:  # deprecated in torchvision 0.29 and due to be removed: then PIL does all the decoding
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - depends on the torchvision version
    decode_image = None

from sslkit.data import DataNotFound
from sslkit.errors import SSLKitError, one_line

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm",
)  # fmt: skip


def _visible_dirs(folder: Path) -> list[Path]:
    dirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    """The image files in ``folder`` and its subfolders (hidden ones skipped), sorted by path."""
    files = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # prunes the walk
        files += [
            Path(parent, name)
            for name in names
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".")
        ]
    files.sort(key=lambda p: p.relative_to(folder).parts)
    if not files:
        raise SSLKitError(
            f"class folder {folder} has no image files ({', '.join(IMAGE_EXTENSIONS)}): "
            f"add images or remove the folder"
        )
    return files


def _decode_with_pil(path: Path, data: bytes) -> torch.Tensor:
    """Fallback decoder for formats torchvision cannot read: (3, H, W) uint8."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode.startswith("I"):  # 16-bit grey (PGM, TIFF; PIL may say "I" for 32 bits)
            values = np.array(img, dtype=np.int64)
            if values.min() < 0 or values.max() > 65535:
                raise SSLKitError(f"image file {path} holds 32-bit pixels: save it as an 8- "
                                  "or 16-bit image")
            grey = torch.from_numpy((values >> 8).astype(np.uint8))  # the top 8 of 16 bits,
            return grey[None].expand(3, -1, -1).contiguous()  # as torchvision does for PNG
        if img.mode == "F":  # convert("RGB") would clip them to 0 or 255
            raise SSLKitError(f"image file {path} holds floating-point pixels, which have no "
                              "fixed range: save it as an 8- or 16-bit image")
        rgb = np.array(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1)


def decode_rgb(path: Path) -> torch.Tensor:
    """Read one image file as a (3, H, W) uint8 RGB tensor; one-line SSLKitError if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SSLKitError(
            f"cannot read image file {path} ({one_line(exc)}): replace or delete the file"
        ) from exc
    try:
        if decode_image is None:
            raise ValueError("torchvision.io cannot decode images")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            img = decode_image(encoded, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        try:
            img = _decode_with_pil(path, data)
        except SSLKitError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "UnidentifiedImageError":  # its message names a buffer
                detail = "empty file" if not data else "not an image format PIL knows"
            else:
                detail = one_line(exc)
            raise SSLKitError(
                f"cannot decode image file {path} ({detail}): replace or delete the file"
            ) from exc
    if img.ndim == 4:  # animated GIF: (frames, C, H, W), keep the first frame
        img = img[0]
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = tvf.to_dtype(img, torch.uint8, scale=True)
    return img


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (3, H, W) image so its shorter side is ``size``, then centre-crop to a square.

    An image that is already ``size`` x ``size`` is returned unchanged.
    """
    if img.shape[-2:] == (size, size):
        return img
    img = tvf.resize(img, [size], antialias=True)
    return tvf.center_crop(img, [size, size])


def _load_split(
    files: list[Path], labels: list[int], image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``files`` into (N, 3, image_size, image_size) uint8 and labels (N,) int64."""
    x = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)
    for i, path in enumerate(files):
        x[i] = resize_center_crop(decode_rgb(path), image_size)
    return x, torch.tensor(labels, dtype=torch.int64)


def _list_split(split_dir: Path, class_index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """All image files of one split, class by class, with their label numbers."""
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in _visible_dirs(split_dir):
        if class_dir.name not in class_index:
            raise SSLKitError(
                f"{split_dir} has class folder '{class_dir.name}' that "
                f"{split_dir.parent / 'train'} lacks: the splits must use the same class names"
            )
        found = _image_files(class_dir)
        files += found
        labels += [class_index[class_dir.name]] * len(found)
    return files, labels


def load_image_folder(root: str | Path, image_size: int = 32) -> dict:
    """Load an ImageFolder tree with ``train/`` and ``test/`` (or ``val/``) splits.

    Returns a dict with ``train_x`` (N, 3, image_size, image_size) uint8, ``train_y`` (N,)
    int64, ``test_x`` (M, 3, image_size, image_size), ``test_y`` (M,), ``classes`` (sorted
    folder names of ``train/``) and ``unlabeled_x`` = None.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise SSLKitError(f"image_size must be a positive whole number of pixels, got "
                          f"{image_size!r}: use e.g. --image-size 32 (image_size=32 in Python)")
    root = Path(root)
    if not root.is_dir():
        raise DataNotFound(
            f"image folder {root} not found: pass --data-root to a folder that holds "
            f"train/<class>/ and test/<class>/ (or val/<class>/)", "image folder", root
        )
    train_dir = root / "train"
    if not train_dir.is_dir():
        if root.name in ("train", "test", "val"):
            raise SSLKitError(
                f"image folder {root} is itself a split folder: pass the folder that holds "
                f"train/ and test/, --data-root {root.parent}"
            )
        raise SSLKitError(
            f"image folder {root} has no train/ subfolder: expected "
            f"{root}/train/<class>/<image> and {root}/test/<class>/<image> (or val/)"
        )
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if test_dir is None:
        raise SSLKitError(
            f"image folder {root} has no test/ or val/ subfolder: expected "
            f"{root}/test/<class>/<image> next to {root}/train/"
        )

    classes = [p.name for p in _visible_dirs(train_dir)]
    if not classes:
        raise SSLKitError(
            f"{train_dir} has no class folders: put the images of each class in "
            f"{train_dir}/<class>/"
        )
    class_index = {name: i for i, name in enumerate(classes)}
    train_files, train_labels = _list_split(train_dir, class_index)
    test_files, test_labels = _list_split(test_dir, class_index)
    if not test_files:
        raise SSLKitError(
            f"{test_dir} has no class folders: put the images of each class in {test_dir}/<class>/"
        )

    train_x, train_y = _load_split(train_files, train_labels, image_size)
    test_x, test_y = _load_split(test_files, test_labels, image_size)
    return {
        "train_x": train_x,
        "train_y": train_y,
        "test_x": test_x,
        "test_y": test_y,
        "classes": classes,
        "unlabeled_x": None,
    }
