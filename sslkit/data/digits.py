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

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

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
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, train_size=n_train, stratify=labels.numpy(), random_state=seed
    )
    return np.sort(train_idx), np.sort(test_idx)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _place(digit: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One 8x8 digit (1, 8, 8) -> a shifted 32x32 image (1, 32, 32) in [0, 1]."""
    size = int(rng.integers(12, 21))  # 12..20 px inclusive
    angle = np.deg2rad(rng.uniform(-20.0, 20.0))
    brightness = rng.uniform(0.5, 1.0)
    big = F.interpolate(digit[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    # Rotate about the centre inside a size x size box (corners that leave the box are cut,
    # as they hold background in these digits).
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, size, size], align_corners=False)
    rotated = F.grid_sample(big[None], grid, mode="bilinear", align_corners=False)[0]
    canvas = torch.zeros(1, CANVAS, CANVAS)
    top, left = (int(v) for v in rng.integers(0, CANVAS - size + 1, size=2))
    canvas[:, top : top + size, left : left + size] = rotated * brightness
    return canvas


def shifted_digits(n_train: int = DEFAULT_TRAIN, seed: int = 0) -> dict:
    """The 32x32 shifted-digits set: uint8 images (N, 1, 32, 32), labels 0-9, fixed seed."""
    images, labels = _source_digits()
    train_idx, test_idx = _split(labels, n_train, seed)
    rng = np.random.default_rng(seed)
    shifted = torch.stack([_place(d, rng) for d in images])  # (1797, 1, 32, 32)
    shifted = _to_uint8(shifted)
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
