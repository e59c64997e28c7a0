"""BatchNorm with batch statistics per group of the batch, in one pass: MoCo's shuffle-BN on one
device (its CIFAR-10 demo's SplitBatchNorm), without running the network once per group.

With ``groups = G`` a batch x (N, C, *) is cut into the G contiguous chunks ``x.chunk(G)`` (in
order, n = N / G samples each) and each chunk is normalised with its own statistics, exactly as
if the network had run G times on n samples. One call of torch's batch_norm does it, with the
groups placed side by side along the channels (a copy each way, kept in x's memory layout):

    torch.cat(x.chunk(G), dim=1)       (N, C, *) -> (n, G·C, *)   channel g·C + c holds
                                                                  channel c of group g
    batch_norm, weight and bias        (n, G·C, *) -> (n, G·C, *) each channel sees the
    repeated G times                                              n·prod(*) values of one group
    torch.cat(y.chunk(G, dim=1))       (n, G·C, *) -> (N, C, *)   the groups in order again

So the arithmetic per group and channel is BatchNorm's own (biased variance to normalise, its
gradient, its bf16 autocast). The running statistics move ONCE per call, to the mean over the
groups of the step each group's BatchNorm would have taken from the same running values:

    running_mean <- (1 - m) running_mean + m · mean over g of mean_g
    running_var  <- (1 - m) running_var  + m · mean over g of var_g       (unbiased, as BatchNorm)
    num_batches_tracked += 1             momentum None: m = 1 / num_batches_tracked, as BatchNorm

so evaluation normalises with an average over steps, not over the last groups of the last step.
Where BatchNorm uses its running statistics (eval mode), and with groups = 1, the layer is plain
BatchNorm; parameters, buffers and state_dict keys are BatchNorm's.

On a GPU one pass over N images keeps it busier than G passes over n; a CPU gains nothing
from larger batches and pays the two copies (a MoCo step there is a little slower).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sslkit.errors import SSLKitError


def grouped_batch_norm(bn: _BatchNorm, x: torch.Tensor, groups: int) -> torch.Tensor:
    """bn applied to x (N, C, *) with batch statistics per contiguous group of N / groups
    samples; when bn is training, its running statistics take one step (see the module)."""
    bn._check_input_dim(x)
    n, c = len(x) // groups, x.shape[1]
    if len(x) % groups or n * math.prod(x.shape[2:]) < 2:
        raise SSLKitError(f"BatchNorm in {groups} groups needs a batch that splits into groups "
                          f"with 2 values per channel or more (got {tuple(x.shape)}): use fewer "
                          "groups (bn_splits) or a larger batch")
    update = bn.training and bn.track_running_stats
    # momentum 1: these receive each group's batch mean and unbiased variance, (G·C,) each
    means = bn.running_mean.new_zeros(groups * c) if update else None
    variances = bn.running_var.new_ones(groups * c) if update else None
    repeat = (lambda t: t.repeat(groups)) if bn.affine else (lambda t: t)  # (C,) -> (G·C,)
    side_by_side = torch.cat(x.chunk(groups), dim=1)  # (n, G·C, *)
    y = F.batch_norm(side_by_side, means, variances, repeat(bn.weight), repeat(bn.bias),
                     training=True, momentum=1.0, eps=bn.eps)  # (n, G·C, *)
    if update:
        _step_running_stats(bn, means.view(groups, c), variances.view(groups, c))
    return torch.cat(y.chunk(groups, dim=1))  # (N, C, *), the groups in order again


@torch.no_grad()
def _step_running_stats(bn: _BatchNorm, means: torch.Tensor, variances: torch.Tensor) -> None:
    """One step of bn's running statistics towards the mean over the groups of each group's
    batch mean and unbiased variance, means and variances (G, C)."""
    bn.num_batches_tracked.add_(1)
    m = bn.momentum
    if m is None:  # cumulative average; a tensor, so the host never waits for the device
        m = 1.0 / bn.num_batches_tracked.to(bn.running_mean.dtype)
    bn.running_mean.mul_(1 - m).add_(m * means.mean(dim=0))  # (C,)
    bn.running_var.mul_(1 - m).add_(m * variances.mean(dim=0))


class _Grouped:
    """The forward of a grouped BatchNorm: per-group batch statistics while ``groups`` > 1,
    else the BatchNorm class it is mixed into."""

    groups = 1  # set by batchnorm_groups while a network runs in groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups > 1 and (self.training or self.running_mean is None):
            return grouped_batch_norm(self, x, self.groups)
        return super().forward(x)


class GroupedBatchNorm1d(_Grouped, nn.BatchNorm1d):
    """nn.BatchNorm1d that takes its batch statistics per group while ``groups`` > 1."""


class GroupedBatchNorm2d(_Grouped, nn.BatchNorm2d):
    """nn.BatchNorm2d that takes its batch statistics per group while ``groups`` > 1."""


GROUPED = {nn.BatchNorm1d: GroupedBatchNorm1d, nn.BatchNorm2d: GroupedBatchNorm2d}


def group_batchnorms(module: nn.Module) -> nn.Module:
    """module, with every nn.BatchNorm1d and nn.BatchNorm2d in it made a grouped one IN PLACE:
    the same layer objects, parameters, buffers and state_dict keys, plain BatchNorm until
    ``groups`` is set. Only the class changes (as torch.nn.utils.parametrize does)."""
    for m in module.modules():
        if type(m) in GROUPED:
            m.__class__ = GROUPED[type(m)]
    return module


@contextmanager
def batchnorm_groups(modules: Iterable[nn.Module], groups: int) -> Iterator[None]:
    """Inside the block, every grouped BatchNorm in `modules` takes its batch statistics per
    group of ``groups``. One-line error for any other BatchNorm layer, whose statistics would
    silently span the whole batch."""
    norms = [m for net in modules for m in net.modules() if isinstance(m, _BatchNorm)]
    grouped = [m for m in norms if isinstance(m, tuple(GROUPED.values()))]
    if groups > 1 and len(grouped) < len(norms):
        other = next(type(m).__name__ for m in norms if m not in grouped)
        raise SSLKitError(f"BatchNorm in {groups} groups works on BatchNorm1d and BatchNorm2d "
                          f"made grouped by group_batchnorms, not on {other}: use bn_splits=1")
    before = [m.groups for m in grouped]
    for m in grouped:
        m.groups = groups
    try:
        yield
    finally:
        for m, g in zip(grouped, before):
            m.groups = g
