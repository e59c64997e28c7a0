"""DINO: the loss per the contract (against a plain loop, closed forms, pairing, no gradient into
the teacher), the centre update, the EMA teacher, the schedules and one training step."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslkit.augment import view_config_for
from sslkit.errors import SSLKitError
from sslkit.losses import dino_loss, dino_loss_loop
from sslkit.methods import build_method
from sslkit.methods.dino import (
    DINO,
    MultiCropViews,
    WeightNormLinear,
    momentum_schedule,
    teacher_temp_schedule,
    update_center,
)
from sslkit.models.vit import ViT


def outputs(v=4, g=2, n=5, k=7, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    s = [torch.randn(n, k, generator=gen, dtype=dtype) * 2 for _ in range(v)]
    t = [torch.randn(n, k, generator=gen, dtype=dtype) * 2 for _ in range(g)]
    c = torch.randn(1, k, generator=gen, dtype=dtype) * 0.1
    return s, t, c


def entropy(p):
    return -(p * p.log()).sum(-1).mean()


@pytest.mark.parametrize("v,g,ts,tt", [(4, 2, 0.1, 0.04), (2, 2, 0.5, 0.2), (6, 2, 1.0, 1.0),
                                       (3, 1, 0.1, 0.07)])
def test_vectorised_loss_equals_the_plain_loop(v, g, ts, tt):
    s, t, c = outputs(v, g)
    assert torch.allclose(dino_loss(s, t, c, ts, tt), dino_loss_loop(s, t, c, ts, tt), atol=1e-10)


def test_closed_form_when_teacher_and_student_agree():
    # Same logits for every crop, equal temperatures, zero centre: every pair's cross-entropy is
    # the entropy of that one distribution.
    z = torch.randn(6, 9, dtype=torch.float64)
    temp = 0.3
    s, t = [z.clone() for _ in range(4)], [z.clone() for _ in range(2)]
    expected = entropy(F.softmax(z / temp, dim=-1))
    assert torch.allclose(dino_loss(s, t, torch.zeros(9, dtype=torch.float64), temp, temp),
                          expected)
    # all-zero logits: uniform distributions, loss log K
    zeros = [torch.zeros(3, 9)] * 3
    assert math.isclose(float(dino_loss(zeros, zeros[:2], torch.zeros(9))), math.log(9),
                        rel_tol=1e-6)


def test_a_crop_is_never_paired_with_itself():
    # Student crop 0 matches teacher crop 1 and vice versa: the loss is the minimum possible,
    # the mean entropy of the two teacher distributions. Pairing a crop with itself would add
    # cross-entropies between different distributions, which are larger.
    temp = 0.5
    t0, t1 = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64) * 3
    center = torch.zeros(1, 6, dtype=torch.float64)
    loss = dino_loss([t1, t0], [t0, t1], center, temp, temp)
    p0, p1 = F.softmax(t0 / temp, -1), F.softmax(t1 / temp, -1)
    assert torch.allclose(loss, (entropy(p0) + entropy(p1)) / 2)
    with_self = (entropy(p0) + entropy(p1) - (p0 * F.log_softmax(t1 / temp, -1)).sum(-1).mean()
                 - (p1 * F.log_softmax(t0 / temp, -1)).sum(-1).mean()) / 4
    assert not torch.allclose(loss, with_self)
    # changing student crop g changes nothing in its pair with teacher g: with one teacher crop,
    # student crop 0 does not enter the loss at all
    s, t, c = outputs(v=3, g=1)
    changed = [s[0] + torch.randn_like(s[0]) * 5, s[1], s[2]]
    assert torch.allclose(dino_loss(s, t, c), dino_loss(changed, t, c))


def test_no_gradient_into_the_teacher_or_the_centre():
    s, t, c = outputs()
    s = [x.requires_grad_() for x in s]
    t = [x.requires_grad_() for x in t]
    c.requires_grad_()
    dino_loss(s, t, c).backward()
    assert all(x.grad is None for x in t) and c.grad is None
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)


def test_invariances_of_centring_and_softmax():
    s, t, c = outputs()
    shift = torch.randn(1, 7, dtype=torch.float64)
    base = dino_loss(s, t, c)
    # the same vector added to teacher outputs and centre: centring removes it
    assert torch.allclose(base, dino_loss(s, [x + shift for x in t], c + shift))
    # a constant added to every logit of a row does not change a softmax
    assert torch.allclose(base, dino_loss([x + 3.0 for x in s], [x - 2.0 for x in t], c))


def test_half_precision_is_computed_in_float32():
    s, t, c = outputs(dtype=torch.float32)
    loss = dino_loss([x.bfloat16() for x in s], [x.bfloat16() for x in t], c.bfloat16())
    assert loss.dtype == torch.float32


def test_centre_update_is_an_ema_of_the_batch_mean():
    _, t, c = outputs(dtype=torch.float32)
    new = update_center(c, t, 0.9)
    assert torch.allclose(new, 0.9 * c + 0.1 * torch.cat(t).mean(0, keepdim=True))
    assert torch.equal(update_center(c, t, 1.0), c)


def test_teacher_temperature_schedule_warms_up_then_stays():
    temps = teacher_temp_schedule(0.04, 0.07, warmup_steps=4, total_steps=10)
    assert temps.shape == (10,)
    assert np.allclose(temps[:4], [0.04, 0.05, 0.06, 0.07]) and np.allclose(temps[4:], 0.07)
    m = momentum_schedule(0.99, 20)
    assert m.shape == (20,) and math.isclose(m[0], 0.99) and math.isclose(m[-1], 1.0)
    assert bool(np.all(np.diff(m) >= 0))


def small_dino(momentum=0.9, **options):
    torch.manual_seed(0)
    enc = ViT(16, 4, in_channels=1, dim=16, depth=1, heads=2)
    views = MultiCropViews(view_config_for("digits", 16), n_local=2, local_size=8,
                           generator=torch.Generator().manual_seed(0))
    return DINO(enc, views, out_dim=32, hidden_dim=32, bottleneck_dim=8, total_steps=10,
                momentum=momentum, **options)


def test_teacher_is_a_separate_copy_that_follows_update_momentum():
    dino = small_dino()
    assert dino.teacher_encoder is not dino.encoder and dino.teacher_head is not dino.head
    pairs = list(zip(dino.encoder.parameters(), dino.teacher_encoder.parameters()))
    assert all(p.data_ptr() != q.data_ptr() for p, q in pairs)
    assert not any(q.requires_grad for q in dino.teacher_encoder.parameters())
    with torch.no_grad():
        for q in [*dino.teacher_encoder.parameters(), *dino.teacher_head.parameters()]:
            q.add_(torch.randn_like(q))
    student = [p.clone() for p in [*dino.encoder.parameters(), *dino.head.parameters()]]
    teacher = [q.clone() for q in [*dino.teacher_encoder.parameters(),
                                   *dino.teacher_head.parameters()]]
    dino((torch.rand(4, 1, 16, 16) * 255).byte())
    m = float(dino.momentums[0])
    after = [*dino.teacher_encoder.parameters(), *dino.teacher_head.parameters()]
    for s0, t0, t1 in zip(student, teacher, after):
        assert torch.allclose(t1, m * t0 + (1 - m) * s0, atol=1e-6)


def test_one_training_step():
    dino = small_dino(momentum=1.0)  # a fixed teacher, so its outputs can be computed beforehand
    x = (torch.rand(6, 1, 16, 16) * 255).byte()
    crops = dino.views(x)
    assert [v.shape[-1] for v in crops] == [16, 16, 8, 8]
    t_out = dino.teacher_outputs(crops[:2])
    center0 = dino.center.clone()
    opt = torch.optim.SGD([p for p in dino.parameters() if p.requires_grad], lr=0.1)
    before = [p.clone() for p in dino.encoder.parameters()]
    loss = dino.loss_on_crops(crops)
    assert loss.ndim == 0 and torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in dino.teacher_encoder.parameters())
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, dino.encoder.parameters()))
    assert int(dino.step) == 1
    assert not torch.allclose(dino.center, center0)
    assert torch.allclose(dino.center, update_center(center0, t_out, 0.9), atol=1e-6)
    stats = dino.last_stats
    assert 0 <= stats["teacher_entropy"] <= math.log(32) + 1e-5 and stats["kl"] >= -1e-6


def test_one_student_output_is_a_one_line_error():
    s, t, c = outputs(v=1, g=1)
    for loss in (dino_loss, dino_loss_loop):  # its only pair would be skipped: a mean of nothing
        with pytest.raises(SSLKitError, match="at least 2 crops") as info:
            loss(s, t, c)
        assert "\n" not in str(info.value)


def test_a_loaded_checkpoint_sets_the_schedule_position():
    """The schedules read a host-side step count (no GPU wait); loading a checkpoint sets it."""
    trained = small_dino(warmup_teacher_temp=0.02, teacher_temp=0.07, warmup_steps=6)
    for _ in range(3):
        trained((torch.rand(4, 1, 16, 16) * 255).byte())
    assert int(trained.step) == 3
    fresh = small_dino(warmup_teacher_temp=0.02, teacher_temp=0.07, warmup_steps=6)
    assert fresh.teacher_temp() == pytest.approx(0.02)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.teacher_temp() == trained.teacher_temp() == pytest.approx(0.02 + 3 * 0.05 / 5)
    assert fresh._at(fresh.momentums) == trained._at(trained.momentums) == fresh.momentums[3]


def test_switches_for_the_collapse_experiment():
    no_sharp = small_dino(sharpening=False)
    assert no_sharp.teacher_temp() == no_sharp.student_temp
    no_centre = small_dino(centering=False)
    no_centre((torch.rand(4, 1, 16, 16) * 255).byte())
    assert torch.equal(no_centre.center, torch.zeros_like(no_centre.center))


def test_registered_in_build_method():
    dino = build_method("dino", "vit", 1, "digits", 32, total_steps=5)
    assert isinstance(dino, DINO) and dino.encoder.in_channels == 1
    loss = dino((torch.rand(2, 1, 32, 32) * 255).byte())
    assert torch.isfinite(loss)


def test_the_last_layer_computes_in_float32_under_autocast():
    """The logits the teacher sharpens at T 0.04 are not rounded to bfloat16 (autocast on CUDA
    would, by up to 2^-9 of each: 0.05 after the division); CPU autocast stands in here."""
    torch.manual_seed(0)
    layer = WeightNormLinear(16, 64)
    x = F.normalize(torch.randn(8, 16), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        z = torch.nn.functional.linear(x, layer.weight)  # what autocast does to a plain layer
    assert z.dtype == torch.bfloat16 and y.dtype == torch.float32
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)


def test_min_global_scale_splits_the_crops_and_keeps_the_rest():
    """min_global_scale=s: global crops (s, 1), local (0.05, s), everything else as the views
    were (DINO's ViT split 0.4 is the default; its ResNet recipe splits at 0.14)."""
    from sslkit.cli import parse_option

    default = small_dino()
    split = small_dino(min_global_scale=parse_option("min_global_scale=0.14")[1])
    g, loc = split.views.global_views.cfg, split.views.local_views.cfg
    assert (g.crop_scale, loc.crop_scale) == ((0.14, 1.0), (0.05, 0.14))
    assert default.views.global_views.cfg.crop_scale == (0.4, 1.0)
    d_g, d_loc = default.views.global_views.cfg, default.views.local_views.cfg
    assert (g.size, loc.size, split.views.n_local) == (d_g.size, d_loc.size, 2)
    assert (g.jitter_strength, g.flip_p, loc.rotate_degrees) == (
        d_g.jitter_strength, d_g.flip_p, d_loc.rotate_degrees)
    assert split.views.local_views.generator is split.views.global_views.generator
    for bad in (0.05, 1.5, "abc", True):
        with pytest.raises(SSLKitError, match="min_global_scale must be a number") as err:
            small_dino(min_global_scale=bad)
        assert "\n" not in str(err.value)


def test_local_crops_that_do_not_fit_the_encoder_are_a_one_line_error():
    """DINO's local crops are half the side: at 16 they are 8 pixels, too few for the ConvNet's
    four max-pools, and at 20 they are 10, which 4x4 ViT patches do not tile (both passed the
    encoder's check on the global side and failed in the first forward)."""
    for side in (16, 24, 30):
        with pytest.raises(SSLKitError, match="local crops are half that side") as err:
            build_method("dino", "convnet-small", 1, "digits", side)
        assert "use --image-size 32 or more" in str(err.value) and "\n" not in str(err.value)
    dino = build_method("dino", "convnet-small", 1, "digits", 32, total_steps=5)
    assert torch.isfinite(dino((torch.rand(2, 1, 32, 32) * 255).byte()))
    build_method("dino", "vit", 1, "digits", 16, total_steps=5)  # patches of 4: 8 is enough
    for side in (12, 20, 18):  # the 4x4 patches must tile the local crops too: 6, 10, 9 do not
        with pytest.raises(SSLKitError, match="a multiple of 8"):
            build_method("dino", "vit", 1, "digits", side)
    assert torch.isfinite(build_method("dino", "vit", 1, "digits", 24)(
        (torch.rand(2, 1, 24, 24) * 255).byte()))


def test_the_training_loop_runs_dino(tmp_path):
    from sslkit.data import load_dataset
    from sslkit.train import TrainConfig, train

    data = load_dataset("shifted_digits").subset(32, 32)
    cfg = TrainConfig(method="dino", arch="vit", dataset="shifted_digits", epochs=1,
                      batch_size=16, knn_every=1, warmup_epochs=0, n_train=32, n_test=32)
    method, rows = train(cfg, out=tmp_path, progress=False, data=data)
    assert isinstance(method, DINO) and math.isfinite(rows[-1]["loss"])


def test_gradient_clipping_scales_each_parameter_to_at_most_the_clip():
    """DINO's clipping: g <- g * min(1, clip / |g|) for each student parameter on its own."""
    dino = small_dino(clip_grad=3.0)
    params = [*dino.encoder.parameters(), *dino.head.parameters()]
    g = torch.Generator().manual_seed(0)
    for i, p in enumerate(params):  # alternately far above and below the clip
        p.grad = torch.randn(p.shape, generator=g) * (10.0 if i % 2 else 0.01)
    expected = [p.grad * min(1.0, 3.0 / (float(p.grad.norm()) + 1e-6)) for p in params]
    dino.before_optimizer_step()
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.grad, want)
        assert float(p.grad.norm()) <= 3.0 + 1e-4
    assert any(float(p.grad.norm()) > 2.99 for p in params)  # the large ones sit at the clip
    off = small_dino()  # clip_grad 0: untouched
    for p in off.parameters():
        p.grad = torch.full_like(p, 100.0)
    off.before_optimizer_step()
    assert all(bool((p.grad == 100.0).all()) for p in off.parameters())


def test_the_last_layer_stays_frozen_in_the_first_epoch(tmp_path):
    """freeze_last_layer_epochs=1 with 2 steps per epoch: the training loop leaves the last
    layer as it is for steps 1-2 (no gradient, so no momentum or weight decay) and updates it
    from step 3; the rest of the student moves from step 1."""
    from sslkit.train import train_step

    dino = small_dino(freeze_last_layer_epochs=1, steps_per_epoch=2)
    opt = torch.optim.SGD([p for p in dino.parameters() if p.requires_grad], lr=0.1,
                          momentum=0.9, weight_decay=1e-2)
    x = (torch.rand(6, 1, 16, 16) * 255).byte()
    last = dino.head.last_layer.weight
    for step in (1, 2, 3):
        before_last, before_mlp = last.detach().clone(), dino.head.mlp[0].weight.detach().clone()
        train_step(dino, opt, [x])
        assert torch.equal(last, before_last) == (step <= 2), step
        assert not torch.equal(dino.head.mlp[0].weight, before_mlp), step


def test_the_loss_uses_the_teacher_after_its_momentum_step():
    # update_momentum(student -> teacher) comes BEFORE the teacher pass: the loss equals
    # dino_loss with the outputs of the moved teacher, not of the teacher as it was.
    dino = small_dino(momentum=0.5)
    with torch.no_grad():  # make the teacher differ from the student
        for q in [*dino.teacher_encoder.parameters(), *dino.teacher_head.parameters()]:
            q.add_(0.2 * torch.randn_like(q))
    crops = dino.views((torch.rand(4, 1, 16, 16) * 255).byte())
    m = float(dino.momentums[0])
    stale = dino.teacher_outputs(crops[:2])
    with torch.no_grad():
        s_out = dino.student_outputs(crops)
    loss = dino.loss_on_crops(crops)  # moves the teacher, then its pass
    moved = dino.teacher_outputs(crops[:2])
    t = dino.teacher_temp()
    zero = torch.zeros_like(dino.center)
    assert m < 1
    assert torch.allclose(loss, dino_loss(s_out, moved, zero, dino.student_temp, t), atol=1e-5)
    assert not torch.allclose(loss, dino_loss(s_out, stale, zero, dino.student_temp, t),
                              atol=1e-4)
