"""The figures the notebooks and the command line show. Each returns the matplotlib Figure
and, given a path, also saves it there."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to Agg by themselves
import numpy as np
import torch


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def image_grid(images: torch.Tensor, nrow: int = 8, title: str | None = None, path=None):
    """images (N, C, H, W), uint8 or floats in [0, 1] -> a grid of N images, nrow per row."""
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    n = len(images)
    rows = (n + nrow - 1) // nrow
    fig, axes = plt.subplots(rows, nrow, figsize=(1.2 * nrow, 1.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images):
        img = img.clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def similarity_matrix(sim: torch.Tensor, title: str = "cosine similarity", path=None):
    """sim (M, M) -> a heat map; for 2N views the positive pairs sit on the off-diagonals ±N."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(sim.detach().float().numpy(), cmap="viridis", vmin=-1, vmax=1)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    ax.set_xlabel("view")
    ax.set_ylabel("view")
    return _save(fig, path)


def tsne_panels(embeddings: dict[str, np.ndarray], labels, classes=None, path=None):
    """One scatter per named 2-D embedding (N, 2), points coloured by class."""
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, len(embeddings), figsize=(4.2 * len(embeddings), 4), squeeze=False)
    for ax, (name, emb) in zip(axes[0], embeddings.items()):
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, _ = sc.legend_elements()
    names = classes or [str(c) for c in np.unique(labels)]
    fig.legend(handles, names, loc="center right", title="class", fontsize=8)
    fig.subplots_adjust(right=0.92)
    return _save(fig, path)


def training_curves(rows: list[dict], keys=("loss", "knn"), path=None):
    """Per-epoch metrics rows (as in metrics.jsonl) -> one panel per key present."""
    keys = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    return _save(fig, path)
