"""The exponential moving average that MoCo's key encoder and DINO's teacher follow.

    target <- m * target + (1 - m) * online      parameter by parameter, no gradient

With m close to 1 the target changes slowly, so the keys (MoCo) or the teacher's outputs (DINO)
computed at different steps stay consistent with each other. Buffers such as BatchNorm's
running statistics are not averaged: the target keeps its own.
"""

from __future__ import annotations

import torch
from torch import nn

from sslkit.errors import SSLKitError


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online for every parameter; online is not changed."""
    if not 0.0 <= m <= 1.0:
        raise SSLKitError(f"momentum m must be in [0, 1] (got {m}): use e.g. 0.99 (MoCo's key "
                          "encoder: 0.99-0.999; DINO's teacher: 0.996, rising to 1)")
    online_params, target_params = list(online.parameters()), list(target.parameters())
    if len(online_params) != len(target_params) or any(
        a.shape != b.shape for a, b in zip(online_params, target_params)
    ):
        raise SSLKitError(
            "update_momentum needs two copies of the same network: make the target with "
            "copy.deepcopy(online)"
        )
    # The same two operations for every parameter, as two multi-tensor kernels on a GPU
    # (torch.optim's own fast path) instead of two launches per parameter.
    torch._foreach_mul_(target_params, m)
    torch._foreach_add_(target_params, [p.detach() for p in online_params], alpha=1 - m)


class StepPosition:
    """Where the current forward sits in its optimiser step, for methods with a moving average.

    Under gradient accumulation one optimiser step is several forwards (micro-batches). The EMA
    (MoCo's key encoder, DINO's teacher) must move once per optimiser step -- at the first
    micro-batch, before the target's pass -- and per-step state (MoCo's queue, DINO's centre
    and step counter) is updated once, at the last micro-batch, from every micro-batch of the
    step. Methods inherit these two flags; the training loop sets them with
    ``set_step_position``. Both True (the default): one forward per step, as without
    accumulation.
    """

    first_micro_batch: bool = True
    last_micro_batch: bool = True


def set_step_position(module: nn.Module, first: bool, last: bool) -> None:
    """Tell every StepPosition inside module whether this forward is the first and/or the last
    micro-batch of its optimiser step."""
    for m in module.modules():
        if isinstance(m, StepPosition):
            m.first_micro_batch, m.last_micro_batch = first, last
