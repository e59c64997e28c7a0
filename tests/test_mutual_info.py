"""Tests for sslkit.mutual_info: the closed-form mutual information of correlated Gaussians, the
sampler, the InfoNCE estimate's ceiling log N, a trained critic's estimate, and the gradient
weights of the negatives under a temperature."""

import math

import pytest
import torch

from sslkit import losses
from sslkit.errors import SSLKitError
from sslkit.mutual_info import (
    SeparableCritic,
    correlated_gaussians,
    evaluate_bound,
    gaussian_mi,
    infonce_bound,
    infonce_scores_loss,
    negative_weights,
    optimal_bound,
    optimal_scores,
    rho_for_mi,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Correlated Gaussians and their mutual information


def test_sampler_shapes_and_moments():
    x, y = correlated_gaussians(200_000, 3, 0.7, gen(0))
    assert x.shape == y.shape == (200_000, 3) and x.dtype == torch.float32
    corr = torch.corrcoef(torch.cat([x, y], dim=1).T)  # (6, 6)
    assert torch.allclose(corr[:3, 3:].diagonal(), torch.full((3,), 0.7), atol=0.01)
    off = corr[:3, 3:] - torch.diag(corr[:3, 3:].diagonal())
    assert off.abs().max() < 0.01  # coordinate j of y is correlated with coordinate j of x only
    assert torch.allclose(y.var(dim=0), torch.ones(3), atol=0.02)  # y is standard normal too


def test_sampler_is_seeded_and_rejects_rho_one():
    a = correlated_gaussians(5, 2, 0.5, gen(3))
    b = correlated_gaussians(5, 2, 0.5, gen(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(SSLKitError, match="rho"):
        correlated_gaussians(5, 2, 1.0)


def test_gaussian_mi_closed_form_values():
    assert gaussian_mi(0.0, 7) == 0.0
    assert gaussian_mi(0.6, 1) == pytest.approx(-0.5 * math.log(0.64))
    assert gaussian_mi(0.6, 4) == pytest.approx(4 * gaussian_mi(0.6, 1))  # coordinates add
    assert gaussian_mi(-0.6, 2) == pytest.approx(gaussian_mi(0.6, 2))  # symmetric in rho
    for mi, d in ((0.5, 1), (4.0, 4), (10.0, 20)):
        assert gaussian_mi(rho_for_mi(mi, d), d) == pytest.approx(mi)


@pytest.mark.parametrize("rho, d", [(0.5, 1), (0.93, 4)])
def test_gaussian_mi_matches_monte_carlo(rho, d):
    """I = E[log p(y | x) - log p(y)], estimated on samples with the exact Gaussian densities."""
    x, y = correlated_gaussians(200_000, d, rho, gen(1))
    x, y = x.double(), y.double()
    var = 1 - rho**2
    log_cond = (-0.5 * (y - rho * x).pow(2) / var - 0.5 * math.log(2 * math.pi * var)).sum(1)
    log_marg = (-0.5 * y.pow(2) - 0.5 * math.log(2 * math.pi)).sum(1)
    estimate = float((log_cond - log_marg).mean())
    assert estimate == pytest.approx(gaussian_mi(rho, d), abs=0.02)


# ---------------------------------------------------------------------------------------------
# The InfoNCE estimate


def test_critic_scores_every_x_against_every_y():
    torch.manual_seed(0)
    critic = SeparableCritic(3, hidden=8, embed=5)
    x, y = torch.randn(2, 6, 3), torch.randn(2, 6, 3)  # 2 groups of 6 pairs
    scores = critic(x, y)
    assert scores.shape == (2, 6, 6)
    assert torch.allclose(scores[1, 2, 4], critic.f(x[1, 2]) @ critic.g(y[1, 4]))


def test_scores_loss_is_cross_entropy_with_the_diagonal():
    scores = torch.randn(3, 5, 5, generator=gen(0))
    expected = torch.stack([torch.nn.functional.cross_entropy(s, torch.arange(5))
                            for s in scores]).mean()
    assert torch.allclose(infonce_scores_loss(scores), expected)
    # the same loss as info_nce with the other y's as per-query negatives and T = 1, when the
    # critic is a cosine similarity
    q, k = torch.randn(4, 8, generator=gen(1)), torch.randn(4, 8, generator=gen(2))
    sims = losses.cosine_similarity_matrix(q, k)  # (4, 4)
    negatives = torch.stack([k[[j for j in range(4) if j != i]] for i in range(4)])  # (4, 3, 8)
    assert torch.allclose(infonce_scores_loss(sims), losses.info_nce(q, k, negatives, 1.0))


@pytest.mark.parametrize("n", [2, 8, 64])
def test_estimate_never_exceeds_log_n(n):
    """log N - L <= log N for any critic, since a cross-entropy is never negative."""
    for seed in range(3):
        torch.manual_seed(seed)
        critic = SeparableCritic(2, hidden=16, embed=8)
        with torch.no_grad():
            for param in critic.parameters():
                param.mul_(5.0)  # large, random scores
        estimate = evaluate_bound(critic, n, 2, 0.99, pairs=512, generator=gen(seed))
        assert estimate <= math.log(n) + 1e-6
    # a critic that knows the answer exactly: scores +inf-like on the diagonal
    big = torch.eye(n) * 1e4
    assert math.log(n) - float(infonce_scores_loss(big)) == pytest.approx(math.log(n), abs=1e-6)


def test_optimal_scores_are_the_log_density_ratios():
    rho, d = 0.8, 3
    x, y = correlated_gaussians(5, d, rho, gen(4))
    x, y = x.double(), y.double()
    var = 1 - rho**2

    def log_normal(z, mean, v):  # summed over the d coordinates
        return (-(z - mean).pow(2) / (2 * v) - 0.5 * math.log(2 * math.pi * v)).sum(-1)

    direct = log_normal(y[None], rho * x[:, None], var) - log_normal(y[None], 0.0, 1.0)  # (5, 5)
    assert torch.allclose(optimal_scores(x, y, rho), direct)
    # on true pairs their mean is the mutual information
    x, y = correlated_gaussians(100_000, d, rho, gen(5))
    diagonal = optimal_scores(x.double()[:, None], y.double()[:, None], rho)  # (100000, 1, 1)
    assert float(diagonal.mean()) == pytest.approx(gaussian_mi(rho, d), abs=0.02)


def test_optimal_bound_is_below_mi_and_log_n_and_grows_with_n():
    rho = rho_for_mi(2.0, 2)
    values = [optimal_bound(n, 2, rho, pairs=16384) for n in (2, 8, 64, 512)]
    assert all(v <= min(2.0, math.log(n)) + 0.01 for v, n in zip(values, (2, 8, 64, 512)))
    assert values == sorted(values)  # tighter as N grows
    assert values[-1] > 2.0 - 0.1  # close to the truth once N >> e^I


def test_trained_critic_comes_close_to_the_best_critic():
    """min(I, log N)-ish: 2 nats in 2 dimensions; log 4 < 2 nats < log 128."""
    rho = rho_for_mi(2.0, 2)
    for n in (4, 128):
        trained = infonce_bound(n, d=2, rho=rho, steps=120, pairs=256, seed=0, eval_pairs=4096)
        best = optimal_bound(n, 2, rho, pairs=16384)
        assert trained <= math.log(n)
        assert abs(trained - best) < 0.1, (n, trained, best)
    again = infonce_bound(4, d=2, rho=rho, steps=5, pairs=64, seed=1, eval_pairs=256)
    assert again == infonce_bound(4, d=2, rho=rho, steps=5, pairs=64, seed=1, eval_pairs=256)
    with pytest.raises(SSLKitError, match="n must be >= 2"):
        infonce_bound(1)


# ---------------------------------------------------------------------------------------------
# Temperature and the weights of the negatives


def test_negative_weights_are_the_gradient():
    s = torch.tensor([[0.9, 0.7, 0.2, -0.4], [0.1, 0.5, 0.3, 0.0]], requires_grad=True)
    t = 0.3
    (-torch.log_softmax(s / t, dim=-1)[:, 0]).sum().backward()
    w = negative_weights(s.detach(), t)  # (2, 3)
    assert w.shape == (2, 3)
    assert torch.allclose(w, s.grad[:, 1:])
    # together the negatives are pushed exactly as hard as the positive is pulled
    assert torch.allclose(w.sum(-1), -s.grad[:, 0])
    p0 = torch.softmax(s.detach() / t, -1)[:, 0]
    assert torch.allclose(w.sum(-1), (1 - p0) / t)


def test_negative_weights_limits_of_the_temperature():
    s = torch.tensor([0.9, 0.8, 0.5, 0.1, -0.3, -0.9])
    hot = negative_weights(s, 1e4)
    assert torch.allclose(hot / hot.sum(), torch.full((5,), 0.2), atol=1e-4)  # uniform
    cold = negative_weights(s, 0.01)
    share = cold / cold.sum()
    assert share[0] > 0.99  # all on the hardest negative (s = 0.8)
    shares = [negative_weights(s, t) / negative_weights(s, t).sum() for t in (0.05, 0.2, 1.0)]
    assert shares[0][0] > shares[1][0] > shares[2][0]  # the hardest loses share as T grows
    with pytest.raises(SSLKitError, match="temperature"):
        negative_weights(s, 0.0)


# ---------------------------------------------------------------------------------------------
# Closed cases and bad input


def test_scores_loss_closed_cases():
    # a critic that cannot tell the pairs apart scores log N: the estimate is exactly 0 nats
    for n in (2, 5, 64):
        assert float(infonce_scores_loss(torch.zeros(3, n, n))) == pytest.approx(math.log(n))
    # adding a constant per row (a term in x alone) changes nothing
    scores = torch.randn(4, 6, 6, generator=gen(7))
    shifted = scores + torch.randn(4, 6, 1, generator=gen(8))
    assert torch.allclose(infonce_scores_loss(shifted), infonce_scores_loss(scores), atol=1e-6)
    # relabelling the pairs (the same permutation of xs and ys) changes nothing either
    perm = torch.randperm(6, generator=gen(9))
    assert torch.allclose(infonce_scores_loss(scores[:, perm][:, :, perm]),
                          infonce_scores_loss(scores), atol=1e-6)


def test_optimal_estimate_never_exceeds_log_n_even_with_huge_mi():
    """30 nats in 8 dimensions: the best critic is nearly perfect, the estimate sits just
    below log N and never above it."""
    rho = rho_for_mi(30.0, 8)
    for n in (2, 16, 256):
        value = optimal_bound(n, 8, rho, pairs=4096, seed=n)
        assert value <= math.log(n)
        assert value > math.log(n) - 0.01


@pytest.mark.parametrize("call,expected", [
    (lambda: infonce_scores_loss(torch.zeros(4, 3)), r"square score matrices"),
    (lambda: infonce_scores_loss(torch.zeros(2, 8, 4)), r"\(2, 8, 4\)"),  # was silently wrong
    (lambda: gaussian_mi(1.0, 2), "rho must be in"),
    (lambda: gaussian_mi(-1.5, 2), "rho must be in"),
    (lambda: rho_for_mi(-0.5, 2), "mi >= 0"),
    (lambda: rho_for_mi(1.0, 0), "d >= 1"),
    (lambda: evaluate_bound(SeparableCritic(2), 1, 2, 0.5), "n must be >= 2"),
    (lambda: optimal_bound(0), "n must be >= 2"),
    (lambda: gaussian_mi(0.5, 0), "d must be a whole number"),  # gave 0 nats
    (lambda: gaussian_mi(0.5, -2), "d must be a whole number"),  # gave -0.29 nats
    (lambda: gaussian_mi(0.5, 2.5), "got 2.5"),
    (lambda: correlated_gaussians(2.0, 3, 0.5), "n must be a whole number of pairs"),
    (lambda: correlated_gaussians(4, 0, 0.5), "d must be a whole number"),
    (lambda: optimal_scores(torch.zeros(3, 2), torch.zeros(3, 2), 1.0), "rho must be in"),
    (lambda: infonce_scores_loss(torch.zeros(3, 3, dtype=torch.long)), "torch.int64"),
    (lambda: infonce_scores_loss(torch.zeros(0, 0)), "N >= 1"),
])
def test_bad_input_is_a_one_line_error(call, expected):
    with pytest.raises(SSLKitError, match=expected) as err:
        call()
    assert "\n" not in str(err.value)


def test_infonce_bound_leaves_the_global_rng_alone():
    rho = rho_for_mi(1.0, 2)
    state = torch.random.get_rng_state()
    first = infonce_bound(4, d=2, rho=rho, steps=2, pairs=32, seed=3, eval_pairs=64)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)  # the global state does not matter either
    assert infonce_bound(4, d=2, rho=rho, steps=2, pairs=32, seed=3, eval_pairs=64) == first
