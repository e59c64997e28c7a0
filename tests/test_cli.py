"""The command line: train -> eval end to end on the ci sizes, flags reaching the config, and
bad input ending with exit status 2 and one line on stderr (no traceback)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from sslkit.cli import build_parser, main
from sslkit.errors import SSLKitError
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
    plt.close("all")  # figures other tests left open
    assert main(["eval", str(trained_run)]) == 0
    result = json.loads((trained_run / "eval.json").read_text())
    # 64 training digits: 6 or 7 of each, so the few-label probe sees 6 per class, and says so
    assert sorted(result) == ["epoch", "epochs", "knn", "knn_k", "linear", "linear_6_per_class",
                              "tsne"]
    assert (result["epoch"], result["epochs"]) == (1, 1)  # the epoch evaluated, of the run's
    for key in ("knn", "linear", "linear_6_per_class"):
        assert 0.0 <= result[key] <= 1.0, key
    # 60 test digits in 10 classes: accuracies are multiples of 1/60
    assert abs(result["knn"] * 60 - round(result["knn"] * 60)) < 1e-6
    assert result["knn_k"] == PROFILES["ci"].knn_k
    tsne = Path(result["tsne"])
    assert tsne == trained_run / "tsne.png"
    assert tsne.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == [], "eval leaves its saved figure open: a loop of evals leaks"
    out = capsys.readouterr().out
    assert "knn" in out and "linear" in out
    assert "epoch: 1 of 1\n" in out and "unfinished" not in out


def test_eval_of_an_unfinished_run_says_so(tmp_path, capsys):
    """It printed the scores of epoch 1 of 2 as if they were the run's."""
    out = tmp_path / "half"
    assert main(["train", "simclr", "--out", str(out), *SMALL, "--epochs", "2",
                 "--stop-after-epoch", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert ("epoch: 1 of 2 (unfinished: `sslkit train ... --resume` continues it)"
            in capsys.readouterr().out)
    result = json.loads((out / "eval.json").read_text())
    assert (result["epoch"], result["epochs"]) == (1, 2)


def test_eval_with_k_0_exits_2(trained_run, capsys):
    """--k 0 was read as "not given" and silently used the run's k."""
    err = run_error(["eval", str(trained_run), "--k", "0"], capsys)
    assert "--k must be at least 1 (got 0)" in err and "knn_k" in err


@pytest.mark.parametrize("value,expected", [
    ("7", "--labels-per-class 7 is more than the 6 training images of the smallest class, so "
          "the probe would see every label of it: use --labels-per-class 6 or less"),
    ("0", "--labels-per-class must be at least 1 (got 0): leave it out for 10, or give e.g. "
          "--labels-per-class 5")])
def test_eval_with_labels_per_class_out_of_range_exits_2(trained_run, capsys, value, expected):
    """--labels-per-class 1000 on 64 training images reported linear_1000_per_class, the probe
    on every label (so did the default 10: linear_10_per_class on 6 per class); --labels-per-class
    0 named the Python argument and told to pass None."""
    err = run_error(["eval", str(trained_run), "--labels-per-class", value], capsys)
    assert err == f"sslkit: error: {expected}"
    assert capsys.readouterr().out == ""  # refused before any feature is extracted


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
    ("--device", "cuda:7", "cuda:7"),
    # a traceback from torch's optimiser, a meaningless loss trained silently, and a numpy
    # warning on stderr before the "diverged" error:
    ("--weight-decay", "nan", "--weight-decay must be >= 0 and finite (got nan)"),
    ("--temperature", "inf", "--temperature must be positive and finite (got inf)"),
    ("--lr", "inf", "--lr must be positive and finite (got inf)")])
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


# ------------------------------------------------------------------- eval, results, Ctrl-C
def image_folder(root: Path, classes: tuple[str, ...], per_class: int = 8) -> Path:
    """ROOT/train/<class>/*.png and ROOT/test/<class>/*.png of random 16x16 images."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (16, 16, 3), generator=rng, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")
    return root


FOLDER = ["--dataset", "folder", "--image-size", "16", "--batch-size", "8", "--epochs", "1",
          "--knn-k", "8", "--profile", "ci", "--no-progress"]


def test_eval_from_another_folder_takes_data_root(tmp_path, monkeypatch, capsys):
    """The run saved --data-root imgs relative to where training started; eval from elsewhere
    could not find it and had no --data-root to say where it is."""
    image_folder(tmp_path / "imgs", ("a", "b"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "simclr", "--out", "run", "--data-root", "imgs", *FOLDER]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    err = run_error(["eval", "../run"], capsys)
    assert "imgs" in err and "`sslkit eval ../run --data-root PATH`" in err
    assert main(["eval", "../run", "--data-root", "../imgs"]) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["knn_k"] == 8


def test_one_class_folder_trains_but_eval_says_there_are_no_labels(tmp_path, capsys):
    """One class folder: the kNN monitor said 1.0 and eval refused only the linear probe.
    Training (no labels needed) works; evaluation says plainly that it has nothing to use."""
    image_folder(tmp_path / "imgs", ("all",))
    out = tmp_path / "run"
    assert main(["train", "simclr", "--out", str(out), "--data-root", str(tmp_path / "imgs"),
                 *FOLDER]) == 0
    err = run_error(["eval", str(out)], capsys)
    assert "only one class ('all')" in err and "at least 2 classes" in err
    assert "ROOT/train/<class>/" in err
    err = run_error(["train", "simclr", "--out", str(tmp_path / "monitored"), "--knn-every", "1",
                     "--data-root", str(tmp_path / "imgs"), *FOLDER], capsys)
    assert "at least 2 classes" in err


def test_eval_with_k_above_the_training_set_exits_2(trained_run, capsys):
    """--k 100000 on 64 training images printed knn_k: 100000 for a kNN over all 64."""
    err = run_error(["eval", str(trained_run), "--k", "65"], capsys)
    assert "64 training images" in err and "--k 64 or less" in err


def test_eval_takes_the_checkpoint_file_or_says_to_give_the_folder(trained_run, tmp_path,
                                                                   capsys):
    """`sslkit eval RUN/last.pt` looked for RUN/last.pt/last.pt."""
    figure = tmp_path / "t.png"
    assert main(["eval", str(trained_run / "last.pt"), "--tsne", str(figure)]) == 0
    assert figure.is_file() and json.loads((trained_run / "eval.json").read_text())["tsne"] \
        == str(figure)
    err = run_error(["eval", str(trained_run / "metrics.jsonl")], capsys)
    assert "is a file, not a run folder" in err


def test_eval_into_a_read_only_folder_shows_the_scores_then_one_line(trained_run, tmp_path,
                                                                    monkeypatch, capsys):
    """A run folder that cannot be written: kNN, probe and t-SNE were computed, then a
    traceback from writing lost them. (Root may write anywhere, so the write is made to fail.)"""
    from sslkit import cli, plots

    real_write = cli.write_atomic

    def read_only(path, data):
        if Path(path).name == "eval.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(cli, "write_atomic", read_only)
    err = run_error(["eval", str(trained_run), "--tsne", str(tmp_path / "t.png")], capsys)
    assert f"cannot write {trained_run / 'eval.json'} (Permission denied)" in err
    assert "copy" in err
    monkeypatch.undo()
    capsys.readouterr()

    def no_figure(fig, path):
        if path is None:  # drawn, not saved
            return fig
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(plots, "save", no_figure)
    code = main(["eval", str(trained_run), "--tsne", "/ro/t.png"])
    captured = capsys.readouterr()
    assert code == 2 and "knn" in captured.out and "linear" in captured.out  # shown first
    err = captured.err.strip()
    assert "\n" not in err and "cannot write /ro/t.png" in err and "--tsne PATH" in err
    saved = json.loads((trained_run / "eval.json").read_text())
    assert "knn" in saved and "tsne" not in saved  # saved before, naming no missing figure


def test_results_of_a_good_and_a_bad_folder_shows_the_good_row(trained_run, tmp_path, capsys):
    """One empty folder among the runs failed the whole table."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["results", str(trained_run), str(empty)]) == 2
    captured = capsys.readouterr()
    header, rule, row = captured.out.strip().splitlines()
    assert header.startswith("| method |") and row.startswith("| simclr |")
    (err,) = captured.err.strip().splitlines()
    assert err.startswith("sslkit: error: no checkpoint at") and str(empty) in err


@pytest.mark.parametrize("saved", [False, True])
def test_ctrl_c_says_whether_an_epoch_was_saved(trained_run, tmp_path, monkeypatch, capsys,
                                               saved):
    """Ctrl-C before the first epoch finished said "the last finished epoch is saved (continue
    with --resume)", and --resume then found nothing."""
    import sslkit.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sslkit.train, "train", interrupted)
    out = trained_run if saved else tmp_path / "new"
    assert main(["train", "simclr", "--out", str(out), *SMALL]) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("sslkit: interrupted")
    if saved:
        assert "continue with --resume" in err
    else:
        assert "nothing was saved" in err and "without --resume" in err


def test_bad_sizes_exit_2_naming_the_option(tmp_path, capsys):
    """queue_size=-64 and --image-size 8 (convnet) ended in RuntimeErrors from deep in torch."""
    err = run_error(["train", "moco", "--out", str(tmp_path / "q"), *SMALL, "--option",
                     "queue_size=-64"], capsys)
    assert "queue_size" in err and "--option queue_size=4096" in err
    assert not (tmp_path / "q").exists()  # checked with the other options, before the run
    image_folder(tmp_path / "imgs", ("a", "b"))
    err = run_error(["train", "simclr", "--out", str(tmp_path / "s"), "--data-root",
                     str(tmp_path / "imgs"), *FOLDER, "--image-size", "8"], capsys)
    assert "--image-size 8 is too small" in err and "--image-size 16 or more" in err


def test_every_flag_has_a_help_text():
    """23 of `sslkit train`'s flags had none: their meaning was only in TrainConfig's comments."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"sslkit {name} {action.option_strings[0]} has no help"


def test_experiment_out_under_a_file_exits_2_before_any_work(tmp_path, capsys):
    """--out under a file (or in a read-only folder) passed the check, the experiment ran to
    the end, and writing its files ended in a NotADirectoryError traceback: all was lost."""
    from sslkit.experiments.report import check_out

    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" / "run"
    with pytest.raises(SSLKitError) as info:
        check_out(out)
    assert str(info.value) == (f"cannot write --out {out}: {tmp_path / 'notes.txt'} is a file, "
                               "not a folder: choose another --out")
    err = run_error(["experiment", "loss_functions", "--profile", "ci", "--device", "cpu",
                     "--out", str(out)], capsys)
    assert err == f"sslkit: error: {info.value}"


@pytest.mark.parametrize("argv,expected", [
    (["train", "simclr", "--out", "r", "--temperature", "abc"],
     "argument --temperature: invalid float value: 'abc': see `sslkit train --help`"),
    (["train", "simclr"], "the following arguments are required: --out: see `sslkit train "
                          "--help`"),
    (["eval"], "the following arguments are required: out: see `sslkit eval --help`"),
    (["trian", "simclr"], "argument command: invalid choice: 'trian' (choose from 'train', "
                          "'eval', 'demo', 'experiment', 'results', 'bench'): see `sslkit --help`"),
    (["bench", "--size", "huge"], "argument --size: invalid choice: 'huge' (choose from 'tiny', "
                                  "'full'): see `sslkit bench --help`")])
def test_usage_errors_are_one_line(capsys, argv, expected):
    """A mistyped flag or value printed argparse's usage block (up to 15 lines) and
    `sslkit train: error: ...`, unlike every other error; the exit status stays 2."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"sslkit: error: {expected}\n" and captured.out == ""


@pytest.mark.parametrize("flags", [["--temperature", "0.3"], []], ids=["with-flag", "alone"])
def test_an_option_that_sets_a_shared_setting_exits_2(tmp_path, capsys, flags):
    """--option temperature=0.7 trained at 0.7 but saved the flag's (or the profile's)
    temperature in the run's config, which `sslkit results` and --resume read."""
    err = run_error(["train", "simclr", "--out", str(tmp_path / "r"), *SMALL, *flags,
                     "--option", "temperature=0.7"], capsys)
    assert err == ("sslkit: error: --option temperature=0.7 sets simclr's temperature, which "
                   "has its own flag: use --temperature 0.7 (the run saves and reports it)")
    assert not (tmp_path / "r").exists()


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every complete `sslkit ...` command in README.md and docs/*.md:
    indented command lines (with their backslash continuations) and commands in backticks,
    without placeholders (NAME, ...), comments cut off, `torchrun ... -m sslkit` included."""
    repo = Path(__file__).resolve().parent.parent
    found = []
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        text = doc.read_text()
        blocks = re.sub(r"\\\n\s*", " ", text)  # join continued lines
        lines = [m.group(1) for m in re.finditer(r"^ {4}((?:sslkit|torchrun) .*)$", blocks, re.M)]
        lines += re.findall(r"`((?:sslkit|torchrun) [^`]*)`", text)
        for line in lines:
            command = line.split(" #")[0].strip()
            if "..." in command or re.search(r"\b[A-Z]{2,}\b", command):  # a placeholder
                continue
            if command in ("sslkit train", "sslkit eval", "sslkit results"):  # a mention
                continue
            found.append((doc.name, command))
    return found


def test_the_documented_commands_parse():
    """Every command the README and docs show is one sslkit accepts: its flags, their values
    and its --option KEY=VALUE pairs (a renamed flag left the docs behind before)."""
    import shlex

    from sslkit.cli import parse_option

    commands = documented_commands()
    assert len(commands) >= 10, commands  # the finder still finds them
    for doc, command in commands:
        words = shlex.split(command)
        if words[0] == "torchrun":
            words = words[words.index("sslkit") + 1:]
        else:
            words = words[1:]
        try:
            args = build_parser().parse_args(words)
        except SystemExit:
            pytest.fail(f"{doc}: `{command}` does not parse")
        for text in getattr(args, "option", None) or []:
            parse_option(text)


@pytest.mark.parametrize("tsne,expected", [
    # matplotlib saved the figure as FOLDER.png, next to the folder, and eval.json named FOLDER
    ("{tmp}", "--tsne {tmp} is a folder: give the figure's file, e.g. --tsne {tmp}/tsne.png"),
    # saved as {tmp}/figure.png while eval.json and the printout named {tmp}/figure
    ("{tmp}/figure", "has no file extension, so the figure would be saved as {tmp}/figure.png: "
                     "give one, e.g. --tsne {tmp}/figure.png"),
    # matplotlib's ValueError traceback, after the kNN, probe and t-SNE had been computed
    ("{tmp}/figure.jpgg", "matplotlib cannot write .jpgg files: use {tmp}/figure.png"),
])
def test_eval_with_a_tsne_path_matplotlib_cannot_honour_exits_2_first(
        trained_run, tmp_path, capsys, monkeypatch, tsne, expected):
    from sslkit import evaluate

    def no_work(*args, **kwargs):
        raise AssertionError("features extracted before --tsne was checked")

    monkeypatch.setattr(evaluate, "extract_features", no_work)
    err = run_error(["eval", str(trained_run), "--tsne", tsne.format(tmp=tmp_path)], capsys)
    assert expected.format(tmp=tmp_path) in err
    assert list(tmp_path.iterdir()) == [] and not Path(f"{tmp_path}.png").exists()


@pytest.mark.parametrize("argv", [["eval", ""], ["results", ""], ["demo", "--out", ""],
                                  ["train", "simclr", "--out", "", *SMALL]])
def test_an_empty_run_folder_exits_2_instead_of_using_the_current_one(tmp_path, monkeypatch,
                                                                      capsys, argv):
    """`--out $RUN` with RUN unset: train wrote last.pt, metrics.jsonl and run.json into the
    current folder ("checkpoint and metrics in " nothing), and eval evaluated whatever run
    the current folder held."""
    monkeypatch.chdir(tmp_path)
    err = run_error(argv, capsys)
    assert "empty (an unset shell variable?)" in err
    assert ("--out runs/simclr" in err if argv[0] == "train" else
            "--out demo-output" in err if argv[0] == "demo" else "sslkit train --out" in err)
    assert list(tmp_path.iterdir()) == []
