"""What every experiment does: load its data, pre-train a method briefly, evaluate the frozen
encoder downstream.

    data = load_data(scale)                       ImageData, the scale's subset
    losses = pretrain(method, data, scale, ...)   Adam, warm-up + cosine (or constant) lr
    downstream(encoder, data, scale)              {"knn": %, "linear": %} on held-out images

``Scale`` holds the sizes all experiments share, one preset per profile (``SCALES``); each
experiment extends it with its own settings, and names in ``unused`` the shared ones it has no
use for (MAE has no NT-Xent temperature). ``recorded_settings(s)`` is what its results.json
records: every setting the run used, and only those, so that the run can be reproduced from
them. Accuracies are percentages (0-100), as the papers report them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from sslkit.data import ImageData, load_dataset
from sslkit.errors import SSLKitError
from sslkit.evaluate import extract_features, knn_accuracy, linear_probe
from sslkit.schedules import cosine_schedule


@dataclass(frozen=True)
class Scale:
    # the fields below that an experiment does not use (set by its Settings, with the reason):
    # left out of its results.json, where a value would claim to be part of the run
    unused: ClassVar[tuple[str, ...]] = ()
    dataset: str = "shifted_digits"  # see sslkit.data.DATASETS
    data_root: str = "data"  # where a torchvision dataset's files are (gpu profile)
    arch: str = "convnet-small"  # see sslkit.models.ARCHS
    n_train: int | None = None  # training images (None: all)
    n_test: int | None = None  # held-out images for the downstream evaluation (None: all)
    epochs: int = 8  # pre-training epochs of each run
    batch_size: int = 128
    lr: float = 2e-3  # Adam's peak learning rate
    warmup_epochs: int = 2  # linear warm-up before the cosine decay
    temperature: float = 0.2  # NT-Xent temperature where an experiment does not vary it
    proj_dim: int = 64  # projection head output size where an experiment does not vary it
    knn_k: int = 20  # neighbours of the kNN evaluation
    seed: int = 0


SCALES = {
    # seconds: a few steps on a few dozen images (the tests)
    "ci": Scale(n_train=96, n_test=64, epochs=1, batch_size=32, warmup_epochs=0, proj_dim=16,
                knn_k=10),
    # minutes on a 2-core CPU: the embedded shifted digits (1300 train, 497 test)
    "laptop": Scale(epochs=8, warmup_epochs=1),
    # one GPU: CIFAR-10 with the CIFAR-stem ResNet-18 (files under data_root)
    "gpu": Scale(dataset="cifar10", arch="resnet18", epochs=100, batch_size=512, lr=1e-3,
                 warmup_epochs=10, temperature=0.5, proj_dim=128, knn_k=200),
}


def check_profile(profile: str, settings: dict) -> None:
    if profile not in settings:
        raise SSLKitError(f"unknown profile {profile!r}: use --profile (or SSLKIT_PROFILE) "
                          f"{' or '.join(settings)}")


def recorded_settings(settings: Scale) -> dict:
    """The settings an experiment's results.json records: asdict(settings) without the fields
    its class declares ``unused``."""
    return {name: value for name, value in asdict(settings).items()
            if name not in type(settings).unused}


def load_data(scale: Scale) -> ImageData:
    """The scale's dataset, a seeded subset of n_train / n_test images, stratified by class."""
    return load_dataset(scale.dataset, scale.data_root).subset(scale.n_train, scale.n_test)


def pretrain(
    method: nn.Module,
    images: torch.Tensor,
    scale: Scale,
    device: torch.device,
    batch_size: int | None = None,
    epochs: int | None = None,
    constant_lr: bool = False,
    after_epoch=None,
) -> list[float]:
    """Train method (its forward returns the loss) on uint8 images (N, C, H, W) with Adam.

    lr: linear warm-up then cosine to 0 over the run, or constant after the warm-up (then a
    snapshot after epoch e is a run of e epochs). after_epoch(epoch) is called after each epoch
    (1-based), e.g. to evaluate. Returns the mean loss of every epoch.
    """
    batch_size = batch_size or scale.batch_size
    epochs = scale.epochs if epochs is None else epochs
    steps = len(images) // batch_size
    if steps == 0:
        raise SSLKitError(f"batch size {batch_size} is larger than the {len(images)} training "
                          "images: use a smaller batch or more images")
    method.to(device).train()
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad],
                                 lr=scale.lr, weight_decay=1e-6)
    lr = cosine_schedule(scale.lr, 0.0, epochs, steps, scale.warmup_epochs)
    if constant_lr:
        warm = min(scale.warmup_epochs * steps, len(lr))
        lr[warm:] = scale.lr
    order_gen = torch.Generator().manual_seed(scale.seed)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=order_gen)
        total = 0.0
        for b in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = float(lr[epoch * steps + b])
            x = images[order[b * batch_size:(b + 1) * batch_size]].to(device)
            loss = method(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / steps)
        if after_epoch is not None:
            after_epoch(epoch + 1)
            method.train()
    return losses


def probe(train_f: torch.Tensor, train_y, test_f: torch.Tensor, test_y) -> float:
    """Linear-probe test accuracy (%) of features (N, D), (M, D) (one BLAS thread: on problems
    this small, more threads only fight torch's)."""
    with threadpool_limits(1):
        return 100 * linear_probe(train_f, train_y, test_f, test_y)


def downstream(encoder: nn.Module, data: ImageData, scale: Scale, linear: bool = True) -> dict:
    """kNN (cosine, T=0.1) and linear-probe accuracy (%) of the frozen encoder's features h."""
    train_f = extract_features(encoder, data.train_x)  # (N, feature_dim)
    test_f = extract_features(encoder, data.test_x)  # (M, feature_dim)
    result = {"knn": 100 * knn_accuracy(train_f, data.train_y, test_f, data.test_y,
                                        k=scale.knn_k)}
    if linear:
        result["linear"] = probe(train_f, data.train_y, test_f, data.test_y)
    return result


class Timer:
    """Wall-clock seconds since creation: ``Timer().seconds``."""

    def __init__(self):
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def build_simclr(scale: Scale, data: ImageData, views: nn.Module | None = None, **options):
    """A freshly initialised SimCLR (with the ablation switches, see SimCLRAblation) seeded from
    scale.seed: the scale's encoder, the dataset's SimCLR views unless ``views`` is given, and
    the scale's head size and temperature unless overridden in ``options``."""
    from sslkit.augment import SimCLRViews, view_config_for
    from sslkit.methods.simclr_ablation import SimCLRAblation
    from sslkit.models import build_encoder

    torch.manual_seed(scale.seed)
    generator = torch.Generator().manual_seed(scale.seed)
    if views is None:
        views = SimCLRViews(view_config_for(scale.dataset, data.image_size), generator)
    for name in ("proj_dim", "temperature"):  # read from the scale only where not given, so
        if name not in options:  # that a setting the experiment reads is one the run uses
            options[name] = getattr(scale, name)
    return SimCLRAblation(build_encoder(scale.arch, data.channels), views, **options)
