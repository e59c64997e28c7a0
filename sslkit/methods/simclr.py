"""SimCLR (Chen et al., 2020): two random views of each image, an encoder f, a projection
head g, and NT-Xent pulling the two views of an image together against all other views.

    x (N, C, H, W)  --views-->  v1, v2 (N, C, S, S)
    h = f(v)        (N, feature_dim)   the representation kept after training
    z = g(h)        (N, proj_dim)      where the loss is taken
    loss = nt_xent(z1, z2, temperature)

The named stages (``views``, ``embed``, ``loss_on_views``) are the notebook's exercise
boundaries; ``forward(x)`` chains them for the training loop.
"""

from __future__ import annotations

import torch
from torch import nn

from sslkit.augment import SimCLRViews
from sslkit.losses import nt_xent
from sslkit.models.heads import projection_head


class SimCLR(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        views: SimCLRViews,
        proj_dim: int = 128,
        hidden_dim: int | None = None,
        head: str = "mlp",
        temperature: float = 0.5,
    ):
        super().__init__()
        self.encoder = encoder
        self.head = projection_head(encoder.feature_dim, proj_dim, hidden_dim, kind=head)
        self.views = views
        self.temperature = temperature

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        """v (N, C, S, S) -> z = g(f(v)) (N, proj_dim)."""
        return self.head(self.encoder(v))

    def loss_on_views(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """NT-Xent of two batches of views; both views go through the network in ONE pass so
        that BatchNorm normalises over all 2N views, as in the paper."""
        z = self.embed(torch.cat([v1, v2]))  # (2N, proj_dim)
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) images (uint8 or [0, 1] floats) -> scalar loss."""
        v1, v2 = self.views.two_views(x)
        return self.loss_on_views(v1, v2)
