"""Experiment 2: temperature and L2 normalisation in NT-Xent (SimCLR, Chen et al., 2020,
Table 5).

SimCLR is trained with NT-Xent on cosine similarities at several temperatures, and on raw dot
products (no L2 normalisation) at large temperatures. For each run, on two views of held-out
images (eval mode), the table shows the mean entropy of the softmax over an anchor's
candidates and the contrastive accuracy (how often the positive has the largest logit), then
the downstream kNN and linear-probe accuracy. The paper's finding: without normalisation the
contrastive task is solved better but the representation is worse; with it, a moderate
temperature is best, and a small one makes the softmax peaked (low entropy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

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
from sslkit.losses import nt_xent_logits

TITLE = "Temperature and L2 normalisation of NT-Xent"

# SimCLR Table 5 (ImageNet, ResNet-50, 100 epochs, batch 4096): (L2 norm, temperature) ->
# (entropy of the softmax, contrastive accuracy %, linear top-1 %).
PAPER = {
    "source": "SimCLR (Chen et al., 2020), Table 5: ImageNet, ResNet-50, 100 epochs",
    "claim": "without L2 normalisation the contrastive accuracy is higher but the linear "
             "accuracy lower; with it a moderate temperature (0.1) is best and a small one "
             "gives a peaked softmax (low entropy)",
    "rows": {(True, 0.05): (1.0, 90.5, 59.7), (True, 0.1): (4.5, 87.8, 64.4),
             (True, 0.5): (8.2, 68.2, 60.7), (True, 1.0): (8.3, 59.1, 58.0),
             (False, 10.0): (0.5, 91.7, 57.2), (False, 100.0): (0.5, 92.1, 57.0)},
}


@dataclass(frozen=True)
class Settings(Scale):
    unused: ClassVar[tuple[str, ...]] = ("temperature",)  # each run's is from the two below
    normalized: tuple[float, ...] = (0.05, 0.1, 0.5, 1.0)  # temperatures with L2 norm
    unnormalized: tuple[float, ...] = (10.0, 100.0)  # temperatures on raw dot products


SETTINGS = {
    "ci": Settings(**asdict(SCALES["ci"]), normalized=(0.1, 1.0), unnormalized=(10.0,)),
    "laptop": Settings(**asdict(SCALES["laptop"])),
    "gpu": Settings(**asdict(SCALES["gpu"])),
}


@torch.no_grad()
def contrastive_stats(method, images: torch.Tensor, batch_size: int, normalize: bool,
                      temperature: float, device) -> tuple[float, float]:
    """(mean entropy in nats, contrastive accuracy %) of NT-Xent's softmax on two fresh views
    of images (uint8, (M, C, H, W)), in batches of batch_size images, the network in training
    mode as the loss sees it (BatchNorm on batch statistics; this updates BN's running
    statistics, so call it after any evaluation in eval mode). The views are drawn from a
    generator seeded here, so every run sees the same ones whatever its training was."""
    method.train()
    entropies, hits, total = [], 0, 0
    views, trained = method.views, method.views.generator
    views.generator = torch.Generator().manual_seed(0)
    try:
        for start in range(0, len(images) - 1, batch_size):
            x = images[start:start + batch_size].to(device)
            if len(x) < 2:
                break
            v1, v2 = views.two_views(x)
            z1, z2 = method.embed(torch.cat([v1, v2])).chunk(2)  # (n, D) each
            logits, labels = nt_xent_logits(z1, z2, temperature, normalize)  # (2n, 2n), (2n,)
            p = F.softmax(logits, dim=1)  # (2n, 2n); the anchor's own entry is 0
            entropy = -(p * F.log_softmax(logits, dim=1).nan_to_num(neginf=0.0)).sum(dim=1)
            entropies.append(entropy)
            hits += int((logits.argmax(dim=1) == labels).sum())
            total += len(labels)
    finally:
        views.generator = trained
    return float(torch.cat(entropies).mean()), 100 * hits / total


def run(profile: str, out: str | Path, device: torch.device) -> Result:
    check_profile(profile, SETTINGS)
    check_out(out)
    s, timer = SETTINGS[profile], Timer()
    data = load_data(s)
    rows = []
    runs = [(True, t) for t in s.normalized] + [(False, t) for t in s.unnormalized]
    for normalize, t in runs:
        method = build_simclr(s, data, temperature=t, normalize=normalize)
        pretrain(method, data.train_x, s, device)
        acc = downstream(method.encoder, data, s)
        entropy, contrastive = contrastive_stats(method, data.test_x, s.batch_size, normalize,
                                                 t, device)
        paper = PAPER["rows"].get((normalize, t), (None, None, None))
        rows.append({"L2 norm": normalize, "temperature": t, "entropy": entropy,
                     "contrastive acc (%)": contrastive, "kNN (%)": acc["knn"],
                     "linear (%)": acc["linear"], "paper entropy": paper[0],
                     "paper contrastive acc (%)": paper[1], "paper top-1 (%)": paper[2]})
    columns = list(rows[0])
    result = Result(
        name="temperature", title=TITLE, profile=profile, columns=columns, rows=rows,
        paper={"source": PAPER["source"], "claim": PAPER["claim"],
               "rows": {f"L2={k[0]} T={k[1]}": v for k, v in PAPER["rows"].items()}},
        settings=recorded_settings(s), seconds=timer.seconds, device=str(device), out=str(out),
        notes=[f"entropy and contrastive accuracy over batches of {s.batch_size} held-out "
               f"images (2x{s.batch_size} candidates; the paper's batch is 4096, so its "
               "entropies are larger)"])
    result.write(_figure(rows))
    return result


def _figure(rows: list[dict]):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for norm, marker in ((True, "o"), (False, "s")):
        pts = [r for r in rows if r["L2 norm"] == norm]
        label = "L2-normalised" if norm else "no normalisation"
        axes[0].plot([r["temperature"] for r in pts], [r["linear (%)"] for r in pts],
                     marker=marker, label=label)
        axes[1].plot([r["temperature"] for r in pts], [r["contrastive acc (%)"] for r in pts],
                     marker=marker, label=label)
    for ax, what in zip(axes, ("linear probe accuracy (%)", "contrastive accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("temperature")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("NT-Xent temperature and normalisation (SimCLR Table 5)")
    return fig


__all__ = ["PAPER", "SETTINGS", "Settings", "TITLE", "contrastive_stats", "run"]
