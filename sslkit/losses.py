"""Contrastive and metric-learning losses used throughout the course.

What lives here (every loss returns a scalar: the mean over the anchors of the batch):

* ``triplet_loss``      -- the classic hinge on squared Euclidean distances (anchor, positive,
  negative), no normalisation.
* ``info_nce``          -- one positive against K negatives per query, cosine similarity,
  cross-entropy with the positive as class 0 (van den Oord et al., 2018).
* ``nt_xent``           -- SimCLR's normalised temperature-scaled cross-entropy over the 2N views
  of a batch (Chen et al., 2020, Algorithm 1), written as logits + labels + ``F.cross_entropy``.
* ``nt_xent_loop``      -- the same value computed with a plain Python loop, line by line from
  the paper; slow, but easy to check against the formula. Tests assert both agree.
* ``nt_logistic`` and ``margin_triplet`` -- the other two losses of SimCLR's loss comparison
  (Table 2 of the paper), with the same pairing of views as ``nt_xent``; ``semi_hard=True``
  keeps only the negatives less similar to the anchor than its positive (the paper's Table 4).
* ``nt_xent_logits``    -- the logits and labels NT-Xent takes its cross-entropy of, with the
  variants of SimCLR's ablations: no L2 normalisation (Table 5), semi-hard negatives (Table 4).
* ``cosine_similarity_matrix`` -- the (N, M) matrix of cosine similarities the others build on.
* ``cpc_loss``          -- CPC's InfoNCE on a grid of patches: predict the patches k rows
  below from a context, among every patch of the batch; ``cpc_loss_loop`` is the plain
  loop over k, t and j, and ``cpc_logits`` the scores as K classification problems.

Conventions
-----------
* Embeddings are rows: ``z1``, ``z2`` have shape (N, D); ``z1[i]`` and ``z2[i]`` are two views
  of the same image (a positive pair).
* Precision: every function upcasts half-precision inputs (float16 / bfloat16) to float32 and
  switches autocast off while it runs, so similarities, exponentials and the softmax are always
  computed in float32 (float64 inputs stay float64, which ``torch.autograd.gradcheck`` needs).
* Bad input raises :class:`sslkit.errors.SSLKitError` with a one-line message that names the
  problem and the fix.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from sslkit.errors import SSLKitError
from sslkit.precision import in_float32

__all__ = [
    "cosine_similarity_matrix",
    "cpc_logits",
    "cpc_loss",
    "cpc_loss_loop",
    "dino_loss",
    "dino_loss_loop",
    "info_nce",
    "mae_loss",
    "mae_loss_loop",
    "margin_triplet",
    "moco_loss",
    "moco_loss_loop",
    "nt_logistic",
    "nt_xent",
    "nt_xent_logits",
    "nt_xent_loop",
    "triplet_loss",
]


# ----------------------------------------------------------------------------------------------
# Private helpers: input checks
# ----------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _check_device(fn: str, tensors: dict[str, Tensor]) -> None:
    """One-line error unless every tensor sits on the device of the first (a comparison of
    device objects: no value is read, so no GPU wait)."""
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.device != first.device:
            raise SSLKitError(f"{fn}: {first_name} is on {first.device} but {name} is on "
                              f"{t.device}: move them to one device, e.g. "
                              f"{name}.to({first_name}.device)")


def _check_number(fn: str, name: str, value, fix: str) -> None:
    """One-line error unless value is a real number (or a tensor): a string or None would
    otherwise fail in a comparison with a TypeError that names no argument."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise SSLKitError(f"{fn}: {name} must be a number (got {type(value).__name__} "
                          f"{value!r}): {fix}")


def _check_temperature(fn: str, name: str, temperature: float, fix: str) -> None:
    """One-line error unless temperature is a finite number > 0: 0 divides by zero, a negative
    one rewards the wrong candidates, NaN gives NaN and inf makes every logit 0 (a constant
    loss that trains nothing)."""
    _check_number(fn, name, temperature, fix)
    if not 0 < temperature < math.inf:
        raise SSLKitError(f"{fn}: {name} must be > 0 and finite (got {temperature}): {fix}")


def _check_margin(fn: str, margin: float, example: float) -> None:
    """One-line error unless margin is a finite number >= 0. A negative margin counts a triplet
    as satisfied while its negative is still closer than its positive, so a collapsed
    embedding (every distance equal) already has loss 0 and nothing is learnt; NaN gives NaN."""
    _check_number(fn, "margin", margin, f"use e.g. margin={example}")
    if not 0 <= margin < math.inf:
        raise SSLKitError(f"{fn}: margin must be >= 0 and finite (got {margin}): use e.g. "
                          f"margin={example} (a negative margin is met by a collapsed embedding)")


_NO_TEMPERATURE = object()  # what _check_inputs gets from a loss that has no temperature


def _check_inputs(
    fn: str,
    tensors: dict[str, Tensor],
    *,
    min_pairs: int = 1,
    temperature: float | object = _NO_TEMPERATURE,
    negatives: Tensor | None = None,
) -> None:
    """Raise SSLKitError (one line: problem + fix) unless the inputs of loss ``fn`` are valid.

    ``tensors`` maps argument names to tensors that must all be floating, of shape (N, D) and
    of one common shape, with N >= ``min_pairs``. ``negatives`` (info_nce only) must be (K, D)
    or (N, K, D) with the same D (and N) as the first tensor.
    """
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise SSLKitError(f"{fn}: {name} must be a torch.Tensor (got {type(t).__name__}): "
                              f"convert it with torch.as_tensor(...)")
        if t.ndim != 2:
            raise SSLKitError(f"{fn}: {name} must be (N, D), got shape {_shape(t)}: "
                              f"flatten each embedding to one row, e.g. {name}.flatten(1)")
        if not t.is_floating_point():
            raise SSLKitError(f"{fn}: {name} must be a floating tensor (got {t.dtype}): "
                              f"call {name}.float()")
        if t.numel() == 0:
            raise SSLKitError(f"{fn}: {name} is empty (shape {_shape(t)}): "
                              f"pass at least {min_pairs} row(s) with D >= 1")
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.shape != first.shape:
            raise SSLKitError(f"{fn}: {first_name} and {name} must have the same shape, got "
                              f"{_shape(first)} and {_shape(t)}: pass one row per example, "
                              f"embedded by the same network")
    n, d = first.shape
    if n < min_pairs:
        raise SSLKitError(f"{fn} needs at least {min_pairs} pairs per batch (got {n}): "
                          f"use a batch size of {min_pairs} or more")
    if temperature is not _NO_TEMPERATURE:  # None among them: a mistake, not a default
        _check_temperature(fn, "temperature", temperature,
                           "use a positive value such as 0.1 or 0.5")
    _check_device(fn, tensors)
    if negatives is not None:
        if not isinstance(negatives, Tensor) or negatives.ndim not in (2, 3):
            got = _shape(negatives) if isinstance(negatives, Tensor) else type(negatives).__name__
            raise SSLKitError(f"{fn}: negatives must be (K, D) or (N, K, D), got {got}: "
                              f"stack the negative embeddings into one tensor")
        if not negatives.is_floating_point():
            raise SSLKitError(f"{fn}: negatives must be a floating tensor (got "
                              f"{negatives.dtype}): call negatives.float()")
        if negatives.dtype != first.dtype:
            raise SSLKitError(f"{fn}: negatives must have the dtype of {first_name}, got "
                              f"{negatives.dtype} and {first.dtype}: call "
                              f"negatives.to({first_name}.dtype)")
        if negatives.shape[-1] != d:
            raise SSLKitError(f"{fn}: negatives must have D={d} like {first_name}, got shape "
                              f"{_shape(negatives)}: embed negatives with the same network")
        if negatives.ndim == 3 and negatives.shape[0] != n:
            raise SSLKitError(f"{fn}: negatives of shape (N, K, D) need N={n} like "
                              f"{first_name}, got shape {_shape(negatives)}: give one set of "
                              f"negatives per query, or a shared (K, D) tensor")
        if negatives.shape[-2] == 0:
            raise SSLKitError(f"{fn}: negatives is empty (shape {_shape(negatives)}): "
                              f"pass at least one negative (K >= 1)")
        _check_device(fn, {first_name: first, "negatives": negatives})


def _pair_similarities(z1: Tensor, z2: Tensor):
    """Shared set-up of the SimCLR losses (Algorithm 1 of Chen et al., 2020).

    Returns ``sim`` (2N, 2N) cosine similarities of the 2N views ``cat([z1, z2])``,
    ``partner`` (2N,) with ``partner[i] = (i + N) mod 2N`` (index of the positive of view i),
    and ``negative_mask`` (2N, 2N), True where k is a negative of anchor i (k != i, partner[i]).
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)  # (2N, D)
    sim = cosine_similarity_matrix(z, z)  # (2N, 2N)
    idx = torch.arange(2 * n, device=z.device)  # (2N,)
    partner = (idx + n) % (2 * n)  # (2N,)
    negative_mask = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=z.device)  # (2N, 2N)
    negative_mask[idx, idx] = False  # the anchor itself
    negative_mask[idx, partner] = False  # its positive
    return sim, partner, negative_mask


def _semi_hard(sim: Tensor, partner: Tensor, negative_mask: Tensor) -> Tensor:
    """Semi-hard negatives (after FaceNet): of each anchor's negatives, keep only those LESS
    similar to it than its positive. sim, negative_mask (2N, 2N); partner (2N,) -> (2N, 2N) bool.

    The negatives harder than the positive are dropped; they are the ones that most often
    share the anchor's class, and the ones that can make a loss push an embedding to collapse.
    """
    pos_sim = sim.gather(1, partner[:, None])  # (2N, 1)
    return negative_mask & (sim < pos_sim)


# ----------------------------------------------------------------------------------------------
# Public losses
# ----------------------------------------------------------------------------------------------


@in_float32
def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every row of ``a`` (N, D) with every row of ``b`` (M, D) -> (N, M).

    Rows are L2-normalised first (``F.normalize``, eps 1e-12, so an all-zero row gives 0).
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor) or t.ndim != 2 or not t.is_floating_point():
            got = (f"{t.dtype} of shape {_shape(t)}" if isinstance(t, Tensor)
                   else type(t).__name__)
            raise SSLKitError(f"cosine_similarity_matrix: {name} must be a floating tensor of "
                              f"rows (N, D), got {got}: stack the embeddings as rows, e.g. "
                              f"torch.stack(rows).float()")
    if a.shape[1] != b.shape[1] or a.dtype != b.dtype:
        raise SSLKitError(f"cosine_similarity_matrix: a and b must have the same width D and "
                          f"dtype, got {_shape(a)} {a.dtype} and {_shape(b)} {b.dtype}: embed "
                          "both with the same network")
    _check_device("cosine_similarity_matrix", {"a": a, "b": b})
    a = F.normalize(a, dim=-1)  # (N, D), unit rows
    b = F.normalize(b, dim=-1)  # (M, D), unit rows
    return a @ b.T  # (N, M)


@in_float32
def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor,
                 margin: float = 1.0) -> Tensor:
    """Triplet hinge on squared Euclidean distances (Schroff et al., 2015).

    For each row i:  ``max(0, ||a_i - p_i||^2 - ||a_i - n_i||^2 + margin)``; returns the mean
    over the N rows. No normalisation: the loss depends on the scale of the embeddings.

    anchor, positive, negative: (N, D). margin: a finite number >= 0 (0 lets a collapsed
    embedding, every image at one point, reach loss 0; a negative margin is met by it even
    more easily, so it is an error).
    """
    _check_inputs("triplet_loss", {"anchor": anchor, "positive": positive,
                                   "negative": negative})
    _check_margin("triplet_loss", margin, 1.0)
    d_pos = (anchor - positive).pow(2).sum(dim=1)  # (N,)
    d_neg = (anchor - negative).pow(2).sum(dim=1)  # (N,)
    return F.relu(d_pos - d_neg + margin).mean()


@in_float32
def info_nce(query: Tensor, positive: Tensor, negatives: Tensor,
             temperature: float = 0.1) -> Tensor:
    """InfoNCE: pick the positive out of 1 + K candidates (van den Oord et al., 2018).

    query, positive: (N, D). negatives: (N, K, D) -- K negatives per query -- or (K, D) shared
    by all queries. With cosine similarity s and temperature t, for each query i:

        loss_i = -log( exp(s(q_i, p_i)/t) / (exp(s(q_i, p_i)/t) + sum_k exp(s(q_i, n_k)/t)) )

    i.e. cross-entropy over logits [positive, negatives...] with the label 0. Mean over N.
    """
    _check_inputs("info_nce", {"query": query, "positive": positive},
                  temperature=temperature, negatives=negatives)
    q = F.normalize(query, dim=-1)  # (N, D)
    p = F.normalize(positive, dim=-1)  # (N, D)
    neg = F.normalize(negatives, dim=-1)  # (K, D) or (N, K, D)
    pos_sim = (q * p).sum(dim=1, keepdim=True)  # (N, 1)
    if neg.ndim == 2:
        neg_sim = q @ neg.T  # (N, K), shared negatives
    else:
        # legend: n = query, k = negative, d = feature
        neg_sim = torch.einsum("nd,nkd->nk", q, neg)  # (N, K), per-query negatives
    logits = torch.cat([pos_sim, neg_sim], dim=1) / temperature  # (N, 1 + K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # (N,), class 0
    return F.cross_entropy(logits, labels)


@in_float32
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent loss (Chen et al., 2020, Algorithm 1), vectorised.

    z1, z2: (N, D), z1[i] and z2[i] are the two views of image i. The 2N views are stacked,
    s_ij is their cosine similarity, and for each anchor i with partner j:

        l(i, j) = -log( exp(s_ij/t) / sum_{k != i} exp(s_ik/t) )

    (the denominator has the positive and the 2N - 2 negatives). Returns the mean of l over
    all 2N anchors. Implementation: logits = similarity / t with the diagonal set to -inf,
    labels = index of the partner, ``F.cross_entropy``. Needs N >= 2.
    """
    _check_inputs("nt_xent", {"z1": z1, "z2": z2}, min_pairs=2, temperature=temperature)
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)  # (2N, D)
    logits = cosine_similarity_matrix(z, z) / temperature  # (2N, 2N)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)  # (2N, 2N)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is not its own candidate
    labels = (torch.arange(2 * n, device=z.device) + n) % (2 * n)  # (2N,), partner of view i
    return F.cross_entropy(logits, labels)


@in_float32
def nt_xent_logits(z1: Tensor, z2: Tensor, temperature: float = 0.5, normalize: bool = True,
                   semi_hard: bool = False) -> tuple[Tensor, Tensor]:
    """The (logits (2N, 2N), labels (2N,)) whose cross-entropy is NT-Xent, with the variants of
    SimCLR's ablations; ``F.cross_entropy(*nt_xent_logits(z1, z2, t))`` equals ``nt_xent``.

    normalize=False: raw dot products z_i . z_k / t instead of cosine similarities (Table 5 of
    the paper, where the contrastive task gets easier but the representation worse).
    semi_hard=True: each anchor's negatives that are more similar to it than its positive are
    left out of the softmax (logit -inf), as the semi-hard mining of Table 4.
    The anchor's own entry is always -inf; the label is the index of its partner view.
    """
    _check_inputs("nt_xent_logits", {"z1": z1, "z2": z2}, min_pairs=2, temperature=temperature)
    sim, partner, negative_mask = _pair_similarities(z1, z2)  # (2N, 2N), (2N,), (2N, 2N)
    if not normalize:
        z = torch.cat([z1, z2], dim=0)  # (2N, D)
        sim = z @ z.T  # (2N, 2N) dot products
    keep = _semi_hard(sim, partner, negative_mask) if semi_hard else negative_mask  # (2N, 2N)
    keep = keep.clone()
    keep[torch.arange(len(partner), device=keep.device), partner] = True  # the positive stays
    logits = (sim / temperature).masked_fill(~keep, float("-inf"))  # (2N, 2N)
    return logits, partner


@in_float32
def nt_xent_loop(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """The same value as :func:`nt_xent`, as a plain loop over the 2N anchors (slow, readable).

    Written straight from Algorithm 1 of the SimCLR paper. It exponentiates s/t directly, so
    a very small temperature (t < ~0.012 in float32) overflows; use :func:`nt_xent` for training.
    """
    _check_inputs("nt_xent_loop", {"z1": z1, "z2": z2}, min_pairs=2, temperature=temperature)
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)  # (2N, D): views 0..N-1 from z1, N..2N-1 from z2
    z = z / z.norm(dim=1, keepdim=True)  # unit rows, so a dot product is a cosine similarity
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # the other view of the same image
        numerator = torch.exp(torch.dot(z[i], z[j]) / temperature)
        denominator = 0.0
        for k in range(2 * n):
            if k != i:
                denominator = denominator + torch.exp(torch.dot(z[i], z[k]) / temperature)
        total = total - torch.log(numerator / denominator)  # l(i, j)
    return total / (2 * n)


@in_float32
def nt_logistic(z1: Tensor, z2: Tensor, temperature: float = 0.5,
                semi_hard: bool = False) -> Tensor:
    """NT-Logistic loss from SimCLR's loss comparison (Chen et al., 2020, Table 2).

    Same pairing as :func:`nt_xent`: 2N anchors, each with one positive (its partner view) and
    2N - 2 negatives. With cosine similarity s and temperature t, for anchor i:

        loss_i = -log sigmoid(s(i, pos)/t) - SUM_{negatives k} log sigmoid(-s(i, k)/t)

    Reduction: summed over the negatives, then averaged over the 2N anchors. Needs N >= 2.
    semi_hard=True sums only over the negatives less similar to the anchor than its positive
    (the paper's "NT-Logi. (sh)"); by default every negative counts.
    """
    _check_inputs("nt_logistic", {"z1": z1, "z2": z2}, min_pairs=2, temperature=temperature)
    sim, partner, negative_mask = _pair_similarities(z1, z2)  # (2N, 2N), ...
    if semi_hard:
        negative_mask = _semi_hard(sim, partner, negative_mask)
    logits = sim / temperature  # (2N, 2N)
    pos_logit = logits.gather(1, partner[:, None]).squeeze(1)  # (2N,)
    pos_term = -F.logsigmoid(pos_logit)  # (2N,)
    neg_term = (-F.logsigmoid(-logits) * negative_mask).sum(dim=1)  # (2N,), sum over negatives
    return (pos_term + neg_term).mean()


@in_float32
def margin_triplet(z1: Tensor, z2: Tensor, margin: float = 0.5,
                   semi_hard: bool = False) -> Tensor:
    """Margin triplet loss from SimCLR's loss comparison (Chen et al., 2020, Table 2).

    Same pairing as :func:`nt_xent`. With cosine similarity s (in [-1, 1], no temperature) and
    margin m (default 0.5), for anchor i:

        loss_i = SUM over the 2N-2 negatives k of max(s(i, k) - s(i, pos) + m, 0)

    Reduction: summed over the negatives, then averaged over the 2N anchors. Needs N >= 2.
    semi_hard=True sums only over the negatives less similar than the positive, so a hinge is
    active only for s(i, pos) - m < s(i, k) < s(i, pos): FaceNet's semi-hard band ("Margin (sh)"
    in the paper); by default every negative counts. A negative or non-finite margin is an
    error (a negative one is met by a collapsed embedding, s(i, k) = s(i, pos) for all k).
    """
    _check_inputs("margin_triplet", {"z1": z1, "z2": z2}, min_pairs=2)
    _check_margin("margin_triplet", margin, 0.5)
    sim, partner, negative_mask = _pair_similarities(z1, z2)  # (2N, 2N), ...
    if semi_hard:
        negative_mask = _semi_hard(sim, partner, negative_mask)
    pos_sim = sim.gather(1, partner[:, None])  # (2N, 1)
    hinge = F.relu(sim - pos_sim + margin)  # (2N, 2N), one entry per (anchor, candidate)
    return (hinge * negative_mask).sum(dim=1).mean()  # sum over negatives, mean over anchors


# ----------------------------------------------------------------------------------------------
# MoCo (He et al., 2020): queries against their keys and a queue of old keys
# ----------------------------------------------------------------------------------------------


def _check_queue(fn: str, q: Tensor, queue: Tensor) -> None:
    if not isinstance(queue, Tensor) or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        got = _shape(queue) if isinstance(queue, Tensor) else type(queue).__name__
        raise SSLKitError(f"{fn}: queue must be (K, D) with D={q.shape[1]} like q, got {got}: "
                          f"store one key per row")
    if not queue.is_floating_point() or queue.shape[0] == 0:
        raise SSLKitError(f"{fn}: queue must be a non-empty floating tensor (got {queue.dtype}, "
                          f"shape {_shape(queue)}): fill it with normalised random keys")
    if queue.dtype != q.dtype:
        raise SSLKitError(f"{fn}: queue must have the dtype of q, got {queue.dtype} and "
                          f"{q.dtype}: call queue.to(q.dtype)")
    _check_device(fn, {"q": q, "queue": queue})


@in_float32
def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo's InfoNCE: each query q_i must pick its key k_i out of [k_i, queue_0..queue_{K-1}].

    q, k: (N, D) queries (query encoder) and keys (momentum encoder); queue: (K, D) keys of
    earlier batches, the negatives. Keys and queue carry no gradient (detached here). With
    cosine similarities and temperature t:

        logits_i = [q_i . k_i, q_i . queue_0, ..., q_i . queue_{K-1}] / t      (1 + K,)
        loss = mean_i cross_entropy(logits_i, label 0)
    """
    _check_inputs("moco_loss", {"q": q, "k": k}, temperature=temperature)
    _check_queue("moco_loss", q, queue)
    q = F.normalize(q, dim=1)  # (N, D)
    k = F.normalize(k.detach(), dim=1)  # (N, D), no gradient into the key encoder
    queue = F.normalize(queue.detach(), dim=1)  # (K, D)
    # legend: n = query, d = feature, k = queue entry
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = torch.einsum("nd,kd->nk", q, queue)  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K), positive first
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # (N,)
    return F.cross_entropy(logits, labels)


@in_float32
def moco_loss_loop(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """The same value as :func:`moco_loss`, one query at a time (slow, readable)."""
    _check_inputs("moco_loss_loop", {"q": q, "k": k}, temperature=temperature)
    _check_queue("moco_loss_loop", q, queue)
    total = 0.0
    for i in range(q.shape[0]):
        qi = q[i] / q[i].norm()
        pos = torch.exp(torch.dot(qi, k[i].detach() / k[i].detach().norm()) / temperature)
        neg = sum(torch.exp(torch.dot(qi, n.detach() / n.detach().norm()) / temperature)
                  for n in queue)
        total = total - torch.log(pos / (pos + neg))
    return total / q.shape[0]


# ----------------------------------------------------------------------------------------------
# DINO (Caron et al., 2021): cross-entropy between a centred, sharpened teacher and the student
# ----------------------------------------------------------------------------------------------


def _check_dino(fn: str, student_out, teacher_out, center, student_temp: float,
                teacher_temp: float) -> None:
    for name, outs in (("student_out", student_out), ("teacher_out", teacher_out)):
        if isinstance(outs, Tensor) or not all(isinstance(t, Tensor) for t in outs):
            raise SSLKitError(f"{fn}: {name} must be a list of (N, K) tensors, one per crop: "
                              f"pass [head(crop) for crop in crops]")
    if len(teacher_out) == 0 or len(student_out) < len(teacher_out):
        raise SSLKitError(f"{fn}: need >= 1 teacher output and at least as many student outputs, "
                          f"got {len(student_out)} student and {len(teacher_out)} teacher: pass "
                          f"every crop to the student and the global crops (first) to the teacher")
    if len(student_out) < 2:  # the only pair would be a crop with itself, which is skipped
        raise SSLKitError(f"{fn}: one student output leaves no pair of different crops: pass "
                          "the outputs of at least 2 crops (the 2 global crops first)")
    shape = student_out[0].shape
    for name, outs in (("student_out", student_out), ("teacher_out", teacher_out)):
        for i, t in enumerate(outs):
            if not t.is_floating_point():
                raise SSLKitError(f"{fn}: every output must be floating logits, got {name}[{i}] "
                                  f"of {t.dtype}: pass the heads' outputs as they are")
            if len(shape) != 2 or t.shape != shape or 0 in shape:
                raise SSLKitError(f"{fn}: every output must be (N, K) like student_out[0] "
                                  f"{_shape(student_out[0])} with N, K >= 1, got {name}[{i}] "
                                  f"{_shape(t)}: give every crop's head output for the same N "
                                  "images")
    if (not isinstance(center, Tensor) or center.shape not in ((shape[1],), (1, shape[1]))
            or not center.is_floating_point()):
        got = (f"{_shape(center)} {center.dtype}" if isinstance(center, Tensor)
               else type(center).__name__)
        raise SSLKitError(f"{fn}: center must be a tensor of floats, of shape (K,) or (1, K) with "
                          f"K={shape[1]}, got {got}: keep it as torch.zeros(1, K)")
    for name, temp, value in (("student_temp", student_temp, 0.1),
                              ("teacher_temp", teacher_temp, 0.04)):
        _check_temperature(fn, name, temp, f"use DINO's {name}={value} (--option "
                           f"{name}={value} on the command line)")
    _check_device(fn, {**{f"student_out[{i}]": t for i, t in enumerate(student_out)},
                       **{f"teacher_out[{i}]": t for i, t in enumerate(teacher_out)},
                       "center": center})


def dino_loss(student_out, teacher_out, center: Tensor, student_temp: float = 0.1,
              teacher_temp: float = 0.04) -> Tensor:
    """DINO's loss. student_out: list of V (N, K) logits, global crops first; teacher_out: list
    of G (N, K) logits of the global crops; center (K,) or (1, K).

        p_t = softmax((t - center) / teacher_temp)   no gradient (centring + sharpening)
        loss = mean over pairs (g, v), v != g, of mean_n sum_k -p_t[g] log softmax(s[v] / T_s)
    """
    _check_dino("dino_loss", student_out, teacher_out, center, student_temp, teacher_temp)
    with torch.autocast(device_type=center.device.type, enabled=False):
        s = torch.stack([_up(x) for x in student_out]) / student_temp  # (V, N, K)
        t = torch.stack([_up(x).detach() for x in teacher_out])  # (G, N, K)
        p_t = F.softmax((t - _up(center).detach()) / teacher_temp, dim=-1)  # (G, N, K)
        log_p_s = F.log_softmax(s, dim=-1)  # (V, N, K)
        # legend: g = teacher crop, v = student crop, n = image, k = output dimension
        ce = -torch.einsum("gnk,vnk->gv", p_t, log_p_s) / s.shape[1]  # (G, V) mean over n
        g_count, v_count = ce.shape
        same = torch.eye(g_count, v_count, dtype=torch.bool, device=ce.device)  # v == g
        pairs = g_count * v_count - min(g_count, v_count)  # counted on the host: no GPU wait
        return ce.masked_fill(same, 0.0).sum() / pairs


def _up(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def dino_loss_loop(student_out, teacher_out, center: Tensor, student_temp: float = 0.1,
                   teacher_temp: float = 0.04) -> Tensor:
    """The same value as :func:`dino_loss`, one (teacher crop, student crop) pair at a time."""
    _check_dino("dino_loss_loop", student_out, teacher_out, center, student_temp,
                teacher_temp)
    total, pairs = 0.0, 0
    for g, t in enumerate(teacher_out):
        t, c = t.detach(), center.detach()
        p_t = F.softmax((_up(t) - _up(c)) / teacher_temp, dim=-1)
        for v, s in enumerate(student_out):
            if v == g:  # a crop is never compared with itself
                continue
            log_p_s = F.log_softmax(_up(s) / student_temp, dim=-1)
            total = total + (-(p_t * log_p_s).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


# ----------------------------------------------------------------------------------------------
# MAE (He et al., 2021): pixel regression on the masked patches only
# ----------------------------------------------------------------------------------------------

NORM_PIX_EPS = 1e-6  # added to each patch's variance before the square root, as in MAE's code


def _check_mae(fn: str, pred, target, mask, norm_pix: bool) -> None:
    for name, t in (("pred", pred), ("target", target), ("mask", mask)):
        if not isinstance(t, Tensor):
            raise SSLKitError(f"{fn}: {name} must be a torch.Tensor (got {type(t).__name__}): "
                              f"convert it with torch.as_tensor(...)")
    if pred.ndim != 3 or pred.shape != target.shape:
        raise SSLKitError(f"{fn}: pred and target must both be (N, L, P) patch pixels, got "
                          f"{_shape(pred)} and {_shape(target)}: patchify the images first")
    if not pred.is_floating_point() or not target.is_floating_point():
        raise SSLKitError(f"{fn}: pred and target must be floating tensors (got {pred.dtype} "
                          f"and {target.dtype}): call .float()")
    if mask.shape != pred.shape[:2]:
        raise SSLKitError(f"{fn}: mask must be (N, L) = {tuple(pred.shape[:2])} with 1 = "
                          f"masked, got {_shape(mask)}: pass the mask from random_masking")
    if norm_pix and pred.shape[2] < 2:
        raise SSLKitError(f"{fn}: norm_pix needs at least 2 values per patch (got P="
                          f"{pred.shape[2]}): use norm_pix=False")
    _check_device(fn, {"pred": pred, "target": target, "mask": mask})
    # Its values are read on the CPU only, where that costs no wait: on a GPU the check would
    # make the host wait for the device at every training step (tests/test_no_host_sync.py).
    if mask.device.type == "cpu" and mask.dtype != torch.bool and bool(
            ((mask != 0) & (mask != 1)).any()):
        bad = mask[(mask != 0) & (mask != 1)][0].item()
        raise SSLKitError(f"{fn}: mask must hold only 0 (visible) and 1 (masked), got {bad}: "
                          "pass the 0/1 mask from random_masking (a weighted mask is not MAE's "
                          "loss), e.g. (mask > 0.5).float()")


def _normalise_patches(target: Tensor) -> Tensor:
    """(N, L, P) -> each patch minus its mean, over sqrt(its unbiased variance + 1e-6)."""
    mean = target.mean(dim=-1, keepdim=True)  # (N, L, 1)
    var = target.var(dim=-1, keepdim=True)  # (N, L, 1), unbiased (divides by P - 1)
    return (target - mean) / (var + NORM_PIX_EPS) ** 0.5


@in_float32
def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = False) -> Tensor:
    """MAE's reconstruction loss: mean squared error over the masked patches only.

    pred, target: (N, L, P) pixels of the L patches of each image (``models.vit.patchify``);
    mask: (N, L), 1 = masked (hidden from the encoder), 0 = visible; float, integer or bool
    (True = masked). Any other value is an error (checked on the CPU; on a GPU the values are
    not read, which would make every training step wait). With norm_pix, each target patch is
    first normalised by its own mean and unbiased variance (+ 1e-6), as MAE's code does.

        per_patch[n, l] = mean_p (pred[n, l, p] - target[n, l, p])^2          (N, L)
        loss = sum(per_patch * mask) / sum(mask)

    Visible patches do not enter the loss (their predictions get no gradient); a mask with no
    masked patch gives 0. The target carries no gradient.
    """
    _check_mae("mae_loss", pred, target, mask, norm_pix)
    target = target.detach()
    if norm_pix:
        target = _normalise_patches(target)  # (N, L, P)
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (N, L)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


@in_float32
def mae_loss_loop(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = False) -> Tensor:
    """The same value as :func:`mae_loss`, one patch at a time (slow, readable)."""
    _check_mae("mae_loss_loop", pred, target, mask, norm_pix)
    total, masked = pred.new_zeros(()), 0
    for n in range(pred.shape[0]):
        for patch in range(pred.shape[1]):
            if mask[n, patch] == 0:  # a visible patch: the encoder saw it, nothing to predict
                continue
            t = target[n, patch].detach()  # (P,)
            if norm_pix:
                t = (t - t.mean()) / torch.sqrt(t.var() + NORM_PIX_EPS)
            total = total + ((pred[n, patch] - t) ** 2).mean()
            masked += 1
    return total / max(masked, 1)


# ----------------------------------------------------------------------------------------------
# CPC (van den Oord et al., 2018): predict the patches k rows below from the context above
# ----------------------------------------------------------------------------------------------


def _check_cpc(fn: str, z, c, W) -> None:
    for name, t, want in (("z", z, "(N, rows, cols, D)"), ("c", c, "(N, rows, cols, H)"),
                          ("W", W, "(K, D, H)")):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise SSLKitError(f"{fn}: {name} must be a floating tensor {want} (got {got}): "
                              f"convert it with torch.as_tensor(...).float()")
    if not z.dtype == c.dtype == W.dtype:
        raise SSLKitError(f"{fn}: z, c and W must share one dtype, got {z.dtype}, {c.dtype} and "
                          f"{W.dtype}: convert them alike, e.g. z.to(W.dtype)")
    if z.ndim != 4 or 0 in z.shape:
        raise SSLKitError(f"{fn}: z must be (N, rows, cols, D), one encoding per patch of the "
                          f"grid, got shape {_shape(z)}: reshape the patch encodings to the grid")
    if c.ndim != 4 or c.shape[:3] != z.shape[:3]:
        raise SSLKitError(f"{fn}: c must be (N, rows, cols, H) on the grid of z "
                          f"{tuple(z.shape[:3])}, got shape {_shape(c)}: run the context network "
                          f"over the same patch encodings")
    if W.ndim != 3 or W.shape[1:] != (z.shape[3], c.shape[3]) or W.shape[0] == 0:
        raise SSLKitError(f"{fn}: W must be (K, D, H) = (K, {z.shape[3]}, {c.shape[3]}), one "
                          f"map per step k = 1..K, got shape {_shape(W)}: stack the K maps")
    if W.shape[0] >= z.shape[1]:
        raise SSLKitError(f"{fn}: predicting K={W.shape[0]} rows ahead needs more than K rows, "
                          f"got {z.shape[1]}: use K <= {z.shape[1] - 1} or a finer patch grid")
    _check_device(fn, {"z": z, "c": c, "W": W})


@in_float32
def cpc_logits(z: Tensor, c: Tensor, W: Tensor, candidates: Tensor | None = None,
               offset: int = 0) -> list[tuple[Tensor, Tensor]]:
    """CPC's scores as K classification problems, one per step k = 1..K.

    z: (N, R, C, D) patch encodings on an R x C grid; c: (N, R, C, H) contexts, c[n, t, j]
    summarising rows <= t of column j; W: (K, D, H), W[k - 1] is the map of step k. The score
    of a candidate patch encoding z' for context c_t at step k is s_k = z'ᵀ W_k c_t.

    Candidates: every one of the M = N·R·C patch encodings of the batch (all images, rows and
    columns, flattened in (n, row, col) order), as in CPC v2. For each context (n, t, j) with
    t + k < R, the positive is z[n, t + k, j], flat index (n·R + t + k)·C + j; the negatives are
    the other M - 1 patches: other images (tells images apart) and other positions of the same
    image (so the prediction has to be about *where*, not only about *which image*).

    candidates (M', D), offset: score against these instead, where z's patches are the rows
    offset .. offset + M - 1 (under torchrun: every process's patches, rank-major; see
    sslkit.methods.cpc.cpc_loss_across_ranks). The labels then index these rows.

    Returns [(logits (N·(R-k)·C, M), labels (N·(R-k)·C,)) for k = 1..K].
    """
    _check_cpc("cpc_logits", z, c, W)
    n, rows, cols, d = z.shape
    if candidates is None:
        candidates = z.reshape(n * rows * cols, d)  # (M, D)
    elif (not isinstance(candidates, Tensor) or candidates.ndim != 2
          or candidates.shape[1] != d or candidates.dtype != z.dtype
          or not 0 <= offset <= candidates.shape[0] - n * rows * cols):
        got = (f"{_shape(candidates)} {candidates.dtype}" if isinstance(candidates, Tensor)
               else type(candidates).__name__)
        raise SSLKitError(f"cpc_logits: candidates must be ({z.dtype}) rows (M', {d}) holding "
                          f"z's {n * rows * cols} patches from row offset={offset}, got {got}: "
                          "pass the gathered patch encodings, flattened rank-major, as a tensor")
    else:
        _check_device("cpc_logits", {"z": z, "candidates": candidates})
    flat = torch.arange(n * rows * cols, device=z.device).view(n, rows, cols) + offset  # (N,R,C)
    out = []
    for k in range(1, W.shape[0] + 1):
        # legend: n = image, t = context row, j = column, d = z feature, h = context feature
        pred = torch.einsum("dh,ntjh->ntjd", W[k - 1], c[:, : rows - k])  # (N, R-k, C, D)
        logits = pred.reshape(-1, d) @ candidates.T  # (N·(R-k)·C, M)
        labels = flat[:, k:].reshape(-1)  # (N·(R-k)·C,), the patch k rows below
        out.append((logits, labels))
    return out


@in_float32
def cpc_loss(z: Tensor, c: Tensor, W: Tensor) -> Tensor:
    """CPC's InfoNCE (van den Oord et al., 2018) on a grid of patches, vectorised.

    z: (N, R, C, D), c: (N, R, C, H), W: (K, D, H); candidates and positives as in
    :func:`cpc_logits`. For step k and context (n, t, j), with s_k(z', c) = z'ᵀ W_k c:

        l_k(n, t, j) = -log( exp s_k(z[n,t+k,j], c[n,t,j]) / sum_z' exp s_k(z', c[n,t,j]) )

    where z' runs over every patch encoding of the batch.

    loss = mean over k of (mean over the N·(R-k)·C contexts of l_k): every step counts equally,
    although there are fewer contexts further ahead. Needs R > K.
    """
    return torch.stack([F.cross_entropy(logits, labels)
                        for logits, labels in cpc_logits(z, c, W)]).mean()


@in_float32
def cpc_loss_loop(z: Tensor, c: Tensor, W: Tensor) -> Tensor:
    """The same value as :func:`cpc_loss`, a plain loop over k, images, rows t and columns j."""
    _check_cpc("cpc_loss_loop", z, c, W)
    n, rows, cols, _ = z.shape
    candidates = [z[m, u, i] for m in range(n) for u in range(rows) for i in range(cols)]
    per_step = []
    for k in range(1, W.shape[0] + 1):
        terms = []
        for b in range(n):
            for t in range(rows - k):  # a context needs a row k below it
                for j in range(cols):
                    prediction = W[k - 1] @ c[b, t, j]  # (D,), W_k c_t
                    scores = torch.stack([torch.dot(cand, prediction) for cand in candidates])
                    positive = torch.dot(z[b, t + k, j], prediction)
                    terms.append(torch.logsumexp(scores, dim=0) - positive)  # -log softmax
        per_step.append(torch.stack(terms).mean())
    return torch.stack(per_step).mean()
