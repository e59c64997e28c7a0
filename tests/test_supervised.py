"""sslkit.supervised and evaluate.fine_tune: one fine-tuning step equals Adam on the
cross-entropy of the same batch written out here, the encoder passed in is untouched, the
from-scratch baseline is a function of its seed and learns the digits well above chance."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.evaluate import extract_features, fine_tune, topk_accuracy
from sslkit.models import build_encoder
from sslkit.supervised import supervised_augmentation, train_supervised, train_supervised_per_class


def small_images(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8),
            torch.randint(0, 3, (n,), generator=g))


def test_one_fine_tuning_step_is_adam_on_the_cross_entropy_of_the_drawn_batch():
    torch.manual_seed(0)
    encoder = build_encoder("convnet-small", 1)
    before = copy.deepcopy(encoder)
    images, labels = small_images()
    model = fine_tune(encoder, images, labels, num_classes=3, steps=1, batch_size=5, lr=0.01,
                      weight_decay=0.0, seed=4)
    # the same step by hand: the batch the seeded generator draws, a zero head, one Adam step
    idx = torch.randint(0, 12, (5,), generator=torch.Generator().manual_seed(4))
    ref = nn.Sequential(copy.deepcopy(before), nn.Linear(encoder.feature_dim, 3)).train()
    nn.init.zeros_(ref[1].weight)
    nn.init.zeros_(ref[1].bias)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    loss = F.cross_entropy(ref(images[idx].float() / 255), labels[idx])
    assert loss.item() == pytest.approx(torch.log(torch.tensor(3.0)).item())  # zero head: log C
    opt.zero_grad()
    loss.backward()
    opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    # the encoder passed in did not move
    for p, q in zip(encoder.parameters(), before.parameters()):
        assert torch.equal(p, q)
    assert not model.training


def test_fine_tune_without_steps_gives_zero_logits_and_trains_frozen_encoders():
    torch.manual_seed(0)
    encoder = build_encoder("convnet-small", 1).requires_grad_(False)  # e.g. a DINO teacher
    images, labels = small_images()
    assert torch.equal(extract_features(fine_tune(encoder, images, labels, steps=0), images),
                       torch.zeros(12, 3))
    model = fine_tune(encoder, images, labels, steps=2, batch_size=4)
    assert any(not torch.equal(p, q) for p, q in zip(model[0].parameters(),
                                                      encoder.parameters()))


def test_fine_tune_trains_under_no_grad():
    torch.manual_seed(0)
    encoder = build_encoder("convnet-small", 1)
    images, labels = small_images()
    expected = fine_tune(encoder, images, labels, steps=2, batch_size=4)
    with torch.no_grad():
        got = fine_tune(encoder, images, labels, steps=2, batch_size=4)
    assert all(torch.equal(p, q) for p, q in zip(got.parameters(), expected.parameters()))


def test_fine_tune_bad_input():
    encoder = build_encoder("convnet-small", 1)
    images, labels = small_images()
    with pytest.raises(SSLKitError, match="labels"):
        fine_tune(encoder, images, labels[:5])
    with pytest.raises(SSLKitError, match="feature_dim"):
        fine_tune(nn.Sequential(encoder), images, labels)
    for kwargs, expected in (({"batch_size": 4.0}, "batch_size must be a whole number"),
                             ({"steps": 2.5}, "a whole number of steps"),
                             ({"augment": True}, "augment is a ViewConfig")):
        with pytest.raises(SSLKitError, match=expected) as info:  # randint's / an attribute's
            fine_tune(encoder, images, labels, **kwargs)  # multi-line errors before
        assert "\n" not in str(info.value)


def test_supervised_augmentation_keeps_geometry_only():
    cfg = supervised_augmentation("shifted_digits", 32)
    assert cfg.jitter_p == cfg.gray_p == cfg.blur_p == 0.0
    assert cfg.flip_p == 0.0 and cfg.rotate_degrees == 20.0  # the digits' preset: no mirror
    assert cfg.crop_scale == (0.5, 1.0)
    assert supervised_augmentation("cifar10", 32).flip_p == 0.5


def test_supervised_baseline_is_a_function_of_its_seed():
    images, labels = small_images(16)
    a = train_supervised(images, labels, steps=3, batch_size=8, seed=1)
    b = train_supervised(images, labels, steps=3, batch_size=8, seed=1)
    c = train_supervised(images, labels, steps=3, batch_size=8, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_supervised_baseline_learns_the_digits(shifted_parts):
    train_x, train_y = shifted_parts["train_x"], shifted_parts["train_y"]
    test_x, test_y = shifted_parts["test_x"][:300], shifted_parts["test_y"][:300]
    model = train_supervised_per_class(train_x, train_y, per_class=40, steps=150)
    accuracy = topk_accuracy(extract_features(model, test_x), test_y, 1)
    assert accuracy > 0.5, accuracy  # chance: 0.1
    assert model[1].out_features == 10
    features = extract_features(model[0], test_x)  # the encoder alone: the representation
    assert features.shape == (300, model[0].feature_dim)


def test_fine_tune_takes_float_images_in_unit_range_like_uint8():
    """uint8 and the same images as floats in [0, 1] train the same weights (a float image
    used to be divided by 255 again), with and without standardisation and augmentation."""
    torch.manual_seed(0)
    encoder = build_encoder("convnet-small", 1)
    images, labels = small_images()
    augment = supervised_augmentation("shifted_digits", 16)
    for options in ({}, {"standardize": True, "augment": augment}):
        a = fine_tune(encoder, images, labels, steps=2, batch_size=4, **options)
        b = fine_tune(encoder, images.float() / 255, labels, steps=2, batch_size=4, **options)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q)
    with pytest.raises(SSLKitError, match="0, 255"):
        fine_tune(encoder, images.float(), labels, steps=1)


@pytest.mark.parametrize("options,expected", [
    (dict(num_classes=2), "outside 0..1"),  # labels reach 2: was an index error in the loss
    (dict(steps=-1), "steps >= 0"),
    (dict(batch_size=0), "batch_size must be a whole number of at least 1"),
])
def test_fine_tune_settings_out_of_range_are_one_line_errors(options, expected):
    encoder = build_encoder("convnet-small", 1)
    images, labels = small_images()
    with pytest.raises(SSLKitError, match=expected) as err:
        fine_tune(encoder, images, labels, **options)
    assert "\n" not in str(err.value)


def test_fine_tune_sees_only_the_images_given():
    """The model is a function of the labelled set: images outside it (e.g. the test set)
    cannot influence it, and the per-class baseline trains on exactly the probe's draw."""
    images, labels = small_images(16)
    a = train_supervised_per_class(images, labels, per_class=2, steps=2, batch_size=4, seed=3)
    from sslkit.evaluate import labels_per_class_subset
    idx = torch.as_tensor(labels_per_class_subset(labels, 2, seed=3))
    b = train_supervised(images[idx], labels[idx], num_classes=3, steps=2, batch_size=4, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a[1].out_features == 3


def test_supervised_baseline_leaves_the_global_rng_alone():
    images, labels = small_images(8)
    state = torch.random.get_rng_state()
    train_supervised(images, labels, steps=1, batch_size=4, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
