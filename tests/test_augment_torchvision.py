"""The batched views against torchvision's own code, case by case: whole-pixel crop boxes drawn
as RandomResizedCrop draws them (rounding, offsets, the central fallback, non-square images),
the blur's kernel as GaussianBlur's, and the edge cases (empty batch, 1-pixel views)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from scipy.stats import ks_2samp
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from sslkit.augment import (
    SimCLRViews,
    ViewConfig,
    blur_settings,
    crop_params,
    gaussian_blur,
    view_transform,
)

PLAIN = ViewConfig(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0,
                   jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def to_pixels(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, 4) fractions (w, h, cx, cy) -> (n, 4) pixels (top, left, height, width)."""
    w, h, cx, cy = box.double().unbind(dim=1)
    return torch.stack([(cy - h / 2) * height, (cx - w / 2) * width, h * height, w * width], 1)


@pytest.mark.parametrize("shape", [(10, 10), (12, 20)])
def test_pixel_boxes_are_drawn_as_torchvision_draws_them(shape):
    """On a small image (where rounding to whole pixels matters) the boxes are whole pixels,
    and top, left, height, width and the area follow torchvision's get_params."""
    n, (height, width) = 4000, shape
    cfg = ViewConfig()
    ours = to_pixels(crop_params(n, cfg, gen(0), image_size=shape), height, width)
    assert torch.allclose(ours, ours.round(), atol=1e-4), "boxes are whole pixels"
    ours = ours.round()
    torch.manual_seed(1)
    img = torch.zeros(1, height, width)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
                           for _ in range(n)], dtype=torch.float64)
    for k in range(4):
        assert ks_2samp(ours[:, k].numpy(), theirs[:, k].numpy()).pvalue > 1e-3, k
    area = ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]
    assert ks_2samp(area[0].numpy(), area[1].numpy()).pvalue > 1e-3


def test_a_wide_image_gets_square_crops_in_pixels():
    """Aspect ratio is w/h in pixels, as torchvision's: crop_ratio (1, 1) on a 16 x 64 image
    gives square boxes. A box of the whole area does not fit, so the fallback is the central
    16 x 16 square (columns 24..39), in both pipelines; before, the whole image was squashed."""
    x = torch.arange(64.0).expand(1, 3, 16, 64) / 64  # each column its own value
    cfg = replace(PLAIN, size=16)
    out = SimCLRViews(cfg, gen(2))(x)
    torch.testing.assert_close(out, x[..., 24:40], atol=1e-6, rtol=0)
    torch.manual_seed(3)
    single = view_transform(cfg)((x[0] * 255).round().to(torch.uint8))
    torch.testing.assert_close(single, (x[0, :, :, 24:40] * 255).round() / 255, atol=1e-6,
                               rtol=0)
    boxes = to_pixels(crop_params(500, replace(cfg, crop_scale=(0.1, 0.2)), gen(4), (16, 64)),
                      16, 64)
    assert torch.equal(boxes[:, 2], boxes[:, 3]), "crop_ratio (1, 1): square in pixels"


def test_the_fallback_is_torchvisions_central_crop():
    """No draw fits (area >= 0.9 with aspect 2..3 on a square image): torchvision then takes
    the central crop of the nearest allowed aspect, w = 30, h = round(30 / 2) = 15, top =
    (30 - 15) // 2 = 7, not the whole image."""
    cfg = ViewConfig(crop_scale=(0.9, 1.0), crop_ratio=(2.0, 3.0))
    box = crop_params(50, cfg, gen(5), image_size=(30, 30))
    expected = torch.tensor([1.0, 15 / 30, 0.5, (7 + 7.5) / 30]).expand(50, 4)
    torch.testing.assert_close(box, expected)
    torch.manual_seed(6)
    assert T.RandomResizedCrop.get_params(torch.zeros(1, 30, 30), [0.9, 1.0], [2.0, 3.0]) == (
        7, 0, 15, 30)


def test_the_blur_is_torchvisions_gaussian_blur():
    """An impulse blurred by SimCLRViews is torchvision's gaussian_blur with GaussianBlur's
    kernel size (from blur_settings, the same for every sigma) and the sigma drawn, which the
    ratio of two neighbouring kernel values gives back: k(1) / k(0) = exp(-1 / (2 sigma^2)).
    Before, a batch of one drew its own, narrower kernel from the sigma it drew."""
    cfg = replace(PLAIN, size=17, blur_p=1.0, blur_sigma=(0.5 * 224 / 17, 2.0 * 224 / 17))
    (lo, hi), kernel = blur_settings(cfg)
    assert (lo, hi) == pytest.approx((0.5, 2.0)) and kernel == 9
    impulse = torch.zeros(1, 1, 17, 17)
    impulse[0, 0, 8, 8] = 1.0
    for seed in range(6):
        out = SimCLRViews(cfg, gen(seed))(impulse)[0]  # (1, 17, 17)
        sigma = float((-0.5 / torch.log(out[0, 8, 9] / out[0, 8, 8])).sqrt())
        assert lo <= sigma <= hi
        expected = TF.gaussian_blur(impulse[0], [kernel, kernel], [sigma, sigma])
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_a_blurred_image_does_not_depend_on_the_rest_of_the_batch():
    x = torch.rand(2, 3, 20, 20, generator=gen(7))
    a = gaussian_blur(x, torch.tensor([1.0, 0.3]))
    b = gaussian_blur(x, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
    c = gaussian_blur(x, torch.tensor([1.0, 0.3]), kernel_size=9)  # one size for every sigma
    expected = TF.gaussian_blur(x[1], [9, 9], [0.3, 0.3])
    torch.testing.assert_close(c[1], expected, atol=1e-6, rtol=0)


def test_an_empty_batch_gives_no_views():
    cfg = ViewConfig(blur_p=0.5, solarize_p=0.5, rotate_degrees=10.0)
    out = SimCLRViews(cfg, gen(8))(torch.zeros(0, 3, 32, 32, dtype=torch.uint8))
    assert out.shape == (0, 3, 32, 32) and out.dtype == torch.float32


def test_one_pixel_views_with_blur_are_the_crops_mean_colour():
    """A 1-pixel view cannot be blurred (reflect padding needs 2 pixels): the kernel is cut to
    one tap, so blur leaves it alone instead of raising. Cropping the whole image to 1 pixel is
    torchvision's antialiased resize: a triangle-weighted mean colour."""
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=gen(9))
    cfg = replace(PLAIN, size=1, blur_p=1.0)
    assert blur_settings(cfg)[1] == 1
    out = SimCLRViews(cfg, gen(10))(img[None])
    expected = TF.resize(img[None].float() / 255, [1, 1], antialias=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
