"""Tests for sslkit.grading: for every graded exercise of solutions/04_simclr, the solution (taken
from the source notebook's solution cells) passes the visible and hidden checks, typical wrong
answers fail with a one-line message, and answers that delegate to the sslkit reference fail
the hidden check."""

import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails, run_solution_cells
from torch import nn
from torchvision.transforms import v2

from sslkit import augment, grading, losses
from sslkit.losses import nt_xent as reference_nt_xent  # the alias form of delegation
from sslkit.methods import SimCLR

NOTEBOOK = Path(__file__).parent.parent / "solutions" / "04_simclr" / "04_simclr.ipynb"
SOLUTION_CELLS = ("build_augmentation", "similarity_matrix", "nt_xent_loop", "nt_xent",
                  "simclr_step")


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    """The notebook's solution cells, run in order in one namespace, as the notebook does."""
    namespace = {"torch": torch, "F": F, "nn": nn, "v2": v2, "math": math}
    return run_solution_cells(NOTEBOOK, SOLUTION_CELLS, namespace)


CHECKS = {
    "build_augmentation": grading.check_build_augmentation,
    "similarity_matrix": grading.check_similarity_matrix,
    "nt_xent_loop": grading.check_nt_xent_loop,
    "nt_xent": grading.check_nt_xent,
    "simclr_step": grading.check_simclr_step,
}


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    CHECKS[exercise](getattr(solution, exercise), hidden=hidden)


def test_guard_restores_the_references():
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    before = float(losses.nt_xent(z1, z2, 0.5))
    fails(grading.check_nt_xent, lambda a, b, t: losses.nt_xent(a, b, t), True, "reference")
    assert float(losses.nt_xent(z1, z2, 0.5)) == before
    assert float(reference_nt_xent(z1, z2, 0.5)) == before
    assert isinstance(augment.view_transform(), v2.Compose)


# ---------------------------------------------------------------------------------------------
# 1. build_augmentation


def test_augmentation_wrong_answers(solution):
    def resize_only(size):
        return v2.Compose([v2.Resize((size, size), antialias=True),
                           v2.ToDtype(torch.float32, scale=True)])

    def same_view_every_time(size):
        transform, seen = solution.build_augmentation(size), {}

        def fixed(img):
            key = (tuple(img.shape), int(img.float().sum()))
            return seen.setdefault(key, transform(img))

        return fixed

    def unscaled(size):
        return v2.Compose(solution.build_augmentation(size).transforms[:-1]
                          + [v2.ToDtype(torch.float32)])

    def without(kind):
        def build(size):
            steps = [t for t in solution.build_augmentation(size).transforms
                     if not isinstance(t, kind)]
            if kind is v2.RandomResizedCrop:
                steps.insert(0, v2.Resize((size, size), antialias=True))
            return v2.Compose(steps)

        return build

    check = grading.check_build_augmentation
    fails(check, resize_only, False, "same view")
    fails(check, same_view_every_time, False, "same view")
    fails(check, unscaled, False, r"values in \[0, 1\]")
    fails(check, lambda size: (lambda img: img), False, "shape")
    fails(check, without(v2.RandomResizedCrop), True, "RandomResizedCrop|16 different views")
    fails(check, without(v2.RandomHorizontalFlip), True, "RandomHorizontalFlip")
    fails(check, without(v2.RandomGrayscale), True, "RandomGrayscale")
    fails(check, without(v2.RandomApply), True, "ColorJitter")


def test_augmentation_delegation_fails_hidden():
    def via_view_transform(size):
        return augment.view_transform(augment.ViewConfig(size=size))

    def via_batched_views(size):
        views = augment.SimCLRViews(augment.ViewConfig(size=size))
        return lambda img: views(img[None])[0]

    for answer in (via_view_transform, via_batched_views):
        grading.check_build_augmentation(answer)  # numerically fine: passes the visible check
        fails(grading.check_build_augmentation, answer, True, "calls the reference sslkit")


# ---------------------------------------------------------------------------------------------
# 2. similarity_matrix


def test_similarity_alternatives_pass():
    def with_cosine_similarity(z1, z2):
        z = torch.cat([z1, z2])
        return F.cosine_similarity(z[:, None], z[None], dim=-1)

    grading.check_similarity_matrix(with_cosine_similarity, hidden=True)


def test_similarity_wrong_answers():
    check = grading.check_similarity_matrix

    def dot_products(z1, z2):
        z = torch.cat([z1, z2])
        return z @ z.T

    def interleaved(z1, z2):
        z = F.normalize(torch.stack([z1, z2], dim=1).flatten(0, 1), dim=1)
        return z @ z.T

    fails(check, dot_products, False, "L2-normalise")
    fails(check, interleaved, False, r"\[z1; z2\]")
    fails(check, lambda z1, z2: F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T, False,
          r"expected shape \(8, 8\)")


def test_similarity_delegation_fails_hidden():
    def delegating(z1, z2):
        z = torch.cat([z1, z2])
        return losses.cosine_similarity_matrix(z, z)

    grading.check_similarity_matrix(delegating)
    fails(grading.check_similarity_matrix, delegating, True, "cosine_similarity_matrix")


# ---------------------------------------------------------------------------------------------
# 3.-4. nt_xent_loop and nt_xent


def _logits_labels(z1, z2, t, keep_diagonal=False):
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / t
    if not keep_diagonal:
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    return logits, (torch.arange(2 * n) + n) % (2 * n)


def self_in_denominator(z1, z2, t):
    return F.cross_entropy(*_logits_labels(z1, z2, t, keep_diagonal=True))


def temperature_twice(z1, z2, t):
    logits, labels = _logits_labels(z1, z2, t)
    return F.cross_entropy(logits / t, labels)


def mean_over_n(z1, z2, t):
    logits, labels = _logits_labels(z1, z2, t)
    return F.cross_entropy(logits, labels, reduction="sum") / len(z1)


def no_gradient(z1, z2, t):
    with torch.no_grad():
        return F.cross_entropy(*_logits_labels(z1, z2, t))


@pytest.mark.parametrize("check", [grading.check_nt_xent, grading.check_nt_xent_loop],
                         ids=["nt_xent", "nt_xent_loop"])
def test_nt_xent_wrong_answers(check):
    assert "own denominator" in fails(check, self_in_denominator, False, "expected")
    assert "temperature twice" in fails(check, temperature_twice, False, "expected")
    assert "2N anchors, not N" in fails(check, mean_over_n, False, "expected")
    fails(check, lambda z1, z2, t: float(F.cross_entropy(*_logits_labels(z1, z2, t))), False,
          "expected a torch.Tensor")
    for hidden in (False, True):  # the right value, but nothing to train with
        fails(check, no_gradient, hidden, "no gradient")


@pytest.mark.parametrize("check", [grading.check_nt_xent, grading.check_nt_xent_loop],
                         ids=["nt_xent", "nt_xent_loop"])
@pytest.mark.parametrize("reference", [losses.nt_xent, reference_nt_xent, losses.nt_xent_loop],
                         ids=["module", "alias", "loop"])
def test_nt_xent_delegation_fails_hidden(check, reference):
    def delegating(z1, z2, temperature):
        return reference(z1, z2, temperature)

    check(delegating)  # numerically right, so the visible check passes
    assert "calls the reference sslkit.losses" in fails(check, delegating, True, "reference")


# ---------------------------------------------------------------------------------------------
# 5. simclr_step


def _step(separate=False, zero_grad=True, step=True, as_float=True):
    def simclr_step(model, optimizer, v1, v2, temperature):
        if separate:
            z1, z2 = model(v1), model(v2)
        else:
            z1, z2 = model(torch.cat([v1, v2])).chunk(2)
        loss = losses.nt_xent(z1, z2, temperature)
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        if step:
            optimizer.step()
        return loss.item() if as_float else loss

    return simclr_step


def test_step_with_reference_loss_passes():
    grading.check_simclr_step(_step(), hidden=True)  # sslkit.losses.nt_xent is allowed here


def test_step_wrong_answers():
    check = grading.check_simclr_step
    assert "ONE forward pass" in fails(check, _step(separate=True), False, "expected loss")
    fails(check, _step(zero_grad=False), False, "zero_grad")
    fails(check, _step(step=False), False, "did not change")
    fails(check, _step(as_float=False), False, "Python float")


def test_step_delegation_fails_hidden():
    def delegating(model, optimizer, v1, v2, temperature):
        owner = types.SimpleNamespace(embed=model, temperature=temperature)
        loss = SimCLR.loss_on_views(owner, v1, v2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    grading.check_simclr_step(delegating)
    fails(grading.check_simclr_step, delegating, True, "SimCLR.loss_on_views")


# ---------------------------------------------------------------------------------------------
# Unfinished, unreturned, NaN and in-place answers get a message that names the fix


def unfinished(*args):
    raise NotImplementedError()  # what nbgrader leaves in a student's cell


def test_unfinished_answers_say_so():
    for check in (grading.check_nt_xent, grading.check_simclr_step):
        for hidden in (False, True):
            message = fails(check, unfinished, hidden, "is not written yet")
            assert "raise NotImplementedError()" in message


def test_missing_return_says_so():
    fails(grading.check_nt_xent, lambda z1, z2, t: None, False, "forget the return")
    fails(grading.check_similarity_matrix, lambda z1, z2: None, False, "forget the return")


def nan_from_masked_one_hot(z1, z2, t):
    """-inf on the diagonal times a 0 of the one-hot labels gives NaN."""
    logits, labels = _logits_labels(z1, z2, t)
    return -(F.log_softmax(logits, 1) * F.one_hot(labels, len(labels))).sum(1).mean()


def normalises_in_place(z1, z2, t):
    z1 /= z1.norm(dim=1, keepdim=True)
    z2 /= z2.norm(dim=1, keepdim=True)
    return F.cross_entropy(*_logits_labels(z1, z2, t))


def rewrapped(z1, z2, t):
    value = F.cross_entropy(*_logits_labels(z1.detach(), z2.detach(), t)).item()
    return torch.tensor(value, requires_grad=True)


def test_nt_xent_nan_in_place_and_detached_answers():
    check = grading.check_nt_xent
    assert "0 * inf" in fails(check, nan_from_masked_one_hot, False, "got nan")
    fails(check, normalises_in_place, False, "changed its input z1 in place")
    for hidden in (False, True):  # the right value, cut off from the inputs
        fails(check, rewrapped, hidden, "no gradient flows")


def test_step_with_a_nan_loss_fails():
    def nan_step(model, optimizer, v1, v2, temperature):
        z1, z2 = model(torch.cat([v1, v2])).chunk(2)
        loss = nan_from_masked_one_hot(z1, z2, temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # every weight becomes NaN
        return loss.item()

    for hidden in (False, True):
        assert "0 * inf" in fails(grading.check_simclr_step, nan_step, hidden, "got nan")


def test_a_failed_assert_in_the_answer_is_named():
    def asserts(z1, z2, t):
        assert z1.shape[1] == 128
        return F.cross_entropy(*_logits_labels(z1, z2, t))

    fails(grading.check_nt_xent, asserts, False, r"^nt_xent: an assert in your code failed for N")


def loop_of_floats(z1, z2, t):
    """The loop of Exercise 3 summing each anchor's loss with .item(), then wrapping the mean
    in a tensor: the right value, no gradient (the text asks for one: 'so that gradients can
    flow')."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    s = z @ z.T
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(torch.exp(s[i, k] / t) for k in range(2 * n) if k != i)
        total += (-torch.log(torch.exp(s[i, j] / t) / denominator)).item()
    return torch.tensor(total / (2 * n))


def test_nt_xent_loop_without_a_gradient_fails_visible():
    """It passed the visible check, which compared values only, and failed the hidden one."""
    for hidden in (False, True):
        fails(grading.check_nt_xent_loop, loop_of_floats, hidden, "no gradient")


def test_in_place_edits_of_inputs_that_require_grad_are_told_to_make_new_tensors():
    """The hidden check's inputs require grad, so z1 /= norm is torch's 'leaf Variable' error;
    its hint spoke only of parameter updates under torch.no_grad(), which is no advice for a
    loss."""
    message = fails(grading.check_nt_xent, normalises_in_place, True, "leaf Variable")
    assert "z = z / n" in message


def test_step_that_splits_the_output_every_other_row_is_told_to_chunk():
    """model(torch.cat([v1, v2])) then z[0::2], z[1::2] pairs the wrong rows; the hint blamed
    nt_xent."""
    def every_other_row(model, optimizer, v1, v2, temperature):
        z = model(torch.cat([v1, v2]))
        loss = losses.nt_xent(z[0::2], z[1::2], temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    for hidden in (False, True):
        assert ".chunk(2)" in fails(grading.check_simclr_step, every_other_row, hidden,
                                    "expected loss")


@pytest.mark.parametrize("shift", [1, -1], ids=["i + N + 1", "i + N - 1"])
def test_nt_xent_with_partners_off_by_one_is_named(shift):
    """Labels (i + N ± 1) mod 2N pair each view with its partner's neighbour; the failure gave
    no hint."""
    def off_by_one(z1, z2, t):
        logits, labels = _logits_labels(z1, z2, t)
        return F.cross_entropy(logits, (labels + shift) % len(labels))

    for check in (grading.check_nt_xent, grading.check_nt_xent_loop):
        assert "i + N (mod 2N)" in fails(check, off_by_one, False, "expected")
