"""Relative patch position (Doersch et al., 2015): show the network the middle tile of a 3x3
grid and one of its eight neighbours, and train it to say where the neighbour sits.

    x (N, C, H, W)
      random crop to 3*cell, centre tile and neighbour NEIGHBOURS[label]   (patch_pairs)
      a random crop of each tile, resized to tile_size                     (gap and jitter)
                         centre, neighbour (N, C, S, S), labels (N,) in 0..7
    h_c = f(centre), h_n = f(neighbour)     (N, feature_dim) each, shared weights
    logits = g([h_c, h_n])                  (N, 8)   an MLP
    loss = cross_entropy(logits, labels)

Labels count the neighbours in reading order (top-left = 0, top = 1, ..., bottom-right = 7).
As in the paper, the random crops leave a gap and jitter between the patches, so the network
cannot just continue lines and textures across the border: it has to recognise the parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.augment import jitter_tiles, patch_pairs
from sslkit.methods.jigsaw import check_tile_side, tile_head
from sslkit.methods.options import check_options
from sslkit.models.heads import check_head_batch
from sslkit.transfer import to_device
from sslkit.unit_images import unit_floats


class RelativePatch(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        gap: int = 2,  # pixels cut from each tile side by the random crop (in total)
        tile_size: int = 16,  # patches are resized to this for the encoder
        hidden_dim: int = 256,
        generator: torch.Generator | None = None,  # positions and crops
    ):
        super().__init__()
        check_options(RelativePatch, dict(gap=gap, tile_size=tile_size, hidden_dim=hidden_dim),
                      command_line=False)
        self.encoder = encoder
        self.gap, self.tile_size = gap, tile_size
        self.head = tile_head(2 * encoder.feature_dim, hidden_dim, 8)
        self.generator = generator

    def make_pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) uint8 or [0, 1] floats -> (centre, neighbour (N, C, S, S), labels)."""
        # float32; floats in any range are taken, unchecked: where each tile goes does not
        # depend on its values (the tests follow tiles through coordinate images)
        x = unit_floats(x, "RelativePatch", check_range=False)
        n, g = len(x), self.generator
        check_tile_side(min(x.shape[2:]), self.gap)
        cell = min(x.shape[2:]) // 3
        x = jitter_tiles(x[:, None], 3 * cell, g)[:, 0]  # random (3 cell)^2 crop
        labels = to_device(torch.randint(8, (n,), generator=g), x.device)
        pair = torch.stack(patch_pairs(x, labels), dim=1)  # (N, 2, C, cell, cell)
        pair = jitter_tiles(pair, cell - self.gap, g)
        s = self.tile_size
        pair = F.interpolate(pair.flatten(0, 1), size=(s, s), mode="bilinear",
                             align_corners=False).unflatten(0, (n, 2))
        return pair[:, 0], pair[:, 1], labels

    def classify(self, centre: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
        """centre, neighbour (N, C, S, S) -> logits (N, 8); both patches in one encoder pass."""
        check_head_batch(self.head, len(centre), "relative patch")
        h = self.encoder(torch.cat([centre, neighbour]))  # (2N, feature_dim)
        h_c, h_n = h.chunk(2)
        return self.head(torch.cat([h_c, h_n], dim=1))  # (N, 2*feature_dim) -> (N, 8)

    def logits_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centre, neighbour, labels = self.make_pairs(x)
        return self.classify(centre, neighbour), labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> scalar loss."""
        return F.cross_entropy(*self.logits_labels(x))
