"""Shuffle-BN's groups in one pass (sslkit.models.grouped_batchnorm) against the plain loop that
runs the network once per group (MoCo._grouped before it, kept here as the reference): in
float64, outputs, gradients with respect to the input and the parameters, and the running
buffers after several steps agree to 1e-12, on the real CIFAR ResNet-18 with MoCo's head
(BatchNorm2d and BatchNorm1d) and on single layers; a wrong grouping fails the same check."""

import copy

import pytest
import torch
from torch import nn

from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.errors import SSLKitError
from sslkit.methods import MoCo
from sslkit.methods.momentum import update_momentum
from sslkit.models.grouped_batchnorm import (
    GroupedBatchNorm1d,
    GroupedBatchNorm2d,
    batchnorm_groups,
    group_batchnorms,
)
from sslkit.models.heads import projection_head
from sslkit.models.resnet import resnet

TOL = 1e-12  # float64, relative to the largest entry (under 1e-14 is reached)
LR = 0.05  # SGD between the steps


def grouped_loop(encoder: nn.Module, head: nn.Module, v: torch.Tensor, s: int) -> torch.Tensor:
    """head(encoder(v)) once per group v.chunk(s), plain BatchNorm: every group starts from the
    same running statistics, which then move once, to the mean of the groups' results."""
    if s <= 1:
        return head(encoder(v))
    norms = [m for net in (encoder, head) for m in net.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats]
    names = ("running_mean", "running_var", "num_batches_tracked")
    kept = [{a: m._buffers[a] for a in names} for m in norms]  # the modules' own tensors
    results: list[list[dict[str, torch.Tensor]]] = [[] for _ in norms]
    out = []
    for part in v.chunk(s):
        for m, own in zip(norms, kept):  # a fresh copy per group: autograd saves the
            m._buffers.update({a: t.clone() for a, t in own.items()})  # one it ran with
        out.append(head(encoder(part)))
        for m, moved in zip(norms, results):
            moved.append({a: m._buffers[a] for a in names})
    with torch.no_grad():
        for m, own, moved in zip(norms, kept, results):
            m._buffers.update(own)
            for a in names[:2]:
                own[a].copy_(torch.stack([r[a] for r in moved]).mean(dim=0))
            own[names[2]].add_(1)
    return torch.cat(out)


def close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = TOL) -> float:
    """max |got - want| <= tol · max |want| (rounding of sums taken in another order is relative
    to the largest terms, not to each entry); returns that relative difference."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    got, want = got.detach().double(), want.detach().double()
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) / max(scale, 1e-300) if want.numel() else 0.0
    assert err <= tol, f"{what}: max |difference| is {err:.1e} of max |value| {scale:.2e}"
    return err


def _views() -> SimCLRViews:
    return SimCLRViews(ViewConfig(size=8))


def resnet_moco(s: int) -> tuple[MoCo, nn.ModuleDict]:
    """MoCo (CIFAR ResNet-18, 2-layer head with BatchNorm1d) with bn_splits=s, in float64, and
    plain copies of its four networks (torch's BatchNorm) with the same weights."""
    torch.manual_seed(0)
    encoder, head = resnet(18), projection_head(512, 8, 16)
    plain = nn.ModuleDict(dict(encoder=encoder, head=head, key_encoder=copy.deepcopy(encoder),
                               key_head=copy.deepcopy(head))).double()
    method = MoCo(copy.deepcopy(encoder), _views(), proj_dim=8, hidden_dim=16, queue_size=16,
                  bn_splits=s).double()
    method.head.load_state_dict(head.state_dict())  # the same keys: plain and grouped
    method.key_head.load_state_dict(head.state_dict())
    assert not any(isinstance(m, (GroupedBatchNorm1d, GroupedBatchNorm2d))
                   for m in plain.modules())
    return method, plain


def in_order(method: MoCo, v: torch.Tensor) -> torch.Tensor:
    return method.embed_query(v)  # groups v.chunk(s): what MoCo does


def interleaved(method: MoCo, v: torch.Tensor) -> torch.Tensor:
    """A wrong grouping: sample i in group i mod s."""
    order = torch.arange(len(v)).view(-1, method.bn_splits).t().flatten()  # group 0 first
    return method.embed_query(v[order])[torch.argsort(order)]


def one_group(method: MoCo, v: torch.Tensor) -> torch.Tensor:
    """A wrong grouping: the whole batch in one group."""
    return method.head(method.encoder(v))


def check_against_loop(method: MoCo, plain: nn.ModuleDict, embed=in_order, steps: int = 3,
                       side: int = 16) -> float:
    """`steps` training steps of the query network (SGD on a fixed random linear loss) and the
    key network (momentum update, then keys) on both, batches of 4 per group (BatchNorm1d over 2
    values has next to no gradient, pure rounding); everything agrees. Largest difference."""
    s, g = method.bn_splits, torch.Generator().manual_seed(1)
    n, worst = 4 * s, 0.0
    for step in range(steps):
        v = torch.randn(n, 3, side, side, generator=g, dtype=torch.float64) * (1 + step) + step
        v1, v2 = v.clone().requires_grad_(), v.clone().requires_grad_()
        q, ref = embed(method, v1), grouped_loop(plain["encoder"], plain["head"], v2, s)
        worst = max(worst, close(q, ref, f"step {step}: queries"))
        w = torch.randn(q.shape, generator=g, dtype=torch.float64)
        (q * w).sum().backward()
        (ref * w).sum().backward()
        worst = max(worst, close(v1.grad, v2.grad, f"step {step}: input gradient"))
        for part in ("encoder", "head"):
            named = getattr(method, part).named_parameters()
            for (name, p), r in zip(named, plain[part].parameters(), strict=True):
                worst = max(worst, close(p.grad, r.grad, f"step {step}: gradient of {name}"))
        with torch.no_grad():  # an SGD step of the reference, copied: each step compares the
            for p, r in zip(method.parameters(), plain.parameters(), strict=True):  # two from
                if r.grad is not None:  # the same weights; the running statistics accumulate
                    r -= LR * r.grad
                    p.copy_(r)
                    p.grad, r.grad = None, None
            method.momentum_update()  # the key network follows, and runs in groups too
            update_momentum(plain["encoder"], plain["key_encoder"], method.momentum)
            update_momentum(plain["head"], plain["key_head"], method.momentum)
            for p, r in zip(method.parameters(), plain.parameters(), strict=True):
                assert torch.equal(p, r)
            k = method._grouped(method.key_encoder, method.key_head, v.flip(0))
            kr = grouped_loop(plain["key_encoder"], plain["key_head"], v.flip(0), s)
            worst = max(worst, close(k, kr, f"step {step}: keys"))
        buffers = [(name, t) for name, t in method.named_buffers() if "queue" not in name]
        for (name, t), r in zip(buffers, plain.buffers(), strict=True):  # running statistics
            worst = max(worst, close(t, r, f"step {step}: {name}"))
    return worst


@pytest.mark.parametrize("s", [1, 2, 4])
def test_resnet18_and_head_in_one_pass_equal_the_loop(s):
    method, plain = resnet_moco(s)
    method.train()
    plain.train()
    worst = check_against_loop(method, plain)
    print(f"bn_splits={s}: largest |one pass - loop| = {worst:.1e}")


@pytest.mark.parametrize("wrong", [interleaved, one_group])
def test_a_wrong_grouping_fails_the_check(wrong):
    # The check above can fail: groups i mod s, or one group, give other statistics.
    method, plain = resnet_moco(2)
    with pytest.raises(AssertionError, match="queries"):
        check_against_loop(method.train(), plain.train(), embed=wrong, steps=1)


def test_eval_mode_is_plain_batchnorm_and_moves_nothing():
    method, plain = resnet_moco(4)
    method.eval()
    plain.eval()
    before = copy.deepcopy(method.state_dict())
    v = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(method.embed_query(v), plain["head"](plain["encoder"](v)))
    for name, t in method.state_dict().items():
        assert torch.equal(t, before[name]), name


def test_grouping_keeps_types_and_state_dict_keys():
    encoder = resnet(18)
    keys = list(encoder.state_dict())
    method = MoCo(encoder, _views(), queue_size=16, bn_splits=2)
    assert list(method.encoder.state_dict()) == keys  # checkpoints do not notice
    norms = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in norms)
    assert all(type(m) in (GroupedBatchNorm1d, GroupedBatchNorm2d) for m in norms)
    assert all(m.groups == 1 for m in norms)  # plain BatchNorm outside MoCo._grouped
    method.encoder.load_state_dict(resnet(18).state_dict())  # a plain ResNet's weights load


@pytest.mark.parametrize("s", [1, 2, 4])
@pytest.mark.parametrize("momentum", [0.3, None])
@pytest.mark.parametrize("kind, shape", [(nn.BatchNorm1d, (16, 5)), (nn.BatchNorm1d, (16, 5, 3)),
                                         (nn.BatchNorm2d, (16, 5, 3, 2))],
                         ids=["1d", "1d-length", "2d"])
def test_one_layer_equals_the_loop(kind, shape, momentum, s):
    # A single layer, momentum=None (cumulative average) too, from a start far from the data;
    # 4 samples per group at least (over 2 values, BatchNorm passes back next to no gradient).
    torch.manual_seed(s)
    plain = kind(5, momentum=momentum).double()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2.0)
        plain.bias.normal_()
        plain.running_mean.fill_(3.0)
        plain.running_var.fill_(5.0)
    grouped = group_batchnorms(copy.deepcopy(plain))
    assert isinstance(grouped, (GroupedBatchNorm1d, GroupedBatchNorm2d))
    for step in range(3):
        spread = torch.arange(1.0, 17.0, dtype=torch.float64).view(16, *[1] * (len(shape) - 1))
        x = torch.randn(shape, dtype=torch.float64) * spread + step  # groups differ
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        with batchnorm_groups([grouped], s):
            y = grouped(x1)
        ref = grouped_loop(plain, nn.Identity(), x2, s)
        close(y, ref, "output")
        w = torch.randn_like(y)
        (y * w).sum().backward()
        (ref * w).sum().backward()
        close(x1.grad, x2.grad, "gradient wrt the input")
        close(grouped.weight.grad, plain.weight.grad, "gradient of the weight")
        close(grouped.bias.grad, plain.bias.grad, "gradient of the bias")
        for name, t in plain.state_dict().items():
            close(grouped.state_dict()[name], t, f"step {step}: {name}")
    assert grouped.groups == 1  # batchnorm_groups set it back


def test_without_running_statistics_each_group_uses_its_own_in_eval_too():
    plain = nn.BatchNorm1d(3, track_running_stats=False).double()
    grouped = group_batchnorms(copy.deepcopy(plain))
    x = torch.randn(8, 3, dtype=torch.float64) * torch.arange(1.0, 9.0).view(8, 1)
    for mode in (True, False):
        plain.train(mode)
        grouped.train(mode)
        with batchnorm_groups([grouped], 4):
            close(grouped(x), grouped_loop(plain, nn.Identity(), x, 4), f"training={mode}")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_autocast_and_channels_last(device):
    # As training runs it: float32 weights in channels_last, bf16 autocast. A grouped layer's
    # output keeps its input's dtype and memory format, and the one pass is as close to the
    # float32 result as the loop under autocast is (both off by bf16 rounding, a few %).
    method, plain = resnet_moco(4)
    method = method.float().to(device, memory_format=torch.channels_last).train()
    plain = plain.float().to(device, memory_format=torch.channels_last).train()
    v = torch.randn(16, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    seen = {}
    method.encoder.bn1.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    with torch.no_grad():
        exact = grouped_loop(copy.deepcopy(plain["encoder"]), copy.deepcopy(plain["head"]), v, 4)
        with torch.autocast(device, dtype=torch.bfloat16):
            q = method.embed_query(v)
            ref = grouped_loop(plain["encoder"], plain["head"], v, 4)
    assert seen["y"].dtype == seen["x"].dtype and q.dtype == ref.dtype
    assert seen["y"].is_contiguous(memory_format=torch.channels_last)
    error = lambda t: float((t.float() - exact).norm() / exact.norm())  # noqa: E731
    assert error(q) < max(2 * error(ref), 0.02) and error(q) < 0.2, (error(q), error(ref))
    for name in ("running_mean", "running_var"):  # float32 buffers, from the same statistics
        got, want = getattr(method.encoder.bn1, name), getattr(plain["encoder"].bn1, name)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_compiles_in_one_graph(momentum):
    # torch.compile traces a grouped layer without a graph break (fullgraph), the running
    # statistics included (momentum None reads num_batches_tracked on the device).
    layer = group_batchnorms(nn.BatchNorm2d(4, momentum=momentum))
    eager = copy.deepcopy(layer)
    x = torch.randn(8, 4, 3, 3)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    for _ in range(2):
        with batchnorm_groups([layer], 2):
            y = compiled(x)
        with batchnorm_groups([eager], 2):
            ref = eager(x)
        torch.testing.assert_close(y, ref)
    for name, t in eager.state_dict().items():
        torch.testing.assert_close(layer.state_dict()[name], t)


def test_bad_groups_are_one_line_errors():
    layer = group_batchnorms(nn.BatchNorm1d(3)).train()
    for n, groups in [(4, 4), (6, 4)]:  # one value per channel in a group; 6 not divisible by 4
        with batchnorm_groups([layer], groups), pytest.raises(SSLKitError, match="2 val") as info:
            layer(torch.randn(n, 3))
        assert "\n" not in str(info.value)
    with pytest.raises(SSLKitError, match="BatchNorm3d") as info:  # not grouped: refused
        with batchnorm_groups([nn.Sequential(layer, nn.BatchNorm3d(3))], 2):
            pass
    assert "\n" not in str(info.value)
