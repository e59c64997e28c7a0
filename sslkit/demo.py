"""The offline demo behind ``make demo``: SimCLR on the shifted digits, on the CPU, in minutes.

It trains SimCLR with the laptop profile, then compares three representations of the same
images on the same two downstream tests:

    raw pixels            the images themselves, flattened
    random encoder        the same ConvNet, randomly initialised, never trained
    SimCLR encoder        that ConvNet after self-supervised training (no labels used)

    kNN accuracy          weighted kNN (cosine, T=0.1) from the training to the test digits
    linear probe, 10/cls  logistic regression trained on only 10 labelled digits per class

and draws a t-SNE of the test digits under each. Pixel space groups digits by where they sit
and how large they are; the SimCLR features group them by which digit they are.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from sslkit import evaluate, plots
from sslkit.errors import SSLKitError
from sslkit.profiles import get_profile
from sslkit.train import (
    CHECKPOINT,
    TrainConfig,
    build,
    check_settings,
    load_checkpoint,
    load_data,
    load_trained,
    train,
)

PROBE_SEEDS = 5  # the 10-labels-per-class probe is averaged over this many draws of labels


def _scores(train_f, test_f, data, k: int) -> tuple[float, float]:
    knn = evaluate.knn_accuracy(train_f, data.train_y, test_f, data.test_y, k=k)
    probe = np.mean([evaluate.linear_probe(train_f, data.train_y, test_f, data.test_y,
                                           labels_per_class=10, seed=s)
                     for s in range(PROBE_SEEDS)])
    return knn, float(probe)


def run_demo(out: str | Path = "demo-output", epochs: int | None = None) -> dict:
    """Train (or reuse a finished run in out/simclr), evaluate, draw; returns the scores."""
    if str(out).strip() == "":  # Path("") is the current folder, which was not asked for
        raise SSLKitError("--out is empty (an unset shell variable?): give the demo's folder, "
                          "e.g. --out demo-output")
    out = Path(out)
    cfg = TrainConfig.from_profile(get_profile("laptop"), device="cpu")
    if epochs is not None:  # 0 too: an error, not the default of 200
        cfg = replace(cfg, epochs=epochs)
    check_settings(cfg)  # before the header that says what will be trained
    run = out / "simclr"
    started = time.perf_counter()
    saved = load_checkpoint(run) if (run / CHECKPOINT).exists() else None
    if saved is not None and saved["config"] != asdict(cfg):
        raise SSLKitError(f"{run} holds a run with other settings: delete it or pass --out DIR")
    print(f"SimCLR on {cfg.dataset}: {cfg.arch}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"NT-Xent T={cfg.temperature}, on the CPU")
    if saved is not None and saved["epoch"] == cfg.epochs:
        print(f"reusing the finished run in {run} (delete it to train again)")
        method = load_trained(run)[0]
    else:
        method, _ = train(cfg, run, resume=saved is not None)
    train_time = time.perf_counter() - started

    data = load_data(cfg)
    random_encoder = build(cfg, data).encoder  # same architecture and seed, no training
    feats = {
        "raw pixels": (evaluate.pixels(data.train_x), evaluate.pixels(data.test_x)),
        "random encoder": (evaluate.extract_features(random_encoder, data.train_x),
                           evaluate.extract_features(random_encoder, data.test_x)),
        "SimCLR encoder": (evaluate.extract_features(method.encoder, data.train_x),
                           evaluate.extract_features(method.encoder, data.test_x)),
    }
    scores = {name: _scores(tr, te, data, cfg.knn_k) for name, (tr, te) in feats.items()}

    print(f"\n{len(data.train_x)} training and {len(data.test_x)} test digits "
          f"(different source digits); training took {train_time:.0f} s")
    print(f"{'representation':<16} {'kNN (k=' + str(cfg.knn_k) + ')':>10} "
          f"{'linear probe, 10 labels/class':>31}")
    for name, (knn, probe) in scores.items():
        print(f"{name:<16} {knn:>10.1%} {probe:>31.1%}")

    tsne_path = out / "tsne.png"
    plt.close(plots.tsne_panels({name: evaluate.tsne(te) for name, (_, te) in feats.items()},
                                data.test_y, data.classes, path=tsne_path))  # saved, not shown
    print(f"\nt-SNE of the test digits under each representation: {tsne_path}")
    return {name: {"knn": knn, "linear_10": probe} for name, (knn, probe) in scores.items()}
