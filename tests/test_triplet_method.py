"""Tests for sslkit.methods.triplet: distances, the three mining strategies (against plain loops
and their defining properties), collapse of the loss without a margin, and the method module."""

import pytest
import torch

from sslkit import losses
from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.errors import SSLKitError
from sslkit.methods import triplet
from sslkit.models.convnet import ConvNet


def random_case(n: int, m: int, seed: int, classes: int | None = None):
    """Squared distances (N, M) of random embeddings and the invalid mask (the diagonal, or
    same label with `classes` classes, every class present among the candidates)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 5, generator=g), torch.randn(m, 5, generator=g)
    dist = triplet.pairwise_sq_distances(a, b)
    if classes is None:
        return dist, torch.eye(n, m, dtype=torch.bool), None
    la = torch.randint(0, classes, (n,), generator=g)
    lb = torch.randint(0, classes, (m,), generator=g)
    lb[:classes] = torch.arange(classes)
    return dist, triplet.same_label(la, lb), (la, lb)


CASES = [(2, 2, 0, None), (7, 7, 1, None), (16, 16, 2, None), (9, 9, 3, 3), (6, 20, 4, 4),
         (12, 12, 5, 2)]


def test_pairwise_sq_distances_is_squared_euclidean():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g)
    expected = torch.cdist(a, b).pow(2)
    assert torch.allclose(triplet.pairwise_sq_distances(a, b), expected, atol=1e-5)
    assert (triplet.pairwise_sq_distances(a, a).diagonal() >= 0).all()
    assert torch.allclose(triplet.pairwise_sq_distances(a, a).diagonal(), torch.zeros(5),
                          atol=1e-5)


@pytest.mark.parametrize("n, m, seed, classes", CASES)
def test_batch_hard_matches_loop_and_is_valid(n, m, seed, classes):
    dist, invalid, _ = random_case(n, m, seed, classes)
    chosen = triplet.batch_hard_negatives(dist, invalid)
    assert torch.equal(chosen, triplet.batch_hard_negatives_loop(dist, invalid))
    rows = torch.arange(n)
    assert not invalid[rows, chosen].any()  # never the positive / the anchor's class
    # no valid candidate is closer than the chosen one
    assert (dist[rows, chosen][:, None] <= dist.masked_fill(invalid, float("inf"))).all()


@pytest.mark.parametrize("margin", [0.0, 0.5, 2.0, 10.0])
@pytest.mark.parametrize("n, m, seed, classes", CASES)
def test_semi_hard_matches_loop_and_lies_in_the_band(n, m, seed, classes, margin):
    dist_an, invalid, _ = random_case(n, m, seed, classes)
    dist_ap = dist_an.max() * torch.rand(n, generator=torch.Generator().manual_seed(seed + 9))
    chosen = triplet.semi_hard_negatives(dist_ap, dist_an, margin, invalid)
    assert torch.equal(chosen, triplet.semi_hard_negatives_loop(dist_ap, dist_an, margin,
                                                                invalid))
    for i in range(n):
        j = int(chosen[i])
        assert not invalid[i, j]
        valid = ~invalid[i]
        band = valid & (dist_an[i] > dist_ap[i]) & (dist_an[i] < dist_ap[i] + margin)
        if band.any():  # FaceNet's condition, and the closest such negative
            assert dist_ap[i] < dist_an[i, j] < dist_ap[i] + margin
            assert dist_an[i, j] == dist_an[i][band].min()
        else:  # fallback: the easiest (farthest) valid candidate
            assert dist_an[i, j] == dist_an[i][valid].max()


def test_semi_hard_covers_both_branches():
    """The random cases above exercise both the band and the fallback."""
    dist_an, invalid, _ = random_case(16, 16, 2)
    dist_ap = dist_an.max() * torch.rand(16, generator=torch.Generator().manual_seed(11))
    band = ((dist_an > dist_ap[:, None]) & (dist_an < dist_ap[:, None] + 0.5)
            & ~invalid).any(1)
    assert band.any() and not band.all()


def test_semi_hard_band_is_strict():
    dist_ap = torch.tensor([1.0, 1.0])
    dist_an = torch.tensor([[0.0, 1.0, 1.5, 2.0], [0.0, 1.0, 2.0, 3.0]])
    invalid = torch.tensor([[True, False, False, False], [True, False, False, False]])
    assert triplet.semi_hard_negatives(dist_ap, dist_an, 1.0, invalid).tolist() == [2, 3]


def test_random_negatives_are_valid_and_cover_the_candidates():
    _, invalid, _ = random_case(6, 6, 0, classes=3)
    g = torch.Generator().manual_seed(0)
    seen = torch.zeros(6, 6, dtype=torch.bool)
    for _ in range(200):
        chosen = triplet.random_negatives(invalid, g)
        assert not invalid[torch.arange(6), chosen].any()
        seen[torch.arange(6), chosen] = True
    assert torch.equal(seen, ~invalid)  # every valid candidate drawn at some point


def test_mining_rejects_an_anchor_without_negatives():
    with pytest.raises(SSLKitError, match="no valid negative"):
        triplet.batch_hard_negatives(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool))


def test_collapse_without_margin():
    """The constant embedding is a perfect solution with margin 0 (loss 0) but costs the
    margin otherwise; shrinking an embedding scales a margin-0 loss by s^2."""
    z = torch.full((8, 4), 0.3)
    assert float(losses.triplet_loss(z, z, z, margin=0.0)) == 0.0
    assert float(losses.triplet_loss(z, z, z, margin=0.2)) == pytest.approx(0.2)
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(16, 4, generator=g) for _ in range(3))
    full = losses.triplet_loss(a, p, n, 0.0)
    assert float(full) > 0
    assert float(losses.triplet_loss(0.1 * a, 0.1 * p, 0.1 * n, 0.0)) == pytest.approx(
        0.01 * float(full), rel=1e-5)


def tiny_method(mining: str, normalize: bool = True, margin: float = 0.2):
    torch.manual_seed(0)
    return triplet.Triplet(ConvNet(1, (4, 8)), SimCLRViews(ViewConfig(size=8)), proj_dim=6,
                           margin=margin, mining=mining, normalize=normalize,
                           generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mining", triplet.MINING)
def test_forward_is_finite_and_reaches_the_encoder(mining):
    method = tiny_method(mining)
    x = torch.randint(0, 256, (6, 1, 12, 12), dtype=torch.uint8)
    loss = method(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [q.grad for q in method.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_embedding_is_normalised_or_not():
    v = torch.rand(5, 1, 8, 8)
    assert torch.allclose(tiny_method("random").eval().embed(v).norm(dim=1), torch.ones(5),
                          atol=1e-5)
    assert not torch.allclose(tiny_method("random", normalize=False).eval().embed(v).norm(dim=1),
                              torch.ones(5), atol=1e-3)


def test_loss_on_views_uses_the_mined_negative():
    method = tiny_method("batch_hard").eval()
    v1, v2 = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        z_a, z_p = method.embed(torch.cat([v1, v2])).chunk(2)
        dist = triplet.pairwise_sq_distances(z_a, z_p)
        chosen = triplet.batch_hard_negatives_loop(dist, torch.eye(5, dtype=torch.bool))
        expected = losses.triplet_loss(z_a, z_p, z_p[chosen], method.margin)
        assert torch.allclose(method.loss_on_views(v1, v2), expected, atol=1e-6)


def test_unknown_mining_is_refused():
    with pytest.raises(SSLKitError, match="unknown mining"):
        tiny_method("hardest")


@pytest.mark.parametrize("mining", ["semi_hard", "batch_hard"])
def test_mining_under_bfloat16_autocast_picks_the_float32_negatives(mining):
    """Under autocast the distance matrix would be a bfloat16 product of unit vectors, off by
    up to ~0.005: enough to move negatives across the semi-hard band and to reorder the hardest.
    Mining computes it in float32 there too."""
    method = tiny_method(mining)
    g = torch.Generator().manual_seed(3)
    z_a, z_p = (torch.nn.functional.normalize(torch.randn(256, 64, generator=g), dim=1)
                for _ in range(2))
    exact = method.mine(z_a, z_p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(method.mine(z_a, z_p), exact)
        rough = triplet.pairwise_sq_distances(z_a, z_p)  # a plain call: the product in bf16
    assert float((rough - triplet.pairwise_sq_distances(z_a, z_p)).abs().max()) > 1e-3
