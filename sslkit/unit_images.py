"""Image batches as sslkit takes them: (N, C, H, W), uint8 in [0, 255] or floats in [0, 1].

The views, the pretext methods, feature extraction and the plots all accept both and turn them
into float32 in [0, 1] (jigsaw and relative patch leave floats of any range as they are). Two
mistakes would otherwise give silently wrong numbers: floats in 0..255 (a bare ``.float()``
without ``/ 255``) or integers other than uint8 become views, features or plots that are all
white; and channels-last images (N, H, W, C) are read as H channels of W x C pixels.
``unit_floats`` and ``check_channels_first`` turn both into one-line errors. The encoders take
the views' floats only, never uint8 pixels: ``check_encoder_input``.

Reading a value of a tensor on a GPU makes the host wait for the GPU, which a training step
must never do (tests/test_no_host_sync.py): the dtype and shape checks are free and always run;
the range check reads values, so code that runs inside a training step uses ``step_floats``,
which reads them on the CPU only.
"""

from __future__ import annotations

import math

import torch

from sslkit.errors import SSLKitError

CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: the channel counts an image batch has in practice


def check_tensor(images, who: str) -> None:
    """One-line error unless images is a torch.Tensor: a NumPy array or a list would fail on the
    first tensor method with an AttributeError."""
    if not isinstance(images, torch.Tensor):
        raise SSLKitError(f"{who} takes a torch.Tensor of images (N, C, H, W), got "
                          f"{type(images).__name__}: convert it with torch.as_tensor(...) (NumPy "
                          "images (N, H, W, C) also need .permute(0, 3, 1, 2))")


def unit_floats(images: torch.Tensor, who: str, check_range: bool = True) -> torch.Tensor:
    """images uint8 in [0, 255] or floats in [0, 1] -> float32 in [0, 1], same shape: uint8 is
    divided by 255, floats pass unchanged.

    Any other dtype (int64, bool, ...) is a one-line error. With check_range, floats clearly
    outside [0, 1] (beyond 0.01 either way: e.g. 0..255 after a bare ``.float()``, standardised
    pixels, NaN) are one too; it reads the values, so pass False for a tensor on a GPU inside a
    training step. ``who`` names the caller in the message.
    """
    check_tensor(images, who)
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise SSLKitError(f"{who} takes uint8 images in [0, 255] or floats in [0, 1], got "
                          f"{images.dtype}: convert with images.to(torch.uint8) (values 0..255) "
                          "or images.float() / 255")
    images = images.float()
    if check_range:
        check_unit_range(images, who)
    return images


def step_floats(images: torch.Tensor, who: str) -> torch.Tensor:
    """``unit_floats`` for code inside a training step: the range is checked only where reading
    it costs no GPU wait, on the CPU (a laptop's every step; on a GPU, never)."""
    return unit_floats(images, who, check_range=images.device.type == "cpu")


def check_unit_range(images: torch.Tensor, who: str) -> None:
    """One-line error unless the float images hold values in [0, 1] (beyond 0.01 either way,
    or NaN, is an error). Reads the values: for a GPU tensor, never inside a training step."""
    if not images.numel():
        return
    low, high = (float(v) for v in torch.aminmax(images))
    if math.isnan(low) or math.isnan(high):
        raise SSLKitError(f"{who} got float images containing NaN: pass uint8 in [0, 255] "
                          "or floats in [0, 1] (check where the images were made)")
    if low < -0.01 or high > 1.01:
        raise SSLKitError(f"{who} got float images in [{low:.3g}, {high:.3g}]: pass uint8 "
                          "in [0, 255] or floats in [0, 1] (e.g. images.float() / 255)")


def check_channels_first(images: torch.Tensor, who: str) -> None:
    """One-line error for a 4-D batch that looks channels-last: (N, H, W, C) with C in 1, 3 or 4
    where (N, C, H, W) is expected, i.e. shape[1] is not a channel count but shape[-1] is."""
    if images.ndim == 4 and images.shape[1] not in CHANNELS and images.shape[-1] in CHANNELS:
        raise SSLKitError(f"{who} needs images (N, C, H, W), got {tuple(images.shape)}, which "
                          "looks channels-last (N, H, W, C): pass x.permute(0, 3, 1, 2)")


def check_encoder_input(x, channels: int, net: str) -> None:
    """One-line error unless x is a floating tensor (N, channels, H, W): what an encoder takes,
    the views' floats in [0, 1], never the datasets' uint8 pixels. ``net`` names the encoder.
    Shapes and dtypes only, so it costs no GPU wait."""
    check_tensor(x, net)
    if x.ndim == 4 and x.shape[1] != channels:  # (a 2-channel net's input is not channels-last)
        check_channels_first(x, net)
    if x.ndim != 4 or x.shape[1] != channels:
        fix = ("for one image add the batch axis, x[None]" if x.ndim == 3 and x.shape[0] == channels
               else "build it with the images' channel count")
        raise SSLKitError(f"{net} built for images (N, C, H, W) with {channels} channel(s), got "
                          f"{tuple(x.shape)}: {fix}")
    if not x.is_floating_point():
        raise SSLKitError(f"{net} takes float images in [0, 1], got {x.dtype}: convert them "
                          "with x.float() / 255 (in training the views do this)")
