"""Tests for sslkit.grading.triplet: for every graded exercise of solutions/02_triplet_loss, the
solution (taken from the source notebook's solution cells) passes the visible and hidden checks,
typical wrong answers fail with a one-line message, and answers that delegate to the sslkit
reference (by module attribute or by alias) fail the hidden check."""

import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails, run_solution_cells

from sslkit import losses
from sslkit.grading import triplet as grading
from sslkit.losses import triplet_loss as reference_triplet_loss  # the alias form of delegation
from sslkit.methods import triplet
from sslkit.methods.triplet import batch_hard_negatives as reference_batch_hard
from sslkit.methods.triplet import semi_hard_negatives as reference_semi_hard

NOTEBOOK = (Path(__file__).parent.parent / "solutions" / "02_triplet_loss"
            / "02_triplet_loss.ipynb")
SOLUTION_CELLS = ("triplet_loss", "batch_hard_negatives", "semi_hard_negatives")
CHECKS = {
    "triplet_loss": grading.check_triplet_loss,
    "batch_hard_negatives": grading.check_batch_hard,
    "semi_hard_negatives": grading.check_semi_hard,
}


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    """The notebook's solution cells, run in order in one namespace, as the notebook does."""
    return run_solution_cells(NOTEBOOK, SOLUTION_CELLS, {"torch": torch, "F": F})


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    CHECKS[exercise](getattr(solution, exercise), hidden=hidden)


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
def test_loop_answers_pass(hidden):
    """Plain loops written by a student (not the reference loops, which are guarded)."""

    def loss_loop(a, p, n, margin):
        total = 0
        for i in range(len(a)):
            total = total + torch.clamp(((a[i] - p[i]) ** 2).sum() - ((a[i] - n[i]) ** 2).sum()
                                        + margin, min=0)
        return total / len(a)

    def hard_loop(dist, invalid):
        out = []
        for i in range(dist.shape[0]):
            valid = [j for j in range(dist.shape[1]) if not invalid[i, j]]
            out.append(min(valid, key=lambda j: float(dist[i, j])))
        return torch.tensor(out)

    grading.check_triplet_loss(loss_loop, hidden=hidden)
    grading.check_batch_hard(hard_loop, hidden=hidden)


def test_guard_restores_the_references():
    a, p, n = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    before = float(losses.triplet_loss(a, p, n, 0.5))
    fails(grading.check_triplet_loss, lambda *args: losses.triplet_loss(*args), True,
          "reference")
    assert float(losses.triplet_loss(a, p, n, 0.5)) == before
    assert float(reference_triplet_loss(a, p, n, 0.5)) == before
    dist, invalid = torch.rand(4, 4), torch.eye(4, dtype=torch.bool)
    fails(grading.check_batch_hard, lambda d, m: reference_batch_hard(d, m), True, "reference")
    assert torch.equal(triplet.batch_hard_negatives(dist, invalid),
                       triplet.batch_hard_negatives_loop(dist, invalid))


# ---------------------------------------------------------------------------------------------
# 1. triplet_loss


def euclidean(a, p, n, margin):
    return F.relu((a - p).norm(dim=1) - (a - n).norm(dim=1) + margin).mean()


def summed(a, p, n, margin):
    return F.relu((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + margin).sum()


def no_hinge(a, p, n, margin):
    return ((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + margin).mean()


def torch_builtin(a, p, n, margin):
    return F.triplet_margin_loss(a, p, n, margin=margin)


def no_gradient(a, p, n, margin):
    with torch.no_grad():
        return F.relu((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + margin).mean()


def test_triplet_loss_wrong_answers():
    check = grading.check_triplet_loss
    assert "square the distances" in fails(check, euclidean, False, "expected")
    assert "square the distances" in fails(check, torch_builtin, False, "expected")
    assert "mean, not sum" in fails(check, summed, False, "expected")
    assert "hinge is missing" in fails(check, no_hinge, False, "expected")
    fails(check, lambda a, p, n, m: F.relu((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1)).mean(),
          False, "expected")
    fails(check, lambda a, p, n, m: F.relu((a - p).pow(2).sum(1)
                                           - (a - n).pow(2).sum(1) + m), False, "scalar")
    fails(check, no_gradient, True, "no gradient")


@pytest.mark.parametrize("reference", [losses.triplet_loss, reference_triplet_loss],
                         ids=["module", "alias"])
def test_triplet_loss_delegation_fails_hidden(reference):
    def delegating(a, p, n, margin):
        return reference(a, p, n, margin)

    grading.check_triplet_loss(delegating)  # numerically right, so the visible check passes
    message = fails(grading.check_triplet_loss, delegating, True, "reference")
    assert "calls the reference sslkit.losses.triplet_loss" in message


# ---------------------------------------------------------------------------------------------
# 2. batch_hard_negatives


def test_batch_hard_wrong_answers():
    check = grading.check_batch_hard
    assert "mask the invalid" in fails(check, lambda d, m: d.argmin(1), False, "not a negative")
    assert "argmin" in fails(check, lambda d, m: d.masked_fill(m, -1e9).argmax(1), False,
                             "CLOSEST")
    fails(check, lambda d, m: d.masked_fill(m, float("inf")).min(1).values, False, "integer")
    fails(check, lambda d, m: d.masked_fill(m, float("inf")).argmin(0), True, "expected")


@pytest.mark.parametrize("reference", [triplet.batch_hard_negatives, reference_batch_hard,
                                       triplet.batch_hard_negatives_loop],
                         ids=["module", "alias", "loop"])
def test_batch_hard_delegation_fails_hidden(reference):
    def delegating(dist, invalid):
        return reference(dist, invalid)

    grading.check_batch_hard(delegating)
    fails(grading.check_batch_hard, delegating, True, "calls the reference sslkit.methods")


# ---------------------------------------------------------------------------------------------
# 3. semi_hard_negatives


def _band(dist_ap, dist_an, margin, invalid, low_ok=False, high_ok=False):
    d = dist_ap[:, None]
    low = dist_an >= d if low_ok else dist_an > d
    high = dist_an <= d + margin if high_ok else dist_an < d + margin
    return low & high & ~invalid


def fallback_hardest(dist_ap, dist_an, margin, invalid):
    band = _band(dist_ap, dist_an, margin, invalid)
    in_band = dist_an.masked_fill(~band, float("inf")).argmin(1)
    hardest = dist_an.masked_fill(invalid, float("inf")).argmin(1)
    return torch.where(band.any(1), in_band, hardest)


def no_margin(dist_ap, dist_an, margin, invalid):
    """The closest negative farther than the positive, however far (margin ignored)."""
    band = _band(dist_ap, dist_an, float("inf"), invalid)
    in_band = dist_an.masked_fill(~band, float("inf")).argmin(1)
    easiest = dist_an.masked_fill(invalid, float("-inf")).argmax(1)
    return torch.where(band.any(1), in_band, easiest)


def farthest_in_band(dist_ap, dist_an, margin, invalid):
    band = _band(dist_ap, dist_an, margin, invalid)
    in_band = dist_an.masked_fill(~band, float("-inf")).argmax(1)
    easiest = dist_an.masked_fill(invalid, float("-inf")).argmax(1)
    return torch.where(band.any(1), in_band, easiest)


def inclusive_band(dist_ap, dist_an, margin, invalid):
    band = _band(dist_ap, dist_an, margin, invalid, low_ok=True, high_ok=True)
    in_band = dist_an.masked_fill(~band, float("inf")).argmin(1)
    easiest = dist_an.masked_fill(invalid, float("-inf")).argmax(1)
    return torch.where(band.any(1), in_band, easiest)


def unmasked(dist_ap, dist_an, margin, invalid):
    no_invalid = torch.zeros_like(invalid)
    band = _band(dist_ap, dist_an, margin, no_invalid)
    in_band = dist_an.masked_fill(~band, float("inf")).argmin(1)
    return torch.where(band.any(1), in_band, dist_an.argmax(1))


def fallback_unmasked(dist_ap, dist_an, margin, invalid):
    """Masks the band, but forgets the invalid candidates in the fallback."""
    band = _band(dist_ap, dist_an, margin, invalid)
    in_band = dist_an.masked_fill(~band, float("inf")).argmin(1)
    return torch.where(band.any(1), in_band, dist_an.argmax(1))


def test_semi_hard_wrong_answers(solution):
    check = grading.check_semi_hard
    assert "EASIEST" in fails(check, fallback_hardest, False, "expected")
    assert "within the margin" in fails(check, no_margin, False, "expected")
    assert "closest one" in fails(check, farthest_in_band, False, "expected")
    fails(check, lambda ap, an, m, inv: solution.batch_hard_negatives(an, inv), False,
          "expected")
    fails(check, inclusive_band, False, "edges")  # only the hand-made case has ties
    fails(check, unmasked, False, "not a negative|expected")
    # in the random cases the invalid candidates are the closest, never the farthest: only the
    # hand-made row with an invalid candidate farthest away catches a fallback that ignores them
    assert "masked_fill with +inf before an argmin, -inf before an argmax" in fails(
        check, fallback_unmasked, False, "not a negative")


@pytest.mark.parametrize("reference", [triplet.semi_hard_negatives, reference_semi_hard,
                                       triplet.semi_hard_negatives_loop],
                         ids=["module", "alias", "loop"])
def test_semi_hard_delegation_fails_hidden(reference):
    def delegating(dist_ap, dist_an, margin, invalid):
        return reference(dist_ap, dist_an, margin, invalid)

    grading.check_semi_hard(delegating)
    fails(grading.check_semi_hard, delegating, True, "calls the reference sslkit.methods")


def test_mining_that_changes_its_inputs_in_place_fails():
    """masked_fill_ (the hint says masked_fill) picks the right candidates but writes inf into
    the caller's matrix: the notebook then passes dist.diagonal(), all inf, to
    semi_hard_negatives and shows the fallback as 'semi-hard'. Both checks passed it."""
    def batch_hard_in_place(dist, invalid):
        return dist.masked_fill_(invalid, float("inf")).argmin(1)

    def semi_hard_in_place(dist_ap, dist_an, margin, invalid):
        band = (dist_an > dist_ap[:, None]) & (dist_an < dist_ap[:, None] + margin) & ~invalid
        easiest = dist_an.masked_fill(invalid, float("-inf")).argmax(1)
        return torch.where(band.any(1), dist_an.masked_fill_(~band, float("inf")).argmin(1),
                           easiest)

    for hidden in (False, True):
        fails(grading.check_batch_hard, batch_hard_in_place, hidden,
              "changed its input dist in place")
        fails(grading.check_semi_hard, semi_hard_in_place, hidden,
              "changed its input dist_an in place")


def test_batch_hard_that_masks_the_diagonal_instead_of_invalid_fails_visible():
    """invalid marks more than the diagonal when there are labels (and the matrix need not be
    square); answers that masked the diagonal themselves passed the visible check, whose only
    case was the diagonal."""
    def eye(dist, invalid):
        return (dist + 1e9 * torch.eye(*dist.shape)).argmin(1)

    def second_smallest(dist, invalid):  # assumes each anchor's own positive is the closest
        return dist.topk(2, dim=1, largest=False).indices[:, 1]

    for answer in (eye, second_smallest):
        for hidden in (False, True):
            fails(grading.check_batch_hard, answer, hidden, "not a negative|expected")


def band_then_mask(dist_ap, dist_an, margin, invalid):
    """Decides which anchors have a semi-hard negative before leaving out the invalid ones: an
    anchor whose only candidate in the band is invalid takes argmin over all-inf (index 0)
    instead of the fallback."""
    band = _band(dist_ap, dist_an, margin, torch.zeros_like(invalid))
    has_band = band.any(1)
    band = band & ~invalid
    in_band = dist_an.masked_fill(~band, float("inf")).argmin(1)
    easiest = dist_an.masked_fill(invalid, float("-inf")).argmax(1)
    return torch.where(has_band, in_band, easiest)


def test_semi_hard_mistakes_at_the_edges_fail_visible():
    """The visible check has the hand-made case too: ties on the band's edges, an invalid
    candidate farthest away, and one whose only candidate in the band is invalid. Before, the
    first three answers passed the visible check, the last one both checks."""
    check = grading.check_semi_hard
    for hidden in (False, True):
        assert "edges" in fails(check, inclusive_band, hidden, "expected")
        fails(check, fallback_unmasked, hidden, "not a negative")
        fails(check, unmasked, hidden, "not a negative|expected")
        assert "mask the invalid" in fails(check, band_then_mask, hidden, "not a negative")


def test_triplet_loss_without_a_gradient_fails_visible():
    """The text asks for a tensor 'so that gradients can flow'; a loop over the triplets that
    adds up .item() values, or a torch.no_grad() block, passed the visible check (values only)."""
    def floats(a, p, n, margin):
        total = 0.0
        for i in range(len(a)):
            total += max(0.0, float(((a[i] - p[i]) ** 2).sum() - ((a[i] - n[i]) ** 2).sum())
                         + margin)
        return torch.tensor(total / len(a))

    for answer in (floats, no_gradient):
        for hidden in (False, True):
            fails(grading.check_triplet_loss, answer, hidden, "no gradient")


def test_triplet_loss_averaged_over_the_features_is_named():
    def feature_mean(a, p, n, margin):
        return F.relu((a - p).pow(2).mean(1) - (a - n).pow(2).mean(1) + margin).mean()

    assert "SUM of the squared differences" in fails(grading.check_triplet_loss, feature_mean,
                                                     False, "expected")
