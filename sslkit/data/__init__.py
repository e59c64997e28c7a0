"""Datasets as in-memory image tensors (the loaders give uint8; an ImageData built by hand may
also hold floats in [0, 1]).

``load_dataset(name, root, ...)`` returns an ``ImageData``: train and test images (N, C, H, W)
uint8, int64 labels, class names, and for STL-10 its unlabeled split. Views are made from these
tensors in batches (sslkit.augment), on the CPU or on the GPU.

    shifted_digits  the offline default: sklearn's digits, shifted, scaled, rotated (32x32, 1 ch)
    digits          the same digits centred (32x32, 1 ch)
    cifar10/100     torchvision's CIFAR files under ROOT (pass download=True to fetch them)
    stl10           torchvision's STL-10 binary files under ROOT (96x96; with the unlabeled split)
    folder          any ImageFolder tree ROOT/train/<class>/*, ROOT/test/<class>/* (resized)
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import torch

from sslkit.devices import resolve_device
from sslkit.errors import SSLKitError
from sslkit.unit_images import check_channels_first, check_tensor, check_unit_range

DATASETS = ("shifted_digits", "digits", "cifar10", "cifar100", "stl10", "folder")


class DataNotFound(SSLKitError):
    """A dataset's files are not under the root it was loaded from: ``what`` (e.g. "CIFAR-10")
    and ``root``, as given (a relative root is resolved from the current folder). ``sslkit
    eval`` turns it into advice for its own ``--data-root``."""

    def __init__(self, message: str, what: str, root: str | Path):
        super().__init__(message)
        self.what, self.root = what, Path(root)


@dataclass(frozen=True)
class ImageData:
    name: str
    train_x: torch.Tensor  # (N, C, H, W) uint8 (loaders) or floats in [0, 1]
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W), as train_x
    test_y: torch.Tensor  # (M,) int64
    classes: list[str]
    unlabeled_x: torch.Tensor | None = None  # (U, C, H, W), as train_x: extra images, no labels

    def __post_init__(self) -> None:
        """One-line error for images in another layout or type than (N, C, H, W) uint8 (or
        floats in [0, 1]), here rather than deep in training (a channels-last (N, H, W, C) set
        would train as images of side C, "too small for --arch ..."). Reads the values of float
        images only, once, to check their range."""
        for split in ("train_x", "test_x", "unlabeled_x"):
            x = getattr(self, split)
            if x is not None:
                _check_images(f"ImageData.{split}", x)
        for split in ("test_x", "unlabeled_x"):
            x = getattr(self, split)
            if x is not None and x.shape[1:] != self.train_x.shape[1:]:
                raise SSLKitError(
                    f"ImageData.{split} holds images of (C, H, W) = {tuple(x.shape[1:])} but "
                    f"train_x holds {tuple(self.train_x.shape[1:])}: give every split the same "
                    "channels and size")

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    def check_labelled(self) -> None:
        """One-line error unless the training labels hold at least 2 classes: with one, every
        kNN or linear-probe prediction is right and the accuracy (1.0) says nothing.
        Self-supervised training itself needs no labels and does not call this."""
        present = self.train_y.unique().tolist()
        if len(present) >= 2:
            return
        names = ", ".join(repr(self.classes[c]) for c in present if c < len(self.classes))
        fix = ("put each class's images in its own subfolder, ROOT/train/<class>/ and "
               "ROOT/test/<class>/, with at least 2 classes" if self.name == "folder"
               else "use more training images (--n-train)")
        raise SSLKitError(f"the {self.name} training images have labels of only one class "
                          f"({names or 'none'}), so there are no labels to evaluate kNN or a "
                          f"linear probe against: {fix}")

    def pretrain_images(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Every image self-supervised training may use: train (+ unlabeled), on `device`
        (default: where the images are). With an unlabeled split the result is filled part by
        part where it lives, so moving STL-10's 2.6 GiB to a GPU makes no joined copy on the
        host first."""
        device = self.train_x.device if device is None else _target_device(device)
        if self.unlabeled_x is None:
            return self.train_x.to(device)
        parts = (self.train_x, self.unlabeled_x)
        images = torch.empty((sum(len(p) for p in parts), *self.train_x.shape[1:]),
                             dtype=self.train_x.dtype, device=device)  # (N + U, C, H, W)
        images[: len(self.train_x)] = self.train_x
        images[len(self.train_x) :] = self.unlabeled_x
        return images

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0):
        """n_train training and n_test test images, a seeded draw stratified by class (each
        class keeps its share of the split), kept in their original order; None, or a number
        at least the split's size, keeps all. The unlabeled split (STL-10) is cut to n_train
        images drawn at random. Never the first n: folder datasets are sorted by class, so their
        first n images would all be of one class."""
        for flag, n in (("n-train", n_train), ("n-test", n_test)):
            # bool is an int; a negative n would silently keep all but |n| images.
            if n is not None and (isinstance(n, bool) or not isinstance(n, Integral) or n < 1):
                raise SSLKitError(
                    f"--{flag} must be a positive whole number of images, got {n!r}: "
                    f"use --{flag} 1 or more, or leave it out to use all images"
                )

        def pick(x: torch.Tensor | None, n: int | None, labels: torch.Tensor | None = None):
            if x is None or n is None or n >= len(x):
                return None
            g = torch.Generator().manual_seed(seed)
            if labels is None:
                return torch.randperm(len(x), generator=g)[:n].sort().values
            return stratified_draw(labels, n, g)

        tr = pick(self.train_x, n_train, self.train_y)
        te = pick(self.test_x, n_test, self.test_y)
        un = pick(self.unlabeled_x, n_train)
        return ImageData(
            self.name,
            self.train_x if tr is None else self.train_x[tr],
            self.train_y if tr is None else self.train_y[tr],
            self.test_x if te is None else self.test_x[te],
            self.test_y if te is None else self.test_y[te],
            self.classes,
            self.unlabeled_x if un is None else self.unlabeled_x[un],
        )


def _check_images(what: str, x) -> None:
    """One-line error unless x is a tensor of images (N, C, H, W), uint8 or floats in [0, 1]
    (the views take either): a NumPy array, a missing channel axis, channels-last images, an
    integer type other than uint8 or floats in 0..255 (read once, here, not per step)."""
    check_tensor(x, what)
    shape = tuple(x.shape)
    if x.ndim == 3:
        raise SSLKitError(f"{what} must be images (N, C, H, W), got shape {shape}: for grey "
                          "images add their channel axis with x[:, None]")
    if x.ndim != 4 or 0 in shape[1:]:
        raise SSLKitError(f"{what} must be images (N, C, H, W), got shape {shape}: give one "
                          "(C, H, W) image per row")
    check_channels_first(x, what)
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise SSLKitError(f"{what} must be uint8 images (or floats in [0, 1]), got "
                              f"{str(x.dtype).removeprefix('torch.')}: pass x.to(torch.uint8) "
                              "for values in 0..255")
        check_unit_range(x, what)


def _target_device(device: torch.device | str) -> torch.device:
    """The device to move images to, checked to exist: a one-line error for "gpu", or for
    "cuda" on a machine without one (sslkit.devices.resolve_device). "meta" (shapes without
    values, which tests use to stand in for a GPU) is taken as it is."""
    if str(device) == "meta":
        return torch.device("meta")
    return resolve_device(str(device))


def stratified_draw(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) sorted indices into labels (N,), n < N, drawn at random within each class, with
    class c given its share n * N_c / N of the draw: the whole part for every class, then one
    more for the classes with the largest fractional parts (ties to the lower class) until n are
    drawn. A random draw of 100 of CIFAR-100's images would miss about a third of the classes;
    this one takes one of each."""
    order = torch.randperm(len(labels), generator=generator)  # (N,) random order
    classes, counts = labels.unique(return_counts=True)  # (C,), (C,)
    share, rest = (n * counts).div(len(labels), rounding_mode="floor"), (n * counts) % len(labels)
    extra = sorted(range(len(classes)), key=lambda c: (-int(rest[c]), c))[: n - int(share.sum())]
    share[extra] += 1
    shuffled = labels[order]  # (N,) the labels in the random order
    picked = [order[shuffled == c][:k] for c, k in zip(classes.tolist(), share.tolist())]
    return torch.cat(picked).sort().values


def load_dataset(
    name: str, root: str | Path = "data", download: bool = False, image_size: int = 32,
    unlabeled: bool = True,
) -> ImageData:
    """Load a dataset by name (see the module docstring). root: where files live.
    unlabeled=False leaves out an unlabeled split (STL-10's 100,000 images, 2.6 GiB), which
    only pre-training uses."""
    if name == "shifted_digits":
        from sslkit.data.digits import shifted_digits

        parts = shifted_digits()
    elif name == "digits":
        from sslkit.data.digits import plain_digits

        parts = plain_digits()
    elif name in ("cifar10", "cifar100"):
        from sslkit.data.cifar import load_cifar

        parts = load_cifar(root, classes=int(name[5:]), download=download)
    elif name == "stl10":
        from sslkit.data.stl10 import load_stl10

        parts = load_stl10(root, download=download, unlabeled=unlabeled)
    elif name == "folder":
        from sslkit.data.folder import load_image_folder

        parts = load_image_folder(root, image_size=image_size)
    else:
        raise SSLKitError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return ImageData(name=name, **parts)


def load_profile_data(profile, root: str | Path) -> ImageData:
    """A notebook's data: the dataset of `profile` (an sslkit.profiles.Profile) from `root`,
    cut to the profile's n_train / n_test. A missing dataset (CIFAR-10 in the gpu profile, not
    downloaded yet) is a one-line DataNotFound saying how to fetch it from a notebook, whose
    data folder the notebooks call DATA_ROOT."""
    try:
        data = load_dataset(profile.dataset, root)
    except DataNotFound as err:
        raise DataNotFound(f"{err.what} is not in {Path(root).resolve()}: fetch it once with "
                           f"load_dataset({profile.dataset!r}, DATA_ROOT, download=True), or "
                           "start Jupyter with SSLKIT_PROFILE=laptop for the bundled digits",
                           err.what, err.root) from None
    return data.subset(profile.n_train, profile.n_test)


__all__ = ["DATASETS", "DataNotFound", "ImageData", "load_dataset", "load_profile_data"]
