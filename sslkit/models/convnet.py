"""A small ConvNet encoder for CPU runs: four blocks of conv-BN-ReLU-maxpool.

    input (N, C, 32, 32)
    block 1: conv 3x3 C->w1, BN, ReLU, maxpool 2   -> (N, w1, 16, 16)
    block 2: conv 3x3 w1->w2, BN, ReLU, maxpool 2  -> (N, w2, 8, 8)
    block 3: conv 3x3 w2->w3, BN, ReLU, maxpool 2  -> (N, w3, 4, 4)
    block 4: conv 3x3 w3->w4, BN, ReLU, maxpool 2  -> (N, w4, 2, 2)
    global average pool                            -> (N, w4) = h, the representation

Works for any input side divisible by 16; ``min_image_size`` (16 for four blocks) is the
smallest side the max-pools leave at least one pixel of. ``forward_blocks`` returns the pooled
output of every block, for probing which depth transfers best.
"""

from __future__ import annotations

import torch
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.unit_images import check_encoder_input


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ConvNet(nn.Module):
    """Four conv blocks and a global average pool; ``feature_dim`` = the last width."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(conv_block(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.feature_dim = widths[-1]
        self.in_channels = in_channels
        self.min_image_size = 2 ** len(widths)  # each block's max-pool halves the side

    def check_images(self, x: torch.Tensor) -> None:
        """One-line error unless x is float images (N, in_channels, H, W) with sides the
        max-pools can take."""
        check_encoder_input(x, self.in_channels, "ConvNet")
        if min(x.shape[2:]) < self.min_image_size:
            raise SSLKitError(f"ConvNet's {len(self.blocks)} max-pools need image sides of at "
                              f"least {self.min_image_size}, got {tuple(x.shape[2:])}: resize "
                              f"the images")

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, C, H, W) -> the globally pooled output of each block, [(N, w_i)]."""
        self.check_images(x)
        pooled = []
        for block in self.blocks:
            x = block(x)
            pooled.append(x.mean(dim=(2, 3)))
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> h (N, feature_dim)."""
        self.check_images(x)
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3))
