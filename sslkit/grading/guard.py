"""The pieces every notebook's checks share: the delegation guard, quiet checks, one-line
failures, seeded inputs.

Students have sslkit installed, so an answer that only calls the reference would pass every
numerical test. While the student's function runs, ``references_blocked`` swaps the
``__code__`` of each reference function (for a decorated function, of the function it wraps)
for one that raises: a student may hold an alias (``from sslkit.losses import nt_xent as
ref``), and an alias points at the same function object. The original code is restored in
``finally``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_MARK = "sslkit-grading: reference called: "


def _blocked(*args, **kwargs):
    raise RuntimeError("sslkit-grading: reference called: ?")



@contextmanager
def references_blocked(references: dict[str, Callable]) -> Iterator[None]:
    """While inside, every function in ``references`` (name -> function) raises when called."""
    swapped = []
    try:
        for name, fn in references.items():
            target = inspect.unwrap(fn)  # the undecorated function a wrapper calls
            consts = tuple(_MARK + name if isinstance(c, str) and c.startswith(_MARK) else c
                           for c in _blocked.__code__.co_consts)
            code = _blocked.__code__.replace(co_consts=consts, co_name=target.__code__.co_name)
            swapped.append((target, target.__code__))
            target.__code__ = code
        yield
    finally:
        for target, code in reversed(swapped):
            target.__code__ = code


def quiet(check: Callable) -> Callable:
    """Decorator: no warnings from a check (a test cell must print nothing to stderr)."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return check(*args, **kwargs)

    return wrapper


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def call(exercise: str, fn: Callable, *args, where: str = "",
         blocked: dict[str, Callable] | None = None):
    """fn(*args); any exception becomes a one-line AssertionError naming the exercise.

    blocked: references (name -> function) that raise while fn runs (the delegation guard).
    """
    try:
        with references_blocked(blocked or {}):
            return fn(*args)
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 -- a student's bug must become a readable failure
        message = one_line(e)
        if _MARK in message:
            ref = message.split(_MARK, 1)[1].split()[0]
            raise AssertionError(
                f"{exercise}: your answer calls the reference {ref}; write the computation "
                "yourself (torch and torch.nn.functional are fine)"
            ) from None
        raise AssertionError(
            f"{exercise} raised {type(e).__name__}{where}: {message}"
        ) from None


# ----------------------------------------------------------------------------------------------
# Seeded inputs and comparisons
# ----------------------------------------------------------------------------------------------


def randn(*shape: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def as_tensor(exercise: str, value, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"{exercise}: expected a torch.Tensor, got {type(value).__name__}"
                             f"{where}: keep the computation in torch")
    return value


def scalar(exercise: str, value, where: str) -> torch.Tensor:
    value = as_tensor(exercise, value, where)
    if value.numel() != 1:
        raise AssertionError(f"{exercise}: expected a scalar (the mean over the anchors), got "
                             f"shape {tuple(value.shape)}{where}: average with .mean()")
    return value.reshape(())


def case_label(n: int, d: int, t: float | None = None) -> str:
    return f" for N={n}, D={d}" + ("" if t is None else f", T={t}")


# ----------------------------------------------------------------------------------------------
# 1. build_augmentation(size)
# ----------------------------------------------------------------------------------------------
