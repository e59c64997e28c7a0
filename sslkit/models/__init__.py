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
    """The encoder `arch` for images (N, in_channels, S, S). With image_size S, a side the
    architecture cannot take is a one-line error here rather than a shape error in the first
    forward pass: a ConvNet's max-pools need ``min_image_size`` pixels, and a ViT's patches
    must tile the image."""
    if arch not in ARCHS:
        raise SSLKitError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
    encoder = ARCHS[arch](in_channels)
    if image_size is None:
        return encoder
    smallest = getattr(encoder, "min_image_size", 1)
    if image_size < smallest:
        raise SSLKitError(f"--image-size {image_size} is too small for --arch {arch}, whose "
                          f"max-pools need a side of at least {smallest}: use --image-size "
                          f"{smallest} or more, or --arch resnet18")
    patch = getattr(encoder, "patch_size", 1)
    if image_size % patch:
        below, above = image_size - image_size % patch, image_size - image_size % patch + patch
        raise SSLKitError(f"--image-size {image_size} is not a multiple of the patch size of "
                          f"--arch {arch}, whose {patch}x{patch} patches must tile the image: "
                          f"use --image-size {f'{below} or ' if below else ''}{above}")
    return encoder


__all__ = ["ARCHS", "ConvNet", "build_encoder", "ViT", "projection_head", "resnet"]
