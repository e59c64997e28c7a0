"""A small convolutional decoder that maps a ConvNet's last feature map back to an image, for
the reconstruction pretext tasks (colorization, inpainting).

    encoder (ConvNet, four blocks, each pooling by 2), input (N, C, 32, 32)
    feature_map(encoder, x)                        -> (N, w4, 2, 2)   no global pool
    decoder: per stage, upsample x2 (nearest), conv 3x3, BN, ReLU
        stage 1: w4 -> w3                          -> (N, w3, 4, 4)
        stage 2: w3 -> w2                          -> (N, w2, 8, 8)
        stage 3: w2 -> w1                          -> (N, w1, 16, 16)
        stage 4: w1 -> w1                          -> (N, w1, 32, 32)
    head: conv 1x1 w1 -> out_channels              -> (N, out_channels, 32, 32)  raw, no activation

There are no skip connections (as in Pathak et al.'s context encoder): everything the decoder
knows passes through the encoder's bottleneck, which is what makes the encoder learn. The
method applies the output activation (sigmoid for pixels, tanh for scaled ab).
"""

from __future__ import annotations

import torch
from torch import nn

from sslkit.errors import SSLKitError


def encoder_widths(encoder: nn.Module) -> tuple[int, ...]:
    """The output width of each block of a ConvNet-like encoder (one with ``.blocks``)."""
    blocks = getattr(encoder, "blocks", None)
    if blocks is None:
        raise SSLKitError(f"the reconstruction methods need an encoder with conv blocks "
                          f"(sslkit's ConvNet); got {type(encoder).__name__}")
    widths = []
    for block in blocks:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        if not convs:  # e.g. a ViT's transformer blocks
            raise SSLKitError(f"the reconstruction methods need an encoder with conv blocks "
                              f"(sslkit's ConvNet); {type(encoder).__name__}'s blocks have no "
                              f"convolution: use --arch convnet-small or convnet")
        widths.append(convs[-1].out_channels)
    return tuple(widths)


def feature_map(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) -> the last block's output (N, w_last, H / 2^k, W / 2^k), before pooling."""
    for block in encoder.blocks:
        x = block(x)
    return x


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ConvDecoder(nn.Module):
    """in_dim channels at 1/2^len(widths) resolution -> out_channels at full resolution.

    widths: the output width of each upsampling stage, one stage per factor of 2.
    """

    def __init__(self, in_dim: int, out_channels: int, widths: tuple[int, ...]):
        super().__init__()
        chans = (in_dim, *widths)
        self.stages = nn.ModuleList(up_block(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.head = nn.Conv2d(widths[-1], out_channels, kernel_size=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, in_dim, h, w) -> (N, out_channels, h * 2^k, w * 2^k), raw values."""
        for stage in self.stages:
            z = stage(z)
        return self.head(z)


def decoder_for(encoder: nn.Module, out_channels: int) -> ConvDecoder:
    """The mirror of a ConvNet: widths (w1, w2, w3, w4) -> decoder stages (w3, w2, w1, w1)."""
    widths = encoder_widths(encoder)
    return ConvDecoder(widths[-1], out_channels, (*widths[-2::-1], widths[0]))


def resolve_encoder(arch: str | nn.Module, in_channels: int) -> nn.Module:
    """arch: a name from sslkit.models.ARCHS (built with in_channels) or an encoder module."""
    if isinstance(arch, nn.Module):
        encoder_widths(arch)  # fails early on an encoder without conv blocks
        return arch
    from sslkit.models import build_encoder

    return build_encoder(arch, in_channels)
