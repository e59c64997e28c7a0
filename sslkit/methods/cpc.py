"""CPC (van den Oord et al., 2018; CPC v2: Hénaff et al., 2020): contrastive predictive coding.
Instance methods (SimCLR, MoCo) contrast two views of one image; CPC contrasts along a
*sequence*: from the context so far, predict what comes next, and recognise the true next item
among items from elsewhere in the batch.

Images become sequences by cutting them into a grid of overlapping patches and reading each
column from top to bottom:

    x (N, C, H, W)  --one random view per image, then patch_grid-->  (N, R, Cc, C, p, p)
      each patch augmented on its own (brightness; flips where the dataset allows them)
    z = g_enc(patch)          (N, R, Cc, D)   PatchEncoder, every patch encoded on its own
    c = g_ar(z down a column) (N, R, Cc, H)   a GRU per column: c[n, t, j] summarises rows <= t
    s_k(z', c_t) = z'ᵀ W_k c_t                W (K, D, H): one bilinear map per step k = 1..K
    loss = cpc_loss(z, c, W)                  positive z[n, t+k, j]; negatives: every other
                                              patch of the batch (see sslkit.losses.cpc_logits)

Two details from CPC v2 matter:
* no BatchNorm in g_enc: BN normalises a patch with statistics of the whole batch, which holds
  the positive and the other patches of its image, so information leaks between patches and
  the network can solve the task through it. ``PatchEncoder`` uses GroupNorm with one group
  (LayerNorm over each patch's channels and pixels): a patch's z depends on that patch only.
* per-patch augmentation: patches of one image share low-level cues (here: the image's overall
  brightness), which would identify the image without any understanding of its content. Each
  patch gets its own random brightness (and flip, for datasets where flips are allowed).

The representation for downstream tasks is ``CPCEncoder``: the mean of the context vectors c
over the grid (pool="context", as CPC v1 did for images) or of the patch encodings z
(pool="patches", closer to CPC v2). The same GRU-and-W machinery on a 1-D signal, where CPC is
at home, is ``SignalCPC`` with the toy data ``sinusoids``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslkit import distributed
from sslkit.augment import SimCLRViews, view_config_for
from sslkit.errors import SSLKitError
from sslkit.losses import cpc_logits, cpc_loss
from sslkit.precision import in_float32
from sslkit.transfer import to_device
from sslkit.unit_images import step_floats

# -- stages --------------------------------------------------------------------------------------


def patch_grid(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """images (N, C, H, W) -> patches (N, rows, cols, C, patch, patch), rows = (H - patch) /
    stride + 1 (cols likewise); patch [n, i, j] is images[n, :, i*stride : i*stride + patch,
    j*stride : j*stride + patch]. Patches overlap when stride < patch."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise SSLKitError(f"patch_grid: images must be (N, C, H, W), got {got}: add a batch "
                          "axis with x[None]")
    if patch < 1 or stride < 1:
        raise SSLKitError(f"patch_grid: patch and stride must be >= 1 (got {patch}, {stride})")
    for name, side in (("height", images.shape[2]), ("width", images.shape[3])):
        if side < patch or (side - patch) % stride:
            fit = patch + stride * max(0, round((side - patch) / stride))
            raise SSLKitError(f"patch_grid: {name} {side} is not tiled by patches of {patch} at "
                              f"stride {stride} ((side - patch) must be a multiple of stride): "
                              f"resize the images to {fit} or change patch/stride")
    grid = images.unfold(2, patch, stride).unfold(3, patch, stride)  # (N, C, R, Cc, p, p)
    return grid.permute(0, 2, 3, 1, 4, 5)  # (N, R, Cc, C, p, p)


class PatchEncoder(nn.Module):
    """g_enc: patches (P, C, p, p) -> z (P, dim). Three 3x3 convolutions (the second with stride
    2), each followed by GroupNorm(1, ·) -- LayerNorm over one patch's channels and pixels, never
    across patches -- and ReLU; a mean over positions; a linear map to dim."""

    def __init__(self, in_channels: int, width: int = 32, dim: int = 64):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(1, c_out),
                    nn.ReLU(inplace=True)]

        self.net = nn.Sequential(*block(in_channels, width), *block(width, 2 * width, stride=2),
                                 *block(2 * width, 2 * width))
        self.proj = nn.Linear(2 * width, dim)
        self.dim = dim

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(patches).mean(dim=(2, 3)))  # (P, dim)


def encode_patches(g_enc: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """patches (N, R, Cc, C, p, p) -> z (N, R, Cc, D): every patch through g_enc, in one batch."""
    return g_enc(patches.flatten(0, 2)).unflatten(0, patches.shape[:3])


def column_context(g_ar: nn.GRU, z: torch.Tensor) -> torch.Tensor:
    """z (N, R, Cc, D) -> c (N, R, Cc, H): a batch_first GRU run down every column, top to
    bottom, one sequence per (image, column). c[n, t, j] depends on z[n, :t+1, j] only."""
    n, rows, cols, d = z.shape
    seq = z.permute(0, 2, 1, 3).reshape(n * cols, rows, d)  # (N·Cc, R, D), one column each
    out, _ = g_ar(seq)  # (N·Cc, R, H)
    return out.reshape(n, cols, rows, -1).permute(0, 2, 1, 3)  # (N, R, Cc, H)


@in_float32
def cpc_loss_across_ranks(z: torch.Tensor, c: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """CPC's loss of this process's N images with every process's patches as candidates. One
    process: cpc_loss.

    z (N, R, Cc, D), c (N, R, Cc, H) on each of P processes; W (K, D, H). The candidates are the
    gathered z, flattened rank-major (P·N·R·Cc, D), so this process's patches start at row
    rank·N·R·Cc. Averaged over the processes (as DDP averages gradients), it is cpc_loss of the
    whole batch: the same negatives as one process would see."""
    if not distributed.is_distributed():
        return cpc_loss(z, c, W)
    n, rows, cols, d = z.shape
    candidates = distributed.gather_with_grad(z).reshape(-1, d)  # (P·N·R·Cc, D)
    offset = distributed.rank() * n * rows * cols
    return torch.stack([F.cross_entropy(logits, labels)
                        for logits, labels in cpc_logits(z, c, W, candidates, offset)]).mean()


@torch.no_grad()
def prediction_accuracy(z: torch.Tensor, c: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """(K,) top-1 accuracy per step k: the fraction of contexts whose positive scores strictly
    higher than all other N·R·Cc - 1 candidates (ties count as misses). Chance: 1 / (N·R·Cc)."""
    acc = []
    for logits, labels in cpc_logits(z, c, W):
        positive = logits.gather(1, labels[:, None]).squeeze(1)  # (P,)
        others = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values  # (P,)
        acc.append((positive > others).float().mean())
    return torch.stack(acc)


def augment_patches(patches: torch.Tensor, brightness: float = 0.4, flip_p: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """patches (N, R, Cc, C, p, p) in [0, 1] -> the same, each patch scaled by its own factor
    ~ U(1 - brightness, 1 + brightness) (clipped to [0, 1]) and mirrored with probability
    flip_p. Per-patch, not per-image: patches of one image must not share a cue the loss could
    use to recognise the image without looking at its content."""
    shape = (*patches.shape[:3], 1, 1, 1)
    factor = 1 - brightness + 2 * brightness * torch.rand(shape, generator=generator)
    out = (patches * to_device(factor, patches.device)).clamp(0, 1)
    if flip_p > 0:
        flip = to_device(torch.rand(shape, generator=generator) < flip_p, patches.device)
        out = torch.where(flip, out.flip(-1), out)
    return out


# -- modules -------------------------------------------------------------------------------------


class CPCEncoder(nn.Module):
    """The networks that stay after training: g_enc and g_ar, and the patch grid they read.

    forward(x) with x (N, C, H, W) floats in [0, 1] -> (N, feature_dim): x resized to size
    (if it is not already), cut into a grid, encoded, and the mean over the grid of the
    contexts c (pool="context") or of the patch encodings z (pool="patches").
    """

    def __init__(self, in_channels: int, size: int = 32, patch: int = 8, stride: int = 6,
                 width: int = 32, dim: int = 64, context_dim: int = 64, pool: str = "context"):
        super().__init__()
        if pool not in ("context", "patches"):
            raise SSLKitError(f"unknown pool {pool!r}: use 'context' or 'patches'")
        self.size, self.patch, self.stride, self.pool = size, patch, stride, pool
        self.g_enc = PatchEncoder(in_channels, width, dim)
        self.g_ar = nn.GRU(dim, context_dim, batch_first=True)
        self.feature_dim = context_dim if pool == "context" else dim

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> patches (N, R, Cc, C, p, p) of x resized to size x size."""
        channels = self.g_enc.net[0].in_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise SSLKitError(f"this CPC encoder takes images (N, {channels}, H, W), got shape "
                              f"{tuple(x.shape)}: build it with the images' in_channels")
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        return patch_grid(x, self.patch, self.stride)

    def encode(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (N, R, Cc, C, p, p) -> z (N, R, Cc, D), c (N, R, Cc, H)."""
        z = encode_patches(self.g_enc, patches)
        return z, column_context(self.g_ar, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, c = self.encode(self.grid(x))
        return (c if self.pool == "context" else z).mean(dim=(1, 2))  # (N, feature_dim)


class CPC(nn.Module):
    def __init__(
        self,
        encoder: CPCEncoder,
        views: SimCLRViews | None = None,  # one random view per image (None: the image itself)
        steps: int = 3,  # K: predict 1..K rows ahead (CPC on images: up to 5)
        brightness: float = 0.4,  # per-patch brightness jitter
        patch_flip_p: float = 0.0,  # per-patch horizontal flips (0 for digits)
        generator: torch.Generator | None = None,  # per-patch augmentation draws
    ):
        super().__init__()
        self.encoder = encoder
        dim, context_dim = encoder.g_enc.dim, encoder.g_ar.hidden_size
        self.W = nn.Parameter(torch.randn(steps, dim, context_dim) / (dim * context_dim) ** 0.5)
        self.views = views
        self.brightness, self.patch_flip_p = brightness, patch_flip_p
        self.generator = generator
        self._accuracy = torch.zeros(0)  # (K,) the last step's accuracies, on the device

    def make_patches(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) uint8 or [0, 1] floats -> augmented patches (N, R, Cc, C, p, p)."""
        x = step_floats(x, "CPC")  # float32 in [0, 1]
        if self.views is not None:
            x = self.views(x)
        return augment_patches(self.encoder.grid(x), self.brightness, self.patch_flip_p,
                               self.generator)

    def loss_on_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (N, R, Cc, C, p, p) -> scalar loss; the per-step accuracy goes to
        ``last_stats["accuracy"]`` (a list of K floats)."""
        z, c = self.encoder.encode(patches)
        loss = cpc_loss_across_ranks(z, c, self.W)  # cpc_loss in one process
        acc = prediction_accuracy(z.detach(), c.detach(), self.W.detach())
        self._accuracy = acc
        return loss

    @property
    def last_stats(self) -> dict[str, list[float]]:
        """The last step's accuracy of each prediction distance k = 1..K. It stays on the device
        until read here, so training never waits for it."""
        return {"accuracy": self._accuracy.tolist()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) images (uint8 or [0, 1] floats) -> scalar loss."""
        return self.loss_on_patches(self.make_patches(x))


def build_cpc(dataset: str, in_channels: int, width: int = 32, steps: int = 3,
              generator: torch.Generator | None = None) -> CPC:
    """CPC for a dataset, as ``sslkit train cpc`` builds it: 32x32 views (the dataset's crops
    and rotations, no colour jitter), 8x8 patches at stride 6 (a 5x5 grid, 2 px overlap),
    per-patch brightness jitter and the dataset's flip probability applied per patch."""
    cfg = view_config_for(dataset, 32)
    views = SimCLRViews(replace(cfg, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0),
                        generator)
    encoder = CPCEncoder(in_channels, size=32, patch=8, stride=6, width=width)
    return CPC(encoder, views, steps=steps, patch_flip_p=cfg.flip_p, generator=generator)


# -- CPC on a 1-D signal -----------------------------------------------------------------------

# Class y of ``sinusoids`` -> its two frequencies, in cycles per sample.
SIGNAL_FREQUENCIES = ((0.020, 0.090), (0.030, 0.130), (0.045, 0.070), (0.060, 0.110))


def sinusoids(n: int, length: int = 256, noise: float = 0.3,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n signals (n, 1, length) and their classes (n,): a latent class y in 0..3 picks two
    frequencies (SIGNAL_FREQUENCIES[y], each jittered by ±5 %); the signal is the sum of the two
    sinusoids with random amplitudes U(0.5, 1.5) and random phases, plus Gaussian noise. The
    phases are uniform, so the mean signal of every class is 0: the class is invisible to a
    linear model of the raw samples, but sets how the signal evolves over time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(SIGNAL_FREQUENCIES), size=n)
    freq = np.asarray(SIGNAL_FREQUENCIES)[y] * rng.uniform(0.95, 1.05, size=(n, 2))  # (n, 2)
    amp = rng.uniform(0.5, 1.5, size=(n, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 2))
    t = np.arange(length)
    x = (amp[:, :, None] * np.sin(2 * np.pi * freq[:, :, None] * t + phase[:, :, None])).sum(1)
    x = x + noise * rng.standard_normal((n, length))
    return torch.tensor(x, dtype=torch.float32)[:, None], torch.tensor(y, dtype=torch.int64)


class SignalCPC(nn.Module):
    """CPC on signals x (N, channels, L): a strided 1-D conv g_enc (8x downsampling, GroupNorm)
    gives z (N, T, D), T = L / 8; a GRU over time gives c (N, T, H); the loss is ``cpc_loss``
    with the time axis as the rows of a one-column grid, so the negatives are every other time
    step of every signal in the batch."""

    def __init__(self, channels: int = 1, width: int = 32, dim: int = 32, context_dim: int = 32,
                 steps: int = 4):
        super().__init__()
        self.g_enc = nn.Sequential(
            nn.Conv1d(channels, width, 8, stride=4, padding=2), nn.GroupNorm(1, width), nn.ReLU(),
            nn.Conv1d(width, width, 4, stride=2, padding=1), nn.GroupNorm(1, width), nn.ReLU(),
            nn.Conv1d(width, dim, 1),
        )
        self.g_ar = nn.GRU(dim, context_dim, batch_first=True)
        self.W = nn.Parameter(torch.randn(steps, dim, context_dim) / (dim * context_dim) ** 0.5)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, channels, L) -> z (N, T, D), c (N, T, H)."""
        channels = self.g_enc[0].in_channels
        if x.ndim != 3 or x.shape[1] != channels or x.shape[2] < 8:
            raise SSLKitError(f"SignalCPC takes signals (N, {channels}, L) with L >= 8 (one z per "
                              f"8 samples), got shape {tuple(x.shape)}")
        z = self.g_enc(x).transpose(1, 2)  # (N, T, D)
        c, _ = self.g_ar(z)  # (N, T, H)
        return z, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, c = self.encode(x)
        return cpc_loss(z[:, :, None], c[:, :, None], self.W)  # one column: (N, T, 1, ·)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, channels, L) -> the mean context over time (N, H), for a linear probe."""
        return self.encode(x)[1].mean(dim=1)
