"""InfoNCE as a lower bound on mutual information, on data whose mutual information is known.

The pieces notebook 03_infonce calls:

* ``correlated_gaussians(n, d, rho)`` -- n pairs (x, y) with y = rho x + sqrt(1 - rho^2) eps,
  x, eps ~ N(0, I_d): each coordinate of y is correlated with the same coordinate of x.
* ``gaussian_mi(rho, d)``  -- their mutual information in closed form, -d/2 log(1 - rho^2) nats;
  ``rho_for_mi(mi, d)`` is its inverse.
* ``SeparableCritic``      -- a learnt score f(x)^T g(y) with two small MLPs.
* ``infonce_scores_loss(scores)`` -- the InfoNCE loss of a batch: cross-entropy of the (N, N)
  score matrix with the matching y_i as the class of row x_i (the other N - 1 y's are the
  negatives).
* ``infonce_bound(n, ...)`` -- train a critic with batches of n pairs and return the estimate
  log n - L_n, which lower-bounds I(x; y) (for any critic) and can never exceed log n;
  ``evaluate_bound`` measures that estimate for a given critic on fresh pairs.
* ``optimal_scores`` and ``optimal_bound(n, ...)`` -- the best critic, log p(y | x) / p(y), known
  in closed form here, and its estimate: what no amount of training can beat at that n.
* ``negative_weights(similarities, temperature)`` -- how much each negative counts in the
  gradient of -log softmax(s / T)_0: softmax(s / T)_k / T (SimCLR's gradient analysis).

References: van den Oord et al. (2018), CPC, for the bound; Poole et al. (2019), "On variational
bounds of mutual information", for the Gaussian benchmark and the log n ceiling; Chen et al.
(2020), SimCLR, for the temperature's effect on the gradient.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.errors import SSLKitError

__all__ = [
    "SeparableCritic",
    "correlated_gaussians",
    "evaluate_bound",
    "gaussian_mi",
    "infonce_bound",
    "infonce_scores_loss",
    "negative_weights",
    "optimal_bound",
    "optimal_scores",
    "rho_for_mi",
]


# ----------------------------------------------------------------------------------------------
# Data with known mutual information
# ----------------------------------------------------------------------------------------------


def _check_rho_d(who: str, rho: float, d: int) -> None:
    """One-line error unless -1 < rho < 1 and d is a whole number >= 1: at |rho| = 1 the
    information is infinite, and d <= 0 dimensions would carry 0 or negative nats."""
    if not -1 < rho < 1:
        raise SSLKitError(f"{who}: rho must be in (-1, 1) (got {rho}): at |rho| = 1 the mutual "
                          "information is infinite")
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
        raise SSLKitError(f"{who}: d must be a whole number of dimensions >= 1 (got {d!r}): "
                          "e.g. d=4")


def correlated_gaussians(n: int, d: int, rho: float,
                         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """n pairs of correlated Gaussian vectors -> x, y, each (n, d), float32.

    x ~ N(0, I_d) and y = rho x + sqrt(1 - rho^2) eps with eps ~ N(0, I_d), so that y ~ N(0, I_d)
    as well and corr(x_j, y_j) = rho for every coordinate j (coordinates are independent).
    """
    _check_rho_d("correlated_gaussians", rho, d)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise SSLKitError(f"correlated_gaussians: n must be a whole number of pairs >= 1 (got "
                          f"{n!r}): e.g. n=512")
    x = torch.randn(n, d, generator=generator)  # (n, d)
    eps = torch.randn(n, d, generator=generator)  # (n, d)
    y = rho * x + math.sqrt(1 - rho**2) * eps  # (n, d)
    return x, y


def gaussian_mi(rho: float, d: int) -> float:
    """I(x; y) in nats for ``correlated_gaussians`` with correlation rho in d dimensions.

    Per coordinate: I = h(y) - h(y | x) = 1/2 log(2 pi e) - 1/2 log(2 pi e (1 - rho^2))
    = -1/2 log(1 - rho^2); the d coordinates are independent, so their informations add.
    """
    _check_rho_d("gaussian_mi", rho, d)
    return -0.5 * d * math.log(1 - rho**2)


def rho_for_mi(mi: float, d: int) -> float:
    """The correlation rho >= 0 at which d-dimensional ``correlated_gaussians`` carry mi nats."""
    if not mi >= 0 or d < 1:
        raise SSLKitError(f"rho_for_mi needs mi >= 0 nats and d >= 1 (got mi={mi}, d={d}): "
                          "mutual information is never negative")
    return math.sqrt(1 - math.exp(-2 * mi / d))


# ----------------------------------------------------------------------------------------------
# The critic and the InfoNCE loss of a batch
# ----------------------------------------------------------------------------------------------


def _mlp(d: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class SeparableCritic(nn.Module):
    """score(x, y) = f(x)^T g(y) with f, g: R^d -> R^embed two small MLPs.

    Called on x (..., N, d) and y (..., N, d) it returns every x against every y: scores
    (..., N, N) with scores[..., i, j] = f(x_i)^T g(y_j); the diagonal holds the true pairs.
    (For these Gaussians the best critic, log p(y | x) / p(y) up to terms in x alone, is a
    quadratic form, which two small MLPs learn easily.)
    """

    def __init__(self, d: int, hidden: int = 64, embed: int = 32):
        super().__init__()
        self.f = _mlp(d, hidden, embed)
        self.g = _mlp(d, hidden, embed)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx = self.f(x)  # (..., N, embed)
        gy = self.g(y)  # (..., N, embed)
        return fx @ gy.transpose(-1, -2)  # (..., N, N)


def infonce_scores_loss(scores: Tensor) -> Tensor:
    """InfoNCE loss of score matrices (..., N, N): row i must pick column i among N columns.

    -mean_i log softmax(scores[i])_i, i.e. ``F.cross_entropy`` with labels 0..N-1; averaged over
    the rows of every matrix. L >= 0, so the estimate log N - L is at most log N.
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        got = scores.dtype if isinstance(scores, Tensor) else type(scores).__name__
        raise SSLKitError(f"infonce_scores_loss needs floating scores (got {got}): pass the "
                          "critic's scores, or call scores.float()")
    if scores.ndim < 2 or scores.shape[-1] != scores.shape[-2] or scores.numel() == 0:
        raise SSLKitError(f"infonce_scores_loss needs square score matrices (..., N, N) with "
                          f"N >= 1, got {tuple(scores.shape)}: score every x of a group against "
                          "every y")
    n = scores.shape[-1]
    logits = scores.reshape(-1, n)  # (G * N, N): all matrices' rows stacked
    labels = torch.arange(n, device=scores.device).repeat(logits.shape[0] // n)  # (G * N,)
    return F.cross_entropy(logits, labels)


def _check_n(n: int, who: str) -> None:
    if n < 2:
        raise SSLKitError(f"{who}: n must be >= 2 (got {n}): with one candidate there is "
                          "nothing to classify (log 1 = 0)")


@torch.no_grad()
def evaluate_bound(critic: nn.Module, n: int, d: int, rho: float, pairs: int = 8192,
                   generator: torch.Generator | None = None) -> float:
    """log n - L_n of ``critic`` on fresh data: about ``pairs`` pairs, in groups of n."""
    _check_n(n, "evaluate_bound")
    groups = max(1, pairs // n)
    x, y = correlated_gaussians(groups * n, d, rho, generator)
    scores = critic(x.view(groups, n, d), y.view(groups, n, d))  # (groups, n, n)
    return math.log(n) - float(infonce_scores_loss(scores))


def infonce_bound(n: int, d: int = 4, rho: float = 0.93, steps: int = 500, pairs: int = 512,
                  lr: float = 3e-3, seed: int = 0, eval_pairs: int = 8192) -> float:
    """Train a ``SeparableCritic`` on batches of n pairs; return the estimate log n - L_n.

    Each step draws ``pairs`` fresh pairs (at least n) split into groups of n: every group is
    one n-way classification (the other n - 1 y's of the group are the negatives), so a small n
    still gets a low-noise gradient. Adam, ``steps`` steps; the estimate is measured on fresh
    pairs (``eval_pairs``), so it is not inflated by fitting the training batches.
    """
    _check_n(n, "infonce_bound")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left alone
        torch.manual_seed(seed)
        critic = SeparableCritic(d)
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    groups = max(1, pairs // n)
    for _ in range(steps):
        x, y = correlated_gaussians(groups * n, d, rho, g)
        loss = infonce_scores_loss(critic(x.view(groups, n, d), y.view(groups, n, d)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return evaluate_bound(critic, n, d, rho, eval_pairs, g)


def optimal_scores(x: Tensor, y: Tensor, rho: float) -> Tensor:
    """The best critic's scores log p(y_j | x_i) - log p(y_j): x, y (..., N, d) -> (..., N, N).

    With v = 1 - rho^2, summed over the d coordinates,

        log p(y | x) - log p(y) = -|y - rho x|^2 / (2 v) + |y|^2 / 2 - d/2 log v
                                = (rho x.y - rho^2 (|x|^2 + |y|^2) / 2) / v - d/2 log v.

    Its mean over true pairs is I(x; y). (Terms in x alone cancel in the softmax over the
    candidates; they are kept so that these are the exact log density ratios.)
    """
    _check_rho_d("optimal_scores", rho, x.shape[-1])
    v = 1 - rho**2
    d = x.shape[-1]
    xy = x @ y.transpose(-1, -2)  # (..., N, N): x_i . y_j
    xx = x.pow(2).sum(-1, keepdim=True)  # (..., N, 1)
    yy = y.pow(2).sum(-1).unsqueeze(-2)  # (..., 1, N)
    return (rho * xy - rho**2 * (xx + yy) / 2) / v - d / 2 * math.log(v)  # (..., N, N)


@torch.no_grad()
def optimal_bound(n: int, d: int = 4, rho: float = 0.93, pairs: int = 65536,
                  seed: int = 0) -> float:
    """log n - L_n of the best critic (``optimal_scores``), on about ``pairs`` pairs in groups of n.

    The tightest the InfoNCE bound gets with batches of n: a trained critic can only come close.
    """
    _check_n(n, "optimal_bound")
    g = torch.Generator().manual_seed(seed)
    groups = max(1, pairs // n)
    per_chunk = max(1, 2**20 // (n * n))  # score matrices per chunk: at most ~1M entries
    total, done = 0.0, 0
    while done < groups:
        m = min(per_chunk, groups - done)
        x, y = correlated_gaussians(m * n, d, rho, g)
        scores = optimal_scores(x.view(m, n, d).double(), y.view(m, n, d).double(), rho)
        total += float(infonce_scores_loss(scores)) * m
        done += m
    return math.log(n) - total / groups


# ----------------------------------------------------------------------------------------------
# Temperature: which negatives the gradient listens to
# ----------------------------------------------------------------------------------------------


def negative_weights(similarities: Tensor, temperature: float) -> Tensor:
    """Gradient weight of each negative in L = -log softmax(s / T)_0.

    similarities: (..., 1 + K), the positive first, then K negatives. Returns (..., K):

        dL/ds_k = softmax(s / T)_k / T        for k = 1..K

    Their sum, (1 - softmax(s / T)_0) / T, is the weight pulling the positive in. As T -> inf
    the negatives share it equally; as T -> 0 it goes to the most similar (hardest) negative.
    """
    if not temperature > 0:
        raise SSLKitError(f"negative_weights: temperature must be > 0 (got {temperature})")
    probs = torch.softmax(similarities / temperature, dim=-1)  # (..., 1 + K)
    return probs[..., 1:] / temperature  # (..., K)
