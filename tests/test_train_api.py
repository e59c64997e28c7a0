"""sslkit.train used as a Python library: images passed with train(data=...), the device of
load_trained and ImageData.pretrain_images, train_step's micro-batches, whole-number settings.

Each test trains at most one epoch of 64 shifted digits on the CPU.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest
import torch
from one_line import one_line_error

from sslkit.data import ImageData
from sslkit.methods import build_method
from sslkit.train import TrainConfig, load_checkpoint, load_trained, train, train_step

CFG = TrainConfig(n_train=64, n_test=100, batch_size=32, epochs=1, warmup_epochs=0,
                  device="cpu", seed=0)


@pytest.fixture(scope="module")
def full(shifted_parts) -> ImageData:
    """The whole shifted_digits set, as load_dataset("shifted_digits") gives it."""
    return ImageData(name="shifted_digits", **shifted_parts)


# ------------------------------------------------------------------ train(data=...)
def test_given_data_is_cut_as_the_config_says_and_reloads(tmp_path, full):
    """Given the whole dataset, train() trained on all 1,300 images while the checkpoint said
    n_train=64, so load_trained reloaded 64 others. Now cfg's n_train / n_test cut the given
    images with load_data's own draw: the run trains on, and reloads, the config's 64."""
    _, rows = train(CFG, tmp_path / "run", progress=False, data=full)
    assert rows[0]["step"] == 64 // 32
    _, cfg, data = load_trained(tmp_path / "run")
    expected = full.subset(64, 100)
    assert cfg.n_train == 64 and torch.equal(data.train_x, expected.train_x)
    assert torch.equal(data.test_x, expected.test_x)
    saved = load_checkpoint(tmp_path / "run")["data"]
    assert (saved["name"], saved["train"], saved["test"]) == ("shifted_digits", 64, 100)


def test_given_data_already_cut_to_the_config_is_used_as_it_is(tmp_path, full):
    """What the notebooks pass: load_profile_data's images, already cut to the profile's
    n_train / n_test, with a config made from the same profile."""
    data = full.subset(CFG.n_train, CFG.n_test)
    _, rows = train(CFG, tmp_path / "run", progress=False, data=data)
    assert rows[0]["step"] == 2
    assert torch.equal(load_trained(tmp_path / "run")[2].train_x, data.train_x)


def test_given_images_of_another_dataset_are_refused_before_any_work(tmp_path, full):
    other = ImageData("digits", full.train_x, full.train_y, full.test_x, full.test_y,
                      full.classes)
    msg = one_line_error(lambda: train(CFG, tmp_path / "run", progress=False, data=other))
    assert "'digits'" in msg and "TrainConfig(dataset='digits')" in msg
    mine = replace(other, name="mine")
    msg = one_line_error(lambda: train(CFG, tmp_path / "run", progress=False, data=mine))
    assert "ImageData(name=...)" in msg and "folder" in msg
    msg = one_line_error(lambda: train(CFG, tmp_path / "run", progress=False,
                                       data=full.train_x))
    assert "takes an ImageData" in msg and "Tensor" in msg
    assert not (tmp_path / "run").exists()


def test_a_run_on_images_its_settings_do_not_reload_says_so(tmp_path, full):
    """A subset of a subset (notebook 09 trains on data.subset(64)) is not what the saved
    settings reload: load_trained said nothing and evaluated other images."""
    picked = full.subset(256, 100).subset(64)
    train(CFG, tmp_path / "run", progress=False, data=picked)
    # still evaluated on the run's dataset (sslkit eval has no data=), but said, in one line
    with pytest.warns(UserWarning, match=r"train\(data=\.\.\.\).*other 64 training and 100 "
                                         r"test.*load_trained\(out, data=those images\)") as said:
        _, _, reloaded = load_trained(tmp_path / "run")
    assert "\n" not in str(said[0].message) and not torch.equal(reloaded.train_x, picked.train_x)
    _, _, data = load_trained(tmp_path / "run", data=picked)  # the same images: fine
    assert torch.equal(data.train_x, picked.train_x)
    msg = one_line_error(lambda: load_trained(tmp_path / "run", data=full.subset(64, 100)))
    assert "not the images it was trained" in msg


def test_sslkit_eval_of_such_a_run_evaluates_its_dataset_and_says_so_in_one_line(
        tmp_path, full, capsys):
    from sslkit.cli import main

    train(CFG, tmp_path / "run", progress=False, data=full.subset(256, 100).subset(64))
    assert main(["eval", str(tmp_path / "run"), "--labels-per-class", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslkit: warning: ") and "data=" in err[0]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["knn"] >= 0


def test_resuming_a_run_on_given_images_needs_the_same_images(tmp_path, full):
    picked = full.subset(256, 100).subset(64)
    two = replace(CFG, epochs=2)
    train(two, tmp_path / "run", stop_after_epoch=1, progress=False, data=picked)
    msg = one_line_error(lambda: train(two, tmp_path / "run", resume=True, progress=False,
                                       data=full.subset(64, 100)))
    assert "not the images it was trained on" in msg and "same data=" in msg
    msg = one_line_error(lambda: train(two, tmp_path / "run", resume=True, progress=False))
    assert "train(data=...)" in msg and "resume=True, data=those images" in msg
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1  # nothing trained on other images
    _, rows = train(two, tmp_path / "run", resume=True, progress=False, data=picked)
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_run_without_a_record_resumes_on_the_images_given_without_reloading(
        tmp_path, full, monkeypatch):
    """A run started without data= (as from the command line) has no record to check given
    images against: resuming it with data= must not reload its dataset, whose files may have
    moved (a review found it failing with the dataset's DataNotFound)."""
    import sslkit.train as train_module

    two = replace(CFG, epochs=2)
    train(two, tmp_path / "run", stop_after_epoch=1, progress=False)
    given = train_module.load_data(two)

    def moved(*args, **kwargs):
        raise AssertionError("the dataset was reloaded")

    monkeypatch.setattr(train_module, "load_data", moved)
    _, rows = train(two, tmp_path / "run", resume=True, progress=False, data=given)
    assert [r["epoch"] for r in rows] == [1, 2]
    method, _, data = load_trained(tmp_path / "run", data=given)
    assert data is not None and method is not None


def test_load_trained_takes_device_none_as_the_cpu(tmp_path, full):
    train(CFG, tmp_path / "run", progress=False, data=full)
    method, _, _ = load_trained(tmp_path / "run", device=None)
    assert next(method.parameters()).device.type == "cpu"


def test_train_documents_its_data_parameter():
    assert "data:" in train.__doc__ and "data:" in load_trained.__doc__


# ------------------------------------------------------------------ devices
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_an_unavailable_or_unknown_device_is_a_one_line_error(tmp_path, full, monkeypatch,
                                                              device):
    """load_trained(device="cuda") on a machine without a GPU gave torch's "Found no NVIDIA
    driver" traceback, device="gpu" its list of every device type; so did pretrain_images."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train(CFG, tmp_path / "run", progress=False, data=full)
    for call in (lambda: load_trained(tmp_path / "run", device=device),
                 lambda: full.pretrain_images(device)):
        msg = one_line_error(call)
        assert f"'{device}'" in msg and "--device" in msg


# ------------------------------------------------------------------ train_step
class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        CountingSGD.steps += 1
        return super().step(closure)


def test_train_step_wants_a_list_of_micro_batches():
    """A bare tensor was iterated image by image ("add a batch axis with x[None]", the wrong
    fix); an empty list gave a loss of 0.0 and still stepped the optimiser."""
    method = build_method("simclr", "convnet-small", 1, "shifted_digits", 32)
    optimizer = CountingSGD(method.parameters(), lr=0.1)
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    msg = one_line_error(lambda: train_step(method, optimizer, x))
    assert "list of micro-batches" in msg and "(4, 1, 32, 32)" in msg and "[x]" in msg
    msg = one_line_error(lambda: train_step(method, optimizer, []))
    assert "empty" in msg and "[x]" in msg
    msg = one_line_error(lambda: train_step(method, optimizer, (b for b in [x])))
    assert "generator" in msg and "[x]" in msg
    assert CountingSGD.steps == 0
    assert torch.isfinite(train_step(method, optimizer, [x])) and CountingSGD.steps == 1
    assert torch.isfinite(train_step(method, optimizer, (x[:2], x[2:])))


# ------------------------------------------------------------------ whole numbers
INT_FIELDS = [f.name for f in fields(TrainConfig) if f.type in ("int", "int | None")]


def test_every_integer_setting_is_checked():
    assert {"epochs", "batch_size", "warmup_epochs", "accumulate", "n_train", "n_test",
            "knn_every", "knn_k", "workers", "seed", "proj_dim", "image_size"} <= set(INT_FIELDS)


@pytest.mark.parametrize("name", INT_FIELDS)
def test_a_fractional_or_float_count_fails_before_anything_is_written(tmp_path, full, name):
    """epochs=1.5 or batch_size=32.0 failed in range() with a TypeError after the run folder,
    its run.json and an empty metrics.jsonl were written."""
    value = float(getattr(CFG, name) or 64)
    out = tmp_path / "run"
    msg = one_line_error(lambda: train(replace(CFG, **{name: value}), out, progress=False,
                                       data=full))
    flag = "--" + name.replace("_", "-")
    assert f"{flag} must be a whole number (got {value!r}): use {flag} {int(value)}" in msg
    assert not out.exists()
    msg = one_line_error(lambda: train(replace(CFG, **{name: True}), out, progress=False,
                                       data=full))
    assert "whole number" in msg and not out.exists()


def test_fractions_and_strings_are_refused_with_a_fix(tmp_path, full):
    out = tmp_path / "run"
    for overrides, expected in (({"epochs": 1.5}, "--epochs 2"),
                                ({"epochs": 0.2}, "--epochs 1"),
                                ({"batch_size": "32"}, "--batch-size 128"),
                                ({"n_train": "all"}, "leave --n-train out"),
                                ({"lr": "0.1"}, "--lr must be a number"),
                                ({"temperature": None}, "--temperature must be a number")):
        cfg = replace(CFG, **overrides)
        msg = one_line_error(lambda cfg=cfg: train(cfg, out, progress=False, data=full))
        assert expected in msg, (overrides, msg)
    msg = one_line_error(lambda: train(CFG, out, stop_after_epoch=1.5, progress=False,
                                       data=full))
    assert "--stop-after-epoch must be a whole number" in msg
    assert not out.exists()


def test_numpy_whole_numbers_still_train(tmp_path, full):
    import numpy as np

    cfg = replace(CFG, epochs=np.int64(1), batch_size=np.int64(32), lr=np.float32(1e-3))
    _, rows = train(cfg, tmp_path / "run", progress=False, data=full)
    assert rows[0]["step"] == 2
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["epoch"] == 1


@pytest.mark.parametrize("channels,dtype", [(4, torch.uint8), (3, torch.float32)])
def test_images_the_views_take_train_rgba_or_unit_floats(tmp_path, channels, dtype):
    """RGBA uint8 and float [0, 1] image sets trained before ImageData checked its images; a
    review caught the check refusing them, so they stay taken."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, channels, 32, 32), dtype=torch.uint8, generator=g)
    x = x if dtype == torch.uint8 else x.float() / 255
    y = torch.arange(96) % 2
    data = ImageData("folder", x, y, x[:40], y[:40], ["a", "b"])
    cfg = replace(CFG, dataset="folder", n_train=None, n_test=None, knn_every=1, knn_k=5)
    _, rows = train(cfg, tmp_path / "run", progress=False, data=data)
    assert rows[-1]["loss"] > 0 and 0 <= rows[-1]["knn"] <= 1


def test_load_trained_given_images_of_another_name_says_to_pass_the_runs(tmp_path, full):
    """load_trained's config is the checkpoint's, so the fix is other images, not another
    TrainConfig(dataset=...), which given_data suggests to train()."""
    train(CFG, tmp_path / "run", progress=False, data=full)
    other = ImageData("digits", full.train_x, full.train_y, full.test_x, full.test_y,
                      full.classes)
    msg = one_line_error(lambda: load_trained(tmp_path / "run", data=other))
    assert "pass the images the run was trained on (named 'shifted_digits')" in msg
    assert "TrainConfig" not in msg
