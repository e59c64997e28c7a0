"""``sslkit results RUN...``: one Markdown row per finished run, for a results table.

    | method | encoder | epochs | batch | kNN | training time | device | command |

kNN is the accuracy at the run's final epoch (cosine, T = 0.1, k = the run's knn_k; 200 in the
gpu profile), as REFERENCE.md's convention asks: never the best over epochs. It comes from the
last row of metrics.jsonl when the run monitored kNN at its final epoch (``--knn-every N``), else
from eval.json (``sslkit eval``), else it is left out with a hint. The training time is the sum
of the epochs' wall times, over every call that trained the run (kNN monitoring excluded). The
device and the command come from run.json, which ``sslkit train`` appends each call to.
"""

from __future__ import annotations

import json
from pathlib import Path

from sslkit.errors import SSLKitError
from sslkit.train import METRICS, RUN_INFO, TrainConfig, load_checkpoint

HEADER = ("| method | encoder | epochs | batch | kNN | training time | device | command |\n"
          "|---|---|---|---|---|---|---|---|")


def duration(seconds: float) -> str:
    """42.1 -> '42 s'; 340 -> '5 min 40 s'; 7260 -> '2 h 1 min'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def final_knn(run: Path, rows: list[dict], cfg: TrainConfig) -> str:
    """The final epoch's kNN accuracy as 'xx.x %' (k and T in the table's notes), or a hint."""
    if rows and rows[-1]["epoch"] == cfg.epochs and "knn" in rows[-1]:
        return f"{100 * rows[-1]['knn']:.1f} % (k={cfg.knn_k})"
    evaluated = run / "eval.json"
    if evaluated.is_file():
        result = json.loads(evaluated.read_text())
        return f"{100 * result['knn']:.1f} % (k={result['knn_k']})"
    return f"not measured: `sslkit eval {run}`"


def result_row(run: str | Path) -> str:
    """One table row for the run saved in `run`."""
    run = Path(run)
    cfg = TrainConfig(**load_checkpoint(run)["config"])
    rows = [json.loads(line) for line in (run / METRICS).read_text().splitlines() if line]
    if not rows:
        raise SSLKitError(f"{run} has no finished epoch in {METRICS}: train it first")
    epochs = rows[-1]["epoch"] if rows[-1]["epoch"] == cfg.epochs else (
        f"{rows[-1]['epoch']} of {cfg.epochs}")
    info = run / RUN_INFO
    calls = json.loads(info.read_text())["calls"] if info.is_file() else []
    devices = sorted({f"{c['processes']} x {c['device']}" if c["processes"] > 1 else c["device"]
                      for c in calls}) or ["unknown"]
    commands = [f"`{c['command']}`" for c in calls if c["command"]] or ["unknown"]
    seconds = sum(r["seconds"] for r in rows)
    return (f"| {cfg.method} | {cfg.arch} | {epochs} | {cfg.batch_size} | "
            f"{final_knn(run, rows, cfg)} | {duration(seconds)} | {', '.join(devices)} | "
            f"{'<br>'.join(commands)} |")


def results_table(runs: list[str | Path]) -> str:
    """The header and one row per run folder."""
    return "\n".join([HEADER, *(result_row(run) for run in runs)])
