"""Computing in float32 under mixed precision.

Training on CUDA runs the network under bfloat16 autocast, which also turns every matmul and
convolution it meets into a bfloat16 one. Two kinds of code must not be: the losses (their
similarities, exponentials and softmax) and the view generators (a resize done as a bfloat16
matmul is off by up to 17/255 per pixel, so the GPU's views would not be the CPU's).
``in_float32`` runs a function with autocast off and its floating tensor arguments upcast.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor


def in_float32(fn):
    """Decorator: run ``fn`` with floating tensor arguments upcast to >= float32 (float64 stays
    float64, as torch.autograd.gradcheck needs) and autocast off on their device.

    Non-floating tensors are passed through untouched (a uint8 image batch, or a wrong input
    that the check inside ``fn`` reports). A device without autocast (PyTorch's meta device)
    runs ``fn`` as it is.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def up(x):
            if isinstance(x, Tensor) and x.is_floating_point():
                return x.to(torch.promote_types(x.dtype, torch.float32))
            return x

        args = tuple(up(a) for a in args)
        kwargs = {k: up(v) for k, v in kwargs.items()}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        off = (torch.autocast(device_type=device_type, enabled=False)
               if torch.amp.is_autocast_available(device_type) else contextlib.nullcontext())
        with off:
            return fn(*args, **kwargs)

    return wrapper
