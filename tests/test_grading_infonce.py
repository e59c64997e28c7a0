"""Tests for sslkit.grading.infonce: for every graded exercise of solutions/03_infonce, the solution
(taken from the source notebook's solution cells) passes the visible and hidden checks, typical
wrong answers fail with a one-line message that names the mistake, and answers that delegate to
the sslkit reference (directly or through an alias) fail the hidden check."""

import json
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails, run_solution_cells

from sslkit import losses, mutual_info
from sslkit.grading import infonce as grading
from sslkit.losses import info_nce as reference_info_nce  # the alias form of delegation
from sslkit.mutual_info import gaussian_mi as reference_gaussian_mi
from sslkit.mutual_info import negative_weights as reference_negative_weights

NOTEBOOK = Path(__file__).parent.parent / "solutions" / "03_infonce" / "03_infonce.ipynb"
SOLUTION_CELLS = ("info_nce", "negative_weights", "gaussian_mi")
CHECKS = {
    "info_nce": grading.check_info_nce,
    "negative_weights": grading.check_negative_weights,
    "gaussian_mi": grading.check_gaussian_mi,
}


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    """The notebook's solution cells, run in order in one namespace, as the notebook does."""
    return run_solution_cells(NOTEBOOK, SOLUTION_CELLS, {"torch": torch, "F": F, "math": math})


def test_graded_cells_have_tests_with_points():
    cells = [c["metadata"]["nbgrader"] for c in json.loads(NOTEBOOK.read_text())["cells"]]
    points = {c["grade_id"]: c.get("points") for c in cells if c["grade"]}
    assert points == {"test_info_nce": 3, "test_negative_weights": 2, "test_gaussian_mi": 1,
                      "interpret_experiment": 1}


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    CHECKS[exercise](getattr(solution, exercise), hidden=hidden)


@pytest.mark.parametrize("exercise", list(CHECKS))
def test_reference_itself_passes_the_visible_check(exercise):
    reference = {"info_nce": losses.info_nce, "negative_weights": mutual_info.negative_weights,
                 "gaussian_mi": mutual_info.gaussian_mi}[exercise]
    CHECKS[exercise](reference)


# ---------------------------------------------------------------------------------------------
# 1. info_nce


def _logits(query, positive, negatives, normalise=True):
    """(N, 1 + K) similarities, positive first (cosine unless normalise=False)."""
    if normalise:
        query, positive = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
        negatives = F.normalize(negatives, dim=-1)
    pos = (query * positive).sum(-1, keepdim=True)
    if negatives.ndim == 2:
        neg = query @ negatives.T
    else:
        neg = torch.einsum("nd,nkd->nk", query, negatives)
    return torch.cat([pos, neg], dim=1)


def _zeros(q):
    return torch.zeros(len(q), dtype=torch.long)


def dot_products(q, p, neg, t):
    return F.cross_entropy(_logits(q, p, neg, normalise=False) / t, _zeros(q))


def euclidean(q, p, neg, t):
    d_pos = (q - p).pow(2).sum(-1, keepdim=True)
    d_neg = ((q[:, None] - neg).pow(2).sum(-1) if neg.ndim == 3
             else torch.cdist(q, neg).pow(2))
    return F.cross_entropy(-torch.cat([d_pos, d_neg], 1) / t, _zeros(q))


def no_temperature(q, p, neg, t):
    return F.cross_entropy(_logits(q, p, neg), _zeros(q))


def positive_last(q, p, neg, t):
    return F.cross_entropy(_logits(q, p, neg).roll(-1, dims=1) / t, _zeros(q))


def summed(q, p, neg, t):
    return F.cross_entropy(_logits(q, p, neg) / t, _zeros(q), reduction="sum")


def shared_paired(q, p, neg, t):
    """Broadcasting mistake: with shared negatives, query i meets negative i only."""
    qn, pn, nn_ = (F.normalize(v, dim=-1) for v in (q, p, neg))
    if neg.ndim == 2:
        neg_sim = (qn * nn_).sum(-1, keepdim=True)  # (N, 1) when K == N, an error otherwise
    else:
        neg_sim = torch.einsum("nd,nkd->nk", qn, nn_)
    return F.cross_entropy(torch.cat([(qn * pn).sum(-1, keepdim=True), neg_sim], 1) / t,
                           _zeros(q))


def per_row(q, p, neg, t):
    return F.cross_entropy(_logits(q, p, neg) / t, _zeros(q), reduction="none")


def detached(q, p, neg, t):
    with torch.no_grad():
        return F.cross_entropy(_logits(q, p, neg) / t, _zeros(q))


def test_info_nce_wrong_answers():
    check = grading.check_info_nce
    assert "L2-normalise" in fails(check, dot_products, False, "expected")
    assert "Euclidean" in fails(check, euclidean, False, "expected")
    assert "temperature" in fails(check, no_temperature, False, "expected")
    assert "class 0" in fails(check, positive_last, False, "expected")
    assert "mean" in fails(check, summed, False, "expected")
    message = fails(check, shared_paired, False, "shared negatives")
    assert "negative i only" in message
    fails(check, per_row, False, "expected a scalar")
    fails(check, lambda q, p, neg, t: float(no_temperature(q, p, neg, t)), False,
          "expected a torch.Tensor")
    for hidden in (False, True):  # the right value, but nothing to train with
        fails(check, detached, hidden, "no gradient")


def test_info_nce_per_query_only_fails_on_shared_negatives():
    def per_query_only(q, p, neg, t):
        return F.cross_entropy(_logits(q, p, neg.expand(len(q), -1, -1)) / t, _zeros(q)) \
            if neg.ndim == 3 else F.cross_entropy(
                torch.cat([(F.normalize(q) * F.normalize(p)).sum(-1, keepdim=True),
                           torch.einsum("nd,nkd->nk", F.normalize(q),
                                        F.normalize(neg, dim=-1))], 1) / t, _zeros(q))

    assert "shared negatives (K, D)" in fails(grading.check_info_nce, per_query_only, False,
                                              "raised")


@pytest.mark.parametrize("reference", [losses.info_nce, reference_info_nce,
                                       losses.cosine_similarity_matrix],
                         ids=["module", "alias", "similarity"])
def test_info_nce_delegation_fails_hidden(reference):
    def delegating(query, positive, negatives, temperature):
        if reference is losses.cosine_similarity_matrix:
            pos = reference(query, positive).diagonal()[:, None]
            neg = (reference(query, negatives) if negatives.ndim == 2 else
                   torch.stack([reference(q[None], n)[0] for q, n in zip(query, negatives)]))
            logits = torch.cat([pos, neg], 1) / temperature
            return F.cross_entropy(logits, _zeros(query))
        return reference(query, positive, negatives, temperature)

    grading.check_info_nce(delegating)  # numerically right, so the visible check passes
    assert "calls the reference sslkit.losses" in fails(grading.check_info_nce, delegating, True,
                                                        "reference")


def test_guard_restores_the_references():
    q, p, neg = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    before = float(losses.info_nce(q, p, neg, 0.2))
    fails(grading.check_info_nce, lambda *a: losses.info_nce(*a), True, "reference")
    fails(grading.check_gaussian_mi, lambda rho, d: mutual_info.gaussian_mi(rho, d), True,
          "reference")
    assert float(losses.info_nce(q, p, neg, 0.2)) == before
    assert float(reference_info_nce(q, p, neg, 0.2)) == before
    assert mutual_info.gaussian_mi(0.6, 1) == pytest.approx(-0.5 * math.log(0.64))


# ---------------------------------------------------------------------------------------------
# 2. negative_weights


def test_negative_weights_wrong_answers():
    check = grading.check_negative_weights
    assert "1 / T" in fails(check, lambda s, t: torch.softmax(s / t, -1)[..., 1:], False,
                            "expected")
    assert "positive included" in fails(
        check, lambda s, t: torch.softmax(s[..., 1:] / t, -1) / t, False, "expected")
    assert "sign" in fails(check, lambda s, t: -torch.softmax(s / t, -1)[..., 1:] / t, False,
                           "expected")
    assert "drop index 0" in fails(check, lambda s, t: torch.softmax(s / t, -1) / t, False,
                                   "expected shape")
    fails(check, lambda s, t: (torch.softmax(s / t, -1)[..., 1:] / t).tolist(), False,
          "expected a torch.Tensor")

    def one_dimensional_only(s, t):  # the right weights for one query, not for a batch
        return torch.softmax(s / t, 0)[1:] / t

    for hidden in (False, True):  # the visible check has batched similarities too
        assert "LAST dim" in fails(check, one_dimensional_only, hidden, "expected shape")


@pytest.mark.parametrize("reference", [mutual_info.negative_weights, reference_negative_weights],
                         ids=["module", "alias"])
def test_negative_weights_delegation_fails_hidden(reference):
    def delegating(similarities, temperature):
        return reference(similarities, temperature)

    grading.check_negative_weights(delegating)
    assert "sslkit.mutual_info.negative_weights" in fails(grading.check_negative_weights,
                                                          delegating, True, "reference")


# ---------------------------------------------------------------------------------------------
# 3. gaussian_mi


def test_gaussian_mi_wrong_answers():
    check = grading.check_gaussian_mi
    assert "natural log" in fails(check, lambda rho, d: -d / 2 * math.log2(1 - rho**2), False,
                                  "expected")
    assert "multiply by d" in fails(check, lambda rho, d: -0.5 * math.log(1 - rho**2), False,
                                    "expected")
    assert "1/2" in fails(check, lambda rho, d: -d * math.log(1 - rho**2), False, "expected")
    assert "sign" in fails(check, lambda rho, d: d / 2 * math.log(1 - rho**2), False, "expected")
    assert "1 - rho^2" in fails(check, lambda rho, d: -d / 2 * math.log(1 - rho), False,
                                "expected")
    fails(check, lambda rho, d: "4 nats", False, "expected a number")
    # a tensor or numpy scalar is fine
    check(lambda rho, d: -d / 2 * torch.log(torch.tensor(1 - rho**2)), hidden=True)


@pytest.mark.parametrize("reference", [mutual_info.gaussian_mi, reference_gaussian_mi,
                                       mutual_info.rho_for_mi],
                         ids=["module", "alias", "inverse"])
def test_gaussian_mi_delegation_fails_hidden(reference):
    def delegating(rho, d):
        if reference is mutual_info.rho_for_mi:  # search the inverse: still the reference
            lo, hi = 0.0, 50.0 * d
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if reference(mid, d) < abs(rho) else (lo, mid)
            return lo
        return reference(rho, d)

    grading.check_gaussian_mi(delegating)
    assert "reference sslkit.mutual_info" in fails(grading.check_gaussian_mi, delegating, True,
                                                   "reference")


def test_negative_weights_that_changes_its_input_in_place_fails():
    """s /= T gives the right weights once, but the notebook's plot calls it in a loop over
    temperatures on one tensor s, which each call divides again. It passed both checks."""
    def in_place(s, t):
        s /= t
        return torch.softmax(s, -1)[..., 1:] / t

    for hidden in (False, True):
        fails(grading.check_negative_weights, in_place, hidden,
              "changed its input similarities in place")


def test_info_nce_half_normalised_answers_are_named():
    """Cosine similarity needs every vector normalised along its last dim; the usual slips
    (negatives left raw, the query left raw, (N, K, D) negatives normalised over K, a softmax
    over the queries) failed without a hint."""
    def answer(norm_q=True, neg_dim=-1, softmax_dim=1):
        def info_nce(q, p, neg, t):
            qn = F.normalize(q, dim=-1) if norm_q else q
            negn = F.normalize(neg, dim=neg_dim) if neg_dim is not None else neg
            logits = torch.cat([(qn * F.normalize(p, dim=-1)).sum(-1, keepdim=True),
                                qn @ negn.T if neg.ndim == 2 else
                                torch.einsum("nd,nkd->nk", qn, negn)], 1) / t
            return -torch.log_softmax(logits, dim=softmax_dim)[:, 0].mean()
        return info_nce

    check = grading.check_info_nce
    assert "negatives too" in fails(check, answer(neg_dim=None), False, "expected")
    assert "query too" in fails(check, answer(norm_q=False), False, "expected")
    assert "dim=-1" in fails(check, answer(neg_dim=1), False, "expected")
    assert "over the 1 + K candidates" in fails(check, answer(softmax_dim=0), False, "expected")


def test_gaussian_mi_with_the_absolute_correlation_is_named():
    """log(1 - |rho|) equals log(1 - rho) for rho >= 0 only; the hidden case rho = -0.8 failed
    without a hint."""
    assert "1 - rho^2" in fails(grading.check_gaussian_mi,
                                lambda rho, d: -d / 2 * math.log(1 - abs(rho)), True, "expected")
