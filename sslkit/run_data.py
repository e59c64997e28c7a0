"""What a run was trained on, when its images were given to ``train(data=...)`` (a notebook's
data already in memory) rather than loaded from its settings.

``given_data`` checks the given images against the run's config (a TrainConfig) and cuts them
as loading the config's dataset would. The checkpoint then keeps ``data_record``: the images'
name, the size of each split and a digest of the train and test splits, by which resuming
(``check_resumed_data``) and reloading (``check_loaded_data``) tell whether they have the same
images. A run trained on its config's dataset as loaded keeps no record: its settings say it.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from sslkit.data import DATASETS, ImageData
from sslkit.errors import SSLKitError


def given_data(cfg, data, call: str = "train") -> ImageData:
    """Images passed to train(data=...) (or load_trained), checked against cfg and cut as
    load_data cuts cfg's dataset: their name must be cfg.dataset (it picks the augmentations,
    and the run is reloaded by it), and cfg.n_train / n_test take the same seeded, stratified
    draw from them (no copy when they hold no more images than that already)."""
    if not isinstance(data, ImageData):
        raise SSLKitError(f"{call}(data=...) takes an ImageData (e.g. sslkit.data.load_dataset"
                          f"(...)), got a {type(data).__name__}: pass one, or leave data out to "
                          "load the config's dataset")
    if data.name != cfg.dataset:
        if call == "load_trained":  # the config is the checkpoint's: only the data can change
            fix = f"pass the images the run was trained on (named {cfg.dataset!r})"
        elif data.name in DATASETS:
            fix = f"set TrainConfig(dataset={data.name!r}) for them"
        else:
            fix = (f"name them after the dataset they are, ImageData(name=...) with one of "
                   f"{', '.join(DATASETS)} (folder for your own images)")
        raise SSLKitError(f"{call}(data=...) got images named {data.name!r} but the config's "
                          f"dataset is {cfg.dataset!r}, which picks the augmentations and is "
                          f"saved with the run: {fix}")
    return data.subset(cfg.n_train, cfg.n_test)


def _digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """A digest of one labelled split: images and labels, with their shapes and types."""
    h = hashlib.blake2b(digest_size=16)
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def data_record(data: ImageData) -> dict:
    """What the checkpoint of a run trained on images given to train(data=...) says of them,
    so that resuming or reloading it can tell whether it has the same images: the dataset
    name, the size of each split and a digest of the train and test splits."""
    unlabeled = 0 if data.unlabeled_x is None else len(data.unlabeled_x)
    return {"name": data.name, "train": len(data.train_x), "test": len(data.test_x),
            "unlabeled": unlabeled, "train_digest": _digest(data.train_x, data.train_y),
            "test_digest": _digest(data.test_x, data.test_y)}


def _describe(record: dict, other: bool = False) -> str:
    """'N training and M test NAME images' (other: 'other N training ...', for a record of the
    same sizes as the one it is compared with)."""
    return (f"{'other ' if other else ''}{record['train']} training and {record['test']} test "
            f"{record['name']} images")


def check_resumed_data(out: Path, saved: dict, now: dict, given: bool) -> None:
    """A run trained on given images (its checkpoint holds their record, `saved`) resumes only
    on those training images: the given ones, or cfg's dataset as loaded when that is them.
    now: data_record of the images this call has (the one the checkpoint will keep, so they
    are hashed once). The test split may differ (n_test may change on resume)."""
    if (now["train_digest"], now["unlabeled"]) == (saved["train_digest"], saved["unlabeled"]):
        return
    if given:
        raise SSLKitError(f"the data given to resume {out} are not the images it was trained "
                          f"on ({_describe(saved)}): pass the same data= as the call that "
                          "started it, or train them as a new run in another out folder")
    raise SSLKitError(f"{out} was trained from Python on images given to train(data=...) "
                      f"({_describe(saved)}), which its settings do not reload: resume it from "
                      f"Python, train(cfg, {str(out)!r}, resume=True, data=those images)")


def check_loaded_data(out: str | Path, saved: dict, data: ImageData, given: bool) -> None:
    """load_trained's check of the images it returns against the run's record, `saved`: given
    images (data=...) must be those it was trained and evaluated on (a one-line error); the
    run's dataset as loaded may differ (a subset of a subset, say), which is still a fair
    evaluation on that dataset's own split, so it is said in a warning, not refused
    (``sslkit eval`` has no data=)."""
    now = data_record(data)
    if (now["train_digest"], now["test_digest"]) == (saved["train_digest"],
                                                      saved["test_digest"]):
        return
    if given:
        raise SSLKitError(f"the data given to load {out} are not the images it was trained "
                          f"and evaluated on ({_describe(saved)}): pass the same images as "
                          "the train(data=...) call that made it, or leave data out")
    returned = _describe(now, other=_describe(now) == _describe(saved))
    warnings.warn(f"{out} was trained on images given to train(data=...) ({_describe(saved)}), "
                  f"which its settings do not reload: the data returned are {returned}; for "
                  "those, call load_trained(out, data=those images) from Python", stacklevel=3)
