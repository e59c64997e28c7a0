"""DINO (Caron et al., 2021): self-distillation with no labels. A student network is trained to
predict, from any crop of an image, the output of a teacher network on a global crop of the same
image; the teacher is an exponential moving average (EMA) of the student, never trained by
gradient.

    crops = 2 global (large) + n_local (small) views of x     global crops first
    s_v = g_s(f_s(crop_v))              (N, K) for every crop      student, with gradient
    update_momentum(student -> teacher, m[step])                   BEFORE the teacher pass
    t_g = g_t(f_t(crop_g))              (N, K) for global crops    teacher, no gradient
    loss = dino_loss(s, t, center, student_temp, teacher_temp[step])
    center <- c * center + (1 - c) * mean of the teacher outputs over the batch   AFTER the loss

Two ways to collapse, and the two tricks that stop them:
* one dimension dominates (every image -> the same one-hot): centring subtracts the running
  mean of the teacher outputs, so no dimension can win for all images;
* uniform output (every image -> the same flat distribution): sharpening, a teacher temperature
  lower than the student's, pushes the teacher towards peaked distributions.
Centring alone pushes towards uniform, sharpening alone towards one dimension; used together
they balance. ``centering`` and ``sharpening`` switch each off for the collapse experiment, and
``last_stats`` holds the two diagnostics: the teacher's output entropy and KL(teacher || student).

Crops: global crops cover a fraction (0.4, 1) of the image and local ones (0.05, 0.4), DINO's
ViT defaults; ``min_global_scale`` moves the split (0.14 in the authors' ResNet recipe, which
the gpu profile uses). The schedules are per optimiser step: teacher momentum by a cosine from
``momentum`` to 1, teacher temperature by a linear warm-up then constant. DINO's weight decay
0.04 -> 0.4 belongs to its AdamW ViT recipe; the shared training loop keeps the weight decay
constant, as DINO's ResNet recipe does with SGD.

Several processes: the centre moves towards the mean teacher output over the batches of all
ranks (all-reduced), so it stays the same on every rank. Gradient accumulation: the teacher
moves at the first micro-batch of an optimiser step, and the centre and the schedule step move
once, after the last micro-batch, with the mean over all micro-batches of the step.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslkit import distributed
from sslkit.augment import PerImageViews, SimCLRViews, ViewConfig, view_input
from sslkit.errors import SSLKitError
from sslkit.losses import dino_loss
from sslkit.methods.momentum import StepPosition, update_momentum
from sslkit.methods.options import check_options
from sslkit.precision import in_float32
from sslkit.schedules import cosine_schedule


def teacher_temp_schedule(warmup_temp: float, final_temp: float, warmup_steps: int,
                          total_steps: int) -> np.ndarray:
    """(total_steps,) teacher temperatures: linear warmup_temp -> final_temp, then constant."""
    warmup = min(warmup_steps, total_steps)
    ramp = np.linspace(warmup_temp, final_temp, warmup) if warmup else np.zeros(0)
    return np.concatenate([ramp, np.full(total_steps - warmup, final_temp)])


def momentum_schedule(base: float, total_steps: int) -> np.ndarray:
    """(total_steps,) teacher momentum: cosine from base up to 1, as in DINO."""
    return cosine_schedule(base, 1.0, 1, max(total_steps, 1))


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: list[torch.Tensor],
                  momentum: float = 0.9) -> torch.Tensor:
    """center (1, K) <- momentum * center + (1 - momentum) * mean over every teacher row (of
    every rank, under torchrun: the ranks hold batches of the same size, so the mean of their
    means is the mean over the whole batch)."""
    batch_mean = torch.cat(teacher_out).mean(dim=0, keepdim=True)  # (1, K)
    batch_mean = distributed.all_reduce_mean(batch_mean)
    return center * momentum + batch_mean * (1 - momentum)


class WeightNormLinear(nn.Module):
    """Linear layer with unit-norm weight rows and no bias: weight_norm with the gain g fixed to
    1 (DINO's ``norm_last_layer``), which stabilises training.

    It computes in float32 even under bfloat16 autocast (CUDA): its outputs are the logits the
    teacher divides by 0.04, which magnifies their rounding 25-fold. bfloat16 rounds a logit
    by up to 2^-9 of it, 8 times more than the float16 autocast DINO's code trains with (a
    logit near 1 would be off by up to 0.05 after the division). The cost is one
    (N, 256) x (256, K) matmul per pass in float32."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) * in_dim ** -0.5)

    @in_float32
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))  # (N, out_dim)


class DINOHead(nn.Module):
    """h (N, in_dim) -> MLP -> bottleneck -> L2-normalise -> weight-normalised layer -> (N, K)."""

    def __init__(self, in_dim: int, out_dim: int = 256, hidden_dim: int = 256,
                 bottleneck_dim: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(h), dim=1))


class MultiCropViews(nn.Module):
    """x (N, C, H, W) -> [2 global crops (N, C, S, S)] + [n_local crops (N, C, s, s)]."""

    def __init__(self, cfg: ViewConfig = ViewConfig(), n_local: int = 4, local_size: int = 16,
                 global_scale: tuple[float, float] = (0.4, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.4),
                 generator: torch.Generator | None = None):
        super().__init__()
        self.n_local = n_local
        self.global_views = SimCLRViews(replace(cfg, crop_scale=global_scale), generator)
        self.local_views = SimCLRViews(replace(cfg, size=local_size, crop_scale=local_scale),
                                       generator)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = view_input(x, "MultiCropViews")  # float32 in [0, 1], converted once for every crop
        return ([self.global_views(x) for _ in range(2)]
                + [self.local_views(x) for _ in range(self.n_local)])

    def per_image(self) -> PerImageViews:
        """The same crops for one image with torchvision (the DataLoader path)."""
        return PerImageViews([self.global_views.cfg] * 2 + [self.local_views.cfg] * self.n_local)

    def split_at(self, scale: float) -> MultiCropViews:
        """The same crops (sizes, number, augmentation, random stream) with global crops of
        scale (scale, 1) and local crops of (0.05, scale), as both of DINO's recipes split
        them: at 0.4 for ViTs (the defaults here), at 0.14 for ResNets."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.05 < scale <= 1:
            raise SSLKitError(f"DINO's min_global_scale must be a number in (0.05, 1] (got "
                              f"{scale!r}): use e.g. --option min_global_scale=0.14 (DINO's "
                              "ResNet crops) or 0.4 (its ViT crops)")
        return MultiCropViews(self.global_views.cfg, self.n_local, self.local_views.cfg.size,
                              (float(scale), 1.0), (0.05, float(scale)),
                              self.global_views.generator)


class DINO(nn.Module, StepPosition):
    def __init__(
        self,
        encoder: nn.Module,
        views: MultiCropViews,
        out_dim: int = 256,  # K, the number of output "prototypes" (65536 in the paper)
        hidden_dim: int = 256,
        bottleneck_dim: int = 64,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,  # final teacher temperature (sharpening)
        warmup_teacher_temp: float = 0.04,  # DINO: 0.04, warmed up to 0.07 for ViT-S in 30 ep.
        warmup_steps: int = 0,
        total_steps: int = 1000,  # length of the schedules (the last value is kept after it)
        momentum: float = 0.996,  # teacher EMA momentum at step 0, cosine to 1
        center_momentum: float = 0.9,
        centering: bool = True,
        sharpening: bool = True,  # False: the teacher uses the student's temperature
        clip_grad: float = 0.0,  # clip each student parameter's gradient norm (DINO: 3.0); 0: off
        freeze_last_layer_epochs: int = 0,  # the last layer is not updated in these first
        #                                     epochs (DINO: 1), which stabilises the start
        steps_per_epoch: int = 0,  # optimiser steps per epoch (the training loop sets it)
        min_global_scale: float | None = None,  # global crops of scale (s, 1), local crops
        #                                         (0.05, s); None: the views' own (DINO's ViT
        #                                         split, 0.4); its ResNet recipe: 0.14
    ):
        super().__init__()
        check_options(DINO, dict(
            out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
            student_temp=student_temp, teacher_temp=teacher_temp,
            warmup_teacher_temp=warmup_teacher_temp, warmup_steps=warmup_steps,
            total_steps=total_steps, momentum=momentum, center_momentum=center_momentum,
            clip_grad=clip_grad, freeze_last_layer_epochs=freeze_last_layer_epochs,
            steps_per_epoch=steps_per_epoch))
        if min_global_scale is not None:
            views = views.split_at(min_global_scale)
        self.min_global_scale = min_global_scale
        self.encoder = encoder  # student backbone, the representation kept after training
        self.head = DINOHead(encoder.feature_dim, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_encoder = copy.deepcopy(encoder)  # a separate copy, never the same object
        self.teacher_head = copy.deepcopy(self.head)
        for p in [*self.teacher_encoder.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)  # updated by EMA only
        self.views = views
        self.student_temp = student_temp
        self.centering, self.sharpening = centering, sharpening
        self.center_momentum = center_momentum
        self.teacher_temps = teacher_temp_schedule(warmup_teacher_temp, teacher_temp,
                                                   warmup_steps, total_steps)
        self.momentums = momentum_schedule(momentum, total_steps)
        self.clip_grad = clip_grad
        self.frozen_last_layer_steps = freeze_last_layer_epochs * steps_per_epoch
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # saved in checkpoints
        # The same count on the host, for the schedules: reading the buffer at every step would
        # make the host wait for the GPU. It follows the buffer when a checkpoint is loaded.
        self._host_step = 0
        self.register_load_state_dict_post_hook(_read_step)
        self._stats: dict[str, torch.Tensor] = {}  # the last step's diagnostics, on the device
        self._pending_teacher: list[torch.Tensor] = []  # this step's teacher outputs so far

    # -- stages -------------------------------------------------------------------------------
    def _at(self, schedule: np.ndarray) -> float:
        return float(schedule[min(self._host_step, len(schedule) - 1)])

    def student_outputs(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """One pass per crop size (global crops together, local crops together)."""
        out = []
        for group in (crops[:2], crops[2:]):
            if group:
                out += self.head(self.encoder(torch.cat(group))).chunk(len(group))
        return out

    @torch.no_grad()
    def teacher_outputs(self, global_crops: list[torch.Tensor]) -> list[torch.Tensor]:
        z = self.teacher_head(self.teacher_encoder(torch.cat(global_crops)))
        return list(z.chunk(len(global_crops)))

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self._at(self.momentums)
        update_momentum(self.encoder, self.teacher_encoder, m)
        update_momentum(self.head, self.teacher_head, m)

    def teacher_temp(self) -> float:
        return self._at(self.teacher_temps) if self.sharpening else self.student_temp

    @torch.no_grad()
    def _diagnostics(self, s_out, t_out, teacher_temp: float) -> None:
        """Teacher entropy and KL(teacher || student) over the (global teacher, other crop)
        pairs, in nats, stored in ``last_stats``."""
        p_t = [F.softmax((t - self.center) / teacher_temp, dim=-1) for t in t_out]
        ent = torch.stack([-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean() for p in p_t])
        kls = [F.kl_div(F.log_softmax(s / self.student_temp, dim=-1), p, reduction="batchmean")
               for g, p in enumerate(p_t) for v, s in enumerate(s_out) if v != g]
        self._stats = {"teacher_entropy": ent.mean(), "kl": torch.stack(kls).mean()}

    @property
    def last_stats(self) -> dict[str, float]:
        """The last step's teacher entropy and KL(teacher || student), in nats. They stay on the
        device until read here, so training never waits for them."""
        return {name: float(value) for name, value in self._stats.items()}

    def loss_on_crops(self, crops: list[torch.Tensor]) -> torch.Tensor:
        if len(crops) < 2:
            raise SSLKitError("DINO needs at least the 2 global crops")
        s_out = self.student_outputs(crops)  # V x (N, K)
        if self.first_micro_batch:
            self.momentum_update()  # before the teacher pass, once per optimiser step
        t_out = self.teacher_outputs(crops[:2])  # 2 x (N, K)
        temp = self.teacher_temp()
        loss = dino_loss(s_out, t_out, self.center, self.student_temp, temp)
        self._diagnostics([s.detach() for s in s_out], t_out, temp)
        self._pending_teacher += [t.detach().float() for t in t_out]
        if self.last_micro_batch:  # once per optimiser step, from all its micro-batches
            if self.centering:
                self.center.copy_(update_center(self.center, self._pending_teacher,
                                                self.center_momentum))
            self._pending_teacher = []
            self.step += 1
            self._host_step += 1
        return loss

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """The training loop calls this after the step's backward passes, before the optimiser
        step: each student parameter's gradient is scaled down to norm clip_grad if it is
        larger, and during the first frozen_last_layer_steps steps the last layer's gradient
        is dropped (the optimiser then leaves it as it is: no momentum, no weight decay)."""
        if self.clip_grad > 0:
            for p in (*self.encoder.parameters(), *self.head.parameters()):
                if p.grad is not None:  # scale = min(1, clip / |g|), no host read of |g|
                    p.grad.mul_((self.clip_grad / (p.grad.norm() + 1e-6)).clamp(max=1.0))
        if 0 < self._host_step <= self.frozen_last_layer_steps:  # _host_step counts this step
            for p in self.head.last_layer.parameters():
                p.grad = None

    def forward(self, x) -> torch.Tensor:
        """x (N, C, H, W) images (uint8 or [0, 1] floats) -> scalar loss; or x = the list of
        crops already made (2 global first)."""
        return self.loss_on_crops(list(x) if isinstance(x, (tuple, list)) else self.views(x))


def _read_step(dino: DINO, incompatible_keys) -> None:
    """After load_state_dict: the host's step count follows the loaded buffer (one read)."""
    dino._host_step = int(dino.step)
