"""Checks for 04_simclr: build_augmentation, similarity_matrix, nt_xent_loop, nt_xent,
simclr_step. See sslkit.grading for the conventions."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import augment, losses
from sslkit.grading.guard import (
    as_tensor,
    call,
    case_label,
    close,
    match_step,
    match_value,
    quiet,
    randn,
    require_flow,
    require_grad,
    require_graph,
    require_unchanged,
    scalar,
    stale_gradients,
    train_mode_kept,
)
from sslkit.methods.simclr import SimCLR
from sslkit.models.convnet import ConvNet
from sslkit.models.heads import projection_head

REFERENCES = {
    "similarity_matrix": {
        "sslkit.losses.cosine_similarity_matrix": losses.cosine_similarity_matrix,
        "sslkit.losses._pair_similarities": losses._pair_similarities,
    },
    "nt_xent_loop": {
        "sslkit.losses.nt_xent": losses.nt_xent,
        "sslkit.losses.nt_xent_loop": losses.nt_xent_loop,
        "sslkit.losses.info_nce": losses.info_nce,
        "sslkit.losses.cosine_similarity_matrix": losses.cosine_similarity_matrix,
        "sslkit.losses._pair_similarities": losses._pair_similarities,
    },
    # The step may call the kit's versions of the earlier exercises (sslkit.losses.nt_xent), as
    # every notebook's step may; blocked is only what does the whole step.
    "simclr_step": {
        "sslkit.methods.SimCLR.loss_on_views": SimCLR.loss_on_views,
        "sslkit.methods.SimCLR.forward": SimCLR.forward,
    },
    "build_augmentation": {
        "sslkit.augment.view_transform": augment.view_transform,
        "sslkit.augment.SimCLRViews.forward": augment.SimCLRViews.forward,
        "sslkit.augment.SimCLRViews.two_views": augment.SimCLRViews.two_views,
        "sslkit.augment.crop_params": augment.crop_params,
        "sslkit.augment.resized_crop_flip": augment.resized_crop_flip,
        "sslkit.augment.color_jitter": augment.color_jitter,
        "sslkit.augment.gaussian_blur": augment.gaussian_blur,
    },
}
REFERENCES["nt_xent"] = REFERENCES["nt_xent_loop"]


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    """guard.call with this notebook's references blocked when guard is True."""
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


@functools.lru_cache(maxsize=1)
def _photo() -> torch.Tensor:
    """scikit-learn's china.jpg as a (3, 107, 160) uint8 tensor (shipped with sklearn)."""
    from sklearn.datasets import load_sample_image
    from torchvision.transforms.v2 import functional as TF

    img = torch.tensor(load_sample_image("china.jpg")).permute(2, 0, 1).contiguous()
    return TF.resize(img, [107, 160], antialias=True)


def _gray3(img: torch.Tensor) -> torch.Tensor:
    """A colour uint8 image with its luminance copied into all three channels."""
    gray = augment.to_gray(img[None].float())[0].round().clamp(0, 255).to(torch.uint8)
    return gray.expand(3, -1, -1).contiguous()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def _views(exercise: str, transform, image: torch.Tensor, count: int, size: int, where: str,
           guard: bool):
    """count views of image, each checked for type, dtype, shape and range."""
    views = []
    for _ in range(count):
        v = _call(exercise, transform, image.clone(), where=where, guard=guard)
        v = as_tensor(exercise, v, where)
        expected = (image.shape[0], size, size)
        if tuple(v.shape) != expected:
            raise AssertionError(f"{exercise}: expected a view of shape {expected}, got "
                                 f"{tuple(v.shape)}{where}: crop to (size, size) and keep the "
                                 f"channels first")
        if v.dtype != torch.float32:
            raise AssertionError(f"{exercise}: expected dtype torch.float32, got {v.dtype}{where}:"
                                 f" end with v2.ToDtype(torch.float32, scale=True)")
        lo, hi = float(v.min()), float(v.max())
        if lo < 0 or hi > 1:
            raise AssertionError(f"{exercise}: expected values in [0, 1], got [{lo:.3g}, "
                                 f"{hi:.3g}]{where}: end with v2.ToDtype(torch.float32, "
                                 f"scale=True)")
        views.append(v)
    return torch.stack(views)


def _check_random(exercise: str, views: torch.Tensor, where: str) -> None:
    if torch.equal(views[0], views[1]):
        raise AssertionError(f"{exercise}: two calls gave the same view{where}: the transform must "
                             f"draw new random parameters on every call")
    flat = views.flatten(1)
    distinct = len({tuple((row * 255).round().int().tolist()) for row in flat})
    if distinct < len(views):
        raise AssertionError(f"{exercise}: expected {len(views)} different views from "
                             f"{len(views)} calls, got {distinct} different{where}")


def _check_jitter_kinds(ex: str, transform, n: int, size: int) -> None:
    """All four kinds of colour jitter are there. On a flat colour (dark enough that a brighter
    view does not clip), brightness only scales the colour; contrast and saturation blend it
    with its grey, so the colour leaves the line through the original; only hue turns it out
    of the plane spanned by the original and grey."""
    colour = torch.tensor([150, 70, 30], dtype=torch.uint8)
    image = colour.view(3, 1, 1).expand(3, 48, 48).contiguous()
    where = " (a flat brown image)"
    mean = _views(ex, transform, image, n, size, where, True).mean(dim=(2, 3))  # (n, 3)
    mean = mean[(mean.max(1).values - mean.min(1).values) >= 1e-3]  # not the grayscale views
    if len(mean) == 0:
        return  # the grayscale check reports this
    line = F.normalize(colour.float(), dim=0)
    plane, _ = torch.linalg.qr(torch.stack([colour.float(), torch.ones(3)], dim=1))  # (3, 2)
    off_line = (mean - (mean @ line)[:, None] * line).norm(dim=1)  # 0: only brighter / darker
    off_plane = (mean - mean @ plane @ plane.T).norm(dim=1)  # 0: no hue shift
    jitter = "v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s) sets brightness, contrast, "
    left_line = float((off_line > 0.01).float().mean())  # share of views off the line
    left_plane = float((off_plane > 0.01).float().mean())  # share of views off the plane
    if left_line < 0.3:
        raise AssertionError(f"{ex}: expected most colour-jittered views to change contrast and "
                             f"saturation, got {left_line:.0%}"
                             f"{where}: the colour only got brighter or darker; {jitter}"
                             "saturation and hue, in that order")
    if left_plane < 0.3:
        raise AssertionError(f"{ex}: expected most colour-jittered views to shift the hue, got "
                             f"{left_plane:.0%}{where}; {jitter}"
                             "saturation and hue (the 4th argument, 0.2 * s), in that order")


# The steps the text fixes, read from the returned Compose: exact, and a hint that names the
# parameter. Statistics of the views cannot tell p = 0.1 from 0.2 or a hue of 0.1 from 0.2
# without a thousand views; an answer that is not made of torchvision transforms (a function of
# its own) is judged by statistics alone: the coarse ones of check_build_augmentation, then the
# binomial tests of _check_distributions, on 1280 views.
_NEUTRAL = {"ToDtype", "ConvertImageDtype", "ToImage", "ToPureTensor", "Identity"}
_JITTER = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.6, 1.4),
           "hue": (-0.1, 0.1)}  # v2.ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with s = 0.5
_TEXT = ("the text's pipeline is RandomResizedCrop, RandomHorizontalFlip, "
         "RandomApply([ColorJitter], p=0.8), RandomGrayscale, ToDtype")


def _steps(transform, p: float = 1.0) -> list[tuple[str, object, float]] | None:
    """[(class name, transform, probability that it runs)] of the leaves of a tree of
    torchvision Compose / RandomApply, or None where the tree holds anything else."""
    if not type(transform).__module__.startswith("torchvision.transforms"):
        return None
    name = type(transform).__name__
    if name in ("Compose", "RandomApply"):
        inner = p * (float(transform.p) if name == "RandomApply" else 1.0)
        out = []
        for t in transform.transforms:
            leaves = _steps(t, inner)
            if leaves is None:
                return None
            out += leaves
        return out
    if name in ("RandomChoice", "RandomOrder"):
        return None
    return [(name, transform, p)]


def _pair(value, neutral: float) -> tuple[float, float]:
    """A ColorJitter range as floats; None (the parameter set to 0) is no change."""
    return (neutral, neutral) if value is None else tuple(float(v) for v in value)


def _check_steps(ex: str, transform) -> None:
    """The parameters the text fixes, where the transform is made of torchvision transforms."""
    steps = _steps(transform)
    if steps is None:
        return
    kinds: dict[str, list[tuple[object, float]]] = {}
    for name, t, p in steps:
        degrees = getattr(t, "degrees", None) if name == "RandomRotation" else None
        if p == 0 or (degrees is not None and not any(float(d) for d in degrees)):
            continue  # never runs, or turns by 0 degrees: no step at all
        kinds.setdefault(name, []).append((t, p))
    crop = "v2.RandomResizedCrop(size, scale=(0.08, 1.0))"
    if "RandomResizedCrop" not in kinds:
        found = [n for n in kinds if "Crop" in n or "Resize" in n]
        raise AssertionError(
            f"{ex}: expected {crop}, found {' + '.join(found) or 'no crop'}: each view is a "
            "random crop of 8 % to 100 % of the image's area, resized to size x size (a crop of "
            "a fixed size always shows the same scale; a resize shows the whole image)")
    for name in kinds:
        if name not in _NEUTRAL | {"RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter",
                                   "RandomGrayscale", "Grayscale"}:
            raise AssertionError(f"{ex}: unexpected step {name}: {_TEXT}")
    for name in ("RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter"):
        if len(kinds.get(name, ())) > 1:
            raise AssertionError(f"{ex}: {name} appears {len(kinds[name])} times: {_TEXT}")
    (rrc, p), = kinds["RandomResizedCrop"]
    if p != 1:
        raise AssertionError(f"{ex}: every view is cropped: {crop} as a step of its own, not "
                             "inside RandomApply")
    scale = tuple(float(v) for v in rrc.scale)
    if not all(abs(a - b) < 1e-9 for a, b in zip(scale, (0.08, 1.0))):
        raise AssertionError(f"{ex}: RandomResizedCrop has scale={scale}, expected "
                             f"scale=(0.08, 1.0): crops covering 8 % to 100 % of the image")
    ratio = tuple(float(v) for v in rrc.ratio)
    if not all(abs(a - b) < 1e-9 for a, b in zip(ratio, (3 / 4, 4 / 3))):
        raise AssertionError(f"{ex}: RandomResizedCrop has ratio={ratio}, expected the default "
                             "(3/4, 4/3): leave ratio out")
    flips = kinds.get("RandomHorizontalFlip", [])
    flip_p = sum(float(t.p) * p for t, p in flips)
    if abs(flip_p - 0.5) > 1e-9:
        raise AssertionError(f"{ex}: a view is mirrored with probability {flip_p:.2g}, expected "
                             "0.5: v2.RandomHorizontalFlip(p=0.5)")
    jitters = kinds.get("ColorJitter", [])
    if not jitters:
        raise AssertionError(f"{ex}: no ColorJitter: v2.RandomApply([v2.ColorJitter(0.8 * s, "
                             "0.8 * s, 0.8 * s, 0.2 * s)], p=0.8) with s = 0.5")
    (jitter, p), = jitters
    if abs(p - 0.8) > 1e-9:
        raise AssertionError(f"{ex}: the colour jitter is applied with probability {p:.2g}, "
                             "expected p=0.8: v2.RandomApply([v2.ColorJitter(...)], p=0.8)")
    wrong = []
    for name, expected in _JITTER.items():
        got = _pair(getattr(jitter, name), 0.0 if name == "hue" else 1.0)
        if not all(abs(a - b) < 1e-6 for a, b in zip(got, expected)):
            wrong.append(f"{name} {got[0]:.3g}..{got[1]:.3g} (expected {expected[0]:.3g}.."
                         f"{expected[1]:.3g})")
    if wrong:
        raise AssertionError(f"{ex}: the ColorJitter's ranges differ: {', '.join(wrong)}; with "
                             "s = 0.5, v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s) = "
                             "v2.ColorJitter(0.4, 0.4, 0.4, 0.1)")
    gray_p = sum(float(getattr(t, "p", 1.0)) * p
                 for t, p in kinds.get("RandomGrayscale", []) + kinds.get("Grayscale", []))
    if abs(gray_p - 0.2) > 1e-9:
        raise AssertionError(f"{ex}: a view is turned grey with probability {gray_p:.2g}, "
                             "expected 0.2: v2.RandomGrayscale(p=0.2) (its default is 0.1)")


# Distributions measured on the views, for an answer whose steps cannot be read. The views are
# 8x8 crops of a 64x64 image whose red channel is 4x and green channel 4y (x, y the pixel's
# column and row) and whose blue channel is 77 everywhere. A view is grayscale where its three
# channels are equal. A colour view that the jitter left alone has blue 77 everywhere, red the
# same in every row and green the same in every column (resizing is separable); the jitter
# breaks one of them but for a chance of a few in a million (brightness and contrast that bring
# blue back to 77 after rounding, with saturation and hue too close to 1 and 0 to mix the
# channels; none of 100 000 jittered views did), and such a view only looks like a smaller
# crop (its red and green are squeezed alike, its aspect ratio kept). The red and green slopes
# along a plain view give the crop's width and height to within 1 % (bilinear or bicubic
# resizing; 7 % nearest). In the text's pipeline the grayscale, the jitter and the crop are
# drawn independently, so the counts below are binomial; each of the six tails tested fails a
# right answer with probability below _TAIL (the exact binomial tail at the measured count),
# and the bound on single crops' areas needs 3 crops below it (3 look-alikes, each squeezed
# that far: below 1e-8): a right answer fails with probability below 1e-7 at any seed. (Over
# 200 seeds each of RandomResizedCrop and of a crop of one's own, the counts' means and spreads
# were the binomial's, the smallest of the 2 400 tails 7e-5.) At the check's fixed seed a
# given answer passes or fails every time.
_GRID, _GRID_VIEW, _GRID_VIEWS = 64, 8, 1280
_TAIL = 1e-8
_SMALL = 0.19  # a "small" crop covers less than this fraction of the image
# P(area < 0.19): 0.136 for RandomResizedCrop(scale=(0.08, 1.0)) on 64x64 (its rounding and
# redraws of crops that do not fit), 0.120 for an area uniform in [0.08, 1]; the tests use a
# range around both, so that a crop of one's own that is right passes too
_SMALL_P = (0.115, 0.145)


def _binomial_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X <= k) (upper: P(X >= k)) for X ~ Binomial(n, p)."""
    terms = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                        + i * math.log(p) + (n - i) * math.log1p(-p)) for i in terms)


def _unlikely(k: int, n: int, p: tuple[float, float]) -> bool:
    """k of n is too few for probability p[0] or too many for p[1] (tail below _TAIL)."""
    return (_binomial_tail(k, n, p[0], upper=False) < _TAIL
            or _binomial_tail(k, n, p[1], upper=True) < _TAIL)


def _grid_image() -> torch.Tensor:
    ramp = torch.arange(_GRID) * 4  # 0 .. 252
    red, green = ramp.view(1, -1).expand(_GRID, -1), ramp.view(-1, 1).expand(-1, _GRID)
    return torch.stack([red, green, torch.full((_GRID, _GRID), 77)]).to(torch.uint8)


def _crop_sides(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height in pixels of the crop each un-jittered colour view of the grid image
    shows: least-squares slopes of its red channel along x and its green channel along y, one
    border pixel left out (where resizing kernels are cut off)."""
    v = _GRID_VIEW
    j = torch.arange(1, v - 1, dtype=torch.float64)
    j = j - j.mean()
    red = views[:, 0].double().mean(1)[:, 1:v - 1]  # (M, v - 2): mean over rows
    green = views[:, 1].double().mean(2)[:, 1:v - 1]  # mean over columns

    def slope(profile: torch.Tensor) -> torch.Tensor:
        return (profile * j).sum(1) / (j * j).sum()

    per_pixel = 255 * v / 4  # slope (per view pixel, values in [0, 1]) -> source pixels
    return slope(red).abs() * per_pixel, slope(green).abs() * per_pixel


def _measure_grid(views: torch.Tensor):
    """Of views (n, 3, v, v) of the grid image: which are grayscale (n,), which of the colour
    ones the jitter left alone (n_colour,), and the area (a fraction of the image's) and aspect
    ratio (width / height) of the crop each of those shows."""
    gray = (views.amax(1) - views.amin(1)).flatten(1).amax(1) < 1e-3

    def flat(x: torch.Tensor, dim: int) -> torch.Tensor:  # (M, v, v) -> (M,): constant along dim
        return (x - x.mean(dim, keepdim=True)).abs().flatten(1).amax(1) < 0.5 / 255

    colour = views[~gray]
    blue = (colour[:, 2] - 77 / 255).abs().flatten(1).amax(1) < 0.5 / 255
    plain = blue & flat(colour[:, 0], 1) & flat(colour[:, 1], 2)
    w, h = _crop_sides(colour[plain])
    return gray, plain, w * h / _GRID ** 2, w / h


def _check_distributions(ex: str, transform) -> None:
    n, size = _GRID_VIEWS, _GRID_VIEW
    where = (f" ({n} views of size {size} of a 64x64 image whose red and green channels grow "
             "along x and y)")
    gray, plain, area, ratio = _measure_grid(_views(ex, transform, _grid_image(), n, size,
                                                    where, True))
    n_gray, n_plain = int(gray.sum()), int(plain.sum())
    if _unlikely(n_gray, n, (0.2, 0.2)):
        raise AssertionError(f"{ex}: expected about 20% grayscale views, got {n_gray / n:.1%}"
                             f"{where}: v2.RandomGrayscale(p=0.2) (its default p is 0.1)")
    if _unlikely(n_plain, len(plain), (0.2, 0.2)):
        raise AssertionError(f"{ex}: expected about 20% of the colour views without colour "
                             f"jitter, got {n_plain / len(plain):.1%}{where}: apply it with "
                             "probability 0.8, v2.RandomApply([v2.ColorJitter(...)], p=0.8)")
    crop = "v2.RandomResizedCrop(size, scale=(0.08, 1.0))"
    tiny = area < 0.055  # 8 %, less the rounding of the crop's sides
    if int(tiny.sum()) >= 3:
        raise AssertionError(f"{ex}: {int(tiny.sum())} of {len(area)} crops cover less than 5.5% "
                             f"of the image, the smallest {float(area.min()):.1%}{where}: {crop} "
                             "crops 8 % to 100 % of the image's area (draw the area, not the "
                             "side, uniformly)")
    skewed = (ratio < 0.62) | (ratio > 1.6)  # 3/4 and 4/3, less the rounding
    if int(skewed.sum()) >= 3:
        worst = float(ratio[skewed][(ratio[skewed].log()).abs().argmax()])
        raise AssertionError(f"{ex}: {int(skewed.sum())} of {len(area)} crops have an aspect "
                             f"ratio (width / height) outside [0.62, 1.6], e.g. {worst:.2f}"
                             f"{where}: {crop} keeps it between 3/4 and 4/3 (draw the ratio "
                             "with the area, not the width and height apart)")
    n_small = int((area < _SMALL).sum())
    if _unlikely(n_small, len(area), _SMALL_P):
        raise AssertionError(f"{ex}: expected about 13% of the crops to cover less than "
                             f"{_SMALL:.0%} of the image, got {n_small} of {len(area)} (the "
                             f"smallest covers {float(area.min()):.0%}){where}: {crop}, the "
                             "area drawn uniformly from 8 % to 100 %")


@quiet
def check_build_augmentation(build_augmentation: Callable, hidden: bool = False) -> None:
    """Views of a photo: float32 (C, size, size) in [0, 1], new random parameters each call;
    the parameters of a Compose of torchvision transforms; hidden: crop, flip, colour jitter
    (its strength and probability) and grayscale each present, statistically, and, where the
    steps cannot be read, the probabilities of grayscale and jitter and the crops' areas and
    aspect ratios measured (_check_distributions)."""
    ex = "build_augmentation"
    photo = _photo()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # torchvision's transforms draw from torch's global generator
        for size in (32, 24):
            where = f" (size={size}, photo of shape {tuple(photo.shape)})"
            transform = _call(ex, build_augmentation, size, where=where, guard=hidden)
            if not callable(transform):
                raise AssertionError(f"{ex}: expected a callable transform, got "
                                     f"{type(transform).__name__}: return a v2.Compose([...])")
            before = photo.clone()
            views = _views(ex, transform, photo, 16, size, where, hidden)
            if not torch.equal(photo, before):
                raise AssertionError(f"{ex}: the transform changed its input image in place")
            _check_random(ex, views, where)
            _check_steps(ex, transform)
        if not hidden:
            return

        n, size = 64, 32
        transform = _call(ex, build_augmentation, size, guard=True)
        digit = torch.zeros(1, 32, 32, dtype=torch.uint8)
        digit[:, 8:24, 12:20] = 200
        _views(ex, transform, digit, 4, size, " (a 1-channel 32x32 image)", True)

        # Crop: on a gray photo, colour changes keep the picture's structure, so a view that
        # correlates poorly with the plain (or mirrored) resize must come from a crop.
        gray = _gray3(photo)
        resized = torch.from_numpy(
            F.interpolate(gray[None].float(), size=(size, size), mode="area")[0, 0].numpy())
        views = _views(ex, transform, gray, n, size, " (a gray photo)", True)
        match = [max(_corr(v.mean(0), resized), _corr(v.mean(0), resized.flip(-1)))
                 for v in views]
        cropped = sum(m < 0.9 for m in match) / n
        if cropped < 0.4:
            raise AssertionError(f"{ex}: expected most views to be random crops, got {cropped:.0%}"
                                 f" that differ from a plain resize of the photo: use "
                                 f"v2.RandomResizedCrop(size, scale=(0.08, 1.0))")

        # Flip: a left-to-right ramp stays a rising ramp under crops and colour jitter; only a
        # horizontal flip makes it fall.
        ramp = torch.linspace(30, 220, 48).round().to(torch.uint8).expand(3, 48, 48).contiguous()
        views = _views(ex, transform, ramp, n, size, " (a horizontal ramp)", True)
        cols = views.mean(dim=(1, 2))  # (n, size) mean of each column
        flipped = float((cols[:, -1] < cols[:, 0]).float().mean())
        if not 0.2 <= flipped <= 0.8:
            raise AssertionError(f"{ex}: expected about half the views mirrored, got "
                                 f"{flipped:.0%} (a horizontal ramp): use "
                                 f"v2.RandomHorizontalFlip(p=0.5)")

        # Colour: crops and flips leave a flat colour unchanged; jitter changes it, grayscale
        # makes the three channels equal.
        flat = torch.tensor([200, 90, 40], dtype=torch.uint8).view(3, 1, 1).expand(3, 48, 48)
        views = _views(ex, transform, flat.contiguous(), n, size, " (a flat orange image)", True)
        mean = views.mean(dim=(2, 3))  # (n, 3)
        original = flat[:, 0, 0].float() / 255
        is_gray = (mean.max(1).values - mean.min(1).values) < 1e-3
        changed = (mean - original).abs().max(1).values > 2 / 255
        gray_frac = float(is_gray.float().mean())
        jitter_frac = float((changed & ~is_gray).float().mean())
        if not 0.05 <= gray_frac <= 0.5:
            raise AssertionError(f"{ex}: expected about 20% grayscale views, got {gray_frac:.0%} "
                                 f"(a flat orange image): use v2.RandomGrayscale(p=0.2)")
        if jitter_frac < 0.3:
            raise AssertionError(f"{ex}: expected most views colour-jittered, got "
                                 f"{jitter_frac:.0%} that change a flat colour (and are not gray): "
                                 f"use v2.RandomApply([v2.ColorJitter(...)], p=0.8)")

        _check_jitter_kinds(ex, transform, n, size)

        # Strength and probability of the jitter: on a flat grey image crops, flips, grayscale,
        # contrast, saturation and hue change nothing, so a view is the grey times the
        # brightness factor, uniform in [1 - 0.8s, 1 + 0.8s] = [0.6, 1.4] for s = 0.5 -- or
        # the grey give or take one level (grayscale rounds 100 down to 99), for the ~20 % of
        # views that RandomApply(p=0.8) leaves alone.
        grey = torch.full((3, 48, 48), 100, dtype=torch.uint8)
        views = _views(ex, transform, grey, 256, size, " (a flat grey image)", True)
        factor = views.mean(dim=(1, 2, 3)) * 255 / 100  # (256,) brightness factor of each view
        deviation = (factor - 1).abs()
        jitter = ("with s = 0.5: v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s) changes the "
                  "brightness by a factor in [0.6, 1.4]")
        if float(deviation.max()) > 0.46:  # 0.4, and a few grey levels of rounding
            raise AssertionError(f"{ex}: the colour jitter is too strong: a view of a flat grey "
                                 f"image came out {float(factor[deviation.argmax()]):.2f} times as "
                                 f"bright; {jitter}")
        if float(deviation.max()) < 0.3:
            raise AssertionError(f"{ex}: the colour jitter is too weak: 256 views of a flat grey "
                                 f"image all stay within {float(deviation.max()):.2f} of its "
                                 f"brightness; {jitter}")
        untouched = float((deviation < 0.015).float().mean())
        if not 0.1 <= untouched <= 0.4:
            raise AssertionError(f"{ex}: expected about 20% of the views without colour jitter, "
                                 f"got {untouched:.0%} (a flat grey image): apply it with "
                                 f"probability 0.8, v2.RandomApply([v2.ColorJitter(...)], p=0.8)")

        if _steps(transform) is None:  # steps that cannot be read: measure their parameters
            small = _call(ex, build_augmentation, _GRID_VIEW, guard=True)
            _check_distributions(ex, small)


# ----------------------------------------------------------------------------------------------
# 2. similarity_matrix(z1, z2)
# ----------------------------------------------------------------------------------------------


def _similarity_hint(got: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> str:
    z = torch.cat([z1, z2])
    zn = F.normalize(z, dim=1)
    interleaved = F.normalize(torch.stack([z1, z2], dim=1).flatten(0, 1), dim=1)
    variants = {
        "did you L2-normalise each row (cosine, not dot product)?": z @ z.T,
        "did you normalise each row (dim=1), not each column?": (F.normalize(z, dim=0)
                                                                 @ F.normalize(z, dim=0).T),
        "did you stack the views as [z1; z2] (all of z1, then all of z2)?":
            interleaved @ interleaved.T,
        "did you compare with a full row of the matrix, not a distance?":
            torch.cdist(zn, zn),
    }
    for hint, value in variants.items():
        if value.shape == got.shape and torch.allclose(got, value, atol=1e-4):
            return " — " + hint
    return ""


def _compare_similarity(ex: str, fn: Callable, z1, z2, where: str, guard: bool) -> None:
    a, b = z1.clone().requires_grad_(guard), z2.clone().requires_grad_(guard)
    got = as_tensor(ex, _call(ex, fn, a, b, where=where, guard=guard), where)
    expected = losses.cosine_similarity_matrix(torch.cat([z1, z2]), torch.cat([z1, z2]))
    if tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"{ex}: expected shape {tuple(expected.shape)} (2N x 2N), got "
                             f"{tuple(got.shape)}{where}: stack the views with torch.cat([z1, z2])"
                             f" and compare every view with every view")
    values = got.detach().to(expected.dtype)
    if not torch.allclose(values, expected, atol=1e-5, rtol=1e-4):
        i, j = divmod(int((values - expected).abs().argmax()), values.shape[1])
        raise AssertionError(
            f"{ex}: expected {float(expected[i, j]):.4f}, got {float(values[i, j]):.4f} at "
            f"[{i}, {j}]{where}{_similarity_hint(values, z1, z2)}")
    if guard:  # NT-Xent trains through this matrix: its gradient must be the reference's
        _compare_similarity_grad(ex, got, a, b, z1, z2, where)
    else:  # ... and reaches both views
        require_graph(ex, lambda *v: _call(ex, fn, *v, where=where), (z1, z2), where,
                      ("z1", "z2"), what="the matrix")


def _compare_similarity_grad(ex: str, got, a, b, z1, z2, where: str) -> None:
    if not got.requires_grad:
        raise AssertionError(f"{ex}: the matrix carries no gradient{where}: NT-Xent trains the "
                             "encoder through it, so keep the computation in torch (no numpy, "
                             ".detach() or torch.no_grad())")
    weight = randn(*got.shape, seed=11)  # a random loss of the matrix: every entry counts
    try:
        ga, gb = torch.autograd.grad((got.to(weight.dtype) * weight).sum(), (a, b),
                                     allow_unused=True)
    except RuntimeError as e:
        if "inplace" not in str(e):
            raise AssertionError(f"{ex}: the backward pass through your matrix failed{where}: "
                                 f"{' '.join(str(e).split())[:160]}") from None
        raise AssertionError(f"{ex}: the values are right, but an in-place operation (z /= n, "
                             f".div_(), .mul_()) breaks the backward pass{where}: autograd needs "
                             "the tensors it saved, so write z = z / n") from None
    ra, rb = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ea, eb = torch.autograd.grad(
        (losses.cosine_similarity_matrix(torch.cat([ra, rb]), torch.cat([ra, rb])) * weight)
        .sum(), (ra, rb))
    for name, g, e in (("z1", ga, ea), ("z2", gb, eb)):
        if g is None or not torch.allclose(g, e, atol=1e-5, rtol=1e-4):
            diff = "none" if g is None else f"up to {float((g - e).abs().max()):.2g} off"
            raise AssertionError(f"{ex}: the gradient with respect to {name} differs from the "
                                 f"reference ({diff}){where}: compute the matrix from z1 and z2 "
                                 "with torch operations only")


@quiet
def check_similarity_matrix(similarity_matrix: Callable, hidden: bool = False) -> None:
    """(2N, 2N) cosine similarities of the stacked views [z1; z2], compared with the reference."""
    ex = "similarity_matrix"
    cases = [(4, 8, 0)] if not hidden else [(2, 3, 1), (5, 16, 2), (8, 4, 3)]
    for n, d, seed in cases:
        z1, z2 = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
        _compare_similarity(ex, similarity_matrix, z1, z2, case_label(n, d), hidden)
    if hidden:
        n, d = 4, 6
        z1, z2 = randn(n, d, seed=7), randn(n, d, seed=8)
        where = case_label(n, d) + " with rows scaled by 10"
        _compare_similarity(ex, similarity_matrix, 10 * z1, 10 * z2, where, True)


# ----------------------------------------------------------------------------------------------
# 3.-4. nt_xent_loop and nt_xent
# ----------------------------------------------------------------------------------------------


def _nt_xent_variants(z1: torch.Tensor, z2: torch.Tensor, t: float) -> dict[str, torch.Tensor]:
    """Values of the usual mistakes, each keyed by the hint that fixes it."""
    n = len(z1)
    z = torch.cat([z1, z2])
    sim = F.normalize(z, dim=1) @ F.normalize(z, dim=1).T  # (2N, 2N)
    eye = torch.eye(2 * n, dtype=torch.bool)
    labels = (torch.arange(2 * n) + n) % (2 * n)
    ref = losses.nt_xent(z1, z2, t)
    ce = F.cross_entropy
    negatives_only = sim.masked_fill(eye, float("-inf"))
    negatives_only[torch.arange(2 * n), labels] = float("-inf")
    variants = {
        "did you exclude each view from its own denominator (mask the diagonal)?":
            ce(sim / t, labels),
        "did you divide by the temperature twice?": ce((sim / t / t).masked_fill(eye, -math.inf),
                                                       labels),
        "did you divide the similarities by the temperature?": ce(sim.masked_fill(eye, -math.inf),
                                                                  labels),
        "did you L2-normalise the embeddings (cosine similarity, not dot product)?":
            ce((z @ z.T / t).masked_fill(eye, -math.inf), labels),
        "did you average over all 2N anchors, not N?": 2 * ref,
        "did you average over the anchors (not sum)?": 2 * n * ref,
        "did you use the views of z2 as anchors too (all 2N anchors)?":
            ce((sim / t).masked_fill(eye, -math.inf)[:n], labels[:n]),
        "the denominator sums over the positive AND the 2N-2 negatives: did you leave the "
        "positive out?":
            (-sim[torch.arange(2 * n), labels] / t
             + torch.logsumexp(negatives_only / t, dim=1)).mean(),
        "did you pair view i with view i + N (mod 2N)?":
            ce((sim / t).masked_fill(eye, -math.inf), torch.arange(2 * n).flip(0)),
    }
    for shift in (1, -1):  # the partner's neighbour: an off-by-one in the labels
        shifted = (labels + shift) % (2 * n)
        if not bool((shifted == torch.arange(2 * n)).any()):  # never the masked diagonal
            variants[f"view i's partner is view i + N (mod 2N), not i + N {'+-'[shift < 0]} 1"
                     ] = ce((sim / t).masked_fill(eye, -math.inf), shifted)
    return variants


def _compare_loss(ex: str, fn: Callable, z1, z2, t: float, grad: bool) -> None:
    n, d = z1.shape
    where = case_label(n, d, t)
    a = z1.clone().requires_grad_(grad)
    b = z2.clone().requires_grad_(grad)
    got = scalar(ex, _call(ex, fn, a, b, t, where=where, guard=grad), where)
    require_unchanged(ex, ("z1", "z2"), (a, b), (z1, z2), where)
    expected = losses.nt_xent(z1, z2, t)
    if not close(got, expected):  # the variants are only computed for a wrong answer
        match_value(ex, got, expected, _nt_xent_variants(z1, z2, t), where)
    if not grad:
        require_graph(ex, lambda *v: _call(ex, fn, *v, t, where=where), (z1, z2), where,
                      ("z1", "z2"))
        return
    require_grad(ex, got, where)
    require_flow(ex, got, {"z1": a, "z2": b}, where)
    ga, gb = _call(ex, torch.autograd.grad, got, (a, b), where=where + " in backward")
    ra, rb = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ea, eb = torch.autograd.grad(losses.nt_xent(ra, rb, t), (ra, rb))
    for name, g, e in (("z1", ga, ea), ("z2", gb, eb)):
        if not torch.allclose(g, e, atol=1e-5, rtol=1e-4):
            raise AssertionError(f"{ex}: the gradient with respect to {name} differs from the "
                                 f"reference by up to {float((g - e).abs().max()):.2g}{where}")


def _check_nt_xent(ex: str, fn: Callable, hidden: bool) -> None:
    if hidden:
        cases = [(2, 3, 1.0, 1), (3, 5, 0.1, 2), (5, 16, 0.2, 3), (8, 4, 0.5, 4)]
    else:
        cases = [(4, 8, 0.5, 0)]
    for n, d, t, seed in cases:
        z1, z2 = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
        _compare_loss(ex, fn, z1, z2, t, grad=hidden)
    if not hidden:
        # Closed form: orthonormal pairs (z1 = z2 = rows of the identity): every positive has
        # cosine 1, every negative 0, so each anchor's loss is log(1 + (2N-2) e^{-1/T}).
        n, t = 4, 0.5
        eye = torch.eye(n, 8)
        where = case_label(n, 8, t) + " with z1 = z2 = orthonormal rows"
        got = scalar(ex, _call(ex, fn, eye.clone(), eye.clone(), t, where=where), where)
        expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
        if abs(float(got) - expected) > 1e-4:
            raise AssertionError(f"{ex}: expected {expected:.4f} = log(1 + 6 e^-2), got "
                                 f"{float(got):.4f}{where}")


@quiet
def check_nt_xent_loop(nt_xent_loop: Callable, hidden: bool = False) -> None:
    """The loop over the 2N anchors gives the reference NT-Xent (value; hidden: and gradients)."""
    _check_nt_xent("nt_xent_loop", nt_xent_loop, hidden)


@quiet
def check_nt_xent(nt_xent: Callable, hidden: bool = False) -> None:
    """The vectorised NT-Xent gives the reference value (hidden: more cases and gradients)."""
    _check_nt_xent("nt_xent", nt_xent, hidden)


# ----------------------------------------------------------------------------------------------
# 5. simclr_step(model, optimizer, v1, v2, temperature)
# ----------------------------------------------------------------------------------------------


def _step_case(seed: int, n: int = 6, t: float = 0.3):
    """A tiny SimCLR (ConvNet with BatchNorm, MLP head), an optimiser and two batches of views."""
    torch.manual_seed(seed)
    encoder = ConvNet(1, (4, 8))
    method = SimCLR(encoder, augment.SimCLRViews(augment.ViewConfig(size=8)), proj_dim=8,
                    temperature=t)
    method.head = projection_head(8, 8, 16)
    v1 = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    v2 = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 2))
    return method.train(), v1, v2


def _optimizer(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)


def _step_hint(method: SimCLR, v1, v2, got: float) -> str:
    """Why a step's loss differs from the reference's, where a usual mistake explains it."""
    separate = copy.deepcopy(method)
    with torch.no_grad():
        z1, z2 = separate.embed(v1), separate.embed(v2)
        apart = float(losses.nt_xent(z1, z2, method.temperature))
        z = separate.embed(torch.cat([v1, v2]))
        default_t = float(losses.nt_xent(*z.chunk(2), 0.5))
        every_other = float(losses.nt_xent(z[0::2], z[1::2], method.temperature))
    if abs(got - every_other) < 1e-5:
        return (" — split the (2N, D) output with .chunk(2): its first N rows are v1's views, "
                "the last N v2's (not every other row)")
    if abs(got - apart) < 1e-5:
        return (" — put both views through the model in ONE forward pass "
                "(model(torch.cat([v1, v2]))) so that BatchNorm sees all 2N views")
    if abs(got - default_t) < 1e-5:
        return " — did you pass the temperature argument to the loss?"
    return (" — if your nt_xent does not pass its tests yet, call sslkit.losses.nt_xent here")


def _check_one_step(ex: str, simclr_step: Callable, seed: int, steps: int,
                    guard: bool) -> None:
    method, v1, v2 = _step_case(seed)
    t = method.temperature
    student = copy.deepcopy(method)
    model = nn.Sequential(student.encoder, student.head)  # images -> z
    optimizer = _optimizer(model)
    reference = copy.deepcopy(method)
    ref_optimizer = _optimizer(reference)
    where = f" (N={len(v1)} pairs of 1x8x8 views, T={t}, SGD lr=0.1 momentum=0.9)"
    for step in range(steps):
        stale_gradients(model, reference, seed + step)  # zero_grad must clear them
        before = copy.deepcopy(model)
        label = f"step {step + 1}: " if steps > 1 else ""
        with train_mode_kept(ex, {"model": model}, label, where):
            got = _call(ex, simclr_step, model, optimizer, v1.clone(), v2.clone(), t,
                        where=where, guard=guard)
        hint_state = copy.deepcopy(reference)
        loss = reference.loss_on_views(v1, v2)
        ref_optimizer.zero_grad()
        loss.backward()
        ref_optimizer.step()
        match_step(ex, got, loss.item(), model, before,
                   nn.Sequential(reference.encoder, reference.head), label, where,
                   hint=lambda s=hint_state, g=got: _step_hint(s, v1, v2, g))


@quiet
def check_simclr_step(simclr_step: Callable, hidden: bool = False) -> None:
    """One step from the same seed, weights and views gives the reference's loss and weights
    (reference: sslkit.methods.SimCLR.loss_on_views, zero_grad, backward, step)."""
    ex = "simclr_step"
    if not hidden:
        _check_one_step(ex, simclr_step, seed=0, steps=1, guard=False)
    else:
        _check_one_step(ex, simclr_step, seed=1, steps=2, guard=True)
        _check_one_step(ex, simclr_step, seed=2, steps=1, guard=True)
