"""A check shared by the tests of code that must never make the host wait for the GPU
(tests/test_no_host_sync.py explains why; sslkit.transfer is the way that does not wait)."""

from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def copies_must_not_wait():
    """Fail on a CPU -> device copy that would make the host wait for the GPU: ``t.to(device)``
    without ``non_blocking=True``, or ``torch.tensor(..., device=device)`` (sslkit.transfer
    explains why; ``to_device`` is the way that does not wait)."""
    real_to, real_tensor = torch.Tensor.to, torch.tensor

    def target(args, kwargs):
        for a in (*args, kwargs.get("device")):
            if isinstance(a, (str, torch.device)):
                return torch.device(a)
            if isinstance(a, torch.Tensor):
                return a.device
        return None

    def to(self, *args, **kwargs):
        device = target(args, kwargs)
        non_blocking = kwargs.get("non_blocking", False) or any(a is True for a in args)
        if self.device.type == "cpu" and device not in (None, self.device) and not non_blocking:
            raise AssertionError(f"a blocking copy of a CPU tensor {tuple(self.shape)} to "
                                 f"{device}: use sslkit.transfer.to_device")
        return real_to(self, *args, **kwargs)

    def tensor(data, *args, device=None, **kwargs):
        if device is not None and torch.device(device).type != "cpu":
            raise AssertionError(f"torch.tensor(..., device={device}) copies and waits: make "
                                 "it on the CPU and use sslkit.transfer.to_device")
        return real_tensor(data, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "to", to)
        patch.setattr(torch, "tensor", tensor)
        yield
