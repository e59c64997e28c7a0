"""Projection heads g(h) that map the representation h to the space where the loss is taken.

SimCLR found that a non-linear head improves the representation h *before* it: the loss makes
g(h) invariant to the augmentations and throws information away there, while h keeps it.
"""

from __future__ import annotations

from torch import nn

from sslkit.errors import SSLKitError


def projection_head(
    in_dim: int, out_dim: int = 128, hidden_dim: int | None = None, kind: str = "mlp"
) -> nn.Module:
    """g: (N, in_dim) -> (N, out_dim). kind: "mlp" (Linear-BN-ReLU-Linear), "linear" or "none"."""
    hidden_dim = hidden_dim or in_dim
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "none":
        return nn.Identity()
    from sslkit.errors import SSLKitError

    raise SSLKitError(f"unknown projection head {kind!r}: use one of mlp, linear, none")


def check_head_batch(head: nn.Module, n: int, what: str) -> None:
    """One-line error for a training batch of one: the head's BatchNorm1d needs 2 samples.
    (A BatchNorm synchronised across processes, which torchrun swaps in, may see 1 per rank.)"""
    if head.training and n < 2 and any(isinstance(m, nn.BatchNorm1d) for m in head.modules()):
        raise SSLKitError(f"the {what} head's BatchNorm needs at least 2 images per training "
                          f"batch, got {n}: use a batch of 2 or more, or call .eval() first")
