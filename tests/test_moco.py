"""moco_loss per the contract and the MoCo method: closed form, agreement with a plain loop,
no gradient into keys or queue, scale invariance; the queue's wrap-around and size check; the
momentum update before the key pass; a short run that learns."""

import copy
import math

import pytest
import torch

from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.errors import SSLKitError
from sslkit.losses import moco_loss, moco_loss_loop
from sslkit.methods import MoCo, build_method
from sslkit.models.convnet import ConvNet


def test_closed_form_with_orthogonal_queue():
    # q = k = e_i, queue rows orthogonal to every query: positive logit 1/T, K negatives at 0.
    n, k_size, t = 3, 5, 0.2
    eye = torch.eye(n + k_size)
    q, queue = eye[:n], eye[n:]
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + k_size))
    assert float(moco_loss(q, q.clone(), queue, t)) == pytest.approx(expected, abs=1e-5)
    assert float(moco_loss_loop(q, q.clone(), queue, t)) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("n,d,k,t", [(1, 3, 1, 1.0), (4, 8, 16, 0.2), (7, 5, 12, 0.07)])
def test_vectorised_equals_loop(n, d, k, t):
    g = torch.Generator().manual_seed(n + d + k)
    q, key, queue = (torch.randn(s, d, generator=g, dtype=torch.float64) for s in (n, n, k))
    assert torch.allclose(moco_loss(q, key, queue, t), moco_loss_loop(q, key, queue, t))


def test_no_gradient_into_keys_or_queue_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    queue = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    moco_loss(q, k, queue, 0.2).backward()
    assert k.grad is None and queue.grad is None and q.grad is not None
    assert torch.autograd.gradcheck(lambda a: moco_loss(a, k, queue, 0.5), (q,))


def test_scale_invariance_and_half_precision():
    g = torch.Generator().manual_seed(1)
    q, k, queue = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), \
        torch.randn(10, 4, generator=g)
    ref = moco_loss(q, k, queue)
    scaled = moco_loss(3 * q, 0.1 * k, 7 * queue)
    assert torch.allclose(ref, scaled, atol=1e-6)
    half = moco_loss(q.half(), k.half(), queue.half())
    assert half.dtype == torch.float32 and torch.allclose(half, ref, atol=1e-2)


def test_bad_queue_is_a_one_line_error():
    q = torch.randn(4, 6)
    for queue in (torch.randn(8, 5), torch.randn(8), torch.zeros(0, 6)):
        with pytest.raises(SSLKitError) as info:
            moco_loss(q, q, queue)
        assert "\n" not in str(info.value)


def tiny_moco(queue_size=12, **options) -> MoCo:
    torch.manual_seed(0)
    return MoCo(ConvNet(1, (4, 8)), SimCLRViews(ViewConfig(size=8)), proj_dim=6,
                queue_size=queue_size, **options)


def test_queue_wraps_around():
    method = tiny_moco(queue_size=12)
    for step in range(5):  # 5 batches of 4 into 12 rows
        method.enqueue(torch.full((4, 6), float(step + 1)))
    expected = torch.tensor([4.0] * 4 + [5.0] * 4 + [3.0] * 4)  # batch 4 and 5 wrapped over 1, 2
    assert torch.equal(method.queue[:, 0], expected)
    assert int(method.queue_ptr) == (5 * 4) % 12 == 8


def test_queue_size_not_divisible_by_batch_is_one_line():
    method = tiny_moco(queue_size=10)
    with pytest.raises(SSLKitError, match="not divisible") as info:
        method.loss_on_views(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8))
    assert "\n" not in str(info.value)


def test_shuffle_bn_groups_the_keys_by_a_random_permutation():
    # bn_splits=2 on 8 samples: queries in groups {0..3}, {4..7}; keys in the groups that a
    # permutation draws, so sample i's key is normalised together with other samples than its
    # query. Reproduce it by hand: each key equals the key network on its permuted group.
    method = tiny_moco(bn_splits=2).train()
    v = torch.rand(8, 1, 8, 8)
    torch.manual_seed(3)
    keys = method.embed_keys(v)
    torch.manual_seed(3)
    perm = torch.randperm(8)
    with torch.no_grad():
        key_net = lambda x: method.key_head(method.key_encoder(x))  # noqa: E731
        by_hand = torch.empty_like(keys)
        for group in perm.chunk(2):
            by_hand[group] = key_net(v[group])
        in_order = torch.cat([key_net(part) for part in v.chunk(2)])
    assert torch.allclose(keys, by_hand, atol=1e-6)
    assert not torch.allclose(keys, in_order, atol=1e-3)  # the shuffle changed the statistics
    assert torch.allclose(method.embed_query(v), torch.cat(  # queries: groups in order
        [method.head(method.encoder(part)) for part in v.chunk(2)]), atol=1e-6)
    method.eval()  # running statistics: no batch dependence, the shuffle changes nothing
    assert torch.allclose(method.embed_keys(v), key_net(v), atol=1e-6)


def test_shuffle_bn_groups_take_one_pass_of_the_network():
    # bn_splits=4 on 16 samples: each network runs ONCE on all 16 (not 4 times on 4, which
    # leaves a GPU idle); its BatchNorm layers take the groups' statistics (the test above, and
    # tests/test_grouped_batchnorm.py against the per-group loop).
    method = tiny_moco(bn_splits=4).train()
    sizes = []
    for net in (method.encoder, method.head, method.key_encoder, method.key_head):
        net.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    v = torch.rand(16, 1, 8, 8)
    method.embed_query(v)
    method.embed_keys(v)
    assert sizes == [16, 16, 16, 16]


@pytest.mark.parametrize("bn_splits", [1, 2])
def test_key_network_moves_by_momentum_and_gets_no_gradient(bn_splits):
    method = tiny_moco(momentum=0.9, bn_splits=bn_splits).train()
    with torch.no_grad():  # make the two networks differ
        for p in [*method.key_encoder.parameters(), *method.key_head.parameters()]:
            p.add_(0.1)
    old_k = [p.clone() for p in [*method.key_encoder.parameters(), *method.key_head.parameters()]]
    q_params = [p.clone() for p in [*method.encoder.parameters(), *method.head.parameters()]]
    queue_before = method.queue.clone()
    loss = method.loss_on_views(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8))
    loss.backward()
    new_k = [*method.key_encoder.parameters(), *method.key_head.parameters()]
    for old, q, new in zip(old_k, q_params, new_k):
        assert torch.allclose(new, 0.9 * old + 0.1 * q, atol=1e-6)
        assert new.grad is None
    assert torch.equal(method.queue[4:], queue_before[4:])  # the 4 new keys replaced rows 0..3
    assert not torch.equal(method.queue[:4], queue_before[:4])


def test_keys_are_used_before_they_are_enqueued():
    method = tiny_moco(queue_size=4)
    v1, v2 = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    copy_ = copy.deepcopy(method)
    loss = method.loss_on_views(v1, v2)
    q = copy_.embed_query(v1)
    copy_.momentum_update()
    k = copy_.embed_keys(v2)
    assert torch.allclose(loss, moco_loss(q, k, copy_.queue, copy_.temperature), atol=1e-6)


def test_symmetric_loss_enqueues_both_views():
    method = tiny_moco(queue_size=16, symmetric=True)
    loss = method.loss_on_views(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8))
    assert loss.ndim == 0 and int(method.queue_ptr) == 8


def test_steps_on_a_fixed_batch_lower_the_loss():
    # Same views and the same (reset) queue every step: the loss must fall, and stay finite.
    torch.manual_seed(0)
    method = build_method("moco", "convnet-small", 1, "shifted_digits", 16, proj_dim=16,
                          temperature=0.2, queue_size=64, momentum=0.9)
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=2e-3)
    v1, v2 = torch.rand(16, 1, 16, 16), torch.rand(16, 1, 16, 16)
    queue = method.queue.clone()
    losses = []
    for _ in range(15):
        method.queue.copy_(queue)
        method.queue_ptr.zero_()
        loss = method.loss_on_views(v1, v2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_the_training_loop_runs_moco_and_checkpoints_the_queue(tmp_path):
    from sslkit.profiles import get_profile
    from sslkit.train import TrainConfig, load_checkpoint, train

    cfg = TrainConfig.from_profile(get_profile("ci"), method="moco", epochs=1, n_train=128,
                                   n_test=50, batch_size=32, device="cpu")
    _, rows = train(cfg, out=tmp_path, progress=False)
    assert math.isfinite(rows[-1]["loss"])
    state = load_checkpoint(tmp_path)["model"]
    assert state["queue"].shape == (4096, cfg.proj_dim) and int(state["queue_ptr"]) == 128


@pytest.mark.parametrize("option, value, expected", [
    ("queue_size", -64, "--option queue_size=4096"), ("queue_size", 0, "queue_size"),
    ("bn_splits", 0, "--option bn_splits=1"), ("momentum", 1.5, "--option momentum=0.99"),
    ("temperature", 0.0, "--temperature 0.")])
def test_sizes_and_ranges_are_checked_by_name(option, value, expected):
    """queue_size=-64 failed in torch.randn ("negative dimension") and queue_size=0 in
    moco_loss with a message about an empty queue the user never built. The temperature has
    its own flag (--option temperature is refused), and the hints say so."""
    from sslkit.methods import check_method_options

    settings = {"queue_size": 12, option: value}
    for check in (lambda: tiny_moco(**settings),
                  lambda: check_method_options("moco", {option: value})):
        with pytest.raises(SSLKitError, match=option) as info:
            check()
        assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("keys", [False, True])
def test_split_batchnorm_moves_running_statistics_once_by_the_group_mean(keys):
    # MoCo's SplitBatchNorm: with bn_splits=s the running statistics take ONE step towards the
    # mean over the s groups of each group's batch mean and unbiased variance,
    #     running <- (1 - m) running + m * mean_g stat_g,
    # so eval mode normalises with an average over steps, not over the last groups of the last
    # step (per-group updates in turn weight the last group by m, the first by m (1-m)^(s-1)).
    method = tiny_moco(bn_splits=4).train()
    encoder = method.key_encoder if keys else method.encoder
    bn = encoder.blocks[0][1]
    bn.momentum = 0.5
    with torch.no_grad():  # a start far from the batch statistics
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(5.0)
    v = torch.rand(16, 1, 8, 8) * torch.arange(1, 17.0).view(16, 1, 1, 1)  # groups differ
    with torch.no_grad():
        conv = encoder.blocks[0][0]
        torch.manual_seed(0)
        groups = v[torch.randperm(16)] if keys else v  # the keys' groups: a permutation
        stats = [conv(part).transpose(0, 1).flatten(1) for part in groups.chunk(4)]  # (C, nHW)
        mean = torch.stack([s.mean(dim=1) for s in stats]).mean(dim=0)
        var = torch.stack([s.var(dim=1) for s in stats]).mean(dim=0)
    tracked = int(bn.num_batches_tracked)
    torch.manual_seed(0)
    method.embed_keys(v) if keys else method.embed_query(v)
    assert torch.allclose(bn.running_mean, 0.5 * 3.0 + 0.5 * mean, atol=1e-5)
    assert torch.allclose(bn.running_var, 0.5 * 5.0 + 0.5 * var, atol=1e-5)
    assert int(bn.num_batches_tracked) == tracked + 1  # one step, not one per group


def test_keys_come_from_the_key_network_after_its_momentum_step():
    # θk <- m θk + (1 - m) θq happens BEFORE the key pass: the loss equals moco_loss with keys
    # of the moved key network, not with keys of the key network as it was.
    method = tiny_moco(momentum=0.5).eval()  # eval: BatchNorm's running statistics, no batch
    with torch.no_grad():  # make the key network differ from the query network
        for p in [*method.key_encoder.parameters(), *method.key_head.parameters()]:
            p.add_(0.3)
    v1, v2 = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    before = copy.deepcopy(method)
    loss = method.loss_on_views(v1, v2)
    with torch.no_grad():
        q = before.embed_query(v1)
        stale = before.embed_keys(v2)
        before.momentum_update()
        moved = before.embed_keys(v2)
    assert torch.allclose(loss, moco_loss(q, moved, before.queue, method.temperature), atol=1e-6)
    assert not torch.allclose(loss, moco_loss(q, stale, before.queue, method.temperature),
                              atol=1e-4)


def test_v2_blur_at_32_pixels_is_next_to_none():
    """MoCo v2's blur sigma (0.1-2.0 at 224 px) scaled to a 32-pixel view is at most 0.29 px:
    a point keeps over 99 % of its value and each neighbour gets under 0.3 %, so on CIFAR the
    v2 views are in effect the CIFAR-10 demo's, which have no blur."""
    from sslkit.augment import blur_settings, gaussian_blur, view_config_for
    from sslkit.methods.moco import moco_view_config

    cfg = moco_view_config(view_config_for("cifar10", 32))
    (_, sigma_high), kernel = blur_settings(cfg)
    assert cfg.blur_p == 0.5 and sigma_high == pytest.approx(2.0 * 32 / 224) and kernel == 3
    point = torch.zeros(1, 1, 5, 5)
    point[0, 0, 2, 2] = 1.0
    blurred = gaussian_blur(point, torch.tensor([sigma_high]), kernel)[0, 0]
    assert blurred[2, 2] > 0.99 and blurred[2, 1] < 0.003 and blurred[1, 1] < 1e-5


def test_a_training_batch_of_one_is_a_one_line_error():
    """Its head's BatchNorm (grouped, for shuffle-BN) failed with torch's "Expected more than 1
    value per channel"; in eval mode one image is fine."""
    method = build_method("moco", "convnet-small", 3, "cifar10", 32)
    with pytest.raises(SSLKitError, match="MoCo query head's BatchNorm needs at least 2") as e:
        method(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert "\n" not in str(e.value)
    method.eval()
    assert torch.isfinite(method(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)))
