"""ResNet-18/50 from torchvision with the CIFAR stem.

On 32x32 images the ImageNet stem (7x7 stride-2 conv and a max-pool) throws away three
quarters of the resolution before the first block; SimCLR on CIFAR stalls near 76 % kNN with
it. The CIFAR stem is a 3x3 stride-1 conv and no max-pool. The classifier is removed, so the
network maps (N, C, H, W) to the pooled representation h (N, 512) or (N, 2048).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.unit_images import check_encoder_input


def check_images(net: nn.Module, args: tuple[torch.Tensor]) -> None:
    """Forward pre-hook: a one-line error unless the input is float images (N, C, H, W) with
    conv1's C."""
    check_encoder_input(args[0] if args else None, net.conv1.in_channels, "ResNet")


def resnet(depth: int = 18, in_channels: int = 3, cifar_stem: bool = True) -> nn.Module:
    """A torchvision ResNet-18 or -50 without its classifier; ``.feature_dim`` is h's size."""
    builders = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}
    if depth not in builders:
        raise SSLKitError(f"ResNet depth must be 18 or 50, got {depth}: use resnet(18) or "
                          "resnet(50)")
    net = builders[depth](weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    net.register_forward_pre_hook(check_images)
    return net
