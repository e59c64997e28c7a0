"""sslkit.train: exact resume, atomic checkpoints, the metrics log and the one-line errors.

All runs are on the CPU from a fixed seed on 128 shifted digits with the small ConvNet.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from one_line import one_line_error

from sslkit.data import ImageData
from sslkit.errors import SSLKitError
from sslkit.train import (
    CHECKPOINT,
    METRICS,
    RUN_INFO,
    TrainConfig,
    load_checkpoint,
    load_trained,
    train,
)

CFG = TrainConfig(n_train=128, n_test=64, batch_size=32, epochs=3, warmup_epochs=1,
                  device="cpu", seed=0)


@pytest.fixture(scope="module")
def data(shifted_parts) -> ImageData:
    return ImageData(name="shifted_digits", **shifted_parts).subset(CFG.n_train, CFG.n_test)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data):
    """One uninterrupted 3-epoch run: (method, metrics rows, out dir)."""
    out = tmp_path_factory.mktemp("full")
    method, rows = train(CFG, out, progress=False, data=data)
    return method, rows, out


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, data, full_run):
    method_full, rows_full, _ = full_run
    out = tmp_path / "split"
    _, rows_first = train(CFG, out, stop_after_epoch=1, progress=False, data=data)
    assert [r["epoch"] for r in rows_first] == [1]
    assert load_checkpoint(out)["epoch"] == 1
    torch.manual_seed(12345)  # the global RNG state in between must not matter
    method_resumed, rows = train(CFG, out, resume=True, progress=False, data=data)
    assert_same_state(method_resumed.state_dict(), method_full.state_dict())
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows_full]
    assert [r["lr"] for r in rows] == [r["lr"] for r in rows_full]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    logged = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [r["loss"] for r in logged] == [r["loss"] for r in rows_full]
    # the optimiser state was restored too
    ckpt_full = load_checkpoint(full_run[2])
    ckpt_split = load_checkpoint(out)
    for s_full, s_split in zip(ckpt_full["optimizer"]["state"].values(),
                               ckpt_split["optimizer"]["state"].values()):
        for key in s_full:
            assert torch.equal(s_full[key], s_split[key])


@pytest.mark.parametrize("method", ["moco", "dino"])
def test_resume_is_exact_for_methods_with_state(tmp_path, data, method):
    """MoCo's queue and pointer, DINO's centre and its schedules' position (a host-side step
    count set from the checkpoint) all continue where the run stopped."""
    cfg = replace(CFG, method=method, method_options={"queue_size": 64} if method == "moco"
                  else {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 8})
    full, _ = train(cfg, tmp_path / "full", progress=False, data=data)
    train(cfg, tmp_path / "split", stop_after_epoch=1, progress=False, data=data)
    resumed, _ = train(cfg, tmp_path / "split", resume=True, progress=False, data=data)
    assert_same_state(resumed.state_dict(), full.state_dict())


def test_resume_in_two_stops(tmp_path, data, full_run):
    out = tmp_path / "thirds"
    train(CFG, out, stop_after_epoch=1, progress=False, data=data)
    train(CFG, out, resume=True, stop_after_epoch=2, progress=False, data=data)
    method, rows = train(CFG, out, resume=True, progress=False, data=data)
    assert_same_state(method.state_dict(), full_run[0].state_dict())
    assert len(rows) == 3


def test_resume_after_a_kill_mid_write_of_the_metrics(tmp_path, data, full_run):
    """A call killed while appending a metrics row leaves a cut-off line: resume drops it (its
    epoch's checkpoint was never saved) and the log ends as an uninterrupted run's."""
    out = tmp_path / "killed"
    train(CFG, out, stop_after_epoch=1, progress=False, data=data)
    with open(out / METRICS, "a") as f:
        f.write('{"epoch": 2, "st')
    method, rows = train(CFG, out, resume=True, progress=False, data=data)
    assert_same_state(method.state_dict(), full_run[0].state_dict())
    logged = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    (out / METRICS).write_text('{"epoch": 1,\n' + (out / METRICS).read_text())  # damaged inside
    with pytest.raises(SSLKitError, match="line 1 is not a metrics row"):
        train(CFG, out, resume=True, progress=False, data=data)
    # valid JSON that is not a row (a hand-edited log) was a KeyError traceback
    for damage in ('{"loss": 1.0}', '[1, 2]', '{"epoch": "1"}'):
        (out / METRICS).write_text(damage + "\n" + (out / METRICS).read_text().split("\n", 1)[1])
        msg = one_line_error(lambda: train(CFG, out, resume=True, progress=False, data=data))
        assert "line 1 is not a metrics row" in msg


def test_same_seed_same_run_other_seed_other_run(tmp_path, data, full_run):
    method_b, rows_b = train(CFG, tmp_path / "again", progress=False, data=data)
    assert_same_state(method_b.state_dict(), full_run[0].state_dict())
    _, rows_c = train(replace(CFG, seed=1, epochs=1), tmp_path / "other", progress=False,
                      data=data)
    assert rows_c[0]["loss"] != rows_b[0]["loss"]


def test_metrics_rows_and_schedule(full_run):
    _, rows, out = full_run
    logged = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert logged == rows
    steps_per_epoch = CFG.n_train // CFG.batch_size  # 4
    for epoch, row in enumerate(logged, start=1):
        assert {"epoch", "step", "loss", "lr", "seconds"} <= row.keys()
        assert row["epoch"] == epoch and row["step"] == epoch * steps_per_epoch
        assert isinstance(row["loss"], float) and row["loss"] > 0
        assert row["seconds"] >= 0
    # lr of each row = the schedule at the epoch's last step: ramp 0, .25, .5, .75 x base in
    # epoch 1 (warm-up of one epoch), then the cosine from base down to 0 at the last step.
    assert logged[0]["lr"] == pytest.approx(0.75 * CFG.lr)
    assert logged[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # NT-Xent over 2N = 64 unit vectors at temperature T lies strictly between
    # log(1 + (2N - 2) e^(-2/T)) and log(1 + (2N - 2) e^(2/T)) (cosines in [-1, 1]).
    t = CFG.temperature
    low, high = math.log(1 + 62 * math.exp(-2 / t)), math.log(1 + 62 * math.exp(2 / t))
    assert all(low < row["loss"] < high for row in logged)


def test_loss_decreases(full_run):
    rows = full_run[1]
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_checkpoint_contents_and_no_tmp_left(full_run):
    out = full_run[2]
    assert sorted(p.name for p in out.iterdir()) == sorted([CHECKPOINT, METRICS, RUN_INFO])
    calls = json.loads((out / RUN_INFO).read_text())["calls"]
    assert [(c["device"], c["processes"]) for c in calls] == [("CPU", 1)]
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 3
    assert TrainConfig(**ckpt["config"]) == CFG
    assert {"model", "optimizer", "generator", "torch_rng"} <= ckpt.keys()


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, data, monkeypatch):
    out = tmp_path / "crash"
    train(CFG, out, stop_after_epoch=1, progress=False, data=data)
    before = (out / CHECKPOINT).read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(1000)}, f)  # some bytes reach the file, then:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(CFG, out, resume=True, progress=False, data=data)
    monkeypatch.undo()
    assert (out / CHECKPOINT).read_bytes() == before
    assert load_checkpoint(out)["epoch"] == 1
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    # and the run can still be continued
    _, rows = train(CFG, out, resume=True, stop_after_epoch=2, progress=False, data=data)
    assert [r["epoch"] for r in rows] == [1, 2]


def test_existing_run_without_resume_is_an_error(full_run, data):
    out = full_run[2]
    before = (out / CHECKPOINT).read_bytes()
    msg = one_line_error(lambda: train(CFG, out, progress=False, data=data))
    assert "--resume" in msg and "--out" in msg
    assert (out / CHECKPOINT).read_bytes() == before


def test_resume_without_checkpoint_is_an_error(tmp_path, data):
    msg = one_line_error(lambda: train(CFG, tmp_path / "nothing", resume=True, progress=False,
                                       data=data))
    assert "--resume" in msg and "--out" in msg


@pytest.mark.parametrize("batch_size,hint", [(129, "--batch-size 128"), (1, "--batch-size 2")])
def test_bad_batch_sizes_are_errors(tmp_path, data, batch_size, hint):
    cfg = replace(CFG, batch_size=batch_size)
    msg = one_line_error(lambda: train(cfg, tmp_path / "bs", progress=False, data=data))
    assert hint in msg


def test_load_trained_restores_the_weights(full_run, monkeypatch, data):
    method, _, out = full_run
    monkeypatch.setattr("sslkit.train.load_data", lambda cfg, unlabeled=True: data)
    loaded, cfg, _ = load_trained(out)
    assert cfg == CFG and not loaded.training
    assert_same_state(loaded.state_dict(), method.state_dict())


def test_cudnn_picks_its_fastest_convolutions_on_a_gpu_only(monkeypatch):
    from sslkit.train import fast_cuda_settings

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    fast_cuda_settings(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False  # the CPU's settings are left alone
    fast_cuda_settings(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True


# ---------------------------------------------------------------- resuming with other settings
def test_resume_with_other_settings_is_an_error_naming_them(tmp_path, data):
    """--resume continues the saved run: a call asking for other epochs, another method or
    another option is refused in one line naming each, and the run is left as it was."""
    out = tmp_path / "run"
    train(CFG, out, stop_after_epoch=1, progress=False, data=data)
    before = (out / CHECKPOINT).read_bytes()
    msg = one_line_error(lambda: train(replace(CFG, epochs=6, lr=0.1), out, resume=True,
                                       progress=False, data=data))
    assert "epochs 6 (saved: 3)" in msg and "lr 0.1 (saved: 0.002)" in msg
    assert "schedule" in msg and "--out" in msg
    msg = one_line_error(lambda: train(replace(CFG, method="moco"), out, resume=True,
                                       progress=False, data=data, asked={"epochs": 3}))
    assert "holds a simclr run" in msg and "method 'moco' (saved: 'simclr')" in msg
    msg = one_line_error(lambda: train(CFG, out, resume=True, progress=False, data=data,
                                       asked={"method_options": {"temperature": 0.5}}))
    assert "option temperature 0.5 (saved: None)" in msg
    assert (out / CHECKPOINT).read_bytes() == before


def test_resume_takes_where_and_how_from_the_call(tmp_path, data, full_run):
    """Flags that do not change what the run computes (RESUME_MAY_CHANGE) are taken from the
    resuming call, and the run still ends with an uninterrupted run's weights."""
    out = tmp_path / "run"
    train(CFG, out, stop_after_epoch=1, progress=False, data=data)
    method, rows = train(replace(CFG, knn_every=1, data_root="elsewhere"), out, resume=True,
                         progress=False, data=data)
    assert_same_state(method.state_dict(), full_run[0].state_dict())
    assert "knn" in rows[-1] and "knn" not in rows[0]
    assert load_checkpoint(out)["config"]["data_root"] == "elsewhere"
    # the command line passes only its flags: the rest is the saved run's
    _, rows = train(replace(CFG, epochs=99, method_options={"hidden_dim": 7}), out, resume=True,
                    progress=False, data=data, asked={})
    assert len(rows) == 3


def test_resuming_a_finished_run_says_there_is_nothing_to_train(full_run, data, capsys):
    """... and leaves the run's files alone: it used to append itself to run.json as a call
    that trained the run (`sslkit results` listed its command) and to overwrite the last
    training call's wall time with its own second."""
    out = full_run[2]
    files = {name: (out / name).read_bytes() for name in (RUN_INFO, METRICS, CHECKPOINT)}
    _, rows = train(CFG, out, resume=True, progress=False, data=data, command="again")
    assert len(rows) == 3
    assert "already at epoch 3 of 3: nothing to train" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in files} == files


def test_cli_resume_with_changed_flags_is_refused(tmp_path, capsys):
    from sslkit.cli import main

    out = tmp_path / "cli"
    small = ["--n-train", "64", "--n-test", "32", "--batch-size", "32", "--profile", "ci",
             "--no-progress", "--epochs", "2"]
    assert main(["train", "simclr", "--out", str(out), *small, "--stop-after-epoch", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "moco", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "method 'moco' (saved: 'simclr')" in err and "Traceback" not in err
    assert main(["train", "simclr", "--out", str(out), "--resume", "--epochs", "4"]) == 2
    assert "epochs 4 (saved: 2)" in capsys.readouterr().err
    calls = json.loads((out / RUN_INFO).read_text())["calls"]
    assert len(calls) == 1  # refused calls are not recorded as having trained the run
    # the bare command continues it: the profile's defaults are not "asked for"
    assert main(["train", "simclr", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(out)["epoch"] == 2


# ------------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", ["cut off", "empty", "garbage", "foreign", "other version"])
def test_a_damaged_or_foreign_checkpoint_is_a_one_line_error(tmp_path, full_run, damage):
    out = tmp_path / "bad"
    out.mkdir()
    good = (full_run[2] / CHECKPOINT).read_bytes()
    if damage == "cut off":
        (out / CHECKPOINT).write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        (out / CHECKPOINT).write_bytes(b"")
    elif damage == "garbage":
        (out / CHECKPOINT).write_bytes(b"not a checkpoint at all" * 10)
    elif damage == "foreign":
        torch.save({"state_dict": {}}, out / CHECKPOINT)
    else:
        ckpt = torch.load(full_run[2] / CHECKPOINT, weights_only=False)
        ckpt["config"]["no_such_setting"] = 1
        torch.save(ckpt, out / CHECKPOINT)
    msg = one_line_error(lambda: load_checkpoint(out))
    assert str(out / CHECKPOINT) in msg
    msg = msg.replace(str(out / CHECKPOINT), "FILE")  # the test's folder name says "damaged"
    assert ("damaged" in msg) == (damage in ("cut off", "empty", "garbage"))
    assert ("not a checkpoint of `sslkit train`" in msg) == (damage in ("foreign",
                                                                         "other version"))
    one_line_error(lambda: train(CFG, out, resume=True, progress=False))
    one_line_error(lambda: load_trained(out))


# ----------------------------------------------------- nothing written by a call that fails
@pytest.mark.parametrize("change,hint", [
    ({"optimizer": "adma"}, "unknown optimizer 'adma'"),
    ({"proj_dim": -8}, "--proj-dim must be at least 1"),
    ({"accumulate": 32}, "use a smaller --accumulate (at most 16)"),
    ({"dataset": "folder", "data_root": "no/such/folder"}, "no/such/folder"),
    # MoCo's queue and shuffle-BN groups were checked only in the first step, after --out
    ({"method": "moco", "method_options": {"queue_size": 100}}, "--option queue_size=96"),
    ({"method": "moco", "method_options": {"queue_size": 96, "symmetric": True}},
     "keys per step (64)"),
    ({"method": "moco", "method_options": {"bn_splits": 32}}, "--option bn_splits=16"),
    ({"method": "moco", "method_options": {"bn_splits": 5}}, "--option bn_splits=16"),
    ({"method": "moco", "accumulate": 2, "method_options": {"bn_splits": 16}},
     "the 16 images of each forward pass"),
])
def test_a_call_that_fails_writes_nothing(tmp_path, change, hint):
    out = tmp_path / "never"
    cfg = replace(CFG, **change)
    msg = one_line_error(lambda: train(cfg, out, progress=False))
    assert hint in msg
    assert not out.exists()


def test_image_size_for_a_dataset_it_does_not_resize_is_an_error(tmp_path, data):
    """--image-size sets the side of --dataset folder images only; with the digits it was
    silently ignored, and the run trained on 32 x 32 images."""
    msg = one_line_error(lambda: train(CFG, tmp_path / "r", progress=False, data=data,
                                       asked={"image_size": 16}))
    assert "--image-size 16 does not resize --dataset shifted_digits" in msg
    assert "32x32" in msg and not (tmp_path / "r").exists()


def test_stop_after_epoch_below_1_is_an_error(tmp_path, data):
    msg = one_line_error(lambda: train(CFG, tmp_path / "r", stop_after_epoch=0, progress=False,
                                       data=data))
    assert "--stop-after-epoch must be at least 1" in msg
    assert not (tmp_path / "r").exists()


def test_out_that_is_a_file_or_not_writable_is_an_error(tmp_path, data, monkeypatch):
    (tmp_path / "file").write_text("x")
    msg = one_line_error(lambda: train(CFG, tmp_path / "file", progress=False, data=data))
    assert "is a file" in msg
    monkeypatch.setattr("sslkit.train.os.access", lambda path, mode: False)
    msg = one_line_error(lambda: train(CFG, tmp_path / "ro" / "run", progress=False, data=data))
    assert f"cannot write to {tmp_path}" in msg and "writable --out" in msg


def test_a_fresh_run_drops_the_calls_of_one_that_saved_nothing(tmp_path, data):
    """A call killed before its first epoch leaves run.json but no checkpoint; the next fresh
    call into that folder is the run's only call."""
    out = tmp_path / "again"
    out.mkdir()
    (out / RUN_INFO).write_text(json.dumps({"calls": [{"command": "killed"}]}))
    train(CFG, out, stop_after_epoch=1, progress=False, data=data, command="sslkit train x")
    calls = json.loads((out / RUN_INFO).read_text())["calls"]
    assert [c["command"] for c in calls] == ["sslkit train x"]
    assert calls[0]["wall_seconds"] > 0
    (out / RUN_INFO).write_text("{ damaged")
    msg = one_line_error(lambda: train(CFG, out, resume=True, progress=False, data=data))
    assert f"{out / RUN_INFO} is damaged" in msg and "checkpoint is intact" in msg


def test_the_knn_monitor_is_checked_before_the_first_epoch(tmp_path, data):
    """--knn-every with more neighbours than training images, or with one class of labels,
    would fail after the first epoch trained and before it was saved: refused up front."""
    few = replace(CFG, knn_every=1, knn_k=200)
    msg = one_line_error(lambda: train(few, tmp_path / "k", progress=False, data=data))
    assert "--knn-k 200 is more than the 128 training images" in msg
    one_class = ImageData(name="folder", train_x=data.train_x, train_y=data.train_y * 0,
                          test_x=data.test_x, test_y=data.test_y * 0, classes=["only"])
    folder = replace(CFG, dataset="folder")  # the images' name, which train(data=) checks
    msg = one_line_error(lambda: train(replace(folder, knn_every=1), tmp_path / "c",
                                       progress=False, data=one_class))
    assert "only one class" in msg
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()
    train(replace(folder, knn_every=0, epochs=1), tmp_path / "c", progress=False, data=one_class)


def test_ctrl_c_in_the_knn_monitor_keeps_the_trained_epoch(tmp_path, data, full_run,
                                                         monkeypatch):
    """The monitor runs after an epoch has trained; Ctrl-C (or running out of memory) in it
    lost that epoch, which was saved only after the monitor. Now the epoch is saved without
    its kNN, and resuming from it ends with the uninterrupted run's weights."""
    import sslkit.train as train_module

    real_monitor = train_module.monitor_knn
    calls = []

    def interrupted_at_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_monitor(*args, **kwargs)

    monkeypatch.setattr(train_module, "monitor_knn", interrupted_at_epoch_2)
    out = tmp_path / "ctrl-c"
    monitored = replace(CFG, knn_every=1, knn_k=5)
    with pytest.raises(KeyboardInterrupt):
        train(monitored, out, progress=False, data=data)
    assert load_checkpoint(out)["epoch"] == 2
    rows = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "knn" in rows[0] and "knn" not in rows[1]
    method, rows = train(monitored, out, resume=True, progress=False, data=data)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "knn" in rows[2]
    assert_same_state(method.state_dict(), full_run[0].state_dict())


def test_a_warm_up_longer_than_the_run_is_pointed_out(tmp_path, data, capsys):
    """A recipe's 10 warm-up epochs on a 5-epoch run (`--profile gpu --epochs 5`) leave the
    learning rate rising the whole run, never at --lr and never decaying: said, with the fix."""
    train(replace(CFG, epochs=2, warmup_epochs=4), tmp_path / "w", progress=False, data=data)
    out = capsys.readouterr().out
    assert "the warm-up (4 epochs) is longer than the run (2)" in out
    # the ramp is cut to the run's 8 steps (cosine_schedule): the last is 7/8 of the peak
    assert f"rises to {7 / 8 * CFG.lr:.3g} of --lr {CFG.lr:g}" in out
    assert "pass a --warmup-epochs below 2" in out
    train(replace(CFG, epochs=2, warmup_epochs=2), tmp_path / "w2", progress=False, data=data)
    assert "warm-up" not in capsys.readouterr().out


def test_an_unreadable_checkpoint_is_not_called_damaged(full_run, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    msg = one_line_error(lambda: load_checkpoint(full_run[2]))
    assert "cannot be opened (Permission denied)" in msg and "damaged" not in msg.replace(
        str(full_run[2]), "")


def test_load_trained_never_downloads(tmp_path, data, monkeypatch):
    out = tmp_path / "dl"
    train(replace(CFG, epochs=1, download=True), out, progress=False, data=data)
    asked = []
    monkeypatch.setattr("sslkit.train.load_data",
                        lambda cfg, unlabeled=True: asked.append(cfg) or data)
    load_trained(out)
    assert asked[0].download is False


def test_a_loaded_run_gives_the_trained_encoders_features_bit_for_bit(full_run, data):
    """`sslkit eval` and the demo score a run loaded from its checkpoint; its features must be
    those of the encoder as trained, to the last bit. Loaded in the default layout, the same
    weights gave other round-off (1.8e-7) than training's channels_last, and the demo's kNN
    score moved by one test digit between its first run and a rerun."""
    from sslkit.evaluate import extract_features

    method, _, out = full_run
    loaded, _, _ = load_trained(out)
    assert_same_state(method.state_dict(), loaded.state_dict())
    for trained_p, loaded_p in zip(method.parameters(), loaded.parameters()):
        assert trained_p.stride() == loaded_p.stride()
    assert torch.equal(extract_features(method.encoder, data.test_x),
                       extract_features(loaded.encoder, data.test_x))


# ------------------------------------------------------------------- divergence and crashes
def test_a_nan_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path, data,
                                                                      monkeypatch):
    """A diverged epoch (NaN loss) is a one-line error naming it; it is neither logged nor
    saved, so last.pt and metrics.jsonl stay those of the last finite epoch. It used to train
    on, logging NaN losses and checkpointing NaN weights over the good ones."""
    import sslkit.train as train_module

    out = tmp_path / "nan"
    train(CFG, out, stop_after_epoch=1, progress=False, data=data)
    before = (out / CHECKPOINT).read_bytes(), (out / METRICS).read_text()
    real_step = train_module.train_step

    def nan_step(*args, **kwargs):  # the real step (weights move), its loss reported as NaN
        return real_step(*args, **kwargs) * float("nan")

    monkeypatch.setattr(train_module, "train_step", nan_step)
    msg = one_line_error(lambda: train(CFG, out, resume=True, progress=False, data=data))
    assert "the loss of epoch 2 is nan" in msg and f"{out / CHECKPOINT} still holds epoch 1" in msg
    assert "--lr" in msg
    assert ((out / CHECKPOINT).read_bytes(), (out / METRICS).read_text()) == before
    msg = one_line_error(lambda: train(CFG, tmp_path / "nan0", progress=False, data=data))
    assert "the loss of epoch 1 is nan" in msg and "nothing was saved" in msg
    assert not (tmp_path / "nan0" / CHECKPOINT).exists()


def test_a_failed_rewrite_of_the_metrics_on_resume_keeps_the_saved_rows(tmp_path, data,
                                                                        monkeypatch):
    """--resume rewrites metrics.jsonl up to the checkpoint's epoch. A write that stops half-way
    (disk full, killed) must leave the old rows whole: it used to truncate the file first, so
    the saved epochs' rows were lost and `sslkit results` could no longer read the run."""
    import resource

    out = tmp_path / "full-disk"
    train(CFG, out, stop_after_epoch=2, progress=False, data=data)
    before = (out / METRICS).read_bytes()
    monkeypatch.setattr("sslkit.train._record_call", lambda *args, **kwargs: None)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, hard))  # writes stop half-way
    try:
        msg = one_line_error(lambda: train(CFG, out, resume=True, progress=False, data=data))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert f"cannot write to {out}" in msg
    assert (out / METRICS).read_bytes() == before
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resume_on_a_gpu_continues_the_devices_random_stream(tmp_path, data):
    """On a GPU, MAE's masks (and MoCo's shuffle-BN) draw from the device's own generator. The
    checkpoint saved only the CPU's, so a resumed run re-seeded the GPU's and replayed epoch
    1's masks. Resumed, the device's stream must end where an uninterrupted run's ends."""
    cfg = replace(CFG, method="mae", arch="vit", epochs=2, device="cuda",
                  method_options={"dim": 32, "depth": 1, "heads": 2, "decoder_dim": 16,
                                  "decoder_depth": 1, "decoder_heads": 2})
    train(cfg, tmp_path / "full", progress=False, data=data)
    full = torch.cuda.get_rng_state()
    train(cfg, tmp_path / "split", stop_after_epoch=1, progress=False, data=data)
    torch.cuda.manual_seed(12345)  # the device's state in between must not matter
    train(cfg, tmp_path / "split", resume=True, progress=False, data=data)
    assert torch.equal(torch.cuda.get_rng_state(), full)
    assert torch.equal(load_checkpoint(tmp_path / "split")["cuda_rngs"][0], full)


# ------------------------------------------- checkpoints that load but do not fit, empty --out
@pytest.mark.parametrize("cut", [8_000, 20_000])
def test_a_checkpoint_cut_off_near_its_start_is_called_damaged(tmp_path, full_run, cut):
    """torch.load raises a bare OSError (Invalid argument) on a checkpoint cut off within its
    first records: it was reported as a file that "cannot be opened ... check that it is
    readable by you", sending the user after permissions instead of a fresh copy."""
    out = tmp_path / "cut"
    out.mkdir()
    (out / CHECKPOINT).write_bytes((full_run[2] / CHECKPOINT).read_bytes()[:cut])
    msg = one_line_error(lambda: load_checkpoint(out)).replace(str(out / CHECKPOINT), "FILE")
    assert "FILE cannot be read" in msg and "the file is damaged" in msg
    assert "readable by you" not in msg and "copy the run again" in msg


def _edited_checkpoint(full_run, out, edit):
    out.mkdir()
    ckpt = torch.load(full_run[2] / CHECKPOINT, weights_only=False)
    edit(ckpt)
    torch.save(ckpt, out / CHECKPOINT)
    return TrainConfig(**ckpt["config"])


@pytest.mark.parametrize("edit,detail", [
    (lambda c: c["config"].update(arch="convnet"), "in the file but"),
    (lambda c: c["model"].pop(next(iter(c["model"]))), "(no encoder."),
    (lambda c: c["model"].update(extra=torch.zeros(1)), "(an unexpected extra)"),
    (lambda c: c.update(model=[1, 2]), "its weights are a list"),
])
def test_weights_that_do_not_fit_the_saved_settings_are_a_one_line_error(
        tmp_path, full_run, data, monkeypatch, edit, detail):
    """A checkpoint from another sslkit version (other layers or sizes) or with edited settings
    ended `sslkit eval` and `--resume` in torch's load_state_dict traceback (70 lines)."""
    out = tmp_path / "edited"
    cfg = _edited_checkpoint(full_run, out, edit)
    before = (out / CHECKPOINT).read_bytes()
    monkeypatch.setattr("sslkit.train.load_data", lambda cfg, unlabeled=True: data)
    for call in (lambda: load_trained(out),
                 lambda: train(cfg, out, resume=True, progress=False, data=data)):
        msg = one_line_error(call)
        assert f"{out / CHECKPOINT} holds weights that do not fit the simclr model" in msg
        assert detail in msg and "another version of sslkit" in msg
        assert "train the run anew" in msg
    assert (out / CHECKPOINT).read_bytes() == before
    assert not (out / METRICS).exists() and not (out / RUN_INFO).exists()


@pytest.mark.parametrize("edit,detail", [
    (lambda c: c.pop("optimizer"), "(no 'optimizer')"),
    (lambda c: c["optimizer"]["param_groups"][0].update(params=[0]), "parameter group"),
    (lambda c: c.update(generator=torch.zeros(3)), "RNG state"),
])
def test_a_checkpoint_without_its_training_state_cannot_resume(tmp_path, full_run, data,
                                                               edit, detail):
    """A checkpoint cut down to its weights (or whose optimiser state does not fit) ended
    --resume in a KeyError, ValueError or TypeError traceback; it can still be evaluated."""
    out = tmp_path / "slim"
    cfg = _edited_checkpoint(full_run, out, lambda c: (c["config"].update(epochs=4), edit(c)))
    msg = one_line_error(lambda: train(cfg, out, resume=True, progress=False, data=data))
    assert f"{out / CHECKPOINT} holds no usable training state to resume from" in msg
    assert detail in msg and f"sslkit eval {out}" in msg and "another --out" in msg
    assert not (out / METRICS).exists() and not (out / RUN_INFO).exists()


def test_an_empty_out_is_an_error_not_the_current_folder(tmp_path, data, monkeypatch):
    """`--out $RUN` with RUN unset gave --out "", i.e. Path(""), the current folder: the run's
    files landed there and it printed "checkpoint and metrics in " (nothing)."""
    monkeypatch.chdir(tmp_path)
    msg = one_line_error(lambda: train(CFG, "", progress=False, data=data))
    assert "--out is empty" in msg and "--out runs/simclr" in msg
    assert list(tmp_path.iterdir()) == []
