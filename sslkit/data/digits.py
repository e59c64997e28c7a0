"""The offline default datasets, made from scikit-learn's handwritten digits.

scikit-learn ships 1,797 grey 8x8 digits (0-16 intensities), so these need no download.

``shifted_digits`` turns them into a 32x32 set where pixel space is a poor guide to the class:
each digit is upsampled to a random size of 12-20 px, rotated by a random angle within ±20°,
placed at a random position on a black canvas and its brightness scaled by a random factor in
[0.5, 1]. Two images of the same digit then rarely overlap pixel for pixel, while a network
that has learnt invariance to position, scale and brightness sees them as alike: the lecture's
point about pixel space versus learnt features.

``plain_digits`` is the untouched set, centred and upsampled to 32x32.

Train and test hold different source digits (a fixed, stratified split).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sslkit.errors import SSLKitError

CANVAS = 32  # output side in pixels
DEFAULT_TRAIN = 1300  # source digits in the training split; the other 497 are the test split


def _source_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as float images in [0, 1]: (1797, 1, 8, 8) and labels (1797,)."""
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(bunch.target, dtype=torch.int64)  # (N,)
    return images, labels


def _split(labels: torch.Tensor, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split of the source digits."""
    n_classes = len(labels.unique())
    # Stratified: each split needs at least one digit of every class.
    low, high = n_classes, len(labels) - n_classes
    if isinstance(n_train, bool) or not isinstance(n_train, Integral) or not low <= n_train <= high:
        raise SSLKitError(
            f"n_train must be a whole number from {low} to {high} (the digits set has "
            f"{len(labels)} images in {n_classes} classes), got {n_train!r}: "
            f"use the default {DEFAULT_TRAIN} or a number in that range"
        )
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, train_size=n_train, stratify=labels.numpy(), random_state=seed
    )
    return np.sort(train_idx), np.sort(test_idx)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _shift(digits: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """8x8 digits (N, 1, 8, 8) -> shifted 32x32 images (N, 1, 32, 32) in [0, 1].

    Per digit: side s ~ U{12..20} px, angle ~ U(-20°, 20°), top-left corner of its s x s box
    uniform on the canvas, brightness ~ U(0.5, 1). One affine sampling grid per digit maps each
    canvas pixel back into the 8x8 source (bilinear; outside the source is black), so scaling,
    rotation and placement are a single resampling.
    """
    n = len(digits)
    size = torch.tensor(rng.integers(12, 21, size=n), dtype=torch.float32)  # 12..20 inclusive
    angle = torch.tensor(np.deg2rad(rng.uniform(-20.0, 20.0, size=n)), dtype=torch.float32)
    brightness = torch.tensor(rng.uniform(0.5, 1.0, size=n), dtype=torch.float32)
    corner = torch.tensor(rng.uniform(0.0, 1.0, size=(n, 2)), dtype=torch.float32)
    corner = torch.floor(corner * (CANVAS - size + 1)[:, None])  # (N, 2) = (left, top) in px
    centre = (corner + size[:, None] / 2) / CANVAS * 2 - 1  # box centre in [-1, 1] coordinates
    # source coords = R(-angle) @ (canvas coords - centre) * (CANVAS / s)
    zoom = CANVAS / size
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (N, 2, 2)
    linear = rot * zoom[:, None, None]
    shift = -(linear @ centre[:, :, None])  # (N, 2, 1)
    theta = torch.cat([linear, shift], dim=2)  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, CANVAS, CANVAS], align_corners=False)
    canvas = F.grid_sample(digits, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return canvas * brightness.view(n, 1, 1, 1)


def shifted_digits(n_train: int = DEFAULT_TRAIN, seed: int = 0) -> dict:
    """The 32x32 shifted-digits set: uint8 images (N, 1, 32, 32), labels 0-9, fixed seed."""
    images, labels = _source_digits()
    train_idx, test_idx = _split(labels, n_train, seed)
    rng = np.random.default_rng(seed)
    shifted = _to_uint8(_shift(images, rng))  # (1797, 1, 32, 32)
    return {
        "train_x": shifted[train_idx].contiguous(),
        "train_y": labels[train_idx],
        "test_x": shifted[test_idx].contiguous(),
        "test_y": labels[test_idx],
        "classes": [str(d) for d in range(10)],
        "unlabeled_x": None,
    }


def plain_digits(n_train: int = DEFAULT_TRAIN, seed: int = 0) -> dict:
    """The untouched digits, upsampled to 24 px and centred on a 32x32 canvas: (N, 1, 32, 32)."""
    images, labels = _source_digits()
    train_idx, test_idx = _split(labels, n_train, seed)
    big = F.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False)
    canvas = F.pad(big, (4, 4, 4, 4))  # (1797, 1, 32, 32)
    canvas = _to_uint8(canvas)
    return {
        "train_x": canvas[train_idx].contiguous(),
        "train_y": labels[train_idx],
        "test_x": canvas[test_idx].contiguous(),
        "test_y": labels[test_idx],
        "classes": [str(d) for d in range(10)],
        "unlabeled_x": None,
    }
