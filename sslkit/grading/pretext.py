"""Checks for 01_pretext_tasks: rotate_batch, rotation_step, jigsaw_tiles. See sslkit.grading for
the conventions (visible / hidden checks, one-line failures, the delegation guard).

The notebook's other exercises (split_lab, merge_lab, masked_reconstruction_loss) are checked
by sslkit.grading.reconstruction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import augment
from sslkit.grading.guard import (
    as_tensor,
    call,
    match_step,
    quiet,
    randn,
    stale_gradients,
    train_mode_kept,
)
from sslkit.methods.jigsaw import Jigsaw
from sslkit.methods.relative_patch import RelativePatch
from sslkit.methods.rotation import Rotation
from sslkit.models.convnet import ConvNet
from sslkit.models.heads import projection_head

_TILES = {
    "sslkit.augment.jigsaw_tiles": augment.jigsaw_tiles,
    "sslkit.augment.split_tiles": augment.split_tiles,
    "sslkit.augment.merge_tiles": augment.merge_tiles,
    "sslkit.augment.patch_pairs": augment.patch_pairs,
    "sslkit.methods.Jigsaw.make_puzzles": Jigsaw.make_puzzles,
    "sslkit.methods.RelativePatch.make_pairs": RelativePatch.make_pairs,
}
REFERENCES = {
    "rotate_batch": {
        "sslkit.augment.rotate_batch": augment.rotate_batch,
        "sslkit.methods.Rotation.logits_labels": Rotation.logits_labels,
        "sslkit.methods.Rotation.forward": Rotation.forward,
    },
    # The step exercise follows the rule of every notebook's step (moco.py, simclr.py, dino.py):
    # it may call the kit's version of this notebook's earlier exercise, augment.rotate_batch,
    # so that a student whose rotate_batch is broken loses its points once, not the step's too.
    # Blocked is only what does the step's own work: Rotation.logits_labels (rotate, one
    # forward pass of all 4N images, labels) and Rotation.forward (that and the loss).
    "rotation_step": {
        "sslkit.methods.Rotation.logits_labels": Rotation.logits_labels,
        "sslkit.methods.Rotation.forward": Rotation.forward,
    },
    "jigsaw_tiles": _TILES,
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    """guard.call with this notebook's references blocked when guard is True."""
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


def _first_difference(got: torch.Tensor, expected: torch.Tensor) -> str:
    """'at [i, j, ...]: expected a, got b' for the first element that differs."""
    diff = (got.to(expected.dtype) - expected).abs() > 1e-6
    if not bool(diff.any()):
        return "(only in dtype or layout)"
    index = tuple(int(i) for i in diff.nonzero()[0])
    return (f"at {list(index)}: expected {float(expected[index]):.4g}, "
            f"got {float(got[index]):.4g}")


# ----------------------------------------------------------------------------------------------
# 1. rotate_batch(x)
# ----------------------------------------------------------------------------------------------


def _rotate_hint(x: torch.Tensor, x_rot: torch.Tensor, labels: torch.Tensor) -> str:
    """Why an answer differs from the contract, where a usual mistake explains it."""
    n = len(x)
    clockwise = torch.cat([torch.rot90(x, -k, dims=(2, 3)) for k in range(4)])
    interleaved = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], 1).flatten(0, 1)
    if x_rot.shape == clockwise.shape and torch.equal(x_rot, clockwise):
        return (" — the rotations go the wrong way: torch.rot90(x, k, dims=(2, 3)) turns "
                "counter-clockwise by k quarter turns")
    if x_rot.shape == interleaved.shape and torch.equal(x_rot, interleaved):
        return (" — keep the four rotated copies of the batch in blocks (torch.cat over k), "
                "not interleaved image by image")
    if labels.shape == (4 * n,) and torch.equal(labels.cpu().long(), torch.arange(4).repeat(n)):
        return (" — labels come in blocks of N: [0]*N + [1]*N + [2]*N + [3]*N "
                "(repeat_interleave, not repeat)")
    return ""


def _compare_rotate(ex: str, fn: Callable, x: torch.Tensor, guard: bool) -> None:
    where = f" for x of shape {tuple(x.shape)}"
    before = x.clone()
    out = _call(ex, fn, x, where=where, guard=guard)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise AssertionError(f"{ex}: expected a pair (x_rot, labels), got "
                             f"{type(out).__name__}{where}: return x_rot, labels")
    x_rot = as_tensor(ex, out[0], where)
    labels = as_tensor(ex, out[1], where)
    if not torch.equal(x, before):
        raise AssertionError(f"{ex}: your function changed its input in place{where}")
    expected, expected_labels = augment.rotate_batch(x)
    if tuple(x_rot.shape) != tuple(expected.shape):
        raise AssertionError(f"{ex}: expected x_rot of shape {tuple(expected.shape)} (4N images),"
                             f" got {tuple(x_rot.shape)}{where}: concatenate the four rotations "
                             f"along the batch axis")
    if tuple(labels.shape) != tuple(expected_labels.shape):
        raise AssertionError(f"{ex}: expected labels of shape {tuple(expected_labels.shape)}, got "
                             f"{tuple(labels.shape)}{where}: one label per rotated image")
    if labels.dtype != torch.long:  # F.cross_entropy refuses int32 class indices too
        raise AssertionError(f"{ex}: expected integer labels (torch.long), got {labels.dtype}"
                             f"{where}: F.cross_entropy needs class indices of dtype torch.long "
                             "(torch.arange gives them)")
    if not torch.equal(labels.cpu().long(), expected_labels):
        raise AssertionError(f"{ex}: expected labels {expected_labels.tolist()}, got "
                             f"{labels.tolist()}{where}{_rotate_hint(x, x_rot, labels)}")
    if x_rot.dtype != x.dtype:
        raise AssertionError(f"{ex}: x_rot must keep the images' dtype ({x.dtype}), got "
                             f"{x_rot.dtype}{where}: rotate x itself, without converting it")
    if not torch.equal(x_rot, expected):
        raise AssertionError(f"{ex}: x_rot differs from the contract "
                             f"{_first_difference(x_rot, expected)}{where}"
                             f"{_rotate_hint(x, x_rot, labels)}")


@quiet
def check_rotate_batch(rotate_batch: Callable, hidden: bool = False) -> None:
    """x (N, C, H, W) -> (cat of rot90(x, k, dims=(2, 3)) for k = 0..3, labels k per block)."""
    ex = "rotate_batch"
    if not hidden:
        _compare_rotate(ex, rotate_batch, randn(2, 1, 4, 4, seed=0), guard=False)
        return
    for n, c, s, seed in ((1, 1, 3, 1), (3, 2, 5, 2), (5, 3, 8, 3)):
        _compare_rotate(ex, rotate_batch, randn(n, c, s, s, seed=seed), guard=True)
    images = (255 * torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(4)))
    _compare_rotate(ex, rotate_batch, images.to(torch.uint8), guard=True)  # uint8 stays uint8


# ----------------------------------------------------------------------------------------------
# 2. rotation_step(model, optimizer, x)
# ----------------------------------------------------------------------------------------------


def _step_case(seed: int, n: int = 5):
    """A tiny rotation method (ConvNet with BatchNorm, MLP head) and a batch of 8x8 images."""
    torch.manual_seed(seed)
    method = Rotation(ConvNet(1, (4, 8)))
    method.head = projection_head(8, 4, 16)
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    return method.train(), x


def _step_hint(method: Rotation, x: torch.Tensor, got: float) -> str:
    """Why a step's loss differs from the reference's, where a usual mistake explains it."""
    m = copy.deepcopy(method)
    with torch.no_grad():
        x_rot, labels = augment.rotate_batch(x)
        apart = sum(F.cross_entropy(m.head(m.encoder(part)), lab)
                    for part, lab in zip(x_rot.chunk(4), labels.chunk(4))) / 4
        logits = m.head(m.encoder(x_rot))
        shuffled = F.cross_entropy(logits, torch.arange(4).repeat(len(x)))
    if abs(got - float(apart)) < 1e-5:
        return (" — put all 4N rotated images through the model in ONE forward pass so that "
                "BatchNorm sees all of them")
    if abs(got - float(shuffled)) < 1e-5:
        return " — the labels must follow the blocks of rotate_batch's output"
    return (" — if your rotate_batch does not pass its tests yet, call "
            "sslkit.augment.rotate_batch in the step instead")


def _check_one_step(ex: str, step_fn: Callable, seed: int, steps: int, guard: bool) -> None:
    method, x = _step_case(seed)
    student = copy.deepcopy(method)
    model = nn.Sequential(student.encoder, student.head)  # images -> 4 logits
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reference = copy.deepcopy(method)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    where = f" (N={len(x)} images 1x8x8, SGD lr=0.1 momentum=0.9)"
    for step in range(steps):
        stale_gradients(model, reference, seed + step)  # zero_grad must clear them
        before = copy.deepcopy(model)
        hint_state = copy.deepcopy(reference)
        label = f"step {step + 1}: " if steps > 1 else ""
        with train_mode_kept(ex, {"model": model}, label, where):
            got = _call(ex, step_fn, model, optimizer, x.clone(), where=where, guard=guard)
        loss = reference(x)
        ref_optimizer.zero_grad()
        loss.backward()
        ref_optimizer.step()
        match_step(ex, got, loss.item(), model, before,
                   nn.Sequential(reference.encoder, reference.head), label, where,
                   hint=lambda s=hint_state, g=got: _step_hint(s, x, g))


@quiet
def check_rotation_step(rotation_step: Callable, hidden: bool = False) -> None:
    """One step from the same seed, weights and images gives the reference's loss and weights
    (reference: sslkit.methods.Rotation.forward, zero_grad, backward, step)."""
    ex = "rotation_step"
    if not hidden:
        _check_one_step(ex, rotation_step, seed=0, steps=1, guard=False)
    else:
        _check_one_step(ex, rotation_step, seed=1, steps=2, guard=True)
        _check_one_step(ex, rotation_step, seed=2, steps=1, guard=True)


# ----------------------------------------------------------------------------------------------
# 3. jigsaw_tiles(x, perms)
# ----------------------------------------------------------------------------------------------


def _tiles_hint(x: torch.Tensor, perms: torch.Tensor, got: torch.Tensor) -> str:
    tiles = augment.split_tiles(x)  # (N, 9, C, th, tw)
    rows = torch.arange(len(x))[:, None]
    inverse = torch.empty_like(tiles)
    inverse[rows, perms] = tiles  # tile i moved to position perms[i]
    by_columns = augment.split_tiles(x.transpose(2, 3)).transpose(3, 4)
    variants = {
        "out[n, i] must be tile perms[n, i] (you placed tile i at position perms[n, i], the "
        "inverse permutation)": inverse,
        "number the tiles row by row (tile t at row t // 3, column t % 3), not column by column":
            by_columns[rows, perms],
        "did you apply the permutation? out[n, i] = tile perms[n, i]": tiles,
        "each image has its own permutation: image n's tiles go in the order perms[n] (you "
        "shuffled every image with perms[0])": tiles[:, perms[0]],
    }
    for hint, value in variants.items():
        if value.shape == got.shape and torch.equal(got.to(value.dtype), value):
            return " — " + hint
    return ""


def _compare_tiles(ex: str, fn: Callable, x: torch.Tensor, perms: torch.Tensor,
                   guard: bool) -> None:
    n, c, h, w = x.shape
    where = f" for x of shape {tuple(x.shape)}"
    before = x.clone()
    got = as_tensor(ex, _call(ex, fn, x, perms.clone(), where=where, guard=guard), where)
    if not torch.equal(x, before):
        raise AssertionError(f"{ex}: your function changed its input in place{where}")
    expected = augment.jigsaw_tiles(x, perms)
    if tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"{ex}: expected shape {tuple(expected.shape)} = (N, 9, C, H/3, "
                             f"W/3), got {tuple(got.shape)}{where}")
    if not torch.equal(got.to(expected.dtype), expected):
        raise AssertionError(f"{ex}: tiles differ {_first_difference(got, expected)}{where}"
                             f"{_tiles_hint(x, perms, got)}")


@quiet
def check_jigsaw_tiles(jigsaw_tiles: Callable, hidden: bool = False) -> None:
    """out[n, i] = tile perms[n, i] of image n, tiles numbered row by row, each (C, H/3, W/3)."""
    ex = "jigsaw_tiles"
    if not hidden:
        x = torch.arange(2 * 36, dtype=torch.float32).reshape(2, 1, 6, 6)
        perms = torch.stack([torch.tensor([8, 3, 0, 4, 6, 1, 2, 7, 5]), torch.arange(9)])
        _compare_tiles(ex, jigsaw_tiles, x, perms, guard=False)
        # H != W, as the exercise allows: the tile width is W / 3, not H / 3
        x = torch.arange(2 * 2 * 54, dtype=torch.float32).reshape(2, 2, 6, 9)
        perms = torch.stack([torch.tensor([4, 0, 8, 2, 6, 1, 7, 3, 5]),
                             torch.tensor([8, 3, 0, 4, 6, 1, 2, 7, 5])])
        _compare_tiles(ex, jigsaw_tiles, x, perms, guard=False)
        return
    g = torch.Generator().manual_seed(5)
    for n, c, h, w in ((1, 1, 3, 3), (3, 2, 9, 9), (4, 3, 12, 6)):
        x = randn(n, c, h, w, seed=n + c)
        perms = torch.stack([torch.randperm(9, generator=g) for _ in range(n)])
        _compare_tiles(ex, jigsaw_tiles, x, perms, guard=True)
    x = torch.randint(0, 256, (2, 1, 30, 30), generator=g).to(torch.uint8)
    perms = augment.hamming_permutations(2, seed=1)
    _compare_tiles(ex, jigsaw_tiles, x, perms, guard=True)
