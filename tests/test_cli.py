"""The command line: train -> eval end to end on the ci sizes, flags reaching the config, and
bad input ending with exit status 2 and one line on stderr (no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslkit.cli import build_parser, main
from sslkit.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "1", "--n-train", "64", "--n-test", "60", "--batch-size", "32",
         "--profile", "ci", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "simclr", "--out", str(out), *SMALL]) == 0
    return out


def test_train_writes_a_run_with_the_flags_and_profile_values(trained_run, capsys):
    ckpt = torch.load(trained_run / "last.pt", map_location="cpu", weights_only=False)
    cfg, ci = ckpt["config"], PROFILES["ci"]
    assert (cfg["epochs"], cfg["n_train"], cfg["n_test"], cfg["batch_size"]) == (1, 64, 60, 32)
    # unset options come from the profile
    assert (cfg["dataset"], cfg["arch"], cfg["lr"], cfg["proj_dim"], cfg["knn_k"]) == (
        ci.dataset, ci.arch, ci.lr, ci.proj_dim, ci.knn_k)
    rows = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 64 // 32


def test_eval_writes_scores_and_figure(trained_run, capsys):
    assert main(["eval", str(trained_run)]) == 0
    result = json.loads((trained_run / "eval.json").read_text())
    for key in ("knn", "linear", "linear_10_per_class"):
        assert 0.0 <= result[key] <= 1.0, key
    # 60 test digits in 10 classes: accuracies are multiples of 1/60
    assert abs(result["knn"] * 60 - round(result["knn"] * 60)) < 1e-6
    assert result["knn_k"] == PROFILES["ci"].knn_k
    tsne = Path(result["tsne"])
    assert tsne == trained_run / "tsne.png"
    assert tsne.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "knn" in out and "linear" in out


def test_eval_with_k_0_exits_2(trained_run, capsys):
    """--k 0 was read as "not given" and silently used the run's k."""
    err = run_error(["eval", str(trained_run), "--k", "0"], capsys)
    assert "k >= 1" in err


def test_train_flags_map_to_config_fields():
    args = build_parser().parse_args(
        ["train", "simclr", "--out", "x", "--temperature", "0.3", "--n-train", "10",
         "--download", "--warmup-epochs", "0", "--data-root", "/d"])
    assert args.temperature == 0.3 and args.n_train == 10 and args.download is True
    assert args.warmup_epochs == 0 and args.data_root == "/d" and args.lr is None


def run_error(argv, capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    err = captured.err.strip()
    assert err.startswith("sslkit: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("flag,value", [("method", "byol"), ("--dataset", "mnist"),
                                        ("--arch", "vgg11")])
def test_unknown_names_exit_2_with_one_line(tmp_path, capsys, flag, value):
    argv = ["train", "simclr", "--out", str(tmp_path / "r"), *SMALL]
    if flag == "method":
        argv[1] = value
    else:
        argv += [flag, value]
    err = run_error(argv, capsys)
    assert value in err


@pytest.mark.parametrize("flag,value,expected", [
    ("--batch-size", "0", "--batch-size 2 or more"), ("--epochs", "0", "--epochs 1"),
    ("--epochs", "-1", "--epochs 1"), ("--lr", "-1", "--lr must be positive"),
    ("--temperature", "0", "--temperature must be positive"), ("--knn-k", "0", "--knn-k 1"),
    ("--weight-decay", "-0.1", "--weight-decay 1e-6"), ("--adam-beta2", "1", "[0, 1)"),
    ("--warmup-epochs", "-2", "--warmup-epochs 0"), ("--n-train", "0", "--n-train 1"),
    ("--device", "gpu", "unknown device 'gpu'"), ("--device", "meta", "unknown device"),
    ("--device", "cuda:7", "cuda:7")])
def test_settings_out_of_range_exit_2_before_anything_runs(tmp_path, capsys, flag, value,
                                                          expected):
    """Before, --batch-size 0 and --epochs -1 ended in tracebacks, --lr -1 in torch's own error
    and --epochs 0 in a silent run that trained nothing."""
    err = run_error(["train", "simclr", "--out", str(tmp_path / "r"), *SMALL, flag, value],
                    capsys)
    assert expected in err
    assert not (tmp_path / "r").exists()  # checked before the run folder is made


def test_resume_without_checkpoint_exits_2(tmp_path, capsys):
    err = run_error(["train", "simclr", "--out", str(tmp_path / "none"), "--resume", *SMALL],
                    capsys)
    assert "--resume" in err and "--out" in err


def test_existing_run_exits_2(trained_run, capsys):
    err = run_error(["train", "simclr", "--out", str(trained_run), *SMALL], capsys)
    assert "--resume" in err


def test_missing_cifar_without_download_exits_2(tmp_path, capsys):
    err = run_error(["train", "simclr", "--out", str(tmp_path / "r"), "--dataset", "cifar10",
                     "--data-root", str(tmp_path / "nodata"), *SMALL], capsys)
    assert "--download" in err
    assert not (tmp_path / "nodata").exists()  # nothing fetched or created


def test_eval_without_run_exits_2(tmp_path, capsys):
    run_error(["eval", str(tmp_path / "missing")], capsys)


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    # The real process: `python -m sslkit` asked to resume a run that does not exist (found
    # before any data is loaded, so the test stays fast).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sslkit", "train", "simclr", "--out", str(tmp_path / "r"),
         "--resume", *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sslkit: error: no checkpoint")
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("method", ["triplet", "rotation", "jigsaw", "relative_patch"])
def test_every_method_trains_from_the_command_line(tmp_path, method):
    # SimCLR is covered above; each other registered method trains one epoch and leaves a
    # checkpoint and a finite loss.
    from sslkit.methods import METHODS

    assert method in METHODS
    out = tmp_path / method
    assert main(["train", method, "--out", str(out), *SMALL]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["loss"]))
    assert (out / "last.pt").is_file()


def test_mae_trains_from_the_command_line_with_a_vit(tmp_path):
    # MAE always uses a ViT encoder (--arch vit); the run loads back and its encoder gives
    # features for evaluation.
    from sslkit.evaluate import extract_features
    from sslkit.train import load_trained

    out = tmp_path / "mae"
    assert main(["train", "mae", "--out", str(out), "--arch", "vit", *SMALL]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["loss"]))
    method, cfg, data = load_trained(out)
    assert cfg.method == "mae" and method.encoder.pos_embed.requires_grad is False
    assert extract_features(method.encoder, data.test_x[:5]).shape == (5, 64)


def test_mae_with_a_cnn_exits_2(tmp_path, capsys):
    err = run_error(["train", "mae", "--out", str(tmp_path / "r"), *SMALL], capsys)
    assert "--arch vit" in err
