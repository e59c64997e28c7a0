"""Schedules as arrays indexed by the global step, so they can be plotted and checkpointed.

``lr = cosine_schedule(base, final, epochs, steps_per_epoch, warmup_epochs)`` gives one value
per optimiser step: a linear warm-up from 0 to ``base`` over the warm-up epochs, then a cosine
from ``base`` down to ``final``.
"""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0
) -> np.ndarray:
    """(epochs * steps_per_epoch,) values: linear warm-up 0 -> base, then cosine base -> final."""
    total = epochs * steps_per_epoch
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total)
    ramp = np.linspace(0.0, base, warmup, endpoint=False) if warmup else np.zeros(0)
    steps = np.arange(total - warmup)
    span = max(total - warmup - 1, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / span))
    return np.concatenate([ramp, cosine])
