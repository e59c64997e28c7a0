"""Checks for 03_infonce: info_nce, negative_weights, gaussian_mi. See sslkit.grading for the
conventions (visible and hidden checks, one-line failures, the delegation guard).

The notebook imports this module directly: ``from sslkit.grading import infonce as grading``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sslkit import losses, mutual_info
from sslkit.grading.guard import (
    as_tensor,
    call,
    close,
    match_value,
    quiet,
    randn,
    require_flow,
    require_grad,
    require_graph,
    require_unchanged,
)

__all__ = ["check_gaussian_mi", "check_info_nce", "check_negative_weights"]

REFERENCES = {
    "info_nce": {
        "sslkit.losses.info_nce": losses.info_nce,
        "sslkit.losses.nt_xent": losses.nt_xent,
        "sslkit.losses.nt_xent_loop": losses.nt_xent_loop,
        "sslkit.losses.cosine_similarity_matrix": losses.cosine_similarity_matrix,
        "sslkit.mutual_info.infonce_scores_loss": mutual_info.infonce_scores_loss,
    },
    "negative_weights": {
        "sslkit.mutual_info.negative_weights": mutual_info.negative_weights,
    },
    "gaussian_mi": {
        "sslkit.mutual_info.gaussian_mi": mutual_info.gaussian_mi,
        "sslkit.mutual_info.rho_for_mi": mutual_info.rho_for_mi,
    },
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    """guard.call with this notebook's references blocked when guard is True."""
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


# ----------------------------------------------------------------------------------------------
# 1. info_nce(query, positive, negatives, temperature)
# ----------------------------------------------------------------------------------------------


def _where(n: int, k: int, d: int, t: float, shared: bool) -> str:
    kind = "shared negatives (K, D)" if shared else "per-query negatives (N, K, D)"
    return f" for N={n}, K={k}, D={d}, T={t}, {kind}"


def _info_nce_variants(q, p, neg, t: float) -> dict[str, torch.Tensor]:
    """Values of the usual mistakes, each keyed by the hint that fixes it."""
    n = len(q)
    shared = neg.ndim == 2
    qn, pn, negn = F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(neg, dim=-1)
    ce, zeros = F.cross_entropy, torch.zeros(n, dtype=torch.long)

    def neg_sims(a, b):  # (N, K) similarities of queries a with negatives b
        return a @ b.T if shared else torch.einsum("nd,nkd->nk", a, b)

    pos = (qn * pn).sum(1, keepdim=True)  # (N, 1)
    negs = neg_sims(qn, negn)  # (N, K)
    ref = losses.info_nce(q, p, neg, t)
    out = {
        "did you L2-normalise the embeddings (cosine similarity, not dot products)?":
            ce(torch.cat([(q * p).sum(1, keepdim=True), neg_sims(q, neg)], 1) / t, zeros),
        "use cosine similarity, not (negative) Euclidean distances":
            ce(-torch.cat([(q - p).pow(2).sum(1, keepdim=True),
                           (q[:, None] - neg).pow(2).sum(-1)], 1) / t, zeros),
        "did you divide the similarities by the temperature?": ce(torch.cat([pos, negs], 1), zeros),
        "divide by the temperature, do not multiply": ce(torch.cat([pos, negs], 1) * t, zeros),
        "the positive must be class 0: put its logit first, then the K negatives":
            ce(torch.cat([negs, pos], 1) / t, zeros),
        "the label of every query is 0 (the positive's column), not the query's index":
            ce(torch.cat([pos, negs], 1) / t, torch.arange(n) % (1 + negs.shape[1])),
        "the denominator holds the positive AND the negatives: did you leave the positive out?":
            (-pos[:, 0] / t + torch.logsumexp(negs / t, dim=1)).mean(),
        "average over the N queries (mean), do not sum": n * ref,
        "normalise the negatives too: every vector, query, positive and negatives, gets unit "
        "length": ce(torch.cat([pos, neg_sims(qn, neg)], 1) / t, zeros),
        "normalise the query too: every vector, query, positive and negatives, gets unit length":
            ce(torch.cat([(q * pn).sum(1, keepdim=True), neg_sims(q, negn)], 1) / t, zeros),
        "the softmax runs over the 1 + K candidates of each query (dim=1), not over the "
        "queries": -torch.log_softmax(torch.cat([pos, negs], 1) / t, dim=0)[:, 0].mean(),
    }
    if not shared:
        out["normalise each vector along its last dim (dim=-1): for (N, K, D) negatives, dim=1 "
            "normalises over the K negatives"] = ce(
            torch.cat([pos, neg_sims(qn, F.normalize(neg, dim=1))], 1) / t, zeros)
    if shared and neg.shape[0] == n:
        hint = ("shared negatives (K, D): compare every query with all K negatives "
                "(q @ negatives.T, an (N, K) matrix)")
        out[hint + " — not query i with negative i only"] = ce(
            torch.cat([pos, (qn * negn).sum(1, keepdim=True)], 1) / t, zeros)
        out[hint + " — not its transpose"] = ce(torch.cat([pos, negn @ qn.T], 1) / t, zeros)
    if not shared:
        pool = negn.reshape(-1, negn.shape[-1])  # all N*K negatives as one shared set
        out["per-query negatives (N, K, D): query i is compared with negatives[i] only, "
            "not with every query's negatives"] = ce(torch.cat([pos, qn @ pool.T], 1) / t, zeros)
    return out


_NAMES = ("query", "positive", "negatives")


def _compare_info_nce(fn: Callable, q, p, neg, t: float, grad: bool) -> None:
    ex = "info_nce"
    n, d = q.shape
    where = _where(n, neg.shape[-2], d, t, neg.ndim == 2)
    a, b, c = (v.clone().requires_grad_(grad) for v in (q, p, neg))
    got = as_tensor(ex, _call(ex, fn, a, b, c, t, where=where, guard=grad), where)
    if got.numel() != 1:
        raise AssertionError(f"{ex}: expected a scalar (the mean over the N queries), got shape "
                             f"{tuple(got.shape)}{where}: average with .mean()")
    got = got.reshape(())
    require_unchanged(ex, _NAMES, (a, b, c), (q, p, neg), where)
    expected = losses.info_nce(q, p, neg, t)
    if not close(got, expected):  # the variants are only computed for a wrong answer
        match_value(ex, got, expected, _info_nce_variants(q, p, neg, t), where)
    if not grad:
        require_graph(ex, lambda *v: _call(ex, fn, *v, t, where=where), (q, p, neg), where,
                      _NAMES)
        return
    require_grad(ex, got, where)
    require_flow(ex, got, dict(zip(_NAMES, (a, b, c))), where)
    grads = _call(ex, torch.autograd.grad, got, (a, b, c), where=where + " in backward")
    refs = [v.clone().requires_grad_() for v in (q, p, neg)]
    expected_grads = torch.autograd.grad(losses.info_nce(*refs, t), refs)
    for name, g, e in zip(_NAMES, grads, expected_grads):
        if not torch.allclose(g, e, atol=1e-5, rtol=1e-4):
            raise AssertionError(f"{ex}: the gradient with respect to {name} differs from the "
                                 f"reference by up to {float((g - e).abs().max()):.2g}{where}")


def _info_nce_case(n: int, k: int, d: int, shared: bool, seed: int):
    q, p = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
    neg = randn(k, d, seed=seed + 200) if shared else randn(n, k, d, seed=seed + 200)
    return q, p, neg


@quiet
def check_info_nce(info_nce: Callable, hidden: bool = False) -> None:
    """InfoNCE with per-query (N, K, D) and shared (K, D) negatives gives the reference value
    (sslkit.losses.info_nce) and a closed form; hidden: more cases, gradients, scale invariance."""
    ex = "info_nce"
    if hidden:
        cases = [(1, 1, 3, 1.0, False, 1), (3, 5, 4, 0.1, False, 2), (6, 2, 16, 0.2, False, 3),
                 (2, 7, 5, 0.5, True, 4), (5, 5, 8, 0.07, True, 5), (8, 3, 4, 1.0, True, 6)]
    else:
        cases = [(4, 5, 8, 0.5, False, 0), (4, 4, 8, 0.5, True, 0)]
    for n, k, d, t, shared, seed in cases:
        _compare_info_nce(info_nce, *_info_nce_case(n, k, d, shared, seed), t, grad=hidden)
    if hidden:
        q, p, neg = _info_nce_case(4, 6, 5, True, 7)
        _compare_info_nce(info_nce, 10 * q, 3 * p, 0.1 * neg, 0.2, grad=True)  # cosine: no scale
        return
    # Closed form: query = positive = e_i and K shared negatives orthogonal to every query,
    # so each query sees exp(1/T) for its positive and exp(0) = 1 for each negative.
    n, k, d, t = 3, 4, 8, 0.5
    eye = torch.eye(d)
    where = _where(n, k, d, t, True) + " with query = positive = e_i, negatives orthogonal"
    got = as_tensor(ex, _call(ex, info_nce, eye[:n], eye[:n].clone(), eye[n:n + k], t,
                              where=where), where)
    expected = math.log(1 + k * math.exp(-1 / t))
    if got.numel() != 1 or abs(float(got.reshape(())) - expected) > 1e-4:
        shown = f"{float(got.reshape(())):.4f}" if got.numel() == 1 else f"shape {tuple(got.shape)}"
        raise AssertionError(f"{ex}: expected {expected:.4f} = log(1 + 4 e^-2), got {shown}"
                             f"{where}")


# ----------------------------------------------------------------------------------------------
# 2. negative_weights(similarities, temperature)
# ----------------------------------------------------------------------------------------------


def _weights_variants(s: torch.Tensor, t: float) -> dict[str, torch.Tensor]:
    return {
        "did you divide by the temperature? The chain rule through s / T gives a factor 1 / T":
            torch.softmax(s / t, -1)[..., 1:],
        "divide the similarities by T inside the softmax too": torch.softmax(s, -1)[..., 1:] / t,
        "the softmax runs over all 1 + K candidates, the positive included":
            torch.softmax(s[..., 1:] / t, -1) / t,
        "the gradient of -log softmax(s / T)_0 with respect to a negative's similarity is "
        "positive: check the sign": -torch.softmax(s / t, -1)[..., 1:] / t,
    }


def _compare_weights(fn: Callable, s: torch.Tensor, t: float, where: str, guard: bool) -> None:
    ex = "negative_weights"
    s_in = s.clone()
    got = as_tensor(ex, _call(ex, fn, s_in, t, where=where, guard=guard), where)
    require_unchanged(ex, ("similarities",), (s_in,), (s,), where)
    expected = torch.softmax(s / t, dim=-1)[..., 1:] / t  # (..., K)
    if tuple(got.shape) != tuple(expected.shape):
        hint = ""
        if s.ndim > 1 and tuple(got.shape) == (s.shape[0] - 1, *s.shape[1:]):
            hint = (": the candidates run along the LAST dim, whatever the batch dims before it:"
                    " softmax over dim=-1 and drop the positive with [..., 1:], not [1:]")
        elif got.shape[-1:] == s.shape[-1:]:
            hint = ": return one weight per negative — drop index 0 (the positive)"
        raise AssertionError(f"{ex}: expected shape {tuple(expected.shape)}, got "
                             f"{tuple(got.shape)}{where}{hint}")
    if not close(got, expected, atol=1e-5):
        hint = ""
        for text, value in _weights_variants(s, t).items():
            if close(got, value, atol=1e-4):
                hint = " — " + text
                break
        got = got.detach().to(expected.dtype)
        i = int((got - expected).abs().flatten().argmax())
        raise AssertionError(f"{ex}: expected {float(expected.flatten()[i]):.4f}, got "
                             f"{float(got.flatten()[i]):.4f} at flat index {i}{where}{hint}")


@quiet
def check_negative_weights(negative_weights: Callable, hidden: bool = False) -> None:
    """softmax(s / T)_k / T for the K negatives, i.e. the gradient of -log softmax(s / T)_0 with
    respect to each negative's similarity (hidden: batched similarities, more temperatures)."""
    s = torch.tensor([0.9, 0.8, 0.5, 0.1, -0.3])  # positive first, then 4 negatives
    if not hidden:
        for t in (1.0, 0.1):
            _compare_weights(negative_weights, s, t, f" for s={s.tolist()}, T={t}", False)
        batch = torch.stack([s, s.flip(0)])  # (2, 1 + 4): two queries, as the text allows
        _compare_weights(negative_weights, batch, 0.5,
                         " for similarities of shape (2, 5) (two queries), T=0.5", False)
        return
    g = torch.Generator().manual_seed(3)
    for t in (0.05, 0.5, 5.0):
        batch = torch.rand(3, 7, generator=g) * 2 - 1  # (3, 1 + 6) similarities in [-1, 1]
        _compare_weights(negative_weights, batch, t, f" for similarities (3, 7), T={t}", True)
    _compare_weights(negative_weights, s.double(), 0.2, f" for s={s.tolist()} (float64), T=0.2",
                     True)


# ----------------------------------------------------------------------------------------------
# 3. gaussian_mi(rho, d)
# ----------------------------------------------------------------------------------------------


def _mi_variants(rho: float, d: int) -> dict[str, float]:
    mi = -0.5 * d * math.log(1 - rho**2)
    out = {
        "in nats: use the natural log (math.log), not log2": mi / math.log(2),
        "the d coordinates are independent, so their informations add: multiply by d": mi / d,
        "did you forget the factor 1/2?": 2 * mi,
        "mutual information is >= 0: check the sign": -mi,
    }
    if abs(rho) < 1:
        out["it is log(1 - rho^2), not log(1 - rho)"] = -0.5 * d * math.log(1 - rho)
        out["it is log(1 - rho^2), not log(1 - |rho|)"] = -0.5 * d * math.log(1 - abs(rho))
    return out


@quiet
def check_gaussian_mi(gaussian_mi: Callable, hidden: bool = False) -> None:
    """-d/2 log(1 - rho^2) nats for several (rho, d) (hidden: rho = 0, negative rho, large d)."""
    ex = "gaussian_mi"
    cases = [(0.5, 1), (0.9, 4)] if not hidden else [(0.0, 3), (-0.8, 2), (0.99, 10), (0.3, 1),
                                                       (0.93, 4)]
    for rho, d in cases:
        where = f" for rho={rho}, d={d}"
        got = _call(ex, gaussian_mi, rho, d, where=where, guard=hidden)
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"{ex}: expected a number, got {type(got).__name__}{where}: "
                                 f"return a float") from None
        expected = -0.5 * d * math.log(1 - rho**2)
        if not abs(value - expected) <= 1e-5 + 1e-5 * abs(expected):
            hint = ""
            for text, wrong in _mi_variants(rho, d).items():
                if abs(value - wrong) <= 1e-4 + 1e-4 * abs(wrong):
                    hint = " — " + text
                    break
            raise AssertionError(f"{ex}: expected {expected:.4f} nats, got {value:.4f}{where}"
                                 f"{hint}")
