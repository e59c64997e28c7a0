"""Jigsaw puzzles (Noroozi & Favaro, 2016): cut an image into a 3x3 grid of tiles, shuffle the
tiles with one of a fixed set of permutations, and train the network to say which permutation
was used.

    x (N, C, H, W)
      random crop to 3*cell, 3x3 tiles, shuffled by perms[label]    (jigsaw_tiles)
      a random crop of each tile, resized to tile_size              (gaps between tiles)
      [normalise=True: each tile to mean 0, std 1 per channel]     (normalise_tiles)
                                   tiles (N, 9, C, S, S), labels (N,) in 0..P-1
    h = f(tile), one tile at a time, shared weights   (9N, feature_dim)
    concatenated in the shuffled order                (N, 9*feature_dim)
    logits = g(...)                                   (N, P)   an MLP
    loss = cross_entropy(logits, labels)

The permutation set is chosen for a large minimum Hamming distance (``hamming_permutations``):
two permutations that differ in only two tiles would make classes the network can hardly tell
apart. The tiles are encoded separately, so the encoder cannot compare edges across tiles; the
random crop inside each tile leaves gaps, so the head cannot either: what is left is to
recognise what each tile shows and where in an object it belongs.

The paper also normalises every tile on its own, so that lighting or contrast that changes
across a photo gives no clue to the order: ``normalise=True`` (``--option normalise=true``).
It is off by default, as measured on the shifted digits (kNN k=20 of the encoder on the raw
images after `sslkit train jigsaw --profile laptop --device cpu --epochs 10 --knn-every 5`,
with and without ``--option normalise=true``): 29.0 % without, 18.9 % with. Their background is flat
black, so normalising mostly blows faint stroke fragments up to full contrast, and the encoder,
trained on tiles of mean 0 and std 1, then meets raw [0, 1] images at evaluation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.augment import hamming_permutations, jigsaw_tiles, jitter_tiles
from sslkit.errors import SSLKitError
from sslkit.methods.options import check_options, fix
from sslkit.models.heads import check_head_batch
from sslkit.transfer import to_device
from sslkit.unit_images import unit_floats


def check_tile_side(side: int, gap: int, grid: int = 3) -> None:
    """One-line error unless images of side `side` leave each of grid x grid tiles at least one
    pixel after its random crop of `gap` pixels: side >= grid * (gap + 1)."""
    smallest = grid * (gap + 1)
    if side < smallest:
        raise SSLKitError(f"images of side {side} are too small for {grid}x{grid} tiles that each "
                          f"lose {gap} pixels to the gap: use --image-size {smallest} or more")


def check_jigsaw_options(options: dict) -> None:
    """One-line error naming the option and a valid value for a size below its least (a gap
    below 0, a tile_size or hidden_dim below 1, a grid other than 2 or 3, fewer than 2
    permutations) or more permutations than the grid's tiles have orders, among `options`
    (keywords of Jigsaw's constructor; the others take their defaults)."""
    check_options(Jigsaw, options)
    grid, count = options.get("grid", 3), options.get("num_permutations", 30)
    orders = math.factorial(grid * grid)
    if count > orders:  # the set is made of distinct orders of the grid^2 tiles
        raise SSLKitError(f"Jigsaw's num_permutations must be a whole number from 2 to "
                          f"{grid * grid}! = {orders} for a {grid}x{grid} grid (got {count}): "
                          f"use e.g. {fix('num_permutations', min(30, orders))}")


def normalise_tiles(tiles: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """tiles (N, T, C, S, S) -> each tile's channel shifted to mean 0 and scaled to std 1 over
    its S x S pixels (population std; a flat tile, std < eps, is divided by eps: it stays flat
    instead of blowing rounding noise up to unit variance)."""
    mean = tiles.mean(dim=(3, 4), keepdim=True)  # (N, T, C, 1, 1)
    std = tiles.std(dim=(3, 4), keepdim=True, correction=0)  # (N, T, C, 1, 1)
    return (tiles - mean) / std.clamp(min=eps)


def tile_head(in_dim: int, hidden_dim: int, classes: int) -> nn.Sequential:
    """The classifier on the concatenated tile features: Linear-BN-ReLU-Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, classes))


class Jigsaw(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_permutations: int = 30,  # P classes (the paper: 1000 on ImageNet)
        grid: int = 3,  # grid x grid tiles
        gap: int = 2,  # pixels cut from each tile side by the random crop (in total)
        tile_size: int = 16,  # tiles are resized to this for the encoder (ConvNet needs >= 16)
        hidden_dim: int = 256,
        seed: int = 0,  # chooses the permutation set
        normalise: bool = False,  # each tile to mean 0, std 1 (the paper; see above)
        generator: torch.Generator | None = None,  # permutations drawn per image, crops
    ):
        super().__init__()
        check_jigsaw_options(dict(num_permutations=num_permutations, grid=grid, gap=gap,
                                  tile_size=tile_size, hidden_dim=hidden_dim))
        self.encoder = encoder
        self.grid, self.gap, self.tile_size = grid, gap, tile_size
        self.normalise = normalise
        self.register_buffer("permutations", hamming_permutations(num_permutations, grid, seed))
        tiles = grid * grid
        self.head = tile_head(tiles * encoder.feature_dim, hidden_dim, num_permutations)
        self.generator = generator

    def make_puzzles(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) uint8 or [0, 1] floats -> (tiles (N, T, C, S, S), labels (N,))."""
        # float32; floats in any range are taken, unchecked: where each tile goes does not
        # depend on its values (the tests follow tiles through coordinate images)
        x = unit_floats(x, "Jigsaw", check_range=False)
        n, g = len(x), self.generator
        check_tile_side(min(x.shape[2:]), self.gap, self.grid)
        cell = min(x.shape[2:]) // self.grid
        x = jitter_tiles(x[:, None], self.grid * cell, g)[:, 0]  # random (3 cell)^2 crop
        labels = to_device(torch.randint(len(self.permutations), (n,), generator=g), x.device)
        tiles = jigsaw_tiles(x, self.permutations[labels], self.grid)  # (N, T, C, cell, cell)
        tiles = jitter_tiles(tiles, cell - self.gap, g)  # (N, T, C, cell - gap, cell - gap)
        s = self.tile_size
        tiles = F.interpolate(tiles.flatten(0, 1), size=(s, s), mode="bilinear",
                              align_corners=False)
        tiles = tiles.unflatten(0, (n, -1))  # (N, T, C, S, S)
        return (normalise_tiles(tiles) if self.normalise else tiles), labels

    def classify(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles (N, T, C, S, S) in the shuffled order -> logits (N, P)."""
        check_head_batch(self.head, len(tiles), "jigsaw")
        h = self.encoder(tiles.flatten(0, 1))  # (N*T, feature_dim): every tile on its own
        return self.head(h.reshape(len(tiles), -1))  # (N, T*feature_dim) -> (N, P)

    def logits_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tiles, labels = self.make_puzzles(x)
        return self.classify(tiles), labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> scalar loss."""
        return F.cross_entropy(*self.logits_labels(x))
