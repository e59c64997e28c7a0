"""SimCLR with the switches of the paper's ablations (Chen et al., 2020, Tables 4 and 5), for
``sslkit experiment``:

    loss        "nt_xent" (the method's own) | "nt_logistic" | "margin_triplet"   (Table 4)
    semi_hard   keep only the negatives less similar to the anchor than its positive (Table 4)
    normalize   NT-Xent on cosine similarities (True) or on raw dot products (False) (Table 5)

Everything else (views, encoder, head, one forward pass for both views) is ``SimCLR``'s; with
the defaults the loss is exactly ``SimCLR``'s NT-Xent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit.errors import SSLKitError
from sslkit.losses import margin_triplet, nt_logistic, nt_xent, nt_xent_logits
from sslkit.methods.options import check_options
from sslkit.methods.simclr import SimCLR

LOSSES = ("nt_xent", "nt_logistic", "margin_triplet")


class SimCLRAblation(SimCLR):
    def __init__(
        self,
        *args,
        loss: str = "nt_xent",  # nt_xent | nt_logistic | margin_triplet
        semi_hard: bool = False,  # only negatives less similar than the positive
        normalize: bool = True,  # NT-Xent on cosine similarities (False: raw dot products)
        margin: float = 0.5,  # margin_triplet's margin, in cosine-similarity units
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if loss not in LOSSES:
            raise SSLKitError(f"unknown SimCLR loss {loss!r}: use one of {', '.join(LOSSES)}")
        if not normalize and loss != "nt_xent":
            raise SSLKitError(f"normalize=False applies to nt_xent only, not {loss}: "
                              "drop it or use loss='nt_xent'")
        check_options(SimCLRAblation, dict(margin=margin), command_line=False)
        self.loss = loss
        self.semi_hard = semi_hard
        self.normalize = normalize
        self.margin = margin

    def loss_on_views(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """The chosen loss of two batches of views (N, C, S, S), both in ONE forward pass."""
        z = self.embed(torch.cat([v1, v2]))  # (2N, proj_dim)
        z1, z2 = z.chunk(2)  # (N, proj_dim) each
        if self.loss == "nt_logistic":
            return nt_logistic(z1, z2, self.temperature, semi_hard=self.semi_hard)
        if self.loss == "margin_triplet":
            return margin_triplet(z1, z2, self.margin, semi_hard=self.semi_hard)
        if self.semi_hard or not self.normalize:
            return F.cross_entropy(*nt_xent_logits(z1, z2, self.temperature, self.normalize,
                                                   self.semi_hard))
        return nt_xent(z1, z2, self.temperature)
