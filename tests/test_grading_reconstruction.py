"""Tests for sslkit.grading.reconstruction: answers written as a student would (here, with the
other published forms of the sRGB/Lab constants) pass the visible and hidden checks, typical
wrong answers fail with a one-line message naming the mistake, and answers that delegate to the
sslkit reference (directly or through an alias) fail the hidden check."""

import pytest
import torch
from solution_cells import fails

from sslkit.grading import reconstruction as grading
from sslkit.methods import colorization, inpainting
from sslkit.methods.colorization import rgb_to_lab as reference_rgb_to_lab  # alias delegation
from sslkit.methods.inpainting import masked_reconstruction_loss as reference_loss

# ---------------------------------------------------------------------------------------------
# Student-style answers (the rounded published constants: 0.008856, 7.787, the inverse matrix)

M = torch.tensor([[0.412453, 0.357580, 0.180423],
                  [0.212671, 0.715160, 0.072169],
                  [0.019334, 0.119193, 0.950227]])
M_INV = torch.tensor([[3.2404542, -1.5371385, -0.4985314],
                      [-0.9692660, 1.8760108, 0.0415560],
                      [0.0556434, -0.2040259, 1.0572252]])
WHITE = torch.tensor([0.950456, 1.0, 1.088754]).view(1, 3, 1, 1)


def student_split_lab(x, white=WHITE, gamma=True, l_scale=1.0):
    if gamma:
        lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055).clamp(min=0) ** 2.4, x / 12.92)
    else:
        lin = x
    xyz = torch.einsum("ij,bjhw->bihw", M, lin) / white
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    L = (116 * f[:, 1:2] - 16) * l_scale
    a = 500 * (f[:, 0:1] - f[:, 1:2])
    b = 200 * (f[:, 1:2] - f[:, 2:3])
    return L, torch.cat([a, b], dim=1)


def student_merge_lab(L, ab, gamma=True, clamp=True, white=WHITE):
    fy = (L + 16) / 116
    fx, fz = fy + ab[:, :1] / 500, fy - ab[:, 1:] / 200
    f = torch.cat([fx, fy, fz], dim=1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16 / 116) / 7.787) * white
    lin = torch.einsum("ij,bjhw->bihw", M_INV, xyz)
    if gamma:
        rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=1e-12) ** (1 / 2.4) - 0.055,
                          12.92 * lin)
    else:
        rgb = lin
    return rgb.clamp(0, 1) if clamp else rgb


def student_loss(x, recon, mask):
    diff = mask * (x - recon)
    return (diff**2).sum() / (mask.sum() * x.shape[1]).clamp(min=1)


CHECKS = [
    (grading.check_split_lab, student_split_lab),
    (grading.check_merge_lab, student_merge_lab),
    (grading.check_masked_reconstruction_loss, student_loss),
]


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("check, answer", CHECKS, ids=["split_lab", "merge_lab", "loss"])
def test_correct_answers_pass(check, answer, hidden):
    check(answer, hidden=hidden)


# ---------------------------------------------------------------------------------------------
# split_lab


@pytest.mark.parametrize("answer, match", [
    (lambda x: student_split_lab(x, gamma=False), "undo the sRGB gamma"),
    (lambda x: student_split_lab(x, white=torch.tensor([0.96422, 1.0, 0.82521]).view(
        1, 3, 1, 1)), "D50 is the wrong white"),
    (lambda x: student_split_lab(x, white=1.0), "D65 white point"),
    (lambda x: student_split_lab(x, l_scale=0.01), "L runs from 0 to 100"),
    (lambda x: (lambda L, ab: (L, ab.flip(1)))(*student_split_lab(x)), "a and b in the right"),
    (lambda x: (lambda L, ab: (L[:, 0], ab))(*student_split_lab(x)), "keep the channel"),
    (lambda x: torch.cat(student_split_lab(x), 1), "expected a pair"),
])
def test_split_lab_wrong_answers(answer, match):
    message = fails(grading.check_split_lab, answer, False, match)
    assert message.startswith("split_lab")


def test_split_lab_dark_colours_need_the_linear_segment():
    def no_linear_segment(x):
        lin = ((x + 0.055) / 1.055) ** 2.4
        xyz = torch.einsum("ij,bjhw->bihw", M, lin) / WHITE
        f = xyz.clamp(min=1e-12) ** (1 / 3)
        L = 116 * f[:, 1:2] - 16
        return L, torch.cat([500 * (f[:, :1] - f[:, 1:2]), 200 * (f[:, 1:2] - f[:, 2:])], 1)

    fails(grading.check_split_lab, no_linear_segment, True, "expected L")


@pytest.mark.parametrize("answer", [
    lambda x: colorization.split_lab(x),
    lambda x: (reference_rgb_to_lab(x)[:, :1], reference_rgb_to_lab(x)[:, 1:]),
    lambda x: (lambda lab: (lab[:, :1], lab[:, 1:]))(colorization.rgb_to_lab(x)),
])
def test_split_lab_delegation_fails_hidden(answer):
    grading.check_split_lab(answer, hidden=False)  # numerically right
    message = fails(grading.check_split_lab, answer, True, "calls the reference")
    assert "sslkit.methods.colorization" in message


# ---------------------------------------------------------------------------------------------
# merge_lab


@pytest.mark.parametrize("answer, match", [
    (lambda L, ab: student_merge_lab(L, ab, clamp=False), r"clamp the result to \[0, 1\]"),
    (lambda L, ab: student_merge_lab(L, ab, gamma=False), "sRGB gamma at the end"),
    (lambda L, ab: student_merge_lab(L, ab, white=torch.tensor([0.96422, 1.0, 0.82521]).view(
        1, 3, 1, 1)), "D50 is the wrong white"),
    (lambda L, ab: student_merge_lab(L, ab, white=1.0), "D65 white point"),
    (lambda L, ab: student_merge_lab(L, ab.flip(1)), "a and b in the right order"),
    (lambda L, ab: student_merge_lab(L * 100, ab), "L comes in"),
    (lambda L, ab: student_merge_lab(L, ab)[:, :2], "expected shape"),
])
def test_merge_lab_wrong_answers(answer, match):
    message = fails(grading.check_merge_lab, answer, False, match)
    assert message.startswith("merge_lab")


@pytest.mark.parametrize("answer", [
    lambda L, ab: colorization.merge_lab(L, ab),
    lambda L, ab: colorization.lab_to_rgb(torch.cat([L, ab], 1)).clamp(0, 1),
])
def test_merge_lab_delegation_fails_hidden(answer):
    grading.check_merge_lab(answer, hidden=False)
    fails(grading.check_merge_lab, answer, True, "calls the reference")


# ---------------------------------------------------------------------------------------------
# masked_reconstruction_loss


@pytest.mark.parametrize("answer, match", [
    (lambda x, r, m: ((m * (x - r)) ** 2).sum() / x.numel(), "not by all pixels"),
    (lambda x, r, m: ((x - r) ** 2).mean(), "only the masked pixels count"),
    (lambda x, r, m: (m * (x - r)).abs().sum() / (m.sum() * x.shape[1]), "square"),
    (lambda x, r, m: ((m * (x - r)) ** 2).sum() / m.sum(), "count every channel"),
    (lambda x, r, m: ((m * (x - r)) ** 2).sum(), "average the sum"),
    (lambda x, r, m: ((m * (x - r)) ** 2).sum(dim=(1, 2, 3)) / (m.sum() * 3), "scalar"),
])
def test_loss_wrong_answers(answer, match):
    message = fails(grading.check_masked_reconstruction_loss, answer, False, match)
    assert message.startswith("masked_reconstruction_loss")


def test_loss_averaged_image_by_image_fails_hidden():
    """A mean of per-image means equals the loss only when every image has a hole of the same
    size (the visible and the first hidden cases); the hidden check has holes of 1, 12 and 20
    pixels."""
    def per_image(x, r, m):
        count = (m.flatten(1).sum(1) * x.shape[1]).clamp(min=1)  # (N,)
        return (((m * (x - r)) ** 2).flatten(1).sum(1) / count).mean()

    grading.check_masked_reconstruction_loss(per_image, hidden=False)
    fails(grading.check_masked_reconstruction_loss, per_image, True, "not image by image")


def test_loss_nothing_masked_must_be_zero():
    def divides_by_zero(x, r, m):
        return ((m * (x - r)) ** 2).sum() / (m.sum() * x.shape[1])

    fails(grading.check_masked_reconstruction_loss, divides_by_zero, False, "nothing is masked")


def test_loss_without_gradient_fails():
    """A loss trains the network through its gradient: the visible check (values only) passed
    a detached loss, which failed only hidden."""
    def detached(x, r, m):
        return student_loss(x, r.detach(), m)

    for hidden in (False, True):
        fails(grading.check_masked_reconstruction_loss, detached, hidden, "no gradient")


@pytest.mark.parametrize("answer", [
    lambda x, r, m: inpainting.masked_reconstruction_loss(x, r, m),
    lambda x, r, m: reference_loss(x, r, m),
])
def test_loss_delegation_fails_hidden(answer):
    grading.check_masked_reconstruction_loss(answer, hidden=False)
    fails(grading.check_masked_reconstruction_loss, answer, True, "calls the reference")


def test_guard_restores_the_references():
    x = torch.rand(1, 3, 2, 2)
    before = colorization.rgb_to_lab(x)
    fails(grading.check_split_lab, lambda v: colorization.split_lab(v), True, "reference")
    assert torch.equal(colorization.rgb_to_lab(x), before)
    assert torch.equal(reference_rgb_to_lab(x), before)
    m = torch.ones(1, 1, 2, 2)
    assert reference_loss(x, x + 1, m) == 1


def test_loss_returning_a_constant_zero_when_nothing_is_masked_passes_hidden():
    """The exercise says: return 0 when nothing is masked. A constant 0 has no graph, and
    needs none: its gradient is 0, as the reference's."""
    def early_zero(x, r, m):
        if m.sum() == 0:
            return torch.zeros((), dtype=x.dtype)
        return student_loss(x, r, m)

    grading.check_masked_reconstruction_loss(early_zero, hidden=True)


def test_lab_conversions_that_change_their_input_in_place_fail():
    """Right values, but the input is overwritten: split_lab(x) that undoes the gamma in x
    itself leaves the notebook's merge_lab(*split_lab(x)) test comparing with a darker x, and
    the colorization figure showing it; both passed the visible and hidden checks."""
    def split_in_place(x):
        small = x <= 0.04045
        x[small] = x[small] / 12.92
        x[~small] = ((x[~small] + 0.055) / 1.055) ** 2.4
        return student_split_lab(x, gamma=False)

    def merge_in_place(L, ab):
        L += 0  # harmless on its own ...
        ab[:, 1:] *= -1  # ... but this flips b in the caller's tensor
        return student_merge_lab(L, ab * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))

    for hidden in (False, True):
        fails(grading.check_split_lab, split_in_place, hidden, "changed its input x in place")
        fails(grading.check_merge_lab, merge_in_place, hidden, "changed its input ab in place")


def test_loss_with_a_nan_gradient_when_nothing_is_masked_is_told_to_clamp():
    """0 / 0 replaced by 0 afterwards has the right value and a NaN gradient; the failure
    said only that the gradient differed 'by up to nan'."""
    def patched(x, r, m):
        return torch.nan_to_num(((m * (x - r)) ** 2).sum() / (m.sum() * x.shape[1]))

    grading.check_masked_reconstruction_loss(patched)  # the values are right
    assert "clamp(min=1)" in fails(grading.check_masked_reconstruction_loss, patched, True,
                                   "gradient is NaN")
