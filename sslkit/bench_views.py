"""``sslkit bench`` (second table): which implementation should make the views?

SimCLR's augmentation is a different random transform per image. Three ways to do it, timed on
the same uint8 batch (two views per image, the CIFAR-10 recipe of ``view_config_for``):

    (v1) sslkit batched ops      ``SimCLRViews``: per-sample parameters drawn as tensors, every
                                 stage one batched call (``grid_sample`` for crop and flip)
    (v2) kornia.augmentation     ``AugmentationSequential`` of kornia's per-sample transforms
                                 with the same distributions, on the same device
    (v3) torchvision, per image  ``view_transform``, one image at a time in this process: the
                                 work that the DataLoader path spreads over its workers

The issue asked to measure a well-kept library against batched ops before choosing; this table
is that measurement, and can be rerun on any device. kornia is never a dependency of sslkit:
(v2) runs when kornia is importable (``make bench`` installs it in the benchmark's own
environment) and is skipped with a note otherwise; a kornia that fails to import or to run
costs only its own row, which says why.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from sslkit.augment import (
    SimCLRViews,
    ViewConfig,
    blur_settings,
    view_config_for,
    view_transform,
)
from sslkit.bench import Result, _measure, check_counts, failed_row, format_table, installed
from sslkit.errors import SSLKitError

KORNIA_HINT = ("kornia is not installed here (it is never a dependency of sslkit): `make bench` "
               "installs it in the benchmark's own environment")


def kornia_available() -> bool:
    return installed("kornia", "kornia.augmentation")


def kornia_views(cfg: ViewConfig) -> torch.nn.Module:
    """kornia's per-sample pipeline drawing from the distributions of cfg: (N, C, H, W) floats
    in [0, 1] -> one view each (N, C, size, size)."""
    import kornia.augmentation as K

    s = cfg.jitter_strength
    stages = [
        K.RandomResizedCrop((cfg.size, cfg.size), scale=cfg.crop_scale, ratio=cfg.crop_ratio),
        K.RandomHorizontalFlip(p=cfg.flip_p),
        K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=cfg.jitter_p),
        K.RandomGrayscale(p=cfg.gray_p),
    ]
    if cfg.blur_p > 0:
        sigma, kernel = blur_settings(cfg)  # as SimCLRViews and view_transform blur
        stages.append(K.RandomGaussianBlur((kernel, kernel), sigma, p=cfg.blur_p))
    if cfg.solarize_p > 0:
        stages.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=cfg.solarize_p))
    return K.AugmentationSequential(*stages)


def _time(name: str, label: str, make_views: Callable, images: torch.Tensor, steps: int,
          warmup: int, device: torch.device) -> Result:
    """bench's timer on make_views(images), the same batch every call."""
    return _measure(name, label, itertools.repeat(images), make_views, len(images), steps,
                    warmup, device)


def run_views_bench(device: torch.device, batch: int = 512, steps: int = 20, warmup: int = 3,
                    kornia: bool | None = None) -> list[Result]:
    """(v1)-(v3): images per second for two CIFAR-sized views of each image of a uint8 batch
    ((v2) skipped if kornia is not importable or kornia=False)."""
    check_counts(batch, steps, warmup)
    if kornia and not kornia_available():
        raise SSLKitError(KORNIA_HINT)
    cfg = view_config_for("cifar10")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    on_device = images.to(device)
    results = []

    batched = SimCLRViews(cfg).to(device)
    results.append(_time("v1", "sslkit batched ops", batched.two_views, on_device, steps,
                         warmup, device))

    if kornia is None:
        kornia = kornia_available()
    if kornia:
        try:
            results.append(_kornia_row(cfg, on_device, steps, warmup, device))
        except Exception as err:  # a kornia that breaks here must not cost the other rows
            results.append(failed_row("v2", "kornia.augmentation", "kornia", err))
    else:
        results.append(Result("v2", "kornia.augmentation", None, None, KORNIA_HINT))

    per_image = view_transform(cfg)

    def torchvision_two_views(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(per_image(img), per_image(img)) for img in x]

    results.append(_time("v3", "torchvision per image (1 process)", torchvision_two_views,
                         images, steps, warmup, torch.device("cpu")))
    return results


def _kornia_row(cfg: ViewConfig, images: torch.Tensor, steps: int, warmup: int,
                device: torch.device) -> Result:
    pipeline = kornia_views(cfg).to(device)

    def kornia_two_views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float() / 255
        return pipeline(x), pipeline(x)

    return _time("v2", "kornia.augmentation", kornia_two_views, images, steps, warmup, device)


def format_views_table(results: list[Result], header: str = "") -> str:
    return format_table(results, header, column="views by", pairs=(("v1", "v2"), ("v1", "v3")))
