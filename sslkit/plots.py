"""The figures the notebooks and the command line show. Each returns the matplotlib Figure
and, given a path, also saves it there."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to Agg by themselves
import numpy as np
import torch

from sslkit.errors import SSLKitError
from sslkit.unit_images import check_tensor, unit_floats


def save(fig, path: str | Path | None):
    """Save fig as an image at path (its folders made) when path is given; return fig."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def image_grid(images: torch.Tensor, nrow: int = 8, title: str | None = None, path=None):
    """images (N, C, H, W), uint8 or floats in [0, 1], on any device -> a grid of N images,
    nrow per row."""
    check_tensor(images, "image_grid")
    if images.ndim != 4 or len(images) == 0 or images.shape[1] not in (1, 3, 4) or nrow < 1:
        raise SSLKitError(f"image_grid needs a non-empty batch (N, C, H, W) with 1, 3 or 4 "
                          f"channels and nrow >= 1, got {tuple(images.shape)}, nrow={nrow}: "
                          "pass e.g. data.train_x[:16]")
    # on the CPU, where reading the values costs nothing: floats must be in [0, 1] (0..255 or
    # standardised pixels would show all white or clipped), integers must be uint8
    images = unit_floats(images.detach().cpu(), "image_grid")
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
    return save(fig, path)


def similarity_matrix(sim: torch.Tensor, title: str = "cosine similarity", path=None):
    """sim (M, M), on any device -> a heat map; for 2N views the positive pairs sit on the
    off-diagonals ±N."""
    if sim.ndim != 2:
        raise SSLKitError(f"similarity_matrix needs a matrix (M, M), got {tuple(sim.shape)}")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(sim.detach().cpu().float().numpy(), cmap="viridis", vmin=-1, vmax=1)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    ax.set_xlabel("view")
    ax.set_ylabel("view")
    return save(fig, path)


def tsne_panels(embeddings: dict[str, np.ndarray], labels, classes=None, path=None):
    """One scatter per named 2-D embedding (N, 2), points coloured by their class labels (N,)
    (integers 0..C-1); ``classes`` names every class by index (e.g. data.classes). The legend
    shows the classes present, each with its own name and colour."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if not embeddings:
        raise SSLKitError("tsne_panels needs at least one embedding: pass {name: tsne(features)}")
    for name, emb in embeddings.items():
        if np.shape(emb) != (len(labels), 2):
            raise SSLKitError(f"tsne_panels: embedding {name!r} has shape {np.shape(emb)} but "
                              f"there are {len(labels)} labels: pass (N, 2) and the same N labels")
    present = np.unique(labels)  # (K,) the classes shown, sorted
    if classes is not None and len(present) and not 0 <= present.min() <= present.max() < len(
            classes):
        raise SSLKitError(f"tsne_panels: labels run from {present.min()} to {present.max()} but "
                          f"{len(classes)} class names were given: pass one name per class")
    # tab10 / tab20 give each class its own colour; beyond 20 classes a continuous map.
    span = int(present.max()) + 1 if len(present) else 1
    cmap = plt.get_cmap("tab10" if span <= 10 else "tab20" if span <= 20 else "turbo")
    vmax = {"tab10": 9.5, "tab20": 19.5}.get(cmap.name, span - 0.5)
    norm = plt.Normalize(vmin=-0.5, vmax=vmax)
    fig, axes = plt.subplots(1, len(embeddings), figsize=(4.2 * len(embeddings), 4), squeeze=False)
    for ax, (name, emb) in zip(axes[0], embeddings.items()):
        emb = np.asarray(emb)
        ax.scatter(emb[:, 0], emb[:, 1], c=cmap(norm(labels)), s=6)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(present) <= 20:  # a legend entry per class present, named by its own index
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=cmap(norm(c)))
                   for c in present]
        names = [str(classes[c]) if classes is not None else str(c) for c in present]
        fig.legend(handles, names, loc="center right", title="class", fontsize=8)
        fig.subplots_adjust(right=0.92)
    return save(fig, path)


def training_curves(rows: list[dict], keys=("loss", "knn"), path=None):
    """Per-epoch metrics rows (as in metrics.jsonl) -> one panel per key present."""
    wanted, keys = list(keys), [k for k in keys if any(k in r for r in rows)]
    if not keys:
        raise SSLKitError(f"training_curves: none of {wanted} is in the rows given "
                          f"({len(rows)} rows): pass the metrics rows of a run (metrics.jsonl)")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    return save(fig, path)
