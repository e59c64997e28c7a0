"""update_momentum per the contract: target <- m * target + (1 - m) * online."""

import copy

import pytest
import torch
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.methods.momentum import update_momentum


def nets():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.data.normal_()
    return online, target


@pytest.mark.parametrize("m", [0.0, 0.5, 0.99, 1.0])
def test_each_parameter_moves_to_the_weighted_average(m):
    online, target = nets()
    before_t = [p.clone() for p in target.parameters()]
    before_o = [p.clone() for p in online.parameters()]
    update_momentum(online, target, m)
    for t0, o0, t1, o1 in zip(before_t, before_o, target.parameters(), online.parameters()):
        assert torch.allclose(t1, m * t0 + (1 - m) * o0, atol=1e-6)
        assert torch.equal(o1, o0)  # the online network is untouched


def test_no_gradient_reaches_the_target_and_buffers_are_kept():
    online, target = nets()
    target.train()
    target(torch.randn(8, 4))  # its own running statistics
    running = target[1].running_mean.clone()
    online(torch.randn(8, 4)).sum().backward()
    update_momentum(online, target, 0.9)
    assert all(p.grad is None for p in target.parameters())
    assert all(not p.requires_grad or p.grad_fn is None for p in target.parameters())
    assert torch.equal(target[1].running_mean, running)


def test_bad_momentum_and_mismatched_networks_are_one_line_errors():
    online, target = nets()
    with pytest.raises(SSLKitError, match=r"\[0, 1\]"):
        update_momentum(online, target, 1.5)
    with pytest.raises(SSLKitError, match="deepcopy"):
        update_momentum(online, nn.Linear(4, 3), 0.9)
