"""sslkit.evaluate's torch pieces: top-k accuracy against a plain loop and its closed cases, the
linear-probe step against the cross-entropy gradient of a linear layer worked out by hand, and
the probe loop on linearly separable features."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.evaluate import Standardize, linear_probe_step, topk_accuracy, train_linear_probe


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def topk_plain(logits, labels, k):
    """Rank the classes of each row by (-logit, class index) in Python and look for the label."""
    hits = 0
    for row, y in zip(logits.tolist(), labels.tolist()):
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))
        hits += y in ranked[:k]
    return hits / len(labels)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_topk_matches_a_plain_loop(k):
    logits = torch.randn(50, 7, generator=gen(1))
    labels = torch.randint(0, 7, (50,), generator=gen(2))
    assert topk_accuracy(logits, labels, k) == pytest.approx(topk_plain(logits, labels, k))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_with_ties_matches_the_plain_loop(k):
    # logits on a coarse grid: many equal values in every row
    logits = torch.randint(0, 3, (80, 6), generator=gen(3)).float()
    labels = torch.randint(0, 6, (80,), generator=gen(4))
    assert topk_accuracy(logits, labels, k) == pytest.approx(topk_plain(logits, labels, k))


def test_top1_is_argmax_accuracy_even_with_ties():
    logits = torch.randint(0, 2, (100, 5), generator=gen(5)).float()
    labels = torch.randint(0, 5, (100,), generator=gen(6))
    expected = float((logits.argmax(dim=1) == labels).float().mean())
    assert topk_accuracy(logits, labels, 1) == pytest.approx(expected)


def test_topk_closed_cases():
    logits = torch.randn(30, 4, generator=gen(7))
    labels = torch.randint(0, 4, (30,), generator=gen(8))
    assert topk_accuracy(logits, labels, 4) == 1.0  # every class is in the top C
    assert topk_accuracy(logits, labels, 10) == 1.0
    assert topk_accuracy(logits, logits.argmax(1), 1) == 1.0
    assert topk_accuracy(logits, logits.argmin(1), 3) == 0.0  # the smallest is ranked last
    # all logits equal: the ranking is by index, so class c is in the top k iff c < k
    flat, every = torch.zeros(4, 4), torch.arange(4)
    assert [topk_accuracy(flat, every, k) for k in (1, 2, 3)] == [0.25, 0.5, 0.75]
    # monotone in k
    accs = [topk_accuracy(logits, labels, k) for k in range(1, 5)]
    assert accs == sorted(accs)


def test_topk_bad_input():
    with pytest.raises(SSLKitError, match="logits"):
        topk_accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(SSLKitError, match="k=0"):
        topk_accuracy(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 0)


def test_topk_of_nan_logits_is_an_error_not_full_marks():
    """A NaN logit is neither above nor equal to any other, so the label ranked first and a
    diverged fine-tune scored 100 %. -inf (a masked class) is still a valid logit."""
    logits = torch.tensor([[float("nan"), 1.0], [0.0, 2.0]])
    with pytest.raises(SSLKitError, match="contain NaN"):
        topk_accuracy(logits, torch.tensor([0, 0]))
    masked = torch.tensor([[float("-inf"), 1.0], [0.0, float("-inf")]])
    assert topk_accuracy(masked, torch.tensor([1, 0])) == 1.0


def test_probe_on_features_that_carry_a_graph_trains():
    """Features computed with gradient (enc(x) outside no_grad, as in a notebook) kept their
    graph in the standardisation; the second epoch backpropagated through it again."""
    enc = nn.Linear(4, 3)
    x, y = torch.randn(12, 4, generator=gen(20)), torch.arange(12) % 3
    probe = train_linear_probe(enc(x), y, epochs=3)
    plain = train_linear_probe(enc(x).detach(), y, epochs=3)
    for a, b in zip(probe.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_linear_probe_step_is_one_gradient_step_of_cross_entropy():
    torch.manual_seed(0)
    head = nn.Linear(5, 3)
    x = torch.randn(8, 5, generator=gen(9))
    y = torch.randint(0, 3, (8,), generator=gen(10))
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    lr = 0.3
    loss = linear_probe_step(head, torch.optim.SGD(head.parameters(), lr=lr), x, y)
    # by hand: p = softmax(x W^T + b); L = mean_n -log p[n, y_n];
    # dL/dlogits = (p - onehot(y)) / N; dL/dW = that^T x; dL/db = its column sums
    logits = x @ w.T + b  # (8, 3)
    p = torch.exp(logits - logits.logsumexp(dim=1, keepdim=True))
    expected_loss = float(-torch.log(p[torch.arange(8), y]).mean())
    g = (p - torch.eye(3)[y]) / 8  # (8, 3)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected_loss, abs=1e-6)
    assert torch.allclose(head.weight, w - lr * g.T @ x, atol=1e-6)
    assert torch.allclose(head.bias, b - lr * g.sum(0), atol=1e-6)


def test_linear_probe_step_clears_old_gradients():
    torch.manual_seed(0)
    head = nn.Linear(4, 2)
    twin = copy.deepcopy(head)
    x, y = torch.randn(6, 4, generator=gen(11)), torch.tensor([0, 1, 0, 1, 1, 0])
    head(x).sum().backward()  # a stale gradient the step must not add to its own
    linear_probe_step(head, torch.optim.SGD(head.parameters(), lr=0.1), x, y)
    linear_probe_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), x, y)
    assert torch.allclose(head.weight, twin.weight)


def separable(n_per_class=40, classes=4, dim=6, seed=0, noise_seed=1):
    """Tight clusters (std 0.3) around random centres far apart (std 6): linearly separable."""
    centres = torch.randn(classes, dim, generator=gen(seed)) * 6
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=gen(noise_seed)) * 0.3
    return x, y


def test_probe_loop_separates_separable_features():
    x, y = separable()
    x_test, y_test = separable(noise_seed=99)  # new points of the same clusters
    probe = train_linear_probe(x, y, epochs=30, batch_size=32)
    with torch.no_grad():
        assert topk_accuracy(probe(x), y, 1) == 1.0
        assert topk_accuracy(probe(x_test), y_test, 1) == 1.0
        assert probe(x).shape == (len(x), 4)


def test_probe_loop_trains_under_no_grad():
    x, y = separable(seed=5, noise_seed=6)
    expected = train_linear_probe(x, y, epochs=3, batch_size=16)
    with torch.no_grad():
        got = train_linear_probe(x, y, epochs=3, batch_size=16)
    assert torch.equal(got[1].weight, expected[1].weight)
    assert bool(got[1].weight.abs().max() > 0)


def test_probe_loop_is_deterministic_and_invariant_to_feature_scale():
    x, y = separable(seed=3, noise_seed=4)
    a = train_linear_probe(x, y, epochs=5, batch_size=16, seed=1)
    b = train_linear_probe(x, y, epochs=5, batch_size=16, seed=1)
    c = train_linear_probe(x * 100 + 7, y, epochs=5, batch_size=16, seed=1)
    assert torch.equal(a[1].weight, b[1].weight)
    # standardisation removes any affine change of scale: the same weights up to rounding
    assert torch.allclose(a[1].weight, c[1].weight, atol=1e-4)


def test_standardize_uses_training_statistics():
    x = torch.randn(100, 3, generator=gen(12)) * torch.tensor([1.0, 5.0, 0.1]) + 2
    z = Standardize(x)(x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(3), atol=1e-4)


def test_a_feature_constant_in_training_cannot_swamp_the_test_logits():
    """A feature equal to 5 on every training image was divided by std + 1e-6 = 1e-6, so a
    test image where it is 6 got 1e6 on it: whatever the probe's weight there, its logits could
    be swamped. Now such a feature is only centred; the informative one decides."""
    x, y = separable(seed=3, noise_seed=4)
    constant = torch.full((len(x), 1), 5.0)
    z = Standardize(torch.cat([x, constant], dim=1))(torch.cat([x, constant + 1], dim=1))
    assert torch.equal(z[:, -1], torch.ones(len(x)))  # (6 - 5) / 1
    assert torch.allclose(z[:, :-1], Standardize(x)(x))  # the other features as before
    probe = train_linear_probe(torch.cat([x, constant], dim=1), y, epochs=5, batch_size=16)
    plain = train_linear_probe(x, y, epochs=5, batch_size=16)
    shifted = probe(torch.cat([x, constant + 1], dim=1))
    assert torch.equal(shifted.argmax(1), plain(x).argmax(1))


def test_the_probe_takes_features_of_any_float_dtype():
    """Fit in float32, it failed on float64 features with "mat1 and mat2 must have the same
    dtype"; it casts them to its own dtype."""
    train_f = torch.randn(20, 3, generator=gen(7))
    train_y = (train_f[:, 0] > 0).long()
    probe = train_linear_probe(train_f, train_y, epochs=3)
    with torch.no_grad():
        torch.testing.assert_close(probe(train_f.double()), probe(train_f))
        torch.testing.assert_close(probe(train_f.half()), probe(train_f.half().float()))


def test_probe_bad_input():
    with pytest.raises(SSLKitError, match="features"):
        train_linear_probe(torch.zeros(5, 2), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("call,expected", [
    (lambda: topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), "no rows"),
    (lambda: topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 3])), "outside 0..2"),
    (lambda: topk_accuracy(torch.zeros(2, 3), torch.tensor([0, -1])), "outside"),
    (lambda: train_linear_probe(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)), "N >= 2"),
    (lambda: train_linear_probe(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), num_classes=3),
     "outside 0..2"),
    (lambda: train_linear_probe(torch.full((4, 2), float("nan")), torch.tensor([0, 1, 0, 1])),
     "NaN"),
    (lambda: train_linear_probe(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), batch_size=0),
     "batch_size must be a whole number"),  # was range()'s "arg 3 must not be zero"
])
def test_bad_input_is_a_one_line_error(call, expected):
    with pytest.raises(SSLKitError, match=expected) as err:
        call()
    assert "\n" not in str(err.value)


def test_probe_loop_is_trained_on_the_training_statistics_only():
    """The probe's Standardize holds the training mean and std; shifting the test features
    moves the logits (the statistics are not recomputed on the test set)."""
    x, y = separable(seed=7, noise_seed=8)
    probe = train_linear_probe(x, y, epochs=2, batch_size=32)
    torch.testing.assert_close(probe[0].mean, x.mean(0))
    torch.testing.assert_close(probe[0].std, x.std(0) + 1e-6)
    with torch.no_grad():
        logits = probe(x[:10])
        torch.testing.assert_close(logits, probe[1]((x[:10] - x.mean(0)) / (x.std(0) + 1e-6)))
        assert not torch.allclose(probe(x[:10] + 5), logits)


def test_probe_loop_leaves_the_global_rng_alone():
    x, y = separable(seed=9, noise_seed=10)
    state = torch.random.get_rng_state()
    train_linear_probe(x, y, epochs=1)
    assert torch.equal(torch.random.get_rng_state(), state)
