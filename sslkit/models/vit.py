"""A small Vision Transformer (Dosovitskiy et al., 2021) for 32x32 images, and MAE's patch helpers.

    x (N, C, H, W) --patch_embed--> (N, L, D)   L = (H/p)(W/p) patches, a linear map of each
    prepend [CLS], add position embeddings      (N, 1 + L, D)
    depth x Block: x + Attn(LN(x)); x + MLP(LN(x))
    LN, take [CLS]                               (N, D)  the representation h

``last_attention(x)`` gives the last block's attention weights (N, heads, 1 + L, 1 + L);
row 0 is what [CLS] attends to, the maps DINO's paper shows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.transfer import to_device
from sslkit.unit_images import check_encoder_input


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), L = (H/p)(W/p); each patch flattened as (p, q, c)."""
    n, c, h, w = imgs.shape
    p = patch_size
    if p < 1:
        raise SSLKitError(f"patch size must be at least 1 pixel, got {p}: use e.g. 4")
    if h % p or w % p:
        raise SSLKitError(f"image side {h}x{w} is not a multiple of the patch size {p}: crop or "
                          f"resize the images, or choose a patch size that divides {h} and {w}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    # legend: n image, c channel, h/w patch row/column, p/q pixel row/column in the patch
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int | None = None) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, H, W), the inverse of :func:`patchify` (square images)."""
    n, length, dim = patches.shape
    p = patch_size
    if p < 1:
        raise SSLKitError(f"patch size must be at least 1 pixel, got {p}: use e.g. 4")
    c = channels if channels is not None else dim // (p * p)
    side = int(round(length ** 0.5))
    if side * side != length or p * p * c != dim:
        raise SSLKitError(f"cannot unpatchify {tuple(patches.shape)} with patch size {p}")
    x = patches.reshape(n, side, side, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, c, side * p, side * p)


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """MAE's per-sample random masking. x (N, L, D) -> (x_kept (N, len_keep, D), mask (N, L)
    with 1 = masked, ids_restore (N, L)). Patches with the smallest noise are kept."""
    if not 0 <= mask_ratio < 1:
        raise SSLKitError(f"mask ratio must be in [0, 1), got {mask_ratio}: use e.g. 0.75 "
                          "(MAE's default)")
    n, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(n, length, device=x.device)
    elif noise.shape != (n, length):
        raise SSLKitError(f"noise must be (N, L) = ({n}, {length}), one value per patch, got "
                          f"{tuple(noise.shape)}: draw it with torch.rand({n}, {length})")
    noise = to_device(noise, x.device)  # e.g. drawn on the CPU from a seeded generator
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back in the original patch order
    return x_kept, mask, ids_restore


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise SSLKitError(f"embedding dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (N, heads, T, d_head)
        # legend: n image, h head, i query token, j key token, e per-head feature
        attn = torch.einsum("nhie,nhje->nhij", q, k) * (d // self.heads) ** -0.5
        attn = attn.softmax(dim=-1)  # (N, heads, T, T), rows sum to 1
        out = torch.einsum("nhij,nhje->nhie", attn, v).transpose(1, 2).reshape(n, t, d)
        out = self.proj(out)
        return (out, attn) if return_attention else out


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        a, attn = self.attn(self.norm1(x), return_attention=True)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return (x, attn) if return_attention else x


class ViT(nn.Module):
    """x (N, C, S, S) -> h (N, dim), the final [CLS] token; ``feature_dim`` = dim."""

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        if patch_size < 1:
            raise SSLKitError(f"patch size must be at least 1 pixel, got {patch_size}: use e.g. 4")
        if image_size % patch_size:
            raise SSLKitError(f"image size {image_size} is not a multiple of the patch size "
                              f"{patch_size}: use a side that {patch_size}x{patch_size} patches "
                              f"tile, e.g. {image_size - image_size % patch_size + patch_size}")
        self.patch_size, self.in_channels, self.feature_dim = patch_size, in_channels, dim
        self.grid = image_size // patch_size
        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def _pos_embed(self, grid: int) -> torch.Tensor:
        """Position embeddings for a grid x grid input (interpolated for smaller local crops)."""
        if grid == self.grid:
            return self.pos_embed
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = patches.shape[-1]
        patches = patches.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, 1 + L, dim): [CLS] and patch embeddings with positions."""
        check_encoder_input(x, self.in_channels, "ViT")  # float images (N, C, H, W)
        if x.shape[2] != x.shape[3]:
            raise SSLKitError(f"ViT takes square images (N, C, S, S), got {tuple(x.shape)}: "
                              "crop or resize them to a square")
        patches = self.patch_embed(patchify(x, self.patch_size))  # (N, L, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (N, 1, dim)
        return torch.cat([cls, patches], dim=1) + self._pos_embed(x.shape[-1] // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        for block in self.blocks:
            t = block(t)
        return self.norm(t)[:, 0]  # (N, dim)

    @torch.no_grad()
    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, heads, 1 + L, 1 + L), the last block's attention weights."""
        t = self.tokens(x)
        for block in self.blocks[:-1]:
            t = block(t)
        return self.blocks[-1](t, return_attention=True)[1]

    def cls_attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, heads, S/p, S/p): what [CLS] attends to among the patches."""
        attn = self.last_attention(x)[:, :, 0, 1:]  # (N, heads, L)
        g = x.shape[-1] // self.patch_size
        return attn.reshape(attn.shape[0], attn.shape[1], g, g)
