"""How many CPU cores this process may use."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on: a container's or a ``taskset``'s share, not the
    host's count (``os.cpu_count()``), which over-counts on shared machines and would start
    too many DataLoader workers."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
