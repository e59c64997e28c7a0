"""Tests for sslkit.grading.mae: for every graded exercise of 07_mae, a correct answer passes
the visible and hidden checks, typical wrong answers fail with a one-line message that names
the mistake, and answers that delegate to the sslkit reference fail the hidden check."""

import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails, run_solution_cells
from torch import nn

from sslkit import losses
from sslkit.grading import mae as grading
from sslkit.methods.mae import MAE
from sslkit.models import vit

NOTEBOOK = Path(__file__).parent.parent / "solutions" / "07_mae" / "07_mae.ipynb"
SOLUTION_CELLS = ("patchify", "unpatchify", "random_masking", "mae_loss", "mae_step")


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    namespace = {"torch": torch, "F": F, "nn": nn, "math": math}
    return run_solution_cells(NOTEBOOK, SOLUTION_CELLS, namespace)


# -- correct answers written independently of the notebook, to build wrong ones from ----------

def patchify(imgs, p):
    n, c, h, w = imgs.shape
    rows = [imgs[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (N, C, p, p) each
            for i in range(h // p) for j in range(w // p)]
    return torch.stack([r.permute(0, 2, 3, 1).reshape(n, -1) for r in rows], dim=1)


def unpatchify(patches, p, channels):
    n, length, _ = patches.shape
    side = math.isqrt(length)
    x = patches.reshape(n, side, side, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, channels, side * p, side * p)


def random_masking(x, mask_ratio, noise=None):
    n, length, d = x.shape
    keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(n, length)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = torch.stack([x[i, ids_shuffle[i, :keep]] for i in range(n)])
    mask = torch.ones(n, length)
    for i in range(n):
        mask[i, ids_shuffle[i, :keep]] = 0
    return kept, mask, ids_restore


def mae_loss(pred, target, mask, norm_pix=False):
    target = target.detach()
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def mae_step(model, optimizer, imgs, mask_ratio, noise):
    latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio, noise)
    pred = model.forward_decoder(latent, ids_restore)
    loss = mae_loss(pred, patchify(imgs, model.patch_size), mask, model.norm_pix)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


CHECKS = {
    "patchify": (grading.check_patchify, patchify),
    "unpatchify": (grading.check_unpatchify, unpatchify),
    "random_masking": (grading.check_random_masking, random_masking),
    "mae_loss": (grading.check_mae_loss, mae_loss),
    "mae_step": (grading.check_mae_step, mae_step),
}


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    check, answer = CHECKS[exercise]
    check(getattr(solution, exercise), hidden=hidden)  # the notebook's solution cell
    check(answer, hidden=hidden)


def test_the_sslkit_references_pass_the_visible_checks():
    grading.check_patchify(vit.patchify)
    grading.check_unpatchify(vit.unpatchify)
    grading.check_random_masking(vit.random_masking)
    grading.check_mae_loss(losses.mae_loss)
    grading.check_mae_loss(losses.mae_loss_loop)


# -- wrong answers -----------------------------------------------------------------------------

def test_patchify_wrong_answers():
    check = grading.check_patchify

    def channels_first(imgs, p):
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, -1, p * p * c)

    def column_major(imgs, p):
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 4, 2, 3, 5, 1)
        return x.reshape(n, -1, p * p * c)

    def plain_reshape(imgs, p):
        return imgs.reshape(imgs.shape[0], -1, p * p * imgs.shape[1])

    def images_mixed(imgs, p):  # right for one image, wrong for the batch
        return patchify(imgs.flip(0), p)

    # visible check: one channel, so channels-first equals (p, q, c): the hidden one catches it
    fails(check, channels_first, True, "channels last")
    assert "row by row" in fails(check, column_major, False, "differ")
    assert "reshape" in fails(check, plain_reshape, False, "differ")
    fails(check, images_mixed, False, "differ")
    fails(check, lambda imgs, p: imgs.flatten(1), False, "shape")
    fails(check, lambda imgs, p: vit.patchify(imgs, p), True, "reference")
    fails(check, lambda imgs, p: 0, False, "torch.Tensor")


def test_unpatchify_wrong_answers():
    check = grading.check_unpatchify

    def transposed(patches, p, channels):
        return unpatchify(patches, p, channels).transpose(2, 3)

    def channels_first(patches, p, channels):
        n, length, _ = patches.shape
        side = math.isqrt(length)
        x = patches.reshape(n, side, side, channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, channels, side * p, side * p)

    fails(check, transposed, False, "is not x")
    fails(check, channels_first, True, "is not x")
    fails(check, lambda patches, p, c: patches, False, "shape")
    fails(check, lambda *a: vit.unpatchify(*a), True, "reference")
    # delegating through patchify's inverse in sslkit.methods.mae (the same function) fails too
    from sslkit.methods import mae as mae_method

    fails(check, lambda *a: mae_method.unpatchify(*a), True, "reference")


def test_random_masking_wrong_answers():
    check = grading.check_random_masking

    def largest_kept(x, ratio, noise=None):
        return random_masking(x, ratio, -noise)

    def mask_in_shuffled_order(x, ratio, noise=None):
        kept, mask, ids = random_masking(x, ratio, noise)
        return kept, mask.gather(1, noise.argsort(1)), ids

    def returns_ids_shuffle(x, ratio, noise=None):
        kept, mask, _ = random_masking(x, ratio, noise)
        return kept, mask, noise.argsort(1)

    def masks_rounded_down(x, ratio, noise=None):
        n, length, d = x.shape
        keep = length - int(length * ratio)
        ids_shuffle = noise.argsort(1)
        kept = x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(n, length)
        mask[:, :keep] = 0
        ids_restore = ids_shuffle.argsort(1)
        return kept, mask.gather(1, ids_restore), ids_restore

    def same_mask_every_time(x, ratio, noise=None):
        if noise is None:
            noise = torch.arange(x.shape[1]).float().expand(x.shape[0], -1)
        return random_masking(x, ratio, noise)

    def kept_is_one(x, ratio, noise=None):
        kept, mask, ids = random_masking(x, ratio, noise)
        return kept, 1 - mask, ids  # the mistake: 1 = kept

    assert "SMALLEST" in fails(check, largest_kept, False, "differs")
    for hidden in (False, True):  # hidden starts at mask_ratio 0.5: inverted = largest kept
        message = fails(check, kept_is_one, hidden, "mask differs")
        assert "mask must be 1 where a patch is REMOVED (masked), 0 where kept" in message
        assert "SMALLEST" not in message
    assert "SMALLEST" in fails(check, largest_kept, True, "x_kept differs")
    assert "ids_restore" in fails(check, mask_in_shuffled_order, False, "mask differs")
    assert "inverse" in fails(check, returns_ids_shuffle, False, "ids_restore differs")
    fails(check, masks_rounded_down, True, "round down")
    fails(check, same_mask_every_time, True, "same mask")
    fails(check, lambda x, r, noise=None: random_masking(x, r, noise)[:2], False, "expected")
    fails(check, lambda *a: vit.random_masking(*a), True, "reference")


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
def test_random_masking_with_a_bool_mask_is_told_to_return_floats(solution, hidden):
    """A bool mask has the right values (True == 1.0), so comparing it as floats passed; then
    the notebook's `images * (1 - mask)` crashed. The check names the dtype in one line."""
    def bool_mask(x, ratio, noise=None):
        n, length, _ = x.shape
        kept, _, ids_restore = solution.random_masking(x, ratio, noise)
        return kept, ids_restore >= int(length * (1 - ratio)), ids_restore  # True = hidden

    message = fails(grading.check_random_masking, bool_mask, hidden, "mask")
    assert "torch.bool" in message and "float" in message
    assert "1.0" in message and "0.0" in message

    def uint8_mask(x, ratio, noise=None):
        kept, mask, ids_restore = solution.random_masking(x, ratio, noise)
        return kept, mask.to(torch.uint8), ids_restore

    assert "torch.uint8" in fails(grading.check_random_masking, uint8_mask, hidden, "float")

    def double_mask(x, ratio, noise=None):  # any floating dtype is fine
        kept, mask, ids_restore = solution.random_masking(x, ratio, noise)
        return kept, mask.double(), ids_restore

    grading.check_random_masking(double_mask, hidden=hidden)


def test_mae_loss_wrong_answers():
    check = grading.check_mae_loss

    def every_patch(pred, target, mask, norm_pix=False):
        return mae_loss(pred, target, torch.ones_like(mask), norm_pix)

    def summed_pixels(pred, target, mask, norm_pix=False):
        return mae_loss(pred, target, mask, norm_pix) * pred.shape[-1]

    def biased_var(pred, target, mask, norm_pix=False):
        if norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
        return mae_loss(pred, target, mask)

    def eps_outside_the_root(pred, target, mask, norm_pix=False):
        if norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True).sqrt() + 1e-6)
        return mae_loss(pred, target, mask)

    def ignores_norm_pix(pred, target, mask, norm_pix=False):
        return mae_loss(pred, target, mask)

    def visible_patches(pred, target, mask, norm_pix=False):
        return mae_loss(pred, target, 1 - mask, norm_pix)

    def target_trained(pred, target, mask, norm_pix=False):
        if norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def visible_in_the_graph(pred, target, mask, norm_pix=False):
        # the same value, but visible patches get a gradient through a term that cancels out
        return mae_loss(pred, target, mask, norm_pix) + (pred * (1 - mask)[..., None]).sum() * (
            (pred * (1 - mask)[..., None]).sum() - (pred * (1 - mask)[..., None]).sum().detach())

    assert "masked patches only" in fails(check, every_patch, False, "expected")
    assert "mean, not sum" in fails(check, summed_pixels, False, "expected")
    assert "unbiased" in fails(check, biased_var, False, "expected")
    assert "normalise" in fails(check, ignores_norm_pix, False, "expected")
    check(eps_outside_the_root)  # the same value wherever a patch varies more than 1e-6
    assert "inside the square root" in fails(check, eps_outside_the_root, True, "nearly flat")
    assert "HIDDEN" in fails(check, visible_patches, False, "expected")
    for hidden in (False, True):  # the visible check named it too (it passed before)
        fails(check, target_trained, hidden, r"gradient reaches (the )?target")
    check(visible_in_the_graph)
    fails(check, visible_in_the_graph, True, "visible patches get a gradient")
    fails(check, lambda *a: losses.mae_loss(*a), True, "reference")
    fails(check, lambda *a: losses.mae_loss_loop(*a), True, "reference")
    fails(check, lambda *a: 1.0, False, "torch.Tensor")
    fails(check, lambda p, t, m, n=False: ((p - t) ** 2).mean(-1), False, "scalar")


def test_mae_step_wrong_answers():
    check = grading.check_mae_step

    def no_step(model, optimizer, imgs, mask_ratio, noise):
        latent, mask, ids = model.forward_encoder(imgs, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids)
        return mae_loss(pred, patchify(imgs, model.patch_size), mask, model.norm_pix).item()

    def raw_pixels(model, optimizer, imgs, mask_ratio, noise):
        latent, mask, ids = model.forward_encoder(imgs, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids)
        loss = mae_loss(pred, patchify(imgs, model.patch_size), mask, False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def every_patch(model, optimizer, imgs, mask_ratio, noise):
        latent, mask, ids = model.forward_encoder(imgs, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids)
        loss = mae_loss(pred, patchify(imgs, model.patch_size), torch.ones_like(mask), True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def fresh_noise(model, optimizer, imgs, mask_ratio, noise):
        return mae_step(model, optimizer, imgs, mask_ratio, torch.rand_like(noise))

    def no_zero_grad(model, optimizer, imgs, mask_ratio, noise):
        latent, mask, ids = model.forward_encoder(imgs, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids)
        loss = mae_loss(pred, patchify(imgs, model.patch_size), mask, model.norm_pix)
        loss.backward()  # gradients of earlier steps pile up
        optimizer.step()
        return loss.item()

    def tensor_loss(model, optimizer, imgs, mask_ratio, noise):
        return torch.tensor(mae_step(model, optimizer, imgs, mask_ratio, noise))

    fails(check, no_step, False, "did not change")
    assert "norm_pix" in fails(check, raw_pixels, False, "expected loss")
    assert "masked patches only" in fails(check, every_patch, False, "expected loss")
    assert "noise" in fails(check, fresh_noise, False, "expected loss")
    fails(check, no_zero_grad, True, "zero_grad")  # shows from the second step
    fails(check, tensor_loss, False, "float")

    def whole_forward(model, optimizer, imgs, mask_ratio, noise):
        loss = model.loss_on(imgs, mask_ratio, noise)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def reference_loss(model, optimizer, imgs, mask_ratio, noise):
        latent, mask, ids = model.forward_encoder(imgs, mask_ratio, noise)
        loss = model.forward_loss(imgs, model.forward_decoder(latent, ids), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    check(whole_forward)  # right values ...
    fails(check, whole_forward, True, "reference")  # ... but only by calling the reference
    check(reference_loss)
    assert "MAE.forward_loss" in fails(check, reference_loss, True, "calls the reference")
    assert isinstance(MAE.forward, types.FunctionType)  # the guard blocked and restored it


def kit_step(norm_pix=None, loss=losses.mae_loss):
    """mae_step built from the kit's versions of the notebook's earlier exercises: vit.patchify
    and the kit's loss (norm_pix: the setting passed to the loss, None for the model's)."""
    def step(model, optimizer, imgs, mask_ratio, noise):
        latent, mask, ids = model.forward_encoder(imgs, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids)
        target = vit.patchify(imgs, model.patch_size)
        value = loss(pred, target, mask, model.norm_pix if norm_pix is None else norm_pix)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        return value.item()

    return step


@pytest.mark.parametrize("loss", [losses.mae_loss, losses.mae_loss_loop],
                         ids=["mae_loss", "mae_loss_loop"])
def test_mae_step_may_call_the_kits_earlier_exercises(loss):
    """As in 04 and 06: a student whose mae_loss (or patchify) is broken may use sslkit's in the
    step, and loses those points once, not again in the step."""
    grading.check_mae_step(kit_step(loss=loss), hidden=False)
    grading.check_mae_step(kit_step(loss=loss), hidden=True)


def test_mae_step_with_the_kits_loss_wired_wrong_fails():
    for hidden in (False, True):
        fails(grading.check_mae_step, kit_step(norm_pix=False), hidden, "model.norm_pix")


def test_mae_step_hint_names_the_kits_loss_when_nothing_else_explains_it():
    def own_broken_loss(model, optimizer, imgs, mask_ratio, noise):
        return kit_step(loss=lambda *a: 2 * losses.mae_loss(*a))(model, optimizer, imgs,
                                                                  mask_ratio, noise)

    message = fails(grading.check_mae_step, own_broken_loss, True, "expected loss")
    assert "call sslkit.losses.mae_loss" in message and "not allowed" not in message


def test_mae_step_that_calls_the_model_whole_fails_hidden():
    def via_forward(model, optimizer, imgs, mask_ratio, noise):
        loss = model(imgs)  # MAE.forward: its own random mask, the whole step's loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    assert "MAE.forward" in fails(grading.check_mae_step, via_forward, True,
                                  "calls the reference")


def test_patchify_built_from_the_kits_tile_split_fails_hidden():
    """split_tiles (notebook 01's jigsaw) cuts the same grid: the whole exercise in one call."""
    from sslkit.augment import merge_tiles, split_tiles

    def via_tiles(imgs, p):
        n, c, h, w = imgs.shape
        tiles = split_tiles(imgs, h // p)  # (N, L, C, p, p)
        return tiles.permute(0, 1, 3, 4, 2).reshape(n, -1, p * p * c)

    def unpatchify_via_tiles(patches, p, channels=3):
        n, length, _ = patches.shape
        grid = int(length ** 0.5)
        tiles = patches.reshape(n, length, p, p, channels).permute(0, 1, 4, 2, 3)
        return merge_tiles(tiles, grid)

    grading.check_patchify(via_tiles)  # numerically right: passes the visible check
    fails(grading.check_patchify, via_tiles, True, "calls the reference")
    grading.check_unpatchify(unpatchify_via_tiles)
    fails(grading.check_unpatchify, unpatchify_via_tiles, True, "calls the reference")


# -- wrong answers found in a student's pass through the released notebook ---------------------

def masking_with_len_keep(rule):
    def answer(x, ratio, noise=None):
        n, length, d = x.shape
        keep = rule(length * (1 - ratio))
        noise = torch.rand(n, length) if noise is None else noise
        ids_shuffle = noise.argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        mask = torch.ones(n, length)
        mask[:, :keep] = 0
        return (x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d)),
                mask.gather(1, ids_restore), ids_restore)
    return answer


@pytest.mark.parametrize("rule", [round, math.ceil], ids=["round", "ceil"])
def test_random_masking_that_rounds_len_keep_fails_the_visible_check(rule):
    """The visible case (L = 8, ratio 0.75) keeps exactly 2 patches, so round() or ceil() in
    place of int() passed it and failed only the hidden check."""
    fails(grading.check_random_masking, masking_with_len_keep(rule), False, "round down")


def test_random_masking_with_kept_patches_in_their_original_order_is_told_so():
    def original_order(x, ratio, noise=None):
        kept, mask, ids_restore = random_masking(x, ratio, noise)
        n, length, d = x.shape
        return x[mask == 0].reshape(n, -1, d), mask, ids_restore  # boolean indexing: sorted

    message = fails(grading.check_random_masking, original_order, False, "x_kept differs")
    assert "order of ids_shuffle" in message


def mae_loss_variant(kind):
    def loss(pred, target, mask, norm_pix=False):
        target = target.detach()
        if norm_pix:
            dim = 1 if kind == "normalised_over_patches" else -1
            mean = target.mean(dim, keepdim=True)
            spread = target.std(dim, keepdim=True) if kind == "std" else target.var(
                dim, keepdim=True)
            target = (target - mean) / (spread + 1e-6) ** 0.5
            if kind == "normalises_pred":
                pred = (pred - pred.mean(-1, keepdim=True)) / (
                    pred.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(-1)
        if kind == "mean_over_all":
            return (per_patch * mask).mean()
        if kind == "per_image":
            return ((per_patch * mask).sum(1) / mask.sum(1)).mean()
        return (per_patch * mask).sum() / mask.sum()
    return loss


@pytest.mark.parametrize("kind, hint", [
    ("mean_over_all", r"divide by the number of hidden patches \(mask.sum\(\)\)"),
    ("per_image", "over every hidden patch of the batch at once"),
    ("normalised_over_patches", r"over its own P values \(dim=-1\)"),
    ("std", r"variance \(\.var\), not the standard deviation"),
    ("normalises_pred", "normalise the target only"),
])
def test_mae_loss_mistakes_are_named(kind, hint):
    fails(grading.check_mae_loss, mae_loss_variant(kind), False, hint)


def test_mae_step_without_zero_grad_fails_the_visible_check():
    """The visible check ran one step from fresh gradients, where a missing zero_grad does not
    show; stale gradients left in the model (as after any earlier step) show it."""
    def no_zero_grad(model, optimizer, imgs, mask_ratio, noise):
        latent, mask, ids = model.forward_encoder(imgs, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids)
        loss = mae_loss(pred, patchify(imgs, model.patch_size), mask, model.norm_pix)
        loss.backward()
        optimizer.step()
        return loss.item()

    fails(grading.check_mae_step, no_zero_grad, False, "zero_grad")


def test_mae_step_with_the_mask_inverted_is_told_so():
    def inverted(model, optimizer, imgs, mask_ratio, noise):
        latent, mask, ids = model.forward_encoder(imgs, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids)
        loss = mae_loss(pred, patchify(imgs, model.patch_size), 1 - mask, model.norm_pix)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    fails(grading.check_mae_step, inverted, False, "mask = 1 marks the hidden patches")


def test_patchify_for_square_images_only_fails_hidden():
    """The exercise's L = (H/p)(W/p) holds for any H and W; a patchify that takes W from H
    passed every (square) case."""
    def square_only(imgs, p):
        n, c, h, _ = imgs.shape
        x = imgs.reshape(n, c, h // p, p, h // p, p)  # the mistake: W taken as H
        return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) ** 2, p * p * c)

    grading.check_patchify(square_only)
    fails(grading.check_patchify, square_only, True, r"images \(2, 3, 8, 12\)")
