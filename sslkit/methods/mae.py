"""MAE (He et al., 2021): masked autoencoders. Hide most patches of an image, encode the few
that remain, and reconstruct the pixels of the hidden ones.

    patches = patchify(x, p)                        (N, L, p*p*C)   L = (S/p)^2
    tokens = patch_embed(patches) + pos             (N, L, D)
    kept, mask, ids_restore = random_masking(tokens, mask_ratio)
                                                    kept (N, L_keep, D), L_keep = int(L (1 - r))
    latent = encoder blocks([CLS] + kept)           (N, 1 + L_keep, D)   visible patches ONLY
    y = decoder_embed(latent)                       (N, 1 + L_keep, D')  D' < D
    y = un-shuffle(y + shared mask tokens) + pos'   (N, 1 + L, D')       every position again
    pred = decoder_pred(decoder blocks(y))[:, 1:]   (N, L, p*p*C)
    loss = mae_loss(pred, patches, mask, norm_pix)  MSE on the masked patches only

The design is asymmetric: the encoder, which we keep, never sees a mask token and processes
only the visible quarter of the patches at mask ratio 0.75, so pre-training costs about a
quarter of a full pass; the decoder, thrown away after pre-training, is narrower and shallower
and is the only part that sees every position.

Position embeddings are the fixed 2-D sine-cosine ones of MAE (half of the dimensions encode
the patch row, half the column), in the encoder and in the decoder. Fixed rather than learnt
because the decoder's mask tokens are all the same vector: their position embedding is the only
thing that tells one hidden patch from another, so it must say where the patch is from the
first step; and a learnt table would have to discover the 2-D grid from a reconstruction loss
on a few thousand images.

The encoder is ``self.encoder``, an ``sslkit.models.vit.ViT`` whose position table holds the
sine-cosine values (frozen): ``self.encoder(x)`` is the representation of a whole, unmasked
image (its final [CLS] token), which ``sslkit.evaluate`` extracts, probes and fine-tunes.

Augmentation: random resized crop (scale 0.2-1) and flip only (no colour jitter: the target is
the pixels). The paper's optimiser is AdamW with betas (0.9, 0.95), lr 1.5e-4 x B/256 and
weight decay 0.05, none on biases and norm weights (its code decays the [CLS] and mask tokens;
the position embeddings here are fixed, so nothing decays them): ``sslkit train mae --profile
gpu`` sets all of it (sslkit.recipes), and ``--optimizer adamw --adam-beta2 0.95
--weight-decay 0.05`` does in another profile.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from sslkit.augment import ViewConfig
from sslkit.errors import SSLKitError
from sslkit.losses import mae_loss
from sslkit.methods.options import check_options, fix
from sslkit.models.vit import Block, ViT, patchify, random_masking, unpatchify
from sslkit.unit_images import step_floats

__all__ = ["MAE", "mae_view_config", "patchify", "random_masking", "sincos_pos_embed",
           "unpatchify"]


def mae_view_config(base: ViewConfig) -> ViewConfig:
    """MAE's augmentation: random resized crop with scale 0.2-1 and the dataset's flip only."""
    return replace(base, crop_scale=(0.2, 1.0), rotate_degrees=0.0, jitter_p=0.0, gray_p=0.0,
                   blur_p=0.0)


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions (M,) -> (M, dim): sin(pos * w_i) in the first half, cos in the second, with
    frequencies w_i = 10000^(-i / (dim/2)), i = 0 .. dim/2 - 1 (Vaswani et al., 2017)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))  # (dim/2,)
    angles = positions.double()[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings -> (1 + grid*grid, dim), or (grid*grid, dim)
    without the [CLS] row (which is all zeros). Patches in row-major order, as patchify puts
    them: the first dim/2 values encode the row, the last dim/2 the column."""
    if dim % 4:
        raise SSLKitError(f"2-D sine-cosine position embeddings need a dimension divisible by 4, "
                          f"got {dim}: use e.g. {dim + (-dim) % 4}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, rows.flatten()), _sincos_1d(dim // 2, cols.flatten())],
                    dim=1)  # (grid*grid, dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb])
    return emb.float()


def _check_width(key: str, width: int, heads_key: str, heads: int, mlp_ratio: float) -> None:
    """One-line error unless a transformer of width `width` fits: divisible by 4 (its 2-D
    sine-cosine positions), by its number of heads (each takes width / heads values), and with
    an MLP of at least one unit (int(width * mlp_ratio))."""
    if width % 4:
        good = width + (-width) % math.lcm(4, heads)
        raise SSLKitError(f"MAE's {key}={width} must be divisible by 4 (its 2-D sine-cosine "
                          f"positions) and by {heads_key}={heads}: use e.g. {fix(key, good)}")
    if width % heads:
        good = max(h for h in range(1, heads + 1) if width % h == 0)
        raise SSLKitError(f"MAE's {key}={width} must be divisible by {heads_key}={heads} (each "
                          f"attention head takes {key} / {heads_key} values): use e.g. "
                          f"{fix(heads_key, good)}")
    if int(width * mlp_ratio) < 1:
        raise SSLKitError(f"MAE's mlp_ratio={mlp_ratio} leaves the MLP of its {key}={width} "
                          f"blocks no unit (int({width} x {mlp_ratio}) = 0): use e.g. "
                          f"{fix('mlp_ratio', 2.0)}")


class MAE(nn.Module):
    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,  # 8x8 = 64 patches of a 32x32 image
        in_channels: int = 3,
        dim: int = 64,  # encoder width (ViT-Base: 768)
        depth: int = 4,  # encoder blocks (ViT-Base: 12)
        heads: int = 4,
        decoder_dim: int = 32,  # narrower decoder (paper: 512)
        decoder_depth: int = 2,  # shallower decoder (paper: 8)
        decoder_heads: int = 4,
        mlp_ratio: float = 2.0,
        mask_ratio: float = 0.75,
        norm_pix: bool = True,  # normalise each target patch (MAE's norm_pix_loss)
        views: nn.Module | None = None,  # augmentation; None: the images as they are
    ):
        super().__init__()
        check_options(MAE, dict(image_size=image_size, patch_size=patch_size,
                                in_channels=in_channels, dim=dim, depth=depth, heads=heads,
                                decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                                decoder_heads=decoder_heads, mlp_ratio=mlp_ratio,
                                mask_ratio=mask_ratio))
        _check_width("dim", dim, "heads", heads, mlp_ratio)
        _check_width("decoder_dim", decoder_dim, "decoder_heads", decoder_heads, mlp_ratio)
        if image_size % patch_size:
            raise SSLKitError(f"image size {image_size} is not a multiple of the patch size "
                              f"{patch_size}: use a side that is (--image-size), or a patch size "
                              "that divides it (--option patch_size=P)")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.mask_ratio, self.norm_pix, self.views = mask_ratio, norm_pix, views
        grid = image_size // patch_size

        # encoder: the small ViT, with fixed sine-cosine positions
        self.encoder = ViT(image_size, patch_size, in_channels, dim, depth, heads, mlp_ratio)
        with torch.no_grad():
            self.encoder.pos_embed.copy_(sincos_pos_embed(dim, grid)[None])
        self.encoder.pos_embed.requires_grad_(False)
        nn.init.normal_(self.encoder.cls_token, std=0.02)

        # decoder: narrower and shallower, sees every position
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, decoder_dim) * 0.02)  # shared by all
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(decoder_dim, grid)[None])
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * in_channels)

    # -- stages -------------------------------------------------------------------------------
    def _check_images(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise SSLKitError(f"MAE built for images (N, {', '.join(map(str, expected))}), got "
                              f"{tuple(x.shape)}: resize the images or build MAE for this size")

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float,
                        noise: torch.Tensor | None = None):
        """x (N, C, S, S) floats -> latent (N, 1 + L_keep, D), mask (N, L) with 1 = masked,
        ids_restore (N, L). The transformer blocks see [CLS] and the visible patches only."""
        self._check_images(x)
        enc = self.encoder
        tokens = enc.patch_embed(patchify(x, self.patch_size))  # (N, L, D)
        tokens = tokens + enc.pos_embed[:, 1:]  # positions BEFORE masking: they travel along
        kept, mask, ids_restore = random_masking(tokens, mask_ratio, noise)  # (N, L_keep, D)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(len(x), -1, -1)  # (N, 1, D)
        latent = torch.cat([cls, kept], dim=1)  # (N, 1 + L_keep, D)
        for block in enc.blocks:
            latent = block(latent)
        return enc.norm(latent), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, 1 + L_keep, D), ids_restore (N, L) -> pred (N, L, p*p*C) pixels of every
        patch, in the original patch order."""
        y = self.decoder_embed(latent)  # (N, 1 + L_keep, D')
        n, length = ids_restore.shape
        visible = y[:, 1:]  # (N, L_keep, D'), in shuffled order
        masks = self.mask_token.expand(n, length - visible.shape[1], -1)  # (N, L - L_keep, D')
        shuffled = torch.cat([visible, masks], dim=1)  # (N, L, D'): kept first, then masked
        index = ids_restore.unsqueeze(-1).expand(-1, -1, y.shape[-1])  # (N, L, D')
        patches = torch.gather(shuffled, 1, index)  # (N, L, D'), back in the original order
        y = torch.cat([y[:, :1], patches], dim=1) + self.decoder_pos_embed  # (N, 1 + L, D')
        for block in self.decoder_blocks:
            y = block(y)
        return self.decoder_pred(self.decoder_norm(y))[:, 1:]  # (N, L, p*p*C), drop [CLS]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, S, S), pred (N, L, p*p*C), mask (N, L) -> MSE on the masked patches."""
        return mae_loss(pred, patchify(imgs, self.patch_size), mask, self.norm_pix)

    # -- whole passes -------------------------------------------------------------------------
    def _as_float(self, x: torch.Tensor) -> torch.Tensor:
        return step_floats(x, "MAE")  # float32 in [0, 1]

    def loss_on(self, x: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None):
        """x (N, C, S, S) floats, no augmentation -> (loss, pred (N, L, p*p*C), mask (N, L))."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(x, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(x, pred, mask), pred, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, S, S) images (uint8 or [0, 1] floats) -> scalar loss on one random mask."""
        x = self.views(x) if self.views is not None else self._as_float(x)
        return self.loss_on(x)[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask_ratio: float | None = None,
                    noise: torch.Tensor | None = None):
        """x (N, C, S, S) -> (reconstruction (N, C, S, S), mask image (N, 1, S, S), 1 = hidden).

        With norm_pix the decoder predicts normalised patches; they are mapped back to pixels
        with the mean and variance of the true patches (as many MAE re-implementations do), so the
        reconstruction borrows each hidden patch's brightness and contrast from the original.
        """
        x = self._as_float(x)
        _, pred, mask = self.loss_on(x, mask_ratio, noise)
        if self.norm_pix:
            target = patchify(x, self.patch_size)  # (N, L, P)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
            pred = pred * std + mean
        p = self.patch_size
        mask_img = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p), p, channels=1)
        return unpatchify(pred, p, channels=self.in_channels).clamp(0, 1), mask_img
