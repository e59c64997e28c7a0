"""Checks for 07_mae: patchify, unpatchify, random_masking, mae_loss, mae_step. See
sslkit.grading for the conventions."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch

from sslkit import augment, losses
from sslkit.grading.guard import (
    as_tensor,
    call,
    close,
    match_step,
    match_value,
    quiet,
    randn,
    require_grad,
    require_graph,
    require_unchanged,
    scalar,
    stale_gradients,
    train_mode_kept,
)
from sslkit.methods import cpc
from sslkit.methods.mae import MAE
from sslkit.models import vit

# The kit's other ways of cutting an image into a grid do the whole exercise too.
_PATCH_REFS = {"sslkit.models.vit.patchify": vit.patchify,
               "sslkit.models.vit.unpatchify": vit.unpatchify,
               "sslkit.augment.split_tiles": augment.split_tiles,
               "sslkit.augment.merge_tiles": augment.merge_tiles,
               "sslkit.methods.cpc.patch_grid": cpc.patch_grid}
REFERENCES = {
    "patchify": _PATCH_REFS,
    "unpatchify": _PATCH_REFS,
    "random_masking": {"sslkit.models.vit.random_masking": vit.random_masking},
    "mae_loss": {"sslkit.losses.mae_loss": losses.mae_loss,
                 "sslkit.losses.mae_loss_loop": losses.mae_loss_loop},
    # The step exercise follows the rule of every notebook's step (04's simclr_step, 06's
    # dino_step): it may call the kit's versions of this notebook's earlier exercises
    # (vit.patchify, losses.mae_loss, vit.random_masking through forward_encoder), so that a
    # student whose loss is broken loses the loss's points only, not the step's too, and the
    # model's encoder and decoder stages, which the exercise hands out. Blocked is only what
    # does the step's own work: MAE.forward_loss (the target patchified from the images, the
    # model's norm_pix, the loss), MAE.loss_on (encoder, decoder and that loss) and MAE.forward.
    "mae_step": {"sslkit.methods.mae.MAE.forward": MAE.forward,
                 "sslkit.methods.mae.MAE.loss_on": MAE.loss_on,
                 "sslkit.methods.mae.MAE.forward_loss": MAE.forward_loss},
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    """guard.call with this notebook's references blocked when guard is True."""
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


def _images(n: int, c: int, side: int, seed: int) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed))


def _same(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return got.shape == expected.shape and torch.allclose(got.to(expected.dtype), expected)


# ----------------------------------------------------------------------------------------------
# 1. patchify(imgs, p) -> (N, L, p*p*C)  and  2. unpatchify(patches, p, channels) -> images
# ----------------------------------------------------------------------------------------------

PATCH_CASES = {False: [(2, 1, 8, 4, 0)],
               True: [(1, 1, 4, 2, 1), (3, 3, 8, 4, 2), (2, 3, 12, 4, 3), (2, 2, 6, 3, 4)]}


def _patchify_variants(x: torch.Tensor, p: int) -> dict[str, torch.Tensor]:
    """The values of the usual mistakes, to name the one an answer made."""
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // p, p, w // p, p)
    return {
        "flatten each patch as (row p, column q, channel c): channels last":
            blocks.permute(0, 2, 4, 1, 3, 5).reshape(n, -1, p * p * c),
        "number the patches row by row (patch row first, then patch column)":
            blocks.permute(0, 4, 2, 3, 5, 1).reshape(n, -1, p * p * c),
        "split each image into patches (reshape to (N, C, H/p, p, W/p, p) and permute), do not "
        "just reshape the pixels": x.reshape(n, -1, p * p * c),
    }


@quiet
def check_patchify(patchify: Callable, hidden: bool = False) -> None:
    """patchify gives the reference's (N, L, p*p*C) patches in MAE's (h, w, p, q, c) order."""
    ex = "patchify"
    # hidden: a non-square image too, L = (H/p)(W/p) (unpatchify's images are square)
    cases = [(n, c, side, side, p, seed) for n, c, side, p, seed in PATCH_CASES[hidden]]
    for n, c, h, w, p, seed in cases + ([(2, 3, 8, 12, 4, 5)] if hidden else []):
        x = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))
        where = f" (images {(n, c, h, w)}, patch size {p})"
        got = as_tensor(ex, _call(ex, patchify, x.clone(), p, where=where, guard=hidden), where)
        expected = vit.patchify(x, p)
        if _same(got, expected):
            continue
        if got.shape != expected.shape:
            raise AssertionError(f"{ex}: expected shape {tuple(expected.shape)} (N, L, p*p*C), "
                                 f"got {tuple(got.shape)}{where}")
        hint = next((" — " + text for text, value in _patchify_variants(x, p).items()
                     if _same(got, value)), "")
        raise AssertionError(f"{ex}: the patches differ from the reference's{where}{hint}")


@quiet
def check_unpatchify(unpatchify: Callable, hidden: bool = False) -> None:
    """unpatchify inverts the reference's patchify: unpatchify(patchify(x, p), p, C) == x."""
    ex = "unpatchify"
    for n, c, side, p, seed in PATCH_CASES[hidden]:
        x = _images(n, c, side, seed)
        where = f" (images {(n, c, side, side)}, patch size {p})"
        got = as_tensor(ex, _call(ex, unpatchify, vit.patchify(x, p), p, c, where=where,
                                  guard=hidden), where)
        if got.shape != x.shape:
            raise AssertionError(f"{ex}: expected images of shape {tuple(x.shape)}, got "
                                 f"{tuple(got.shape)}{where}")
        if not _same(got, x):
            raise AssertionError(f"{ex}: unpatchify(patchify(x)) is not x{where} — undo "
                                 "patchify's steps in reverse: reshape to (N, H/p, W/p, p, p, C), "
                                 "permute back, reshape to (N, C, H, W)")


# ----------------------------------------------------------------------------------------------
# 3. random_masking(x, mask_ratio, noise) -> (x_kept, mask, ids_restore)
# ----------------------------------------------------------------------------------------------

# the second visible case keeps int(12 * 0.3) = 3 patches, where round() and ceil() keep 4
MASK_CASES = {False: [(2, 8, 3, 0.75, 0), (2, 12, 3, 0.7, 6)],
              True: [(1, 4, 2, 0.5, 1), (3, 10, 4, 0.7, 2), (2, 16, 5, 0.9, 3), (2, 6, 3, 0.0, 4),
                     (4, 9, 2, 0.4, 5)]}


def _masking_variants(x, ratio, noise) -> dict[str, tuple]:
    """The outputs of the usual mistakes, to name the one an answer made (the first that
    matches wins: at mask_ratio=0.5 an inverted mask equals the mask of the largest noise, and
    an answer whose x_kept is right has the inverted mask)."""
    n, length, _ = x.shape
    keep = int(length * (1 - ratio))
    mask_unrestored = torch.ones(n, length)
    mask_unrestored[:, :keep] = 0
    return {
        "mask must be 1 where a patch is REMOVED (masked), 0 where kept":
            (None, 1 - vit.random_masking(x, ratio, noise)[1], None),
        "keep the patches with the SMALLEST noise (argsort ascending)":
            vit.random_masking(x, ratio, -noise),
        "put the mask back in the original patch order: gather it with ids_restore":
            (None, mask_unrestored, None),
        "ids_restore is the argsort of ids_shuffle (the inverse permutation)":
            (None, None, noise.argsort(dim=1)),
        "x_kept lists the kept patches in the order of ids_shuffle (smallest noise first), not "
        "in their original order: gather them with ids_shuffle[:, :len_keep]":
            (x.gather(1, noise.argsort(1)[:, :keep].sort(1).values[..., None].expand(
                -1, -1, x.shape[2])), None, None),
    }


def _as_three(ex: str, result, where: str):
    if not isinstance(result, tuple) or len(result) != 3:
        raise AssertionError(f"{ex}: expected (x_kept, mask, ids_restore), got "
                             f"{type(result).__name__}{where}")
    return [as_tensor(ex, r, where) for r in result]


@quiet
def check_random_masking(random_masking: Callable, hidden: bool = False) -> None:
    """With the noise given, the same kept tokens, mask and ids_restore as MAE's algorithm."""
    ex = "random_masking"
    for n, length, d, ratio, seed in MASK_CASES[hidden]:
        x = randn(n, length, d, seed=seed)
        noise = torch.rand(n, length, generator=torch.Generator().manual_seed(seed + 7))
        where = f" (x of shape {(n, length, d)}, mask_ratio={ratio}, noise given)"
        kept, mask, ids = _as_three(ex, _call(ex, random_masking, x.clone(), ratio, noise.clone(),
                                              where=where, guard=hidden), where)
        e_kept, e_mask, e_ids = vit.random_masking(x, ratio, noise)
        variants = _masking_variants(x, ratio, noise)
        for name, got, expected, pos in (("x_kept", kept, e_kept, 0), ("mask", mask, e_mask, 1),
                                         ("ids_restore", ids, e_ids, 2)):
            if name == "mask" and got.shape == expected.shape and not got.dtype.is_floating_point:
                # a bool mask compares equal as floats, then breaks `images * (1 - mask)`
                raise AssertionError(f"{ex}: expected a float mask (1.0 = hidden, 0.0 = kept), "
                                     f"got {got.dtype}{where}: build it with torch.ones(N, L) "
                                     "and set the kept entries to 0 (or convert with .float())")
            if _same(got.float(), expected.float()):
                continue
            if got.shape != expected.shape:
                keep = (f" — keep int(L * (1 - mask_ratio)) = {e_kept.shape[1]} patches (round "
                        "down)" if name == "x_kept" and got.ndim == 3 else "")
                raise AssertionError(f"{ex}: expected {name} of shape {tuple(expected.shape)}, "
                                     f"got {tuple(got.shape)}{where}{keep}")
            hint = next((" — " + text for text, value in variants.items()
                         if value[pos] is not None and _same(got.float(), value[pos].float())), "")
            raise AssertionError(f"{ex}: {name} differs from the reference's{where}{hint}")
    if hidden:  # without noise: fresh random masks, each with the right number of hidden patches
        x = randn(4, 12, 3, seed=9)
        where = " (x of shape (4, 12, 3), mask_ratio=0.75, noise=None)"
        masks = [_as_three(ex, _call(ex, random_masking, x, 0.75, None, where=where,
                                     guard=True), where)[1] for _ in range(2)]
        if any(m.shape != (4, 12) or not torch.equal(m.sum(1).float(), torch.full((4,), 9.0))
               for m in masks):
            raise AssertionError(f"{ex}: each row of the mask must hide 9 of 12 patches{where}")
        if torch.equal(masks[0], masks[1]):
            raise AssertionError(f"{ex}: two calls gave the same mask{where}: draw the noise "
                                 "with torch.rand(N, L) when none is given")


# ----------------------------------------------------------------------------------------------
# 4. mae_loss(pred, target, mask, norm_pix)
# ----------------------------------------------------------------------------------------------

LOSS_CASES = {False: [(2, 6, 4, False, 0), (2, 6, 4, True, 0)],
              True: [(1, 4, 2, False, 1), (3, 8, 12, True, 2), (4, 16, 48, True, 3),
                     (2, 5, 3, False, 4)]}


def _loss_variants(pred, target, mask, norm_pix) -> dict[str, torch.Tensor]:
    def value(t, m, reduce_patch=torch.mean):
        per_patch = reduce_patch((pred - t) ** 2, dim=-1)
        return (per_patch * m).sum() / m.sum()

    mean = target.mean(-1, keepdim=True)
    biased = (target - mean) / (target.var(-1, keepdim=True, unbiased=False) + 1e-6) ** 0.5
    normed = (target - mean) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    t = normed if norm_pix else target
    out = {
        "average over the masked patches only (mask = 1), not every patch":
            value(t, torch.ones_like(mask)),
        "average over the visible patches? mask = 1 marks the HIDDEN ones": value(t, 1 - mask),
        "average the squared error over the P pixels of a patch (mean, not sum)":
            value(t, mask, torch.sum),
        "divide by the number of hidden patches (mask.sum()), not by N·L: .mean() counts the "
        "visible patches' zeros too": (((pred - t) ** 2).mean(-1) * mask).mean(),
        "average over every hidden patch of the batch at once, sum / mask.sum() (images hide "
        "different numbers of patches here)":
            ((((pred - t) ** 2).mean(-1) * mask).sum(1) / mask.sum(1)).mean(),
    }
    if norm_pix:
        out["norm_pix: use the unbiased variance (torch.var's default) + 1e-6"] = value(biased,
                                                                                        mask)
        out["norm_pix=True: normalise each target patch by its own mean and variance"] = value(
            target, mask)
        outside = (target - mean) / (target.var(-1, keepdim=True) ** 0.5 + 1e-6)
        out["norm_pix: add the 1e-6 to the variance, inside the square root"] = value(outside,
                                                                                      mask)
        over_l = (target - target.mean(1, keepdim=True)) / (
            target.var(1, keepdim=True) + 1e-6) ** 0.5
        out["norm_pix: normalise each patch over its own P values (dim=-1), not over the "
            "patches"] = value(over_l, mask)
        with_std = (target - mean) / (target.std(-1, keepdim=True) + 1e-6) ** 0.5
        out["norm_pix: divide by sqrt(variance + 1e-6), the variance (.var), not the standard "
            "deviation"] = value(with_std, mask)
        pred_normed = (pred - pred.mean(-1, keepdim=True)) / (
            pred.var(-1, keepdim=True) + 1e-6) ** 0.5
        out["norm_pix: normalise the target only; the prediction is compared as it is"] = (
            ((pred_normed - normed) ** 2).mean(-1) * mask).sum() / mask.sum()
    else:
        out["norm_pix=False: compare with the raw target"] = value(normed, mask)
    return out


_NO_GRADIENT = {"target": "the target is data, not a prediction: use target.detach()"}


def _run_loss(mae_loss: Callable, mask, norm_pix: bool, where: str, pred, target):
    return _call("mae_loss", mae_loss, pred, target, mask.clone(), norm_pix, where=where)


def _case(n: int, length: int, p: int, seed: int):
    pred = randn(n, length, p, seed=seed)
    target = randn(n, length, p, seed=seed + 1) * 2 + 0.5
    mask = (torch.rand(n, length, generator=torch.Generator().manual_seed(seed + 2)) < 0.6).float()
    mask[:, 0], mask[:, -1] = 1.0, 0.0  # at least one hidden and one visible patch per image
    return pred, target, mask


@quiet
def check_mae_loss(mae_loss: Callable, hidden: bool = False) -> None:
    """MAE's loss gives the reference value (hidden: more cases, no gradient to visible patches
    or to the target, and no delegation)."""
    ex = "mae_loss"
    for n, length, p, norm_pix, seed in LOSS_CASES[hidden]:
        pred, target, mask = _case(n, length, p, seed)
        where = f" (N={n}, L={length}, P={p}, norm_pix={norm_pix})"
        pred_in = pred.clone().requires_grad_(hidden)
        target_in = target.clone().requires_grad_(hidden)
        mask_in = mask.clone()
        got = scalar(ex, _call(ex, mae_loss, pred_in, target_in, mask_in, norm_pix,
                               where=where, guard=hidden), where)
        require_unchanged(ex, ("pred", "target", "mask"), (pred_in, target_in, mask_in),
                          (pred, target, mask), where)
        expected = losses.mae_loss(pred, target, mask, norm_pix)
        if not close(got, expected):
            match_value(ex, got, expected, _loss_variants(pred, target, mask, norm_pix), where)
        if not hidden:  # the gradient reaches pred, not the target
            run = functools.partial(_run_loss, mae_loss, mask, norm_pix, where)
            require_graph(ex, run, (pred, target), where, ("pred", "target"), _NO_GRADIENT)
            continue
        require_grad(ex, got, where)
        grad_fn = functools.partial(torch.autograd.grad, allow_unused=True)
        grads = _call(ex, grad_fn, got, [pred_in, target_in], where=where + " in backward")
        if grads[0] is None or float(grads[0][mask == 0].abs().max()) != 0.0:
            raise AssertionError(f"{ex}: the predictions of visible patches get a gradient"
                                 f"{where}: multiply by the mask before averaging")
        if grads[1] is not None and float(grads[1].abs().max()) > 0:
            raise AssertionError(f"{ex}: a gradient reaches the target{where}: detach it (the "
                                 "pixels are data, not a prediction)")
    if hidden:
        # A nearly flat patch (variance ~1e-8, below the 1e-6): sqrt(var + 1e-6) ~ 1e-3 is not
        # sqrt(var) + 1e-6 ~ 1e-4, so where the 1e-6 goes shows.
        pred, target, mask = _case(2, 6, 4, 5)
        target[:, 0] = 0.3 + 1e-4 * randn(2, 4, seed=6)  # patch 0 is hidden (mask = 1)
        where = " (N=2, L=6, P=4, norm_pix=True, patch 0 nearly flat: variance about 1e-8)"
        got = scalar(ex, _call(ex, mae_loss, pred.clone(), target.clone(), mask.clone(), True,
                               where=where, guard=True), where)
        expected = losses.mae_loss(pred, target, mask, True)
        if not close(got, expected):
            match_value(ex, got, expected, _loss_variants(pred, target, mask, True), where)


# ----------------------------------------------------------------------------------------------
# 5. mae_step(model, optimizer, imgs, mask_ratio, noise) -> loss as a float
# ----------------------------------------------------------------------------------------------


def _model(seed: int, norm_pix: bool) -> MAE:
    torch.manual_seed(seed)
    return MAE(image_size=8, patch_size=2, in_channels=1, dim=8, depth=1, heads=2,
               decoder_dim=4, decoder_depth=1, decoder_heads=2, norm_pix=norm_pix)


def _optimizer(model: MAE) -> torch.optim.Optimizer:
    params = [q for q in model.parameters() if q.requires_grad]
    return torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05)


def _reference_step(model: MAE, optimizer, imgs, mask_ratio, noise) -> float:
    latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio, noise)
    pred = model.forward_decoder(latent, ids_restore)
    loss = losses.mae_loss(pred, vit.patchify(imgs, model.patch_size), mask, model.norm_pix)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_hint(model: MAE, imgs, mask_ratio, noise, got: float) -> str:
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids_restore)
        target = vit.patchify(imgs, model.patch_size)
        hints = {"use the model's norm_pix setting (model.norm_pix)":
                     losses.mae_loss(pred, target, mask, not model.norm_pix),
                 "the loss is on the masked patches only: pass the mask from forward_encoder":
                     losses.mae_loss(pred, target, torch.ones_like(mask), model.norm_pix),
                 "mask = 1 marks the hidden patches: pass the mask from forward_encoder as it "
                 "is": losses.mae_loss(pred, target, 1 - mask, model.norm_pix)}
    return next((" — " + h for h, v in hints.items() if abs(float(v) - got) < 1e-5),
                " — did you pass mask_ratio and noise to model.forward_encoder? If your mae_loss "
                "or patchify does not pass its tests yet, call sslkit.losses.mae_loss or "
                "sslkit.models.vit.patchify here")


def _check_steps(ex: str, mae_step: Callable, seed: int, steps: int, norm_pix: bool,
                 guard: bool) -> None:
    model = _model(seed, norm_pix)
    reference = copy.deepcopy(model)
    optimizer, ref_opt = _optimizer(model), _optimizer(reference)
    g = torch.Generator().manual_seed(seed + 1)
    imgs = torch.rand(4, 1, 8, 8, generator=g)
    where = (f" (4 images 1x8x8, patch size 2, mask_ratio=0.75, norm_pix={norm_pix}, AdamW "
             "lr=1e-2)")
    for step in range(steps):
        noise = torch.rand(4, 16, generator=g)
        label = f"step {step + 1}: " if steps > 1 else ""
        stale_gradients(model, reference, seed + step)  # zero_grad must clear them
        before = copy.deepcopy(model)
        with train_mode_kept(ex, {"model": model}, label, where):
            got = _call(ex, mae_step, model, optimizer, imgs.clone(), 0.75, noise.clone(),
                        where=where, guard=guard)
        expected = _reference_step(reference, ref_opt, imgs, 0.75, noise)
        match_step(ex, got, expected, model, before, reference, label, where,
                   hint=functools.partial(_step_hint, before, imgs, 0.75, noise, got))


@quiet
def check_mae_step(mae_step: Callable, hidden: bool = False) -> None:
    """One step from the same seed, weights, images and noise gives the reference's loss and
    updated weights (reference: forward_encoder, forward_decoder, mae_loss, AdamW step)."""
    ex = "mae_step"
    if not hidden:
        _check_steps(ex, mae_step, seed=0, steps=1, norm_pix=True, guard=False)
    else:
        _check_steps(ex, mae_step, seed=1, steps=2, norm_pix=True, guard=True)
        _check_steps(ex, mae_step, seed=2, steps=1, norm_pix=False, guard=True)
