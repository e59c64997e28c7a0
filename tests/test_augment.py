"""sslkit.augment: each stage of the batched SimCLR pipeline against closed forms or a plain
reference (torchvision's functional transforms, colorsys), the probabilities of the random
stages, and the rotate_batch contract."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sslkit import plots
from sslkit.augment import (
    LUMA,
    SimCLRViews,
    ViewConfig,
    _hsv_to_rgb,
    _rgb_to_hsv,
    color_jitter,
    crop_params,
    gaussian_blur,
    resized_crop_flip,
    rotate_batch,
    to_gray,
    view_config_for,
    view_transform,
)
from sslkit.errors import SSLKitError
from sslkit.evaluate import extract_features, pixels

FULL = torch.tensor([1.0, 1.0, 0.5, 0.5])  # the whole image as a crop box (w, h, cx, cy)
IDENTITY_JITTER = torch.tensor([1.0, 1.0, 1.0, 0.0])
# Everything off except what a test switches on.
PLAIN = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                   gray_p=0.0, blur_p=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(n, c, h, w=None, seed=0) -> torch.Tensor:
    return torch.rand(n, c, h, w or h, generator=gen(seed))


def no_flip(n):
    return torch.zeros(n, dtype=torch.bool)


# ------------------------------------------------------------------------- SimCLRViews
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_views_shape_dtype_range(channels, dtype):
    x = rand_images(16, channels, 40)
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x
    cfg = ViewConfig(size=24, blur_p=0.5)
    v = SimCLRViews(cfg, gen())(x)
    assert v.shape == (16, channels, 24, 24)
    assert v.dtype == torch.float32
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0


def test_uint8_and_float_inputs_give_the_same_views():
    x8 = (rand_images(8, 3, 32) * 255).round().to(torch.uint8)
    a = SimCLRViews(ViewConfig(blur_p=0.5), gen(3))(x8)
    b = SimCLRViews(ViewConfig(blur_p=0.5), gen(3))(x8.float() / 255)
    torch.testing.assert_close(a, b)


def test_views_are_random_per_sample_and_per_call():
    x = rand_images(1, 3, 32).repeat(8, 1, 1, 1)  # one image, eight times
    views = SimCLRViews(ViewConfig(), gen())
    v1, v2 = views.two_views(x)
    flat = v1.flatten(1)
    dist = torch.cdist(flat, flat) + torch.eye(8) * 1e9
    assert float(dist.min()) > 1e-3, "two samples of one image in a batch got the same view"
    assert float((v1 - v2).flatten(1).norm(dim=1).min()) > 1e-3, "two calls gave the same view"


def test_views_reproducible_with_a_seeded_generator():
    x = rand_images(8, 3, 32)
    cfg = ViewConfig(blur_p=0.5)
    a = SimCLRViews(cfg, gen(7)).two_views(x)
    b = SimCLRViews(cfg, gen(7)).two_views(x)
    c = SimCLRViews(cfg, gen(8)).two_views(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_views_with_everything_off_are_the_image():
    x = rand_images(4, 3, 32)
    torch.testing.assert_close(SimCLRViews(PLAIN, gen())(x), x, atol=1e-6, rtol=0)


def test_views_reject_an_image_without_batch_axis():
    with pytest.raises(SSLKitError) as err:
        SimCLRViews()(torch.rand(3, 32, 32))
    assert "\n" not in str(err.value) and "x[None]" in str(err.value)


@pytest.mark.parametrize("settings,expected", [
    ({"size": 0}, "size must be at least 1"),
    ({"crop_scale": (0.9, 0.1)}, "crop_scale"),  # once: silently drew areas from 0.1 to 0.9
    ({"crop_scale": (-0.5, 1.0)}, "crop_scale"),
    ({"crop_scale": (0.5, 2.0)}, "crop_scale"),
    ({"crop_ratio": (4 / 3, 3 / 4)}, "crop_ratio"),
    ({"flip_p": 2.0}, "flip_p is a probability"),
    ({"gray_p": -1.0}, "gray_p is a probability"),
    ({"jitter_strength": -0.5}, "jitter_strength"),
    ({"blur_sigma": (2.0, 0.1)}, "blur_sigma"),
])
def test_view_settings_out_of_range_are_one_line_errors(settings, expected):
    with pytest.raises(SSLKitError, match=expected) as err:
        ViewConfig(**settings)
    assert "\n" not in str(err.value) and "use" in str(err.value)


def fraction_changed(cfg: ViewConfig, x: torch.Tensor, n: int = 4000) -> float:
    out = SimCLRViews(cfg, gen(1))(x.expand(n, *x.shape[1:]))
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-4
    return float(changed.float().mean())


# Binomial with n = 4000 and p <= 0.5: standard error <= 0.008; 0.035 is over 4 SE.
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_flip_probability(p):
    x = rand_images(1, 1, 16)
    out = SimCLRViews(ViewConfig(**{**PLAIN.__dict__, "flip_p": p, "size": 16}), gen(2))(
        x.expand(4000, 1, 16, 16))
    is_x = (out - x).flatten(1).abs().amax(dim=1) < 1e-5
    is_flipped = (out - x.flip(3)).flatten(1).abs().amax(dim=1) < 1e-5
    assert bool((is_x ^ is_flipped).all()), "every view is the image or its mirror"
    assert abs(float(is_flipped.float().mean()) - p) < 0.035


@pytest.mark.parametrize("field,p", [("jitter_p", 0.8), ("blur_p", 0.4)])
def test_jitter_and_blur_probabilities(field, p):
    x = rand_images(1, 1, 16)
    # blur_sigma is given at 224 px: (14, 28) is a visible 1-2 px blur at 16 px.
    cfg = ViewConfig(**{**PLAIN.__dict__, "size": 16, "blur_sigma": (14.0, 28.0), field: p})
    assert abs(fraction_changed(cfg, x) - p) < 0.035


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_grayscale_probability(p):
    x = rand_images(1, 3, 16)  # every pixel a random colour: no view is gray by accident
    out = SimCLRViews(ViewConfig(**{**PLAIN.__dict__, "size": 16, "gray_p": p}), gen(4))(
        x.expand(4000, 3, 16, 16))
    spread = (out.amax(dim=1) - out.amin(dim=1)).flatten(1).amax(dim=1)  # 0 for a gray view
    gray = spread == 0
    assert abs(float(gray.float().mean()) - p) < 0.035
    torch.testing.assert_close(out[gray], to_gray(x).expand(int(gray.sum()), 3, 16, 16))


def test_brightness_factor_range():
    # A constant image: contrast leaves it alone, so the view is clamp(0.5 * b) with
    # b ~ U(1 - 0.8 s, 1 + 0.8 s) (mean 1, variance (1.6 s)^2 / 12).
    s = 0.5
    cfg = ViewConfig(**{**PLAIN.__dict__, "size": 8, "jitter_p": 1.0, "jitter_strength": s})
    out = SimCLRViews(cfg, gen(5))(torch.full((4000, 1, 8, 8), 0.5))
    b = out[:, 0, 0, 0] / 0.5
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))
    assert float(b.min()) >= 1 - 0.8 * s - 1e-6 and float(b.max()) <= 1 + 0.8 * s + 1e-6
    assert abs(float(b.mean()) - 1.0) < 0.01
    assert abs(float(b.var()) - (1.6 * s) ** 2 / 12) < 0.005


# ------------------------------------------------------------------------- crop_params
def conditional_mean_area(scale, ratio, grid: int = 20001) -> float:
    """E[area | the box fits] for area ~ U(scale), log r ~ U(log ratio), fit: area <= min(r, 1/r),
    by numerical integration over log r (the inner integral over the area is closed form)."""
    u = np.linspace(math.log(ratio[0]), math.log(ratio[1]), grid)
    top = np.minimum(scale[1], np.exp(-np.abs(u)))
    length = np.clip(top - scale[0], 0, None)
    first_moment = np.where(length > 0, (top**2 - scale[0] ** 2) / 2, 0.0)
    return float(first_moment.mean() / length.mean())


@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (0.5, 2.0))])
def test_crop_boxes_follow_the_distribution(scale, ratio):
    cfg = ViewConfig(crop_scale=scale, crop_ratio=ratio)
    box = crop_params(20000, cfg, gen(6))
    w, h, cx, cy = box.unbind(1)
    eps = 1e-6
    assert bool(((cx - w / 2 >= -eps) & (cx + w / 2 <= 1 + eps)).all()), "box leaves the image"
    assert bool(((cy - h / 2 >= -eps) & (cy + h / 2 <= 1 + eps)).all()), "box leaves the image"
    fallback = (box == FULL).all(dim=1)
    drawn = ~fallback
    area, aspect = (w * h)[drawn], (w / h)[drawn]
    assert float(area.min()) >= scale[0] - eps and float(area.max()) <= scale[1] + eps
    assert float(aspect.min()) >= ratio[0] - eps and float(aspect.max()) <= ratio[1] + eps
    assert float(fallback.float().mean()) < 0.01
    # Accepted draws follow the conditional law; the std of the area is < 0.3, so the standard
    # error of the mean is < 0.0025.
    assert abs(float(area.mean()) - conditional_mean_area(scale, ratio)) < 0.01
    # The centre is uniform over the positions that keep the box inside.
    inner = drawn & (w < 0.95) & (h < 0.95)
    pos_x = (cx - w / 2)[inner] / (1 - w[inner])
    pos_y = (cy - h / 2)[inner] / (1 - h[inner])
    for pos in (pos_x, pos_y):
        assert abs(float(pos.mean()) - 0.5) < 0.01 and abs(float(pos.var()) - 1 / 12) < 0.005


def test_crop_boxes_fall_back_to_the_full_image():
    # Area >= 0.9 with aspect in [1/4, 4]: most draws do not fit, so some boxes are the full
    # image after 10 tries; every other box still obeys the constraints.
    cfg = ViewConfig(crop_scale=(0.9, 1.0), crop_ratio=(0.25, 4.0))
    box = crop_params(5000, cfg, gen(7))
    fallback = (box == FULL).all(dim=1)
    assert 0 < int(fallback.sum()) < len(box)
    w, h = box[~fallback, 0], box[~fallback, 1]
    assert bool(((w <= 1) & (h <= 1) & (w * h >= 0.9 - 1e-6)).all())


def test_crop_params_reproducible():
    cfg = ViewConfig()
    assert torch.equal(crop_params(64, cfg, gen(3)), crop_params(64, cfg, gen(3)))
    assert not torch.equal(crop_params(64, cfg, gen(3)), crop_params(64, cfg, gen(4)))


# ------------------------------------------------------------------ resized_crop_flip
def test_full_box_same_size_is_identity_and_flip_mirrors():
    box = FULL.repeat(3, 1)
    sq = rand_images(3, 3, 16)
    torch.testing.assert_close(resized_crop_flip(sq, box, no_flip(3), 16), sq, atol=1e-6, rtol=0)
    flip = torch.tensor([True, False, True])
    out = resized_crop_flip(sq, box, flip, 16)
    torch.testing.assert_close(out[flip], sq[flip].flip(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[~flip], sq[~flip], atol=1e-6, rtol=0)
    wide = rand_images(3, 3, 12, 16)
    assert resized_crop_flip(wide, box, no_flip(3), 8).shape == (3, 3, 8, 8)


def test_pixel_aligned_crop_is_a_slice():
    # Box = top-left quadrant, output side = half the input: output pixel j samples input pixel j.
    x = rand_images(2, 3, 16)
    box = torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.5, 0.5, 0.75, 0.25]])
    out = resized_crop_flip(x, box, no_flip(2), 8)
    torch.testing.assert_close(out[0], x[0, :, :8, :8], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], x[1, :, :8, 8:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("factor", [2, 4])
def test_shrinking_the_full_image_is_torchvisions_antialiased_resize(factor):
    # Shrinking by 2 or 4 is a triangle filter of half-width 2 or 4 pixels (torchvision's
    # antialias=True), not a plain average of 2x2 or 4x4 blocks (which aliases more).
    x = rand_images(2, 1, 32)
    out = resized_crop_flip(x, FULL.repeat(2, 1), no_flip(2), 32 // factor)
    expected = TF.resize(x, [32 // factor] * 2, antialias=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert float((out - F.avg_pool2d(x, factor)).abs().max()) > 1e-2


# (top, left, height, width) in pixels of an (H, W) image, output side: enlarged, kept, shrunk
# by less than 2 (DINO's local crops), by 3 and by a fraction, square and not.
BOXES = [((3, 5, 20, 20), (32, 32), 32), ((2, 1, 17, 23), (32, 32), 32),
         ((4, 4, 24, 24), (32, 32), 16), ((1, 2, 20, 14), (32, 32), 16),
         ((0, 0, 96, 96), (96, 96), 32), ((7, 30, 50, 61), (60, 96), 24)]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("pixel_box,shape,size", BOXES)
def test_crop_and_resize_is_torchvisions_resized_crop(pixel_box, shape, size, flip):
    """A whole-pixel box is cropped and resized as torchvision's resized_crop (bilinear,
    antialias=True) and then mirrored: the view's edge pixels come from the crop alone, never
    from the image around it, and a shrunk view is filtered, not aliased."""
    top, left, h, w = pixel_box
    x = rand_images(1, 3, *shape, seed=4)
    box = torch.tensor([[w / shape[1], h / shape[0], (left + w / 2) / shape[1],
                         (top + h / 2) / shape[0]]])
    out = resized_crop_flip(x, box, torch.tensor([flip]), size)
    expected = TF.resized_crop(x, top, left, h, w, [size, size], antialias=True)
    expected = TF.horizontal_flip(expected) if flip else expected
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_rotation_by_plus_90_degrees_is_rot90_counter_clockwise():
    # Convention: a positive angle turns the picture counter-clockwise as displayed (row 0 on
    # top), as torchvision's rotate does; +90 degrees is torch.rot90(x, 1, dims=(2, 3)).
    x = rand_images(2, 3, 12)
    out = resized_crop_flip(x, FULL.repeat(2, 1), no_flip(2), 12, torch.full((2,), math.pi / 2))
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, TF.rotate(x, 90.0), atol=1e-5, rtol=0)
    minus = resized_crop_flip(x, FULL.repeat(2, 1), no_flip(2), 12, torch.full((2,), -math.pi / 2))
    torch.testing.assert_close(minus, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------- colour
def test_to_gray_weights():
    eye = torch.eye(3).view(3, 3, 1, 1)  # pure red, green, blue
    torch.testing.assert_close(to_gray(eye).flatten(), torch.tensor(LUMA))
    x = rand_images(2, 3, 5)
    expected = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # torchvision's weights
    torch.testing.assert_close(to_gray(x), expected[:, None], atol=0, rtol=1e-6)
    torch.testing.assert_close(to_gray(x), TF.rgb_to_grayscale(x), atol=0, rtol=1e-6)
    assert to_gray(x).shape == (2, 1, 5, 5)


def test_rgb_hsv_known_colours_and_colorsys():
    named = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0, 0, 0],
                          [1, 1, 0], [0.2, 0.4, 0.8]], dtype=torch.float32)
    rgb = torch.cat([named, torch.rand(200, 3, generator=gen(9))])
    hsv = _rgb_to_hsv(rgb.view(-1, 3, 1, 1)).view(-1, 3)
    expected = torch.tensor([colorsys.rgb_to_hsv(*map(float, c)) for c in rgb],
                            dtype=torch.float32)
    torch.testing.assert_close(hsv, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(hsv[:3, 0], torch.tensor([0.0, 1 / 3, 2 / 3]))


def test_hsv_round_trip():
    x = rand_images(4, 3, 8)
    torch.testing.assert_close(_hsv_to_rgb(_rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    hsv = torch.rand(200, 3, generator=gen(10))
    rgb = _hsv_to_rgb(hsv.view(-1, 3, 1, 1)).view(-1, 3)
    expected = torch.tensor([colorsys.hsv_to_rgb(*map(float, c)) for c in hsv],
                            dtype=torch.float32)
    torch.testing.assert_close(rgb, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_identity_jitter_is_identity(channels):
    x = rand_images(3, channels, 8)
    out = color_jitter(x, IDENTITY_JITTER.repeat(3, 1))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_brightness_scales_and_clamps():
    x = rand_images(2, 3, 8)
    f = torch.tensor([[0.5, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, 0.0]])
    out = color_jitter(x, f)
    torch.testing.assert_close(out[0], 0.5 * x[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], (2 * x[1]).clamp(max=1), atol=1e-5, rtol=0)


def test_contrast_on_one_channel_blends_with_the_mean():
    x = rand_images(2, 1, 8)
    f = torch.tensor([[0.5, 0.3, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])  # brightness, then contrast
    out = color_jitter(x, f)
    darker = 0.5 * x[0]
    expected0 = 0.3 * darker + 0.7 * darker.mean()
    torch.testing.assert_close(out[0], expected0.clamp(0, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], torch.full_like(x[1], float(x[1].mean())))


def test_saturation_zero_gives_gray_and_full_hue_turn_is_identity():
    x = rand_images(2, 3, 8)
    gray = color_jitter(x, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2))
    torch.testing.assert_close(gray, to_gray(x).expand_as(x), atol=1e-5, rtol=0)
    turned = color_jitter(x, torch.tensor([[1.0, 1.0, 1.0, 1.0]] * 2))
    torch.testing.assert_close(turned, x, atol=1e-5, rtol=0)


def test_color_jitter_agrees_with_torchvision_functionals():
    # Brightness, contrast, saturation, hue in that order = torchvision's adjust_* composed.
    x = rand_images(6, 3, 10)
    f = torch.stack([torch.empty(6).uniform_(0.5, 1.5, generator=gen(11)),
                     torch.empty(6).uniform_(0.5, 1.5, generator=gen(12)),
                     torch.empty(6).uniform_(0.0, 1.5, generator=gen(13)),
                     torch.empty(6).uniform_(-0.5, 0.5, generator=gen(14))], dim=1)
    out = color_jitter(x, f)
    for i in range(6):
        b, c, s, h = (float(v) for v in f[i])
        ref = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(
            TF.adjust_brightness(x[i], b), c), s), h)
        torch.testing.assert_close(out[i], ref, atol=2e-4, rtol=0)


# ------------------------------------------------------------------------- blur
def test_blur_keeps_a_constant_image():
    x = torch.full((2, 3, 9, 9), 0.37)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([0.7, 2.0])), x)


def test_blur_impulse_response_is_the_sampled_gaussian():
    sigma = 1.5
    radius = math.ceil(2 * sigma)  # the kernel is truncated at 2 sigma
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    out = gaussian_blur(x, torch.tensor([sigma]))[0, 0]
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
    k = k / k.sum()
    expected = torch.zeros(15, 15)
    expected[7 - radius : 8 + radius, 7 - radius : 8 + radius] = torch.outer(k, k)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert abs(float(out.sum()) - 1.0) < 1e-5


def test_blur_sigma_zero_leaves_its_sample_unchanged():
    x = rand_images(3, 3, 12)
    out = gaussian_blur(x, torch.tensor([0.0, 1.2, 0.0]))
    torch.testing.assert_close(out[[0, 2]], x[[0, 2]], atol=1e-6, rtol=0)
    assert float((out[1] - x[1]).abs().max()) > 1e-2
    # Reflect padding keeps the mean of a smooth image close (not exactly: edges are mirrored).
    assert abs(float(out[1].mean() - x[1].mean())) < 0.02


def test_blur_commutes_with_mirroring():
    x = rand_images(2, 1, 11)
    sigma = torch.tensor([0.8, 1.6])
    torch.testing.assert_close(gaussian_blur(x.flip(3), sigma), gaussian_blur(x, sigma).flip(3))


# ------------------------------------------------------------------------- view_transform
@pytest.mark.parametrize("kind", ["pil", "uint8-3", "uint8-1"])
def test_view_transform_shape_and_range(kind):
    rng = np.random.default_rng(0)
    if kind == "pil":
        img, c = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), 3
    else:
        c = int(kind[-1])
        img = torch.from_numpy(rng.integers(0, 256, (c, 40, 48), dtype=np.uint8))
    torch.manual_seed(0)
    out = view_transform(ViewConfig(size=24, blur_p=0.5))(img)
    assert out.shape == (c, 24, 24) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_batched_and_torchvision_pipelines_agree_in_brightness():
    # Same settings, two implementations (torchvision jitters in a random order): the mean and
    # the spread of the per-view mean brightness agree loosely over many draws.
    img = (rand_images(1, 3, 32, seed=15)[0] * 255).to(torch.uint8)
    cfg = ViewConfig(blur_p=0.5)
    batched = SimCLRViews(cfg, gen(16))(img[None].expand(400, -1, -1, -1)).mean(dim=(1, 2, 3))
    torch.manual_seed(16)
    tf = view_transform(cfg)
    single = torch.stack([tf(img) for _ in range(400)]).mean(dim=(1, 2, 3))
    assert abs(float(batched.mean() - single.mean())) < 0.03
    assert 0.7 < float(batched.std() / single.std()) < 1.4


# ------------------------------------------------------------------------- rotate_batch
def test_rotate_batch_contract():
    sq = rand_images(3, 2, 6)
    x_rot, labels = rotate_batch(sq)
    assert x_rot.shape == (12, 2, 6, 6) and labels.dtype == torch.int64
    assert torch.equal(labels, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]))
    expected = torch.cat([torch.rot90(sq, k, dims=(2, 3)) for k in range(4)])
    assert torch.equal(x_rot, expected)
    for k in range(4):  # each block is block 0 turned k times
        assert torch.equal(x_rot[labels == k], torch.rot90(x_rot[labels == 0], k, dims=(2, 3)))


# A non-square batch cannot be stacked with its quarter turns (H and W swap).
@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 1, 3, 8, 8), (8,), (2, 3, 5, 7)])
def test_rotate_batch_bad_shape_is_a_one_line_error(shape):
    with pytest.raises(SSLKitError) as err:
        rotate_batch(torch.zeros(shape))
    msg = str(err.value)
    assert "\n" not in msg and str(tuple(shape)) in msg


# ------------------------------------------------------------------ shrinking and rotated crops
def test_a_crop_needing_no_resize_is_its_pixels_even_from_a_large_image():
    """A 32x32 box of a 96-px image, output 32 px: the box's pixels exactly (a pre-blur of the
    whole image, as before, blurred them)."""
    x = rand_images(1, 3, 96)
    box = torch.tensor([[32 / 96, 32 / 96, 32 / 96, 32 / 96]])  # pixels 16..47 both ways
    out = resized_crop_flip(x, box, no_flip(1), 32)
    torch.testing.assert_close(out, x[:, :, 16:48, 16:48], atol=1e-5, rtol=0)


def test_each_image_is_resized_by_its_own_shrink_factor():
    """In one batch: a full 96-px image to 32 px, a 64-px box of it and a 32-px box, each as
    torchvision resizes it alone."""
    x = rand_images(3, 3, 96, seed=1)
    box = torch.tensor([[1.0, 1.0, 0.5, 0.5], [64 / 96, 64 / 96, 0.5, 0.5],
                        [32 / 96, 32 / 96, 0.5, 0.5]])
    out = resized_crop_flip(x, box, no_flip(3), 32)
    for i, (start, side) in enumerate([(0, 96), (16, 64), (32, 32)]):
        expected = TF.resized_crop(x[i], start, start, side, side, [32, 32], antialias=True)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], x[2, :, 32:64, 32:64], atol=1e-5, rtol=0)


def test_shrinking_never_waits_for_the_device():
    from host_sync import copies_must_not_wait

    x = torch.empty(4, 3, 96, 96, device="meta")
    box = torch.tensor([[1.0, 1.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]] * 2)
    with copies_must_not_wait():
        assert resized_crop_flip(x, box, no_flip(4), 32).shape == (4, 3, 32, 32)


def test_a_rotated_crop_is_black_outside_the_image():
    """The corners a 45-degree turn of the full image brings in lie outside it: black, as
    torchvision's rotation fills them, never a mirror of the image."""
    x = torch.ones(1, 1, 32, 32)
    out = resized_crop_flip(x, FULL[None], no_flip(1), 32, torch.tensor([math.pi / 4]))
    assert float(out[0, 0, 0, 0]) == 0 and float(out[0, 0, -1, -1]) == 0
    assert float(out[0, 0, 16, 16]) == pytest.approx(1.0)


@pytest.mark.parametrize("flip", [False, True])
def test_a_turned_crop_is_torchvisions_rotation_of_the_crop(flip):
    """Crop, flip, then turn the square view about its centre, as the per-image pipeline does:
    a 16-px box of a 32-px image (no resize) turned by 23 degrees equals TF.rotate of the
    (flipped) crop wherever torchvision's view lies wholly inside the crop, and is black where
    it lies wholly outside, and so is every pixel of the soft edge between. Before, the box
    turned inside the image and brought in the image around it where torchvision shows
    black."""
    x = rand_images(1, 3, 32, seed=3)
    box = torch.tensor([[0.5, 0.5, 12 / 32, 20 / 32]])  # columns 4..19, rows 12..27
    angle = math.radians(23.0)
    out = resized_crop_flip(x, box, torch.tensor([flip]), 16, torch.tensor([angle]))[0]
    crop = x[0, :, 12:28, 4:20]
    crop = TF.horizontal_flip(crop) if flip else crop
    expected = TF.rotate(crop, 23.0, TF.InterpolationMode.BILINEAR, fill=0)  # as RandomRotation
    mask = TF.rotate(torch.ones(1, 16, 16), 23.0, TF.InterpolationMode.BILINEAR)[0]
    inside, outside = mask > 1 - 1e-6, mask < 1e-6
    assert int(inside.sum()) > 100 and int(outside.sum()) > 20
    torch.testing.assert_close(out[:, inside], expected[:, inside], atol=1e-5, rtol=0)
    assert float(out[:, outside].abs().max()) == 0.0
    # and at the soft edge between them too: the whole view is torchvision's
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_a_turned_white_crop_fades_at_its_edges_as_torchvision():
    """On a constant image torchvision's edge pixels are mask^2 (a zero-padded view times the
    sampled mask); so are the batched path's, for any box and angle."""
    x = torch.ones(3, 1, 40, 40)
    box = torch.tensor([[0.5, 0.4, 0.5, 0.5], [0.3, 0.45, 0.3, 0.7], [1.0, 1.0, 0.5, 0.5]])
    angles = torch.tensor([0.3, -0.5, 1.0])
    out = resized_crop_flip(x, box, no_flip(3), 16, angles)
    for i, a in enumerate(angles.tolist()):
        mask = TF.rotate(torch.ones(1, 16, 16), math.degrees(a), TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[i], mask.square(), atol=1e-5, rtol=0)


def test_views_under_autocast_are_the_float32_views():
    """Training makes its views inside the bfloat16 autocast that runs the network (on CUDA;
    the CPU's autocast casts the same ops). The resize, blur and Sobel filter are matmuls and
    convolutions that autocast would run in bfloat16, up to 0.066 off per pixel."""
    from sslkit.augment import ComposedViews
    from sslkit.methods.dino import MultiCropViews

    x = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    cfg = ViewConfig(blur_p=0.5, rotate_degrees=20, solarize_p=0.3)
    makers = {
        "simclr": lambda g: SimCLRViews(cfg, g)(x),
        "multi-crop": lambda g: torch.cat([v.flatten() for v in MultiCropViews(cfg, 2, 16,
                                                                               generator=g)(x)]),
        "composed": lambda g: ComposedViews(("crop", "blur", "sobel"), cfg, g)(x),
    }
    for name, make in makers.items():
        plain = make(torch.Generator().manual_seed(3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = make(torch.Generator().manual_seed(3))
        assert mixed.dtype == torch.float32, name
        assert torch.equal(mixed, plain), (name, float((mixed - plain).abs().max()))


# ------------------------------------------------------------- bad images and settings (audit)
def _image_takers():
    """Everything that takes a batch of images (N, C, H, W) as the views do, by name."""
    from sslkit.augment import ComposedViews
    from sslkit.methods import Jigsaw, RelativePatch, Rotation
    from sslkit.methods.dino import MultiCropViews
    from sslkit.models import ConvNet

    return {
        "SimCLRViews": SimCLRViews(ViewConfig(size=8)),
        "ComposedViews": ComposedViews(("crop", "colour"), ViewConfig(size=8)),
        "MultiCropViews": MultiCropViews(ViewConfig(size=8), n_local=1, local_size=4),
        "Rotation": Rotation(ConvNet(3, (4, 8))).logits_labels,
        "Jigsaw": Jigsaw(ConvNet(3, (4, 8)), num_permutations=2, gap=0, tile_size=4,
                         hidden_dim=4).make_puzzles,
        "RelativePatch": RelativePatch(ConvNet(3, (4, 8)), gap=0, tile_size=4,
                                       hidden_dim=4).make_pairs,
    }


@pytest.mark.parametrize("who", ["SimCLRViews", "ComposedViews", "MultiCropViews", "Rotation",
                                 "Jigsaw", "RelativePatch"])
def test_images_in_0_to_255_as_floats_or_int64_are_one_line_errors(who):
    """They used to give all-white views (every value clamped to 1) without a word, or fail
    deep inside torch for int64."""
    take = _image_takers()[who]
    images = torch.randint(0, 256, (4, 3, 12, 12), generator=gen(40), dtype=torch.uint8)
    images[0, 0, 0, :2] = torch.tensor([0, 255])
    take(images)  # uint8 and [0, 1] floats are what they take
    take(images.float() / 255)
    wrongs = [(images.long(), "torch.int64"), (images.bool(), "torch.bool")]
    if who not in ("Jigsaw", "RelativePatch"):  # tiles take any float range (their tests)
        wrongs.append((images.float(), r"float images in \[0, 255\]"))
    for wrong, expected in wrongs:
        with pytest.raises(SSLKitError, match=expected) as err:
            take(wrong)
        msg = str(err.value)
        assert "\n" not in msg and who in msg and ("/ 255" in msg or "uint8" in msg)


def test_the_range_check_reads_no_device_values():
    """The value check runs on the CPU only: on a GPU it would make every training step wait
    (tests/test_no_host_sync.py). Meta tensors have no values, so any read would raise here;
    the dtype check still runs there."""
    meta = torch.empty(2, 3, 12, 12, device="meta")
    assert SimCLRViews(ViewConfig(size=8))(meta).shape == (2, 3, 8, 8)
    with pytest.raises(SSLKitError, match="torch.int64"):
        SimCLRViews(ViewConfig(size=8))(meta.long())


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_channels_last_images_are_a_one_line_error(channels):
    """(N, H, W, C) used to give views of shape (N, H, size, size) silently."""
    for who, take in _image_takers().items():
        if who in ("Rotation", "Jigsaw", "RelativePatch"):  # not views: they take any C
            continue
        images = torch.rand(2, 12, 12, channels, generator=gen(41))
        with pytest.raises(SSLKitError, match=r"permute\(0, 3, 1, 2\)") as err:
            take(images)
        assert "\n" not in str(err.value) and "channels-last" in str(err.value)
        take(images.permute(0, 3, 1, 2))  # the fix the message gives


@pytest.mark.parametrize("settings,expected", [
    ({"jitter_strength": math.nan}, "jitter_strength must be made of finite numbers"),
    ({"rotate_degrees": math.nan}, "rotate_degrees must be made of finite numbers"),
    ({"rotate_degrees": math.inf}, "rotate_degrees must be made of finite numbers"),
    ({"size": math.nan}, "size must be made of finite numbers"),
    ({"size": 32.5}, "size must be at least 1 pixel, a whole number"),  # gave 33x33 views
    ({"crop_ratio": (0.5, math.inf)}, "crop_ratio must be made of finite numbers"),
    ({"blur_sigma": (0.1, math.inf)}, "blur_sigma must be made of finite numbers"),
    ({"flip_p": "0.5"}, "flip_p must be made of finite numbers"),  # a TypeError in a comparison
    ({"jitter_strength": 3.0}, "at most 2.5"),  # torchvision's hue bound (0.2 * 3 > 0.5)
])
def test_view_settings_that_broke_the_views_silently_are_one_line_errors(settings, expected):
    with pytest.raises(SSLKitError, match=expected) as err:
        ViewConfig(**settings)
    assert "\n" not in str(err.value) and "use e.g." in str(err.value)


def test_the_largest_jitter_strength_works_in_both_pipelines():
    """2.5 is the bound: hue shift 0.2 * 2.5 = 0.5, the most torchvision's ColorJitter takes."""
    cfg = ViewConfig(size=8, jitter_strength=2.5, jitter_p=1.0)
    image = torch.randint(0, 256, (3, 12, 12), generator=gen(42), dtype=torch.uint8)
    jitter = next(t for t in view_transform(cfg).transforms
                  if isinstance(t, v2.RandomApply)).transforms[0]
    assert jitter.hue == (-0.5, 0.5) and jitter.brightness == (0.0, 3.0)  # 0.2 s and 0.8 s
    assert view_transform(cfg)(image).shape == (3, 8, 8)
    views = SimCLRViews(cfg, gen(0))(image[None].expand(16, -1, -1, -1))
    assert views.shape == (16, 3, 8, 8) and torch.isfinite(views).all()
    assert 0 <= views.min() and views.max() <= 1 and views.std() > 0  # jittered, not blank


def test_composed_per_image_views_apply_its_ops():
    """per_image() (the DataLoader path) used to give the full SimCLR pipeline whatever the
    ops; sobel alone is deterministic, so both views are the Sobel image."""
    import pickle

    from sslkit.augment import ComposedViews, sobel

    image = torch.randint(0, 256, (3, 12, 12), generator=gen(43), dtype=torch.uint8)
    per_image = pickle.loads(pickle.dumps(ComposedViews(("sobel",)).per_image()))  # to workers
    first, second = per_image(image)
    expected = sobel(image[None].float() / 255)[0]
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    crop, _ = ComposedViews(("crop",), ViewConfig(size=8)).per_image()(image)
    assert crop.shape == (3, 8, 8)


@pytest.mark.parametrize("who,call", [
    ("SimCLRViews", lambda x: SimCLRViews(ViewConfig())(x)),
    ("image_grid", lambda x: plots.image_grid(x)),
    ("extract_features", lambda x: extract_features(torch.nn.Flatten(), x)),
    ("pixels", lambda x: pixels(x)),
])
@pytest.mark.parametrize("images", [np.zeros((2, 32, 32, 3), np.uint8), [[0.0, 1.0]]],
                         ids=["numpy", "list"])
def test_numpy_or_list_images_are_a_one_line_error(who, call, images):
    """They failed with an AttributeError (a list has no .ndim; NumPy has no .device)."""
    with pytest.raises(SSLKitError, match="must be a torch.Tensor|takes a torch.Tensor") as info:
        call(images)
    assert who in str(info.value) and "torch.as_tensor" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["cifar11", "mnist", "CIFAR10"])
def test_an_unknown_dataset_name_gets_no_preset_silently(name):
    """A typo got SimCLR's CIFAR preset, as did every name the presets do not list."""
    with pytest.raises(SSLKitError, match=f"unknown dataset '{name}'.*cifar10, cifar100") as e:
        view_config_for(name)
    assert "\n" not in str(e.value)
    assert view_config_for("folder") == view_config_for("cifar10")  # own images: CIFAR's


def test_view_settings_as_lists_arrays_or_tensors_are_taken_as_numbers():
    """The finiteness check refused crop_scale=[0.2, 1.0] ("must be made of finite numbers"),
    which the views took before; a review caught it. They are stored as plain tuples and
    numbers, so equal settings compare equal."""
    as_tuple = ViewConfig(crop_scale=(0.2, 1.0), flip_p=0.5, size=32)
    for kwargs in (dict(crop_scale=[0.2, 1.0]), dict(crop_scale=np.array([0.2, 1.0])),
                   dict(flip_p=torch.tensor(0.5)), dict(size=np.int64(32))):
        cfg = ViewConfig(**{**dict(crop_scale=(0.2, 1.0), flip_p=0.5, size=32), **kwargs})
        assert cfg == as_tuple and type(cfg.size) is int and type(cfg.crop_scale) is tuple
