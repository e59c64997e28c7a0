"""Several processes with torchrun and DistributedDataParallel (DDP). Opt-in: with one process
(no torchrun, or ``--nproc-per-node 1``) every function here is the identity -- it returns its
input, rank 0 of world size 1 -- and nothing talks to anything.

    torchrun --nproc-per-node 4 -m sslkit train simclr --dataset cifar10 --out runs/simclr

What several processes change, and where it is handled:

    data        every rank draws the same permutation; rank r takes slice r of each batch
                (``shard``), so the ranks together see exactly the batch one process would
    gradients   DDP averages them over the ranks after backward (``wrap``)
    BatchNorm   statistics over the whole global batch, as on one device (``sync_batchnorm``)
    SimCLR      embeddings gathered WITH gradient (``gather_with_grad``), so each anchor has
                the negatives of every rank; its positive sits at an index offset by rank
    MoCo        keys gathered before the queue update, so every rank holds the same queue;
                shuffle-BN: key views permuted across ranks (``gather``, ``broadcast``)
    DINO        the centre is the mean over every rank's teacher outputs (``all_reduce_mean``)
    EMA         once per optimiser step, identical on every rank (same weights, same momentum)
    files       only rank 0 logs, evaluates and writes checkpoints (``is_main``)

Gradient of a gather. ``all_gather`` has no backward. Rank r's loss depends on the gathered
copy of every rank's embeddings, so the gradient that reaches rank r's own embeddings is the
SUM over ranks of the gradients of their losses with respect to rank r's slice: backward
all-reduces (sums) the incoming gradient and keeps the local slice. DDP then divides by the
world size, which turns the sum of the rank losses into their mean -- the loss of the whole
batch when each rank's loss is a mean over its own anchors.
"""

from __future__ import annotations

import inspect
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sslkit.errors import SSLKitError


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the process that logs, evaluates and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (env:// rendezvous); the identity otherwise.

    CUDA: NCCL, one GPU per process (cuda:LOCAL_RANK). CPU: gloo. Returns the device to use."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise SSLKitError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s): "
                              "use --nproc-per-node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Collectives


class _GatherWithGrad(torch.autograd.Function):
    """forward: (n, ...) on each rank -> (world * n, ...) rank-major.
    backward: sum the incoming gradients over ranks, keep this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # A copy: autograd may hand this same tensor to another backward too (x + y of two
        # gathers), which must not see it summed already.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss used this rank's rows
        n = grad.shape[0] // dist.get_world_size()
        return grad[rank() * n : (rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """x (n, ...) -> (world * n, ...) the rows of every rank in rank order, differentiable.

    Needs the same n on every rank. One process: x itself."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """x (n, ...) -> (world * n, ...) the rows of every rank in rank order, no gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over the ranks (a new tensor, same shape). One process: x itself."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


@torch.no_grad()
def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank src's x on every rank (x must have the same shape and dtype everywhere)."""
    if not is_distributed():
        return x
    x = x.contiguous()
    dist.broadcast(x, src)
    return x


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is again the sum over ranks (every rank's output depends on
    every rank's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x) if is_distributed() else x


# ---------------------------------------------------------------------------------------------
# Data and model


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a global batch (B, ...) -> (B / world, ...). On a batch of indices
    it is the distributed sampler; every rank must pass the same batch (the same seeded
    permutation)."""
    w = world_size()
    if len(batch) % w:
        raise SSLKitError(f"batch of {len(batch)} images cannot be split over {w} processes: "
                          f"use a --batch-size divisible by {w}")
    n = len(batch) // w
    return batch[rank() * n : (rank() + 1) * n]


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are taken over the batches of ALL ranks, on any
    device (torch's SyncBatchNorm is GPU-only; this one also runs on CPU with gloo).

    Per channel, in two passes: the sum and the count are all-reduced (with gradient), giving
    the mean; then the sum of squared deviations from that mean, giving the variance (biased,
    used to normalise; the running variance gets the unbiased n / (n - 1) version, as
    BatchNorm does). Not E[x^2] - mean^2 in one pass: in float32 that loses the variance when
    a channel's mean is large against its spread (off by 0.2 at a mean of 1000). Computed in
    float32, or in float64 for float64 input (as BatchNorm). One process or eval mode:
    BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.ndim < 2:
            raise SSLKitError(f"BatchNorm needs (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [d for d in range(x.ndim) if d != 1]  # every axis but the channels
        c = x.shape[1]
        shape = [1, c] + [1] * (x.ndim - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # half -> float32; float64 kept
        count = torch.full((1,), xf.numel() / c, device=x.device, dtype=xf.dtype)
        sums = all_reduce_sum_with_grad(torch.cat([xf.sum(dims), count]))  # (C + 1,)
        n = sums[c]
        mean = sums[:c] / n  # (C,)
        centred = xf - mean.view(shape)
        var = all_reduce_sum_with_grad((centred * centred).sum(dims)) / n  # (C,)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / float(
                    self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer replaced by one with statistics over all ranks: torch's
    SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere. One process: module unchanged."""
    if not is_distributed():
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        new = new.to(next(iter(module.state_dict().values()), torch.empty(0)).device)
        for p_new, p_old in zip(new.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around module (gradients averaged over ranks). One process:
    module itself.

    broadcast_buffers=False: each rank keeps its own buffers. MoCo's queue, DINO's centre and
    (with synchronised BatchNorm) the running statistics are kept equal by the methods
    themselves, so a broadcast from rank 0 would only hide a bug."""
    if not is_distributed():
        return module
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.14 renamed the switch (the old name warns). The new one still copies rank 0's
    # buffers once, at construction: harmless, every rank holds the same ones then (same seed,
    # or the same checkpoint).
    if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:
        return ddp(module, device_ids=ids, forward_sync_buffers=False)
    return ddp(module, device_ids=ids, broadcast_buffers=False)
