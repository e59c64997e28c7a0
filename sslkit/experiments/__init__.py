"""``sslkit experiment NAME``: the lecture's claims from the papers' tables, reproduced at small
scale. One module per experiment; each has a frozen dataclass of its settings per profile
(``SETTINGS``), the paper's reported numbers (``PAPER``) and ``run(profile, out, device)``,
which writes ``table.md``, ``figure.png`` and ``results.json`` to ``out`` and returns a
``Result``. It refuses, before any work, an ``out`` that already holds an earlier run's files.

    loss_functions    NT-Xent vs NT-Logistic vs margin triplet, +/- semi-hard negatives (SimCLR Table 4)
    temperature       temperature and L2 normalisation (SimCLR Table 5)
    projection_head   none / linear / MLP head and its size, h vs g(h) (SimCLR Figure 8, Table 3)
    augmentations     the matrix of augmentation pairs (SimCLR Figure 5)
    batch_size        batch size and training length (SimCLR Figure 9)
    moco_vs_simclr    MoCo vs SimCLR at a small batch; memory at equal negatives (MoCo v2 Tables 2, 3)
    rotation_pretext  pretext vs downstream accuracy over training; which block (Gidaris et al.)
    mae_mask_ratio    MAE's mask ratio vs downstream accuracy (He et al., 2021)
"""  # noqa: E501

from __future__ import annotations

import importlib
from pathlib import Path

from sslkit.errors import SSLKitError
from sslkit.experiments.report import Result

EXPERIMENTS = {
    "loss_functions": "sslkit.experiments.loss_functions",
    "temperature": "sslkit.experiments.temperature",
    "projection_head": "sslkit.experiments.projection_head",
    "augmentations": "sslkit.experiments.augmentations",
    "batch_size": "sslkit.experiments.batch_size",
    "moco_vs_simclr": "sslkit.experiments.moco_vs_simclr",
    "rotation_pretext": "sslkit.experiments.rotation_pretext",
    "mae_mask_ratio": "sslkit.experiments.mae_mask_ratio",
}


def get_experiment(name: str):
    """The module of the named experiment."""
    if name not in EXPERIMENTS:
        raise SSLKitError(f"unknown experiment {name!r}: use one of {', '.join(EXPERIMENTS)} "
                          "(or `sslkit experiment list`)")
    return importlib.import_module(EXPERIMENTS[name])


def describe() -> list[tuple[str, str]]:
    """(name, one-line title) of every experiment."""
    return [(name, get_experiment(name).TITLE) for name in EXPERIMENTS]


def run_experiment(name: str, profile: str = "laptop", out: str | Path | None = None,
                   device: str = "auto") -> Result:
    """Run one experiment; its files go to out (default: experiments/NAME-PROFILE), which must
    not hold an earlier run's files. Bad input fails before any work."""
    from sslkit.devices import resolve_device
    from sslkit.experiments.fit import check_profile

    module = get_experiment(name)
    check_profile(profile, module.SETTINGS)
    out = Path(out or Path("experiments") / f"{name}-{profile}")
    return module.run(profile, out, resolve_device(device))


__all__ = ["EXPERIMENTS", "Result", "describe", "get_experiment", "run_experiment"]
