"""Experiment 1: which contrastive loss (SimCLR, Chen et al., 2020, Table 4).

The same SimCLR (encoder, head, views, optimiser, epochs) is trained with NT-Xent, NT-Logistic
and the margin triplet loss, each with every negative of the batch and with semi-hard
negatives only (those less similar to the anchor than its positive); the frozen encoder is
then evaluated by kNN and a linear probe. The paper's finding: NT-Xent is best; semi-hard
mining helps the two losses that do not weigh negatives by their hardness, but not enough to
reach NT-Xent, whose softmax already weighs the hard negatives most.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

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

TITLE = "Loss functions: NT-Xent vs NT-Logistic vs margin triplet, +/- semi-hard negatives"

LABELS = {"nt_xent": "NT-Xent", "nt_logistic": "NT-Logistic", "margin_triplet": "Margin"}

# SimCLR Table 4: linear evaluation top-1 (%) on ImageNet, ResNet-50, 100 epochs, batch 4096,
# each loss with its own tuned hyper-parameters. The paper has no NT-Xent (sh) entry.
PAPER = {
    "source": "SimCLR (Chen et al., 2020), Table 4: ImageNet linear top-1, ResNet-50, 100 epochs",
    "claim": "NT-Xent is best; semi-hard negatives help NT-Logistic and margin triplet but "
             "they stay well below NT-Xent",
    "top1": {("margin_triplet", False): 50.9, ("nt_logistic", False): 51.6,
             ("margin_triplet", True): 57.5, ("nt_logistic", True): 57.9,
             ("nt_xent", False): 63.9},
}


@dataclass(frozen=True)
class Settings(Scale):
    losses: tuple[str, ...] = ("nt_xent", "nt_logistic", "margin_triplet")
    semi_hard: tuple[bool, ...] = (False, True)
    margin: float = 0.5  # margin triplet, cosine-similarity units


SETTINGS = {
    "ci": Settings(**asdict(SCALES["ci"])),
    "laptop": Settings(**asdict(SCALES["laptop"])),
    "gpu": Settings(**asdict(SCALES["gpu"])),
}


def run(profile: str, out: str | Path, device: torch.device) -> Result:
    check_profile(profile, SETTINGS)
    check_out(out)
    s, timer = SETTINGS[profile], Timer()
    data = load_data(s)
    rows = []
    for loss in s.losses:
        for semi_hard in s.semi_hard:
            method = build_simclr(s, data, loss=loss, semi_hard=semi_hard, margin=s.margin)
            losses = pretrain(method, data.train_x, s, device)
            acc = downstream(method.encoder, data, s)
            rows.append({"loss": LABELS[loss], "semi-hard": semi_hard,
                         "final loss": losses[-1], "kNN (%)": acc["knn"],
                         "linear (%)": acc["linear"],
                         "paper top-1 (%)": PAPER["top1"].get((loss, semi_hard))})
    result = Result(
        name="loss_functions", title=TITLE, profile=profile,
        columns=["loss", "semi-hard", "final loss", "kNN (%)", "linear (%)", "paper top-1 (%)"],
        rows=rows, paper=_paper_json(), settings=recorded_settings(s), seconds=timer.seconds,
        device=str(device), out=str(out),
        notes=[f"{s.dataset}, {s.arch}, {s.epochs} epochs at batch {s.batch_size}; one seed per "
               "row, so differences of a point or two are within run-to-run noise"])
    result.write(_figure(rows))
    return result


def _paper_json() -> dict:
    top1 = {f"{LABELS[k[0]]}{' (sh)' if k[1] else ''}": v for k, v in PAPER["top1"].items()}
    return {"source": PAPER["source"], "claim": PAPER["claim"], "top1": top1}


def _figure(rows: list[dict]):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(dict.fromkeys(r["loss"] for r in rows))
    x = np.arange(len(names))
    for offset, sh in ((-0.2, False), (0.2, True)):
        vals = [next((r["linear (%)"] for r in rows if r["loss"] == n and r["semi-hard"] == sh),
                     np.nan) for n in names]
        ax.bar(x + offset, vals, width=0.4, label="semi-hard" if sh else "all negatives")
        paper = [next((r["paper top-1 (%)"] for r in rows
                       if r["loss"] == n and r["semi-hard"] == sh), None) for n in names]
        ax.scatter(x + offset, [np.nan if p is None else p for p in paper], marker="_", s=400,
                   color="black", label="paper (ImageNet)" if not sh else None)
    ax.set_xticks(x, names)
    ax.set_ylabel("linear probe accuracy (%)")
    ax.set_title("loss functions (bars: measured, black: SimCLR Table 4)")
    ax.legend(fontsize=8)
    return fig


__all__ = ["PAPER", "SETTINGS", "Settings", "TITLE", "run"]
