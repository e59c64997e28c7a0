"""Experiment 8: MAE's mask ratio vs downstream accuracy (He et al., 2021, Figure 5).

A masked autoencoder (the small ViT of ``sslkit.methods.mae``) is pre-trained at several mask
ratios; its encoder is then evaluated by kNN and a linear probe on frozen features, and by
fine-tuning the whole encoder with a linear head for a fixed number of steps. The paper's
findings: a high ratio (75 %) is best for both; fine-tuning is insensitive to the ratio over a
wide range (40-80 %), while linear probing keeps improving up to 75 %; and MAE's frozen
features are much weaker under a linear probe than after fine-tuning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import matplotlib.pyplot as plt
import torch

from sslkit.augment import SimCLRViews, view_config_for
from sslkit.errors import SSLKitError
from sslkit.evaluate import extract_features, fine_tune, topk_accuracy
from sslkit.experiments.fit import (
    SCALES,
    Scale,
    Timer,
    check_profile,
    downstream,
    load_data,
    pretrain,
    recorded_settings,
)
from sslkit.experiments.report import Result, check_out
from sslkit.methods.mae import MAE, mae_view_config

TITLE = "MAE: mask ratio vs downstream accuracy (kNN, linear probe, fine-tuning)"

PAPER = {
    "source": "MAE (He et al., 2021), Figure 5 and Table 1: ImageNet, ViT-L, 800 epochs",
    "claim": "75 % masking is best for fine-tuning and linear probing (84.9 and 73.5 % top-1); "
             "fine-tuning changes little between 40 and 80 %, linear probing rises steadily up "
             "to 75 %",
    "top1_at_75": {"fine-tune": 84.9, "linear": 73.5},
}


@dataclass(frozen=True)
class Settings(Scale):
    # MAE builds its own ViT (vit_dim, patch_size) and has no NT-Xent and no projection head
    unused: ClassVar[tuple[str, ...]] = ("arch", "temperature", "proj_dim")
    lr: float = 1e-3
    mask_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    vit_dim: int = 64  # encoder width; the decoder is half as wide
    finetune_steps: int = 150  # Adam steps of end-to-end fine-tuning, batch 64
    finetune_warmup: int = 30  # of those, linear warm-up steps of the fine-tuning lr (1e-3)
    patch_size: int = 4

    def __post_init__(self):
        if not 0 <= self.finetune_warmup <= self.finetune_steps:
            raise SSLKitError(f"mae_mask_ratio: finetune_warmup={self.finetune_warmup} must lie "
                              f"in 0..finetune_steps={self.finetune_steps}")


SETTINGS = {
    "ci": Settings(**asdict(SCALES["ci"]) | {"lr": 1e-3}, mask_ratios=(0.5, 0.75),
                   finetune_steps=2, finetune_warmup=0),
    # 8x8 patches (16 per digit): at 4x4 a ViT trained end to end on 1,300 digits stays at
    # chance for hundreds of steps; at 8x8 it leaves it within 300 and costs ~10x less
    "laptop": Settings(**asdict(SCALES["laptop"]) | {"lr": 1e-3, "epochs": 10},
                       patch_size=8, finetune_steps=600),
    "gpu": Settings(**asdict(SCALES["gpu"]) | {"lr": 1.5e-4 * 512 / 256},
                    vit_dim=192, finetune_steps=2000),
}


def build_mae(s: Settings, data, mask_ratio: float) -> MAE:
    torch.manual_seed(s.seed)
    views = SimCLRViews(mae_view_config(view_config_for(s.dataset, data.image_size)),
                        torch.Generator().manual_seed(s.seed))
    return MAE(data.image_size, s.patch_size, data.channels, dim=s.vit_dim,
               decoder_dim=s.vit_dim // 2, mask_ratio=mask_ratio, views=views)


def fine_tune_accuracy(encoder, data, s: Settings) -> float:
    """Test accuracy (%) after fine-tuning a copy of encoder + a linear head on the labels."""
    tuned = fine_tune(encoder, data.train_x, data.train_y, steps=s.finetune_steps,
                      batch_size=64, lr=1e-3, seed=s.seed, standardize=True,
                      warmup_steps=s.finetune_warmup)
    return 100 * topk_accuracy(extract_features(tuned, data.test_x), data.test_y)


def run(profile: str, out: str | Path, device: torch.device) -> Result:
    check_profile(profile, SETTINGS)
    check_out(out)
    s, timer = SETTINGS[profile], Timer()
    data = load_data(s)
    rows = []
    for ratio in s.mask_ratios:
        method = build_mae(s, data, ratio)
        losses = pretrain(method, data.train_x, s, device)
        acc = downstream(method.encoder, data, s)
        paper = PAPER["top1_at_75"] if ratio == 0.75 else {}
        rows.append({"mask ratio": ratio, "final loss": losses[-1], "kNN (%)": acc["knn"],
                     "linear (%)": acc["linear"],
                     "fine-tune (%)": fine_tune_accuracy(method.encoder, data, s),
                     "paper linear (%)": paper.get("linear"),
                     "paper fine-tune (%)": paper.get("fine-tune")})
    result = Result(
        name="mae_mask_ratio", title=TITLE, profile=profile, columns=list(rows[0]), rows=rows,
        paper=PAPER, settings=recorded_settings(s), seconds=timer.seconds, device=str(device),
        out=str(out),
        notes=[f"a ViT of width {s.vit_dim} ({s.patch_size}x{s.patch_size} patches) on "
               f"{s.dataset}, {s.epochs} epochs per ratio with Adam (the paper: AdamW, 800 "
               f"epochs); fine-tuning {s.finetune_steps} steps (lr 1e-3, linear warm-up, "
               f"standardised inputs)"])
    result.write(_figure(rows))
    return result


def _figure(rows: list[dict]):
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ratios = [100 * r["mask ratio"] for r in rows]
    for key, marker in (("fine-tune (%)", "o"), ("linear (%)", "s"), ("kNN (%)", "^")):
        ax.plot(ratios, [r[key] for r in rows], marker=marker, label=key.replace(" (%)", ""))
    ax.set_xlabel("mask ratio (%)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("MAE mask ratio (He et al., Figure 5)")
    return fig


__all__ = ["PAPER", "SETTINGS", "Settings", "TITLE", "build_mae", "fine_tune_accuracy", "run"]
