"""Encoders and heads. ``build_encoder(arch, in_channels)`` maps a name to a network whose
``forward`` gives the representation h (N, feature_dim) and whose ``.feature_dim`` says its size.
"""

from __future__ import annotations

from torch import nn

from sslkit.errors import SSLKitError
from sslkit.models.convnet import ConvNet
from sslkit.models.heads import projection_head
from sslkit.models.resnet import resnet
from sslkit.models.vit import ViT

ARCHS = {
    "convnet-small": lambda c: ConvNet(c, (16, 32, 64, 128)),  # fast on a laptop CPU
    "convnet": lambda c: ConvNet(c, (32, 64, 128, 256)),
    "resnet18": lambda c: resnet(18, c),
    "resnet50": lambda c: resnet(50, c),
    "vit": lambda c: ViT(32, 4, c),  # small ViT: 4x4 patches, dim 64, depth 4 (DINO)
}


def build_encoder(arch: str, in_channels: int = 3, image_size: int | None = None) -> nn.Module:
    """The encoder `arch` for images (N, in_channels, S, S). With image_size S, a side too
    small for the architecture (an encoder's ``min_image_size``) is a one-line error here
    rather than a shape error in the first forward pass."""
    if arch not in ARCHS:
        raise SSLKitError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
    encoder = ARCHS[arch](in_channels)
    smallest = getattr(encoder, "min_image_size", 1)
    if image_size is not None and image_size < smallest:
        raise SSLKitError(f"--image-size {image_size} is too small for --arch {arch}, whose "
                          f"max-pools need a side of at least {smallest}: use --image-size "
                          f"{smallest} or more, or --arch resnet18")
    return encoder


__all__ = ["ARCHS", "ConvNet", "build_encoder", "ViT", "projection_head", "resnet"]
