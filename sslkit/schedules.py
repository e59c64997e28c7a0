"""Schedules as arrays indexed by the global step, so they can be plotted and checkpointed.

``lr = cosine_schedule(base, final, epochs, steps_per_epoch, warmup_epochs)`` gives one value
per optimiser step: a linear warm-up from 0 to ``base`` over the warm-up epochs, then a cosine
from ``base`` down to ``final``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from sslkit.errors import SSLKitError


def cosine_schedule(
    base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0
) -> np.ndarray:
    """(epochs * steps_per_epoch,) values: linear warm-up 0 -> base, then cosine base -> final.

    A count below 1 (or a fractional one), a negative warm-up or a value that is not finite is
    a one-line error: numpy would fail on a negative count, and a NaN would train on NaNs."""
    for name, count in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise SSLKitError(f"cosine_schedule: {name} must be a whole number >= 1 (got "
                              f"{count!r}): e.g. {name}=100")
    for name, value in (("base", base), ("final", final), ("warmup_epochs", warmup_epochs)):
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value)):
            raise SSLKitError(f"cosine_schedule: {name} must be a finite number (got {value!r}): "
                              f"e.g. {name}=0.0 or a learning rate such as 0.1")
    if warmup_epochs < 0:
        raise SSLKitError(f"cosine_schedule: warmup_epochs must be >= 0 (got {warmup_epochs}): "
                          "use 0 for no warm-up")
    total = epochs * steps_per_epoch
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total)
    ramp = np.linspace(0.0, base, warmup, endpoint=False) if warmup else np.zeros(0)
    steps = np.arange(total - warmup)
    span = max(total - warmup - 1, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / span))
    return np.concatenate([ramp, cosine])
