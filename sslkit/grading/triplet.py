"""Checks for 02_triplet_loss: triplet_loss, batch_hard_negatives, semi_hard_negatives.
See sslkit.grading for the conventions (visible / hidden checks, one-line failures, the
delegation guard)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sslkit import losses
from sslkit.grading.guard import (
    as_tensor,
    call,
    case_label,
    close,
    match_value,
    quiet,
    randn,
    require_flow,
    require_grad,
    require_graph,
    require_unchanged,
    scalar,
)
from sslkit.methods import triplet

_MINING_REFERENCES = {
    "sslkit.methods.triplet.batch_hard_negatives": triplet.batch_hard_negatives,
    "sslkit.methods.triplet.batch_hard_negatives_loop": triplet.batch_hard_negatives_loop,
    "sslkit.methods.triplet.semi_hard_negatives": triplet.semi_hard_negatives,
    "sslkit.methods.triplet.semi_hard_negatives_loop": triplet.semi_hard_negatives_loop,
    "sslkit.methods.triplet.Triplet.mine": triplet.Triplet.mine,
}
REFERENCES = {
    "triplet_loss": {
        "sslkit.losses.triplet_loss": losses.triplet_loss,
        "sslkit.losses.margin_triplet": losses.margin_triplet,
        "sslkit.methods.triplet.Triplet.loss_on_views": triplet.Triplet.loss_on_views,
    },
    "batch_hard_negatives": _MINING_REFERENCES,
    "semi_hard_negatives": _MINING_REFERENCES,
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    """guard.call with this notebook's references blocked when guard is True."""
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


# ----------------------------------------------------------------------------------------------
# 1. triplet_loss(anchor, positive, negative, margin)
# ----------------------------------------------------------------------------------------------


def _loss_variants(a, p, n, margin: float) -> dict[str, torch.Tensor]:
    """Values of the usual mistakes, each keyed by the hint that fixes it."""
    d_ap = (a - p).pow(2).sum(1)  # (N,)
    d_an = (a - n).pow(2).sum(1)
    ref = F.relu(d_ap - d_an + margin).mean()
    return {
        "did you square the distances? The loss uses ||a-p||² and ||a-n||², not the Euclidean "
        "distance (F.triplet_margin_loss and torch.dist take the square root)":
            F.relu(d_ap.sqrt() - d_an.sqrt() + margin).mean(),
        "did you average over the triplets (mean, not sum)?": ref * len(a),
        "the hinge is missing: clamp each triplet's value at 0 (F.relu or .clamp(min=0))":
            (d_ap - d_an + margin).mean(),
        "apply the hinge to each triplet before averaging, not to the mean":
            F.relu((d_ap - d_an + margin).mean()),
        "did you ADD the margin (d_ap - d_an + margin)?": F.relu(d_ap - d_an - margin).mean(),
        "did you swap positive and negative? The positive distance comes first":
            F.relu(d_an - d_ap + margin).mean(),
        "did you use the margin argument (not a fixed 1.0)?": F.relu(d_ap - d_an + 1.0).mean(),
        "did you sum the squared differences over the feature axis (dim=1) only?":
            F.relu((a - p).pow(2) - (a - n).pow(2) + margin).mean(),
        "||a - p||² is the SUM of the squared differences over the D features (.sum(dim=1)), "
        "not their mean": F.relu((a - p).pow(2).mean(1) - (a - n).pow(2).mean(1) + margin).mean(),
    }


_NAMES = ("anchor", "positive", "negative")


def _compare_triplet_loss(ex: str, fn: Callable, a, p, n, margin: float, grad: bool) -> None:
    where = case_label(*a.shape) + f", margin={margin}"
    args = [t.clone().requires_grad_(grad) for t in (a, p, n)]
    got = scalar(ex, _call(ex, fn, *args, margin, where=where, guard=grad), where)
    require_unchanged(ex, _NAMES, args, (a, p, n), where)
    expected = losses.triplet_loss(a, p, n, margin)
    if not close(got, expected):  # the variants are only computed for a wrong answer
        match_value(ex, got, expected, _loss_variants(a, p, n, margin), where)
    if not grad:
        require_graph(ex, lambda *v: _call(ex, fn, *v, margin, where=where), (a, p, n), where,
                      _NAMES)
        return
    require_grad(ex, got, where)
    require_flow(ex, got, dict(zip(_NAMES, args)), where)
    grads = _call(ex, torch.autograd.grad, got, args, where=where + " in backward")
    refs = [t.clone().requires_grad_() for t in (a, p, n)]
    expected_grads = torch.autograd.grad(losses.triplet_loss(*refs, margin), refs)
    for name, g, e in zip(_NAMES, grads, expected_grads):
        if not torch.allclose(g, e, atol=1e-5, rtol=1e-4):
            raise AssertionError(f"{ex}: the gradient with respect to {name} differs from the "
                                 f"reference by up to {float((g - e).abs().max()):.2g}{where}")


@quiet
def check_triplet_loss(triplet_loss: Callable, hidden: bool = False) -> None:
    """triplet_loss(anchor, positive, negative, margin) gives the reference value (hidden: more
    cases, margins 0 and large, gradients, delegation guard)."""
    ex = "triplet_loss"
    if hidden:
        cases = [(2, 3, 0.0, 1), (5, 4, 0.2, 2), (8, 16, 1.0, 3), (6, 2, 3.0, 4)]
    else:
        cases = [(4, 3, 1.0, 0)]
    for n, d, margin, seed in cases:
        a, p = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
        neg = randn(n, d, seed=seed + 200)
        _compare_triplet_loss(ex, triplet_loss, a, p, neg, margin, grad=hidden)
    if hidden:
        # Collapse: every embedding the same point -> every distance 0 -> loss = margin.
        z = torch.ones(4, 3)
        for margin in (0.0, 0.5):
            where = f" for a constant embedding (all rows equal), margin={margin}"
            got = scalar(ex, _call(ex, triplet_loss, z.clone(), z.clone(), z.clone(), margin,
                                   where=where, guard=True), where)
            if abs(float(got) - margin) > 1e-6:
                raise AssertionError(f"{ex}: expected {margin} (all distances 0, so the hinge "
                                     f"gives the margin), got {float(got):.4f}{where}")


# ----------------------------------------------------------------------------------------------
# 2.-3. Mining: batch_hard_negatives(dist, invalid), semi_hard_negatives(dist_ap, dist_an, ...)
# ----------------------------------------------------------------------------------------------


def _mining_case(n: int, m: int, seed: int, labels: bool):
    """Squared distances (N, M) between random embeddings and the invalid mask: the diagonal
    (each anchor's own positive) or, with labels, every candidate of the anchor's class. As in
    training, the invalid candidates tend to be the closest (a positive is near its anchor, a
    class is clustered), so an answer that forgets the mask picks them."""
    a, b = randn(n, 4, seed=seed), randn(m, 4, seed=seed + 50)
    if labels:
        g = torch.Generator().manual_seed(seed + 7)
        la = torch.randint(0, 3, (n,), generator=g)
        lb = torch.randint(0, 3, (m,), generator=g)
        lb[:3] = torch.arange(3)  # every class among the candidates, so each anchor has one
        centres = 2 * randn(3, 4, seed=seed + 8)
        a, b = centres[la] + 0.7 * a, centres[lb] + 0.7 * b
        invalid = triplet.same_label(la, lb)
        what = f" (N={n} anchors, M={m} candidates, 3 classes; invalid = same class)"
    else:
        k = min(n, m)
        b[:k] = a[:k] + 0.3 * b[:k]  # candidate i is anchor i's positive: nearby
        invalid = torch.eye(n, m, dtype=torch.bool)
        what = f" (N={n} anchors, invalid = the diagonal: each anchor's own positive)"
    return triplet.pairwise_sq_distances(a, b), invalid, what


def _indices(ex: str, got, n: int, m: int, where: str) -> torch.Tensor:
    got = as_tensor(ex, got, where)
    if tuple(got.shape) != (n,):
        raise AssertionError(f"{ex}: expected one index per anchor, shape ({n},), got "
                             f"{tuple(got.shape)}{where}: reduce over the candidates (dim=1)")
    if got.is_floating_point() or got.dtype == torch.bool:
        raise AssertionError(f"{ex}: expected integer indices, got {got.dtype}{where}: return "
                             f"the argmin / argmax (indices), not the distances")
    got = got.long()
    if bool(((got < 0) | (got >= m)).any()):
        raise AssertionError(f"{ex}: indices must lie in 0..{m - 1}, got {got.tolist()}{where}")
    return got


def _invalid_choice(ex: str, got: torch.Tensor, invalid: torch.Tensor, where: str) -> None:
    bad = invalid[torch.arange(len(got)), got]
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(
            f"{ex}: for anchor {i} you chose candidate {int(got[i])}, which is not a negative "
            f"(invalid: the anchor's own positive or same label){where} — mask the invalid "
            f"entries first (masked_fill with +inf before an argmin, -inf before an argmax)")


def _first_wrong(got: torch.Tensor, expected: torch.Tensor) -> int:
    return int((got != expected).nonzero()[0])


def _compare_batch_hard(ex: str, fn: Callable, dist, invalid, what: str, guard: bool) -> None:
    n, m = dist.shape
    args = (dist.clone(), invalid.clone())
    got = _call(ex, fn, *args, where=what, guard=guard)
    require_unchanged(ex, ("dist", "invalid"), args, (dist, invalid), what)
    got = _indices(ex, got, n, m, what)
    _invalid_choice(ex, got, invalid, what)
    expected = triplet.batch_hard_negatives(dist, invalid)
    if torch.equal(got, expected):
        return
    i = _first_wrong(got, expected)
    hint = ""
    if torch.equal(got, dist.masked_fill(invalid, float("-inf")).argmax(1)):
        hint = " — the hardest negative is the CLOSEST one: argmin of the distances, not argmax"
    raise AssertionError(
        f"{ex}: for anchor {i} expected candidate {int(expected[i])} (distance "
        f"{float(dist[i, expected[i]]):.3f}), got {int(got[i])} (distance "
        f"{float(dist[i, got[i]]):.3f}){what}{hint}")


@quiet
def check_batch_hard(batch_hard_negatives: Callable, hidden: bool = False) -> None:
    """batch_hard_negatives(dist, invalid) -> (N,) index of the closest valid candidate (hidden:
    more sizes, labels, rectangular matrices, delegation guard)."""
    ex = "batch_hard_negatives"
    # visible: the diagonal, and labels with more candidates than anchors (invalid is not
    # always the diagonal, and the matrix need not be square)
    cases = [(6, 6, 0, False), (5, 8, 6, True)] if not hidden else [
        (2, 2, 1, False), (8, 8, 2, False), (9, 9, 3, True), (5, 12, 4, True)]
    for n, m, seed, labels in cases:
        dist, invalid, what = _mining_case(n, m, seed, labels)
        _compare_batch_hard(ex, batch_hard_negatives, dist, invalid, what, hidden)


def _semi_hard_hint(got, dist_ap, dist_an, margin, invalid, i: int) -> str:
    d_ap, d = float(dist_ap[i]), dist_an[i]
    j = int(got[i])
    valid = ~invalid[i]
    in_band = valid & (d > d_ap) & (d < d_ap + margin)
    if bool(in_band.any()):
        if float(d[j]) <= d_ap:
            return (" — a semi-hard negative is FARTHER than the positive (d_an > d_ap); this "
                    "one is closer (that is a hard negative)")
        if float(d[j]) >= d_ap + margin:
            return (" — a semi-hard negative lies WITHIN the margin (d_an < d_ap + margin); "
                    "this one is beyond it")
        return " — of the negatives in the band, take the closest one (the hardest semi-hard)"
    if float(d[j]) >= d_ap + margin:
        return (" — no valid candidate of this anchor lies within the margin (d_an < d_ap + "
                "margin), so it has no semi-hard negative: fall back to the EASIEST (farthest) "
                "valid candidate")
    if j == int(d.masked_fill(~valid, float("inf")).argmin()):
        return (" — this anchor has no semi-hard negative: fall back to the EASIEST (farthest) "
                "valid candidate, not the hardest")
    return (" — this anchor has no negative with d_ap < d_an < d_ap + margin: fall back to "
            "the easiest (farthest) valid candidate")


def _compare_semi_hard(ex: str, fn: Callable, dist_ap, dist_an, margin, invalid, what: str,
                       guard: bool) -> None:
    n, m = dist_an.shape
    where = what + f", margin={margin}"
    args = (dist_ap.clone(), dist_an.clone(), invalid.clone())
    got = _call(ex, fn, args[0], args[1], margin, args[2], where=where, guard=guard)
    require_unchanged(ex, ("dist_ap", "dist_an", "invalid"), args, (dist_ap, dist_an, invalid),
                      where)
    got = _indices(ex, got, n, m, where)
    _invalid_choice(ex, got, invalid, where)
    expected = triplet.semi_hard_negatives(dist_ap, dist_an, margin, invalid)
    if torch.equal(got, expected):
        return
    i = _first_wrong(got, expected)
    raise AssertionError(
        f"{ex}: for anchor {i} (d_ap={float(dist_ap[i]):.3f}) expected candidate "
        f"{int(expected[i])} (d_an={float(dist_an[i, expected[i]]):.3f}), got {int(got[i])} "
        f"(d_an={float(dist_an[i, got[i]]):.3f}){where}"
        f"{_semi_hard_hint(got, dist_ap, dist_an, margin, invalid, i)}")


def _semi_hard_case(n: int, m: int, seed: int, labels: bool):
    """Candidate distances, and positive distances spread so that some anchors have semi-hard
    negatives, some only hard ones and some only easy ones."""
    dist_an, invalid, what = _mining_case(n, m, seed, labels)
    g = torch.Generator().manual_seed(seed + 11)
    dist_ap = dist_an.max() * torch.rand(n, generator=g)  # (N,)
    return dist_ap, dist_an, invalid, what


@quiet
def check_semi_hard(semi_hard_negatives: Callable, hidden: bool = False) -> None:
    """semi_hard_negatives(dist_ap, dist_an, margin, invalid) -> (N,) FaceNet's semi-hard
    negatives, easiest valid candidate where none qualifies (hidden: more sizes and margins,
    labels, boundary cases, delegation guard)."""
    ex = "semi_hard_negatives"
    cases = [(6, 6, 0, False, 2.0)] if not hidden else [
        (2, 2, 1, False, 1.0), (8, 8, 2, False, 0.5), (10, 10, 3, True, 3.0),
        (6, 12, 4, True, 1.0), (8, 8, 5, False, 0.0)]
    for n, m, seed, labels, margin in cases:
        dist_ap, dist_an, invalid, what = _semi_hard_case(n, m, seed, labels)
        _compare_semi_hard(ex, semi_hard_negatives, dist_ap, dist_an, margin, invalid, what,
                           hidden)
    # Boundaries: d_an == d_ap and d_an == d_ap + margin are NOT semi-hard (strict <).
    # Row 3 has no semi-hard negative and its farthest candidate is invalid: the fallback must
    # skip it too. Row 4's only candidate in the band is invalid: it has no semi-hard negative.
    dist_ap = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0])
    dist_an = torch.tensor([[0.0, 1.0, 1.5, 2.0, 5.0],
                            [0.0, 1.0, 2.0, 3.0, 4.0],
                            [2.0, 3.0, 0.5, 4.0, 2.5],
                            [9.0, 0.2, 0.5, 3.0, 0.1],
                            [1.5, 0.5, 3.0, 0.2, 2.5]])
    invalid = torch.zeros(5, 5, dtype=torch.bool)
    invalid[:, 0] = True
    what = (" (hand-made distances with values exactly on the band's edges, an invalid "
            "candidate farthest away, and one alone in the band)")
    _compare_semi_hard(ex, semi_hard_negatives, dist_ap, dist_an, 1.0, invalid, what, hidden)
