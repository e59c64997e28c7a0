"""MoCo v1/v2 (He et al., 2020; Chen et al., 2020): a query encoder trained by gradient, a key
encoder that follows it as a moving average, and a FIFO queue of keys used as negatives.

    v1, v2 = two views of x                       (N, C, S, S) each
    q = g_q(f_q(v1))                              (N, D)   query network, trained
    update_momentum(query -> key, m)              BEFORE the key pass: θk <- m θk + (1-m) θq
    k = g_k(f_k(v2))  under no_grad               (N, D)   key network, never gets a gradient
    loss = moco_loss(q, k, queue, T)              positive k_i, negatives = the K queued keys
    enqueue(k)                                    AFTER the loss: the oldest N keys are replaced

Why a queue: the number of negatives K is decoupled from the batch size (65536 negatives at
batch 256), and since the key encoder moves slowly, keys of the last K/N batches are still
comparable with today's queries -- unlike a memory bank (InstDisc, PIRL), whose entries were
computed by encoders of up to an epoch ago.

v1 vs v2: v2 adds an MLP projection head, blur and a higher temperature (0.2 instead of 0.07,
here per-run). The head is the kit's ``projection_head`` (Linear-BN-ReLU-Linear, as SimCLR's
here; v2's own has no BatchNorm, and the CIFAR-10 demo has one linear layer), and evaluation
reads h, the encoder's output before it. The blur's sigma is given for 224-pixel images and
scaled to the view: at 32 px it is at most 0.29 pixel, next to no blur, as the demo's views.
``symmetric=True`` also swaps the roles of the views and sums both losses (as in the MoCo
CIFAR-10 demo); the keys of both views are enqueued.

BatchNorm leakage: with plain BN, the keys of a batch are normalised with statistics of the
same batch the positive comes from, and the network can "cheat" through them. Shuffle-BN
computes the key BN statistics on a different subset of samples than the query BN statistics:

    queries   each rank's N samples, in bn_splits groups in order (BN per group, per rank)
    keys      the key views of ALL ranks gathered (W·N), permuted by one permutation that
              every rank shares, rank r runs the key network on slice r of the permuted batch
              (again in bn_splits groups), then the keys are gathered and un-permuted, and
              rank r keeps the keys of its own N samples

So BatchNorm is never synchronised for MoCo (``per_rank_batchnorm``): there are W·bn_splits
groups in all, and one process with ``bn_splits = W·s`` computes exactly the keys that W ranks
with ``bn_splits = s`` compute, given the same permutation. One process with ``bn_splits=1``
has nothing to shuffle and skips it.

The bn_splits groups take ONE pass of the network, not one each: every BatchNorm layer
normalises each contiguous group v.chunk(bn_splits)[g] with that group's own statistics
(``sslkit.models.grouped_batchnorm``), exactly as one pass per group would, without the small
batches that leave a GPU idle.

Several processes: the keys of every rank are gathered before the queue update, so all ranks
enqueue the same keys in the same order and hold the same queue (a per-rank queue would give
each rank other negatives). Gradient accumulation: the key encoder moves at the first
micro-batch of an optimiser step only, and the keys of all micro-batches are enqueued together
after the last one, so every micro-batch sees the queue one big batch would have seen.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import distributed
from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.errors import SSLKitError
from sslkit.losses import moco_loss
from sslkit.methods.momentum import StepPosition, update_momentum
from sslkit.models.grouped_batchnorm import batchnorm_groups, group_batchnorms
from sslkit.models.heads import check_head_batch, projection_head


def moco_view_config(base: ViewConfig, version: str = "v2") -> ViewConfig:
    """v1: crops, flip, colour jitter of strength at most 0.5 (brightness, contrast and
    saturation 0.4, as MoCo v1; its hue is 0.1 here, v1's 0.4), grayscale; v2 adds Gaussian
    blur (p=0.5) and keeps the base jitter strength (SimCLR's recipe, p=0.8)."""
    if version == "v1":
        return replace(base, jitter_strength=min(base.jitter_strength, 0.5), blur_p=0.0)
    if version == "v2":
        return replace(base, blur_p=0.5)
    raise SSLKitError(f"unknown MoCo version {version!r}: use 'v1' or 'v2'")


def check_queue_size(queue_size: int, batch: int) -> None:
    """One-line error unless the queue holds a whole number of batches."""
    if batch <= 0 or queue_size % batch != 0:
        raise SSLKitError(f"MoCo queue size K={queue_size} is not divisible by the keys per step "
                          f"({batch}): use --option queue_size="
                          f"{max(batch, (queue_size // max(batch, 1)) * batch)}, a multiple of it")


def check_moco_options(options: dict) -> None:
    """One-line error naming the option and a valid value, for a size below 1, a momentum
    outside [0, 1] or a temperature <= 0 among `options` (keywords of MoCo's constructor),
    which would otherwise fail deep inside torch or train nothing useful."""
    examples = {"queue_size": "--option queue_size=4096 (a multiple of the batch size)",
                "bn_splits": "--option bn_splits=1 (no shuffle-BN)", "proj_dim": "--proj-dim 128",
                "hidden_dim": "--option hidden_dim=2048"}
    for name, example in examples.items():
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise SSLKitError(f"MoCo's {name} must be a whole number of at least 1 (got "
                              f"{value!r}): use e.g. {example}")
    if not 0 <= options.get("momentum", 0.99) <= 1:
        raise SSLKitError(f"MoCo's momentum must be in [0, 1] (got {options['momentum']}): use "
                          "e.g. --option momentum=0.99")
    if not options.get("temperature", 0.2) > 0:
        raise SSLKitError(f"MoCo's temperature must be positive (got {options['temperature']}): "
                          "use e.g. --temperature 0.2")


class MoCo(nn.Module, StepPosition):
    per_rank_batchnorm = True  # torchrun: BN statistics per rank, not synchronised

    def __init__(
        self,
        encoder: nn.Module,
        views: SimCLRViews,
        proj_dim: int = 128,
        hidden_dim: int | None = None,
        head: str = "mlp",  # v2: "mlp"; v1: "linear"
        temperature: float = 0.2,  # v2: 0.2; v1: 0.07
        queue_size: int = 4096,  # K negatives (65536 in the paper, 4096 in the CIFAR demo)
        momentum: float = 0.99,  # m of the key encoder (0.999 in the paper, 0.99 CIFAR demo)
        symmetric: bool = False,  # also use (v2 -> query, v1 -> key) and sum the two losses
        bn_splits: int = 1,  # > 1: emulate shuffle-BN with this many groups
    ):
        super().__init__()
        check_moco_options(dict(queue_size=queue_size, bn_splits=bn_splits, proj_dim=proj_dim,
                                hidden_dim=hidden_dim, momentum=momentum, temperature=temperature))
        # f_q, the representation kept after training, and g_q. Their BatchNorm layers become
        # grouped ones in place (still BatchNorm1d/2d, same state_dict), for bn_splits > 1.
        self.encoder = group_batchnorms(encoder)
        self.head = group_batchnorms(
            projection_head(encoder.feature_dim, proj_dim, hidden_dim, kind=head))
        self.key_encoder = copy.deepcopy(self.encoder)  # f_k
        self.key_head = copy.deepcopy(self.head)  # g_k
        for p in [*self.key_encoder.parameters(), *self.key_head.parameters()]:
            p.requires_grad_(False)  # updated by momentum only
        self.views = views
        self.temperature = temperature
        self.momentum = momentum
        self.symmetric = symmetric
        self.bn_splits = bn_splits
        out_dim = encoder.feature_dim if head == "none" else proj_dim
        queue = F.normalize(torch.randn(queue_size, out_dim), dim=1)  # (K, D) random unit keys
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: list[torch.Tensor] = []  # keys of this step's micro-batches

    def check_batch(self, per_forward: int, per_step: int) -> None:
        """One-line error, before training, for batches the queue or shuffle-BN cannot take.

        per_forward: images in one forward pass on this process; per_step: images in one
        optimiser step over all processes, whose keys are enqueued together (twice as many
        when symmetric)."""
        check_queue_size(self.queue.shape[0], 2 * per_step if self.symmetric else per_step)
        s = self.bn_splits
        if s > 1 and (per_forward % s or per_forward < 2 * s):  # BatchNorm needs 2 per group
            fits = max(d for d in range(1, per_forward // 2 + 1) if per_forward % d == 0)
            raise SSLKitError(f"bn_splits={s} needs the {per_forward} images of each forward "
                              f"pass to split evenly into {s} groups of at least 2: use --option "
                              f"bn_splits={fits} or a larger --batch-size")

    # -- stages -------------------------------------------------------------------------------

    def _grouped(self, encoder: nn.Module, head: nn.Module, v: torch.Tensor) -> torch.Tensor:
        """head(encoder(v)) with BatchNorm statistics per group of len(v) / bn_splits samples,
        the contiguous chunks v.chunk(bn_splits) in order, in ONE pass: each BatchNorm layer
        normalises each group with that group's statistics (sslkit.models.grouped_batchnorm),
        as if the network ran once per group. The running statistics move ONCE, by the mean of
        the groups' statistics (as MoCo's SplitBatchNorm): every group steps from the same
        running values and the results are averaged, so evaluation uses an average over steps,
        not over the last few groups of the last step."""
        s = self.bn_splits
        if s <= 1:
            return head(encoder(v))
        if len(v) % s:
            raise SSLKitError(f"bn_splits={s} needs a batch divisible by it (got {len(v)}): "
                              f"use a batch size that is a multiple of {s}")
        with batchnorm_groups((encoder, head), s):
            return head(encoder(v))  # (N, D)

    def embed_query(self, v: torch.Tensor) -> torch.Tensor:
        """v (N, C, S, S) -> q (N, D) through the query network (with gradient)."""
        check_head_batch(self.head, len(v), "MoCo query")  # its BatchNorm needs 2 images
        return self._grouped(self.encoder, self.head, v)

    @torch.no_grad()
    def embed_keys(self, v: torch.Tensor) -> torch.Tensor:
        """v (N, C, S, S) -> k (N, D) through the key network (no gradient), with shuffle-BN:
        the BatchNorm groups of the keys are a random permutation of every rank's samples."""
        if self.bn_splits <= 1 and not distributed.is_distributed():
            return self.key_head(self.key_encoder(v))  # one group: nothing to shuffle
        everyone = distributed.gather(v)  # (W·N, C, S, S), rank-major
        perm = distributed.broadcast(torch.randperm(len(everyone), device=v.device))  # (W·N,)
        mine = distributed.shard(everyone[perm])  # this rank's slice of the permuted batch
        keys = distributed.gather(self._grouped(self.key_encoder, self.key_head, mine))
        return distributed.shard(keys[torch.argsort(perm)])  # un-permuted; this rank's (N, D)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θk <- m θk + (1 - m) θq for the encoder and the head."""
        update_momentum(self.encoder, self.key_encoder, self.momentum)
        update_momentum(self.head, self.key_head, self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (B, D) over the oldest B rows of the queue; the pointer wraps around.

        The pointer stays on the device: reading it here (``int(self.queue_ptr)``) would make the
        host wait for the GPU at every step. The rows are indexed by a device tensor instead."""
        queue_size, b = self.queue.shape[0], keys.shape[0]
        check_queue_size(queue_size, b)
        rows = (self.queue_ptr + torch.arange(b, device=self.queue.device)) % queue_size  # (B,)
        self.queue[rows] = keys.detach().to(self.queue.dtype)  # moco_loss normalises
        self.queue_ptr.add_(b).remainder_(queue_size)

    def loss_on_views(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """One MoCo loss: momentum update, keys, loss against the queue, then enqueue."""
        n = len(v1) * distributed.world_size()  # keys per step from all ranks
        check_queue_size(self.queue.shape[0], 2 * n if self.symmetric else n)
        q1 = self.embed_query(v1)  # (N, D)
        if self.first_micro_batch:
            self.momentum_update()  # before the key pass, once per optimiser step
        k2 = self.embed_keys(v2)  # (N, D)
        negatives = self.queue.clone()  # (K, D), the state before this batch is enqueued
        loss = moco_loss(q1, k2, negatives, self.temperature)
        keys = k2
        if self.symmetric:
            q2, k1 = self.embed_query(v2), self.embed_keys(v1)
            loss = loss + moco_loss(q2, k1, negatives, self.temperature)
            keys = torch.cat([k2, k1])
        self._pending_keys.append(keys.detach())
        if self.last_micro_batch:  # after the loss; every rank's keys, so one shared queue
            self.enqueue(distributed.gather(torch.cat(self._pending_keys)))
            self._pending_keys = []
        return loss

    def forward(self, x) -> torch.Tensor:
        """x (N, C, H, W) images (uint8 or [0, 1] floats) -> scalar loss; or x = (v1, v2), views
        already made."""
        v1, v2 = x if isinstance(x, (tuple, list)) else self.views.two_views(x)
        return self.loss_on_views(v1, v2)
