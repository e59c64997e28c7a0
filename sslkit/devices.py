"""The device a command or a function is asked to run on, checked to exist before any work:
"gpu" or "cuda" on a machine without one is a one-line error, not torch's traceback."""

from __future__ import annotations

import torch

from sslkit.errors import SSLKitError


def resolve_device(name: str) -> torch.device:
    """The torch device named by --device (auto | cpu | cuda | cuda:N | mps), checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unknown = f"unknown device {name!r}: use --device auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(name)
    except RuntimeError:  # a name torch does not know, e.g. "gpu"
        raise SSLKitError(unknown) from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise SSLKitError(unknown)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SSLKitError(f"device {name!r} asked for but CUDA is not available: use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SSLKitError(f"device {name!r} asked for but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s): use --device cuda:0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SSLKitError(f"device {name!r} asked for but MPS is not available: use --device cpu")
    return device
