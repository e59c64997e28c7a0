"""Evaluation of frozen representations: feature extraction, weighted kNN, linear probe, t-SNE.

The encoder is frozen; only its features h (before any projection head) are used. Raw pixels
can be evaluated the same way by passing ``pixels(x)`` as features: the baseline that shows
what self-supervision adds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.errors import SSLKitError


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str | None = None
) -> torch.Tensor:
    """images (N, C, H, W) uint8 -> features (N, D) float32 on the CPU, encoder in eval mode."""
    device = device or next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    feats = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float() / 255
        feats.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(feats)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """images (N, C, H, W) uint8 -> raw pixel features (N, C*H*W) in [0, 1]."""
    return images.reshape(len(images), -1).float() / 255


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN (Wu et al., 2018): predicted labels (M,) for test_features (M, D).

    Cosine similarity to the train features (N, D); each of the k nearest neighbours votes for
    its label with weight exp(sim / temperature); the class with the largest total wins, ties
    going to the lower class index. k is capped at N. Test points go in chunks to bound memory.
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise SSLKitError(
            "knn_predict needs 2-D features (N, D) and (M, D), got "
            f"{tuple(train_features.shape)} and {tuple(test_features.shape)}: flatten them first"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise SSLKitError(
            f"train and test features differ in size ({train_features.shape[1]} vs "
            f"{test_features.shape[1]}): extract both with the same encoder"
        )
    if len(train_labels) != len(train_features):
        raise SSLKitError(f"{len(train_features)} train features but {len(train_labels)} labels: "
                          "pass one label per feature row, in the same order")
    if k < 1 or not temperature > 0:
        raise SSLKitError(f"kNN needs k >= 1 and temperature > 0 (got k={k}, temperature="
                          f"{temperature}): use e.g. k=200, temperature=0.1")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train_features))
    train = F.normalize(train_features.float(), dim=1)  # (N, D)
    preds = []
    for start in range(0, len(test_features), chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float(), dim=1)  # (m, D)
        sim, idx = (test @ train.T).topk(k, dim=1)  # (m, k)
        weights = (sim / temperature).exp()  # (m, k)
        votes = torch.zeros(len(test), num_classes, device=test.device)  # (m, classes)
        votes.scatter_add_(1, train_labels.to(test.device)[idx], weights)
        preds.append(votes.argmax(dim=1))  # argmax picks the first maximum: the lower class
    return torch.cat(preds)


def knn_accuracy(train_f, train_y, test_f, test_y, k: int = 200, temperature: float = 0.1):
    """Fraction of test points whose kNN prediction equals their label."""
    pred = knn_predict(train_f, train_y, test_f, k, temperature)
    return float((pred == test_y.to(pred.device)).float().mean())


def labels_per_class_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of `per_class` random examples of every class (all of a class if it has fewer)."""
    rng = np.random.default_rng(seed)
    labels = labels.numpy()
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    labels_per_class: int | None = None,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe on frozen features.

    Features are standardised with the training statistics; with labels_per_class, the probe
    sees only that many labelled examples of each class (the limited-label setting).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if labels_per_class is not None and labels_per_class < 1:
        raise SSLKitError(f"labels_per_class must be at least 1 (got {labels_per_class}): use "
                          "e.g. 10, or None for every label")
    idx = (np.arange(len(train_y)) if labels_per_class is None
           else labels_per_class_subset(train_y, labels_per_class, seed))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(train_f[idx].numpy(), train_y[idx].numpy())
    return float(probe.score(test_f.numpy(), test_y.numpy()))


def tsne(features: torch.Tensor, seed: int = 0) -> np.ndarray:
    """features (N, D) -> 2-D t-SNE embedding (N, 2) (scikit-learn, PCA initialisation)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if len(features) < 4:
        raise SSLKitError(f"t-SNE needs at least 4 points (got {len(features)}): pass more")
    perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One BLAS/OpenMP thread: on small sets, extra threads fighting torch's cost 30x the time.
    with threadpool_limits(1):
        return model.fit_transform(features.numpy())


# ---------------------------------------------------------------------------------------------
# Accuracy and a linear probe in torch (the loop the notebook's exercise writes)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows of logits (N, C) whose label (N,) is among the k highest logits.

    Classes are ranked by logit, equal logits by class index (lower first, as argmax does), so
    k=1 is the accuracy of argmax and k=C is 1. The label's rank is the number of classes ranked
    before it: those with a larger logit, or an equal logit and a lower index.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise SSLKitError(
            f"topk_accuracy needs logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}: pass one row of class scores per label"
        )
    if not 1 <= k:
        raise SSLKitError(f"k={k} is not a number of classes: use k >= 1")
    labels = labels.to(logits.device).long()
    classes = torch.arange(logits.shape[1], device=logits.device)  # (C,)
    own = logits.gather(1, labels[:, None])  # (N, 1) the label's logit
    ahead = (logits > own) | ((logits == own) & (classes < labels[:, None]))  # (N, C)
    return float((ahead.sum(dim=1) < k).float().mean())


class Standardize(nn.Module):
    """x -> (x - mean) / std with the statistics of the training features, kept as buffers."""

    def __init__(self, features: torch.Tensor, eps: float = 1e-6):
        super().__init__()
        self.register_buffer("mean", features.mean(dim=0))  # (D,)
        self.register_buffer("std", features.std(dim=0) + eps)  # (D,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def linear_probe_step(
    head: nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor,
    labels: torch.Tensor,
) -> float:
    """One step of the probe: cross-entropy of head(features) (N, C) against labels (N,),
    zero_grad, backward, step. Returns the loss (before the step) as a float."""
    loss = F.cross_entropy(head(features), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train_linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> nn.Sequential:
    """A linear classifier on frozen features (N, D): Standardize, then Linear(D, C) from zero.

    Adam on shuffled mini-batches (a seeded order), ``linear_probe_step`` per batch. Returns the
    probe in eval mode; probe(features) (M, D) -> logits (M, C). Starting from zero weights, the
    (convex) problem and the seed fix the result.
    """
    if train_f.ndim != 2 or len(train_f) != len(train_y):
        raise SSLKitError(
            f"train_linear_probe needs features (N, D) and labels (N,), got "
            f"{tuple(train_f.shape)} and {tuple(train_y.shape)}: extract features first"
        )
    train_f, train_y = train_f.float(), train_y.long()
    num_classes = num_classes or int(train_y.max()) + 1
    linear = nn.Linear(train_f.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    probe = nn.Sequential(Standardize(train_f), linear)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    inputs = probe[0](train_f)  # standardised once: (N, D)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # trains even when called under torch.no_grad()
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                linear_probe_step(linear, optimizer, inputs[batch], train_y[batch])
    return probe.eval()


# ---------------------------------------------------------------------------------------------
# Fine-tuning: encoder and a linear head trained together on a labelled set


def _augment(x: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
    """Label-preserving views for supervised training: the crop, flip and rotation of cfg (a
    ViewConfig), no colour changes. x (N, C, H, W) floats -> (N, C, cfg.size, cfg.size)."""
    from sslkit.augment import crop_params, resized_crop_flip

    n = len(x)
    box = crop_params(n, cfg, generator)  # (n, 4)
    flip = torch.rand(n, generator=generator) < cfg.flip_p
    angle = (2 * torch.rand(n, generator=generator) - 1) * np.deg2rad(cfg.rotate_degrees)
    return resized_crop_flip(x, box, flip, cfg.size, angle.float())


class _Standardize(nn.Module):
    """x -> (x - mean) / std with two fixed scalars (buffers, so they follow .to(device))."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def fine_tune(
    encoder: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    augment=None,
    seed: int = 0,
    warmup_steps: int = 0,
    standardize: bool = False,
) -> nn.Sequential:
    """Train a copy of ``encoder`` and a zero-initialised Linear(feature_dim, C) end to end with
    cross-entropy on labelled images (N, C, H, W) uint8 and labels (N,).

    Every step draws batch_size images at random (with replacement, so 10 labelled images work
    as well as 10,000) from a seeded generator, optionally through ``augment`` (a ViewConfig:
    its crop, flip and rotation), and takes one Adam step. The same number of steps for every
    label budget keeps comparisons fair. The encoder passed in is left untouched (a deep copy is
    trained, on the encoder's device). Returns nn.Sequential(encoder, head) in eval mode,
    mapping float images in [0, 1] to logits (use ``extract_features`` to apply it in batches).

    ``warmup_steps``: the learning rate rises linearly from lr / warmup_steps to lr over that
    many steps (0: constant lr). ``standardize``: the inputs are mapped to (x - m) / s with the
    mean and standard deviation of all training pixels, a fixed first module of the returned
    model's encoder part (then ``model[0]`` is nn.Sequential(standardiser, encoder)). Both help
    a small ViT, which does not leave chance within a few hundred steps on raw, mostly black
    digits.
    """
    import copy

    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise SSLKitError(
            f"fine_tune needs images (N, C, H, W) and labels (N,) with N > 0, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}: pass the labelled subset"
        )
    if not hasattr(encoder, "feature_dim"):
        raise SSLKitError("fine_tune needs an encoder with .feature_dim (see sslkit.models): "
                          "pass method.encoder, not the whole method")
    labels = labels.long()
    num_classes = num_classes or int(labels.max()) + 1
    device = next(encoder.parameters()).device
    head = nn.Linear(encoder.feature_dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    body = copy.deepcopy(encoder)
    if standardize:
        pixels_ = images.float() / 255
        std = float(pixels_.std()) or 1.0
        body = nn.Sequential(_Standardize(float(pixels_.mean()), std), body)
    model = nn.Sequential(body, head).to(device).train()
    for q in model.parameters():
        q.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # trains even when called under torch.no_grad()
        for step in range(steps):
            if warmup_steps > 0:
                for group in optimizer.param_groups:
                    group["lr"] = lr * min(1.0, (step + 1) / warmup_steps)
            idx = torch.randint(0, len(images), (batch_size,), generator=generator)
            x = images[idx].float() / 255  # (B, C, H, W)
            if augment is not None:
                x = _augment(x, augment, generator)
            # the probe's step (cross-entropy, zero_grad, backward, step), through the encoder
            linear_probe_step(model, optimizer, x.to(device), labels[idx].to(device))
    return model.eval()
