"""Checks for the reconstruction pretext tasks of 01_pretext_tasks: split_lab, merge_lab
(colorization) and masked_reconstruction_loss (inpainting). See sslkit.grading for the
conventions: ``check_<exercise>(answer, hidden=False)``, one-line failures, and (hidden) the
delegation guard over the sslkit references.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sslkit import losses
from sslkit.grading.guard import (
    as_tensor,
    call,
    quiet,
    require_graph,
    require_unchanged,
    scalar,
)
from sslkit.methods import colorization, inpainting
from sslkit.methods.colorization import DELTA, RGB_TO_XYZ, WHITE_D65

_LAB_REFERENCES = {
    "sslkit.methods.colorization.rgb_to_lab": colorization.rgb_to_lab,
    "sslkit.methods.colorization.lab_to_rgb": colorization.lab_to_rgb,
    "sslkit.methods.colorization.split_lab": colorization.split_lab,
    "sslkit.methods.colorization.merge_lab": colorization.merge_lab,
    "sslkit.methods.colorization.Colorization.colorize": colorization.Colorization.colorize,
}
REFERENCES = {
    "split_lab": _LAB_REFERENCES,
    "merge_lab": _LAB_REFERENCES,
    "masked_reconstruction_loss": {
        "sslkit.methods.inpainting.masked_reconstruction_loss":
            inpainting.masked_reconstruction_loss,
        "sslkit.methods.inpainting.Inpainting.forward_loss": inpainting.Inpainting.forward_loss,
        "sslkit.methods.inpainting.Inpainting.forward": inpainting.Inpainting.forward,
        **({"sslkit.losses.mae_loss": losses.mae_loss} if hasattr(losses, "mae_loss") else {}),
    },
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    """guard.call with this exercise's references blocked when guard is True."""
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


# ----------------------------------------------------------------------------------------------
# Inputs, and the usual mistakes in a Lab conversion (computed here, independent of the
# reference, so that a hint names the mistake an answer's values match)
# ----------------------------------------------------------------------------------------------

D50 = (0.96422, 1.0, 0.82521)
NO_WHITE = (1.0, 1.0, 1.0)


def _rgb(n: int, h: int, w: int, seed: int, low: float = 0.0, high: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 3, h, w, generator=g)


def _known_colours() -> torch.Tensor:
    """(1, 3, 2, 3): white, black, red / green, blue, mid grey (sRGB 0.5)."""
    colours = [(1, 1, 1), (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0.5)]
    return torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, 2, 3)


def _lab_variant(x: torch.Tensor, gamma: str = "srgb", white=WHITE_D65) -> torch.Tensor:
    """rgb (N, 3, H, W) -> Lab with a chosen gamma handling and white point (float64)."""
    x = x.double()
    if gamma == "srgb":
        lin = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)
    elif gamma == "power":
        lin = x.clamp(min=0) ** 2.2
    else:
        lin = x
    m = torch.tensor(RGB_TO_XYZ, dtype=torch.float64)
    t = torch.einsum("ij,njhw->nihw", m, lin) / torch.tensor(white, dtype=torch.float64).view(
        1, 3, 1, 1)
    f = torch.where(t > DELTA**3, t.clamp(min=0) ** (1 / 3), t / (3 * DELTA**2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], dim=1)


def _rgb_variant(lab: torch.Tensor, gamma: bool = True, white=WHITE_D65,
                 clamp: bool = True) -> torch.Tensor:
    """Lab (N, 3, H, W) -> rgb with or without gamma encoding / clamping (float64)."""
    lab = lab.double()
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    t = torch.where(f > DELTA, f**3, 3 * DELTA**2 * (f - 4 / 29))
    xyz = t * torch.tensor(white, dtype=torch.float64).view(1, 3, 1, 1)
    m_inv = torch.linalg.inv(torch.tensor(RGB_TO_XYZ, dtype=torch.float64))
    lin = torch.einsum("ij,njhw->nihw", m_inv, xyz)
    rgb = (torch.where(lin <= 0.0031308, 12.92 * lin,
                       1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055) if gamma else lin)
    return rgb.clamp(0, 1) if clamp else rgb


def _first_diff(got: torch.Tensor, expected: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index((got - expected).abs().argmax(),
                                                      got.shape))


def _matches(got: torch.Tensor, value: torch.Tensor, atol: float) -> bool:
    return got.shape == value.shape and bool(torch.allclose(got.double(), value.double(),
                                                            atol=atol, rtol=0))


# ----------------------------------------------------------------------------------------------
# 1. split_lab(x) -> (L, ab)
# ----------------------------------------------------------------------------------------------

LAB_ATOL = 0.05  # Lab units: leaves room for the published variants of the sRGB constants


def _split_hint(lab: torch.Tensor, x: torch.Tensor) -> str:
    ref = _lab_variant(x)
    variants = {
        "did you undo the sRGB gamma first (linear = ((c + 0.055) / 1.055)^2.4, or c / 12.92 "
        "for c <= 0.04045)?": _lab_variant(x, gamma="none"),
        "use the piecewise sRGB curve, not a plain power c^2.2": _lab_variant(x, gamma="power"),
        "did you divide XYZ by the D65 white (0.95047, 1.0, 1.08883)? D50 is the wrong white "
        "point here": _lab_variant(x, white=D50),
        "did you divide X, Y, Z by the D65 white point (0.95047, 1.0, 1.08883)?":
            _lab_variant(x, white=NO_WHITE),
        "L runs from 0 to 100 (L = 116 f(Y/Yn) - 16), not 0 to 1":
            torch.cat([ref[:, :1] / 100, ref[:, 1:]], dim=1),
        "are a and b in the right order (a = 500 (fx - fy) first, then b = 200 (fy - fz))?":
            ref[:, [0, 2, 1]],
    }
    for hint, value in variants.items():
        if _matches(lab, value, LAB_ATOL):
            return " — " + hint
    return ""


def _compare_split(ex: str, fn: Callable, x: torch.Tensor, where: str, guard: bool) -> None:
    x_in = x.clone()
    out = _call(ex, fn, x_in, where=where, guard=guard)
    require_unchanged(ex, ("x",), (x_in,), (x,), where)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise AssertionError(f"{ex}: expected a pair (L, ab), got {type(out).__name__}{where}: "
                             f"return L, ab")
    L = as_tensor(ex, out[0], where + " (L)")
    ab = as_tensor(ex, out[1], where + " (ab)")
    n, _, h, w = x.shape
    for name, t, c in (("L", L, 1), ("ab", ab, 2)):
        if tuple(t.shape) != (n, c, h, w):
            raise AssertionError(f"{ex}: expected {name} of shape {(n, c, h, w)}, got "
                                 f"{tuple(t.shape)}{where}: keep the channel dimension "
                                 f"(lab[:, :1] and lab[:, 1:])")
    got = torch.cat([L.detach(), ab.detach()], dim=1).double()
    expected = colorization.rgb_to_lab(x.double())
    if not torch.isfinite(got).all():
        raise AssertionError(f"{ex}: got NaN or inf{where}: clamp before a fractional power "
                             f"(a negative base gives NaN)")
    if not torch.allclose(got, expected, atol=LAB_ATOL, rtol=0):
        i, c, r, s = _first_diff(got, expected)
        name = "Lab"[c]
        rgb = ", ".join(f"{float(v):.2f}" for v in x[i, :, r, s])
        raise AssertionError(f"{ex}: expected {name} = {float(expected[i, c, r, s]):.2f}, got "
                             f"{float(got[i, c, r, s]):.2f} at pixel [{i}, :, {r}, {s}] (sRGB "
                             f"({rgb})){where}{_split_hint(got, x)}")


@quiet
def check_split_lab(split_lab: Callable, hidden: bool = False) -> None:
    """split_lab(x (N, 3, H, W) sRGB in [0, 1]) -> (L (N, 1, H, W) in [0, 100], ab (N, 2, H, W)),
    compared with sslkit.methods.colorization.split_lab (D65, sRGB gamma) to 0.05 Lab units."""
    ex = "split_lab"
    _compare_split(ex, split_lab, _known_colours(),
                   " (white, black, red, green, blue, grey 0.5)", hidden)
    cases = [((2, 4, 4), 0)] if not hidden else [((1, 5, 7), 1), ((4, 8, 8), 2), ((3, 2, 3), 3)]
    for (n, h, w), seed in cases:
        _compare_split(ex, split_lab, _rgb(n, h, w, seed), f" (random colours, N={n}, {h}x{w})",
                       hidden)
    if hidden:
        _compare_split(ex, split_lab, _rgb(2, 4, 4, 4, high=0.06),
                       " (dark colours, sRGB <= 0.06)", True)
        grey = _rgb(2, 1, 6, 5).expand(2, 3, 6, 6).contiguous()
        _compare_split(ex, split_lab, grey, " (grey pixels: expect a = b = 0)", True)


# ----------------------------------------------------------------------------------------------
# 2. merge_lab(L, ab) -> rgb
# ----------------------------------------------------------------------------------------------

RGB_ATOL = 2e-3


def _merge_hint(got: torch.Tensor, lab: torch.Tensor) -> str:
    if got.min() < -1e-6 or got.max() > 1 + 1e-6:
        return (f" — clamp the result to [0, 1] (got values in [{float(got.min()):.3g}, "
                f"{float(got.max()):.3g}]): .clamp(0, 1)")
    variants = {
        "did you apply the sRGB gamma at the end (1.055 c^(1/2.4) - 0.055, or 12.92 c for "
        "c <= 0.0031308)?": _rgb_variant(lab, gamma=False),
        "did you multiply by the D65 white (0.95047, 1.0, 1.08883)? D50 is the wrong white "
        "point here": _rgb_variant(lab, white=D50),
        "did you multiply X, Y, Z by the D65 white point (0.95047, 1.0, 1.08883)?":
            _rgb_variant(lab, white=NO_WHITE),
        "L comes in [0, 100]: fy = (L + 16) / 116": _rgb_variant(
            torch.cat([lab[:, :1] * 100, lab[:, 1:]], dim=1)),
        "are a and b in the right order (fx = fy + a / 500, fz = fy - b / 200)?":
            _rgb_variant(lab[:, [0, 2, 1]]),
    }
    for hint, value in variants.items():
        if _matches(got, value, RGB_ATOL):
            return " — " + hint
    return ""


def _compare_merge(ex: str, fn: Callable, lab: torch.Tensor, where: str, guard: bool) -> None:
    lab = lab.float()
    L, ab = lab[:, :1].contiguous(), lab[:, 1:].contiguous()
    L_in, ab_in = L.clone(), ab.clone()
    got = as_tensor(ex, _call(ex, fn, L_in, ab_in, where=where, guard=guard), where)
    require_unchanged(ex, ("L", "ab"), (L_in, ab_in), (L, ab), where)
    n, _, h, w = lab.shape
    if tuple(got.shape) != (n, 3, h, w):
        raise AssertionError(f"{ex}: expected shape {(n, 3, h, w)}, got {tuple(got.shape)}"
                             f"{where}: concatenate [L, ab] on dim 1 and return RGB channels "
                             f"first")
    got = got.detach().double()
    expected = colorization.merge_lab(L.double(), ab.double())
    if not torch.isfinite(got).all():
        raise AssertionError(f"{ex}: got NaN or inf{where}: clamp before a fractional power "
                             f"(a negative base gives NaN)")
    if not torch.allclose(got, expected, atol=RGB_ATOL, rtol=0):
        i, c, r, s = _first_diff(got, expected)
        lab_text = ", ".join(f"{float(v):.1f}" for v in lab[i, :, r, s])
        raise AssertionError(f"{ex}: expected {'RGB'[c]} = {float(expected[i, c, r, s]):.4f}, "
                             f"got {float(got[i, c, r, s]):.4f} at pixel [{i}, :, {r}, {s}] (Lab "
                             f"({lab_text})){where}{_merge_hint(got, lab)}")


def _out_of_gamut(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Lab with L in [0, 100] and a, b in [-110, 110]: many are not sRGB colours."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.rand(n, 3, h, w, generator=g)
    return torch.cat([100 * lab[:, :1], 220 * lab[:, 1:] - 110], dim=1)


@quiet
def check_merge_lab(merge_lab: Callable, hidden: bool = False) -> None:
    """merge_lab(L (N, 1, H, W), ab (N, 2, H, W)) -> sRGB (N, 3, H, W) clamped to [0, 1]:
    merge_lab(*split_lab(x)) gives x back, and out-of-gamut Lab matches the reference clamped."""
    ex = "merge_lab"
    cases = [((2, 4, 4), 0)] if not hidden else [((1, 5, 7), 1), ((4, 8, 8), 2)]
    for (n, h, w), seed in cases:
        x = _rgb(n, h, w, seed)
        _compare_merge(ex, merge_lab, colorization.rgb_to_lab(x),
                       f" (Lab of random sRGB colours: expect them back, N={n}, {h}x{w})", hidden)
    if hidden:
        _compare_merge(ex, merge_lab, colorization.rgb_to_lab(_rgb(2, 4, 4, 3, high=0.06)),
                       " (Lab of dark colours, sRGB <= 0.06)", True)
    n, h, w = (2, 4, 4) if not hidden else (3, 6, 5)
    _compare_merge(ex, merge_lab, _out_of_gamut(n, h, w, 10 + hidden),
                   f" (Lab outside the sRGB gamut, N={n}, {h}x{w})", hidden)


# ----------------------------------------------------------------------------------------------
# 3. masked_reconstruction_loss(x, recon, mask)
# ----------------------------------------------------------------------------------------------


def _loss_variants(x, recon, mask) -> dict[str, torch.Tensor]:
    """Values of the usual mistakes, each keyed by the hint that fixes it."""
    m = mask.expand_as(x)
    sq = (m * (x - recon)) ** 2
    count = m.sum().clamp(min=1)
    return {
        "divide by the number of MASKED elements (mask.sum() x channels), not by all pixels":
            sq.sum() / x.numel(),
        "only the masked pixels count: multiply the difference by the mask":
            ((x - recon) ** 2).mean(),
        "did you square the differences?": (m * (x - recon)).abs().sum() / count,
        "did you square the differences (not sum them signed)?": (m * (x - recon)).sum() / count,
        "count every channel: divide by mask.sum() x C (the mask has one channel)":
            sq.sum() / mask.sum().clamp(min=1),
        "the loss is the squared norm, not the norm": sq.sum().sqrt() / count,
        "average the sum over the masked elements": sq.sum(),
        "divide the batch's sum by the batch's count of masked elements, not image by image "
        "(a mean of per-image means weighs an image with a small hole as much as one with a "
        "large hole)":
            (sq.flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)).mean(),
    }


def _constructed_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """N=2, C=3, 4x4; a 2x2 block masked per image; recon = x + 2 on the mask and x - 5 off it:
    the loss is exactly 2^2 = 4 (the -5 outside the mask must not count)."""
    x = torch.full((2, 3, 4, 4), 0.5)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, 0:2, 0:2] = 1
    mask[1, :, 2:4, 1:3] = 1
    recon = torch.where(mask.bool(), x + 2, x - 5)
    return x, recon, mask


def _compare_loss(ex: str, fn: Callable, x, recon, mask, expected: float | None, where: str,
                  guard: bool) -> None:
    x, recon, mask = x.float(), recon.float(), mask.float()
    r = recon.clone().requires_grad_(guard)
    x_in, mask_in = x.clone(), mask.clone()
    got = as_tensor(ex, _call(ex, fn, x_in, r, mask_in, where=where, guard=guard), where)
    require_unchanged(ex, ("x", "recon", "mask"), (x_in, r, mask_in), (x, recon, mask), where)
    if got.numel() != 1:
        raise AssertionError(f"{ex}: expected a scalar (the mean over all masked elements), got "
                             f"shape {tuple(got.shape)}{where}: sum over everything, then divide")
    got = scalar(ex, got, where)
    if expected is None:
        expected = float(inpainting.masked_reconstruction_loss(x, recon, mask))
    if not math.isfinite(float(got)):
        raise AssertionError(f"{ex}: expected {expected:.4f}, got {float(got)}{where}: when "
                             f"nothing is masked return 0 (divide by mask.sum().clamp(min=1) "
                             f"x channels)")
    if abs(float(got) - expected) > 1e-5 * max(1.0, abs(expected)):
        hint = ""
        for text, value in _loss_variants(x, recon, mask).items():
            if abs(float(got) - float(value)) <= 1e-5 * max(1.0, abs(float(value))):
                hint = " — " + text
                break
        raise AssertionError(f"{ex}: expected {expected:.4f}, got {float(got):.4f}{where}{hint}")
    if not guard:
        if mask.any():  # with nothing masked a constant 0 is allowed
            require_graph(ex, lambda r: _call(ex, fn, x.clone(), r, mask.clone(), where=where),
                          (recon,), where, ("recon",))  # the gradient that trains: via recon
        return
    nothing_masked = not bool(mask.any())
    if nothing_masked and not got.requires_grad:
        return  # a constant 0, as the exercise allows: its gradient is 0 anyway
    if not got.requires_grad:
        raise AssertionError(f"{ex}: the loss carries no gradient{where}: keep the computation "
                             f"in torch (no .item(), numpy or torch.no_grad())")
    (g,) = _call(ex, torch.autograd.grad, got, (r,), where=where + " in backward")
    e = recon.clone().requires_grad_()
    (eg,) = torch.autograd.grad(inpainting.masked_reconstruction_loss(x, e, mask), (e,))
    if not torch.isfinite(g).all():
        raise AssertionError(f"{ex}: the value is right, but its gradient is NaN{where}: guard "
                             "the division itself with .clamp(min=1); a 0 / 0 replaced "
                             "afterwards (nan_to_num, torch.where) still back-propagates NaN")
    if not torch.allclose(g, eg, atol=1e-6, rtol=1e-4):
        raise AssertionError(f"{ex}: the gradient with respect to recon differs from the "
                             f"reference by up to {float((g - eg).abs().max()):.2g}{where}")


@quiet
def check_masked_reconstruction_loss(masked_reconstruction_loss: Callable,
                                     hidden: bool = False) -> None:
    """masked_reconstruction_loss(x (N, C, H, W), recon (N, C, H, W), mask (N, 1, H, W)):
    sum of (mask * (x - recon))^2 / (mask.sum() * C); closed-form cases (hidden: random cases,
    one and three channels, and the gradient)."""
    ex = "masked_reconstruction_loss"
    fn = masked_reconstruction_loss
    x, recon, mask = _constructed_case()
    _compare_loss(ex, fn, x, recon, mask, 4.0,
                  " (N=2, C=3, 4x4, a 2x2 block masked, recon = x + 2 on the mask, x - 5 off "
                  "it)", hidden)
    g = torch.Generator().manual_seed(int(hidden))
    x, recon = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    mse = float(((x - recon) ** 2).mean())
    _compare_loss(ex, fn, x, recon, torch.ones(2, 1, 4, 4), mse,
                  " (mask all ones: the plain mean squared error)", hidden)
    _compare_loss(ex, fn, x, recon, torch.zeros(2, 1, 4, 4), 0.0,
                  " (mask all zeros: nothing to reconstruct, expect 0)", hidden)
    if hidden:
        for seed, (n, c, size, block) in enumerate([(3, 1, 8, 3), (4, 3, 8, 4), (2, 3, 16, 8)]):
            gen = torch.Generator().manual_seed(100 + seed)
            x, recon = torch.rand(n, c, size, size, generator=gen), torch.rand(
                n, c, size, size, generator=gen)
            mask = inpainting.random_block_mask(n, size, block, gen)
            _compare_loss(ex, fn, x, recon, mask, None,
                          f" (random images, N={n}, C={c}, {size}x{size}, {block}x{block} "
                          f"blocks)", True)
        # holes of different sizes: the mean over all masked elements of the batch is not the
        # mean of the per-image means
        gen = torch.Generator().manual_seed(103)
        x, recon = torch.rand(3, 2, 6, 6, generator=gen), torch.rand(3, 2, 6, 6, generator=gen)
        mask = torch.zeros(3, 1, 6, 6)
        mask[0, :, 1:2, 1:2] = 1  # 1 pixel
        mask[1, :, 0:3, 2:6] = 1  # 12 pixels
        mask[2, :, 2:6, 0:5] = 1  # 20 pixels
        _compare_loss(ex, fn, x, recon, mask, None,
                      " (random images, N=3, C=2, 6x6, holes of 1, 12 and 20 pixels)", True)
