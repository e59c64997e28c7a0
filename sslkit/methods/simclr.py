"""SimCLR (Chen et al., 2020): two random views of each image, an encoder f, a projection
head g, and NT-Xent pulling the two views of an image together against all other views.

    x (N, C, H, W)  --views-->  v1, v2 (N, C, S, S)
    h = f(v)        (N, feature_dim)   the representation kept after training
    z = g(h)        (N, proj_dim)      where the loss is taken
    loss = nt_xent(z1, z2, temperature)

The named stages (``views``, ``embed``, ``loss_on_views``) are the notebook's exercise
boundaries; ``forward(x)`` chains them for the training loop.

Several processes (torchrun): each rank embeds its own slice of the batch, gathers every rank's
embeddings WITH gradient, and takes NT-Xent for its own 2n anchors against all 2Wn views
(``nt_xent_across_ranks``); the positive of an anchor sits at an index offset by its rank.
The mean of the rank losses is the loss of the whole batch, and so are the gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import distributed
from sslkit.augment import SimCLRViews
from sslkit.losses import _check_inputs, cosine_similarity_matrix, nt_xent
from sslkit.methods.options import check_options
from sslkit.models.heads import projection_head
from sslkit.precision import in_float32


@in_float32
def nt_xent_across_ranks(z1: torch.Tensor, z2: torch.Tensor,
                         temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of this rank's n pairs against the views of every rank. One process: nt_xent.

    z1, z2 (n, D) on each of W ranks. Candidates: cat([Z1, Z2]) (2Wn, D), where Z1, Z2 are the
    gathered z1, z2 (rank-major). Local anchor i of z1 is candidate r*n + i, its positive
    Wn + r*n + i; anchor i of z2 is candidate Wn + r*n + i, its positive r*n + i. Returns the
    mean over this rank's 2n anchors; averaged over ranks (as DDP averages gradients) it is
    nt_xent of the whole batch.
    """
    if not distributed.is_distributed():
        return nt_xent(z1, z2, temperature)
    _check_inputs("nt_xent", {"z1": z1, "z2": z2}, min_pairs=1, temperature=temperature)
    n, r, w = z1.shape[0], distributed.rank(), distributed.world_size()
    candidates = torch.cat([distributed.gather_with_grad(z1),
                            distributed.gather_with_grad(z2)])  # (2Wn, D)
    anchors = torch.cat([z1, z2])  # (2n, D)
    logits = cosine_similarity_matrix(anchors, candidates) / temperature  # (2n, 2Wn)
    local = torch.arange(n, device=z1.device) + r * n  # (n,) global index of z1's rows
    own = torch.cat([local, local + w * n])  # (2n,) each anchor's own column
    partner = torch.cat([local + w * n, local])  # (2n,) labels, offset by rank
    self_mask = torch.zeros_like(logits, dtype=torch.bool)  # (2n, 2Wn)
    self_mask[torch.arange(2 * n, device=z1.device), own] = True
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is not its own candidate
    return F.cross_entropy(logits, partner)


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
        check_options(SimCLR, dict(proj_dim=proj_dim, hidden_dim=hidden_dim,
                                   temperature=temperature))
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
        if distributed.is_distributed():
            return nt_xent_across_ranks(z1, z2, self.temperature)
        return nt_xent(z1, z2, self.temperature)

    def forward(self, x) -> torch.Tensor:
        """x (N, C, H, W) images (uint8 or [0, 1] floats) -> scalar loss; or x = (v1, v2), views
        already made (the DataLoader path makes them per image in worker processes)."""
        v1, v2 = x if isinstance(x, (tuple, list)) else self.views.two_views(x)
        return self.loss_on_views(v1, v2)
