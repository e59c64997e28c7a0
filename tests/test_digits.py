"""sslkit.data.digits: the offline data sets, checked against their construction.

shifted_digits: each 8x8 source digit (values v/16) is upsampled to s x s, s in 12..20, rotated
inside that box, scaled by a brightness b in [0.5, 1] and pasted on a black 32x32 canvas. Bilinear
sampling is a convex combination (zero padding only lowers it), so every pixel is at most
b * max(source) and the ink lies in an s x s square (s <= 20).
plain_digits: upsampled 3x to 24x24 and padded by 4; with align_corners=False every third
output sample falls exactly on a source pixel, so the maximum of the source is kept exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslkit.data import load_dataset
from sslkit.data.digits import _source_digits, _split, plain_digits, shifted_digits
from sslkit.errors import SSLKitError

N_TRAIN, N_TEST = 1300, 497


@pytest.fixture(scope="module")
def source():
    images, labels = _source_digits()
    train_idx, test_idx = _split(labels, N_TRAIN, 0)
    return images, labels, train_idx, test_idx


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 2) intensity-weighted (row, column) centres."""
    x = x.float()[:, 0]
    rows = torch.arange(x.shape[1], dtype=torch.float32).view(1, -1, 1)
    cols = torch.arange(x.shape[2], dtype=torch.float32).view(1, 1, -1)
    mass = x.sum(dim=(1, 2))
    return torch.stack([(x * rows).sum(dim=(1, 2)) / mass, (x * cols).sum(dim=(1, 2)) / mass], 1)


@pytest.mark.parametrize("parts_name", ["shifted_parts", "plain_parts"])
def test_shapes_dtypes_and_labels(request, parts_name, source):
    parts = request.getfixturevalue(parts_name)
    _, labels, train_idx, test_idx = source
    assert parts["train_x"].shape == (N_TRAIN, 1, 32, 32)
    assert parts["test_x"].shape == (N_TEST, 1, 32, 32)
    assert parts["train_x"].dtype == parts["test_x"].dtype == torch.uint8
    assert parts["train_y"].dtype == torch.int64
    assert torch.equal(parts["train_y"], labels[train_idx])
    assert torch.equal(parts["test_y"], labels[test_idx])
    assert parts["classes"] == [str(d) for d in range(10)] and parts["unlabeled_x"] is None
    assert all(int((parts["train_x"][i] > 0).sum()) > 0 for i in range(N_TRAIN))  # no blanks


def test_split_is_disjoint_complete_and_stratified(source, shifted_parts):
    _, labels, train_idx, test_idx = source
    assert len(train_idx) == N_TRAIN and len(test_idx) == N_TEST
    assert set(train_idx).isdisjoint(test_idx)
    assert sorted([*train_idx, *test_idx]) == list(range(len(labels)))
    overall = np.bincount(labels.numpy(), minlength=10)
    test_counts = np.bincount(shifted_parts["test_y"].numpy(), minlength=10)
    train_counts = np.bincount(shifted_parts["train_y"].numpy(), minlength=10)
    assert np.all(test_counts > 0) and np.all(train_counts > 0)
    assert np.all(np.abs(test_counts - overall * N_TEST / len(labels)) <= 1)


@pytest.mark.parametrize("parts_name", ["shifted_parts", "plain_parts"])
def test_no_test_image_equals_a_train_image(request, parts_name):
    parts = request.getfixturevalue(parts_name)
    train = parts["train_x"].flatten(1).float()
    test = parts["test_x"].flatten(1).float()
    assert float(torch.cdist(test, train).min()) > 0


def test_shifted_digits_deterministic(shifted_parts):
    again = shifted_digits()
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(again[key], shifted_parts[key]), key
    other = shifted_digits(n_train=300, seed=1)
    assert other["train_x"].shape[0] == 300 and other["test_x"].shape[0] == 1797 - 300


def test_shifted_brightness_follows_the_construction(shifted_parts, source):
    images, _, train_idx, test_idx = source
    src_max = images.flatten(1).amax(dim=1)  # (1797,) in [0, 1]
    for x, idx in ((shifted_parts["train_x"], train_idx), (shifted_parts["test_x"], test_idx)):
        ratio = x.flatten(1).amax(dim=1).float() / (255 * src_max[idx])  # = b * interpolation
        assert float(ratio.max()) <= 1 + 0.5 / 255 / float(src_max.min())  # upper bound, exact
        # b ~ U(0.5, 1) spreads the peaks over a factor of about two: some near full
        # brightness, some near half (interpolation can only lower them further).
        q05, q95 = np.quantile(ratio.numpy(), [0.05, 0.95])
        assert q95 > 0.9 and q05 < 0.6


def test_shifted_ink_fits_in_the_pasted_square(shifted_parts):
    ink = shifted_parts["train_x"][:, 0] > 0  # (N, 32, 32)
    rows = ink.any(dim=2).float()
    cols = ink.any(dim=1).float()
    row_idx = torch.arange(32).float()

    def span(mask):  # last - first occupied index + 1
        first = torch.where(mask.bool(), row_idx, torch.tensor(99.0)).amin(dim=1)
        last = torch.where(mask.bool(), row_idx, torch.tensor(-1.0)).amax(dim=1)
        return last - first + 1

    # The rotated s x s box spans s (|cos a| + |sin a|) <= 20 (cos 20° + sin 20°) = 25.6 px,
    # plus one pixel of bilinear spread.
    bound = 20 * (math.cos(math.radians(20)) + math.sin(math.radians(20))) + 1
    assert float(span(rows).max()) <= bound and float(span(cols).max()) <= bound
    assert float(span(rows).min()) >= 6  # a 12 px digit still spans several rows


def test_shifted_digits_are_spread_and_plain_digits_centred(shifted_parts, plain_parts):
    shifted = centre_of_mass(shifted_parts["train_x"])
    plain = centre_of_mass(plain_parts["train_x"])
    # A box of side s placed uniformly: its centre's std is (32 - s) / sqrt(12), ~4.6 px at 16.
    assert bool((shifted.std(dim=0) > 3.5).all())
    assert float(shifted.min()) < 8 and float(shifted.max()) > 24
    assert bool((plain.std(dim=0) < 2).all())
    assert bool(((plain.mean(dim=0) - 15.5).abs() < 1).all())


def test_plain_digits_border_and_exact_peak(plain_parts, source):
    images, _, train_idx, _ = source
    x = plain_parts["train_x"][:, 0]
    assert int(x[:, :4].sum() + x[:, -4:].sum() + x[:, :, :4].sum() + x[:, :, -4:].sum()) == 0
    expected = (images[train_idx].flatten(1).amax(dim=1) * 255).round()
    assert torch.equal(x.flatten(1).amax(dim=1).float(), expected)


def test_load_dataset_names():
    data = load_dataset("digits")
    assert data.name == "digits" and data.channels == 1 and data.image_size == 32
    sub = data.subset(10, 5)
    assert len(sub.train_x) == 10 and len(sub.test_y) == 5
    assert torch.equal(sub.pretrain_images(), sub.train_x)  # no unlabeled split
    # a seeded random subset of the training images, in their original order
    flat = data.train_x.flatten(1)
    rows = [int((flat == img.flatten()).all(dim=1).nonzero()[0]) for img in sub.train_x]
    assert rows == sorted(rows) and len(set(rows)) == 10


@pytest.mark.parametrize("n_train", [0, 5, 1788, 5000, -3, 0.5, 1300.0, True])
def test_bad_n_train_is_one_line_error(n_train):
    # Stratified split: each split needs a digit of every class, so 10..1787; a float would
    # otherwise be read by scikit-learn as a fraction.
    with pytest.raises(SSLKitError, match="n_train must be a whole number from 10 to 1787") as e:
        plain_digits(n_train)
    assert "\n" not in str(e.value) and repr(n_train) in str(e.value)
    assert len(plain_digits(np.int64(10))["train_y"]) == 10  # numpy integers are fine


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_subset_rejects_non_positive_or_fractional_sizes(n):
    data = load_dataset("digits")
    with pytest.raises(SSLKitError, match="--n-train must be a positive whole number") as info:
        data.subset(n_train=n)  # -5 used to keep all but 5 images, 0 none at all
    assert "\n" not in str(info.value)
    with pytest.raises(SSLKitError, match="--n-test"):
        data.subset(n_test=n)


def test_subset_larger_than_the_data_keeps_everything():
    data = load_dataset("digits")
    sub = data.subset(n_train=10**6, n_test=np.int64(10**6))
    assert sub.train_x is data.train_x and sub.test_x is data.test_x


def test_pretrain_images_join_train_and_unlabeled_where_they_go(monkeypatch):
    """STL-10's training images then its unlabeled ones, made on the asked device part by part:
    a torch.cat on the host first cost a second 2.6 GiB copy of the unlabeled split."""
    from sslkit.data import ImageData

    g = torch.Generator().manual_seed(0)
    train_x, unlabeled_x = (torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
                            for n in (3, 5))
    data = ImageData(name="stl10", train_x=train_x, train_y=torch.arange(3),
                     test_x=train_x[:1], test_y=torch.arange(1), classes=["a", "b", "c"],
                     unlabeled_x=unlabeled_x)
    expected = torch.cat([train_x, unlabeled_x])

    def no_joined_copy(*args, **kwargs):
        raise AssertionError("pretrain_images joined the splits with torch.cat")

    monkeypatch.setattr(torch, "cat", no_joined_copy)
    assert torch.equal(data.pretrain_images(), expected)
    on_device = data.pretrain_images("meta")  # meta stands in for a GPU
    assert on_device.device.type == "meta" and on_device.shape == expected.shape
    assert on_device.dtype == torch.uint8
