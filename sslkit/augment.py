"""View generators: the SimCLR augmentation pipeline, batched and per image.

Two forms of the same pipeline (random resized crop, horizontal flip, colour jitter, random
grayscale, Gaussian blur, solarization):

* ``SimCLRViews`` works on a whole batch (N, C, H, W) at once on any device, drawing fresh
  random parameters for every sample. Training uses it: on 32x32 images it is far faster than
  calling a per-image transform N times, and on a GPU the data never leaves the device (the
  dataset sits there as uint8, 4x smaller than floats; each batch is converted when it is
  drawn). Parameters are drawn on the CPU from a seeded generator, so a run is reproducible
  on any device.
* ``view_transform`` / ``PerImageViews`` are the torchvision pipeline for one image, for
  looking at views of a photo and for the DataLoader path (views made in worker processes).

The two draw their parameters from the same distributions; tests/test_augment_stats.py
compares them. One difference is deliberate: torchvision applies the four jitter operations
in a random order, the batched form in the fixed order brightness, contrast, saturation, hue.

Views are float32 even where training runs the network under bfloat16 autocast (CUDA): the
resize, the blur and the Sobel filter are matmuls and convolutions, which autocast would run
in bfloat16 (off by up to 17/255 per pixel), so they run with autocast off.

Both take the settings of a ``ViewConfig``; ``view_config_for`` holds the per-dataset presets.

The contract helper ``rotate_batch`` (rotation prediction) lives here too.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from sslkit.data import DATASETS
from sslkit.errors import SSLKitError
from sslkit.precision import in_float32
from sslkit.transfer import to_device
from sslkit.unit_images import check_channels_first, check_tensor, step_floats

LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 weights as torchvision rounds them (sum 0.9999)
MAX_JITTER = 2.5  # torchvision's ColorJitter takes hue shifts up to 0.5 = 0.2 * 2.5


@dataclass(frozen=True)
class ViewConfig:
    size: int = 32  # output side in pixels
    crop_scale: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h
    flip_p: float = 0.5  # probability of a horizontal flip
    rotate_degrees: float = 0.0  # crops rotated by an angle ~ U(-d, d) (0 in SimCLR)
    jitter_p: float = 0.8  # probability of colour jitter
    jitter_strength: float = 0.5  # s in [0, 2.5]: brightness, contrast, saturation 0.8s; hue 0.2s
    gray_p: float = 0.2  # probability of grayscale (colour images only)
    blur_p: float = 0.0  # probability of Gaussian blur (SimCLR drops it on CIFAR)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma in pixels at 224 px, scaled to size
    solarize_p: float = 0.0  # probability of solarization, x -> 1 - x where x >= 0.5 (BYOL)

    def __post_init__(self):
        """One-line errors for settings that would otherwise give silently odd views."""
        def bad(what: str, fix: str) -> SSLKitError:
            return SSLKitError(f"ViewConfig: {what}: {fix}")

        for field in fields(self):  # NaN passes every comparison below; inf breaks the draws
            value = getattr(self, field.name)
            if hasattr(value, "tolist"):  # a NumPy or torch array or number
                value = value.tolist()
            if isinstance(value, list):
                value = tuple(value)
            object.__setattr__(self, field.name, value)  # frozen: set once, here
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
                    raise bad(f"{field.name} must be made of finite numbers, got {value!r}",
                              f"use e.g. {field.name}={field.default!r}")
        if not isinstance(self.size, Integral) or self.size < 1:
            raise bad(f"size must be at least 1 pixel, a whole number (got {self.size!r})",
                      "use e.g. size=32")
        (s_lo, s_hi), (r_lo, r_hi) = self.crop_scale, self.crop_ratio
        if not 0 < s_lo <= s_hi <= 1:
            raise bad(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got "
                      f"{self.crop_scale}", "use e.g. crop_scale=(0.08, 1.0)")
        if not 0 < r_lo <= r_hi:
            raise bad(f"crop_ratio must be (low, high) with 0 < low <= high, got "
                      f"{self.crop_ratio}", "use e.g. crop_ratio=(3 / 4, 4 / 3)")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(f"{name} is a probability, got {getattr(self, name)}",
                          f"use a value in [0, 1], e.g. {name}=0.5")
        if self.jitter_strength < 0 or self.rotate_degrees < 0:
            raise bad(f"jitter_strength and rotate_degrees must be >= 0 (got "
                      f"{self.jitter_strength} and {self.rotate_degrees})", "use 0 to switch off")
        if self.jitter_strength > MAX_JITTER:  # the hue shift 0.2 s must stay within 0.5
            raise bad(f"jitter_strength must be at most {MAX_JITTER}, so that its hue shift "
                      f"0.2 * strength stays within torchvision's 0.5 (got {self.jitter_strength})",
                      "use e.g. jitter_strength=1.0")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise bad(f"blur_sigma must be (low, high) with 0 < low <= high, got "
                      f"{self.blur_sigma}", "use e.g. blur_sigma=(0.1, 2.0)")


def view_config_for(dataset: str, size: int | None = None) -> ViewConfig:
    """Per-dataset presets (SimCLR's CIFAR settings; milder crops and no flip for digits). A
    name that is none of sslkit.data.DATASETS is a one-line error (a typo would silently get
    the CIFAR preset)."""
    if dataset not in DATASETS:
        raise SSLKitError(f"unknown dataset {dataset!r} for the views' preset: use one of "
                          f"{', '.join(DATASETS)} (folder for your own images)")
    if dataset in ("shifted_digits", "digits"):
        # Digits are not mirror-symmetric, so no flip; small rotations and crops that keep most
        # of the digit; brightness/contrast jitter (saturation and hue do not apply to grey).
        return ViewConfig(size=size or 32, crop_scale=(0.4, 1.0), flip_p=0.0, rotate_degrees=20.0,
                          jitter_strength=0.8)
    if dataset == "stl10":
        return ViewConfig(size=size or 96, blur_p=0.5, jitter_strength=1.0)
    return ViewConfig(size=size or 32)


# ---------------------------------------------------------------------------------------------
# Batched pipeline: each stage takes (N, C, H, W) floats in [0, 1] and per-sample parameters.


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def crop_params(n: int, cfg: ViewConfig, generator=None,
                image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Random resized crop boxes as fractions of the image: (n, 4) = (w, h, cx, cy).

    torchvision's RandomResizedCrop, per sample: area ~ U(crop_scale) of the image's area, log
    aspect ratio (w/h in pixels) ~ U(log crop_ratio); a box that does not fit is redrawn up to
    10 times, then the central crop is used: the whole image, or, if the image's own aspect
    ratio lies outside crop_ratio, the largest central box with the nearest allowed ratio.

    image_size (H, W) makes the draw torchvision's exactly: sides rounded to whole pixels (a
    side of 0 does not fit) and the offset a whole number of pixels, uniform over the positions
    that fit. Without it the image is a continuous unit square: nothing is rounded.
    """
    pixels = image_size is not None
    height, width = (int(image_size[0]), int(image_size[1])) if pixels else (1, 1)
    snap = torch.round if pixels else (lambda t: t)  # round half to even, as Python's round
    box = torch.zeros(n, 4, dtype=torch.float64)  # (w, h, left, top) in pixels until the end
    todo = torch.ones(n, dtype=torch.bool)
    log_r = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    # offsets uniform over [0, W - w] (continuous) or {0, ..., W - w}: W - w + 1 whole pixels
    positions = 1 if pixels else 0
    for _ in range(10):
        area = height * width * _uniform(n, *cfg.crop_scale, generator).double()
        ratio = torch.exp(_uniform(n, *log_r, generator).double())
        w, h = snap(torch.sqrt(area * ratio)), snap(torch.sqrt(area / ratio))
        ok = todo & (w > 0) & (w <= width) & (h > 0) & (h <= height)
        left = torch.rand(n, generator=generator).double() * (width - w + positions)
        top = torch.rand(n, generator=generator).double() * (height - h + positions)
        if pixels:
            left = left.floor().clamp_max(width - w)
            top = top.floor().clamp_max(height - h)
        box[ok] = torch.stack([w, h, left, top], dim=1)[ok]
        todo &= ~ok
    # The central fallback, as torchvision computes it.
    lo, hi = min(cfg.crop_ratio), max(cfg.crop_ratio)
    w, h = float(width), float(height)
    if width / height < lo:
        h = float(snap(torch.tensor(w / lo, dtype=torch.float64)))
    elif width / height > hi:
        w = float(snap(torch.tensor(h * hi, dtype=torch.float64)))
    left, top = ((width - w) // 2, (height - h) // 2) if pixels else ((1 - w) / 2, (1 - h) / 2)
    box[todo] = torch.tensor([w, h, left, top], dtype=torch.float64)
    w, h, left, top = box.unbind(dim=1)
    return torch.stack([w / width, h / height, (left + w / 2) / width, (top + h / 2) / height],
                       dim=1).float()


def _resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, size: int
                    ) -> torch.Tensor:
    """Rows of torchvision's antialiased bilinear resize of pixels [start, start + length) of
    one axis (in_size pixels) to size pixels, per sample: start, length (N,) -> (N, size, in_size).

    PIL's algorithm, which torch's antialiased interpolate follows: output pixel i is centred at
    c = start + (i + 0.5) * scale in the input, scale = length / size, and weighs input pixel j
    by the triangle max(0, 1 - |j + 0.5 - c| / support), support = max(scale, 1) (plain
    bilinear when enlarging, a wider filter when shrinking), over the crop's pixels only,
    normalised to sum 1.
    """
    scale = (length / size)[:, None, None]  # (N, 1, 1)
    i = torch.arange(size, dtype=start.dtype, device=start.device)[None, :, None]  # (1, S, 1)
    j = torch.arange(in_size, dtype=start.dtype, device=start.device)[None, None, :]  # (1, 1, I)
    first = start[:, None, None]
    centre = first + (i + 0.5) * scale  # (N, S, 1)
    weight = (1 - (j + 0.5 - centre).abs() / scale.clamp_min(1)).clamp_min(0)  # (N, S, I)
    weight = weight * ((j + 1 > first) & (j < first + length[:, None, None]))  # in the crop
    return weight / weight.sum(dim=2, keepdim=True)


@in_float32
def resized_crop_flip(
    x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int,
    angle: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop each image to its box, mirror where flip is True, resize to size, then turn the
    view by angle about its centre: torchvision's resized_crop (bilinear, antialias=True),
    horizontal_flip and rotate (bilinear, black fill), in that order.

    x (N, C, H, W); box (N, 4) from crop_params, on the CPU; flip (N,) bool; angle (N,) radians
    or None -> (N, C, size, size).

    The resize is separable: view = Ry @ x @ Rx^T with per-sample weight matrices Ry (N, S, H)
    and Rx (N, S, W) from _resize_weights (Rx's rows reversed where flipped), one batched
    matmul per axis. Box edges within 1e-3 px of a whole pixel are taken as that pixel, so the
    whole-pixel boxes crop_params draws crop exactly as torchvision does. The turn samples the
    view at R(angle) o (o the output pixel in [-1, 1]^2) with zero padding and multiplies by the
    same sampling of a view of ones, as torchvision's rotate fills with black: the corners the
    turn brings in are 0 and a pixel at the view's edge fades by that mask.
    """
    n, c, height, width = x.shape
    if n == 0:  # affine_grid refuses an empty batch
        return x.new_empty(0, c, size, size)

    def pixels(centre: torch.Tensor, side: torch.Tensor, extent: int):
        """(first pixel, length) of a box axis in pixels, snapped to whole pixels within 1e-3."""
        start, length = (centre - side / 2) * extent, side * extent
        snap = torch.round
        start = torch.where((start - snap(start)).abs() < 1e-3, snap(start), start)
        length = torch.where((length - snap(length)).abs() < 1e-3, snap(length), length)
        return start, length

    w, h, cx, cy = box.cpu().double().unbind(dim=1)
    left, cols = pixels(cx, w, width)
    top, rows = pixels(cy, h, height)
    params = to_device(torch.stack([left, cols, top, rows]).to(x.dtype), x.device)  # (4, N)
    rx = _resize_weights(params[0], params[1], width, size)  # (N, S, W)
    ry = _resize_weights(params[2], params[3], height, size)  # (N, S, H)
    rx = torch.where(to_device(flip, x.device).view(n, 1, 1), rx.flip(1), rx)  # mirror columns
    views = ry[:, None] @ x @ rx.transpose(1, 2)[:, None]  # (N, 1, S, H) @ (N, C, H, W) @ ...
    if angle is None:
        return views
    a = to_device(angle.to(x.dtype), x.device)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], dim=1),
                         torch.stack([sin, cos, zero], dim=1)], dim=1)  # (N, 2, 3): o -> R o
    grid = F.affine_grid(theta, [n, c + 1, size, size], align_corners=False)
    with_ones = torch.cat([views, torch.ones_like(views[:, :1])], dim=1)  # (N, C + 1, S, S)
    turned = F.grid_sample(with_ones, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return turned[:, :c] * turned[:, c:]  # the view times the mask (black corners)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luminance."""
    weights = to_device(torch.tensor(LUMA, dtype=x.dtype), x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hr = ((g - b) / safe) % 6
    hg = (b - r) / safe + 2
    hb = (r - g) / safe + 4
    hue = torch.where(maxc == r, hr, torch.where(maxc == g, hg, hb)) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    sat = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))  # 0 where maxc = 0
    return torch.stack([hue, sat, maxc], dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    hue, sat, val = x.unbind(dim=1)
    # Each channel n in (5, 3, 1) -> v - v s max(0, min(k, 4 - k, 1)), k = (n + 6h) mod 6.
    channels = []
    for n in (5, 3, 1):
        k = (n + 6 * hue) % 6
        channels.append(val - val * sat * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels, dim=1)


def jitter_params(n: int, cfg: ViewConfig, generator=None) -> torch.Tensor:
    """(n, 4) colour-jitter factors (brightness, contrast, saturation, hue shift), as
    torchvision's ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) draws them: the first three
    ~ U(max(0, 1 - 0.8s), 1 + 0.8s), the hue shift ~ U(-0.2s, 0.2s); with probability
    1 - jitter_p a sample gets the identity (1, 1, 1, 0)."""
    s = cfg.jitter_strength
    bcs = _uniform(3 * n, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, generator).view(3, n)
    hue = _uniform(n, -0.2 * s, 0.2 * s, generator)
    factors = torch.stack([*bcs, hue], dim=1)  # (n, 4)
    off = torch.rand(n, generator=generator) >= cfg.jitter_p
    factors[off] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # identity jitter
    return factors


def solarize(x: torch.Tensor, on: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """x (N, C, H, W) in [0, 1]; on (N,) bool: where on, every value >= threshold becomes 1 - x
    (torchvision's solarize)."""
    flipped = torch.where(x >= threshold, 1 - x, x)
    return torch.where(to_device(on, x.device).view(-1, 1, 1, 1), flipped, x)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with per-sample factors, in that order.

    x (N, C, H, W) in [0, 1]; factors (N, 4) = (brightness, contrast, saturation, hue shift).
    Brightness scales; contrast blends with the image's mean luminance; saturation blends with
    the grayscale image; hue rotates H in HSV. Saturation and hue are skipped for C = 1.
    (torchvision applies the four in a random order; a fixed order keeps this batched.)
    """
    f = to_device(factors.to(x.dtype), x.device).view(-1, 4, 1, 1, 1).unbind(dim=1)  # 4 x (N,1,1,1)
    x = (x * f[0]).clamp(0, 1)
    gray = to_gray(x) if x.shape[1] == 3 else x
    x = (f[1] * x + (1 - f[1]) * gray.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
    if x.shape[1] == 3:
        x = (f[2] * x + (1 - f[2]) * to_gray(x)).clamp(0, 1)
        hsv = _rgb_to_hsv(x)
        hsv = torch.stack([(hsv[:, 0] + f[3][:, 0]) % 1, hsv[:, 1], hsv[:, 2]], dim=1)
        x = _hsv_to_rgb(hsv).clamp(0, 1)
    return x


def blur_settings(cfg: ViewConfig) -> tuple[tuple[float, float], int]:
    """The blur of cfg at its view size: ((sigma_low, sigma_high) in pixels, kernel size).

    blur_sigma is given for 224 px images and scaled to cfg.size; the kernel reaches 2
    sigma_high (at least 1 pixel) each way, and at most size - 1 pixels (reflect padding needs
    that), so a 1 px view is left as it is. Both pipelines use these settings.
    """
    scale = cfg.size / 224  # SimCLR's sigma range is given for 224 px images
    sigma = (cfg.blur_sigma[0] * scale, cfg.blur_sigma[1] * scale)
    radius = min(max(1, math.ceil(2 * sigma[1])), cfg.size - 1)
    return sigma, 2 * radius + 1


@in_float32
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int | None = None
                  ) -> torch.Tensor:
    """Blur each image with its own sigma (pixels): x (N, C, H, W), sigma (N,), sigma 0 = none.

    Separable sampled Gaussian, reflect padding, as torchvision's gaussian_blur: kernel_size
    (odd) for every image, as torchvision's GaussianBlur uses one size for every sigma it
    draws; None: each image's kernel reaches max(1, ceil(2 sigma)) pixels each way. A kernel
    never reaches further than H - 1 or W - 1 pixels (the reflect padding's limit), and an
    image's result never depends on the other images' sigmas. One grouped convolution per
    axis blurs all N*C planes at once.
    """
    if x.ndim != 4 or sigma.shape != (len(x),):
        raise SSLKitError(f"gaussian_blur needs images x (N, C, H, W) and one sigma per image, "
                          f"sigma (N,), got {tuple(x.shape)} and {tuple(sigma.shape)}: pass e.g. "
                          "torch.full((len(x),), 1.0)")
    n, c, h, w = x.shape
    s = sigma.cpu().double().clamp_min(1e-3)  # (N,) on the CPU, where the kernel is built
    if kernel_size is None:
        reach = torch.ceil(2 * s).clamp_min(1)  # (N,) each image's own radius
    else:
        reach = torch.full((n,), float(kernel_size // 2), dtype=torch.float64)
    radius = min(int(reach.max()) if n else 0, h - 1, w - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)  # (k,)
    kernel = torch.exp(-0.5 * (offsets / s[:, None]) ** 2)  # (N, k)
    kernel = kernel * (offsets.abs() <= reach[:, None])  # zero beyond each image's radius
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = to_device(kernel.to(x.dtype).repeat_interleave(c, dim=0), x.device)  # (N*C, k)
    planes = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernel.view(n * c, 1, 1, -1), groups=n * c)  # along width
    planes = F.conv2d(planes, kernel.view(n * c, 1, -1, 1), groups=n * c)  # along height
    return planes.view(n, c, h, w)


def view_input(x: torch.Tensor, who: str) -> torch.Tensor:
    """The views' input check: x (N, C, H, W), uint8 in [0, 255] or floats in [0, 1] ->
    float32 in [0, 1], or a one-line error (a missing batch axis, channels-last images, a dtype
    other than uint8 or floating; float values outside [0, 1] on the CPU only: reading them on a
    GPU would make every training step wait for it)."""
    check_tensor(x, who)
    if x.ndim != 4:
        raise SSLKitError(f"{who} needs a batch of shape (N, C, H, W), got {tuple(x.shape)}: "
                          "add a batch axis with x[None]")
    check_channels_first(x, who)
    return step_floats(x, who)


class SimCLRViews(nn.Module):
    """Random SimCLR views of a batch, new parameters for every sample.

    forward(x) with x (N, C, H, W), uint8 in [0, 255] or float in [0, 1], on any device
    -> (N, C, size, size) float32 in [0, 1] (other input: see ``view_input``).
    ``two_views(x)`` -> (v1, v2), two independent draws.
    A ``torch.Generator`` (on the CPU) makes the draws reproducible.
    """

    def __init__(self, cfg: ViewConfig = ViewConfig(), generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = view_input(x, "SimCLRViews")  # (N, C, H, W) float32
        cfg, g, n = self.cfg, self.generator, x.shape[0]
        box = crop_params(n, cfg, g, image_size=x.shape[-2:])
        flip = torch.rand(n, generator=g) < cfg.flip_p
        angle = None
        if cfg.rotate_degrees:
            angle = _uniform(n, -cfg.rotate_degrees, cfg.rotate_degrees, g) * math.pi / 180
        x = resized_crop_flip(x, box, flip, cfg.size, angle)

        x = color_jitter(x, jitter_params(n, cfg, g))

        if x.shape[1] == 3:
            gray = to_device(torch.rand(n, generator=g) < cfg.gray_p, x.device).view(n, 1, 1, 1)
            x = torch.where(gray, to_gray(x).expand_as(x), x)

        (sigma_lo, sigma_hi), kernel = blur_settings(cfg)
        sigma = _uniform(n, sigma_lo, sigma_hi, g)
        sigma[torch.rand(n, generator=g) >= cfg.blur_p] = 0.0
        if bool((sigma > 0).any()):
            blurred = gaussian_blur(x, sigma, kernel)
            x = torch.where(to_device(sigma > 0, x.device).view(n, 1, 1, 1), blurred, x)
        if cfg.solarize_p > 0:
            x = solarize(x, torch.rand(n, generator=g) < cfg.solarize_p)
        return x

    def two_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x), self(x)

    def per_image(self) -> PerImageViews:
        """The same two views for one image with torchvision (the DataLoader path)."""
        return PerImageViews([self.cfg, self.cfg])


def view_transform(cfg: ViewConfig = ViewConfig()) -> v2.Compose:
    """The same pipeline for ONE image with torchvision: PIL image or (C, H, W) tensor in,
    float32 tensor (C, size, size) in [0, 1] out."""
    s = cfg.jitter_strength
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(cfg.size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
        v2.RandomRotation(cfg.rotate_degrees, interpolation=v2.InterpolationMode.BILINEAR),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.gray_p),
    ]
    if cfg.blur_p > 0:
        sigma, kernel = blur_settings(cfg)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma)], p=cfg.blur_p))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if cfg.solarize_p > 0:
        steps.append(v2.RandomSolarize(0.5, p=cfg.solarize_p))
    return v2.Compose(steps)


class PerImageViews:
    """One image (C, H, W) uint8 -> a tuple of views, one per config, each made by the
    torchvision pipeline. Picklable, so DataLoader worker processes can run it."""

    def __init__(self, configs: list[ViewConfig]):
        self.configs = list(configs)
        self.transforms = [view_transform(c) for c in self.configs]

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t(image) for t in self.transforms)


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, C, H, W) -> (x_rot (4N, C, H, W), labels (4N,)): the batch rotated by k*90°, k=0..3."""
    if x.ndim != 4:
        raise SSLKitError(
            f"rotate_batch needs (N, C, H, W), got {tuple(x.shape)}: add a batch axis with x[None]"
        )
    if x.shape[2] != x.shape[3]:
        raise SSLKitError(
            f"rotate_batch needs square images (a quarter turn swaps H and W), got "
            f"{tuple(x.shape)}: crop or resize them to H = W first"
        )
    x_rot = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return x_rot, labels


# ---------------------------------------------------------------------------------------------
# Tiles: the jigsaw puzzle (Noroozi & Favaro, 2016) and relative patch position (Doersch et
# al., 2015). Tiles of a grid x grid split are numbered row by row: tile t sits at row t // grid,
# column t % grid.


def split_tiles(x: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """x (N, C, H, W) with H, W divisible by grid -> tiles (N, grid*grid, C, H/grid, W/grid)."""
    if isinstance(grid, bool) or not isinstance(grid, Integral) or grid < 1:
        raise SSLKitError(f"split_tiles needs grid, the tiles per side, to be a whole number of at "
                          f"least 1 (got {grid!r}): use e.g. grid=3")
    if x.ndim != 4:
        raise SSLKitError(f"split_tiles needs images (N, C, H, W), got {tuple(x.shape)}: add a "
                          "batch axis with x[None]")
    n, c, h, w = x.shape
    if h % grid or w % grid:
        raise SSLKitError(f"split_tiles needs H and W divisible by grid={grid}, got "
                          f"{tuple(x.shape)}: crop the images first (e.g. to 30x30 for grid 3)")
    th, tw = h // grid, w // grid
    tiles = x.reshape(n, c, grid, th, grid, tw)  # (N, C, row, th, col, tw)
    return tiles.permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, th, tw)


def merge_tiles(tiles: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """The inverse of split_tiles: (N, grid*grid, C, th, tw) -> (N, C, grid*th, grid*tw)."""
    if tiles.ndim != 5 or tiles.shape[1] != grid * grid:
        raise SSLKitError(f"merge_tiles needs tiles (N, grid*grid, C, th, tw) = (N, {grid * grid}"
                          f", C, th, tw) for grid={grid}, got {tuple(tiles.shape)}: pass what "
                          "split_tiles or jigsaw_tiles returned, with the same grid")
    n, _, c, th, tw = tiles.shape
    x = tiles.reshape(n, grid, grid, c, th, tw)  # (N, row, col, C, th, tw)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (N, C, row, th, col, tw)
    return x.reshape(n, c, grid * th, grid * tw)


def jigsaw_tiles(x: torch.Tensor, perms: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """The shuffled tiles of each image: x (N, C, H, W), perms (N, grid*grid) int
    -> (N, grid*grid, C, H/grid, W/grid) with out[n, i] = tile perms[n, i] of image n."""
    tiles = split_tiles(x, grid)  # (N, T, C, th, tw)
    t = grid * grid
    if perms.shape != (len(x), t) or perms.is_floating_point() or perms.dtype == torch.bool:
        raise SSLKitError(f"jigsaw_tiles needs integer perms (N, grid*grid) = ({len(x)}, {t}), "
                          f"one order of the tiles per image, got {perms.dtype} "
                          f"{tuple(perms.shape)}: pass e.g. hamming_permutations(P, grid)[labels]")
    # Values are read on the CPU only: on a GPU (Jigsaw's training step) it would make the host
    # wait for the device (tests/test_no_host_sync.py).
    if perms.device.type == "cpu":
        wrong = (perms.sort(dim=1).values != torch.arange(t)).any(dim=1)  # (N,)
        if bool(wrong.any()):
            raise SSLKitError(f"jigsaw_tiles: every row of perms must be an order of the tiles "
                              f"0..{t - 1}, each once, got {perms[wrong][0].tolist()}: pass rows "
                              "of hamming_permutations(P, grid)")
    idx = to_device(perms.long(), x.device)[:, :, None, None, None].expand_as(tiles)
    return tiles.gather(1, idx)


@functools.lru_cache(maxsize=2)
def _all_permutations(t: int) -> torch.Tensor:
    """Every order of t items, (t!, t) int8, in lexicographic order (cached: 9! rows take a
    second to build)."""
    from itertools import permutations

    return torch.tensor(list(permutations(range(t))), dtype=torch.int8)


def hamming_permutations(count: int, grid: int = 3, seed: int = 0) -> torch.Tensor:
    """count permutations of grid*grid tiles chosen for a large Hamming distance -> (count, T).

    Greedy max-min selection: start from a random permutation; then repeatedly add the
    permutation whose smallest Hamming distance (number of positions that differ) to those
    already chosen is largest. (Noroozi & Favaro, 2016, add the one whose summed distance is
    largest; max-min guards the minimum distance, which is what makes two classes hard to tell
    apart.) Candidates are visited in a seeded random
    order and ties go to the first, so a seed always gives the same set.
    """
    t = grid * grid
    if grid > 3:
        raise SSLKitError(f"hamming_permutations enumerates all (grid*grid)! orders: grid={grid} "
                          "is too large, use grid <= 3")
    if not 1 <= count <= math.factorial(t):
        raise SSLKitError(f"count must be between 1 and {t}! = {math.factorial(t)}, got {count}")
    g = torch.Generator().manual_seed(seed)
    every = _all_permutations(t)  # (T!, T)
    every = every[torch.randperm(len(every), generator=g)]
    chosen = [0]
    min_dist = (every != every[0]).sum(dim=1)  # (T!,) distance to the nearest chosen
    for _ in range(count - 1):
        best = int(min_dist.argmax())  # the first maximum in the shuffled order
        chosen.append(best)
        min_dist = torch.minimum(min_dist, (every != every[best]).sum(dim=1))
    return every[chosen].long()


def min_hamming_distance(perms: torch.Tensor) -> int:
    """The smallest Hamming distance between two different rows of perms (P, T), P >= 2."""
    dist = (perms[:, None, :] != perms[None, :, :]).sum(dim=2)  # (P, P)
    dist.fill_diagonal_(perms.shape[1] + 1)
    return int(dist.min())


def jitter_tiles(tiles: torch.Tensor, size: int, generator: torch.Generator | None = None):
    """A random size x size crop of every tile, its own offset each: (N, T, C, th, tw) ->
    (N, T, C, size, size). The gaps this leaves between neighbouring tiles stop a network from
    matching edges that continue from tile to tile (a shortcut both tile tasks warn about)."""
    if tiles.ndim != 5:
        raise SSLKitError(f"jitter_tiles needs tiles (N, T, C, th, tw), got "
                          f"{tuple(tiles.shape)}: for images (N, C, H, W) pass x[:, None]")
    n, t, c, th, tw = tiles.shape
    if isinstance(size, bool) or not isinstance(size, Integral) or not 1 <= size <= min(th, tw):
        raise SSLKitError(f"jitter_tiles crops each {th}x{tw} tile to size x size, so size must be "
                          f"a whole number from 1 to {min(th, tw)} (got {size!r}): use a smaller "
                          "size or larger tiles")
    oy = to_device(torch.randint(0, th - size + 1, (n, t), generator=generator), tiles.device)
    ox = to_device(torch.randint(0, tw - size + 1, (n, t), generator=generator), tiles.device)
    steps = torch.arange(size, device=tiles.device)
    rows = (oy[..., None] + steps)[:, :, None, :, None].expand(n, t, c, size, tw)
    out = tiles.gather(3, rows)  # (N, T, C, size, tw)
    cols = (ox[..., None] + steps)[:, :, None, None, :].expand(n, t, c, size, size)
    return out.gather(4, cols)  # (N, T, C, size, size)


# The 8 neighbours of the centre tile (4) of a 3x3 grid, in reading order: label k <-> tile
# NEIGHBOURS[k], whose offset from the centre is (row, col) = divmod(NEIGHBOURS[k], 3) - (1, 1).
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)


def patch_pairs(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative patch position pairs: x (N, C, H, W) with H, W divisible by 3, labels (N,) in
    0..7 -> (centre (N, C, H/3, W/3), neighbour (N, C, H/3, W/3)): the middle tile of the 3x3
    grid and its neighbour NEIGHBOURS[label]."""
    tiles = split_tiles(x, 3)  # (N, 9, C, th, tw)
    if labels.shape != (len(x),) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise SSLKitError(f"patch_pairs needs integer labels (N,) = ({len(x)},) in 0..7, one per "
                          f"image, got {labels.dtype} {tuple(labels.shape)}: pass e.g. "
                          f"torch.randint(8, ({len(x)},))")
    # Values are read on the CPU only: on a GPU (RelativePatch's training step) it would make
    # the host wait for the device (tests/test_no_host_sync.py).
    if labels.device.type == "cpu":
        wrong = (labels < 0) | (labels >= len(NEIGHBOURS))  # (N,)
        if bool(wrong.any()):
            raise SSLKitError(f"patch_pairs: labels must be neighbour positions 0..7, got "
                              f"{labels[wrong][0].item()}: count the 8 neighbours of the centre "
                              "tile in reading order")
    neighbours = to_device(torch.tensor(NEIGHBOURS), x.device)  # (8,)
    which = neighbours[to_device(labels.long(), x.device)]  # (N,)
    rows = torch.arange(len(x), device=x.device)
    return tiles[:, 4], tiles[rows, which]


# ---------------------------------------------------------------------------------------------
# Single transformations for SimCLR's study of augmentations (Chen et al., 2020, Figure 5):
# each op takes (N, C, H, W) floats in [0, 1] and a generator and returns the same shape, in
# [0, 1]; ``ComposedViews`` applies a chosen sequence of them to make the two views.

AUGMENTATION_OPS = ("crop", "cutout", "colour", "sobel", "noise", "blur", "rotate")


def cutout(x: torch.Tensor, corner: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Zero one square per image: x (N, C, H, W); corner (N, 2) = (top, left) pixel, side (N,)
    pixels -> x with x[n, :, top:top+side, left:left+side] = 0 (the square is clipped to the
    image)."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device)[None, :, None]  # (1, H, 1)
    cols = torch.arange(w, device=x.device)[None, None, :]  # (1, 1, W)
    top, left = to_device(corner.long(), x.device).unbind(dim=1)  # (N,) each
    side = to_device(side.long(), x.device)[:, None, None]  # (N, 1, 1)
    inside = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side)
              & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side))  # (N, H, W)
    return x.masked_fill(inside[:, None], 0.0)


SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))  # d/dx; its transpose is d/dy


@in_float32
def sobel(x: torch.Tensor) -> torch.Tensor:
    """Edge magnitude of the luminance, in every channel: (N, C, H, W) -> (N, C, H, W) in [0, 1].

    g = sqrt(gx^2 + gy^2) with the 3x3 Sobel kernels (replicate padding, so a constant image
    gives 0), divided by 4 sqrt(2), the largest value an image in [0, 1] can reach. uint8
    images are divided by 255 first.
    """
    if x.ndim != 4:
        raise SSLKitError(f"sobel needs images (N, C, H, W), got {tuple(x.shape)}: add a batch "
                          "axis with x[None]")
    x = step_floats(x, "sobel")
    gray = to_gray(x) if x.shape[1] == 3 else x.mean(dim=1, keepdim=True)  # (N, 1, H, W)
    kx = to_device(torch.tensor(SOBEL_X, dtype=x.dtype), x.device)  # (3, 3)
    kernels = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)  # (N, 2, H, W)
    magnitude = grad.pow(2).sum(dim=1, keepdim=True).sqrt() / (4 * math.sqrt(2))  # (N, 1, H, W)
    return magnitude.clamp(0, 1).expand_as(x)


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None):
    """x + std * eps, eps ~ N(0, 1) per pixel (drawn on the CPU), clipped to [0, 1]."""
    eps = to_device(torch.randn(x.shape, generator=generator).to(x.dtype), x.device)
    return (x + std * eps).clamp(0, 1)


def random_quarter_turns(x: torch.Tensor, generator: torch.Generator | None = None):
    """Rotate each square image by 90, 180 or 270 degrees, drawn uniformly (SimCLR's 'rotate').
    x (N, C, S, S) -> (x_rot (N, C, S, S), k (N,) in 1..3 quarter turns)."""
    k = torch.randint(1, 4, (x.shape[0],), generator=generator)
    turned = torch.stack([torch.rot90(x, t, dims=(2, 3)) for t in range(4)])  # (4, N, C, S, S)
    rows = torch.arange(x.shape[0])
    return turned[to_device(k, x.device), to_device(rows, x.device)], k


class ComposedViews(nn.Module):
    """Views made by applying ``ops`` (names from AUGMENTATION_OPS) in the given order.

    crop: random resized crop (+ flip) with cfg's scale, ratio and flip_p; cutout: a black
    square of side U{S/4..S/2}; colour: colour jitter with cfg's strength and p (+ random
    grayscale for colour images); sobel: edge magnitude; noise: Gaussian noise of std
    ``noise_std``; blur: Gaussian blur with sigma ~ U(cfg.blur_sigma) pixels at the image's own
    resolution; rotate: 90, 180 or 270 degrees. forward(x) with x (N, C, H, W), uint8 or [0, 1]
    -> (N, C, cfg.size, cfg.size) if crop is used, else (N, C, H, W), float32 in [0, 1].
    """

    def __init__(self, ops: tuple[str, ...], cfg: ViewConfig = ViewConfig(),
                 generator: torch.Generator | None = None, noise_std: float = 0.1):
        super().__init__()
        unknown = [op for op in ops if op not in AUGMENTATION_OPS]
        if unknown:
            raise SSLKitError(f"unknown augmentation {unknown[0]!r}: use one of "
                              f"{', '.join(AUGMENTATION_OPS)}")
        self.ops, self.cfg, self.generator, self.noise_std = tuple(ops), cfg, generator, noise_std

    def apply(self, op: str, x: torch.Tensor) -> torch.Tensor:
        """One op on a batch x (N, C, H, W) in [0, 1] with fresh random parameters per image."""
        cfg, g, n = self.cfg, self.generator, x.shape[0]
        if op == "crop":
            flip = torch.rand(n, generator=g) < cfg.flip_p
            return resized_crop_flip(x, crop_params(n, cfg, g, x.shape[-2:]), flip, cfg.size)
        if op == "cutout":
            size = x.shape[-1]
            side = torch.randint(size // 4, size // 2 + 1, (n,), generator=g)
            corner = (torch.rand(n, 2, generator=g) * (size - side + 1)[:, None]).floor()
            return cutout(x, corner, side)
        if op == "colour":
            x = color_jitter(x, jitter_params(n, cfg, g))
            if x.shape[1] == 3:
                gray = to_device(torch.rand(n, generator=g) < cfg.gray_p, x.device).view(n, 1, 1, 1)
                x = torch.where(gray, to_gray(x).expand_as(x), x)
            return x
        if op == "sobel":
            return sobel(x)
        if op == "noise":
            return gaussian_noise(x, self.noise_std, g)
        if op == "blur":
            return gaussian_blur(x, _uniform(n, *cfg.blur_sigma, g))
        if x.shape[-2] != x.shape[-1]:  # rotate
            raise SSLKitError(f"ComposedViews' rotate needs square images (a quarter turn swaps "
                              f"H and W), got {tuple(x.shape)}: put 'crop' before 'rotate' or "
                              "crop the images to H = W first")
        return random_quarter_turns(x, g)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = view_input(x, "ComposedViews")  # (N, C, H, W) float32
        for op in self.ops:
            x = self.apply(op, x)
        return x

    def two_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x), self(x)

    def per_image(self) -> ComposedPerImage:
        """The same two views for one image (the DataLoader path): these ops applied to a batch
        of one, as there is no torchvision form of sobel, noise or the quarter turns."""
        return ComposedPerImage(self.ops, self.cfg, self.noise_std)


class ComposedPerImage:
    """One image (C, H, W) uint8 or [0, 1] floats -> two views made by ComposedViews' ops on a
    batch of one. Picklable, so DataLoader worker processes can run it; it draws from torch's
    global generator, which the DataLoader seeds differently in every worker."""

    def __init__(self, ops: tuple[str, ...], cfg: ViewConfig, noise_std: float):
        self.views = ComposedViews(ops, cfg, None, noise_std)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 3:
            raise SSLKitError(f"per-image views take one image (C, H, W), got "
                              f"{tuple(image.shape)}: pass images one at a time, e.g. x[0]")
        first, second = self.views.two_views(image[None])  # (1, C, S, S) each
        return first[0], second[0]
