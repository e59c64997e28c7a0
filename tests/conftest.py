"""Shared fixtures for the unit tests.

The tests run on tiny tensors, where torch's intra-op thread pool costs more than it saves (and
on a shared 2-core machine several times more): one thread keeps the suite fast and its timings
steady. Results do not depend on the thread count.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shifted_parts() -> dict:
    """sslkit.data.digits.shifted_digits() computed once per session (treat as read-only)."""
    from sslkit.data.digits import shifted_digits

    return shifted_digits()


@pytest.fixture(scope="session")
def plain_parts() -> dict:
    """sslkit.data.digits.plain_digits() computed once per session (treat as read-only)."""
    from sslkit.data.digits import plain_digits

    return plain_digits()
