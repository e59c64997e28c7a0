"""sslkit.evaluate: the weighted kNN against a plain loop written here, its tie and k rules and
invariances; the linear probe on separable features; feature extraction."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.evaluate import (
    extract_features,
    knn_accuracy,
    knn_predict,
    labels_per_class_subset,
    linear_probe,
    pixels,
    tsne,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def knn_plain(train_f, train_y, test_f, k, temperature, num_classes):
    """Weighted kNN, one test point at a time, in plain Python floats."""
    train = [[float(v) for v in row] for row in train_f]
    labels = [int(y) for y in train_y]

    def cosine(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    preds = []
    for row in test_f:
        q = [float(v) for v in row]
        sims = sorted(((cosine(q, t), i) for i, t in enumerate(train)), reverse=True)
        votes = [0.0] * num_classes
        for sim, i in sims[: min(k, len(train))]:
            votes[labels[i]] += math.exp(sim / temperature)
        best = max(votes)
        preds.append(votes.index(best))  # first maximum: ties to the lower class
    return torch.tensor(preds)


@pytest.mark.parametrize("k,temperature",
                         [(1, 0.1), (5, 0.1), (20, 0.5), (60, 0.07), (10, 0.01), (10, 0.005)])
def test_knn_matches_a_plain_loop(k, temperature):
    train_f = torch.randn(60, 6, generator=gen(1))
    train_y = torch.randint(0, 4, (60,), generator=gen(2))
    test_f = torch.randn(25, 6, generator=gen(3))
    expected = knn_plain(train_f, train_y, test_f, k, temperature, 4)
    got = knn_predict(train_f, train_y, test_f, k=k, temperature=temperature)
    assert torch.equal(got, expected)
    # the chunked path gives the same answer
    assert torch.equal(knn_predict(train_f, train_y, test_f, k, temperature, chunk_size=7), got)


def test_knn_k1_is_the_nearest_neighbour_label():
    train_f = torch.randn(40, 5, generator=gen(4))
    train_y = torch.arange(40) % 7
    test_f = torch.randn(30, 5, generator=gen(5))
    cos = torch.nn.functional.cosine_similarity(test_f[:, None], train_f[None], dim=2)
    assert torch.equal(knn_predict(train_f, train_y, test_f, k=1), train_y[cos.argmax(dim=1)])


def clusters(n_per_class: int, classes: int, dim: int, seed: int, spread: float = 0.05):
    """Tight clusters around orthogonal directions: cosine-separable by a wide margin."""
    centres = torch.eye(dim)[:classes] * 5
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=gen(seed))
    return x, y


def test_knn_perfect_on_well_separated_clusters():
    train_f, train_y = clusters(20, 5, 8, seed=6)
    test_f, test_y = clusters(10, 5, 8, seed=7)
    assert torch.equal(knn_predict(train_f, train_y, test_f, k=10), test_y)
    assert knn_accuracy(train_f, train_y, test_f, test_y, k=10) == 1.0


def test_knn_tie_goes_to_the_lower_class():
    # The test point is equally similar to one example of class 3 and one of class 1.
    train_f = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 0.0]])
    train_y = torch.tensor([3, 1, 0])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train_f, train_y, test, k=2).tolist() == [1]
    train_y_swapped = torch.tensor([1, 3, 0])
    assert knn_predict(train_f, train_y_swapped, test, k=2).tolist() == [1]


def test_knn_k_larger_than_n_is_capped():
    train_f = torch.randn(12, 4, generator=gen(8))
    train_y = torch.randint(0, 3, (12,), generator=gen(9))
    test_f = torch.randn(9, 4, generator=gen(10))
    assert torch.equal(knn_predict(train_f, train_y, test_f, k=1000),
                       knn_predict(train_f, train_y, test_f, k=12))
    assert torch.equal(knn_predict(train_f, train_y, test_f, k=1000),
                       knn_plain(train_f, train_y, test_f, 12, 0.1, 3))


def test_knn_invariant_to_feature_scale_and_label_count():
    train_f = torch.randn(50, 6, generator=gen(11))
    train_y = torch.randint(0, 5, (50,), generator=gen(12))
    test_f = torch.randn(20, 6, generator=gen(13))
    base = knn_predict(train_f, train_y, test_f, k=7)
    # Powers of two scale exactly in floating point, so the cosines are bit-identical.
    row_scale = 2.0 ** torch.randint(-4, 5, (50, 1), generator=gen(14)).float()
    assert torch.equal(knn_predict(train_f * row_scale, train_y, test_f * 8, k=7), base)
    # Declaring extra (empty) classes changes nothing.
    assert torch.equal(knn_predict(train_f, train_y, test_f, k=7, num_classes=9), base)


def test_knn_bad_shapes_are_one_line_errors():
    with pytest.raises(SSLKitError) as err:
        knn_predict(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(2, 5))
    assert "\n" not in str(err.value)
    with pytest.raises(SSLKitError):
        knn_predict(torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long), torch.zeros(2, 6))


@pytest.mark.parametrize("call,expected", [
    (lambda f, y: knn_predict(f, y, f, k=0), "k must be a whole number"),  # once: no votes,
    # every point class 0; a float or bool k was a TypeError deep in torch.topk
    (lambda f, y: knn_predict(f, y, f, k=2.5), "got 2.5"),
    (lambda f, y: knn_accuracy(f, y, f, y, k=True), "got True"),
    (lambda f, y: labels_per_class_subset(y, 2.5), "per_class must be a whole number"),
    (lambda f, y: knn_predict(f, y, f, temperature=0.0), "temperature > 0"),  # once: NaN votes
    (lambda f, y: knn_predict(f, y[:5], f), "6 train features but 5 labels"),
    (lambda f, y: linear_probe(f, y, f, y, labels_per_class=0), "at least 1"),
])
def test_knn_and_probe_settings_out_of_range_are_one_line_errors(call, expected):
    f, y = torch.randn(6, 3, generator=gen(3)), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(SSLKitError, match=expected) as err:
        call(f, y)
    assert "\n" not in str(err.value)


def test_tsne_of_one_feature_is_a_one_line_error():
    with pytest.raises(SSLKitError, match="at least 2 of them") as err:  # was sklearn's error
        tsne(torch.randn(50, 1, generator=gen(5)))
    assert "\n" not in str(err.value)


def test_labels_per_class_subset_picks_exactly_that_many():
    labels = torch.tensor([0] * 30 + [1] * 12 + [2] * 3 + [3] * 20)
    idx = labels_per_class_subset(labels, 10, seed=1)
    counts = np.bincount(labels.numpy()[idx], minlength=4)
    assert counts.tolist() == [10, 10, 3, 10]  # a class with fewer keeps all it has
    assert len(set(idx.tolist())) == len(idx) and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, labels_per_class_subset(labels, 10, seed=1))
    assert not np.array_equal(idx, labels_per_class_subset(labels, 10, seed=2))


def test_linear_probe_separable_and_label_fraction():
    # Linearly separable but not by cosine: class = sign of the first coordinate.
    x = torch.randn(200, 5, generator=gen(15))
    x[:, 0] += torch.where(x[:, 0] >= 0, 1.0, -1.0)
    y = (x[:, 0] > 0).long()
    assert linear_probe(x[:150], y[:150], x[150:], y[150:]) == 1.0
    assert linear_probe(x[:150], y[:150], x[150:], y[150:], labels_per_class=5) >= 0.95
    # Random labels cannot be predicted: chance level.
    y_rand = torch.randint(0, 2, (200,), generator=gen(16))
    assert linear_probe(x[:150], y_rand[:150], x[150:], y_rand[150:]) < 0.8


def test_pixels_features():
    images = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8, generator=gen(17))
    feats = pixels(images)
    assert feats.shape == (4, 90) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.view(4, 3, 5, 6) * 255, images.float())


class Recorder(nn.Module):
    """A tiny encoder with BatchNorm (behaves differently in train and eval mode)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                 nn.Linear(144, 3))
        self.seen = []

    def forward(self, x):
        self.seen.append((x.dtype, float(x.min()), float(x.max()), len(x)))
        return self.net(x)


@pytest.mark.parametrize("training", [True, False])
def test_extract_features_restores_mode_and_matches_eval_forward(training):
    torch.manual_seed(0)
    enc = Recorder()
    enc.net[1].running_mean.fill_(0.3)  # non-trivial running statistics
    enc.net[1].running_var.fill_(2.0)
    enc.train(training)
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8, generator=gen(18))
    bn_before = {k: v.clone() for k, v in enc.state_dict().items()}
    feats = extract_features(enc, images, batch_size=4)
    assert enc.training is training and enc.net[1].training is training
    for key, value in enc.state_dict().items():  # eval mode: running stats untouched
        assert torch.equal(value, bn_before[key]), key
    assert [s[3] for s in enc.seen] == [4, 4, 2]  # batched as asked
    assert all(s[0] == torch.float32 and 0 <= s[1] and s[2] <= 1 for s in enc.seen)
    enc.eval()
    with torch.no_grad():
        direct = enc(images.float() / 255)
    assert feats.shape == (10, 3) and feats.dtype == torch.float32 and not feats.requires_grad
    torch.testing.assert_close(feats, direct)


def test_extract_features_can_leave_the_features_on_the_encoders_device():
    """to_cpu=False (the kNN monitor's, so that it votes on the GPU) keeps the features where
    the encoder ran; the meta device stands in for a GPU: nothing can be copied out of it."""
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8, generator=gen(3))
    on_cpu = extract_features(enc, images, batch_size=4)
    torch.testing.assert_close(extract_features(enc, images, batch_size=4, to_cpu=False), on_cpu)
    kept = extract_features(enc.to("meta"), images, batch_size=4, to_cpu=False)
    assert kept.device.type == "meta" and kept.shape == (10, 3) and kept.dtype == torch.float32


def test_knn_small_temperature_does_not_overflow_into_ties():
    # exp(sim / 0.01) overflows float32 for sim > 0.89: both near neighbours would vote inf and
    # the tie would go to class 0, though the nearest one (class 1) is clearly closer.
    train_f = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]])
    train_y = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.02]])
    assert knn_predict(train_f, train_y, test, k=3, temperature=0.01).tolist() == [1]
    assert torch.equal(knn_predict(train_f, train_y, test, k=3, temperature=0.01),
                       knn_plain(train_f, train_y, test, 3, 0.01, 2))


def test_knn_prediction_is_per_test_point():
    """Each prediction depends on its own test point only: splitting or permuting the test set
    (and the chunks) permutes the answers, and the train set's order does not matter."""
    train_f = torch.randn(70, 5, generator=gen(30))
    train_y = torch.randint(0, 4, (70,), generator=gen(31))
    test_f = torch.randn(33, 5, generator=gen(32))
    base = knn_predict(train_f, train_y, test_f, k=9)
    perm = torch.randperm(33, generator=gen(33))
    assert torch.equal(knn_predict(train_f, train_y, test_f[perm], k=9, chunk_size=5), base[perm])
    one_by_one = torch.cat([knn_predict(train_f, train_y, t[None], k=9) for t in test_f])
    assert torch.equal(one_by_one, base)
    order = torch.randperm(70, generator=gen(34))
    assert torch.equal(knn_predict(train_f[order], train_y[order], test_f, k=9), base)


@pytest.mark.parametrize("call,expected", [
    (lambda f, y: knn_predict(f, y, f[:0]), "0 test features"),
    (lambda f, y: knn_predict(f[:0], y[:0], f), "0 train"),
    (lambda f, y: knn_predict(f, y, f, num_classes=2), "outside 0..1"),  # was an index error
    (lambda f, y: knn_predict(f, y - 1, f), "outside"),
    (lambda f, y: knn_predict(f, y.float(), f), "integer class indices"),
    (lambda f, y: knn_predict(f, y[:, None], f), "labels of shape"),
    (lambda f, y: knn_predict(f.index_fill(0, torch.tensor([2]), float("nan")), y, f), "NaN"),
    (lambda f, y: knn_predict(f, y, f * float("inf")), "test features contain NaN"),
    (lambda f, y: knn_accuracy(f, y, f, y[:, None]), "test labels of shape"),  # was (6, 6)
    (lambda f, y: knn_accuracy(f, y, f, y[:4]), "6 test features"),
    (lambda f, y: linear_probe(f, y[:5], f, y), "6 feature rows but labels of shape"),
    (lambda f, y: linear_probe(f, y, f[:, :2], y), r"\(6, 3\) and \(6, 2\)"),
    (lambda f, y: linear_probe(f, y * 0, f, y), "at least 2 classes"),
    (lambda f, y: linear_probe(f * float("nan"), y, f, y), "NaN"),
    (lambda f, y: linear_probe(f, y, f[:0], y[:0]), "0 test features"),
    (lambda f, y: labels_per_class_subset(y, 0), "at least 1"),
    (lambda f, y: labels_per_class_subset(y[:, None], 2), "labels \\(N,\\)"),
    (lambda f, y: tsne(f[:, :, None]), "flatten"),
    (lambda f, y: tsne(f.index_fill(0, torch.tensor([0]), float("nan"))), "NaN"),
    (lambda f, y: pixels(torch.zeros(2, 1, 3, 3) + 255.0), "0, 255"),
    (lambda f, y: pixels(torch.zeros(2, 1, 3, 3, dtype=torch.int64)), "uint8"),
    (lambda f, y: pixels(torch.zeros(0, 1, 3, 3, dtype=torch.uint8)), "non-empty"),  # reshape
    (lambda f, y: knn_predict(f, y, f, chunk_size=2.5), "chunk_size must be a whole"),  # range
    (lambda f, y: extract_features(nn.Flatten(), torch.zeros(4, 1, 2, 2), batch_size=2.5),
     "batch_size must be a whole"),  # a TypeError in range()
    (lambda f, y: extract_features(nn.Linear(4, 2), torch.zeros(4, 1, 2, 2), device="meta"),
     "the encoder is on cpu: move it first"),  # a device mismatch deep in the encoder
])
def test_bad_evaluation_input_is_a_one_line_error(call, expected):
    f, y = torch.randn(6, 3, generator=gen(3)), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(SSLKitError, match=expected) as err:
        call(f, y)
    assert "\n" not in str(err.value)


def test_linear_probe_never_looks_at_the_test_set_before_scoring():
    """With training statistics only, a test point's prediction is its own business: the
    accuracy on two halves, weighted by size, is the accuracy on the whole, and shifting the
    test set can change it (standardising with test statistics would undo the shift)."""
    x = torch.randn(160, 4, generator=gen(20))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    train_f, train_y, test_f, test_y = x[:100], y[:100], x[100:], y[100:]
    whole = linear_probe(train_f, train_y, test_f, test_y)
    a = linear_probe(train_f, train_y, test_f[:25], test_y[:25])
    b = linear_probe(train_f, train_y, test_f[25:], test_y[25:])
    assert whole == pytest.approx((25 * a + 35 * b) / 60)
    shifted = test_f + torch.tensor([3.0, 0.0, 0.0, 0.0])  # everything moves to class 1
    assert linear_probe(train_f, train_y, shifted, test_y) == pytest.approx(
        float(test_y.float().mean()))


def test_linear_probe_keeps_labels_aligned_with_features():
    """Features that spell out their label: any misalignment of rows and labels after the
    per-class subset (or a shuffle) would fall to chance."""
    y = torch.arange(5).repeat(30)[torch.randperm(150, generator=gen(21))]
    x = torch.eye(5)[y] * 3 + 0.1 * torch.randn(150, 5, generator=gen(22))
    for per_class in (None, 1, 3):
        assert linear_probe(x[:100], y[:100], x[100:], y[100:], labels_per_class=per_class) == 1.0
    order = torch.randperm(100, generator=gen(23))
    assert linear_probe(x[order], y[order], x[100:], y[100:]) == linear_probe(
        x[:100], y[:100], x[100:], y[100:])


def test_labels_per_class_subset_takes_arrays_and_matches_the_tensor_draw():
    labels = torch.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1, 0])
    idx = labels_per_class_subset(labels, 2, seed=3)
    assert np.array_equal(labels_per_class_subset(labels.numpy(), 2, seed=3), idx)
    assert np.array_equal(labels_per_class_subset(labels.tolist(), 2, seed=3), idx)


def test_tsne_shape_and_seed():
    f = torch.randn(12, 5, generator=gen(24))
    emb = tsne(f, seed=1)
    assert emb.shape == (12, 2) and np.isfinite(emb).all()
    assert np.array_equal(emb, tsne(f, seed=1))


def test_float_images_in_unit_range_give_the_uint8_features():
    """uint8 in [0, 255] and floats in [0, 1] are the same images, as for the training views;
    a float image used to be divided by 255 a second time."""
    torch.manual_seed(0)
    enc = Recorder().eval()
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=gen(25))
    as_float = images.float() / 255
    torch.testing.assert_close(extract_features(enc, as_float), extract_features(enc, images))
    assert all(s[2] > 0.5 for s in enc.seen)  # the encoder saw [0, 1], not [0, 1/255]
    torch.testing.assert_close(pixels(as_float), pixels(images))
    with pytest.raises(SSLKitError, match="0, 255"):
        extract_features(enc, images.float())  # 0..255 floats: a missing / 255


def test_extract_features_runs_without_gradients_and_restores_mode_on_error():
    torch.manual_seed(0)
    enc = Recorder().train()
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=gen(26))
    with torch.enable_grad():
        feats = extract_features(enc, images)
    assert not feats.requires_grad and all(p.grad is None for p in enc.parameters())

    class Broken(Recorder):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(broken, images)
    assert broken.training and broken.net[1].training  # not left in eval mode


@pytest.mark.parametrize("images,expected", [
    (torch.zeros(0, 1, 8, 8, dtype=torch.uint8), "non-empty"),
    (torch.zeros(3, 1, 8, 8, dtype=torch.uint8), "not features"),
])
def test_extract_features_bad_input(images, expected):
    encoder = Recorder()
    if expected == "not features":  # the conv body without its pooling: a feature map
        encoder = nn.Conv2d(1, 2, 3)
    with pytest.raises(SSLKitError, match=expected) as err:
        extract_features(encoder, images)
    assert "\n" not in str(err.value)


def test_knn_inside_autocast_votes_in_float32():
    """Under autocast the similarities became bfloat16 (spacing 2^-8 near 1) and the float32
    vote tensor refused them (scatter dtype error). Cosines 0.9990 (class 0) and 0.9995 (class
    1) are one bfloat16 value: a tie, given to class 0; in float32 class 1 has the larger vote."""
    angles = torch.tensor([math.acos(0.9990), math.acos(0.9995), 2.0])
    train_f = torch.stack([angles.cos(), angles.sin()], dim=1)  # (3, 2) unit rows
    train_y = torch.tensor([0, 1, 0])
    test = torch.tensor([[1.0, 0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = knn_predict(train_f, train_y, test, k=2)
    assert got.tolist() == [1]
    assert torch.equal(got, knn_plain(train_f, train_y, test, 2, 0.1, 2))
    train_f, train_y = torch.randn(60, 6, generator=gen(40)), torch.arange(60) % 4
    test_f = torch.randn(25, 6, generator=gen(41))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = knn_predict(train_f, train_y, test_f, k=10, chunk_size=7)
    assert torch.equal(got, knn_plain(train_f, train_y, test_f, 10, 0.1, 4))


def test_tsne_of_identical_points_is_a_one_line_error():
    """A collapsed encoder gives one feature vector for every image: scikit-learn's PCA start
    divided by a zero spread and the NaNs crashed the process (a dead notebook kernel)."""
    with pytest.raises(SSLKitError, match="identical") as err:
        tsne(torch.full((20, 4), 0.5))
    assert "\n" not in str(err.value)


def test_extract_features_runs_an_encoder_of_another_dtype():
    """A .double() or .half() encoder got float32 images (a dtype error deep in the layer); it
    computes the same map W x + b, in its own precision, returned as float32."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 3)
    images = torch.randint(0, 256, (7, 1, 4, 4), dtype=torch.uint8, generator=gen(42))
    x = images.double().reshape(7, 16) / 255
    expected = x @ linear.weight.double().T + linear.bias.double()  # (7, 3) in float64
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-6), (torch.bfloat16, 5e-2)):
        enc = nn.Sequential(nn.Flatten(), copy.deepcopy(linear)).to(dtype)
        feats = extract_features(enc, images, batch_size=3)
        assert feats.dtype == torch.float32 and feats.shape == (7, 3)
        torch.testing.assert_close(feats.double(), expected, atol=tol, rtol=tol)


def test_extract_features_restores_the_mode_of_every_module():
    """A part kept in eval mode on purpose (frozen BatchNorm inside a training encoder) was put
    back into training mode with the rest, and its running statistics moved from then on."""
    torch.manual_seed(0)
    enc = Recorder().train()
    enc.net[1].eval()  # frozen BatchNorm
    before = {name: m.training for name, m in enc.named_modules()}
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=gen(43))
    extract_features(enc, images)
    assert {name: m.training for name, m in enc.named_modules()} == before


@pytest.mark.parametrize("call,expected", [
    # NumPy arrays (e.g. from scikit-learn) and lists failed deep inside with an
    # AttributeError ('numpy.ndarray' object has no attribute 'unique') or a TypeError
    (lambda f, y: knn_predict(f.numpy(), y, f, k=2), "knn_predict: train_features must be a "
     "torch.Tensor \\(got ndarray\\): convert it with torch.as_tensor"),
    (lambda f, y: knn_predict(f, y.tolist(), f, k=2), "train_labels must be a torch.Tensor "
     "\\(got list\\)"),
    (lambda f, y: knn_accuracy(f.numpy(), y.numpy(), f.numpy(), y.numpy(), k=2),
     "knn_accuracy: train_f must be a torch.Tensor \\(got ndarray\\)"),
    (lambda f, y: linear_probe(f, y, f.numpy(), y), "linear_probe: test_f must be a "
     "torch.Tensor \\(got ndarray\\)"),
    # float test labels were compared with the predictions as they were: 0.7 never matches
    (lambda f, y: knn_accuracy(f, y, f, y.float(), k=2), "knn_accuracy \\(test\\): labels "
     "must be integer class indices, got torch.float32: use labels.long\\(\\)"),
])
def test_evaluation_input_of_the_wrong_type_is_a_one_line_error(call, expected):
    f, y = torch.randn(6, 3, generator=gen(3)), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(SSLKitError, match=expected) as err:
        call(f, y)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options,expected", [
    ({"epochs": 0}, "epochs must be a whole number of at least 1 \\(got 0\\): use e.g. "
                    "epochs=100"),
    ({"epochs": -3}, "epochs must be a whole number of at least 1 \\(got -3\\)"),
    ({"lr": float("nan")}, "positive, finite lr \\(got nan\\): use e.g. lr=1e-2"),
    ({"lr": -0.1}, "positive, finite lr \\(got -0.1\\)"),
])
def test_train_linear_probe_settings_out_of_range_are_one_line_errors(options, expected):
    """epochs=0 returned the untrained, all-zero probe (every prediction class 0) without a
    word, and lr=nan ended in torch's optimiser traceback."""
    from sslkit.evaluate import train_linear_probe

    f, y = torch.randn(6, 3, generator=gen(3)), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(SSLKitError, match=expected) as err:
        train_linear_probe(f, y, **options)
    assert "\n" not in str(err.value)


def test_topk_accuracy_with_a_fractional_k_is_a_one_line_error():
    """k=1.5 counted the labels ranked 0 and 1, the top-2 accuracy, reported for "k=1.5"."""
    from sslkit.evaluate import topk_accuracy

    logits, labels = torch.randn(8, 4, generator=gen(1)), torch.arange(8) % 4
    with pytest.raises(SSLKitError, match="k must be a whole number of classes \\(got 1.5\\): "
                                          "use e.g. k=1") as err:
        topk_accuracy(logits, labels, 1.5)
    assert "\n" not in str(err.value)
    assert topk_accuracy(logits, labels, 4) == 1.0  # whole k as before


def test_images_with_nan_are_a_one_line_error():
    """NaN passed the [0, 1] check of the images (every comparison with NaN is False) and gave
    NaN features; the check is shared with the views and the plots (sslkit.unit_images)."""
    from sslkit.unit_images import unit_floats

    images = torch.rand(3, 1, 4, 4, generator=gen(60))
    images[1, 0, 2, 2] = math.nan
    with pytest.raises(SSLKitError, match="NaN") as err:
        pixels(images)
    assert "\n" not in str(err.value) and "pixels" in str(err.value)
    assert unit_floats(images, "x", check_range=False).shape == images.shape  # not read: passes
