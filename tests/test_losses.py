"""Tests for sslkit.losses: closed forms, invariances, loop == vectorised, gradients, bad input."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from one_line import one_line_error

from sslkit.errors import SSLKitError
from sslkit.losses import (
    cosine_similarity_matrix,
    cpc_logits,
    cpc_loss,
    dino_loss,
    dino_loss_loop,
    info_nce,
    mae_loss,
    margin_triplet,
    moco_loss,
    nt_logistic,
    nt_xent,
    nt_xent_loop,
    triplet_loss,
)

PAIR_LOSSES = [nt_xent, nt_xent_loop, nt_logistic, margin_triplet]


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def orthogonal_pairs(n=4, d=8):
    """z1 == z2 == the first n rows of the identity: positives have cosine 1, negatives 0."""
    z = torch.eye(d)[:n]
    return z.clone(), z.clone()


def close(a, b, tol=1e-5):
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


# ---------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("fn", [nt_xent, nt_xent_loop])
def test_nt_xent_closed_form_orthogonal(fn, tau):
    n = 4
    z1, z2 = orthogonal_pairs(n)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (2 * n - 2)))
    assert close(fn(z1, z2, temperature=tau), expected)


def test_nt_xent_closed_form_antipodal_negatives():
    # N=2, D=1: views 0,2 are +1 and views 1,3 are -1 -> every anchor sees its positive at
    # cosine 1 and two negatives at cosine -1.
    z = torch.tensor([[1.0], [-1.0]])
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * math.exp(-1 / tau)))
    assert close(nt_xent(z, z.clone(), tau), expected)


@pytest.mark.parametrize("tau", [0.1, 0.7])
@pytest.mark.parametrize("k", [1, 3])
def test_info_nce_closed_form(tau, k):
    n, d = 3, 8
    eye = torch.eye(d)
    query = eye[:n]  # (N, D)
    positive = 2.5 * eye[:n]  # parallel to the query: cosine 1
    shared = eye[n:n + k]  # (K, D), orthogonal to every query: cosine 0
    per_query = shared.expand(n, k, d).clone()  # (N, K, D)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + k))
    assert close(info_nce(query, positive, shared, tau), expected)
    assert close(info_nce(query, positive, per_query, tau), expected)


def test_triplet_loss_hand_made_points():
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # d_pos = 1, 9
    negative = torch.tensor([[0.0, 2.0], [1.0, 0.0]])  # d_neg = 4, 1
    # margin 1: row 0 -> max(0, 1 - 4 + 1) = 0 (negative far enough), row 1 -> 9 - 1 + 1 = 9
    assert close(triplet_loss(anchor, positive, negative, margin=1.0), (0 + 9) / 2)
    # margin 4: row 0 -> 1 - 4 + 4 = 1, row 1 -> 12
    assert close(triplet_loss(anchor, positive, negative, margin=4.0), (1 + 12) / 2)
    # default margin is 1.0
    assert close(triplet_loss(anchor, positive, negative), 4.5)


def test_triplet_loss_hinge_is_zero_when_negative_far():
    anchor = torch.zeros(5, 3)
    positive = 0.1 * torch.ones(5, 3)
    negative = 10.0 * torch.ones(5, 3)
    assert triplet_loss(anchor, positive, negative, margin=1.0).item() == 0.0


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_logistic_closed_form_orthogonal(tau):
    n = 4
    z1, z2 = orthogonal_pairs(n)
    # -log sigma(1/tau) + (2N-2) * (-log sigma(0)) = softplus(-1/tau) + (2N-2) log 2
    expected = math.log1p(math.exp(-1 / tau)) + (2 * n - 2) * math.log(2)
    assert close(nt_logistic(z1, z2, tau), expected)


@pytest.mark.parametrize("margin, expected_per_negative", [(0.5, 0.0), (1.0, 0.0), (1.5, 0.5),
                                                           (3.0, 2.0)])
def test_margin_triplet_closed_form_orthogonal(margin, expected_per_negative):
    n = 4
    z1, z2 = orthogonal_pairs(n)
    # each negative: max(0 - 1 + m, 0); summed over the 2N-2 negatives, same for every anchor
    expected = (2 * n - 2) * expected_per_negative
    assert close(margin_triplet(z1, z2, margin=margin), expected)


def test_margin_triplet_default_margin_is_half():
    z1, z2 = randn(6, 5, seed=1), randn(6, 5, seed=2)
    assert close(margin_triplet(z1, z2), margin_triplet(z1, z2, margin=0.5))


# ---------------------------------------------------------------------------------------------
# Invariances and symmetries
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", PAIR_LOSSES)
def test_pair_losses_scale_invariant(fn):
    z1, z2 = randn(6, 5, seed=3), randn(6, 5, seed=4)
    assert close(fn(7.3 * z1, 7.3 * z2), fn(z1, z2))
    assert close(fn(7.3 * z1, 0.2 * z2), fn(z1, z2))  # each row is normalised on its own


@pytest.mark.parametrize("negative_shape", [(4, 5), (6, 4, 5)])
def test_info_nce_scale_invariant(negative_shape):
    q, p, neg = randn(6, 5, seed=5), randn(6, 5, seed=6), randn(*negative_shape, seed=7)
    assert close(info_nce(7.3 * q, 7.3 * p, 7.3 * neg), info_nce(q, p, neg))


def test_triplet_loss_not_scale_invariant():
    a, p, n = randn(6, 5, seed=8), randn(6, 5, seed=9), randn(6, 5, seed=10)
    assert not close(triplet_loss(7.3 * a, 7.3 * p, 7.3 * n), triplet_loss(a, p, n))
    # without a margin the hinge is positively homogeneous of degree 2 in the scale
    assert close(triplet_loss(7.3 * a, 7.3 * p, 7.3 * n, margin=0.0),
                 7.3**2 * triplet_loss(a, p, n, margin=0.0))


@pytest.mark.parametrize("fn", PAIR_LOSSES)
def test_pair_losses_symmetric_in_views(fn):
    z1, z2 = randn(7, 4, seed=11), randn(7, 4, seed=12)
    assert close(fn(z1, z2), fn(z2, z1))


@pytest.mark.parametrize("fn", PAIR_LOSSES)
def test_pair_losses_invariant_to_joint_permutation(fn):
    z1, z2 = randn(7, 4, seed=13), randn(7, 4, seed=14)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert close(fn(z1[perm], z2[perm]), fn(z1, z2))


def test_nt_xent_depends_on_pairing():
    z1, z2 = randn(7, 4, seed=15), randn(7, 4, seed=16)
    shifted = torch.roll(z2, 1, dims=0)  # breaks the pairs
    assert not close(nt_xent(z1, shifted), nt_xent(z1, z2))


def test_info_nce_invariant_to_joint_permutation_and_negative_order():
    q, p, neg = randn(5, 4, seed=17), randn(5, 4, seed=18), randn(5, 6, 4, seed=19)
    perm = torch.tensor([3, 0, 4, 1, 2])
    neg_perm = torch.tensor([5, 2, 0, 1, 4, 3])
    assert close(info_nce(q[perm], p[perm], neg[perm]), info_nce(q, p, neg))
    assert close(info_nce(q, p, neg[:, neg_perm]), info_nce(q, p, neg))


# ---------------------------------------------------------------------------------------------
# Plain loops (written independently here) == vectorised implementations
# ---------------------------------------------------------------------------------------------


def cos(u, v):
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


def views_and_partner(z1, z2):
    views = list(z1) + list(z2)
    n = len(z1)
    return views, lambda i: (i + n) % (2 * n)


def info_nce_by_hand(q, p, neg, tau):
    total = 0.0
    for i in range(len(q)):
        negs = neg[i] if neg.ndim == 3 else neg
        pos = math.exp(cos(q[i], p[i]) / tau)
        others = sum(math.exp(cos(q[i], m) / tau) for m in negs)
        total += -math.log(pos / (pos + others))
    return total / len(q)


def nt_logistic_by_hand(z1, z2, tau):
    views, partner = views_and_partner(z1, z2)
    total = 0.0
    for i, u in enumerate(views):
        j = partner(i)
        total += -math.log(1 / (1 + math.exp(-cos(u, views[j]) / tau)))
        for k, v in enumerate(views):
            if k not in (i, j):
                total += -math.log(1 / (1 + math.exp(cos(u, v) / tau)))
    return total / len(views)


def margin_triplet_by_hand(z1, z2, margin):
    views, partner = views_and_partner(z1, z2)
    total = 0.0
    for i, u in enumerate(views):
        j = partner(i)
        for k, v in enumerate(views):
            if k not in (i, j):
                total += max(cos(u, v) - cos(u, views[j]) + margin, 0.0)
    return total / len(views)


def triplet_by_hand(a, p, n, margin):
    rows = [max(float(((a[i] - p[i]) ** 2).sum() - ((a[i] - n[i]) ** 2).sum()) + margin, 0.0)
            for i in range(len(a))]
    return sum(rows) / len(rows)


@pytest.mark.parametrize("n, d, tau", [(2, 3, 0.5), (5, 8, 0.1), (16, 32, 0.05), (9, 2, 2.0)])
def test_nt_xent_loop_equals_vectorised(n, d, tau):
    z1, z2 = randn(n, d, seed=n), randn(n, d, seed=100 + n)
    assert close(nt_xent_loop(z1, z2, tau), nt_xent(z1, z2, tau), tol=1e-5)


@pytest.mark.parametrize("n, k, d, tau", [(1, 1, 2, 0.5), (4, 7, 5, 0.1), (6, 3, 16, 1.0)])
def test_info_nce_equals_plain_loop_both_negative_shapes(n, k, d, tau):
    q, p = randn(n, d, seed=20, dtype=torch.float64), randn(n, d, seed=21, dtype=torch.float64)
    shared = randn(k, d, seed=22, dtype=torch.float64)
    per_query = randn(n, k, d, seed=23, dtype=torch.float64)
    assert close(info_nce(q, p, shared, tau), info_nce_by_hand(q, p, shared, tau), tol=1e-9)
    assert close(info_nce(q, p, per_query, tau), info_nce_by_hand(q, p, per_query, tau),
                 tol=1e-9)
    broadcast = shared.expand(n, k, d)  # shared negatives given to every query explicitly
    assert close(info_nce(q, p, broadcast, tau), info_nce(q, p, shared, tau), tol=1e-12)


@pytest.mark.parametrize("n, d, tau", [(2, 3, 0.5), (5, 6, 0.2), (8, 4, 1.0)])
def test_nt_logistic_equals_plain_loop(n, d, tau):
    z1, z2 = randn(n, d, seed=24, dtype=torch.float64), randn(n, d, seed=25, dtype=torch.float64)
    assert close(nt_logistic(z1, z2, tau), nt_logistic_by_hand(z1, z2, tau), tol=1e-9)


@pytest.mark.parametrize("n, d, margin", [(2, 3, 0.5), (5, 6, 0.2), (8, 4, 1.0)])
def test_margin_triplet_equals_plain_loop(n, d, margin):
    z1, z2 = randn(n, d, seed=26, dtype=torch.float64), randn(n, d, seed=27, dtype=torch.float64)
    assert close(margin_triplet(z1, z2, margin), margin_triplet_by_hand(z1, z2, margin),
                 tol=1e-9)


@pytest.mark.parametrize("n, d, margin", [(1, 2, 1.0), (6, 5, 0.5), (10, 3, 3.0)])
def test_triplet_loss_equals_plain_loop(n, d, margin):
    a, p, m = (randn(n, d, seed=s, dtype=torch.float64) for s in (28, 29, 30))
    assert close(triplet_loss(a, p, m, margin), triplet_by_hand(a, p, m, margin), tol=1e-9)


def test_nt_xent_is_info_nce_over_the_2n_views():
    # Each of the 2N anchors: query = view i, positive = its partner, negatives = the other
    # 2N - 2 views. Then nt_xent is the mean of those InfoNCE terms.
    n, d, tau = 5, 4, 0.3
    z1, z2 = randn(n, d, seed=31, dtype=torch.float64), randn(n, d, seed=32, dtype=torch.float64)
    z = torch.cat([z1, z2])
    partner = (torch.arange(2 * n) + n) % (2 * n)
    negatives = torch.stack([z[[k for k in range(2 * n) if k not in (i, int(partner[i]))]]
                             for i in range(2 * n)])  # (2N, 2N-2, D)
    assert close(nt_xent(z1, z2, tau), info_nce(z, z[partner], negatives, tau), tol=1e-12)


def test_cosine_similarity_matrix_matches_torch():
    a, b = randn(4, 6, seed=33), randn(5, 6, seed=34)
    sim = cosine_similarity_matrix(a, b)
    assert sim.shape == (4, 5)
    ref = F.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1)
    torch.testing.assert_close(sim, ref)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def leaf(*shape, seed):
    return randn(*shape, seed=seed, dtype=torch.float64).requires_grad_()


def test_gradcheck_nt_xent():
    z1, z2 = leaf(4, 3, seed=40), leaf(4, 3, seed=41)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loop(a, b, 0.5), (z1, z2))


@pytest.mark.parametrize("negative_shape", [(5, 3), (4, 5, 3)])
def test_gradcheck_info_nce(negative_shape):
    q, p, neg = leaf(4, 3, seed=42), leaf(4, 3, seed=43), leaf(*negative_shape, seed=44)
    assert torch.autograd.gradcheck(lambda a, b, c: info_nce(a, b, c, 0.3), (q, p, neg))


def test_gradcheck_nt_logistic():
    z1, z2 = leaf(4, 3, seed=45), leaf(4, 3, seed=46)
    assert torch.autograd.gradcheck(lambda a, b: nt_logistic(a, b, 0.5), (z1, z2))


def test_gradcheck_triplet_loss():
    a, p, n = leaf(5, 3, seed=47), leaf(5, 3, seed=48), leaf(5, 3, seed=49)
    assert torch.autograd.gradcheck(lambda x, y, z: triplet_loss(x, y, z, 1.0), (a, p, n))


def test_nt_xent_gradient_pulls_positives_together():
    # A small gradient step must lower the loss (sanity check of the sign).
    z1, z2 = leaf(6, 4, seed=50), leaf(6, 4, seed=51)
    loss = nt_xent(z1, z2)
    loss.backward()
    with torch.no_grad():
        after = nt_xent(z1 - 1e-2 * z1.grad, z2 - 1e-2 * z2.grad)
    assert after < loss


# ---------------------------------------------------------------------------------------------
# dtype / device / autocast
# ---------------------------------------------------------------------------------------------


def all_losses(x1, x2, x3, neg):
    return {
        "nt_xent": nt_xent(x1, x2),
        "nt_xent_loop": nt_xent_loop(x1, x2),
        "nt_logistic": nt_logistic(x1, x2),
        "margin_triplet": margin_triplet(x1, x2),
        "info_nce": info_nce(x1, x2, neg),
        "triplet_loss": triplet_loss(x1, x2, x3),
    }


def test_bfloat16_under_autocast_gives_float32_close_to_float32():
    x1, x2, x3, neg = randn(8, 16, seed=60), randn(8, 16, seed=61), randn(8, 16, seed=62), \
        randn(8, 5, 16, seed=63)
    reference = all_losses(x1, x2, x3, neg)
    bf = [t.to(torch.bfloat16) for t in (x1, x2, x3, neg)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = all_losses(*bf)
    for name, value in results.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, reference[name], rtol=1e-2, atol=1e-2, msg=name)


def test_float32_inputs_are_not_downcast_by_autocast():
    x1, x2, x3, neg = randn(8, 16, seed=64), randn(8, 16, seed=65), randn(8, 16, seed=66), \
        randn(8, 5, 16, seed=67)
    reference = all_losses(x1, x2, x3, neg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = all_losses(x1, x2, x3, neg)
    for name, value in results.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, reference[name], rtol=1e-6, atol=1e-6, msg=name)


def test_float64_stays_float64():
    z1, z2 = randn(3, 4, seed=68, dtype=torch.float64), randn(3, 4, seed=69, dtype=torch.float64)
    assert nt_xent(z1, z2).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_under_autocast_matches_cpu():
    x1, x2, x3, neg = randn(8, 16, seed=70), randn(8, 16, seed=71), randn(8, 16, seed=72), \
        randn(8, 5, 16, seed=73)
    reference = all_losses(x1, x2, x3, neg)
    on_gpu = [t.cuda().half() for t in (x1, x2, x3, neg)]
    with torch.autocast("cuda", dtype=torch.float16):
        results = all_losses(*on_gpu)
    for name, value in results.items():
        assert value.device.type == "cuda" and value.dtype == torch.float32, name
        torch.testing.assert_close(value.cpu(), reference[name], rtol=1e-2, atol=1e-2, msg=name)


# ---------------------------------------------------------------------------------------------
# Properties that hold mathematically
# ---------------------------------------------------------------------------------------------


def test_nt_xent_decreases_with_temperature_for_identical_views():
    # z1 == z2: the positive has cosine 1, every negative < 1, so each term
    # log(1 + sum_k exp((s_k - 1)/tau)) shrinks strictly as tau shrinks (towards 0 as tau -> 0).
    z = F.normalize(randn(8, 6, seed=80), dim=1)
    taus = [2.0, 1.0, 0.5, 0.2, 0.1, 0.05]
    values = [nt_xent(z, z.clone(), t).item() for t in taus]
    assert all(later < earlier for earlier, later in itertools.pairwise(values))
    assert values[-1] < 0.1
    assert values[0] > 2.0


@pytest.mark.parametrize("seed", range(3))
def test_losses_non_negative_and_nt_xent_lower_bound(seed):
    n, tau = 6, 0.5
    z1, z2 = randn(n, 5, seed=seed), randn(n, 5, seed=10 + seed)
    for fn in PAIR_LOSSES:
        assert fn(z1, z2) >= 0
    assert triplet_loss(z1, z2, randn(n, 5, seed=20 + seed)) >= 0
    assert info_nce(z1, z2, randn(4, 5, seed=30 + seed)) >= 0
    # every term is log(1 + sum_k exp((s_k - s_pos)/tau)) with s_k - s_pos >= -2
    assert nt_xent(z1, z2, tau) >= math.log(1 + (2 * n - 2) * math.exp(-2 / tau)) - 1e-6
    # and at most log(1 + (2N-2) exp(2/tau))
    assert nt_xent(z1, z2, tau) <= math.log(1 + (2 * n - 2) * math.exp(2 / tau)) + 1e-6


def test_info_nce_at_most_log_1_plus_k_when_positive_is_most_similar():
    n, k, d = 5, 7, 6
    q = F.normalize(randn(n, d, seed=90), dim=1)
    positive = 3.0 * q  # cosine 1 >= every negative
    negatives = randn(n, k, d, seed=91)
    value = info_nce(q, positive, negatives, temperature=0.2)
    assert 0 <= value <= math.log(1 + k) + 1e-6
    # equality when all candidates are equally similar: the loss is exactly log(1 + K)
    assert close(info_nce(q, positive, q[:, None, :].expand(n, k, d), 0.2), math.log(1 + k))


def test_nt_xent_equals_log_2n_minus_1_when_all_views_identical():
    # all 2N views equal: the positive is one of 2N - 1 equally likely candidates
    n = 5
    z = torch.ones(n, 3)
    assert close(nt_xent(z, z.clone(), 0.3), math.log(2 * n - 1))


# ---------------------------------------------------------------------------------------------
# Bad input: one-line SSLKitError naming the problem and the fix
# ---------------------------------------------------------------------------------------------

Z = torch.randn(4, 8)
ZI = torch.ones(4, 8, dtype=torch.int64)

BAD_CALLS = {
    "1-D z1": (lambda: nt_xent(torch.randn(8), Z), "must be (N, D)"),
    "3-D z2": (lambda: nt_logistic(Z, torch.randn(4, 2, 4)), "must be (N, D)"),
    "shape mismatch D": (lambda: nt_xent(Z, torch.randn(4, 9)), "same shape"),
    "shape mismatch N": (lambda: margin_triplet(Z, torch.randn(5, 8)), "same shape"),
    "int z1": (lambda: nt_xent(ZI, Z), "call z1.float()"),
    "int query": (lambda: info_nce(ZI, Z, Z), "call query.float()"),
    "int negatives": (lambda: info_nce(Z, Z, ZI), "call negatives.float()"),
    "int anchor": (lambda: triplet_loss(ZI, Z, Z), "call anchor.float()"),
    "batch 1 nt_xent": (lambda: nt_xent(Z[:1], Z[:1]),
                        ("nt_xent needs at least 2 pairs per batch (got 1): "
                         "use a batch size of 2 or more")),
    "batch 1 loop": (lambda: nt_xent_loop(Z[:1], Z[:1]), "use a batch size of 2 or more"),
    "batch 1 logistic": (lambda: nt_logistic(Z[:1], Z[:1]), "use a batch size of 2 or more"),
    "batch 1 margin": (lambda: margin_triplet(Z[:1], Z[:1]), "use a batch size of 2 or more"),
    "tau 0": (lambda: nt_xent(Z, Z, temperature=0.0), "use a positive value"),
    "tau < 0 info_nce": (lambda: info_nce(Z, Z, Z, temperature=-0.1), "use a positive value"),
    "tau < 0 logistic": (lambda: nt_logistic(Z, Z, temperature=-1.0), "use a positive value"),
    "negatives wrong D": (lambda: info_nce(Z, Z, torch.randn(5, 7)), "same network"),
    "negatives wrong D 3-D": (lambda: info_nce(Z, Z, torch.randn(4, 5, 7)), "same network"),
    "negatives wrong N": (lambda: info_nce(Z, Z, torch.randn(3, 5, 8)), "shared (K, D)"),
    "negatives 1-D": (lambda: info_nce(Z, Z, torch.randn(8)), "(K, D) or (N, K, D)"),
    "negatives K=0": (lambda: info_nce(Z, Z, torch.randn(0, 8)), "K >= 1"),
    "empty batch nt_xent": (lambda: nt_xent(torch.randn(0, 8), torch.randn(0, 8)),
                            "is empty"),
    "empty batch info_nce": (lambda: info_nce(torch.randn(0, 8), torch.randn(0, 8), Z),
                             "is empty"),
    "empty batch triplet": (lambda: triplet_loss(*(torch.randn(0, 3),) * 3), "is empty"),
    "triplet mismatch": (lambda: triplet_loss(Z, Z, torch.randn(3, 8)), "same shape"),
    "not a tensor": (lambda: nt_xent([[1.0, 2.0]], Z), "torch.as_tensor"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_one_line_error(name):
    call, expected = BAD_CALLS[name]
    with pytest.raises(SSLKitError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert expected in message
    problem, _, fix = message.rpartition(": ")
    assert problem and fix  # "problem: fix"
    assert isinstance(info.value, ValueError)  # SSLKitError is a ValueError


S_OUT, T_OUT = [torch.randn(3, 5) for _ in range(4)], [torch.randn(3, 5)] * 2
CENTER = torch.zeros(5)

DINO_BAD_CALLS = {
    "student_temp 0": (lambda f: f(S_OUT, T_OUT, CENTER, 0.0, 0.04), "student_temp must be > 0"),
    "teacher_temp 0": (lambda f: f(S_OUT, T_OUT, CENTER, 0.1, 0.0), "teacher_temp must be > 0"),
    "teacher_temp < 0": (lambda f: f(S_OUT, T_OUT, CENTER, 0.1, -0.04), "teacher_temp"),
    "center a list": (lambda f: f(S_OUT, T_OUT, [0.0] * 5), "center must be a tensor"),
    "center (N, K)": (lambda f: f(S_OUT, T_OUT, torch.zeros(3, 5)), "(K,) or (1, K)"),
    "center wrong K": (lambda f: f(S_OUT, T_OUT, torch.zeros(4)), "K=5"),
    "stacked tensor": (lambda f: f(torch.stack(S_OUT), torch.stack(T_OUT), CENTER),
                       "list of (N, K) tensors"),
    "K mismatch": (lambda f: f([*S_OUT[:3], torch.randn(3, 6)], T_OUT, CENTER),
                   "student_out[3] (3, 6)"),
    "more teacher crops": (lambda f: f(S_OUT[:1], T_OUT, CENTER), "global crops (first)"),
}


@pytest.mark.parametrize("fn", [dino_loss, dino_loss_loop])
@pytest.mark.parametrize("name", list(DINO_BAD_CALLS))
def test_dino_bad_input_raises_one_line_error(fn, name):
    # A temperature of 0 used to give a silent NaN, a non-tensor centre an AttributeError and a
    # centre of shape (N, K) a silently wrong loss (broadcast row by row).
    call, expected = DINO_BAD_CALLS[name]
    with pytest.raises(SSLKitError) as info:
        call(fn)
    message = str(info.value)
    assert "\n" not in message and expected in message
    problem, _, fix = message.rpartition(": ")
    assert problem.startswith(fn.__name__) and fix


MIXED_DTYPE_CALLS = {
    "info_nce shared": (lambda: info_nce(Z, Z, Z.double()), "negatives.to(query.dtype)"),
    "info_nce per query": (lambda: info_nce(Z.double(), Z.double(), torch.randn(4, 3, 8)),
                           "negatives.to(query.dtype)"),
    "moco queue": (lambda: moco_loss(Z, Z, Z.double()), "queue.to(q.dtype)"),
    "cpc candidates D": (lambda: cpc_logits(*CPC_ZCW, candidates=torch.randn(40, 7)),
                         "(M', 6)"),
    "cpc candidates too few": (lambda: cpc_logits(*CPC_ZCW, candidates=torch.randn(40, 6),
                                                  offset=20), "offset=20"),
}
CPC_ZCW = (torch.randn(2, 4, 3, 6), torch.randn(2, 4, 3, 5), torch.randn(2, 6, 5))


@pytest.mark.parametrize("name", list(MIXED_DTYPE_CALLS))
def test_mismatched_negatives_are_one_line_errors_not_deep_tracebacks(name):
    # float64 negatives with float32 queries (torch.from_numpy gives float64) used to fail deep
    # inside a matmul with "expected m1 and m2 to have the same dtype"
    call, expected = MIXED_DTYPE_CALLS[name]
    with pytest.raises(SSLKitError) as info:
        call()
    assert "\n" not in str(info.value) and expected in str(info.value)


def test_dino_counts_two_times_v_minus_two_pairs_by_hand():
    # 2 teacher crops x V student crops minus the 2 pairs of a crop with itself
    v, n, k, ts, tt = 5, 3, 4, 0.2, 0.05
    s = [randn(n, k, seed=200 + i, dtype=torch.float64) for i in range(v)]
    t = [randn(n, k, seed=300 + g, dtype=torch.float64) for g in range(2)]
    c = randn(k, seed=400, dtype=torch.float64)
    total = 0.0
    for g in range(2):
        for u in range(v):
            if u == g:
                continue
            for i in range(n):
                p = [math.exp((float(t[g][i, j]) - float(c[j])) / tt) for j in range(k)]
                z = sum(math.exp(float(s[u][i, j]) / ts) for j in range(k))
                total += -sum(p[j] / sum(p) * math.log(math.exp(float(s[u][i, j]) / ts) / z)
                              for j in range(k)) / n
    assert close(dino_loss(s, t, c, ts, tt), total / (2 * v - 2), tol=1e-9)
    assert close(dino_loss_loop(s, t, c, ts, tt), total / (2 * v - 2), tol=1e-9)


def test_gradcheck_dino_margin_triplet_and_mae():
    s = [leaf(3, 4, seed=210 + i) for i in range(4)]
    t = [randn(3, 4, seed=220 + g, dtype=torch.float64) for g in range(2)]
    c = randn(1, 4, seed=230, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *x: dino_loss(list(x), t, c, 0.3, 0.1), tuple(s))
    # piecewise linear: at random points no hinge sits at its kink
    z1, z2 = leaf(4, 3, seed=240), leaf(4, 3, seed=241)
    assert torch.autograd.gradcheck(lambda a, b: margin_triplet(a, b, 0.5), (z1, z2))
    pred, target = leaf(2, 5, 4, seed=242), randn(2, 5, 4, seed=243, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.float64)
    for norm_pix in (False, True):
        assert torch.autograd.gradcheck(
            lambda p, norm_pix=norm_pix: mae_loss(p, target, mask, norm_pix), (pred,))


def test_other_losses_under_bf16_autocast_match_float32():
    s = [randn(6, 10, seed=250 + i) for i in range(4)]
    t, c = s[:2], randn(1, 10, seed=260)
    q, k, queue = randn(6, 16, seed=261), randn(6, 16, seed=262), randn(20, 16, seed=263)
    pred, target = randn(2, 8, 12, seed=264), randn(2, 8, 12, seed=265)
    mask = (randn(2, 8, seed=266) > 0).float()
    z, cc, w = randn(2, 4, 3, 6, seed=267), randn(2, 4, 3, 5, seed=268), randn(2, 6, 5, seed=269)

    def run(cast):
        return {
            "dino_loss": dino_loss([cast(x) for x in s], [cast(x) for x in t], cast(c)),
            "dino_loss_loop": dino_loss_loop([cast(x) for x in s], [cast(x) for x in t], cast(c)),
            "moco_loss": moco_loss(cast(q), cast(k), cast(queue)),
            "mae_loss": mae_loss(cast(pred), cast(target), mask, norm_pix=True),
            "cpc_loss": cpc_loss(cast(z), cast(cc), cast(w)),
        }

    reference = run(lambda x: x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same_inputs = run(lambda x: x)
        bf16_inputs = run(lambda x: x.to(torch.bfloat16))
    for name, value in reference.items():
        assert same_inputs[name].dtype == bf16_inputs[name].dtype == torch.float32, name
        torch.testing.assert_close(same_inputs[name], value, rtol=1e-6, atol=1e-6, msg=name)
        # only the rounding of the inputs to bfloat16 (8 bits of mantissa) remains
        torch.testing.assert_close(bf16_inputs[name], value, rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_small_temperature_and_large_inputs_stay_finite_and_exact(scale):
    # tau = 0.01: logits up to 100, exp(100) ~ 2.7e43 overflows float32 if exponentiated directly
    tau = 0.01
    z1, z2 = scale * randn(6, 4, seed=270), scale * randn(6, 4, seed=271)
    neg = scale * randn(5, 4, seed=272)
    for got, want in [(nt_xent(z1, z2, tau), nt_xent(z1.double(), z2.double(), tau)),
                      (nt_logistic(z1, z2, tau), nt_logistic(z1.double(), z2.double(), tau)),
                      (info_nce(z1, z2, neg, tau),
                       info_nce_by_hand(z1.double(), z2.double(), neg.double(), tau)),
                      (moco_loss(z1, z2, neg, tau), info_nce_by_hand(z1, z2, neg, tau))]:
        assert torch.isfinite(got)
        assert close(got, want, tol=1e-4)


def test_zero_embedding_has_cosine_zero_not_nan():
    # documented: an all-zero row has cosine 0 with everything (F.normalize's eps), so the
    # loss stays finite and equals the closed form with that row's similarities set to 0
    z1, z2 = orthogonal_pairs(n=3)
    z1[0] = 0.0
    tau = 0.5
    value = nt_xent(z1, z2, tau)
    # anchors z1[0] and z2[0] see their positive at cosine 0; the other 4 anchors as before
    lost = math.log(5)  # all 5 candidates of z1[0] at cosine 0
    partner_of_zero = -math.log(1 / (1 + 4 * math.exp(0.0)))  # z2[0]: positive 0, negatives 0
    kept = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 4))
    assert close(value, (lost + partner_of_zero + 4 * kept) / 6)


# ---------------------------------------------------------------------------------------------
# Inputs on two devices, margins, non-finite temperatures, MAE masks that are not 0/1
# ---------------------------------------------------------------------------------------------

M = torch.empty(4, 8, device="meta")  # another device that needs no GPU

DEVICE_CALLS = {
    "triplet_loss": lambda: triplet_loss(Z, Z, M),
    "nt_xent": lambda: nt_xent(Z, M),
    "nt_logistic": lambda: nt_logistic(Z, M),
    "margin_triplet": lambda: margin_triplet(Z, M),
    "info_nce negatives": lambda: info_nce(Z, Z, torch.empty(5, 8, device="meta")),
    "moco_loss queue": lambda: moco_loss(Z, Z, torch.empty(16, 8, device="meta")),
    "dino_loss center": lambda: dino_loss(S_OUT, T_OUT, torch.zeros(5, device="meta")),
    "mae_loss mask": lambda: mae_loss(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3),
                                      torch.ones(2, 4, device="meta")),
    "cpc_loss W": lambda: cpc_loss(*CPC_ZCW[:2], CPC_ZCW[2].to("meta")),
}


@pytest.mark.parametrize("name", list(DEVICE_CALLS))
def test_inputs_on_two_devices_are_a_one_line_error_naming_both(name):
    # they failed inside torch ("Tensor on device meta is not on the expected device cpu!"),
    # and info_nce with its negatives elsewhere even returned a number
    with pytest.raises(SSLKitError) as info:
        DEVICE_CALLS[name]()
    message = str(info.value)
    assert "\n" not in message and "is on cpu but" in message and "is on meta" in message
    assert ".to(" in message.rpartition(": ")[2]


@pytest.mark.parametrize("margin", [-0.1, math.nan, math.inf])
def test_triplet_margins_below_zero_or_not_finite_are_errors(margin):
    # A negative margin is met by a collapsed embedding (every distance 0 gives loss 0), so
    # nothing is learnt; NaN gave a NaN loss. Both returned a number before.
    for call, fix in ((lambda: triplet_loss(Z, Z, Z, margin), "margin=1.0"),
                      (lambda: margin_triplet(Z, Z, margin=margin), "margin=0.5")):
        with pytest.raises(SSLKitError, match="margin must be >= 0 and finite") as info:
            call()
        assert "\n" not in str(info.value) and f"use e.g. {fix}" in str(info.value)


def test_margin_zero_is_allowed_as_notebook_02_uses_it():
    same = torch.ones(4, 8)
    assert float(triplet_loss(same, same, same, 0.0)) == 0.0
    assert float(margin_triplet(same, same, margin=0.0)) == 0.0


@pytest.mark.parametrize("call", [
    lambda: nt_xent(Z, Z, temperature=math.inf),
    lambda: info_nce(Z, Z, Z, temperature=math.inf),
    lambda: moco_loss(Z, Z, Z, temperature=math.inf),
    lambda: dino_loss(S_OUT, T_OUT, CENTER, math.inf, 0.04),
], ids=["nt_xent", "info_nce", "moco_loss", "dino_loss"])
def test_an_infinite_temperature_is_an_error_not_a_constant_loss(call):
    # every logit divided by inf is 0: the loss was log(candidates) whatever the embeddings
    with pytest.raises(SSLKitError, match="must be > 0 and finite"):
        call()


def test_dino_temperature_errors_name_the_option_for_python_and_the_command_line():
    for args, name, value in (((0.0, 0.04), "student_temp", 0.1),
                              ((0.1, -1.0), "teacher_temp", 0.04)):
        with pytest.raises(SSLKitError) as info:
            dino_loss(S_OUT, T_OUT, CENTER, *args)
        assert f"use DINO's {name}={value} (--option {name}={value} on the command line" in str(
            info.value)


MAE_PRED, MAE_TARGET = randn(2, 5, 3, seed=1), randn(2, 5, 3, seed=2)
MAE_MASK = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0, 1.0]])


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, math.nan])
def test_mae_mask_values_other_than_0_and_1_are_an_error(bad):
    # the contract defines the mask as 1 = masked, 0 = visible; a 0.5 was silently a weight
    mask = MAE_MASK.clone()
    mask[0, 1] = bad
    with pytest.raises(SSLKitError, match="mask must hold only 0 .visible. and 1 .masked.") as e:
        mae_loss(MAE_PRED, MAE_TARGET, mask)
    assert "\n" not in str(e.value) and "random_masking" in str(e.value)


def test_mae_mask_may_be_bool_or_integer_and_all_zero_gives_zero():
    expected = mae_loss(MAE_PRED, MAE_TARGET, MAE_MASK, True)
    assert torch.equal(mae_loss(MAE_PRED, MAE_TARGET, MAE_MASK.bool(), True), expected)
    assert torch.equal(mae_loss(MAE_PRED, MAE_TARGET, MAE_MASK.long(), True), expected)
    assert float(mae_loss(MAE_PRED, MAE_TARGET, torch.zeros(2, 5))) == 0.0


def test_mae_mask_values_are_not_read_off_the_cpu():
    # meta tensors raise on any read of a value: the check must not make a GPU step wait
    pred, target, mask = (t.to("meta") for t in (MAE_PRED, MAE_TARGET, MAE_MASK))
    assert mae_loss(pred, target, mask).device.type == "meta"


def _cpc_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(4)
    return (torch.randn(2, 4, 3, 5, generator=g, dtype=dtype),
            torch.randn(2, 4, 3, 6, generator=g, dtype=dtype),
            torch.randn(2, 5, 6, generator=g, dtype=dtype))


LIBRARY_MISTAKES = {  # what a script calling the losses directly gets wrong -> the message
    "cosine 1-D rows": (lambda: cosine_similarity_matrix(torch.randn(8), torch.randn(8)),
                        "rows (N, D), got torch.float32 of shape (8,)"),
    "cosine widths": (lambda: cosine_similarity_matrix(torch.randn(2, 3), torch.randn(2, 4)),
                      "same width D and dtype"),
    "cosine dtypes": (lambda: cosine_similarity_matrix(torch.randn(2, 3),
                                                       torch.randn(2, 3, dtype=torch.float64)),
                      "same width D and dtype"),
    "cosine integers": (lambda: cosine_similarity_matrix(torch.ones(2, 3, dtype=torch.long),
                                                         torch.randn(2, 3)), "torch.int64"),
    "cosine a list": (lambda: cosine_similarity_matrix([[1.0, 0.0]], torch.randn(2, 2)),
                      "got list"),
    "dino empty batch": (lambda: dino_loss([torch.zeros(0, 5)] * 3, [torch.zeros(0, 5)] * 2,
                                           CENTER), "with N, K >= 1"),
    "dino integer logits": (lambda: dino_loss([t.long() for t in S_OUT], T_OUT, CENTER),
                            "student_out[0] of torch.int64"),
    "dino integer center": (lambda: dino_loss(S_OUT, T_OUT, CENTER.long()), "tensor of floats"),
    "cpc mixed dtypes": (lambda: cpc_loss(*_cpc_inputs()[:2], _cpc_inputs(torch.float64)[2]),
                         "share one dtype"),
    "cpc candidates a list": (lambda: cpc_logits(*_cpc_inputs(), candidates=[[0.0] * 5]),
                              "got list"),
    "temperature a string": (lambda: nt_xent(randn(4, 3), randn(4, 3), "0.5"),
                             "temperature must be a number (got str '0.5')"),
    "temperature None": (lambda: info_nce(randn(4, 3), randn(4, 3), randn(6, 3), None),
                         "temperature must be a number (got NoneType"),
    "margin None": (lambda: triplet_loss(randn(4, 3), randn(4, 3), randn(4, 3), None),
                    "margin must be a number"),
}


@pytest.mark.parametrize("case", LIBRARY_MISTAKES)
def test_mistakes_of_a_direct_call_are_one_line_errors(case):
    call, expected = LIBRARY_MISTAKES[case]
    assert expected in one_line_error(call)


def test_cosine_similarity_matrix_is_n_by_m_cosines():
    a, b = randn(3, 4, seed=5), randn(5, 4, seed=6)
    expected = torch.tensor([[float(F.cosine_similarity(x, y, dim=0)) for y in b] for x in a])
    torch.testing.assert_close(cosine_similarity_matrix(a, b), expected)
