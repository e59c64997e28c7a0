"""Evaluation of frozen representations: feature extraction, weighted kNN, linear probe, t-SNE.

The encoder is frozen; only its features h (before any projection head) are used. Raw pixels
can be evaluated the same way by passing ``pixels(x)`` as features: the baseline that shows
what self-supervision adds.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.augment import ViewConfig, crop_params, resized_crop_flip
from sslkit.errors import SSLKitError
from sslkit.unit_images import check_tensor, unit_floats


def _check_finite(features: torch.Tensor, name: str) -> None:
    """One-line error for NaN or infinite features (a diverged encoder), which would otherwise
    give a silently meaningless kNN vote or a deep scikit-learn error."""
    if not bool(torch.isfinite(features).all()):
        raise SSLKitError(f"{name} contain NaN or infinite values: the encoder diverged or "
                          "the input is broken; check the training loss and the images")


def _check_tensors(who: str, **tensors) -> None:
    """One-line error unless every argument is a torch tensor (a NumPy array or a list failed
    deep inside with an AttributeError or TypeError)."""
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise SSLKitError(f"{who}: {name} must be a torch.Tensor (got "
                              f"{type(value).__name__}): convert it with torch.as_tensor(...)")


def _check_whole(value, name: str, example: str) -> None:
    """One-line error unless value is a whole number >= 1 (not a float, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise SSLKitError(f"{name} must be a whole number of at least 1 (got {value!r}): use "
                          f"e.g. {name}={example}")


def _check_labels(labels: torch.Tensor, n: int, num_classes: int | None, who: str) -> None:
    """labels must be (n,) integers in [0, num_classes) (num_classes None: just >= 0)."""
    if labels.shape != (n,):
        raise SSLKitError(f"{who}: {n} feature rows but labels of shape {tuple(labels.shape)}: "
                          "pass one integer label per row, (N,), in the same order")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise SSLKitError(f"{who}: labels must be integer class indices, got {labels.dtype}: "
                          "use labels.long()")
    if n and (int(labels.min()) < 0 or (num_classes is not None
                                        and int(labels.max()) >= num_classes)):
        raise SSLKitError(f"{who}: labels run from {int(labels.min())} to {int(labels.max())}, "
                          f"outside 0..{'C-1' if num_classes is None else num_classes - 1}: "
                          "pass class indices 0..C-1 (and num_classes=C)")


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str | None = None,
    to_cpu: bool = True,
) -> torch.Tensor:
    """images (N, C, H, W), uint8 in [0, 255] or floats in [0, 1] -> features (N, D) float32 on
    the CPU, or with to_cpu=False on the device the encoder ran on (for a kNN vote there: on a
    GPU it takes milliseconds, on the CPU seconds at CIFAR-10's size).

    Pass the encoder f (``method.encoder``), whose output h comes before any projection head.
    It runs in eval mode (BatchNorm on its running statistics, no dropout) without gradients,
    in batches of batch_size on ``device`` (default: the encoder's), the images cast to the
    dtype of its parameters (float32, or e.g. float16 for a ``.half()`` encoder); the train/eval
    mode of each of its modules is restored afterwards, even when it raises.
    """
    check_tensor(images, "extract_features")
    if images.ndim < 2 or len(images) == 0:
        raise SSLKitError(f"extract_features needs a non-empty batch of images (N, C, H, W), "
                          f"got shape {tuple(images.shape)}: pass e.g. data.test_x")
    _check_whole(batch_size, "batch_size", "512")
    first = next((p for p in encoder.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float32
    if device is None:
        device = first.device if first is not None else images.device
    elif first is not None and _other_device(first.device, torch.device(device)):
        raise SSLKitError(f"extract_features: device {str(device)!r} asked for, but the encoder "
                          f"is on {first.device}: move it first (encoder.to({str(device)!r})) "
                          "or leave device unset to use the encoder's")
    # each module's own mode: a part kept in eval (e.g. frozen BatchNorm) stays so afterwards
    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    feats = []  # (b, D) per batch
    try:
        for start in range(0, len(images), batch_size):
            x = unit_floats(images[start : start + batch_size], "extract_features")
            h = encoder(x.to(device, dtype))
            if not isinstance(h, torch.Tensor) or h.shape[:1] != x.shape[:1] or h.ndim != 2:
                shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
                raise SSLKitError(f"extract_features: the encoder returned {shape} for {len(x)} "
                                  "images, not features (N, D): pass method.encoder")
            feats.append(h.float().cpu() if to_cpu else h.float())
    finally:
        for module, training in modes:
            module.train(training)
    return torch.cat(feats)


def _other_device(have: torch.device, asked: torch.device) -> bool:
    """Whether `asked` is not `have` ("cuda" without an index means the current GPU)."""
    return have.type != asked.type or asked.index not in (None, have.index)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """images (N, C, H, W), uint8 in [0, 255] or floats in [0, 1] -> raw pixel features
    (N, C*H*W) in [0, 1], on the images' device."""
    check_tensor(images, "pixels")
    if images.ndim < 2 or len(images) == 0:
        raise SSLKitError(f"pixels needs a non-empty batch of images (N, C, H, W), got shape "
                          f"{tuple(images.shape)}: pass e.g. data.test_x")
    return unit_floats(images, "pixels").reshape(len(images), -1)


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
    Train points tied with the k-th neighbour's similarity (duplicate images) are kept or left
    out as torch.topk chooses, which torch does not specify.
    Runs on the train features' device; the predictions are there too.

    The weights are computed as exp((sim - sim_max) / temperature), the same votes up to a
    factor per test point, so a small temperature cannot overflow them to inf (float32 does at
    sim / T > 88, e.g. T = 0.01) and turn every class with a close neighbour into a tie.
    Everything runs in float32, also inside an autocast region (whose bfloat16 or float16
    similarities, ~3 significant digits, would reorder close neighbours).
    """
    _check_tensors("knn_predict", train_features=train_features, train_labels=train_labels,
                   test_features=test_features)
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
    if len(train_features) == 0 or len(test_features) == 0:
        raise SSLKitError(f"knn_predict got {len(train_features)} train and "
                          f"{len(test_features)} test features: pass at least one of each")
    if len(train_labels) != len(train_features):
        raise SSLKitError(f"{len(train_features)} train features but {len(train_labels)} labels: "
                          "pass one label per feature row, in the same order")
    _check_whole(k, "k", "200")
    if not temperature > 0:
        raise SSLKitError(f"kNN needs temperature > 0 (got {temperature}): use e.g. "
                          "temperature=0.1")
    _check_whole(chunk_size, "chunk_size", "1024")
    _check_labels(train_labels, len(train_features), num_classes, "knn_predict")
    _check_finite(train_features, "knn_predict: the train features")
    _check_finite(test_features, "knn_predict: the test features")
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train_features))
    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)  # (N, D)
    labels = train_labels.to(device).long()  # (N,)
    preds = []
    with torch.autocast(device.type, enabled=False):
        for start in range(0, len(test_features), chunk_size):
            chunk = test_features[start : start + chunk_size].to(device)
            test = F.normalize(chunk.float(), dim=1)  # (m, D)
            sim, idx = (test @ train.T).topk(k, dim=1)  # (m, k), most similar first
            weights = ((sim - sim[:, :1]) / temperature).exp()  # (m, k), in (0, 1]
            votes = torch.zeros(len(test), num_classes, device=device)  # (m, classes)
            votes.scatter_add_(1, labels[idx], weights)
            preds.append(votes.argmax(dim=1))  # argmax picks the first maximum: the lower class
    return torch.cat(preds)


def knn_accuracy(train_f, train_y, test_f, test_y, k: int = 200, temperature: float = 0.1):
    """Fraction of test points (M, D) whose kNN prediction equals their label test_y (M,).

    Unlike knn_predict, which caps k at the N training points, this is the accuracy *at k*: a k
    above N is a one-line error rather than a number reported for a k that was not used. So
    are training labels of a single class, with which every prediction is right."""
    _check_tensors("knn_accuracy", train_f=train_f, train_y=train_y, test_f=test_f,
                   test_y=test_y)
    _check_whole(k, "k", "200")
    if test_y.shape != (len(test_f),):
        raise SSLKitError(f"knn_accuracy: {len(test_f)} test features but test labels of shape "
                          f"{tuple(test_y.shape)}: pass one label per test row, (M,)")
    _check_labels(test_y, len(test_f), None, "knn_accuracy (test)")  # 0.7 would never match
    if k > len(train_f) > 0:
        raise SSLKitError(f"knn_accuracy: k={k} neighbours but only {len(train_f)} training "
                          f"samples: use k={len(train_f)} or less")
    if len(train_y) and len(train_y.unique()) < 2:
        raise SSLKitError(f"knn_accuracy needs training labels of at least 2 classes (got only "
                          f"class {int(train_y[0])}), else every prediction is right: pass a "
                          "labelled set with several classes")
    pred = knn_predict(train_f, train_y, test_f, k, temperature)
    return float((pred == test_y.to(pred.device)).float().mean())


def labels_per_class_subset(labels, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of `per_class` random examples of every class (all of a class if it has
    fewer), for labels (N,) (a tensor on any device, or an array). Index features and labels
    with the same indices to keep them aligned."""
    _check_whole(per_class, "per_class", "10")
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.ndim != 1:
        raise SSLKitError(f"labels_per_class_subset needs labels (N,), got shape "
                          f"{labels.shape}: pass one label per example")
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def _check_features(train_f: torch.Tensor, test_f: torch.Tensor, who: str) -> None:
    """Non-empty 2-D train and test features of the same width, finite."""
    if train_f.ndim != 2 or test_f.ndim != 2 or train_f.shape[1] != test_f.shape[1]:
        raise SSLKitError(f"{who} needs features (N, D) and (M, D), got {tuple(train_f.shape)} "
                          f"and {tuple(test_f.shape)}: extract both with the same encoder")
    if len(train_f) == 0 or len(test_f) == 0:
        raise SSLKitError(f"{who} got {len(train_f)} train and {len(test_f)} test features: "
                          "pass at least one of each")
    _check_finite(train_f, f"{who}: the train features")
    _check_finite(test_f, f"{who}: the test features")


def linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    labels_per_class: int | None = None,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe on frozen features (N, D) -> (M, D).

    Features are standardised with the training statistics only (the test set is never
    looked at before scoring); with labels_per_class, the probe sees only that many labelled
    examples of each class (the limited-label setting). Tensors may live on any device.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_tensors("linear_probe", train_f=train_f, train_y=train_y, test_f=test_f,
                   test_y=test_y)
    if labels_per_class is not None and labels_per_class < 1:
        raise SSLKitError(f"labels_per_class must be at least 1 (got {labels_per_class}): use "
                          "e.g. 10, or None for every label")
    _check_features(train_f, test_f, "linear_probe")
    _check_labels(train_y, len(train_f), None, "linear_probe (train)")
    _check_labels(test_y, len(test_f), None, "linear_probe (test)")
    train_f, test_f = train_f.detach().cpu().float(), test_f.detach().cpu().float()
    train_y, test_y = train_y.cpu(), test_y.cpu()
    idx = torch.as_tensor(np.arange(len(train_y)) if labels_per_class is None
                          else labels_per_class_subset(train_y, labels_per_class, seed))
    if len(train_y[idx].unique()) < 2:
        raise SSLKitError(f"linear_probe needs training labels of at least 2 classes (got only "
                          f"class {int(train_y[0])}): pass a labelled set with several classes")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(train_f[idx].numpy(), train_y[idx].numpy())
    return float(probe.score(test_f.numpy(), test_y.numpy()))


def tsne(features: torch.Tensor, seed: int = 0) -> np.ndarray:
    """features (N, D) on any device -> 2-D t-SNE embedding (N, 2) (scikit-learn, PCA
    initialisation)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if features.ndim != 2:
        raise SSLKitError(f"t-SNE needs features (N, D), got {tuple(features.shape)}: "
                          "flatten them first (e.g. pixels(images))")
    if len(features) < 4:
        raise SSLKitError(f"t-SNE needs at least 4 points (got {len(features)}): pass more")
    if features.shape[1] < 2:
        raise SSLKitError(f"t-SNE maps features to 2-D and needs at least 2 of them (got "
                          f"{features.shape[1]}): plot 1-D features directly instead")
    _check_finite(features, "tsne: the features")
    # all rows equal: scikit-learn's PCA start divides by 0 and its NaNs crash the process
    if bool((features == features[:1]).all()):
        raise SSLKitError(f"t-SNE got {len(features)} identical feature vectors (a collapsed "
                          "encoder?): there is nothing to map; check the training loss")
    perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One BLAS/OpenMP thread: on small sets, extra threads fighting torch's cost 30x the time.
    with threadpool_limits(1):
        return model.fit_transform(features.detach().cpu().float().numpy())


# ---------------------------------------------------------------------------------------------
# Accuracy and a linear probe in torch (the loop the notebook's exercise writes)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows of logits (N, C) whose label (N,) is among the k highest logits.

    Classes are ranked by logit, equal logits by class index (lower first, as argmax does), so
    k=1 is the accuracy of argmax and k=C is 1. The label's rank is the number of classes ranked
    before it: those with a larger logit, or an equal logit and a lower index.
    """
    _check_tensors("topk_accuracy", logits=logits, labels=labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise SSLKitError(
            f"topk_accuracy needs logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}: pass one row of class scores per label"
        )
    if isinstance(k, bool) or not isinstance(k, Integral):  # k=1.5 counted ranks 0 and 1
        raise SSLKitError(f"k must be a whole number of classes (got {k!r}): use e.g. k=1 or "
                          "k=5")
    if not 1 <= k:
        raise SSLKitError(f"k={k} is not a number of classes: use k >= 1")
    if len(labels) == 0:
        raise SSLKitError("topk_accuracy got no rows (N = 0): the accuracy of nothing is "
                          "undefined; pass at least one prediction")
    _check_labels(labels, len(labels), logits.shape[1], "topk_accuracy")
    if bool(torch.isnan(logits).any()):  # a NaN ranks nowhere, so its row would count as right
        raise SSLKitError("topk_accuracy: the logits contain NaN: the model diverged; check the "
                          "training loss and the learning rate")
    labels = labels.to(logits.device).long()
    classes = torch.arange(logits.shape[1], device=logits.device)  # (C,)
    own = logits.gather(1, labels[:, None])  # (N, 1) the label's logit
    ahead = (logits > own) | ((logits == own) & (classes < labels[:, None]))  # (N, C)
    return float((ahead.sum(dim=1) < k).float().mean())


class Standardize(nn.Module):
    """x -> (x - mean) / std with the statistics of the training features, kept as buffers.

    A feature constant over the training set (std below eps) is only centred (std 1): its
    training values are all 0 either way, and dividing by eps would blow a test image's other
    value up a million-fold (a unit that fired on every training image but not on this one)."""

    def __init__(self, features: torch.Tensor, eps: float = 1e-6):
        super().__init__()
        std = features.std(dim=0)  # (D,)
        self.register_buffer("mean", features.mean(dim=0))  # (D,)
        self.register_buffer("std", torch.where(std < eps, 1.0, std + eps))  # (D,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, D) features of any float dtype -> (M, D) in the dtype the probe was fit in."""
        return (x.to(self.mean.dtype) - self.mean) / self.std


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


def _zero_linear(d: int, c: int, device: torch.device | str = "cpu") -> nn.Linear:
    """Linear(d, c) with zero weight and bias, made without drawing a random initialisation
    first (which would advance torch's global random generator for nothing)."""
    linear = nn.utils.skip_init(nn.Linear, d, c, device=device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


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
    probe in eval mode, on the features' device; probe(features) (M, D) -> logits (M, C).
    Starting from zero weights, the (convex) problem and the seed fix the result.
    """
    _check_tensors("train_linear_probe", train_f=train_f, train_y=train_y)
    if train_f.ndim != 2 or len(train_f) != len(train_y) or len(train_f) < 2:
        raise SSLKitError(
            f"train_linear_probe needs features (N, D) and labels (N,) with N >= 2, got "
            f"{tuple(train_f.shape)} and {tuple(train_y.shape)}: extract features first"
        )
    _check_whole(batch_size, "batch_size", "256")
    _check_whole(epochs, "epochs", "100")  # 0 returned the untrained, all-zero probe
    if not 0 < lr < math.inf:
        raise SSLKitError(f"train_linear_probe needs a positive, finite lr (got {lr}): use e.g. "
                          "lr=1e-2")
    _check_labels(train_y, len(train_f), num_classes, "train_linear_probe")
    _check_finite(train_f, "train_linear_probe: the features")
    # detached: features computed with gradient (enc(x) outside no_grad) would keep their graph
    # in the standardisation, and the second step would backpropagate through it again
    train_f, train_y = train_f.detach().float(), train_y.to(train_f.device).long()
    num_classes = num_classes or int(train_y.max()) + 1
    linear = _zero_linear(train_f.shape[1], num_classes, train_f.device)
    probe = nn.Sequential(Standardize(train_f), linear)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    inputs = probe[0](train_f)  # standardised once: (N, D)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # trains even when called under torch.no_grad()
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                linear_probe_step(linear, optimizer, inputs[batch], train_y[batch])
    return probe.eval()


# ---------------------------------------------------------------------------------------------
# Fine-tuning: encoder and a linear head trained together on a labelled set


def _augment(x: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
    """Label-preserving views for supervised training: the crop, flip and rotation of cfg (a
    ViewConfig), no colour changes. x (N, C, H, W) floats -> (N, C, cfg.size, cfg.size)."""
    n = len(x)
    box = crop_params(n, cfg, generator, image_size=x.shape[-2:])  # (n, 4)
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
    cross-entropy on labelled images (N, C, H, W), uint8 in [0, 255] or floats in [0, 1], and
    labels (N,).

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
    _check_whole(batch_size, "batch_size", "64")
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 0:
        raise SSLKitError(f"fine_tune needs a whole number of steps >= 0 (got {steps!r}): use "
                          "e.g. steps=300")
    if augment is not None and not isinstance(augment, ViewConfig):
        raise SSLKitError(f"fine_tune's augment is a ViewConfig (its crop, flip and rotation) or "
                          f"None, got {augment!r}: pass e.g. augment=view_config_for('digits')")
    _check_labels(labels, len(images), num_classes, "fine_tune")
    if images.dtype != torch.uint8:
        unit_floats(images, "fine_tune")  # floats: checked once here to be in [0, 1]
    labels = labels.long()
    num_classes = num_classes or int(labels.max()) + 1
    device = next(encoder.parameters()).device
    head = _zero_linear(encoder.feature_dim, num_classes)
    body = copy.deepcopy(encoder)
    if standardize:
        pixels_ = unit_floats(images, "fine_tune")
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
            x = unit_floats(images[idx.to(images.device)], "fine_tune", check_range=False)
            if augment is not None:  # x: (B, C, H, W) floats in [0, 1]
                x = _augment(x, augment, generator)
            # the probe's step (cross-entropy, zero_grad, backward, step), through the encoder
            y = labels[idx.to(labels.device)]  # (B,) the drawn images' own labels
            linear_probe_step(model, optimizer, x.to(device), y.to(device))
    return model.eval()
