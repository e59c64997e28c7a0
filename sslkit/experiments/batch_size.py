"""Experiment 5: batch size and training length (SimCLR, Chen et al., 2020, Figure 9).

SimCLR is trained at several batch sizes and evaluated (kNN, linear probe) after several
training lengths. The learning rate is constant after a short warm-up, so the encoder after
epoch e of a long run is what a run of e epochs would give, and one run per batch size serves
every length. At equal epochs a larger batch means more negatives per anchor (2B - 2) but
fewer optimiser steps. The paper's finding: with short training larger batches are clearly
better; with longer training the gap shrinks or disappears.
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
    build_simclr,
    check_profile,
    downstream,
    load_data,
    pretrain,
    recorded_settings,
)
from sslkit.experiments.report import Result, check_out

TITLE = "Batch size and training length"

PAPER = {
    "source": "SimCLR (Chen et al., 2020), Figure 9: ImageNet linear top-1, ResNet-50, batch "
              "256-8192, 100-800 epochs",
    "claim": "with few epochs (100) larger batches are much better; the advantage shrinks or "
             "disappears as training gets longer (more steps, batches resampled each epoch)",
}


@dataclass(frozen=True)
class Settings(Scale):
    unused: ClassVar[tuple[str, ...]] = ("batch_size",)  # the runs are at batch_sizes
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256)  # one run each
    eval_epochs: tuple[int, ...] = (2, 4, 8, 16)  # evaluated after these epochs (1-based)
    epochs: int = 16  # each run's length: its last evaluation
    warmup_epochs: int = 1

    def __post_init__(self):
        if min(self.eval_epochs) < 1 or max(self.eval_epochs) != self.epochs:
            raise SSLKitError(f"batch_size: eval_epochs {self.eval_epochs} must lie in 1.."
                              f"{self.epochs} and end at epochs={self.epochs}, the length of "
                              "each run")


SETTINGS = {
    "ci": Settings(**asdict(SCALES["ci"]) | {"epochs": 2, "warmup_epochs": 0},
                   batch_sizes=(16, 32), eval_epochs=(1, 2)),
    "laptop": Settings(**asdict(SCALES["laptop"]) | {"epochs": 16, "warmup_epochs": 1}),
    "gpu": Settings(**asdict(SCALES["gpu"]) | {"epochs": 200, "warmup_epochs": 5},
                    batch_sizes=(128, 256, 512, 1024), eval_epochs=(25, 50, 100, 200)),
}


def run(profile: str, out: str | Path, device: torch.device) -> Result:
    check_profile(profile, SETTINGS)
    check_out(out)
    s, timer = SETTINGS[profile], Timer()
    data = load_data(s)
    rows = []
    for batch in s.batch_sizes:
        method = build_simclr(s, data)
        steps = len(data.train_x) // batch

        def evaluate(epoch: int, method=method, batch=batch, steps=steps) -> None:
            if epoch in s.eval_epochs:
                acc = downstream(method.encoder, data, s)
                rows.append({"batch": batch, "negatives per anchor": 2 * batch - 2,
                             "epochs": epoch, "steps": epoch * steps, "kNN (%)": acc["knn"],
                             "linear (%)": acc["linear"]})

        pretrain(method, data.train_x, s, device, batch_size=batch, constant_lr=True,
                 after_epoch=evaluate)
    result = Result(
        name="batch_size", title=TITLE, profile=profile, columns=list(rows[0]), rows=rows,
        paper=PAPER, settings=recorded_settings(s), seconds=timer.seconds, device=str(device),
        out=str(out),
        notes=["Adam at one constant learning rate for every batch size (the paper: LARS with "
               "lr = 0.3 x B/256 and a cosine decay)"])
    result.write(_figure(rows, s))
    return result


def _figure(rows: list[dict], s: Settings):
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    x = np.arange(len(s.eval_epochs))
    width = 0.8 / len(s.batch_sizes)
    for i, batch in enumerate(s.batch_sizes):
        vals = [next((r["linear (%)"] for r in rows if r["batch"] == batch and r["epochs"] == e),
                     np.nan) for e in s.eval_epochs]
        ax.bar(x + (i - (len(s.batch_sizes) - 1) / 2) * width, vals, width, label=f"B={batch}")
    ax.set_xticks(x, [str(e) for e in s.eval_epochs])
    ax.set_xlabel("training epochs")
    ax.set_ylabel("linear probe accuracy (%)")
    ax.set_ylim(bottom=max(0, np.nanmin([r["linear (%)"] for r in rows]) - 10))
    ax.legend(fontsize=8, ncol=len(s.batch_sizes))
    ax.set_title("batch size and training length (SimCLR Figure 9)")
    return fig


__all__ = ["PAPER", "SETTINGS", "Settings", "TITLE", "run"]
