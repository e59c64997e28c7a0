"""Checks for 09_evaluation: knn_predict, topk_accuracy, linear_probe_step. See sslkit.grading
for the conventions (visible / hidden, one-line failures, the delegation guard)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import evaluate
from sslkit.grading.guard import (
    as_tensor,
    call,
    match_step,
    quiet,
    randn,
    stale_gradients,
    train_mode_kept,
)

REFERENCES = {
    "knn_predict": {"sslkit.evaluate.knn_predict": evaluate.knn_predict,
                    "sslkit.evaluate.knn_accuracy": evaluate.knn_accuracy},
    "topk_accuracy": {"sslkit.evaluate.topk_accuracy": evaluate.topk_accuracy},
    "linear_probe_step": {"sslkit.evaluate.linear_probe_step": evaluate.linear_probe_step,
                          "sslkit.evaluate.train_linear_probe": evaluate.train_linear_probe,
                          "sslkit.evaluate.fine_tune": evaluate.fine_tune},
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


def _labels(n: int, classes: int, seed: int) -> torch.Tensor:
    """n labels holding every class at least once (n >= classes), in a seeded order."""
    g = torch.Generator().manual_seed(seed)
    return torch.arange(n).remainder(classes)[torch.randperm(n, generator=g)]


# ----------------------------------------------------------------------------------------------
# 1. knn_predict(train_features, train_labels, test_features, k, temperature) -> labels (M,)
# ----------------------------------------------------------------------------------------------


def _knn_variant(train_f, train_y, test_f, k, t, cosine=True, weight="exp", low_ties=True,
                 accumulate=True, votes_only=False):
    """Weighted kNN with one of the usual mistakes switched on, to name the one an answer made.
    (No tie in similarity at the k-th neighbour occurs in the checks' cases.) cosine: True,
    False (a plain dot product) or "euclidean" (similarity = minus the distance)."""
    classes = int(train_y.max()) + 1
    if cosine == "euclidean":
        sim, idx = (-torch.cdist(test_f, train_f)).topk(min(k, len(train_f)), dim=1)
    else:
        a, b = ((F.normalize(test_f, dim=1), F.normalize(train_f, dim=1)) if cosine
                else (test_f, train_f))
        sim, idx = (a @ b.T).topk(min(k, len(train_f)), dim=1)  # (M, k)
    w = {"exp": (sim / t).exp(), "plain": sim.exp(), "count": torch.ones_like(sim)}[weight]
    votes = torch.zeros(len(test_f), classes)  # (M, classes)
    if accumulate:
        votes.scatter_add_(1, train_y[idx], w)
    else:  # advanced indexing with +=: of several neighbours of one class, one vote is kept
        votes[torch.arange(len(test_f))[:, None], train_y[idx]] += w
    if votes_only:
        return votes
    if low_ties:
        return votes.argmax(dim=1)
    return classes - 1 - votes.flip(1).argmax(dim=1)  # the last maximum: the higher class


def _random_case(n, d, m, classes, seed):
    scale = torch.rand(n, 1, generator=torch.Generator().manual_seed(seed + 7)) * 9.9 + 0.1
    return randn(n, d, seed=seed) * scale, _labels(n, classes, seed), randn(m, d, seed=seed + 1)


def _tie_case(sites, d, classes, seed):
    """Every training point twice, with two different labels: its two copies are equally
    similar to any test point, so with k even the votes of the nearest pairs tie exactly."""
    g = torch.Generator().manual_seed(seed)
    points = randn(sites, d, seed=seed)
    first = torch.randint(0, classes, (sites,), generator=g)
    second = (first + torch.randint(1, classes, (sites,), generator=g)) % classes
    test = points + 0.05 * randn(sites, d, seed=seed + 1)  # near each site
    return torch.cat([points, points]), torch.cat([first, second]), test


KNN_HINTS = {
    "use cosine similarity: normalise both feature sets (F.normalize) before the dot product":
        dict(cosine=False),
    "use cosine similarity (normalise both feature sets, then one matrix product), not the "
    "Euclidean distance": dict(cosine="euclidean"),
    "add up the votes of neighbours of the same class (scores.scatter_add_(1, labels, weights)"
    "): scores[rows, labels] += weights keeps only one vote per class": dict(accumulate=False),
    "weight each vote by exp(similarity / temperature), not 1": dict(weight="count"),
    "divide the similarity by the temperature inside the exp": dict(weight="plain"),
    "equal votes go to the lower class (argmax returns the first maximum)": dict(low_ties=False),
}


@quiet
def check_knn_predict(knn_predict: Callable, hidden: bool = False) -> None:
    """The weighted kNN gives the reference's labels, tied votes included (hidden: more shapes,
    k above the number of training points, and no delegation)."""
    ex = "knn_predict"
    # (kind, sizes, k, temperature, seed)
    # the tie case has 4 classes: there torch.topk on the votes does not keep the lower class;
    # the last case has k above the number of training points
    cases = [("random", (40, 5, 12, 4), 5, 0.1, 0), ("ties", (10, 4, 4), 2, 0.1, 1),
             ("random", (5, 3, 4, 3), 8, 0.1, 8)]
    if hidden:
        cases = [("random", (60, 8, 20, 5), 10, 0.07, 2), ("random", (30, 3, 15, 3), 1, 0.5, 3),
                 ("random", (6, 4, 5, 3), 10, 0.1, 4), ("ties", (12, 6, 5), 2, 0.2, 5),
                 ("ties", (15, 3, 4), 4, 0.1, 6)]
    for kind, sizes, k, t, seed in cases:
        train_f, train_y, test_f = (_random_case(*sizes, seed) if kind == "random"
                                    else _tie_case(*sizes, seed))
        where = (f" ({len(train_f)} training points{' in equally similar pairs' * (kind == 'ties')}"
                 f", {len(test_f)} test points, D={train_f.shape[1]}, k={k}, T={t})")
        try:
            got = _call(ex, knn_predict, train_f.clone(), train_y.clone(), test_f.clone(), k, t,
                        where=where, guard=hidden)
        except AssertionError as e:
            if k > len(train_f) and "out of range" in str(e):
                raise AssertionError(f"{e} — k may be larger than the number of training "
                                     "points N: take the min(k, N) most similar") from None
            raise
        got = as_tensor(ex, got, where)
        expected = evaluate.knn_predict(train_f, train_y, test_f, k=k, temperature=t)
        if got.shape != expected.shape:
            raise AssertionError(f"{ex}: expected one label per test point, shape "
                                 f"{tuple(expected.shape)}, got {tuple(got.shape)}{where}")
        got = got.long()
        if torch.equal(got, expected):
            continue
        hint = next((" — " + text for text, wrong in KNN_HINTS.items()
                     if torch.equal(got, _knn_variant(train_f, train_y, test_f, k, t, **wrong))),
                    "")
        votes = _knn_variant(train_f, train_y, test_f, k, t, votes_only=True)
        differ = got != expected
        if not hint and bool((got[differ] < votes.shape[1]).all() and (got[differ] >= 0).all()):
            best = votes.max(dim=1).values
            if torch.allclose(votes[differ].gather(1, got[differ, None])[:, 0], best[differ]):
                hint = (" — equal votes go to the lower class: take scores.argmax(dim=1), which "
                        "returns the first maximum (torch.topk, or max() over a dict of votes, "
                        "picks among equal votes in another order)")
        wrong = int((got != expected).sum())
        i = int((got != expected).nonzero()[0])
        raise AssertionError(f"{ex}: {wrong} of {len(expected)} labels differ from the "
                             f"reference's (test point {i}: expected {int(expected[i])}, got "
                             f"{int(got[i])}){where}{hint}")


# ----------------------------------------------------------------------------------------------
# 2. topk_accuracy(logits, labels, k) -> float
# ----------------------------------------------------------------------------------------------


def _topk_case(kind: str, n: int, c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = (randn(n, c, seed=seed) if kind == "random"
              else torch.randint(0, 3, (n, c), generator=g).float())  # many equal logits
    return logits, torch.randint(0, c, (n,), generator=g)


@quiet
def check_topk_accuracy(topk_accuracy: Callable, hidden: bool = False) -> None:
    """The top-k accuracy equals the reference's, with equal logits ranked by class index
    (hidden: k=1, k=C and more tied cases, and no delegation)."""
    ex = "topk_accuracy"
    # the last case of each has k above the number of classes: every row counts
    cases = [("random", 40, 10, 5, 0), ("ties", 30, 5, 2, 1), ("random", 12, 4, 6, 8)]
    if hidden:
        cases = [("random", 50, 10, 1, 2), ("random", 25, 6, 6, 3), ("random", 64, 100, 5, 4),
                 ("ties", 40, 4, 1, 5), ("ties", 50, 8, 3, 6), ("ties", 30, 10, 5, 7),
                 ("ties", 20, 3, 5, 9)]
    for kind, n, c, k, seed in cases:
        logits, labels = _topk_case(kind, n, c, seed)
        where = (f" (N={n}, C={c}, k={k}" + (", logits with ties" if kind == "ties" else "")
                 + ")")
        try:
            got = _call(ex, topk_accuracy, logits.clone(), labels.clone(), k, where=where,
                        guard=hidden)
        except AssertionError as e:
            if k > c and "out of range" in str(e):
                raise AssertionError(f"{e} — k may be larger than the number of classes C, "
                                     "where every row counts: use min(k, C)") from None
            raise
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (float, int)):
            raise AssertionError(f"{ex}: expected a number (a fraction in [0, 1]), got "
                                 f"{type(got).__name__}{where}: return a float")
        expected = evaluate.topk_accuracy(logits, labels, k)
        if abs(got - expected) <= 1e-6:
            continue
        hint = ""
        if abs(got - expected * n) <= 1e-6:
            hint = " — return the fraction of rows, not the count"
        elif abs(got - expected * 100) <= 1e-4:
            hint = " — return a fraction in [0, 1], not a percentage"
        elif kind == "ties":
            hint = (" — rank equal logits by class index, lower first, as argmax does "
                    "(torch.topk breaks ties arbitrarily: use torch.sort(..., stable=True) or "
                    "count the classes ranked before the label)")
        raise AssertionError(f"{ex}: expected {expected:.4f}, got {float(got):.4f}{where}{hint}")


# ----------------------------------------------------------------------------------------------
# 3. linear_probe_step(head, optimizer, features, labels) -> loss as a float
# ----------------------------------------------------------------------------------------------


def _probe_case(n: int, d: int, c: int, seed: int):
    torch.manual_seed(seed)
    head = nn.Linear(d, c)
    return head, randn(n, d, seed=seed) * 2, _labels(n, c, seed)


def _optimizer(kind: str, head: nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    return torch.optim.Adam(head.parameters(), lr=0.05)


def _probe_hint(head: nn.Module, x: torch.Tensor, y: torch.Tensor, got: float) -> str:
    with torch.no_grad():
        logits = head(x)
        variants = {
            "F.cross_entropy takes the logits: do not apply softmax first":
                F.cross_entropy(logits.softmax(dim=1), y),
            "average the loss over the batch (F.cross_entropy's default), do not sum":
                F.cross_entropy(logits, y, reduction="sum"),
            "F.nll_loss expects log-probabilities: use F.cross_entropy on the logits":
                F.nll_loss(logits, y),
        }
    return next((" — " + text for text, value in variants.items()
                 if abs(float(value) - got) < 1e-4), "")


@quiet
def check_linear_probe_step(linear_probe_step: Callable, hidden: bool = False) -> None:
    """One step from the same head, optimiser and batch gives the reference's loss and updated
    weights (hidden: two steps in a row, SGD with momentum and Adam, and no delegation)."""
    ex = "linear_probe_step"
    cases = [(16, 6, 4, "sgd", 1, 0)] if not hidden else [(32, 10, 5, "sgd", 2, 1),
                                                         (20, 3, 7, "adam", 2, 2)]
    for n, d, c, opt_kind, steps, seed in cases:
        head, x, y = _probe_case(n, d, c, seed)
        ref = copy.deepcopy(head)
        optimizer, ref_opt = _optimizer(opt_kind, head), _optimizer(opt_kind, ref)
        name = "SGD lr=0.5 momentum=0.9" if opt_kind == "sgd" else "Adam lr=0.05"
        where = f" (Linear({d}, {c}), N={n}, {name})"
        for step in range(steps):
            label = f"step {step + 1}: " if steps > 1 else ""
            stale_gradients(head, ref, seed + step)  # zero_grad must clear them
            before = copy.deepcopy(head)
            with train_mode_kept(ex, {"head": head}, label, where):
                got = _call(ex, linear_probe_step, head, optimizer, x.clone(), y.clone(),
                            where=where, guard=hidden)
            expected = evaluate.linear_probe_step(ref, ref_opt, x, y)
            match_step(ex, got, expected, head, before, ref, label, where,
                       hint=functools.partial(_probe_hint, before, x, y, got))
