"""One plain training loop for every method.

    for epoch:                      (a fresh permutation of the images, from a seeded generator)
        for batch of images:        uint8 (B, C, H, W), moved to the device
            lr <- schedule[step]    warm-up then cosine, one value per step (sslkit.schedules)
            loss = method(batch)    the method makes its own views and returns its loss
            backward, optimiser step
        metrics.jsonl <- one line   epoch, mean loss, lr, seconds (and kNN accuracy if asked)
        last.pt <- checkpoint       written atomically: a crash never leaves a broken file

Two data paths: ``loader="device"`` (default) keeps the dataset as uint8 on the device and the
method makes its views there in batches; ``loader="dataloader"`` keeps it in CPU memory and a
DataLoader makes the views per image with torchvision in worker processes.

Several processes (torchrun, see sslkit.distributed): batch_size is the global batch of one
optimiser step; each rank takes its slice of it, BatchNorm is synchronised, DDP averages the
gradients, and rank 0 writes the files. ``accumulate`` splits each rank's slice into
micro-batches whose gradients add up before one optimiser step.

``--resume`` restores weights, optimiser, schedule position and every random state, so a run
interrupted after epoch k and resumed ends with exactly the weights of an uninterrupted run.
Resuming with another number of processes continues the weights, schedule and permutation
stream, with new per-rank augmentation streams (``stream_seed``), and says so.
Mixed precision (bfloat16 autocast) is used on CUDA only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from numbers import Integral, Real
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from sslkit import distributed
from sslkit.atomic import write_atomic
from sslkit.data import ImageData, load_dataset
from sslkit.devices import resolve_device
from sslkit.errors import SSLKitError
from sslkit.evaluate import extract_features, knn_accuracy
from sslkit.methods import build_method, check_method_options, check_shared_settings
from sslkit.methods.momentum import set_step_position
from sslkit.profiles import Profile
from sslkit.recipes import recipe_for
from sslkit.run_data import check_loaded_data, check_resumed_data, data_record, given_data
from sslkit.schedules import cosine_schedule
from sslkit.transfer import to_device

CHECKPOINT = "last.pt"
METRICS = "metrics.jsonl"
RUN_INFO = "run.json"  # the command line and device of each call that trained the run
LOADERS = ("device", "dataloader")
OPTIMIZERS = ("adam", "adamw", "sgd")
# What a resumed run may change: where and how it runs and is monitored, not what it computes.
RESUME_MAY_CHANGE = {"device", "workers", "compile", "data_root", "download", "knn_every",
                     "knn_k", "n_test"}


@dataclass(frozen=True)
class TrainConfig:
    method: str = "simclr"  # see sslkit.methods.METHODS
    dataset: str = "shifted_digits"  # see sslkit.data.DATASETS
    data_root: str = "data"  # where dataset files live (or are downloaded to)
    download: bool = False  # fetch torchvision datasets that are missing
    image_size: int = 32  # side of the images of --dataset folder (the others keep their own)
    n_train: int | None = None  # train on n training images (seeded, stratified by class)
    n_test: int | None = None  # evaluate on n test images (seeded, stratified by class)
    arch: str = "convnet-small"  # see sslkit.models.ARCHS
    head: str = "mlp"  # projection head: mlp | linear | none
    proj_dim: int = 64  # projection output size
    temperature: float = 0.2  # NT-Xent temperature
    epochs: int = 200
    batch_size: int = 128
    optimizer: str = "adam"  # adam | adamw | sgd (momentum 0.9)
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 1e-6
    warmup_epochs: int = 5
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    knn_every: int = 0  # run the kNN monitor every n epochs (0: never during training)
    knn_k: int = 20  # neighbours in the kNN monitor
    accumulate: int = 1  # micro-batches per optimiser step (batch_size counts all of them)
    loader: str = "device"  # device: the dataset as uint8 on the device, views made there in
    #                         batches; dataloader: views made per image by torchvision in
    #                         worker processes (CPU), for data too large for the device
    workers: int = 2  # DataLoader worker processes (loader "dataloader" only)
    compile: bool = False  # torch.compile the encoder and the head
    adam_beta2: float = 0.999  # Adam(W)'s second-moment decay (MAE: 0.95)
    method_options: dict = field(default_factory=dict)  # the method constructor's keywords,
    #                         e.g. {"queue_size": 4096} for MoCo (command line: --option K=V)

    @classmethod
    def from_profile(cls, profile: Profile, **overrides) -> TrainConfig:
        """The profile's sizes, then the method's recipe for that profile (sslkit.recipes),
        then any field overridden by keyword (method_options are merged into the recipe's)."""
        shared = {f.name for f in fields(cls)} & set(asdict(profile))
        base = cls(**{name: getattr(profile, name) for name in shared})
        recipe = recipe_for(profile.name, overrides.get("method", base.method))
        options = {**recipe.options, **overrides.pop("method_options", {})}
        return replace(base, **{**recipe.train, **overrides, "method_options": options})


def fast_cuda_settings(device: torch.device) -> None:
    """On a GPU, let cuDNN time its convolution algorithms once per input shape and keep the
    fastest (the shapes of a run never change, so the first step pays for every later one).
    ``sslkit bench`` uses the same settings for every pipeline it compares."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """cfg's optimiser over params. Weight decay: AdamW leaves biases and normalisation
    weights (the 1-D parameters) undecayed, as MAE's and DINO's code do; SGD and Adam decay
    every parameter, as the MoCo CIFAR-10 demo the gpu profile follows does."""
    betas = (0.9, cfg.adam_beta2)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        params = list(params)
        groups = [{"params": [p for p in params if p.ndim >= 2]},  # weights: decayed
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise SSLKitError(f"unknown optimizer {cfg.optimizer!r}: use adam, adamw or sgd")


def load_data(cfg: TrainConfig, unlabeled: bool = True) -> ImageData:
    """The run's dataset, cut to n_train / n_test (unlabeled=False: without an unlabeled
    split, which evaluation does not use). Under torchrun with --download, rank 0
    fetches what is missing while the others wait, then they read its files: processes that all
    downloaded into one folder at once could leave it corrupt."""
    def load(download: bool) -> ImageData:
        return load_dataset(cfg.dataset, cfg.data_root, download, cfg.image_size, unlabeled)

    if cfg.download and distributed.is_distributed():
        data = load(download=True) if distributed.is_main() else None
        distributed.barrier()
        data = data or load(download=False)
    else:
        data = load(cfg.download)
    return data.subset(cfg.n_train, cfg.n_test)


def build(cfg: TrainConfig, data: ImageData, generator: torch.Generator | None = None,
          total_steps: int | None = None):
    """The method module for this config and data, freshly initialised from cfg.seed.

    total_steps: optimiser steps of the whole run, for methods with per-step schedules (DINO's
    teacher momentum and temperature)."""
    torch.manual_seed(cfg.seed)
    options = {"proj_dim": cfg.proj_dim, "temperature": cfg.temperature, "head": cfg.head}
    if cfg.method == "dino" and total_steps:
        options["total_steps"] = total_steps
        options["steps_per_epoch"] = total_steps // cfg.epochs
    return build_method(cfg.method, cfg.arch, data.channels, cfg.dataset, data.image_size,
                        generator, method_options=cfg.method_options, **options)


def check_settings(cfg: TrainConfig) -> None:
    """Fail on an unknown method, architecture or dataset, or a number out of range, before
    any data is loaded."""
    from sslkit.data import DATASETS
    from sslkit.methods import METHODS
    from sslkit.models import ARCHS

    for what, value, known in (("method", cfg.method, METHODS), ("architecture", cfg.arch, ARCHS),
                                ("dataset", cfg.dataset, DATASETS)):
        if value not in known:
            raise SSLKitError(f"unknown {what} {value!r}: use one of {', '.join(known)}")
    check_method_options(cfg.method, cfg.method_options)
    _check_numbers(cfg)


AT_LEAST = {"epochs": 1, "knn_k": 1, "warmup_epochs": 0, "proj_dim": 1,  # checked ranges
            "knn_every": 0, "workers": 0, "n_train": 1, "n_test": 1}


def _check_numbers(cfg: TrainConfig) -> None:
    """Fail on a setting outside its range, or not a number of its kind (epochs=1.5,
    batch_size=32.0, lr="0.1"), before any data is loaded or any epoch is run."""
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.type == "int" or (f.type == "int | None" and value is not None):
            _check_whole_setting(f.name, value)
        elif f.type == "float" and (isinstance(value, bool) or not isinstance(value, Real)):
            flag = "--" + f.name.replace("_", "-")
            raise SSLKitError(f"{flag} must be a number (got {value!r}): use e.g. {flag} "
                              f"{f.default}")
    if cfg.batch_size < 2:
        raise SSLKitError(f"batch size {cfg.batch_size} leaves no negatives for the loss: use "
                          "--batch-size 2 or more")
    if cfg.optimizer not in OPTIMIZERS:
        raise SSLKitError(f"unknown optimizer {cfg.optimizer!r}: use {', '.join(OPTIMIZERS)}")
    for name, low in AT_LEAST.items():
        value = getattr(cfg, name)
        if value is not None and value < low:
            flag = "--" + name.replace("_", "-")
            raise SSLKitError(f"{flag} must be at least {low} (got {value}): use {flag} {low} "
                              "or more")
    for name in ("lr", "temperature"):  # NaN fails every comparison, so it fails here too
        if not 0 < getattr(cfg, name) < math.inf:
            raise SSLKitError(f"--{name} must be positive and finite (got "
                              f"{getattr(cfg, name)}): use e.g. --{name} "
                              f"{getattr(TrainConfig, name)}")
    if not 0 <= cfg.weight_decay < math.inf:
        raise SSLKitError(f"--weight-decay must be >= 0 and finite (got {cfg.weight_decay}): use "
                          "e.g. --weight-decay 1e-6")
    if not 0 <= cfg.adam_beta2 < 1:
        raise SSLKitError(f"--adam-beta2 must be in [0, 1) (got {cfg.adam_beta2}): use e.g. "
                          "--adam-beta2 0.999")


def _check_whole_setting(name: str, value) -> None:
    """One-line error unless `value` of setting `name` is a whole number (an int, not a bool):
    epochs=1.5 or batch_size=32.0 failed in range() after the run folder was written."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        return
    flag = "--" + name.replace("_", "-")
    default = next((f.default for f in fields(TrainConfig) if f.name == name), None)
    if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
        low = {"batch_size": 2, "accumulate": 1, "stop_after_epoch": 1, **AT_LEAST}.get(name)
        fix = f"use {flag} {round(value) if low is None else max(round(value), low)}"
    elif default is None:
        fix = f"give a whole number, or leave {flag} out"
    else:
        fix = f"use e.g. {flag} {default}"
    raise SSLKitError(f"{flag} must be a whole number (got {value!r}): {fix}")


def _plain_numbers(cfg: TrainConfig) -> TrainConfig:
    """cfg (checked) with numpy numbers, e.g. np.int64(32), as Python int and float: the
    metrics log is JSON, which cannot write them, and would fail after the first epoch."""
    plain = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.type in ("int", "int | None", "float") and value is not None \
                and type(value) not in (int, float):
            plain[f.name] = float(value) if f.type == "float" else int(value)
    return replace(cfg, **plain) if plain else cfg


def save_atomic(obj, path: Path) -> None:
    """torch.save to `path` through a temporary file (sslkit.atomic): a crash while saving
    leaves the previous checkpoint as it was."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(out: str | Path) -> dict:
    """The checkpoint of the run in `out`, with a one-line error when there is none, when the
    file is damaged (cut off, empty, not a torch file) or when it is not an sslkit run's."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise SSLKitError(
            f"no checkpoint at {path}: train first with `sslkit train METHOD --out {out}`, "
            "or point to the folder of a finished run"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except OSError as err:
        # opening it failed (permissions, a vanished mount): not the file's fault. torch.load
        # also raises a bare OSError(EINVAL), with no file name, on a cut-off file.
        if isinstance(err, PermissionError) or err.filename is not None:
            raise SSLKitError(f"{path} cannot be opened ({err.strerror or err}): check that "
                              "it is readable by you") from None
        raise SSLKitError(f"{path} cannot be read ({type(err).__name__}): the file is damaged; "
                          "copy the run again, or train it anew") from None
    except Exception as err:  # torch.load fails in many ways on a damaged file
        raise SSLKitError(f"{path} cannot be read ({type(err).__name__}): the file is damaged; "
                          "copy the run again, or train it anew") from None
    known = {f.name for f in fields(TrainConfig)}
    if not (isinstance(ckpt, dict) and {"config", "epoch", "model"} <= ckpt.keys()
            and isinstance(ckpt["config"], dict) and set(ckpt["config"]) <= known):
        raise SSLKitError(f"{path} is not a checkpoint of `sslkit train` (or one from another "
                          "version of sslkit): give the --out folder of an sslkit run")
    return ckpt


def _squeeze(err: BaseException) -> str:
    """An exception's message on one line (its first line, at most 160 characters)."""
    lines = str(err).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _weights_mismatch(model: dict, saved) -> str | None:
    """What keeps `saved` (a checkpoint's "model") from loading into a model whose state_dict
    is `model`: the first missing, unexpected or differently shaped entry, or None."""
    if not isinstance(saved, dict):
        return f"its weights are a {type(saved).__name__}, not a dict of tensors"
    for what, keys in (("no", [key for key in model if key not in saved]),
                       ("an unexpected", [key for key in saved if key not in model])):
        if keys:
            return f"{what} {keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")
    for key, value in model.items():
        shape = tuple(getattr(saved[key], "shape", ()))
        if shape != tuple(value.shape):
            return f"{key} is {shape} in the file but {tuple(value.shape)} in the model"
    return None


def load_weights(method: torch.nn.Module, ckpt: dict, out: str | Path, name: str) -> None:
    """The checkpoint's weights into `method` (built from its saved settings), with a
    one-line error when they do not fit: a checkpoint saved by another version of sslkit,
    whose networks had other layers or sizes, or one whose settings were edited."""
    try:
        method.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as err:
        detail = _weights_mismatch(method.state_dict(), ckpt["model"]) or _squeeze(err)
        raise SSLKitError(f"{Path(out) / CHECKPOINT} holds weights that do not fit the {name} "
                          f"model its saved settings describe ({detail}): it was saved by "
                          "another version of sslkit, or edited; use the version that trained "
                          "it, or train the run anew") from None


def _read_metrics(out: Path, up_to_epoch: int) -> list[dict]:
    """The metrics rows of epochs 1..up_to_epoch (the checkpoint's), to continue the log from.

    A call killed while appending leaves a cut-off last line; it belongs to an epoch whose
    checkpoint was never saved, so it is dropped like every row after the checkpoint."""
    path = out / METRICS
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        elif number < len(lines):  # valid JSON without an epoch is no row either
            raise SSLKitError(f"{path} line {number} is not a metrics row: restore the file "
                              "from a copy of the run, or delete it to start a new log")
    return [r for r in rows if r["epoch"] <= up_to_epoch]


def _micro_batches(cfg: TrainConfig) -> int:
    """Images per forward on this process: batch_size / (processes x accumulate), checked."""
    w = distributed.world_size()
    if cfg.accumulate < 1:
        raise SSLKitError(f"accumulate must be >= 1 (got {cfg.accumulate}): use --accumulate 1 "
                          "for one forward per optimiser step")
    per_forward, rest = divmod(cfg.batch_size, w * cfg.accumulate)
    if rest:
        raise SSLKitError(
            f"batch size {cfg.batch_size} cannot be split into {w} process(es) x "
            f"{cfg.accumulate} micro-batch(es): use a --batch-size divisible by "
            f"{w * cfg.accumulate}")
    if per_forward < 2:  # a contrastive loss needs 2 pairs; BatchNorm needs 2 samples
        raise SSLKitError(
            f"batch size {cfg.batch_size} split into {w} process(es) x {cfg.accumulate} "
            f"micro-batch(es) leaves {per_forward} image per forward: use a smaller "
            f"--accumulate (at most {cfg.batch_size // (2 * w)}) or a larger --batch-size")
    return per_forward


def step_batches(order: torch.Tensor, step: int, cfg: TrainConfig) -> list[torch.Tensor]:
    """The image indices of this process's micro-batches in optimiser step `step` of an epoch.

    Global batch = order[step*B : (step+1)*B]; rank r takes slice r (the distributed sampler),
    then splits it into cfg.accumulate micro-batches. Concatenated over ranks in rank order, the
    micro-batches give back the global batch."""
    batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
    return list(distributed.shard(batch).chunk(cfg.accumulate))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list,
               autocast=None) -> torch.Tensor:
    """One optimiser step: forward and backward of every micro-batch, then optimizer.step().

    Each loss is divided by the number of micro-batches, so the accumulated gradient is that of
    the mean loss over the step's images. Under DDP, gradients are averaged over the ranks once,
    at the last micro-batch (``no_sync`` before). Methods with a moving average learn where each
    forward sits in the step (``set_step_position``); a method's ``before_optimizer_step``, if
    it has one, sees the step's whole gradient just before the optimiser does. Returns the
    step's mean loss (detached).

    micro_batches: a list (or tuple) of at least one micro-batch, e.g. ``[x]`` for one batch
    x (B, C, H, W); a bare tensor, or an empty list, is a one-line error (no optimiser step).
    """
    if isinstance(micro_batches, torch.Tensor):  # iterating it would give single images
        raise SSLKitError(f"train_step takes a list of micro-batches, got a tensor of shape "
                          f"{tuple(micro_batches.shape)}: pass [x] for one batch x")
    if not isinstance(micro_batches, (list, tuple)):
        raise SSLKitError(f"train_step takes a list of micro-batches, got a "
                          f"{type(micro_batches).__name__}: pass [x] for one batch x, or "
                          "list(...) of several")
    if not micro_batches:  # the loss would be 0.0, and the optimiser step on no gradient
        raise SSLKitError("train_step got an empty list of micro-batches, so there is nothing "
                          "to train on: pass [x] for one batch x")
    autocast = autocast or contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    k = len(micro_batches)
    for i, x in enumerate(micro_batches):
        last = i == k - 1
        set_step_position(model, first=i == 0, last=last)
        no_sync = isinstance(model, DistributedDataParallel) and not last
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast:
                loss = model(x) / k
            loss.backward()
        total = total + loss.detach()
    method = model.module if isinstance(model, DistributedDataParallel) else model
    if hasattr(method, "before_optimizer_step"):  # DINO: gradient clipping, frozen last layer
        method.before_optimizer_step()
    optimizer.step()
    return total


class _ViewsDataset(torch.utils.data.Dataset):
    """images (N, C, H, W) uint8 in CPU memory; item i -> the method's views of image i, made
    by torchvision (or the raw image for methods that make their own inputs)."""

    def __init__(self, images: torch.Tensor, transform=None):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]) if self.transform else self.images[i]


def _loader_epoch(cfg: TrainConfig, method, images: torch.Tensor, order: torch.Tensor,
                  steps: range, device: torch.device):
    """The DataLoader path: per step, the list of micro-batches, views made per image on the CPU
    in cfg.workers processes, then moved to the device."""
    from sslkit.methods import DINO, MoCo, SimCLR

    views = getattr(method, "views", None)
    transform = views.per_image() if isinstance(method, (SimCLR, MoCo, DINO)) else None
    batches = [b.tolist() for s in steps for b in step_batches(order, s, cfg)]
    loader = torch.utils.data.DataLoader(
        _ViewsDataset(images, transform), batch_sampler=batches, num_workers=cfg.workers,
        pin_memory=device.type == "cuda")

    def to_device(batch):
        if isinstance(batch, (list, tuple)):
            return [v.to(device, non_blocking=True) for v in batch]
        return batch.to(device, non_blocking=True)

    it = iter(loader)
    for _ in steps:
        yield [to_device(next(it)) for _ in range(cfg.accumulate)]


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    progress: bool = True,
    data: ImageData | None = None,
    command: str | None = None,
    asked: dict | None = None,
):
    """Train cfg.method; checkpoint and metrics go to `out`. Returns (method, metrics rows).

    command: the command line that started this call, appended to OUT/run.json with the device
    it ran on (``sslkit results`` puts both in its table).

    data: the images to train on (an ImageData) instead of loading cfg.dataset from
    cfg.data_root, e.g. a notebook's data already in memory. Their name must be cfg.dataset,
    and cfg.n_train / n_test cut them as they cut the loaded dataset (the same seeded draw;
    images already that few are kept as they are), so a run given the full dataset trains on
    what the config says. The checkpoint records the images' sizes and a digest of them:
    load_trained(out) reloads cfg.dataset and warns when that gives other images (pass them,
    load_trained(out, data=...)); resuming refuses other training images in one line.

    resume=True continues the run saved in `out` with its saved settings. asked: the settings
    this call was given explicitly (the command line's flags), default every field of cfg. Any
    of them that differs from the saved run is an error, except those in RESUME_MAY_CHANGE
    (device, data_root, ...), which the resumed call takes from `asked`.

    stop_after_epoch: end this call after that epoch (the schedule still spans cfg.epochs), e.g.
    to split a long run over several sessions and continue with resume=True.

    Under torchrun (or inside a process group the caller made) every process calls train();
    rank 0 alone writes metrics and checkpoints, and every rank returns the same weights (but
    MoCo's BatchNorm running statistics, which are per rank).
    """
    call_started = time.perf_counter()  # this call's wall time, recorded in OUT/run.json
    if str(out).strip() == "":  # Path("") is the current folder: the run would land there
        raise SSLKitError("--out is empty (an unset shell variable?): give the run folder, "
                          "e.g. --out runs/simclr")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SSLKitError(f"--out {out} is a file: give a folder for the run")
    check_settings(cfg)
    cfg = _plain_numbers(cfg)
    if stop_after_epoch is not None:
        _check_whole_setting("stop_after_epoch", stop_after_epoch)
        if stop_after_epoch < 1:
            raise SSLKitError(f"--stop-after-epoch must be at least 1 (got {stop_after_epoch}): "
                              "give the epoch after which this call ends")
    if not resume and (out / CHECKPOINT).exists():
        raise SSLKitError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    if resume and not (out / CHECKPOINT).is_file():
        raise SSLKitError(
            f"no checkpoint at {out / CHECKPOINT} to resume: drop --resume to start a new run, "
            "or give the --out folder of the run to continue"
        )
    ckpt = load_checkpoint(out) if resume else None
    if ckpt is not None:
        # Resuming continues the saved run with its own settings; only where and how it runs
        # may change (RESUME_MAY_CHANGE).
        asked = asdict(cfg) if asked is None else {"method": cfg.method, **asked}
        saved = TrainConfig(**ckpt["config"])
        _check_resume_settings(out, saved, asked)
        cfg = replace(saved, **{k: v for k, v in asked.items() if k in RESUME_MAY_CHANGE})
    if ckpt is None:  # a flag the method ignores would train as if it had not been given
        check_shared_settings(cfg.method, asked or {})
    if cfg.loader not in LOADERS:
        raise SSLKitError(f"unknown loader {cfg.loader!r}: use one of {', '.join(LOADERS)}")
    _check_writable(out)
    device = distributed.setup(resolve_device(cfg.device))
    fast_cuda_settings(device)
    given = data is not None
    data = given_data(cfg, data) if given else load_data(cfg)
    # A run trained on given images saves what they are (data_record), so that resuming or
    # reloading it can tell whether it has the same ones; a run on cfg's own dataset as
    # load_data reads it is described by its settings.
    trained_on = ckpt.get("data") if ckpt is not None else None  # given images' record
    record = data_record(data) if given or trained_on is not None else None
    if trained_on is not None:  # a run trained on given images resumes only on them
        check_resumed_data(out, trained_on, record, given)
    if ckpt is None and (asked or {}).get("image_size", data.image_size) != data.image_size:
        raise SSLKitError(f"--image-size {asked['image_size']} does not resize --dataset "
                          f"{cfg.dataset}, whose images are {data.image_size}x{data.image_size}: "
                          "drop it (it sets the side of --dataset folder images)")
    if cfg.knn_every:  # the monitor's first epoch would fail after training it, unsaved
        _check_monitor(cfg, data)
    # (N, C, H, W) uint8; the device path keeps the whole dataset there, 1 byte per value
    images = data.pretrain_images(device if cfg.loader == "device" else None)
    steps_per_epoch = len(images) // cfg.batch_size
    if steps_per_epoch == 0:
        raise SSLKitError(
            f"batch size {cfg.batch_size} is larger than the training set ({len(images)} "
            f"images): use --batch-size {len(images)} or less"
        )
    per_forward = _micro_batches(cfg)

    generator = torch.Generator().manual_seed(cfg.seed)  # permutations (and augmentation)
    views_generator = generator  # one process: one stream, as before DDP existed
    if distributed.is_distributed():  # the same permutation everywhere, other views per rank
        views_generator = torch.Generator().manual_seed(stream_seed(cfg.seed, distributed.rank()))
    total_steps = cfg.epochs * steps_per_epoch
    # channels_last conv weights: about 25 % faster on CPU (oneDNN) and the layout GPUs prefer.
    method = build(cfg, data, views_generator, total_steps=total_steps)
    if hasattr(method, "check_batch"):  # MoCo's queue and shuffle-BN groups, before `out` exists
        method.check_batch(per_forward, cfg.batch_size)
    if not getattr(method, "per_rank_batchnorm", False):
        method = distributed.sync_batchnorm(method, device)
    method = method.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, method.parameters())
    lr = cosine_schedule(cfg.lr, 0.0, cfg.epochs, steps_per_epoch, cfg.warmup_epochs)
    start_epoch = 0
    if distributed.is_distributed():
        torch.manual_seed(stream_seed(cfg.seed, distributed.rank()))
    if ckpt is not None:
        load_weights(method, ckpt, out, cfg.method)
        try:  # what only resuming needs: a checkpoint cut down to its weights lacks it
            optimizer.load_state_dict(ckpt["optimizer"])
            generator.set_state(ckpt["generator"])
            rngs = ckpt.get("torch_rngs", [ckpt["torch_rng"]])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            what = f"no {err.args[0]!r}" if isinstance(err, KeyError) else _squeeze(err)
            raise SSLKitError(f"{out / CHECKPOINT} holds no usable training state to resume "
                              f"from ({what}): it can still be evaluated (sslkit eval {out}); "
                              "to train on, start a new run in another --out") from None
        views_states = ckpt.get("views_generators")
        start_epoch = ckpt["epoch"]
        cuda_rngs = ckpt.get("cuda_rngs")
        if len(rngs) == distributed.world_size():  # the same number of processes as saved
            torch.set_rng_state(rngs[distributed.rank()])
            if device.type == "cuda" and cuda_rngs and cuda_rngs[distributed.rank()] is not None:
                torch.cuda.set_rng_state(cuda_rngs[distributed.rank()], device)
            if views_states is not None:
                views_generator.set_state(views_states[distributed.rank()])
        else:  # no saved streams for this rank: new ones, never epoch 0's again
            seed = stream_seed(cfg.seed, distributed.rank(), start_epoch)
            torch.manual_seed(seed)
            if views_generator is not generator:
                views_generator.manual_seed(seed)
            if distributed.is_main():
                print(f"note: {out} was saved by {len(rngs)} process(es) and resumes with "
                      f"{distributed.world_size()}: the run continues from epoch {start_epoch} "
                      "with the same weights and data permutation stream, but new augmentation "
                      "streams, so it is not bit-identical to an uninterrupted run")
    metrics = _read_metrics(out, start_epoch) if ckpt is not None else []
    last_epoch = cfg.epochs if stop_after_epoch is None else min(stop_after_epoch, cfg.epochs)
    trains = start_epoch < last_epoch  # else run.json and the log stay as they are: a call
    #                                    that trains nothing is no call that trained the run
    distributed.barrier()  # every rank has checked its settings before rank 0 writes to `out`
    if distributed.is_main() and trains:
        try:
            out.mkdir(parents=True, exist_ok=True)
            _record_call(out, command, device, fresh=ckpt is None,
                         seconds=time.perf_counter() - call_started)
            # atomic: a call killed while rewriting the log would lose the saved epochs' rows
            write_atomic(out / METRICS, "".join(json.dumps(r) + "\n" for r in metrics).encode())
        except OSError as err:
            raise SSLKitError(f"cannot write to {out} ({err.strerror}): choose a writable "
                              "--out") from None
    model = distributed.wrap(method, device)
    if cfg.compile:
        for part in ("encoder", "head"):
            if isinstance(getattr(method, part, None), torch.nn.Module):
                getattr(method, part).compile()

    if cfg.warmup_epochs > cfg.epochs and ckpt is None and distributed.is_main():
        print(f"note: the warm-up ({cfg.warmup_epochs} epochs) is longer than the run "
              f"({cfg.epochs}): the learning rate rises to {lr[-1]:.3g} of --lr {cfg.lr:g} "
              f"and never decays; pass a --warmup-epochs below {cfg.epochs} (e.g. "
              f"{cfg.epochs // 10}) to leave room for the cosine decay")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    if not trains and distributed.is_main():
        print(f"note: {out} is already at epoch {start_epoch} of {cfg.epochs}: nothing to train"
              + (f" (sslkit eval {out} evaluates it)" if start_epoch == cfg.epochs else ""))
    epochs = tqdm(range(start_epoch, last_epoch), desc=cfg.method, unit="epoch",
                  disable=not (progress and distributed.is_main()), initial=start_epoch,
                  total=cfg.epochs)
    method.train()
    for epoch in epochs:
        started = time.perf_counter()
        order = torch.randperm(len(images), generator=generator)
        if cfg.loader == "device":
            order = to_device(order, device)  # one copy per epoch, queued like a kernel
            batches = ([images[i] for i in step_batches(order, b, cfg)]
                       for b in range(steps_per_epoch))
        else:
            batches = _loader_epoch(cfg, method, images, order, range(steps_per_epoch), device)
        total = torch.zeros((), device=device)
        for b, micro_batches in enumerate(batches):
            step = epoch * steps_per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = float(lr[step])
            total += train_step(model, optimizer, micro_batches, autocast)
        total = distributed.all_reduce_mean(total)  # the same value on every rank
        loss = float(total) / steps_per_epoch
        if not math.isfinite(loss):  # diverged: keep the last finite epoch's checkpoint
            _diverged(out, epoch, loss)
        row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
               "loss": loss, "lr": float(lr[step]),
               "seconds": round(time.perf_counter() - started, 3)}
        state = {"config": asdict(cfg), "epoch": epoch + 1, "model": method.state_dict(),
                 "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if record is not None:
            state["data"] = record
        # the device's own generator: MAE's masks and MoCo's shuffle-BN are drawn there on a GPU
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        state["cuda_rngs"] = distributed.gather_objects(cuda_rng)  # one per rank
        if distributed.is_distributed():  # each rank's own random streams, to resume exactly
            state["torch_rngs"] = distributed.gather_objects(torch.get_rng_state())
            state["views_generators"] = distributed.gather_objects(views_generator.get_state())
        if distributed.is_main():
            if cfg.knn_every and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
                try:
                    row["knn"] = monitor_knn(method.encoder, data, cfg.knn_k)
                except BaseException:  # Ctrl-C or out of memory in the monitor: the
                    # epoch is trained, so it is saved (without its kNN) before the error goes on
                    _save_epoch(out, row, state, call_started)
                    raise
            _save_epoch(out, row, state, call_started)
        metrics.append(row)
        epochs.set_postfix({k: row[k] for k in ("loss", "knn") if k in row})
        distributed.barrier()  # no rank runs ahead of the checkpoint
    if distributed.is_main() and trains:
        _record_wall_time(out, time.perf_counter() - call_started)
    return method, metrics


def _save_epoch(out: Path, row: dict, state: dict, call_started: float) -> None:
    """Rank 0: append the epoch's metrics row, then save its checkpoint atomically (a row
    without its checkpoint is dropped on resume, see _read_metrics) and the call's wall time."""
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
    save_atomic(state, out / CHECKPOINT)
    _record_wall_time(out, time.perf_counter() - call_started)


def _diverged(out: Path, epoch: int, loss: float) -> None:
    """One-line error for a NaN or infinite epoch loss (epoch: 0-based), raised before the
    epoch is logged or saved, so OUT/last.pt keeps the last finite epoch's weights."""
    kept = (f"{out / CHECKPOINT} still holds epoch {epoch}" if epoch else
            "nothing was saved")
    raise SSLKitError(f"the loss of epoch {epoch + 1} is {loss}: training diverged and was "
                      f"stopped ({kept}); start a new run with a lower --lr or more "
                      "--warmup-epochs")


def _check_monitor(cfg: TrainConfig, data: ImageData) -> None:
    """The kNN monitor (--knn-every) needs labels of 2 classes and knn_k training images."""
    data.check_labelled()
    if cfg.knn_k > len(data.train_x):
        raise SSLKitError(f"--knn-k {cfg.knn_k} is more than the {len(data.train_x)} training "
                          f"images the monitor votes among: use --knn-k {len(data.train_x)} or "
                          "less, or --knn-every 0")


def _check_resume_settings(out: Path, saved: TrainConfig, asked: dict) -> None:
    """A resumed call may not change what the run computes: one line naming what differs."""
    changed = [(name, value, getattr(saved, name)) for name, value in asked.items()
               if name not in RESUME_MAY_CHANGE | {"method_options"}
               and value != getattr(saved, name)]
    changed += [(f"option {key}", value, saved.method_options.get(key))  # --option KEY=VALUE
                for key, value in asked.get("method_options", {}).items()
                if value != saved.method_options.get(key)]
    if not changed:
        return
    said = ", ".join(f"{name} {value!r} (saved: {old!r})" for name, value, old in changed)
    hint = ("; the learning-rate schedule spans the saved epochs, so to train longer start a "
            "new run with more --epochs" if any(c[0] == "epochs" for c in changed) else "")
    raise SSLKitError(f"{out} holds a {saved.method} run and --resume keeps its settings, but "
                      f"this call asks for {said}{hint}: drop those flags to continue it, or "
                      "give another --out for a new run")


def _check_writable(out: Path) -> None:
    """Fail before any work when `out` (or the folder it would be made in) is not writable."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise SSLKitError(f"cannot write to {existing} (read-only or not yours): choose a "
                          "writable --out")


def _record_call(out: Path, command: str | None, device: torch.device, fresh: bool,
                 seconds: float) -> None:
    """Append this call (its command, device, process count, torch version, wall time so far)
    to OUT/run.json; its wall_seconds are updated after each epoch (_record_wall_time).

    fresh: a new run, so the calls of an earlier run.json (left by a call that saved no
    epoch, since there was no checkpoint) are dropped."""
    path = out / RUN_INFO
    calls = [] if fresh or not path.is_file() else _read_calls(path)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    calls.append({"command": command, "device": name, "processes": distributed.world_size(),
                  "torch": torch.__version__, "wall_seconds": round(seconds, 1)})
    write_atomic(path, (json.dumps({"calls": calls}, indent=2) + "\n").encode())


def _read_calls(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())["calls"]
    except (ValueError, KeyError, TypeError):
        raise SSLKitError(f"{path} is damaged (not the run's list of calls): move it away (the "
                          "checkpoint is intact) and run again") from None


def _record_wall_time(out: Path, seconds: float) -> None:
    """Set this call's wall time so far (data loading, epochs, kNN, checkpoints) in run.json;
    updated after every epoch, so a call that is killed still leaves its time up to then."""
    path = out / RUN_INFO
    calls = _read_calls(path)
    calls[-1]["wall_seconds"] = round(seconds, 1)
    write_atomic(path, (json.dumps({"calls": calls}, indent=2) + "\n").encode())


def stream_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """Seed of one rank's own random streams (its views and torch's global generator) under
    torchrun, when they start at `epoch` with nothing saved to restore: at the start of a run,
    or on resuming with another number of processes than the checkpoint was saved with. Each
    (rank, epoch) gets its own seed, so a resumed run never replays the streams of epoch 0."""
    return seed + 1 + rank + 100_003 * epoch


def monitor_knn(encoder: torch.nn.Module, data: ImageData, k: int) -> float:
    """kNN accuracy (cosine, T=0.1) of the encoder's features, train -> test.

    The features stay on the encoder's device and the neighbours are voted for there: on a
    GPU, CIFAR-10's 10,000 x 50,000 similarities take milliseconds instead of seconds on the
    CPU. A compiled encoder (--compile) runs eagerly here: in eval mode and on the short last
    batches, its compiled forward would be recompiled, which costs more than the monitor."""
    with _eager():
        train_f = extract_features(encoder, data.train_x, to_cpu=False)  # (N, D)
        test_f = extract_features(encoder, data.test_x, to_cpu=False)  # (M, D)
    return round(knn_accuracy(train_f, data.train_y, test_f, data.test_y, k=k), 4)


def _eager():
    """A context in which torch.compile'd modules run their eager forward (torch >= 2.6)."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def load_trained(out: str | Path, device: str | None = "cpu", data_root: str | Path | None = None,
                 checkpoint: dict | None = None, data: ImageData | None = None):
    """(method, config, data) of the run saved in `out`, weights loaded, in eval mode.

    device: where the method goes (cpu | cuda | cuda:N | mps | auto), checked to exist.
    data_root: where the run's dataset files are, when not at the path saved with the run
    (which is relative to the folder the run was started from). checkpoint: the run's
    checkpoint, if the caller has loaded it already (``load_checkpoint(out)``).
    data: the images the run was trained on, for a run trained with train(data=...) on images
    its settings do not reload (a subset of a subset, say); checked against the checkpoint's
    record of them (a run without a record takes them as given). Without it, the run's
    dataset is reloaded; for such a run it is compared with the record, and a warning says
    when the data returned are not the images it was trained on (still a fair evaluation:
    the run's dataset and its own test split, which is what ``sslkit eval`` then uses)."""
    ckpt = checkpoint if checkpoint is not None else load_checkpoint(out)
    # "gpu", or "cuda" without one: one line, before any work (None means the CPU)
    device = resolve_device("cpu" if device is None else str(device))
    # never download again on evaluation: a missing dataset is an error naming --data-root
    cfg = replace(TrainConfig(**ckpt["config"]), download=False)
    if data_root is not None:
        cfg = replace(cfg, data_root=str(data_root))
    saved = ckpt.get("data")  # what a run trained on given images trained on (data_record)
    given = data is not None
    # evaluation never reads STL-10's unlabeled split
    data = given_data(cfg, data, "load_trained") if given else load_data(cfg, unlabeled=False)
    if saved is not None:
        check_loaded_data(out, saved, data, given)
    method = build(cfg, data)
    load_weights(method, ckpt, out, cfg.method)
    # the layout training used: the same weights in another layout give other round-off, and a
    # kNN vote on the edge could differ from the one the run logged
    return method.to(device, memory_format=torch.channels_last).eval(), cfg, data
