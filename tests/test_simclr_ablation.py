"""SimCLR's ablation switches: semi-hard negatives for NT-Xent / NT-Logistic / margin triplet,
NT-Xent without L2 normalisation (nt_xent_logits), and the SimCLRAblation method."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.errors import SSLKitError
from sslkit.losses import margin_triplet, nt_logistic, nt_xent, nt_xent_logits
from sslkit.methods.simclr import SimCLR
from sslkit.methods.simclr_ablation import SimCLRAblation
from sslkit.models import build_encoder


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def cosines(z1, z2):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    return z @ z.T  # (2N, 2N)


def semi_hard_sets(sim, n):
    """Plain loops: for anchor i, its partner and the negatives less similar than it."""
    out = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        negatives = [k for k in range(2 * n) if k not in (i, j) and sim[i, k] < sim[i, j]]
        out.append((j, negatives))
    return out


# --- nt_xent_logits ------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_nt_xent_logits_cross_entropy_is_nt_xent(t):
    z1, z2 = randn(6, 5), randn(6, 5, seed=1)
    logits, labels = nt_xent_logits(z1, z2, t)
    assert logits.shape == (12, 12) and labels.tolist() == [*range(6, 12), *range(6)]
    assert torch.isinf(logits.diagonal()).all()
    assert torch.allclose(F.cross_entropy(logits, labels), nt_xent(z1, z2, t))


def test_unnormalised_logits_are_dot_products_and_scale_with_z():
    z1, z2 = randn(4, 3), randn(4, 3, seed=1)
    logits, _ = nt_xent_logits(z1, z2, 0.5, normalize=False)
    z = torch.cat([z1, z2])
    off = ~torch.eye(8, dtype=torch.bool)
    assert torch.allclose(logits[off], (z @ z.T / 0.5)[off])
    scaled, _ = nt_xent_logits(3 * z1, 3 * z2, 0.5, normalize=False)
    assert torch.allclose(scaled[off], 9 * logits[off])
    cos, _ = nt_xent_logits(3 * z1, 3 * z2, 0.5)  # normalised: invariant to the scale
    assert torch.allclose(cos, nt_xent_logits(z1, z2, 0.5)[0])


def test_semi_hard_nt_xent_matches_a_plain_loop():
    n, t = 5, 0.3
    z1, z2 = randn(n, 4), randn(n, 4, seed=1)
    sim = cosines(z1, z2)
    expected = 0.0
    for i, (j, negatives) in enumerate(semi_hard_sets(sim, n)):
        denominator = math.exp(sim[i, j] / t) + sum(math.exp(sim[i, k] / t) for k in negatives)
        expected -= math.log(math.exp(sim[i, j] / t) / denominator)
    got = F.cross_entropy(*nt_xent_logits(z1, z2, t, semi_hard=True))
    assert math.isclose(float(got), expected / (2 * n), rel_tol=1e-9)


def test_semi_hard_nt_logistic_and_margin_match_plain_loops():
    n, t, m = 5, 0.4, 0.5
    z1, z2 = randn(n, 4, seed=2), randn(n, 4, seed=3)
    sim = cosines(z1, z2)
    logistic = margin = 0.0
    for i, (j, negatives) in enumerate(semi_hard_sets(sim, n)):
        logistic -= math.log(1 / (1 + math.exp(-sim[i, j] / t)))
        logistic -= sum(math.log(1 / (1 + math.exp(sim[i, k] / t))) for k in negatives)
        margin += sum(max(float(sim[i, k] - sim[i, j]) + m, 0.0) for k in negatives)
    assert math.isclose(float(nt_logistic(z1, z2, t, semi_hard=True)), logistic / (2 * n),
                        rel_tol=1e-9)
    assert math.isclose(float(margin_triplet(z1, z2, m, semi_hard=True)), margin / (2 * n),
                        rel_tol=1e-9)


def test_semi_hard_changes_nothing_when_every_positive_is_the_most_similar():
    # z2 = z1: every positive has cosine 1, so no negative is harder than it.
    z = randn(6, 8)
    assert torch.allclose(F.cross_entropy(*nt_xent_logits(z, z.clone(), 0.5, semi_hard=True)),
                          nt_xent(z, z.clone(), 0.5))
    assert torch.allclose(nt_logistic(z, z.clone(), 0.5, semi_hard=True), nt_logistic(z, z, 0.5))
    assert torch.allclose(margin_triplet(z, z.clone(), semi_hard=True), margin_triplet(z, z))


def test_semi_hard_drops_the_negatives_harder_than_the_positive():
    # Views 0, 1 = (1, 0) and 2, 3 = (0, 1): anchor 0's positive (view 2) is at cosine 0, its
    # negatives at cosine 1 (view 1) and 0 (view 3), neither less similar than the positive.
    # Every anchor alike: all negatives: hinges 1.5 + 0.5 = 2; semi-hard: none left, 0.
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert float(margin_triplet(z1, z2, 0.5)) == pytest.approx(2.0)
    assert float(margin_triplet(z1, z2, 0.5, semi_hard=True)) == 0.0


def test_ablation_losses_have_gradients():
    z1 = randn(4, 3).requires_grad_()
    z2 = randn(4, 3, seed=1).requires_grad_()
    for loss in (F.cross_entropy(*nt_xent_logits(z1, z2, 0.5, normalize=False, semi_hard=True)),
                 nt_logistic(z1, z2, semi_hard=True), margin_triplet(z1, z2, semi_hard=True)):
        g1, g2 = torch.autograd.grad(loss, (z1, z2))
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    assert torch.autograd.gradcheck(
        lambda a, b: F.cross_entropy(*nt_xent_logits(a, b, 0.5, semi_hard=True)), (z1, z2))


# --- SimCLRAblation ------------------------------------------------------------------------


def make(cls, **options):
    torch.manual_seed(0)
    views = SimCLRViews(ViewConfig(size=16), torch.Generator().manual_seed(0))
    return cls(build_encoder("convnet-small", 1), views, proj_dim=8, temperature=0.3, **options)


def test_default_ablation_is_simclr():
    v1, v2 = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    plain, ablation = make(SimCLR), make(SimCLRAblation)
    assert torch.allclose(plain.loss_on_views(v1, v2), ablation.loss_on_views(v1, v2))


@pytest.mark.parametrize("loss", ["nt_logistic", "margin_triplet"])
def test_ablation_uses_the_chosen_loss(loss):
    v1, v2 = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    method = make(SimCLRAblation, loss=loss, semi_hard=True)
    z1, z2 = method.embed(torch.cat([v1, v2])).chunk(2)
    expected = (nt_logistic(z1, z2, 0.3, semi_hard=True) if loss == "nt_logistic"
                else margin_triplet(z1, z2, 0.5, semi_hard=True))
    assert torch.allclose(method.loss_on_views(v1, v2), expected)


def test_ablation_bad_options_raise_one_line_errors():
    with pytest.raises(SSLKitError, match="unknown SimCLR loss"):
        make(SimCLRAblation, loss="infonce")
    with pytest.raises(SSLKitError, match="applies to nt_xent only"):
        make(SimCLRAblation, loss="nt_logistic", normalize=False)
