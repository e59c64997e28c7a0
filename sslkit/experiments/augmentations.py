"""Experiment 4: composing augmentations (SimCLR, Chen et al., 2020, Figure 5).

SimCLR is trained once per pair of transformations from crop, cutout, colour, Sobel, noise,
blur and rotate (both applied, in that order, to make each view; the diagonal is one
transformation alone), and the frozen encoder is evaluated by a linear probe. The paper's
finding: no single transformation is enough, compositions are better, and random crop with
colour distortion stands out.

Differences from the paper, by design: the paper always crops (ImageNet images differ in size)
and applies the studied pair to one branch only; here images are all 32x32, so no crop is
needed and both views get the pair. On 1-channel data "colour" is brightness and contrast
jitter only (no saturation, hue or grayscale).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from sslkit.augment import AUGMENTATION_OPS, ComposedViews, view_config_for
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

TITLE = "Composition of augmentations: the matrix of transformation pairs"

PAPER = {
    "source": "SimCLR (Chen et al., 2020), Figure 5: ImageNet linear top-1, ResNet-50, "
              "transformations applied to one branch after a crop",
    "claim": "no single transformation learns good representations; composing two is better; "
             "random crop + colour distortion is by far the best pair",
}


@dataclass(frozen=True)
class Settings(Scale):
    ops: tuple[str, ...] = AUGMENTATION_OPS  # the matrix's rows and columns
    noise_std: float = 0.1  # std of the Gaussian noise op (images in [0, 1])


SETTINGS = {
    "ci": Settings(**asdict(SCALES["ci"]), ops=("crop", "colour", "noise")),
    "laptop": Settings(**asdict(SCALES["laptop"]) | {"epochs": 3, "warmup_epochs": 0}),
    "gpu": Settings(**asdict(SCALES["gpu"]) | {"epochs": 50}),
}


def pairs(ops: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The upper triangle of the matrix: (a,) on the diagonal, (a, b) for a before b."""
    return [(a,) if i == j else (a, b) for i, a in enumerate(ops) for j, b in enumerate(ops)
            if i <= j]


def run(profile: str, out: str | Path, device: torch.device) -> Result:
    check_profile(profile, SETTINGS)
    check_out(out)
    s, timer = SETTINGS[profile], Timer()
    data = load_data(s)
    cfg = view_config_for(s.dataset, data.image_size)
    linear, knn = {}, {}
    for ops in pairs(s.ops):
        views = ComposedViews(ops, cfg, torch.Generator().manual_seed(s.seed), s.noise_std)
        method = build_simclr(s, data, views=views)
        pretrain(method, data.train_x, s, device)
        acc = downstream(method.encoder, data, s)
        linear[ops], knn[ops] = acc["linear"], acc["knn"]
    first = "1st \\ 2nd"
    rows = [{first: a} | {b: linear.get((a,) if a == b else (a, b)) for b in s.ops}
            for a in s.ops]
    best = max(linear, key=linear.get)
    result = Result(
        name="augmentations", title=TITLE, profile=profile, columns=[first, *s.ops], rows=rows,
        paper=PAPER, settings=recorded_settings(s), seconds=timer.seconds, device=str(device),
        out=str(out),
        more=[{"caption": "kNN accuracy (%) of the same runs:", "columns": [first, *s.ops],
               "rows": [{first: a} | {b: knn.get((a,) if a == b else (a, b)) for b in s.ops}
                        for a in s.ops]}],
        notes=[f"linear probe accuracy (%) on held-out images; {s.epochs} epochs per pair; "
               f"best pair: {' + '.join(best)} ({linear[best]:.1f} %)",
               "both views get the pair (the paper: one branch, after a crop); on grey digits "
               "'colour' is brightness and contrast only"])
    result.write(_figure(s.ops, linear))
    return result


def _figure(ops: tuple[str, ...], linear: dict):
    grid = np.full((len(ops), len(ops)), np.nan)
    for i, a in enumerate(ops):
        for j, b in enumerate(ops):
            grid[i, j] = linear.get((a,) if i == j else (a, b), np.nan)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(ops), 0.8 * len(ops)))
    im = ax.imshow(grid, cmap="viridis")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(ops)), ops, rotation=45)
    ax.set_yticks(range(len(ops)), ops)
    ax.set_xlabel("2nd transformation")
    ax.set_ylabel("1st transformation")
    fig.colorbar(im, ax=ax, label="linear probe accuracy (%)")
    ax.set_title("augmentation pairs (SimCLR Figure 5)")
    return fig


__all__ = ["PAPER", "SETTINGS", "Settings", "TITLE", "pairs", "run"]
