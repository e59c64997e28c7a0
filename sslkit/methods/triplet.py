"""Triplet learning without labels: the positive is an augmented view of the anchor image, the
negatives are other images of the batch, mined from the batch's distance matrix (Schroff et al.,
2015, FaceNet; Hermans et al., 2017, "In defense of the triplet loss").

    x (N, C, H, W)  --views-->  v1, v2 (N, C, S, S)     v1 = anchors, v2 = their positives
    h = f(v)        (N, feature_dim)   the representation kept after training
    z = g(h)        (N, proj_dim)      the embedding the loss is taken on; unit length when
                                       ``normalize`` is True (FaceNet's hypersphere, default)
    D[i, j] = ||z1_i - z2_j||^2        (N, N): D[i, i] is anchor i's positive distance,
                                       D[i, j != i] its distance to the candidate negative j
    n(i) = mine(D)                     one negative per anchor: random | batch_hard | semi_hard
    loss = triplet_loss(z1, z2, z2[n], margin)

Why normalise: with free-length embeddings the loss can also be lowered by scaling, and with
margin 0 the trivial minimum is z -> 0 (every distance 0, loss 0): the collapse the notebook
shows. On the unit sphere squared distances lie in [0, 4], so a margin of about 0.2 (FaceNet's
value) is meaningful.

Mining works on any (N, M) matrix of squared distances together with a boolean ``invalid``
mask (N, M) that marks the candidates that must never be a negative for an anchor: the anchor
itself, its positive, and with labels every candidate of the anchor's class. In this module
the candidates are the positives z2, so ``invalid`` is the identity (the anchor's own
positive). Every mining function returns the index (N,) of the chosen candidate per anchor;
ties go to the lowest index. Batch-hard and semi-hard mining each have a plain loop twin
(``*_loop``) that the tests compare them with.
"""

from __future__ import annotations

import torch
from torch import nn

from sslkit import distributed
from sslkit.augment import SimCLRViews
from sslkit.errors import SSLKitError
from sslkit.losses import triplet_loss
from sslkit.methods.options import check_options
from sslkit.models.heads import projection_head
from sslkit.transfer import to_device

MINING = ("random", "batch_hard", "semi_hard")


# ----------------------------------------------------------------------------------------------
# Distances and masks
# ----------------------------------------------------------------------------------------------


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (N, D), b (M, D) -> (N, M) with [i, j] = ||a_i - b_j||^2 (squared Euclidean).

    Expanded as ||a||^2 + ||b||^2 - 2 a.b (one matrix product) and clamped at 0, where rounding
    can make it slightly negative.
    """
    sq_a = a.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
    sq_b = b.pow(2).sum(dim=1)[None]  # (1, M)
    return (sq_a + sq_b - 2 * a @ b.T).clamp_min(0)  # (N, M)


def same_label(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """labels_a (N,), labels_b (M,) -> (N, M) bool, True where the labels agree (the ``invalid``
    mask of mining with labels)."""
    return labels_a[:, None] == labels_b[None, :]


def _check_mining(dist: torch.Tensor, invalid: torch.Tensor) -> None:
    if dist.ndim != 2 or tuple(invalid.shape) != tuple(dist.shape):
        raise SSLKitError(f"mining needs dist (N, M) and invalid of the same shape, got "
                          f"{tuple(dist.shape)} and {tuple(invalid.shape)}")
    if bool(invalid.all(dim=1).any()):
        raise SSLKitError("an anchor has no valid negative (a row of invalid is all True): "
                          "use batches with at least two images (classes)")


# ----------------------------------------------------------------------------------------------
# Mining: one negative per anchor
# ----------------------------------------------------------------------------------------------


def random_negatives(invalid: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """invalid (N, M) bool -> (N,) a uniformly random valid candidate per anchor."""
    scores = to_device(torch.rand(invalid.shape, generator=generator), invalid.device)  # (N, M)
    return scores.masked_fill(invalid, -1.0).argmax(dim=1)


def batch_hard_negatives(dist: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """The hardest negative: the closest valid candidate of each anchor (Hermans et al., 2017).

    dist (N, M) squared distances anchor -> candidate; invalid (N, M) bool -> (N,) indices.
    """
    _check_mining(dist, invalid)
    return dist.masked_fill(invalid, float("inf")).argmin(dim=1)


def semi_hard_negatives(dist_ap: torch.Tensor, dist_an: torch.Tensor, margin: float,
                        invalid: torch.Tensor) -> torch.Tensor:
    """FaceNet's semi-hard negative: farther than the positive but within the margin.

    dist_ap (N,) anchor-positive squared distances; dist_an (N, M) anchor-candidate squared
    distances; invalid (N, M) bool -> (N,) indices.

    Among the valid candidates with ``dist_ap[i] < dist_an[i, j] < dist_ap[i] + margin`` the
    closest one (the hardest semi-hard negative). Where none qualifies, the fallback is the
    EASIEST valid candidate, the farthest one (as TensorFlow Addons' semi-hard loss): it never
    adds a hard triplet that could drive the embedding to collapse, and gives zero loss when
    every negative is already beyond the margin.
    """
    _check_mining(dist_an, invalid)
    d_ap = dist_ap[:, None]  # (N, 1)
    in_band = (dist_an > d_ap) & (dist_an < d_ap + margin) & ~invalid  # (N, M)
    hardest_in_band = dist_an.masked_fill(~in_band, float("inf")).argmin(dim=1)  # (N,)
    easiest = dist_an.masked_fill(invalid, float("-inf")).argmax(dim=1)  # (N,)
    return torch.where(in_band.any(dim=1), hardest_in_band, easiest)


def batch_hard_negatives_loop(dist: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """batch_hard_negatives, one anchor and one candidate at a time."""
    chosen = []
    for i in range(dist.shape[0]):
        best = None
        for j in range(dist.shape[1]):
            if not invalid[i, j] and (best is None or dist[i, j] < dist[i, best]):
                best = j
        chosen.append(best)
    return torch.tensor(chosen)


def semi_hard_negatives_loop(dist_ap: torch.Tensor, dist_an: torch.Tensor, margin: float,
                             invalid: torch.Tensor) -> torch.Tensor:
    """semi_hard_negatives, one anchor and one candidate at a time."""
    chosen = []
    for i in range(dist_an.shape[0]):
        valid = [j for j in range(dist_an.shape[1]) if not invalid[i, j]]
        band = [j for j in valid if dist_ap[i] < dist_an[i, j] < dist_ap[i] + margin]
        if band:
            chosen.append(min(band, key=lambda j: (float(dist_an[i, j]), j)))
        else:
            chosen.append(max(valid, key=lambda j: (float(dist_an[i, j]), -j)))
    return torch.tensor(chosen)


# ----------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------


class Triplet(nn.Module):
    """Encoder f + head g trained with the triplet loss on (view, other view, mined negative).

    mining: "random" | "batch_hard" | "semi_hard"; margin: the triplet margin (squared-distance
    units); normalize: L2-normalise z (default True, see the module docstring).
    """

    def __init__(
        self,
        encoder: nn.Module,
        views: SimCLRViews,
        proj_dim: int = 64,
        hidden_dim: int | None = None,
        head: str = "mlp",
        margin: float = 0.2,
        mining: str = "semi_hard",
        normalize: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if mining not in MINING:
            raise SSLKitError(f"unknown mining {mining!r}: use one of {', '.join(MINING)}")
        check_options(Triplet, dict(proj_dim=proj_dim, hidden_dim=hidden_dim, margin=margin),
                      command_line=False)
        self.encoder = encoder
        self.head = projection_head(encoder.feature_dim, proj_dim, hidden_dim, kind=head)
        self.views = views
        self.margin = margin
        self.mining = mining
        self.normalize = normalize
        self.generator = generator  # for random mining

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        """v (N, C, S, S) -> z (N, proj_dim), unit rows when normalize is True."""
        z = self.head(self.encoder(v))
        return nn.functional.normalize(z, dim=1) if self.normalize else z

    def mine(self, z_a: torch.Tensor, z_p: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Anchors z_a (N, D), candidates z_p (M, D) whose row offset + i is anchor i's positive
        (offset 0 and M = N in one process) -> (N,) index into z_p of each negative.
        Chosen without gradient: mining selects, it is not differentiated. Distances in
        float32 even under autocast: ||a||^2 + ||b||^2 - 2 a.b of unit vectors in bfloat16 is
        off by up to ~0.005, enough to move a negative across the semi-hard band."""
        with torch.no_grad(), torch.autocast(z_a.device.type, enabled=False):
            dist = pairwise_sq_distances(z_a.float(), z_p.float())  # (N, M)
            rows = torch.arange(len(z_a), device=dist.device)  # (N,)
            invalid = torch.zeros_like(dist, dtype=torch.bool)
            invalid[rows, offset + rows] = True  # the positives
            if self.mining == "random":
                return random_negatives(invalid, self.generator)
            if self.mining == "batch_hard":
                return batch_hard_negatives(dist, invalid)
            return semi_hard_negatives(dist[rows, offset + rows], dist, self.margin, invalid)

    def loss_on_views(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """Triplet loss of anchors v1 and positives v2 (N, C, S, S); both in ONE forward pass
        so that BatchNorm normalises over all 2N views. Under torchrun the negatives are mined
        among the positives of every process (gathered with gradient), so the loss is that of
        one process on the whole batch."""
        z = self.embed(torch.cat([v1, v2]))  # (2N, proj_dim)
        z_a, z_p = z.chunk(2)  # (N, proj_dim) each
        candidates = distributed.gather_with_grad(z_p)  # (W·N, proj_dim), rank-major
        negative = candidates[self.mine(z_a, candidates, distributed.rank() * len(z_a))]
        return triplet_loss(z_a, z_p, negative, self.margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) images (uint8 or [0, 1] floats) -> scalar loss."""
        v1, v2 = self.views.two_views(x)
        return self.loss_on_views(v1, v2)


__all__ = [
    "MINING",
    "Triplet",
    "batch_hard_negatives",
    "batch_hard_negatives_loop",
    "pairwise_sq_distances",
    "random_negatives",
    "same_label",
    "semi_hard_negatives",
    "semi_hard_negatives_loop",
]
