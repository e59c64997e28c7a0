"""Experiment 3: the projection head (SimCLR, Chen et al., 2020, Figure 8 and Table 3).

SimCLR is trained with no head (the loss on h), a linear head and a non-linear (MLP) head of
several output sizes; a linear probe is trained on h (what is kept) and on z = g(h) (where the
loss is taken). Then, with the MLP head, linear classifiers on h and on g(h) are asked to
predict the transformation applied to an image: rotation by 0/90/180/270 degrees, original vs
corrupted (Gaussian noise), original vs Sobel-filtered, and on colour data colour vs
grayscale. The paper's findings: a non-linear head beats a linear one (+3 %) and no head by
far (> 10 %) whatever its output size, and h keeps the information about the transformation
that g(h), made invariant to it by the loss, throws away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import matplotlib.pyplot as plt
import numpy as np
import torch

from sslkit.augment import gaussian_noise, sobel, to_gray
from sslkit.experiments.fit import (
    SCALES,
    Scale,
    Timer,
    build_simclr,
    check_profile,
    load_data,
    pretrain,
    probe,
    recorded_settings,
)
from sslkit.experiments.report import Result, check_out

TITLE = "Projection head: none / linear / MLP and its size; h vs g(h)"

PAPER = {
    "source": "SimCLR (Chen et al., 2020), Figure 8 and Table 3: ImageNet, ResNet-50",
    "claim": "Figure 8: a non-linear head is about 3 points better than a linear one and more "
             "than 10 points better than none, at every output size (32-2048); Table 3: h "
             "predicts the applied transformation far better than g(h)",
    # Table 3: accuracy (%) of predicting the transformation: (random guess, from h, from g(h))
    "transformations": {"colour vs grayscale": (80.0, 99.3, 97.4), "rotation": (25.0, 67.6, 25.6),
                        "original vs corrupted": (50.0, 99.5, 59.6),
                        "original vs Sobel filtered": (50.0, 96.6, 56.3)},
}


@dataclass(frozen=True)
class Settings(Scale):
    unused: ClassVar[tuple[str, ...]] = ("knn_k",)  # no kNN: linear probes only
    heads: tuple[tuple[str, int], ...] = (("none", 0), ("linear", 16), ("linear", 128),
                                          ("mlp", 16), ("mlp", 128))  # (kind, size; 0 = none)
    noise_std: float = 0.1  # the corruption of "original vs corrupted"


SETTINGS = {
    "ci": Settings(**asdict(SCALES["ci"]) | {"proj_dim": 16},
                   heads=(("none", 0), ("linear", 16), ("mlp", 16))),
    "laptop": Settings(**asdict(SCALES["laptop"])),
    "gpu": Settings(**asdict(SCALES["gpu"]),
                    heads=(("none", 0), ("linear", 32), ("linear", 128), ("linear", 512),
                           ("mlp", 32), ("mlp", 128), ("mlp", 512))),
}


@torch.no_grad()
def features_h_z(method, images: torch.Tensor, batch_size: int = 512):
    """(h (N, feature_dim), z = g(h) (N, out)) of images (N, C, H, W) uint8 or [0, 1] floats,
    eval mode, on the CPU."""
    method.eval()
    device = next(method.parameters()).device
    hs, zs = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        h = method.encoder(x)
        hs.append(h.float().cpu())
        zs.append(method.head(h).float().cpu())
    return torch.cat(hs), torch.cat(zs)


def transformation_tasks(images: torch.Tensor, noise_std: float, seed: int = 0) -> dict:
    """name -> (inputs (M, C, H, W) in [0, 1], labels (M,)) for each transformation-prediction
    task on uint8 images (N, C, H, W): every image once per class of the task."""
    x = images.float() / 255
    g = torch.Generator().manual_seed(seed)
    tasks = {}
    if x.shape[1] == 3:
        tasks["colour vs grayscale"] = (torch.cat([x, to_gray(x).expand_as(x)]),
                                        torch.arange(2).repeat_interleave(len(x)))
    tasks["rotation"] = (torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)]),
                         torch.arange(4).repeat_interleave(len(x)))
    tasks["original vs corrupted"] = (torch.cat([x, gaussian_noise(x, noise_std, g)]),
                                      torch.arange(2).repeat_interleave(len(x)))
    tasks["original vs Sobel filtered"] = (torch.cat([x, sobel(x)]),
                                           torch.arange(2).repeat_interleave(len(x)))
    return tasks


def predict_transformations(method, data, noise_std: float) -> list[dict]:
    """One row per task: linear-probe accuracy (%) of predicting the transformation from h and
    from g(h), trained on the training images, tested on the held-out ones."""
    train_tasks = transformation_tasks(data.train_x, noise_std, seed=0)
    test_tasks = transformation_tasks(data.test_x, noise_std, seed=1)
    rows = []
    for name, (train_x, train_y) in train_tasks.items():
        test_x, test_y = test_tasks[name]
        train_h, train_z = features_h_z(method, train_x)
        test_h, test_z = features_h_z(method, test_x)
        paper = PAPER["transformations"][name]
        rows.append({"predict": name, "random guess (%)": 100 / int(train_y.max() + 1),
                     "from h (%)": probe(train_h, train_y, test_h, test_y),
                     "from g(h) (%)": probe(train_z, train_y, test_z, test_y),
                     "paper h (%)": paper[1], "paper g(h) (%)": paper[2]})
    return rows


def run(profile: str, out: str | Path, device: torch.device) -> Result:
    check_profile(profile, SETTINGS)
    check_out(out)
    s, timer = SETTINGS[profile], Timer()
    data = load_data(s)
    rows, transformations = [], []
    for kind, size in s.heads:
        method = build_simclr(s, data, head=kind, proj_dim=size or s.proj_dim)
        pretrain(method, data.train_x, s, device)
        train_h, train_z = features_h_z(method, data.train_x)
        test_h, test_z = features_h_z(method, data.test_x)
        rows.append({"head": kind, "output size": size or train_h.shape[1],
                     "linear on h (%)": probe(train_h, data.train_y, test_h, data.test_y),
                     "linear on g(h) (%)": probe(train_z, data.train_y, test_z, data.test_y)})
        if kind == "mlp" and not transformations and size >= s.proj_dim:
            transformations = predict_transformations(method, data, s.noise_std)
    if not transformations:  # no MLP head as large as proj_dim: use the last one trained
        transformations = predict_transformations(method, data, s.noise_std)
    mlp_size = next((size for kind, size in s.heads if kind == "mlp" and size >= s.proj_dim),
                    s.heads[-1][1])
    result = Result(
        name="projection_head", title=TITLE, profile=profile,
        columns=["head", "output size", "linear on h (%)", "linear on g(h) (%)"], rows=rows,
        paper=PAPER | {"transformations": {k: list(v) for k, v in
                                           PAPER["transformations"].items()}},
        settings=recorded_settings(s), seconds=timer.seconds, device=str(device), out=str(out),
        more=[{"caption": f"Predicting the applied transformation from h and from g(h) (MLP "
                          f"head, output size {mlp_size}), linear probe on held-out images:",
               "columns": list(transformations[0]), "rows": transformations}],
        notes=["the paper reads Figure 8 off a plot (no table), and trains an MLP, not a "
               "linear probe, to predict the transformation",
               "colour vs grayscale needs colour images: it is left out on 1-channel data"])
    result.write(_figure(rows, transformations))
    return result


def _figure(rows: list[dict], transformations: list[dict]):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    for kind, marker in (("linear", "s"), ("mlp", "o")):
        pts = [r for r in rows if r["head"] == kind]
        ax.plot([r["output size"] for r in pts], [r["linear on h (%)"] for r in pts],
                marker=marker, label=f"{kind} head")
    for r in rows:
        if r["head"] == "none":
            ax.axhline(r["linear on h (%)"], color="grey", ls="--", label="no head")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("projection output size")
    ax.set_ylabel("linear probe on h (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    x = np.arange(len(transformations))
    ax.bar(x - 0.2, [r["from h (%)"] for r in transformations], width=0.4, label="from h")
    ax.bar(x + 0.2, [r["from g(h) (%)"] for r in transformations], width=0.4, label="from g(h)")
    ax.scatter(x, [r["random guess (%)"] for r in transformations], marker="_", s=500,
               color="black", label="random guess")
    ax.set_xticks(x, [r["predict"].replace(" vs ", "\nvs ") for r in transformations],
                  fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    fig.suptitle("projection head (SimCLR Figure 8) and what g(h) forgets (Table 3)")
    return fig


__all__ = ["PAPER", "SETTINGS", "Settings", "TITLE", "features_h_z", "predict_transformations",
           "run", "transformation_tasks"]
