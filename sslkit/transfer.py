"""Host-to-device copies that never make the host wait for the GPU.

The random parameters of the views (crop boxes, jitter factors, flips, permutations) are drawn
on the CPU, from a seeded ``torch.Generator``, so that a run gives the same views on any device.
They then go to the device where the images are. A plain ``t.to("cuda")`` (and
``torch.tensor(..., device="cuda")``) copies from pageable memory and makes the host wait until
every kernel already queued on the GPU has finished: a few of those per view, and the GPU sits
idle while the host prepares the next step. Staged through pinned memory with
``non_blocking=True`` the copy is queued like any kernel, and PyTorch keeps the pinned buffer
alive until the copy is done.

    to_device(t, device)      t on device (no copy if it is there already; a copy to the CPU
                              is finished when it returns)
"""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t on `device`; from the CPU to a GPU without waiting for the GPU's queued work."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    # to the CPU the copy must have landed before the host reads it: a non-blocking one
    # returns at once, and reading the tensor may then give what was there before
    return t.to(device, non_blocking=device.type != "cpu")
