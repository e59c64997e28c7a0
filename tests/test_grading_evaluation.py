"""Tests for sslkit.grading.evaluation: for every graded exercise of 09_evaluation, a correct
answer passes the visible and hidden checks, typical wrong answers fail with a one-line message
that names the mistake, and answers that delegate to the sslkit reference fail the hidden
check. The checks' kNN cases are also compared with a plain loop, ties to the lower class."""

import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails, run_solution_cells
from torch import nn

from sslkit import evaluate
from sslkit.grading import evaluation as grading

NOTEBOOK = Path(__file__).parent.parent / "solutions" / "09_evaluation" / "09_evaluation.ipynb"
SOLUTION_CELLS = ("knn_predict", "topk_accuracy", "linear_probe_step")


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    namespace = {"torch": torch, "F": F, "nn": nn, "math": math}
    return run_solution_cells(NOTEBOOK, SOLUTION_CELLS, namespace)


# -- correct answers written independently of the notebook, to build wrong ones from ----------

def knn_predict(train_features, train_labels, test_features, k=200, temperature=0.1):
    sim = F.normalize(test_features, dim=1) @ F.normalize(train_features, dim=1).T  # (M, N)
    top, idx = sim.topk(min(k, len(train_features)), dim=1)
    votes = torch.zeros(len(test_features), int(train_labels.max()) + 1)
    votes.scatter_add_(1, train_labels[idx], (top / temperature).exp())
    return votes.argmax(dim=1)


def topk_accuracy(logits, labels, k=1):
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]
    return (order == labels[:, None]).any(dim=1).float().mean().item()


def linear_probe_step(head, optimizer, features, labels):
    loss = F.cross_entropy(head(features), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


CHECKS = {
    "knn_predict": (grading.check_knn_predict, knn_predict),
    "topk_accuracy": (grading.check_topk_accuracy, topk_accuracy),
    "linear_probe_step": (grading.check_linear_probe_step, linear_probe_step),
}


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    check, answer = CHECKS[exercise]
    check(getattr(solution, exercise), hidden=hidden)  # the notebook's solution cell
    check(answer, hidden=hidden)


def test_the_sslkit_references_pass_the_visible_checks():
    grading.check_knn_predict(evaluate.knn_predict)
    grading.check_topk_accuracy(evaluate.topk_accuracy)
    grading.check_linear_probe_step(evaluate.linear_probe_step)


# -- the checks' cases ---------------------------------------------------------------------------

def knn_plain(train_f, train_y, test_f, k, temperature):
    """One test point at a time in Python floats; the first maximum of the votes wins."""
    classes = int(train_y.max()) + 1
    preds = []
    for q in test_f.tolist():
        sims = []
        for i, t in enumerate(train_f.tolist()):
            dot = sum(a * b for a, b in zip(q, t))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in t))
            sims.append((dot / norm, i))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * classes
        for sim, i in sims[:k]:
            votes[int(train_y[i])] += math.exp(sim / temperature)
        preds.append(votes.index(max(votes)))
    return preds


@pytest.mark.parametrize("sites,classes,k,seed", [(10, 3, 2, 1), (12, 5, 2, 5), (15, 4, 4, 6)])
def test_tie_cases_tie_and_go_to_the_lower_class(sites, classes, k, seed):
    train_f, train_y, test_f = grading._tie_case(sites, 4, classes, seed)
    expected = evaluate.knn_predict(train_f, train_y, test_f, k=k, temperature=0.1)
    assert expected.tolist() == knn_plain(train_f, train_y, test_f, k, 0.1)
    if k == 2:  # the nearest pair decides alone: every vote ties, the lower label wins
        nearest = (F.normalize(test_f, dim=1) @ F.normalize(train_f[:sites], dim=1).T).argmax(1)
        pair = torch.stack([train_y[nearest], train_y[nearest + sites]])
        assert torch.equal(expected, pair.min(dim=0).values)
        assert bool((pair[0] != pair[1]).all())


def test_random_cases_agree_with_a_plain_loop():
    for sizes, k, t, seed in [((40, 5, 12, 4), 5, 0.1, 0), ((6, 4, 5, 3), 10, 0.1, 4)]:
        train_f, train_y, test_f = grading._random_case(*sizes, seed)
        expected = evaluate.knn_predict(train_f, train_y, test_f, k=k, temperature=t)
        assert expected.tolist() == knn_plain(train_f, train_y, test_f, k, t)


# -- wrong answers -----------------------------------------------------------------------------

def test_knn_wrong_answers():
    check = grading.check_knn_predict

    def dot_product(train_f, train_y, test_f, k=200, t=0.1):
        top, idx = (test_f @ train_f.T).topk(min(k, len(train_f)), dim=1)
        votes = torch.zeros(len(test_f), int(train_y.max()) + 1)
        return votes.scatter_add_(1, train_y[idx], (top / t).exp()).argmax(1)

    def majority(train_f, train_y, test_f, k=200, t=0.1):
        sim = F.normalize(test_f, dim=1) @ F.normalize(train_f, dim=1).T
        idx = sim.topk(min(k, len(train_f)), dim=1).indices
        votes = torch.zeros(len(test_f), int(train_y.max()) + 1)
        return votes.scatter_add_(1, train_y[idx], torch.ones(idx.shape)).argmax(dim=1)

    def no_temperature(train_f, train_y, test_f, k=200, t=0.1):
        return knn_predict(train_f, train_y, test_f, k, temperature=1.0)

    def ties_high(train_f, train_y, test_f, k=200, t=0.1):
        sim = F.normalize(test_f, dim=1) @ F.normalize(train_f, dim=1).T
        top, idx = sim.topk(min(k, len(train_f)), dim=1)
        votes = torch.zeros(len(test_f), int(train_y.max()) + 1)
        votes.scatter_add_(1, train_y[idx], (top / t).exp())
        return votes.shape[1] - 1 - votes.flip(1).argmax(dim=1)

    def returns_votes(train_f, train_y, test_f, k=200, t=0.1):
        return torch.zeros(len(test_f), 3)

    assert "normalise" in fails(check, dot_product, False, "differ")
    assert "not 1" in fails(check, majority, False, "differ")
    assert "temperature" in fails(check, no_temperature, False, "differ")
    assert "lower class" in fails(check, ties_high, False, "differ")
    fails(check, returns_votes, False, "one label per test point")
    fails(check, lambda *a: [0, 1], False, "torch.Tensor")
    delegates = lambda *a: evaluate.knn_predict(*a)  # noqa: E731
    check(delegates)  # the right labels ...
    fails(check, delegates, True, "reference")  # ... but the work is sslkit's


def test_topk_wrong_answers():
    check = grading.check_topk_accuracy

    def with_torch_topk(logits, labels, k=1):
        return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()

    def count(logits, labels, k=1):
        return topk_accuracy(logits, labels, k) * len(labels)

    def off_by_one(logits, labels, k=1):
        return topk_accuracy(logits, labels, k + 1)

    assert "stable" in fails(check, with_torch_topk, False, "ties")
    assert "fraction" in fails(check, count, False, "expected")
    assert "percentage" in fails(check, lambda *a: 100 * topk_accuracy(*a), False, "expected")
    fails(check, off_by_one, False, "expected")
    fails(check, lambda *a: "top-5", False, "a number")
    check(lambda *a: torch.tensor(topk_accuracy(*a)))  # a 0-d tensor is accepted
    fails(check, lambda *a: evaluate.topk_accuracy(*a), True, "reference")


def test_linear_probe_step_wrong_answers():
    check = grading.check_linear_probe_step

    def softmax_first(head, opt, x, y):
        loss = F.cross_entropy(head(x).softmax(dim=1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def summed(head, opt, x, y):
        loss = F.cross_entropy(head(x), y, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def no_zero_grad(head, opt, x, y):
        loss = F.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    def no_step(head, opt, x, y):
        return F.cross_entropy(head(x), y).item()

    def tensor_loss(head, opt, x, y):
        linear_probe_step(head, opt, x, y)
        return F.cross_entropy(head(x), y)

    assert "softmax" in fails(check, softmax_first, False, "expected loss")
    assert "sum" in fails(check, summed, False, "expected loss")
    for hidden in (False, True):  # the visible step starts from stale gradients too
        fails(check, no_zero_grad, hidden, "zero_grad")
    fails(check, no_step, False, "did not change")
    fails(check, tensor_loss, False, "float")
    fails(check, lambda *a: evaluate.linear_probe_step(*a), True, "reference")


# -- wrong answers found in a student's pass through the released notebook ---------------------

def knn_variant(kind):
    def answer(train_f, train_y, test_f, k=200, t=0.1):
        n = len(train_f)
        if kind == "euclidean":
            sim, idx = (-torch.cdist(test_f, train_f)).topk(min(k, n), dim=1)
        else:
            sim = F.normalize(test_f, dim=1) @ F.normalize(train_f, dim=1).T
            sim, idx = sim.topk(k if kind == "k_not_clamped" else min(k, n), dim=1)
        w = (sim / t).exp()
        votes = torch.zeros(len(test_f), int(train_y.max()) + 1)
        if kind == "votes_not_accumulated":  # advanced-index += drops repeated classes
            votes[torch.arange(len(test_f))[:, None], train_y[idx]] += w
        else:
            votes.scatter_add_(1, train_y[idx], w)
        if kind == "topk_of_votes":  # torch.topk orders equal votes arbitrarily
            return votes.topk(1, dim=1).indices[:, 0]
        return votes.argmax(dim=1)
    return answer


@pytest.mark.parametrize("kind, hint", [
    ("euclidean", "not the Euclidean distance"),
    ("k_not_clamped", r"min\(k, N\)"),
    ("votes_not_accumulated", "add up the votes of neighbours of the same class"),
    ("topk_of_votes", "equal votes go to the lower class"),
])
def test_knn_mistakes_fail_the_visible_check_and_are_named(kind, hint):
    """k > N (which the exercise asks to handle) and tied votes picked by torch.topk passed the
    visible check; a Euclidean kNN and votes that overwrite each other failed without a hint."""
    fails(grading.check_knn_predict, knn_variant(kind), False, hint)


def test_topk_accuracy_with_k_above_the_number_of_classes():
    """With k >= C every row counts (the exercise says so); torch.topk(k) raises for k > C, and
    no check asked for k > C."""
    def topk_not_clamped(logits, labels, k=1):
        order = torch.sort(logits, dim=1, descending=True, stable=True).indices
        if k > logits.shape[1]:
            raise RuntimeError("selected index k out of range")
        return (order[:, :k] == labels[:, None]).any(dim=1).float().mean().item()

    for hidden in (False, True):
        fails(grading.check_topk_accuracy, topk_not_clamped, hidden, r"min\(k, C\)")


def test_linear_probe_step_that_zeroes_the_gradients_before_the_step_is_told_the_order():
    def zero_grad_too_late(head, opt, x, y):
        loss = F.cross_entropy(head(x), y)
        loss.backward()
        opt.zero_grad()  # the mistake: the gradients are gone before the step
        opt.step()
        return loss.item()

    message = fails(grading.check_linear_probe_step, zero_grad_too_late, False, "did not change")
    assert "in this order" in message
