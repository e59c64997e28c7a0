"""Tests for sslkit.grading.pretext: for every graded exercise of solutions/01_pretext_tasks that
it checks (rotate_batch, rotation_step, jigsaw_tiles), the solution (taken from the source
notebook's solution cells) passes the visible and hidden checks, typical wrong answers fail with
a one-line message, and answers that delegate to the sslkit reference fail the hidden check.
The notebook's reconstruction exercises (checked by sslkit.grading.reconstruction) are run
through their checks too, so that the notebook's solutions stay right."""

import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails, run_solution_cells
from torch import nn

from sslkit import augment
from sslkit.augment import rotate_batch as reference_rotate_batch  # the alias form
from sslkit.grading import pretext as grading
from sslkit.grading import reconstruction
from sslkit.methods.rotation import Rotation

NOTEBOOK = (Path(__file__).parent.parent / "solutions" / "01_pretext_tasks"
            / "01_pretext_tasks.ipynb")
SOLUTION_CELLS = ("rotate_batch", "rotation_step", "jigsaw_tiles", "split_lab", "merge_lab",
                  "masked_reconstruction_loss")


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    """The notebook's solution cells, run in order in one namespace, as the notebook does."""
    namespace = {"torch": torch, "F": F, "nn": nn, "math": math}
    return run_solution_cells(NOTEBOOK, SOLUTION_CELLS, namespace)


CHECKS = {
    "rotate_batch": grading.check_rotate_batch,
    "rotation_step": grading.check_rotation_step,
    "jigsaw_tiles": grading.check_jigsaw_tiles,
    "split_lab": reconstruction.check_split_lab,
    "merge_lab": reconstruction.check_merge_lab,
    "masked_reconstruction_loss": reconstruction.check_masked_reconstruction_loss,
}


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    CHECKS[exercise](getattr(solution, exercise), hidden=hidden)


def test_guard_restores_the_references():
    x = torch.randn(2, 1, 3, 3)
    fails(grading.check_rotate_batch, lambda x: augment.rotate_batch(x), True, "reference")
    fails(grading.check_rotate_batch, lambda x: reference_rotate_batch(x), True, "reference")
    assert torch.equal(augment.rotate_batch(x)[0], torch.cat([torch.rot90(x, k, dims=(2, 3))
                                                              for k in range(4)]))
    assert reference_rotate_batch(x)[1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


# ---------------------------------------------------------------------------------------------
# 1. rotate_batch


def test_rotate_batch_wrong_answers():
    check = grading.check_rotate_batch

    def labels_repeated(x):
        return (torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)]),
                torch.arange(4).repeat(len(x)))

    def clockwise(x):
        return (torch.cat([torch.rot90(x, -k, dims=(2, 3)) for k in range(4)]),
                torch.arange(4).repeat_interleave(len(x)))

    def interleaved(x):
        rot = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1)
        return rot.flatten(0, 1), torch.arange(4).repeat_interleave(len(x))

    def float_labels(x):
        return (torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)]),
                torch.arange(4).repeat_interleave(len(x)).float())

    assert "repeat_interleave" in fails(check, labels_repeated, False, "expected labels")
    assert "wrong way" in fails(check, clockwise, False, "x_rot differs")
    assert "blocks" in fails(check, interleaved, False, "x_rot differs")
    fails(check, float_labels, False, "integer labels")
    fails(check, lambda x: torch.cat([x] * 4), False, "expected a pair")
    fails(check, lambda x: (x, torch.zeros(len(x))), False, "shape")


def test_rotate_batch_with_int32_labels_fails():
    """The text asks for torch.long labels, and F.cross_entropy refuses int32 class indices:
    int32 labels used to pass both checks and broke only rotation_step."""
    def int32_labels(x):
        return (torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)]),
                torch.arange(4, dtype=torch.int32).repeat_interleave(len(x)))

    for hidden in (False, True):
        assert "torch.long" in fails(grading.check_rotate_batch, int32_labels, hidden,
                                     "integer labels")


def test_rotate_batch_delegation_fails_hidden():
    def delegating(x):
        return augment.rotate_batch(x)

    grading.check_rotate_batch(delegating)  # numerically fine: passes the visible check
    fails(grading.check_rotate_batch, delegating, True, "calls the reference sslkit")


# ---------------------------------------------------------------------------------------------
# 2. rotation_step


def test_rotation_step_wrong_answers(solution):
    check = grading.check_rotation_step
    rotate = solution.rotate_batch

    def separate_passes(model, optimizer, x):
        x_rot, labels = rotate(x)
        loss = sum(F.cross_entropy(model(part), lab)
                   for part, lab in zip(x_rot.chunk(4), labels.chunk(4))) / 4
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def no_zero_grad(model, optimizer, x):
        x_rot, labels = rotate(x)
        loss = F.cross_entropy(model(x_rot), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    def no_step(model, optimizer, x):
        x_rot, labels = rotate(x)
        return F.cross_entropy(model(x_rot), labels).item()

    def returns_tensor(model, optimizer, x):
        x_rot, labels = rotate(x)
        loss = F.cross_entropy(model(x_rot), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    assert "ONE forward pass" in fails(check, separate_passes, False, "expected loss")
    fails(check, no_zero_grad, False, "zero_grad")
    fails(check, no_step, False, "did not change")
    fails(check, returns_tensor, False, "Python float")


def test_rotation_step_may_call_the_kits_rotate_batch():
    """As in 04-08: a step may call the kit's version of the notebook's earlier exercise, so a
    student whose rotate_batch is broken loses its points once, not again in the step."""
    def with_kits_rotate_batch(model, optimizer, x):
        x_rot, labels = augment.rotate_batch(x)  # the kit's, where one's own does not pass yet
        loss = F.cross_entropy(model(x_rot), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    grading.check_rotation_step(with_kits_rotate_batch)
    grading.check_rotation_step(with_kits_rotate_batch, hidden=True)


@pytest.mark.parametrize("whole", ["logits_labels", "forward"])
def test_rotation_step_that_calls_the_kits_whole_step_fails_hidden(whole):
    """Rotation.logits_labels (rotate, one forward pass, labels) and Rotation.forward (and the
    loss) do the step's own work: an answer built on them fails the hidden check."""
    def via_kit_step(model, optimizer, x):
        stand_in = types.SimpleNamespace(encoder=model[0], head=model[1])
        stand_in.logits_labels = lambda v: Rotation.logits_labels(stand_in, v)
        loss = (F.cross_entropy(*Rotation.logits_labels(stand_in, x)) if whole == "logits_labels"
                else Rotation.forward(stand_in, x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    grading.check_rotation_step(via_kit_step)  # the right numbers ...
    message = fails(grading.check_rotation_step, via_kit_step, True, "calls the reference")
    assert "sslkit.methods.Rotation." in message  # ... only by calling the whole step


def test_rotation_step_hint_offers_the_kits_rotate_batch(solution):
    """When nothing else explains a wrong loss, the hint says the kit's rotate_batch may be used
    (the rule of every step exercise), not only to fix one's own first."""
    def wrong_rotations(x):
        return (torch.cat([torch.rot90(x, -k, dims=(2, 3)) for k in range(4)]),
                torch.arange(4).repeat_interleave(len(x)))

    def step(model, optimizer, x):
        x_rot, labels = wrong_rotations(x)
        loss = F.cross_entropy(model(x_rot), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    message = fails(grading.check_rotation_step, step, False, "expected loss")
    assert "sslkit.augment.rotate_batch" in message


# ---------------------------------------------------------------------------------------------
# 3. jigsaw_tiles


def test_jigsaw_tiles_wrong_answers(solution):
    check = grading.check_jigsaw_tiles

    def tiles_of(x):
        n, c, h, w = x.shape
        t = x.reshape(n, c, 3, h // 3, 3, w // 3).permute(0, 2, 4, 1, 3, 5)
        return t.reshape(n, 9, c, h // 3, w // 3)

    def inverse_permutation(x, perms):
        tiles = tiles_of(x)
        out = torch.empty_like(tiles)
        out[torch.arange(len(x))[:, None], perms] = tiles
        return out

    def column_major(x, perms):
        n, c, h, w = x.shape
        t = x.reshape(n, c, 3, h // 3, 3, w // 3).permute(0, 4, 2, 1, 3, 5)
        return t.reshape(n, 9, c, h // 3, w // 3)[torch.arange(n)[:, None], perms]

    def unshuffled(x, perms):
        return tiles_of(x)

    assert "inverse permutation" in fails(check, inverse_permutation, False, "tiles differ")
    assert "row by row" in fails(check, column_major, False, "tiles differ")
    assert "apply the permutation" in fails(check, unshuffled, False, "tiles differ")
    fails(check, lambda x, perms: x, False, "expected shape")


def test_jigsaw_tiles_delegation_fails_hidden():
    def via_jigsaw_tiles(x, perms):
        return augment.jigsaw_tiles(x, perms)

    def via_split_tiles(x, perms):
        return augment.split_tiles(x)[torch.arange(len(x))[:, None], perms]

    for answer in (via_jigsaw_tiles, via_split_tiles):
        grading.check_jigsaw_tiles(answer)
        fails(grading.check_jigsaw_tiles, answer, True, "calls the reference sslkit")


def test_rotate_batch_that_converts_the_dtype_gets_a_one_line_message():
    """Right rotations and labels, but uint8 images come back as floats: a readable failure
    that names the dtype (before, an IndexError traceback from an empty difference)."""
    def converts(x):
        x = x.float()
        return (torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)]),
                torch.arange(4).repeat_interleave(len(x)))

    for hidden in (False, True):
        try:
            grading.check_rotate_batch(converts, hidden=hidden)
        except AssertionError as err:
            assert "keep the images' dtype" in str(err) and "\n" not in str(err)
        else:
            assert not hidden, "the hidden check feeds uint8 images"


def test_jigsaw_tiles_that_assumes_square_images_fails_visible():
    """The exercise allows H != W (both divisible by 3); an answer that takes the tile width
    from H passed the visible check, whose images were all square, and failed only the hidden
    one, with torch's reshape error."""
    def square_tiles(x, perms):
        n, c, h, w = x.shape
        t = h // 3  # the mistake: W // 3 is the tile width
        tiles = x.reshape(n, c, 3, t, 3, t).permute(0, 2, 4, 1, 3, 5).reshape(n, 9, c, t, t)
        return tiles[torch.arange(n)[:, None], perms]

    for hidden in (False, True):
        fails(grading.check_jigsaw_tiles, square_tiles, hidden, r"raised RuntimeError for x of "
              r"shape \(\d, \d, \d+, \d+\)")


def test_jigsaw_tiles_with_one_permutation_for_all_images_is_told_so():
    """tiles[:, perms[0]] shuffles every image like the first one."""
    def first_permutation(x, perms):
        n, c, h, w = x.shape
        t = x.reshape(n, c, 3, h // 3, 3, w // 3).permute(0, 2, 4, 1, 3, 5)
        return t.reshape(n, 9, c, h // 3, w // 3)[:, perms[0]]

    for hidden in (False, True):
        assert "perms[n]" in fails(grading.check_jigsaw_tiles, first_permutation, hidden,
                                   "tiles differ")
