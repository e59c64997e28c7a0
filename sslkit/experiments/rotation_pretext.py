"""Experiment 7: pretext accuracy vs downstream accuracy over training, for rotation
prediction (Gidaris, Singh and Komodakis, 2018).

A network is trained to tell which of 0/90/180/270 degrees an image was rotated by. At
several points of training the table records how well it solves that pretext task on
held-out images and how good its features h are for the real task (kNN and linear probe on
the class labels). At the end, a linear probe on the globally pooled output of each block of
the encoder shows which depth transfers best. The paper's findings (CIFAR-10, a 4-block
network): the rotation task teaches features useful for recognition, and the middle of the
network (block 2) transfers best, while the last block, closest to the pretext task, is the
worst: it specialises in rotations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import matplotlib.pyplot as plt
import numpy as np
import torch

from sslkit.errors import SSLKitError
from sslkit.experiments.fit import (
    SCALES,
    Scale,
    Timer,
    check_profile,
    downstream,
    load_data,
    pretrain,
    probe,
    recorded_settings,
)
from sslkit.experiments.report import Result, check_out
from sslkit.methods.rotation import Rotation
from sslkit.models import build_encoder

TITLE = "Rotation prediction: pretext accuracy vs downstream accuracy over training"

PAPER = {
    "source": "Gidaris et al. (2018), Table 1: CIFAR-10, RotNet with 4 conv blocks, "
              "non-linear classifiers on each block's feature maps",
    "claim": "predicting rotations yields features useful for recognition; block 2 of 4 "
             "transfers best and the last block, specialised in the pretext task, worst",
    "blocks": {1: 85.07, 2: 89.06, 3: 86.21, 4: 61.73},
}


@dataclass(frozen=True)
class Settings(Scale):
    # no NT-Xent and no projection: the rotation head is a 4-way MLP
    unused: ClassVar[tuple[str, ...]] = ("temperature", "proj_dim")
    epochs: int = 10
    eval_epochs: tuple[int, ...] = (0, 1, 2, 3, 4, 6, 8, 10)  # 0 = before training

    def __post_init__(self):
        if min(self.eval_epochs) < 0 or max(self.eval_epochs) > self.epochs:
            raise SSLKitError(f"rotation_pretext: eval_epochs {self.eval_epochs} must lie in 0.."
                              f"{self.epochs} (0: before training; epochs={self.epochs} is the "
                              "run's length)")


SETTINGS = {
    "ci": Settings(**asdict(SCALES["ci"]) | {"epochs": 2}, eval_epochs=(0, 1, 2)),
    "laptop": Settings(**asdict(SCALES["laptop"]) | {"epochs": 10}),
    "gpu": Settings(**asdict(SCALES["gpu"]) | {"epochs": 100},
                    eval_epochs=(0, 1, 2, 5, 10, 20, 40, 70, 100)),
}


@torch.no_grad()
def pretext_accuracy(method: Rotation, images: torch.Tensor, batch_size: int = 256) -> float:
    """Rotation accuracy (%) on images (N, C, H, W) uint8: all 4 rotations of each, eval mode."""
    method.eval()
    device = next(method.parameters()).device
    hits = 0
    for start in range(0, len(images), batch_size):
        logits, labels = method.logits_labels(images[start:start + batch_size].to(device))
        hits += int((logits.argmax(dim=1) == labels).sum())
    return 100 * hits / (4 * len(images))


def has_blocks(encoder) -> bool:
    """Whether block_features can split the encoder: a ConvNet, or a ResNet (its 4 stages)."""
    return hasattr(encoder, "forward_blocks") or hasattr(encoder, "layer4")


def resnet_blocks(net, x: torch.Tensor) -> list[torch.Tensor]:
    """The globally pooled output of each of a torchvision ResNet's 4 stages (layer1-4),
    [(N, width_b)], the last being h, like ConvNet.forward_blocks."""
    pooled = []
    hooks = [getattr(net, f"layer{b}").register_forward_hook(
        lambda _module, _inputs, out: pooled.append(out.mean(dim=(2, 3)))) for b in range(1, 5)]
    try:
        net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return pooled


@torch.no_grad()
def block_features(encoder, images: torch.Tensor, batch_size: int = 512) -> list[torch.Tensor]:
    """The globally pooled output of each block, [(N, width_b)], of images (N, C, H, W) uint8."""
    encoder.eval()
    device = next(encoder.parameters()).device
    blocks = getattr(encoder, "forward_blocks", None) or (lambda x: resnet_blocks(encoder, x))
    chunks = [blocks(images[i:i + batch_size].to(device).float() / 255)
              for i in range(0, len(images), batch_size)]
    return [torch.cat([c[b] for c in chunks]).float().cpu() for b in range(len(chunks[0]))]


def run(profile: str, out: str | Path, device: torch.device) -> Result:
    check_profile(profile, SETTINGS)
    check_out(out)
    s, timer = SETTINGS[profile], Timer()
    data = load_data(s)
    torch.manual_seed(s.seed)
    method = Rotation(build_encoder(s.arch, data.channels)).to(device)
    rows = []

    def evaluate(epoch: int, losses=None) -> None:
        if epoch in s.eval_epochs:
            acc = downstream(method.encoder, data, s)
            rows.append({"epoch": epoch, "pretext accuracy (%)": pretext_accuracy(
                method, data.test_x), "kNN (%)": acc["knn"], "linear (%)": acc["linear"]})

    evaluate(0)
    pretrain(method, data.train_x, s, device, after_epoch=evaluate)
    blocks = []
    if has_blocks(method.encoder):
        train_b = block_features(method.encoder, data.train_x)
        test_b = block_features(method.encoder, data.test_x)
        for b, (tr, te) in enumerate(zip(train_b, test_b), start=1):
            blocks.append({"block": b, "width": tr.shape[1],
                           "linear (%)": probe(tr, data.train_y, te, data.test_y),
                           "paper (%)": PAPER["blocks"].get(b) if len(train_b) == 4 else None})
    pretext = np.array([r["pretext accuracy (%)"] for r in rows])
    linear = np.array([r["linear (%)"] for r in rows])
    corr = float(np.corrcoef(pretext, linear)[0, 1]) if len(rows) > 2 else float("nan")
    result = Result(
        name="rotation_pretext", title=TITLE, profile=profile, columns=list(rows[0]), rows=rows,
        paper=PAPER, settings=recorded_settings(s), seconds=timer.seconds, device=str(device),
        out=str(out),
        more=[{"caption": "Linear probe on the globally pooled output of each block (after "
                          "training):", "columns": list(blocks[0]), "rows": blocks}] if blocks
        else [],
        notes=[f"correlation of pretext and linear accuracy over the evaluations: {corr:.2f}",
               "block features are globally pooled and probed linearly; the paper trains "
               "non-linear classifiers on each block's feature maps"])
    result.write(_figure(rows, blocks))
    return result


def _figure(rows: list[dict], blocks: list[dict]):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [r["epoch"] for r in rows]
    for key in ("pretext accuracy (%)", "kNN (%)", "linear (%)"):
        axes[0].plot(epochs, [r[key] for r in rows], marker="o", ms=3, label=key)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    if blocks:
        axes[1].bar([str(b["block"]) for b in blocks], [b["linear (%)"] for b in blocks],
                    label="measured")
        paper = [b["paper (%)"] for b in blocks]
        if any(p is not None for p in paper):
            axes[1].scatter([str(b["block"]) for b in blocks],
                            [np.nan if p is None else p for p in paper], marker="_", s=500,
                            color="black", label="paper (CIFAR-10)")
        axes[1].set_xlabel("block")
        axes[1].set_ylabel("linear probe accuracy (%)")
        axes[1].legend(fontsize=8)
    fig.suptitle("rotation prediction (Gidaris et al., 2018)")
    return fig


__all__ = ["PAPER", "SETTINGS", "Settings", "TITLE", "block_features", "has_blocks",
           "pretext_accuracy", "resnet_blocks", "run"]
