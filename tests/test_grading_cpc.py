"""Tests for sslkit.grading.cpc: for every graded exercise of 08_cpc, a correct answer passes the
visible and hidden checks, typical wrong answers fail with a one-line message, and answers that
delegate to the sslkit reference fail the hidden check."""

import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails, run_solution_cells
from torch import nn

from sslkit import losses
from sslkit.grading import cpc as grading
from sslkit.methods import cpc as cpc_method

NOTEBOOK = Path(__file__).parent.parent / "solutions" / "08_cpc" / "08_cpc.ipynb"
SOLUTION_CELLS = ("patch_grid", "column_context", "cpc_loss", "cpc_step")


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    namespace = {"torch": torch, "F": F, "nn": nn, "math": math}
    return run_solution_cells(NOTEBOOK, SOLUTION_CELLS, namespace)


# -- correct answers written independently of the notebook, to build wrong ones from ----------

def patch_grid(images, patch, stride):
    n, ch, h, w = images.shape
    rows, cols = (h - patch) // stride + 1, (w - patch) // stride + 1
    out = torch.empty(n, rows, cols, ch, patch, patch, dtype=images.dtype)
    for i in range(rows):
        for j in range(cols):
            top, left = i * stride, j * stride
            out[:, i, j] = images[:, :, top:top + patch, left:left + patch]
    return out


def column_context(g_ar, z):
    n, rows, cols, _ = z.shape
    columns = [g_ar(z[:, :, j])[0] for j in range(cols)]  # each (N, R, H)
    return torch.stack(columns, dim=2)  # (N, R, Cc, H)


def cpc_loss(z, c, W):
    n, rows, cols, d = z.shape
    cand = z.reshape(-1, d)
    per_step = []
    for k in range(1, W.shape[0] + 1):
        pred = c[:, : rows - k] @ W[k - 1].T  # (N, R-k, Cc, D)
        logits = pred.reshape(-1, d) @ cand.T
        labels = torch.arange(n * rows * cols).view(n, rows, cols)[:, k:].reshape(-1)
        per_step.append(F.cross_entropy(logits, labels))
    return torch.stack(per_step).mean()


def cpc_step(g_enc, g_ar, W, optimizer, patches):
    n, rows, cols = patches.shape[:3]
    z = g_enc(patches.reshape(n * rows * cols, *patches.shape[3:])).view(n, rows, cols, -1)
    loss = cpc_loss(z, column_context(g_ar, z), W)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


CHECKS = {
    "patch_grid": (grading.check_patch_grid, patch_grid),
    "column_context": (grading.check_column_context, column_context),
    "cpc_loss": (grading.check_cpc_loss, cpc_loss),
    "cpc_step": (grading.check_cpc_step, cpc_step),
}


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    check, answer = CHECKS[exercise]
    check(getattr(solution, exercise), hidden=hidden)  # the notebook's solution cell
    check(answer, hidden=hidden)


def test_the_sslkit_references_pass_the_visible_checks():
    grading.check_patch_grid(cpc_method.patch_grid)
    grading.check_column_context(cpc_method.column_context)
    grading.check_cpc_loss(losses.cpc_loss)
    grading.check_cpc_loss(losses.cpc_loss_loop)


# -- wrong answers -----------------------------------------------------------------------------

def test_patch_grid_wrong_answers():
    check = grading.check_patch_grid

    def channels_first(images, patch, stride):
        return images.unfold(2, patch, stride).unfold(3, patch, stride)  # (N, C, R, Cc, p, p)

    def rows_and_cols_swapped(images, patch, stride):
        return patch_grid(images, patch, stride).transpose(1, 2)

    def patches_transposed(images, patch, stride):
        return patch_grid(images, patch, stride).transpose(-1, -2)

    def no_overlap(images, patch, stride):
        return patch_grid(images, patch, patch)

    assert "permute" in fails(check, channels_first, False, "shape")
    # a square grid keeps the shape: the values show the swap
    assert "height" in fails(check, rows_and_cols_swapped, False, "patch")
    assert "transposed" in fails(check, patches_transposed, False, "patch")
    fails(check, no_overlap, False, "shape")
    fails(check, lambda *a: cpc_method.patch_grid(*a), True, "reference")
    fails(check, lambda *a: [1.0], False, "torch.Tensor")


def test_column_context_wrong_answers():
    check = grading.check_column_context

    def along_rows(g_ar, z):
        n, rows, cols, d = z.shape
        return g_ar(z.reshape(n * rows, cols, d))[0].reshape(n, rows, cols, -1)

    def bottom_up(g_ar, z):
        return column_context(g_ar, z.flip(1)).flip(1)

    def whole_grid(g_ar, z):
        n, rows, cols, d = z.shape
        return g_ar(z.reshape(n, rows * cols, d))[0].reshape(n, rows, cols, -1)

    def detached(g_ar, z):
        return column_context(g_ar, z.detach())

    assert "column" in fails(check, along_rows, False, "differs")
    assert "top" in fails(check, bottom_up, False, "differs")
    assert "whole grid" in fails(check, whole_grid, False, "differs")
    # the value is right, but nothing reaches the patch encoder: the visible check says so too
    fails(check, detached, False, "no gradient reaches z")
    fails(check, detached, True, "gradient")
    fails(check, lambda g, z: g(z.flatten(1, 2))[0], False, "shape")
    fails(check, lambda *a: cpc_method.column_context(*a), True, "reference")


def test_cpc_loss_wrong_answers():
    check = grading.check_cpc_loss

    def per_image(z, c, W):
        return torch.stack([cpc_loss(z[b:b + 1], c[b:b + 1], W) for b in range(len(z))]).mean()

    def summed_steps(z, c, W):
        return cpc_loss(z, c, W) * W.shape[0]

    def pooled(z, c, W):
        total, count = 0.0, 0
        for logits, labels in (_step(z, c, W, k) for k in range(W.shape[0])):
            total = total + F.cross_entropy(logits, labels, reduction="sum")
            count += len(labels)
        return total / count

    def transposed(z, c, W):
        return cpc_loss(z, c, W.transpose(1, 2))

    def shifted_steps(z, c, W):  # W[0] used to predict the same row
        n, rows, cols, d = z.shape
        per_step = []
        for k in range(0, W.shape[0]):
            pred = c[:, : rows - k] @ W[k].T
            logits = pred.reshape(-1, d) @ z.reshape(-1, d).T
            labels = torch.arange(n * rows * cols).view(n, rows, cols)[:, k:].reshape(-1)
            per_step.append(F.cross_entropy(logits, labels))
        return torch.stack(per_step).mean()

    def detached_w(z, c, W):
        return cpc_loss(z, c, W.detach())

    assert "every image" in fails(check, per_image, False, "expected")
    assert "sum" in fails(check, summed_steps, False, "expected")
    assert "each step k first" in fails(check, pooled, False, "expected")
    assert "W[0] predicts 1 row" in fails(check, shifted_steps, False, "expected")
    # W of the visible case is not square, so a transposed W cannot even be applied ...
    fails(check, transposed, False, "raised")
    # ... the hidden cases have square maps, where it runs and gives another value
    assert "transpose" in fails(check, transposed, True, "expected")
    fails(check, detached_w, False, "no gradient reaches W")  # visible too (it passed before)
    fails(check, detached_w, True, "gradient with respect to W")
    fails(check, lambda *a: losses.cpc_loss(*a), True, "reference")
    fails(check, lambda *a: losses.cpc_loss_loop(*a), True, "reference")
    fails(check, lambda *a: torch.zeros(3), False, "scalar")


def _step(z, c, W, k):
    """(logits, labels) of step k + 1 with every patch as a candidate."""
    n, rows, cols, d = z.shape
    pred = c[:, : rows - k - 1] @ W[k].T
    labels = torch.arange(n * rows * cols).view(n, rows, cols)[:, k + 1:].reshape(-1)
    return pred.reshape(-1, d) @ z.reshape(-1, d).T, labels


def test_cpc_step_wrong_answers():
    check = grading.check_cpc_step

    def no_update(g_enc, g_ar, W, optimizer, patches):
        n, rows, cols = patches.shape[:3]
        z = g_enc(patches.flatten(0, 2)).view(n, rows, cols, -1)
        return cpc_loss(z, column_context(g_ar, z), W).item()

    def no_zero_grad(g_enc, g_ar, W, optimizer, patches):
        n, rows, cols = patches.shape[:3]
        z = g_enc(patches.flatten(0, 2)).view(n, rows, cols, -1)
        loss = cpc_loss(z, column_context(g_ar, z), W)
        loss.backward()
        optimizer.step()
        return loss.item()

    def context_along_rows(g_enc, g_ar, W, optimizer, patches):
        n, rows, cols = patches.shape[:3]
        z = g_enc(patches.flatten(0, 2)).view(n, rows, cols, -1)
        c = g_ar(z.reshape(n * rows, cols, -1))[0].reshape(n, rows, cols, -1)
        loss = cpc_loss(z, c, W)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def nan_loss(g_enc, g_ar, W, optimizer, patches):
        cpc_step(g_enc, g_ar, W, optimizer, patches)
        return float("nan")

    def tensor_loss(*args):
        return torch.tensor(cpc_step(*args))

    def detached_context(g_enc, g_ar, W, optimizer, patches):  # g_enc learns from z alone
        n, rows, cols = patches.shape[:3]
        z = g_enc(patches.flatten(0, 2)).view(n, rows, cols, -1)
        loss = cpc_loss(z, column_context(g_ar, z.detach()), W)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    fails(check, no_update, False, "did not change")
    fails(check, no_zero_grad, True, "zero_grad")
    fails(check, no_zero_grad, False, "zero_grad")  # the visible check starts from stale grads
    # the same loss; only the encoder's weights differ, and the message says so (it used to
    # name zero_grad alone)
    message = fails(check, detached_context, False, "the loss is right")
    assert "(g_enc." in message and "g_ar" not in message and ".detach()" in message
    fails(check, context_along_rows, False, "expected loss")
    fails(check, nan_loss, False, "nan")
    fails(check, tensor_loss, False, "float")



def kit_step(context=cpc_method.column_context, loss=losses.cpc_loss, zero_grad=True):
    """cpc_step built from the kit's versions of the notebook's earlier exercises (and its
    encode_patches helper)."""
    def step(g_enc, g_ar, W, optimizer, patches):
        z = cpc_method.encode_patches(g_enc, patches)
        value = loss(z, context(g_ar, z), W)
        if zero_grad:
            optimizer.zero_grad()
        value.backward()
        optimizer.step()
        return value.item()

    return step


@pytest.mark.parametrize("loss", [losses.cpc_loss, losses.cpc_loss_loop],
                         ids=["cpc_loss", "cpc_loss_loop"])
def test_cpc_step_may_call_the_kits_earlier_exercises(loss):
    """As in 04 and 06: a student whose column_context or cpc_loss is broken may use sslkit's in
    the step, and loses those points once, not again in the step."""
    grading.check_cpc_step(kit_step(loss=loss), hidden=False)
    grading.check_cpc_step(kit_step(loss=loss), hidden=True)

    def via_encoder(g_enc, g_ar, W, optimizer, patches):  # CPCEncoder.encode: z and c, no loss
        z, c = cpc_method.CPCEncoder.encode(types.SimpleNamespace(g_enc=g_enc, g_ar=g_ar),
                                            patches)
        value = loss(z, c, W)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        return value.item()

    grading.check_cpc_step(via_encoder, hidden=True)


def test_cpc_step_with_the_kits_pieces_wired_wrong_fails():
    def along_rows(g_ar, z):  # the GRU along each row instead of down each column
        n, rows, cols, d = z.shape
        return g_ar(z.reshape(n * rows, cols, d))[0].reshape(n, rows, cols, -1)

    for hidden in (False, True):
        message = fails(grading.check_cpc_step, kit_step(context=along_rows), hidden,
                        "expected loss")
        assert "call sslkit.methods.cpc.column_context or sslkit.losses.cpc_loss" in message
    fails(grading.check_cpc_step, kit_step(zero_grad=False), True, "zero_grad")


def test_cpc_step_that_calls_the_kits_whole_step_fails_hidden():
    def via_loss_on_patches(g_enc, g_ar, W, optimizer, patches):
        holder = types.SimpleNamespace(W=W, encoder=types.SimpleNamespace(
            encode=lambda p: cpc_method.CPCEncoder.encode(
                types.SimpleNamespace(g_enc=g_enc, g_ar=g_ar), p)))
        loss = cpc_method.CPC.loss_on_patches(holder, patches)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    grading.check_cpc_step(via_loss_on_patches)  # the right numbers ...
    message = fails(grading.check_cpc_step, via_loss_on_patches, True, "calls the reference")
    assert "CPC.loss_on_patches" in message  # ... only by calling the whole step


def test_a_patch_grid_built_in_float64_is_right_not_a_crash():
    def into_float64(images, patch, stride):
        return patch_grid(images, patch, stride).double()

    grading.check_patch_grid(into_float64, hidden=False)
    grading.check_patch_grid(into_float64, hidden=True)


# -- wrong answers found in a student's pass through the released notebook ---------------------

def context_variant(kind):
    def answer(g_ar, z):
        n, rows, cols, d = z.shape
        if kind == "reshape_without_permute":  # mixes rows and columns into the sequences
            return g_ar(z.reshape(n * cols, rows, d))[0].reshape(n, cols, rows, -1).permute(
                0, 2, 1, 3)
        out, h_n = g_ar(z.permute(0, 2, 1, 3).reshape(n * cols, rows, d))
        if kind == "output_not_permuted_back":
            return out.reshape(n, rows, cols, -1)
        return h_n[-1].reshape(n, 1, cols, -1).expand(n, rows, cols, -1)  # "last_state"
    return answer


@pytest.mark.parametrize("kind, hint", [
    ("reshape_without_permute", r"permute z to \(N, C, R, D\) before"),
    ("output_not_permuted_back", r"reshape\(N, C, R, H\), then permute"),
    ("last_state", "at every row"),
])
def test_column_context_mistakes_are_named(kind, hint):
    fails(grading.check_column_context, context_variant(kind), False, hint)


def cpc_loss_variant(kind):
    def answer(z, c, W):
        n, rows, cols, d = z.shape
        flat = torch.arange(n * rows * cols).view(n, rows, cols)
        candidates = z.reshape(-1, d)
        per_step = []
        for k in range(1, W.shape[0] + 1):
            pred = c[:, k:] if kind == "predicts_upwards" else c[:, :rows - k]
            pred = (pred @ W[k - 1].T).reshape(-1, d)
            labels = {"predicts_upwards": flat[:, :rows - k],
                      "positive_one_row_early": flat[:, k - 1:rows - 1]}.get(kind, flat[:, k:])
            labels = labels.reshape(-1)
            cands = candidates
            if kind == "candidates_column_major":
                cands = z.transpose(1, 2).reshape(-1, d)
            elif kind == "candidates_below_only":
                cands, labels = z[:, k:].reshape(-1, d), torch.arange(n * (rows - k) * cols)
            elif kind == "cosine":
                pred, cands = F.normalize(pred, dim=-1), F.normalize(cands, dim=-1)
            per_step.append(F.cross_entropy(pred @ cands.T, labels))
        return torch.stack(per_step).mean()
    return answer


@pytest.mark.parametrize("kind, hint", [
    ("predicts_upwards", r"predicts the patch k rows BELOW"),
    ("positive_one_row_early", r"z\[n, t \+ k, j\], not z\[n, t \+ k - 1, j\]"),
    ("candidates_column_major", r"\(n, row, col\) order"),
    ("candidates_below_only", "every patch of the batch is a candidate"),
    ("cosine", "no normalisation"),
])
def test_cpc_loss_mistakes_are_named(kind, hint):
    fails(grading.check_cpc_loss, cpc_loss_variant(kind), False, hint)


def test_cpc_step_that_puts_the_grid_back_in_the_wrong_order_is_told_so():
    def wrong_view(g_enc, g_ar, W, optimizer, patches):
        n, rows, cols = patches.shape[:3]
        z = g_enc(patches.flatten(0, 2)).view(n, cols, rows, -1).transpose(1, 2)
        loss = cpc_loss(z, column_context(g_ar, z), W)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    fails(grading.check_cpc_step, wrong_view, False, r"view\(N, R, C, D\)")
