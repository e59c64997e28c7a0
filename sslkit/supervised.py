"""The supervised baseline: an encoder trained from scratch on labels only.

Self-supervised features are worth something only if they beat what the same labels achieve
without pre-training. ``train_supervised`` builds a fresh encoder of the given architecture and
trains it with its linear classifier on a labelled subset (cross-entropy, crop and rotation
augmentation as for the self-supervised views, no colour changes); its features are then
evaluated exactly like a self-supervised encoder's (kNN, linear probe, t-SNE). It is
``evaluate.fine_tune`` started from random weights instead of pre-trained ones, which makes
"fine-tuned SSL vs from scratch" a comparison of initialisations and nothing else.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from sslkit.augment import view_config_for
from sslkit.errors import SSLKitError
from sslkit.evaluate import fine_tune, labels_per_class_subset
from sslkit.models import build_encoder


def supervised_augmentation(dataset: str, size: int):
    """The dataset's view preset reduced to geometry: its crops (area at least 50 %), flip and
    rotation; colour jitter and grayscale off."""
    cfg = view_config_for(dataset, size)
    return replace(cfg, crop_scale=(max(0.5, cfg.crop_scale[0]), 1.0), jitter_p=0.0,
                   gray_p=0.0, blur_p=0.0)


def train_supervised(
    images: torch.Tensor,
    labels: torch.Tensor,
    arch: str = "convnet-small",
    dataset: str = "shifted_digits",
    num_classes: int | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> nn.Sequential:
    """A fresh ``arch`` encoder (seeded) + linear head trained on images (N, C, H, W) uint8 and
    labels (N,). Returns nn.Sequential(encoder, head) in eval mode: [0] is the encoder, whose
    features (N, feature_dim) are the baseline representation; the whole maps images to
    logits. Same seed, same data -> the same weights."""
    if images.ndim != 4:
        raise SSLKitError(f"train_supervised needs images (N, C, H, W), got "
                          f"{tuple(images.shape)}: pass a batch of images, not features")
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left alone
        torch.manual_seed(seed)
        encoder = build_encoder(arch, images.shape[1]).to(device)
    return fine_tune(encoder, images, labels, num_classes=num_classes, steps=steps,
                     batch_size=batch_size, lr=lr,
                     augment=supervised_augmentation(dataset, images.shape[-1]), seed=seed)


def train_supervised_per_class(
    images: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int = 0, **options
) -> nn.Sequential:
    """``train_supervised`` on ``per_class`` labelled images of every class (a seeded draw by
    ``evaluate.labels_per_class_subset``, the same draw a probe with that budget sees)."""
    idx = torch.as_tensor(labels_per_class_subset(labels, per_class, seed))
    num_classes = options.pop("num_classes", None) or int(labels.max()) + 1
    return train_supervised(images[idx], labels[idx], num_classes=num_classes, seed=seed,
                            **options)
