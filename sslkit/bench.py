"""``sslkit bench``: how fast SimCLR trains, and where the time goes.

Four ways to run the same SimCLR step (CIFAR ResNet-18, two 32x32 views per image, NT-Xent,
SGD; bfloat16 autocast and channels_last on CUDA) on synthetic uint8 images of CIFAR's shape:

    (a) sslkit, device path      the dataset as uint8 on the device; views made there in batches
    (b) sslkit, DataLoader path  views made per image by torchvision in DataLoader workers
    (c) lightly                  lightly's SimCLRTransform (per image, PIL) in a standard
                                 DataLoader and its NTXentLoss, on the same network
    (d) model alone              forward and backward on views made once in advance: the
                                 ceiling for this network, with augmentation costing nothing

Each is timed over --steps optimiser steps after a warm-up; images/s counts images (each gives
two views). Peak memory is the CUDA allocator's peak (not measured on the CPU). The ratios a/c
and a/d say how much faster than lightly's pipeline sslkit is, and how close to the ceiling.

lightly is never a dependency of sslkit: (c) runs when lightly is importable, e.g. in the
benchmark's own environment (``make bench``), and is skipped with a note otherwise.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from sslkit.augment import view_config_for
from sslkit.cores import usable_cpus
from sslkit.devices import resolve_device
from sslkit.errors import SSLKitError
from sslkit.methods import SimCLR, build_method
from sslkit.train import fast_cuda_settings, train_step
from sslkit.transfer import to_device

SIZES = {  # size -> (architecture, images in the synthetic dataset)
    "tiny": ("convnet-small", 256),  # seconds on a CPU: checks that the benchmark works
    "full": ("resnet18", 50_000),  # CIFAR-10's training set size
}
LIGHTLY_HINT = ("lightly is not installed here (it is never a dependency of sslkit): create the "
                "benchmark's own environment with `python -m venv .bench-venv && "
                ".bench-venv/bin/pip install lightly kornia -e .` (or `make bench`) and run "
                "`.bench-venv/bin/python -m sslkit bench` there")


@dataclass
class Result:
    name: str  # "a", "b", "c" or "d"
    label: str
    images_per_s: float | None  # None: skipped
    peak_mib: float | None  # None: not measured (CPU) or skipped
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(name: str, label: str, batches: Iterator, step: Callable, batch: int, steps: int,
             warmup: int, device: torch.device) -> Result:
    """Time `steps` calls of step(next(batches)) after `warmup` untimed ones."""
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Result(name, label, batch * steps / seconds, peak)


def _simclr(arch: str, device: torch.device, compile: bool) -> tuple[SimCLR, torch.optim.SGD]:
    g = torch.Generator().manual_seed(0)
    method = build_method("simclr", arch, 3, "cifar10", 32, g, proj_dim=128, temperature=0.5)
    method = method.to(device, memory_format=torch.channels_last)
    if compile:
        method.encoder.compile()
        method.head.compile()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    return method, optimizer


def _random_batches(images: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    """Batches drawn as the training loop draws them: a new permutation of the images per pass,
    sent to the device once per pass and sliced there. (Indices copied to the GPU at every step
    with a plain .to() would make the host wait for the GPU each step and idle it meanwhile,
    slowing (a) for a reason training does not have.)"""
    g = torch.Generator().manual_seed(1)
    while True:
        order = to_device(torch.randperm(len(images), generator=g), images.device)  # (N,)
        for start in range(0, len(images) - batch + 1, batch):
            yield images[order[start : start + batch]]  # (batch, C, H, W)


class _PerImage(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform: Callable, pil: bool = False):
        self.images, self.transform, self.pil = images, transform, pil

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.pil:
            from torchvision.transforms.functional import to_pil_image

            x = to_pil_image(x)
        return self.transform(x)


def _loader_batches(dataset, batch: int, workers: int,
                    device: torch.device) -> tuple[Iterator, int]:
    """A standard DataLoader's batches, moved to the device -> (batches, ahead).

    ahead = workers x prefetch_factor: the batches the workers make before the main process
    asks for them. While the untimed warm-up runs (cuDNN's search, torch.compile, the workers'
    start) they fill that stock, and a timer started on it would count batches made before it
    started (in a model of the workers: up to 1.7 times the steady rate with 15 workers and 30
    timed steps; about 1.05 after this). So these arms take `ahead` more untimed steps first."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(2))

    def batches() -> Iterator:
        while True:
            for views in loader:
                yield [v.to(device, non_blocking=True) for v in views]

    return batches(), workers * (loader.prefetch_factor or 0)


def check_counts(batch: int, steps: int, warmup: int) -> None:
    """One-line errors for a batch, a number of timed steps or of warm-up steps out of range."""
    if batch < 2:
        raise SSLKitError(f"--batch must be 2 or more (got {batch}): NT-Xent's negatives are "
                          "the other images of the batch")
    if steps < 1:
        raise SSLKitError(f"--steps must be 1 or more (got {steps}): they are the timed steps")
    if warmup < 0:
        raise SSLKitError(f"--warmup must be 0 or more (got {warmup}): they are the untimed "
                          "steps before the timed ones")


def installed(package: str, *modules: str) -> bool:
    """False when `package` is not installed. One that is installed but fails to import its
    `modules` (a dependency missing, a build for another torch) counts as installed: its row
    then says why (failed_row)."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as err:
        return (err.name or "").split(".")[0] != package
    except Exception:
        return True
    return True


def failed_row(name: str, label: str, library: str, err: Exception) -> Result:
    """The row of a library that broke while imported or measured: skipped, saying why."""
    reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    return Result(name, label, None, None, f"{library} failed: {reason}")


def lightly_available() -> bool:
    return installed("lightly", "lightly.loss", "lightly.transforms")


def run_bench(device: str = "auto", batch: int = 512, steps: int = 20, size: str = "full",
              warmup: int = 3, workers: int | None = None, compile: bool = False,
              lightly: bool | None = None,
              measured: Callable[[Result], None] | None = None) -> list[Result]:
    """Measure (a)-(d); returns one Result each, in that order ((c) skipped if lightly is not
    importable or lightly=False). measured(result) is called as each row is done, so a row
    that crashes or is stopped later loses none of the rows before it."""
    if size not in SIZES:
        raise SSLKitError(f"unknown size {size!r}: use one of {', '.join(SIZES)}")
    check_counts(batch, steps, warmup)
    if workers is not None and workers < 0:
        raise SSLKitError(f"--workers must be 0 or more (got {workers}): 0 makes the views in "
                          "the main process")
    if lightly and not lightly_available():
        raise SSLKitError(LIGHTLY_HINT)
    dev = resolve_device(device)
    fast_cuda_settings(dev)  # as in training, for every pipeline (lightly's too)
    arch, n_images = SIZES[size]
    workers = min(8, usable_cpus()) if workers is None else workers
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (max(n_images, batch), 3, 32, 32), dtype=torch.uint8,
                           generator=g)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    results = []

    def add(result: Result) -> None:
        results.append(result)
        if measured is not None:
            measured(result)

    # (a) the device path: uint8 dataset on the device, batched views there
    method, optimizer = _simclr(arch, dev, compile)
    on_device = images.to(dev)
    add(_measure(
        "a", "sslkit, device path", ([x] for x in _random_batches(on_device, batch)),
        lambda micro: train_step(method, optimizer, micro, autocast), batch, steps, warmup, dev))
    del on_device, method, optimizer  # an arm's leftovers would count in the next one's peak

    # (b) the DataLoader path: torchvision per image in worker processes. In a function of its
    # own, like (c): its network, optimiser state, last batch and workers are gone when it
    # returns, so they count neither in the next arm's peak memory nor against its CPU time.
    add(_bench_dataloader(arch, dev, images, batch, steps, warmup, workers, autocast, compile))

    # (c) lightly's transform and loss, a standard DataLoader, the same network
    if lightly is None:
        lightly = lightly_available()
    if lightly:
        try:
            add(_bench_lightly(arch, dev, images, batch, steps, warmup, workers, autocast,
                               compile))
        except Exception as err:  # a lightly that breaks here must not cost the other rows
            add(failed_row("c", "lightly", "lightly", err))
    else:
        add(Result("c", "lightly", None, None, LIGHTLY_HINT))

    # (d) the model alone on views made in advance
    method, optimizer = _simclr(arch, dev, compile)
    views = method.views.two_views(images[:batch].to(dev))  # as (a) feeds them: same layout
    add(_measure(
        "d", "model alone (pre-augmented)", iter(lambda: [views], None),
        lambda micro: train_step(method, optimizer, micro, autocast), batch, steps, warmup, dev))
    return results


def _bench_dataloader(arch, dev, images, batch, steps, warmup, workers, autocast, compile):
    method, optimizer = _simclr(arch, dev, compile)
    batches, ahead = _loader_batches(_PerImage(images, method.views.per_image()), batch,
                                     workers, dev)
    return _measure("b", f"sslkit, DataLoader ({workers} workers)", ([v] for v in batches),
                    lambda micro: train_step(method, optimizer, micro, autocast), batch, steps,
                    warmup + ahead, dev)


def _bench_lightly(arch, dev, images, batch, steps, warmup, workers, autocast, compile):
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    cfg = view_config_for("cifar10")
    transform = SimCLRTransform(input_size=32, cj_strength=cfg.jitter_strength,
                                gaussian_blur=cfg.blur_p, min_scale=cfg.crop_scale[0])
    method, optimizer = _simclr(arch, dev, compile)
    criterion = NTXentLoss(temperature=0.5)

    def step(views):
        v1, v2 = views
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            z = method.embed(torch.cat([v1, v2]))
            loss = criterion(*z.chunk(2))
        loss.backward()
        optimizer.step()

    batches, ahead = _loader_batches(_PerImage(images, transform, pil=True), batch, workers, dev)
    return _measure("c", f"lightly ({workers} workers)", batches, step, batch, steps,
                    warmup + ahead, dev)


def ratios(results: list[Result], pairs=(("a", "c"), ("a", "d"))) -> dict[str, float | None]:
    """x/y for each pair (default a/c and a/d) from the measured images per second (None where
    one is missing)."""
    speed = {r.name: r.images_per_s for r in results}
    return {f"{x}/{y}": speed[x] / speed[y] if speed.get(x) and speed.get(y) else None
            for x, y in pairs}


def format_table(results: list[Result], header: str = "", column: str = "pipeline",
                 pairs=(("a", "c"), ("a", "d"))) -> str:
    """One row per result (images/s, peak MiB), then the ratios of `pairs`, then the notes."""
    pad = max(len(r.name) for r in results) + 3  # "(a) "
    width = 42 - pad  # the label column
    lines = [header] if header else []
    lines.append(f"{'':{pad}}{column:{width}}{'images/s':>12}{'peak MiB':>12}")
    for r in results:
        speed = f"{r.images_per_s:12.1f}" if r.images_per_s is not None else f"{'skipped':>12}"
        peak = f"{r.peak_mib:12.0f}" if r.peak_mib is not None else f"{'-':>12}"
        lines.append(f"{'(' + r.name + ') ':{pad}}{r.label:{width}}{speed}{peak}")
    for name, value in ratios(results, pairs).items():
        lines.append(f"{name}: {value:.2f}" if value is not None else f"{name}: n/a")
    lines += [f"({r.name}) {r.note}" for r in results if r.note]
    return "\n".join(lines)
