"""Rotation prediction (Gidaris et al., 2018): rotate every image by 0, 90, 180 and 270 degrees
and train the network to tell which rotation it sees, a 4-way classification.

    x (N, C, H, W)  --rotate_batch-->  x_rot (4N, C, H, W), labels (4N,) in 0..3
    h = f(x_rot)    (4N, feature_dim)   the representation kept after training
    logits = g(h)   (4N, 4)             a small MLP head
    loss = cross_entropy(logits, labels)

To say which way is up, the network has to find the object and know how it is usually
oriented: an "upright" 6 and an upside-down 9 differ only in small details, so the task pushes
the encoder towards shape. ``logits_labels`` is the named stage the notebook grades one training
step against; ``forward(x)`` is what the training loop calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.augment import rotate_batch
from sslkit.methods.options import check_options
from sslkit.models.heads import projection_head
from sslkit.unit_images import step_floats


class Rotation(nn.Module):
    def __init__(self, encoder: nn.Module, hidden_dim: int | None = None):
        super().__init__()
        check_options(Rotation, dict(hidden_dim=hidden_dim), command_line=False)
        self.encoder = encoder
        self.head = projection_head(encoder.feature_dim, 4, hidden_dim, kind="mlp")

    def logits_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) uint8 or [0, 1] floats -> (logits (4N, 4), labels (4N,))."""
        x = step_floats(x, "Rotation")  # float32 in [0, 1]
        x_rot, labels = rotate_batch(x)  # all four rotations in one batch: BN sees them all
        return self.head(self.encoder(x_rot)), labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> scalar loss."""
        return F.cross_entropy(*self.logits_labels(x))
