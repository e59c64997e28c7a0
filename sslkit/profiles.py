"""Named run sizes, so one notebook or command serves a test run, a laptop and a GPU.

    ci      seconds: the test suite and nbgrader autograding (tiny data, a couple of epochs)
    laptop  minutes on 2 CPU cores: the embedded shifted digits and a small ConvNet
    gpu     full size: CIFAR-10 and the CIFAR ResNet-18

The profile is chosen by the SSLKIT_PROFILE environment variable; otherwise "ci" while nbgrader
executes a notebook (it sets NBGRADER_EXECUTION), "gpu" when CUDA is available, else "laptop".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from sslkit.errors import SSLKitError


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str  # training data (see sslkit.data.DATASETS)
    arch: str  # encoder (see sslkit.models.ARCHS)
    n_train: int | None  # training images used (None = all)
    n_test: int | None  # test images used for evaluation (None = all)
    epochs: int  # SimCLR pre-training epochs
    batch_size: int  # images per batch (2x views)
    lr: float  # peak learning rate
    optimizer: str  # "adam" | "adamw" | "sgd"
    weight_decay: float  # L2 penalty of the optimiser
    warmup_epochs: int  # linear learning-rate warm-up before the cosine decay
    temperature: float  # NT-Xent temperature
    proj_dim: int  # projection head output size
    knn_k: int  # neighbours in the kNN monitor
    tsne_points: int  # points shown in a t-SNE plot


PROFILES = {
    "ci": Profile(
        name="ci", dataset="shifted_digits", arch="convnet-small", n_train=256, n_test=200,
        epochs=2, batch_size=64, lr=2e-3, optimizer="adam", weight_decay=1e-6, warmup_epochs=0,
        temperature=0.2, proj_dim=64, knn_k=20, tsne_points=200,
    ),
    "laptop": Profile(
        name="laptop", dataset="shifted_digits", arch="convnet-small", n_train=None, n_test=None,
        epochs=200, batch_size=128, lr=2e-3, optimizer="adam", weight_decay=1e-6, warmup_epochs=5,
        temperature=0.2, proj_dim=64, knn_k=20, tsne_points=497,
    ),
    # SimCLR on CIFAR-10 with SGD (momentum 0.9, wd 5e-4 on every parameter): lr 0.06 x B/256
    # after 10 warm-up epochs, per-step cosine to 0. The sources, and what each other method
    # changes at this size, are in sslkit.recipes.
    "gpu": Profile(
        name="gpu", dataset="cifar10", arch="resnet18", n_train=None, n_test=None,
        epochs=100, batch_size=512, lr=0.06 * 512 / 256, optimizer="sgd", weight_decay=5e-4,
        warmup_epochs=10, temperature=0.5, proj_dim=128, knn_k=200, tsne_points=2000,
    ),
}


def profile_name() -> str:
    """The active profile's name (see the module docstring for the rule)."""
    name = os.environ.get("SSLKIT_PROFILE")
    if name:
        return name
    if os.environ.get("NBGRADER_EXECUTION"):
        return "ci"
    return "gpu" if torch.cuda.is_available() else "laptop"


def get_profile(name: str | None = None) -> Profile:
    """The named profile (e.g. from ``--profile``), or the active one. An unknown name is a
    one-line error whose fix names where the name came from: the argument, or SSLKIT_PROFILE."""
    if name:
        if name not in PROFILES:
            raise SSLKitError(f"unknown profile {name!r}: use one of {', '.join(PROFILES)} "
                              f"(e.g. --profile ci)")
        return PROFILES[name]
    name = profile_name()
    if name not in PROFILES:
        raise SSLKitError(f"unknown profile {name!r} in the environment variable SSLKIT_PROFILE: "
                          f"set it to one of {', '.join(PROFILES)}, or unset it")
    return PROFILES[name]
