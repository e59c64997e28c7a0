"""The command line: sslkit train | eval | demo | experiment | bench | results.

    sslkit train simclr --dataset cifar10 --download --arch resnet18 --epochs 100 --out runs/simclr
    sslkit train simclr --out runs/simclr --resume      # continue an interrupted run
    sslkit eval runs/simclr                             # kNN, linear probe, t-SNE figure
    sslkit eval runs/simclr --data-root ~/data          # the run's dataset moved, or a relative
                                                        # --data-root seen from another folder
    sslkit demo                                         # the offline CPU demo (make demo)
    sslkit experiment list                              # the papers' claims, at small scale
    sslkit experiment loss_functions --profile laptop   # table.md, figure.png, results.json
    sslkit bench --device cuda                          # SimCLR images/s: sslkit, lightly, ceiling
    sslkit results runs/simclr runs/moco                # Markdown table: kNN, time, command
    torchrun --nproc-per-node 4 -m sslkit train simclr ...   # several GPUs (sslkit.distributed)

Unset options take the active profile's values (SSLKIT_PROFILE: ci, laptop or gpu). Bad input
ends with one line on stderr that says what is wrong and how to fix it, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from sslkit.atomic import write_atomic
from sslkit.errors import SSLKitError


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors in the one-line form of every other error (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"sslkit: error: {message}: see `{self.prog} --help`\n")


def _train_parser(sub) -> None:
    from sslkit.data import DATASETS
    from sslkit.methods import METHODS
    from sslkit.models import ARCHS
    from sslkit.train import TrainConfig

    p = sub.add_parser("train", help="self-supervised pre-training of one method",
                       description="Unset options take the profile's values (sslkit.profiles) "
                                   "and, in the gpu profile, the method's recipe "
                                   "(sslkit.recipes).")
    p.add_argument("method", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--out", required=True, help="run folder: checkpoint, metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--stop-after-epoch", type=int, help="end this call after that epoch")
    p.add_argument("--profile", help="ci | laptop | gpu (default: SSLKIT_PROFILE or automatic)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    helps = {
        "dataset": f"one of {', '.join(DATASETS)}",
        "data_root": "where the dataset's files are, or are downloaded to (default: data)",
        "download": "fetch a missing torchvision dataset (CIFAR-10/100, STL-10) into --data-root",
        "image_size": "side of the images of --dataset folder (the other datasets keep theirs)",
        "n_train": "train on N of the training images, a seeded draw that keeps each class's "
                   "share (and on N of STL-10's unlabeled ones, drawn at random)",
        "n_test": "evaluate on N of the test images, a seeded draw that keeps each class's share",
        "arch": f"one of {', '.join(ARCHS)}",
        "head": "projection head: mlp, linear or none (simclr, moco, triplet)",
        "proj_dim": "projection head output size (simclr, moco, triplet)",
        "temperature": "temperature of the contrastive loss (simclr, moco)",
        "epochs": "epochs of the whole run; the learning-rate schedule spans them",
        "batch_size": "images per optimiser step, over all processes and micro-batches",
        "optimizer": "adam, adamw or sgd (momentum 0.9)",
        "lr": "peak learning rate, reached after the warm-up, then cosine decay to 0",
        "weight_decay": "weight decay of the optimiser",
        "warmup_epochs": "epochs of linear learning-rate warm-up",
        "seed": "seed of the weights, the data order and the augmentations",
        "device": "auto, cpu, cuda, cuda:N or mps (auto: cuda when there is one)",
        "knn_every": "kNN accuracy on the test set every N epochs and at the last, into "
                     "metrics.jsonl (0: never)",
        "knn_k": "neighbours that vote in that kNN monitor",
        "accumulate": "micro-batches per optimiser step: less memory, but a contrastive loss "
                      "finds its negatives within each micro-batch",
        "loader": "device: the dataset on the device, views made there in batches; dataloader: "
                  "views made per image by torchvision in --workers processes",
        "workers": "DataLoader worker processes (--loader dataloader)",
        "compile": "torch.compile the encoder and the head",
        "adam_beta2": "Adam(W)'s second-moment decay (MAE: 0.95)",
    }
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the method's constructor, e.g. --option queue_size=16384 "
                        "(repeatable; see sslkit.recipes for the full-size ones)")
    for f in fields(TrainConfig):
        if f.name in ("method", "method_options"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=None, help=helps.get(f.name))
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(f.type, str)
            p.add_argument(flag, type=kind, default=None, help=helps.get(f.name))


def parse_option(text: str) -> tuple[str, int | float | bool | str]:
    """"KEY=VALUE" -> (key, value): an int, a float, true/false, or else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SSLKitError(f"--option {text!r} is not KEY=VALUE: write e.g. --option "
                          "queue_size=16384")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def command_line(argv: list[str]) -> str:
    """The command as typed: `sslkit ARGS`, or `torchrun --nproc-per-node N -m sslkit ARGS`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_node = os.environ.get("LOCAL_WORLD_SIZE", str(world))
    launcher = f"torchrun --nproc-per-node {per_node} -m sslkit" if world > 1 else "sslkit"
    return f"{launcher} {shlex.join(argv)}"


def cmd_train(args) -> int:
    from sslkit.profiles import get_profile
    from sslkit.train import TrainConfig, train

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in ("method", "method_options")
                 and getattr(args, f.name) is not None}
    if args.option:  # none given: the recipe's (or, on --resume, the saved run's) options
        overrides["method_options"] = dict(parse_option(text) for text in args.option)
    cfg = TrainConfig.from_profile(get_profile(args.profile), method=args.method, **overrides)
    from sslkit import distributed

    try:
        _, rows = train(cfg, args.out, resume=args.resume,
                        stop_after_epoch=args.stop_after_epoch, progress=not args.no_progress,
                        command=command_line(args.argv), asked=overrides)
        main_process = distributed.is_main()
    finally:
        distributed.cleanup()  # leave the process group torchrun made us join (if any)
    if rows and main_process:
        print(f"epoch {rows[-1]['epoch']}: loss {rows[-1]['loss']:.4f}; "
              f"checkpoint and metrics in {args.out}")
    return 0


def evaluate_run(out: str | Path, k: int | None = None, labels_per_class: int | None = None,
                 tsne_path: str | Path | None = None, data_root: str | Path | None = None,
                 show=None) -> dict:
    """kNN and linear-probe accuracy of the run in `out` (+ a t-SNE figure); saves eval.json.

    out: the run folder, or its checkpoint file OUT/last.pt. data_root: where the run's dataset
    is, when not at the path saved with the run (relative to the folder training started in).
    labels_per_class: labelled images per class of the few-label probe (default 10, or the
    smallest class's count when that is less; a given number above it is an error).
    show: called with the scores as soon as they are known, then with {"tsne": path} once the
    figure is saved, so a folder that cannot be written loses nothing already shown."""
    import matplotlib.pyplot as plt

    from sslkit import evaluate, plots
    from sslkit.data import DataNotFound
    from sslkit.results import run_folder
    from sslkit.train import load_checkpoint, load_trained

    out = run_folder(out)
    show = show or (lambda scores: None)
    if tsne_path is not None:  # before the work: matplotlib would fail, or write elsewhere
        check_figure_path(tsne_path, "--tsne")
    ckpt = load_checkpoint(out)
    try:
        method, cfg, data = load_trained(out, data_root=data_root, checkpoint=ckpt)
    except DataNotFound as err:
        where = "" if err.root.is_absolute() else f" (relative to this folder, {Path.cwd()})"
        raise SSLKitError(f"{err.what} not found at {err.root}{where}: give the folder that "
                          f"holds it with `sslkit eval {out} --data-root PATH`") from None
    data.check_labelled()
    k = cfg.knn_k if k is None else k  # --k 0 is an error, not the default
    if k < 1:
        raise SSLKitError(f"--k must be at least 1 (got {k}): leave it out for the run's knn_k "
                          f"({cfg.knn_k}), or give e.g. --k 200")
    if k > len(data.train_x):
        raise SSLKitError(f"--k {k} is more than the {len(data.train_x)} training images "
                          f"that kNN votes among: use --k {len(data.train_x)} or less")
    fewest = int(data.train_y.unique(return_counts=True)[1].min())
    if labels_per_class is None:  # not given: 10, or all a smaller class has (and named so)
        labels_per_class = min(10, fewest)
    elif labels_per_class < 1:
        raise SSLKitError(f"--labels-per-class must be at least 1 (got {labels_per_class}): leave "
                          "it out for 10, or give e.g. --labels-per-class 5")
    elif labels_per_class > fewest:  # the probe would see every label: not a few-label score
        raise SSLKitError(f"--labels-per-class {labels_per_class} is more than the {fewest} "
                          "training images of the smallest class, so the probe would see every "
                          f"label of it: use --labels-per-class {fewest} or less")
    train_f = evaluate.extract_features(method.encoder, data.train_x)
    test_f = evaluate.extract_features(method.encoder, data.test_x)
    result = {
        # which epoch was evaluated: `sslkit results` uses these scores only while it is the
        # run's last saved epoch
        "epoch": ckpt["epoch"], "epochs": cfg.epochs,
        "knn": evaluate.knn_accuracy(train_f, data.train_y, test_f, data.test_y, k=k),
        "knn_k": k,
        "linear": evaluate.linear_probe(train_f, data.train_y, test_f, data.test_y),
        f"linear_{labels_per_class}_per_class": evaluate.linear_probe(
            train_f, data.train_y, test_f, data.test_y, labels_per_class=labels_per_class),
    }
    show(result)
    shown = test_f[:2000]
    embedding = evaluate.tsne(shown)  # (n, 2)
    tsne_path = Path(tsne_path or out / "tsne.png")

    def save_json(path: Path) -> None:  # the scores, and the figure's path once it exists
        write_atomic(path, (json.dumps(result, indent=2) + "\n").encode())

    _write(out / "eval.json", save_json, f"the scores are shown above; to save them, copy "
                                         f"{out} to a writable folder and evaluate the copy")
    figure = plots.tsne_panels({f"{cfg.method} features h": embedding},
                               data.test_y[: len(shown)], data.classes)
    try:  # saved, never shown: closed so that eval called in a loop (or a notebook) holds none
        _write(tsne_path, lambda path: plots.save(figure, path),
               f"the scores are saved in {out / 'eval.json'}; give the figure a path in a "
               "writable folder with --tsne PATH")
    finally:
        plt.close(figure)
    result["tsne"] = str(tsne_path)
    _write(out / "eval.json", save_json, "the figure is saved; the scores are shown above")
    show({"tsne": result["tsne"]})
    return result


def check_figure_path(path: str | Path, flag: str) -> None:
    """One-line error unless `path` names a figure file that matplotlib writes where it says:
    not a folder (matplotlib saved --tsne /tmp as /tmp.png), with an extension (it adds .png
    to one without), and one it has a format for (else it fails after the scores)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    if path.is_dir():
        raise SSLKitError(f"{flag} {path} is a folder: give the figure's file, e.g. "
                          f"{flag} {path / 'tsne.png'}")
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        raise SSLKitError(f"{flag} {path} has no file extension, so the figure would be "
                          f"saved as {path}.png: give one, e.g. {flag} {path}.png")
    if suffix not in FigureCanvasBase.get_supported_filetypes():
        raise SSLKitError(f"{flag} {path}: matplotlib cannot write .{suffix} files: use "
                          f"{path.with_suffix('.png')} (or .pdf, .svg)")


def _write(path: Path, write, fix: str) -> None:
    """write(path), with a failure to write (read-only folder, full disk) as a one-line error."""
    try:
        write(path)
    except OSError as err:
        reason = err.strerror or str(err)
        if err.filename and Path(err.filename) != path:  # e.g. a folder on the way
            reason += f": {err.filename}"
        raise SSLKitError(f"cannot write {path} ({reason}): {fix}") from None


def print_scores(scores: dict) -> None:
    for key, value in scores.items():
        if key == "epochs":  # printed with the epoch
            continue
        if key == "epoch":
            unfinished = " (unfinished: `sslkit train ... --resume` continues it)"
            value = f"{value} of {scores['epochs']}" + unfinished * (value < scores["epochs"])
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")


def cmd_eval(args) -> int:
    evaluate_run(args.out, args.k, args.labels_per_class, args.tsne, args.data_root,
                 show=print_scores)
    return 0


def cmd_demo(args) -> int:
    from sslkit.demo import run_demo

    run_demo(args.out, epochs=args.epochs)
    return 0


def cmd_experiment(args) -> int:
    from sslkit.experiments import describe, run_experiment
    from sslkit.profiles import profile_name

    if args.name == "list":
        for name, title in describe():
            print(f"{name:18s} {title}")
        return 0
    result = run_experiment(args.name, args.profile or profile_name(), args.out, args.device)
    print(result.summary())
    print(f"table, figure and results in {result.out}")
    return 0


def cmd_bench(args) -> int:
    import torch

    from sslkit.bench import format_table, run_bench
    from sslkit.bench_views import format_views_table, run_views_bench
    from sslkit.devices import resolve_device

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"  # in the title

    def measured(result) -> None:  # each row as it is done: a later row's crash loses none
        speed = "skipped" if result.images_per_s is None else f"{result.images_per_s:.1f} images/s"
        print(f"measured ({result.name}) {result.label}: {speed}", flush=True)

    results = run_bench(args.device, args.batch, args.steps, args.size, args.warmup, args.workers,
                        args.compile, measured=measured)
    print(format_table(results, f"SimCLR, batch {args.batch}, {args.steps} steps, size "
                                f"{args.size}, {name}"))
    views = run_views_bench(device, args.batch, args.steps, args.warmup)
    print()
    print(format_views_table(views, f"Two views per image only, batch {args.batch}, "
                                    f"{args.steps} steps, {name}"))
    return 0


def cmd_results(args) -> int:
    """The table of the good runs on stdout, then one error line per bad folder (exit 2)."""
    from sslkit.results import HEADER, rows_and_errors

    rows, errors = rows_and_errors(args.runs)
    if rows:
        print("\n".join([HEADER, *rows]), flush=True)
    for error in errors:
        print(f"sslkit: error: {error}", file=sys.stderr)
    return 2 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sslkit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("eval", help="evaluate a trained run: kNN, linear probe, t-SNE")
    p.add_argument("out", help="the run folder given to `sslkit train --out`")
    p.add_argument("--k", type=int, help="kNN neighbours (default: the run's knn_k)")
    p.add_argument("--labels-per-class", type=int,
                   help="labelled images per class for the linear probe's few-label score "
                        "(default 10, or all of the smallest class's when it has fewer)")
    p.add_argument("--tsne", help="where to write the t-SNE figure (default: OUT/tsne.png)")
    p.add_argument("--data-root", help="the run's dataset folder, if not at the path saved "
                                       "with the run (a relative saved path only works from "
                                       "the folder training started in)")
    p = sub.add_parser("demo", help="SimCLR on the embedded digits vs pixels and a random encoder")
    p.add_argument("--out", default="demo-output", help="folder for the run and the figure")
    p.add_argument("--epochs", type=int, help="pre-training epochs (default: the laptop profile)")
    p = sub.add_parser("experiment", help="reproduce a paper's claim at small scale (or: list)")
    p.add_argument("name", help="an experiment's name, or `list` to show them all")
    p.add_argument("--profile", choices=("ci", "laptop", "gpu"),
                   help="ci (seconds), laptop (minutes on a CPU), gpu (CIFAR-10); default: "
                        "the active profile (SSLKIT_PROFILE, else ci under nbgrader, else "
                        "gpu with CUDA, else laptop)")
    p.add_argument("--out", help="output folder (default: experiments/NAME-PROFILE)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p = sub.add_parser("results", help="a Markdown table of runs: kNN, time, command "
                                       "(an unfinished one shows 'k of N' epochs)")
    p.add_argument("runs", nargs="+", help="run folders given to `sslkit train --out`")
    p = sub.add_parser("bench", help="SimCLR images/s: device path, DataLoader, lightly, ceiling")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch", type=int, default=512, help="images per step (default 512)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per pipeline")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--size", default="full", choices=("tiny", "full"),
                   help="full: CIFAR ResNet-18; tiny: a small ConvNet (seconds on a CPU)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: CPUs, at most 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile encoder and head")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"train": cmd_train, "eval": cmd_eval, "demo": cmd_demo,
                "experiment": cmd_experiment, "bench": cmd_bench, "results": cmd_results}
    args = None
    try:
        args = build_parser().parse_args(argv)  # imports torch: Ctrl-C may come here too
        args.argv = argv
        with warnings.catch_warnings():  # restores Python's own display afterwards
            warnings.showwarning = _show_warning
            return commands[args.command](args)
    except SSLKitError as err:
        print(f"sslkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sslkit: interrupted{interrupted_train(args)}", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, like the errors ("sslkit: warning: ..."), without Python's file,
    line number and source line, which point into sslkit rather than at the command."""
    print(f"sslkit: warning: {message}", file=sys.stderr)


def interrupted_train(args) -> str:
    """What an interrupted `sslkit train` left: the last finished epoch, or nothing at all."""
    if args is None or args.command != "train":
        return ""
    # OUT/last.pt is sslkit.train.CHECKPOINT, not imported: Ctrl-C may have cut that import
    if (Path(args.out) / "last.pt").exists():
        return "; the last finished epoch is saved (continue with --resume)"
    return (" before the first epoch finished, so nothing was saved: run the same command again "
            "(without --resume)")


if __name__ == "__main__":
    sys.exit(main())

