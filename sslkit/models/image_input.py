"""What every encoder checks of its input: a batch of float images (N, C, H, W) with the
channel count it was built for.

Encoders take what the views give, floats in [0, 1]; the datasets' uint8 pixels go through
the views (or ``x.float() / 255``) first. Images laid out as PIL and NumPy lay them out,
channels last (N, H, W, C), need ``x.permute(0, 3, 1, 2)``. Shapes and dtypes only: no value
is read, so the check never makes a GPU step wait.
"""

from __future__ import annotations

import torch

from sslkit.errors import SSLKitError


def check_image_batch(x, channels: int, net: str) -> None:
    """One-line error unless x is a floating tensor (N, channels, H, W); net names the encoder
    in the message."""
    if not isinstance(x, torch.Tensor):
        raise SSLKitError(f"{net} takes a tensor of images (N, C, H, W), got "
                          f"{type(x).__name__}: convert it with torch.as_tensor(...)")
    if x.ndim != 4 or x.shape[1] != channels:
        if x.ndim == 4 and x.shape[-1] == channels:
            fix = "these look channels-last (N, H, W, C): pass x.permute(0, 3, 1, 2)"
        elif x.ndim == 3 and x.shape[0] == channels:
            fix = "for one image add the batch axis, x[None]"
        else:
            fix = "build it with the images' channel count"
        raise SSLKitError(f"{net} built for images (N, C, H, W) with {channels} channel(s), got "
                          f"{tuple(x.shape)}: {fix}")
    if not x.is_floating_point():
        raise SSLKitError(f"{net} takes float images in [0, 1], got {x.dtype}: convert them "
                          "with x.float() / 255 (in training the views do this)")
