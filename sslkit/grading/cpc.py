"""Checks for 08_cpc: patch_grid, column_context, cpc_loss, cpc_step. See sslkit.grading for
the conventions."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import losses
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
from sslkit.methods import cpc as cpc_method

REFERENCES = {
    "patch_grid": {"sslkit.methods.cpc.patch_grid": cpc_method.patch_grid},
    "column_context": {
        "sslkit.methods.cpc.column_context": cpc_method.column_context,
        "sslkit.methods.cpc.CPCEncoder.encode": cpc_method.CPCEncoder.encode,
    },
    "cpc_loss": {
        "sslkit.losses.cpc_loss": losses.cpc_loss,
        "sslkit.losses.cpc_loss_loop": losses.cpc_loss_loop,
        "sslkit.losses.cpc_logits": losses.cpc_logits,
    },
    # The step exercise follows the rule of every notebook's step (04's simclr_step, 06's
    # dino_step): it may call the kit's versions of this notebook's earlier exercises
    # (column_context, cpc_loss and its pieces), and the kit's helpers for the encoding
    # (encode_patches, CPCEncoder.encode: z and c, not yet a loss), so that a student whose loss
    # is broken loses the loss's points only, not the step's too. Blocked is only what does the
    # whole step: CPC.loss_on_patches (encoding, contexts and loss) and CPC.forward.
    "cpc_step": {
        "sslkit.methods.cpc.CPC.loss_on_patches": cpc_method.CPC.loss_on_patches,
        "sslkit.methods.cpc.CPC.forward": cpc_method.CPC.forward,
    },
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    """guard.call with this notebook's references blocked when guard is True."""
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


# gradients of a student's output; None for an input the output does not depend on
_grad = functools.partial(torch.autograd.grad, allow_unused=True)


def _first_match(got: torch.Tensor, variants: dict[str, torch.Tensor]) -> str:
    """' — hint' for the first known mistake whose output equals got, else ''."""
    for text, value in variants.items():
        if value.shape == got.shape and torch.allclose(got, value, atol=1e-5):
            return " — " + text
    return ""


# ----------------------------------------------------------------------------------------------
# 1. patch_grid(images, patch, stride) -> (N, rows, cols, C, patch, patch)
# ----------------------------------------------------------------------------------------------


@quiet
def check_patch_grid(patch_grid: Callable, hidden: bool = False) -> None:
    """Every patch equals the slice of the image it comes from (hidden: non-square images,
    several channels, non-overlapping and single-patch grids, and no delegation)."""
    ex = "patch_grid"
    cases = [(2, 1, 8, 8, 4, 2, 0)] if not hidden else [
        (3, 2, 11, 14, 5, 3, 1), (2, 3, 8, 8, 4, 4, 2), (1, 1, 6, 6, 6, 2, 3),
        (2, 1, 9, 7, 3, 2, 4)]
    for n, ch, h, w, patch, stride, seed in cases:
        x = randn(n, ch, h, w, seed=seed)
        where = f" (images {tuple(x.shape)}, patch={patch}, stride={stride})"
        got = as_tensor(ex, _call(ex, patch_grid, x.clone(), patch, stride, where=where,
                                  guard=hidden), where)
        expected = cpc_method.patch_grid(x, patch, stride)
        if got.shape != expected.shape:
            hint = ""
            if got.shape == expected.permute(0, 3, 1, 2, 4, 5).shape:
                hint = " — put the grid axes first: permute to (N, rows, cols, C, patch, patch)"
            raise AssertionError(f"{ex}: expected shape {tuple(expected.shape)}, got "
                                 f"{tuple(got.shape)}{where}{hint}")
        got = got.to(expected.dtype)  # a float64 buffer is a fine answer too
        if not torch.allclose(got, expected):
            variants = {
                "rows come from the height (dim 2), columns from the width (dim 3)":
                    expected.transpose(1, 2).reshape(expected.shape),
                "each patch is upside down or transposed: keep its (height, width) order":
                    expected.transpose(-1, -2).reshape(expected.shape),
            }
            raise AssertionError(f"{ex}: patch [n, i, j] should be images[n, :, i*stride : "
                                 f"i*stride + patch, j*stride : j*stride + patch]{where}"
                                 f"{_first_match(got, variants)}")


# ----------------------------------------------------------------------------------------------
# 2. column_context(g_ar, z) -> c (N, rows, cols, H)
# ----------------------------------------------------------------------------------------------


def _context_variants(gru: nn.GRU, z: torch.Tensor) -> dict[str, torch.Tensor]:
    n, rows, cols, d = z.shape

    def along(seq_of: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> GRU outputs (B, L, H)
        return gru(seq_of)[0]

    along_rows = along(z.reshape(n * rows, cols, d)).reshape(n, rows, cols, -1)
    upward = cpc_method.column_context(gru, z.flip(1)).flip(1)
    whole = along(z.reshape(n, rows * cols, d)).reshape(n, rows, cols, -1)
    mixed = along(z.reshape(n * cols, rows, d)).reshape(n, cols, rows, -1).permute(0, 2, 1, 3)
    out, h_n = gru(z.permute(0, 2, 1, 3).reshape(n * cols, rows, d))
    return {
        "permute z to (N, C, R, D) before reshaping it to (N·C, R, D): a reshape alone cuts the "
        "grid into sequences that mix rows and columns": mixed,
        "put the GRU output (N·C, R, H) back with reshape(N, C, R, H), then permute(0, 2, 1, 3)":
            out.reshape(n, rows, cols, -1),
        "c is the GRU output at every row (output, the first value g_ar returns), not its last "
        "hidden state h_n": h_n[-1].reshape(n, 1, cols, -1).expand(n, rows, cols, -1),
        "run the GRU down each column (over the rows), not along each row": along_rows,
        "read each column from the top (row 0) down, not from the bottom up": upward,
        "one sequence per (image, column): do not run the GRU over the whole grid at once": whole,
    }


@quiet
def check_column_context(column_context: Callable, hidden: bool = False) -> None:
    """c equals a GRU run down every column (hidden: more grids, causality, the gradient
    reaches z, and no delegation)."""
    ex = "column_context"
    cases = [(2, 4, 3, 5, 6, 0)] if not hidden else [(3, 5, 2, 4, 3, 1), (1, 3, 4, 6, 6, 2),
                                                       (2, 2, 5, 3, 4, 3)]
    for n, rows, cols, d, h, seed in cases:
        torch.manual_seed(seed)
        gru = nn.GRU(d, h, batch_first=True)
        z = randn(n, rows, cols, d, seed=seed + 10)
        z_in = z.clone().requires_grad_(hidden)
        where = f" (z of shape {tuple(z.shape)}, GRU {d} -> {h})"
        got = as_tensor(ex, _call(ex, column_context, gru, z_in, where=where, guard=hidden),
                        where)
        with torch.no_grad():
            expected = cpc_method.column_context(gru, z)
        if got.shape != expected.shape:
            raise AssertionError(f"{ex}: expected c of shape {tuple(expected.shape)} "
                                 f"(N, rows, cols, H), got {tuple(got.shape)}{where}")
        if not torch.allclose(got.detach().to(expected.dtype), expected, atol=1e-5):
            with torch.no_grad():
                hint = _first_match(got.detach().to(expected.dtype), _context_variants(gru, z))
            raise AssertionError(f"{ex}: c differs from the GRU run down each column by up to "
                                 f"{float((got.detach() - expected).abs().max()):.2g}{where}"
                                 f"{hint}")
        if not hidden:  # the context trains the patch encoder too: its gradient reaches z
            require_graph(ex, lambda v, g=gru, w=where: _call(ex, column_context, g, v, where=w),
                          (z,), where, ("z",), what="c")
        else:
            require_grad(ex, got, where)
            grad = _call(ex, _grad, got.sum(), z_in, where=where + " in backward")
            if grad[0] is None or not bool(grad[0].abs().max() > 0):
                raise AssertionError(f"{ex}: no gradient reaches z{where}: keep z in the graph "
                                     "(no .detach()), so that the patch encoder learns")


# ----------------------------------------------------------------------------------------------
# 3. cpc_loss(z, c, W)
# ----------------------------------------------------------------------------------------------


def _variant_loss(z, c, W, candidates: str = "all", reduce: str = "per_step", first: int = 1,
                  transpose: bool = False, upwards: bool = False, offset: int = 0,
                  normalise: bool = False) -> torch.Tensor:
    """cpc_loss with one of the usual mistakes (a plain loop: the cases are tiny). upwards: the
    context of row t + k predicts row t; offset: the positive is row t + k + offset."""
    n, rows, cols, _ = z.shape
    per_step, pooled = [], []
    for k in range(first, first + W.shape[0]):
        terms = []
        for b in range(n):
            for t in range(rows - k):
                for j in range(cols):
                    w = W[k - first]
                    pred = (w.T if transpose else w) @ c[b, t + k if upwards else t, j]
                    row = t if upwards else t + k + offset  # of the positive
                    if candidates == "all":
                        cand, pos = z.reshape(-1, z.shape[-1]), (b * rows + row) * cols + j
                    elif candidates == "column_major":  # the labels of the (n, row, col) order
                        cand = z.transpose(1, 2).reshape(-1, z.shape[-1])
                        pos = (b * rows + row) * cols + j
                    elif candidates == "below":  # only rows k.. of every image
                        cand = z[:, k:].reshape(-1, z.shape[-1])
                        pos = (b * (rows - k) + t) * cols + j
                    elif candidates == "image":
                        cand, pos = z[b].reshape(-1, z.shape[-1]), (t + k) * cols + j
                    else:  # "row": row t + k of every image and column
                        cand, pos = z[:, t + k].reshape(-1, z.shape[-1]), b * cols + j
                    if normalise:
                        pred, cand = F.normalize(pred, dim=0), F.normalize(cand, dim=1)
                    scores = cand @ pred
                    terms.append(torch.logsumexp(scores, 0) - scores[pos])
        per_step.append(torch.stack(terms).mean())
        pooled += terms
    if reduce == "pooled":
        return torch.stack(pooled).mean()
    stacked = torch.stack(per_step)
    return stacked.sum() if reduce == "sum" else stacked.mean()


def _loss_variants(z, c, W) -> dict[str, torch.Tensor]:
    out = {
        "the candidates are every patch of the batch, from every image, not only this image's":
            _variant_loss(z, c, W, candidates="image"),
        "the candidates are every patch of the batch, from every row, not only row t + k":
            _variant_loss(z, c, W, candidates="row"),
        "average over the contexts of each step k first, then over the K steps":
            _variant_loss(z, c, W, reduce="pooled"),
        "take the mean over the K steps, not the sum": _variant_loss(z, c, W, reduce="sum"),
        "W[0] predicts 1 row ahead (k = 1), W[K - 1] K rows ahead":
            _variant_loss(z, c, W, first=0),
        "the context c[n, t, j] predicts the patch k rows BELOW: contexts c[:, :R - k], "
        "positives z[:, k:]": _variant_loss(z, c, W, upwards=True),
        "the positive of c[n, t, j] at step k is z[n, t + k, j], not z[n, t + k - 1, j]":
            _variant_loss(z, c, W, offset=-1),
        "flatten z to (M, D) in (n, row, col) order, z.reshape(-1, D), so that the positive "
        "z[n, t + k, j] is row (n·R + t + k)·C + j": _variant_loss(z, c, W,
                                                                   candidates="column_major"),
        "every patch of the batch is a candidate (M = N·R·C), not only rows k and below":
            _variant_loss(z, c, W, candidates="below"),
        "the score is the plain bilinear zᵀ W_k c: no normalisation (and no temperature)":
            _variant_loss(z, c, W, normalise=True),
    }
    if z.shape[-1] == c.shape[-1]:
        out["the score is zᵀ (W_k c): multiply c by W[k - 1], not by its transpose"] = \
            _variant_loss(z, c, W, transpose=True)
    return out


@quiet
def check_cpc_loss(cpc_loss: Callable, hidden: bool = False) -> None:
    """The reference value (hidden: more shapes, W square so a transposed map shows, the
    gradients with respect to z, c and W, and no delegation)."""
    ex = "cpc_loss"
    cases = [(2, 4, 3, 5, 6, 2, 0)] if not hidden else [
        (3, 3, 2, 4, 4, 2, 1), (1, 5, 1, 3, 5, 4, 2), (2, 2, 3, 6, 3, 1, 3), (2, 4, 2, 4, 4, 3, 4)]
    for n, rows, cols, d, h, k, seed in cases:
        z, c = randn(n, rows, cols, d, seed=seed), randn(n, rows, cols, h, seed=seed + 1)
        W = randn(k, d, h, seed=seed + 2) * 0.5
        where = f" (z {tuple(z.shape)}, c {tuple(c.shape)}, W {tuple(W.shape)})"
        inputs = [t.clone().requires_grad_(hidden) for t in (z, c, W)]
        got = scalar(ex, _call(ex, cpc_loss, *inputs, where=where, guard=hidden), where)
        require_unchanged(ex, ("z", "c", "W"), inputs, (z, c, W), where)
        expected = losses.cpc_loss(z, c, W)
        if not close(got, expected):
            match_value(ex, got, expected, _loss_variants(z, c, W), where)
        if not hidden:  # the loss trains g_enc (through z and c), g_ar (through c) and W
            require_graph(ex, functools.partial(_call, ex, cpc_loss, where=where), (z, c, W),
                          where, ("z", "c", "W"))
            continue
        require_grad(ex, got, where)
        got_grads = _call(ex, _grad, got, inputs, where=where + " in backward")
        ref_in = [t.clone().requires_grad_() for t in (z, c, W)]
        ref_grads = torch.autograd.grad(losses.cpc_loss(*ref_in), ref_in)
        for name, gg, eg in zip(("z", "c", "W"), got_grads, ref_grads):
            if gg is None or not torch.allclose(gg, eg, atol=1e-5, rtol=1e-4):
                raise AssertionError(f"{ex}: the gradient with respect to {name} differs from "
                                     f"the reference{where}: keep every step in torch (no "
                                     ".detach() or .item() inside the loss)")


# ----------------------------------------------------------------------------------------------
# 4. cpc_step(g_enc, g_ar, W, optimizer, patches) -> loss as a float
# ----------------------------------------------------------------------------------------------


class _Parts(nn.Module):
    """g_enc, g_ar and W together, so that one step's weights can be compared at once."""

    def __init__(self, seed: int, dim: int = 6, context_dim: int = 5, steps: int = 2):
        super().__init__()
        torch.manual_seed(seed)
        self.g_enc = cpc_method.PatchEncoder(1, width=4, dim=dim)
        self.g_ar = nn.GRU(dim, context_dim, batch_first=True)
        self.W = nn.Parameter(torch.randn(steps, dim, context_dim))


def _optimizer(parts: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(parts.parameters(), lr=0.5, momentum=0.9)


def _reference_step(parts: _Parts, optimizer, patches: torch.Tensor) -> float:
    z = cpc_method.encode_patches(parts.g_enc, patches)  # (N, R, Cc, D)
    c = cpc_method.column_context(parts.g_ar, z)  # (N, R, Cc, H)
    loss = losses.cpc_loss(z, c, parts.W)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_hint(parts: _Parts, patches: torch.Tensor, got: float) -> str:
    """Names the mistake whose loss ``got`` equals (parts: the weights before the step)."""
    n, rows, cols = patches.shape[:3]
    with torch.no_grad():
        encoded = parts.g_enc(patches.flatten(0, 2))  # (N·R·C, D)
        z = encoded.view(n, cols, rows, -1).transpose(1, 2)  # the grid put back column-major
        wrong_view = losses.cpc_loss(z, cpc_method.column_context(parts.g_ar, z), parts.W)
    if abs(float(wrong_view) - got) < 1e-5:
        return (" — put the grid axes back in the order they were flattened: "
                "g_enc(patches.flatten(0, 2)).view(N, R, C, D)")
    return (" — encode every patch with g_enc, run column_context, then cpc_loss(z, c, W); if "
            "your column_context or cpc_loss does not pass its tests yet, call "
            "sslkit.methods.cpc.column_context or sslkit.losses.cpc_loss here")


def _check_steps(ex: str, cpc_step: Callable, seed: int, steps: int, guard: bool) -> None:
    parts = _Parts(seed)
    ref = copy.deepcopy(parts)
    optimizer, ref_opt = _optimizer(parts), _optimizer(ref)
    g = torch.Generator().manual_seed(seed + 1)
    patches = torch.rand(3, 4, 2, 1, 6, 6, generator=g)  # (N, R, Cc, C, p, p)
    where = (f" (patches {tuple(patches.shape)}, K={parts.W.shape[0]}, SGD lr=0.5 momentum=0.9)")
    for step in range(steps):
        label = f"step {step + 1}: " if steps > 1 else ""
        stale_gradients(parts, ref, seed + step)  # zero_grad must clear them
        before = copy.deepcopy(parts)
        with train_mode_kept(ex, {"g_enc": parts.g_enc, "g_ar": parts.g_ar}, label, where):
            got = _call(ex, cpc_step, parts.g_enc, parts.g_ar, parts.W, optimizer,
                        patches.clone(), where=where, guard=guard)
        expected = _reference_step(ref, ref_opt, patches)
        if isinstance(got, float) and not math.isfinite(got):
            raise AssertionError(f"{ex}: {label}the loss is {got}{where}: check that every step "
                                 "k has contexts (rows - k > 0) and the scores stay finite")
        match_step(ex, got, expected, parts, before, ref, label, where,
                   hint=functools.partial(_step_hint, before, patches, got))


@quiet
def check_cpc_step(cpc_step: Callable, hidden: bool = False) -> None:
    """One step from the same weights and patches gives the reference's loss and weights
    (hidden: two steps, another seed, and no delegation)."""
    ex = "cpc_step"
    if not hidden:
        _check_steps(ex, cpc_step, seed=0, steps=1, guard=False)
    else:
        _check_steps(ex, cpc_step, seed=1, steps=2, guard=True)

