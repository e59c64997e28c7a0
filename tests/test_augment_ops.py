"""The single transformations of SimCLR's augmentation study (augment.py, Figure 5 ops)."""

import math

import pytest
import torch

from sslkit.augment import (
    AUGMENTATION_OPS,
    ComposedViews,
    ViewConfig,
    cutout,
    gaussian_blur,
    gaussian_noise,
    jigsaw_tiles,
    jitter_tiles,
    merge_tiles,
    patch_pairs,
    random_quarter_turns,
    sobel,
    split_tiles,
)
from sslkit.errors import SSLKitError


def test_cutout_zeroes_exactly_the_square():
    x = torch.ones(3, 2, 10, 10)
    corner = torch.tensor([[0, 0], [2, 5], [8, 8]])
    side = torch.tensor([3, 4, 5])  # the last square is clipped to 2 x 2 by the border
    out = cutout(x, corner, side)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert [int((out[i, 0] == 0).sum()) for i in range(3)] == [9, 16, 4]
    assert (out[1, :, 2:6, 5:9] == 0).all() and out[1, :, :2].eq(1).all()
    assert torch.equal(out[:, 0], out[:, 1])  # every channel


def test_sobel_constant_is_zero_and_ramp_has_its_closed_form():
    assert sobel(torch.full((2, 3, 8, 8), 0.7)).abs().max() < 1e-6
    d = 0.05
    ramp = (torch.arange(8.0) * d).expand(1, 1, 8, 8).clone()  # brightness grows to the right
    out = sobel(ramp)
    # interior: |gx| = (1 + 2 + 1) * 2d, gy = 0, over the largest magnitude 4 sqrt(2)
    assert torch.allclose(out[0, 0, 1:-1, 1:-1], torch.tensor(8 * d / (4 * math.sqrt(2))))
    transposed = sobel(ramp.transpose(2, 3))  # the same edge turned by 90 degrees
    assert torch.allclose(transposed, out.transpose(2, 3), atol=1e-6)
    checker = (torch.arange(16).view(4, 4) % 2).float().expand(1, 3, 4, 4)
    assert 0 <= float(sobel(checker).min()) and float(sobel(checker).max()) <= 1


def test_gaussian_noise_moments_and_range():
    x = torch.full((4, 1, 64, 64), 0.5)
    out = gaussian_noise(x, 0.1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert abs(float(out.mean()) - 0.5) < 0.005 and abs(float(out.std()) - 0.1) < 0.005
    again = gaussian_noise(x, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_quarter_turns_are_rotations_by_1_to_3_quarters():
    x = torch.rand(20, 2, 6, 6)
    out, k = random_quarter_turns(x, torch.Generator().manual_seed(0))
    assert set(k.tolist()) <= {1, 2, 3} and len(set(k.tolist())) == 3
    for i in range(len(x)):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
        assert not torch.equal(out[i], x[i])


@pytest.mark.parametrize("op", AUGMENTATION_OPS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_dtype_and_range(op, channels):
    x = torch.randint(0, 256, (5, channels, 16, 16), dtype=torch.uint8)
    views = ComposedViews((op,), ViewConfig(size=16, jitter_strength=1.0),
                          torch.Generator().manual_seed(0))
    v1, v2 = views.two_views(x)
    assert v1.shape == (5, channels, 16, 16) and v1.dtype == torch.float32
    assert 0 <= float(v1.min()) and float(v1.max()) <= 1
    assert not torch.equal(v1, v2) or op == "sobel"  # sobel is deterministic


def test_composed_views_apply_ops_in_order_and_reject_unknown_ones():
    x = torch.rand(3, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    both = ComposedViews(("sobel", "noise"), ViewConfig(size=8), g, noise_std=0.0)
    assert torch.allclose(both(x), sobel(x))
    with pytest.raises(SSLKitError, match="unknown augmentation 'jpeg'"):
        ComposedViews(("crop", "jpeg"))


# ------------------------------------------------------------- bad input to the helpers (audit)
def _tiles_images():
    return torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("call,expected", [
    (lambda x: split_tiles(x, 0), "grid=3"),  # / 0
    (lambda x: split_tiles(x, 1.5), "whole number"),
    (lambda x: split_tiles(x[0]), r"x\[None\]"),  # unpack
    (lambda x: merge_tiles(x), "split_tiles"),
    (lambda x: jigsaw_tiles(
        x, torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 9]] * 2)), r"got \[0, 1, 2, 3, 4, 5, 6, 7, 9\]"),
    (lambda x: jigsaw_tiles(
        x, torch.tensor([[0, 0, 2, 3, 4, 5, 6, 7, 8]] * 2)), "each once"),  # a tile twice
    (lambda x: jigsaw_tiles(x, torch.arange(9)), r"\(2, 9\)"),
    (lambda x: patch_pairs(x, torch.tensor([0, 8])),
     "got 8"),  # an IndexError
    (lambda x: patch_pairs(x, torch.tensor([-1, 0])),
     "got -1"),  # silently neighbour 7
    (lambda x: patch_pairs(x, torch.tensor([0.0, 1.0])),
     "integer labels"),
    (lambda x: jitter_tiles(x[:, None], 10), "from 1 to 9"),
    (lambda x: jitter_tiles(x, 2), r"x\[:, None\]"),
    (lambda x: gaussian_blur(x, torch.ones(3)),
     "one sigma per image"),  # a reshape error
    (lambda x: ComposedViews(("rotate",))(x[:, :, :, :8]), "square"),  # a torch.stack error
    (lambda x: sobel(x.long()), "torch.int64"),
])
def test_helpers_give_one_line_errors_for_plausible_mistakes(call, expected):
    with pytest.raises(SSLKitError, match=expected) as err:
        call(_tiles_images())
    assert "\n" not in str(err.value)


def test_sobel_takes_uint8_images_as_the_views_do():
    """sobel(uint8) used to fail with an overflow error; it is the Sobel image of x / 255."""
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(sobel(x), sobel(x.float() / 255))


def test_helper_value_checks_read_no_device_values():
    """Labels and permutations live on the GPU in Jigsaw's and RelativePatch's training steps:
    their values are checked on the CPU only (meta tensors have none to read)."""
    x = torch.empty(2, 1, 9, 9, device="meta")
    assert jigsaw_tiles(x, torch.empty(2, 9, dtype=torch.long, device="meta")).shape == (
        2, 9, 1, 3, 3)
    assert patch_pairs(x, torch.empty(2, dtype=torch.long, device="meta"))[1].shape == (2, 1, 3, 3)
    assert jitter_tiles(x[:, None], 6).shape == (2, 1, 1, 6, 6)
