"""``sslkit results RUN...``: one Markdown row per run, for a results table.

    | method | encoder | epochs | batch | kNN | training time | wall time | device | command |

kNN is the accuracy at the run's final epoch (cosine, T = 0.1, k = the run's knn_k; 200 in the
gpu profile; the monitor of Wu et al., 2018), never the best over epochs. It comes from the
last row of metrics.jsonl when the run monitored kNN at its last saved epoch (``--knn-every
N``), else from eval.json (``sslkit eval``) when that is not older than the checkpoint, else it
is left out with a hint. A run that is not finished says so in the epochs column ("3 of 100")
and its kNN is that of its last saved epoch. The training time is the sum of the epochs' wall
times, over every call that trained the run (kNN monitoring excluded); the wall time is that
of the calls themselves, from start to their last saved epoch (data loading, kNN monitoring and
checkpoints included), "unknown" for a call that did not record it. The device and the command
come from run.json, which ``sslkit train`` appends each call to.

A folder that is not a run, or a damaged run, is one line on stderr after the table of the
others (``sslkit: error: ...``, exit status 2); a run's checkpoint file stands for its folder.

The checkpoint is the record of how far the run got: a metrics row written after it (a call
killed between the two writes, or mid-write) is left out, as ``--resume`` leaves it out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sslkit.errors import SSLKitError
from sslkit.train import CHECKPOINT, METRICS, RUN_INFO, TrainConfig, load_checkpoint

HEADER = ("| method | encoder | epochs | batch | kNN | training time | wall time | device | "
          "command |\n|---|---|---|---|---|---|---|---|---|")


def duration(seconds: float) -> str:
    """42.1 -> '42 s'; 340 -> '5 min 40 s'; 7260 -> '2 h 1 min'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _is_number(value) -> bool:
    """A finite int or float; not a bool (JSON's true would count as 1)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _read_json(path: Path, fix: str):
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise SSLKitError(f"{path} cannot be read ({err}): {fix}") from None


def saved_rows(run: Path, saved_epoch: int) -> list[dict]:
    """The metrics rows of epochs 1..saved_epoch (the checkpoint's), checked to be all there."""
    path = run / METRICS
    if not path.is_file():
        raise SSLKitError(f"{run} has a checkpoint but no {METRICS}, so its training time is "
                          f"unknown: copy {METRICS} along with {CHECKPOINT}")
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        damaged = SSLKitError(f"{path} line {number} is not a metrics row: the file is "
                              "damaged; restore it from a copy of the run")
        try:
            row = json.loads(line)
            epoch, seconds = row["epoch"], row["seconds"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # cut off mid-write: its epoch's checkpoint was never saved
                break
            raise damaged from None
        if not (isinstance(epoch, int) and not isinstance(epoch, bool) and _is_number(seconds)
                and ("knn" not in row or _is_number(row["knn"]) and 0 <= row["knn"] <= 1)):
            raise damaged  # e.g. "seconds": "abc", which failed the sum; a kNN of true showed 100 %
        if epoch <= saved_epoch:
            rows.append(row)
    epochs = [r["epoch"] for r in rows]
    if epochs != list(range(1, saved_epoch + 1)):
        raise SSLKitError(f"{path} does not hold one row for each of the {saved_epoch} saved "
                          f"epoch(s) (it has epochs {epochs or 'none'}), so the training time "
                          "is unknown: restore the file from a copy of the run")
    return rows


def final_knn(run: Path, rows: list[dict], cfg: TrainConfig) -> str:
    """The last saved epoch's kNN accuracy as 'xx.x % (k=K)', or a hint."""
    if "knn" in rows[-1]:
        return f"{100 * rows[-1]['knn']:.1f} % (k={cfg.knn_k})"
    evaluated = run / "eval.json"
    hint = f"not measured: `sslkit eval {run}`"
    if not evaluated.is_file():
        return hint
    stale = f"eval.json predates the last epoch: `sslkit eval {run}`"
    try:
        result = json.loads(evaluated.read_text())
        # the epoch it evaluated; eval.json files without one are dated by their file times,
        # which a copy of the run folder can reorder
        if "epoch" in result:
            if result["epoch"] != rows[-1]["epoch"]:
                return stale
        elif evaluated.stat().st_mtime < (run / CHECKPOINT).stat().st_mtime:
            return stale
        return f"{100 * result['knn']:.1f} % (k={result['knn_k']})"
    except (ValueError, KeyError, TypeError, OSError):
        return f"eval.json unreadable: `sslkit eval {run}`"


def _calls(run: Path) -> list[dict]:
    info = run / RUN_INFO
    if not info.is_file():
        return []
    calls = _read_json(info, "fix or delete it (the device and command then show as unknown)")
    if not isinstance(calls, dict) or not isinstance(calls.get("calls"), list):
        raise SSLKitError(f"{info} has no list of calls: fix or delete it (the device and "
                          "command then show as unknown)")
    calls = [c for c in calls["calls"] if isinstance(c, dict)]
    kinds = {"command": (str, "a string"), "device": (str, "a string"),
             "processes": (int, "an integer")}
    for number, call in enumerate(calls, 1):
        for key, (kind, name) in kinds.items():
            if key in call and (not isinstance(call[key], kind) or isinstance(call[key], bool)):
                raise SSLKitError(f"{info} call {number} has {key} {call[key]!r}, not {name}: "
                                  "fix or delete it (the device and command then show as "
                                  "unknown)")
    return calls


def run_folder(path: str | Path) -> Path:
    """The run folder that `path` names: the folder itself, or the folder of its checkpoint
    file (OUT/last.pt). Any other file, or an empty name, is a one-line error."""
    if str(path).strip() == "":  # Path("") is the current folder, which was not asked for
        raise SSLKitError("the run folder is empty (an unset shell variable?): give the "
                          "folder that was passed to `sslkit train --out`")
    path = Path(path)
    if path.is_file():
        if path.name == CHECKPOINT:
            return path.parent
        raise SSLKitError(f"{path} is a file, not a run folder: give the folder that was passed "
                          "to `sslkit train --out`")
    return path


def result_row(run: str | Path) -> str:
    """One table row for the run saved in `run` (its folder, or its checkpoint file)."""
    run = run_folder(run)
    try:
        return _row(run)
    except OSError as err:  # a file that cannot be read (permissions, a broken disk)
        raise SSLKitError(f"{run}: cannot read {err.filename or 'a file'} "
                          f"({err.strerror or err}): make the run folder readable, or copy it "
                          "again") from None


def _row(run: Path) -> str:
    ckpt = load_checkpoint(run)  # a damaged or foreign checkpoint is a one-line error there
    cfg = TrainConfig(**ckpt["config"])
    rows = saved_rows(run, ckpt["epoch"])
    if not rows:
        raise SSLKitError(f"{run} has no finished epoch: train it first")
    epochs = cfg.epochs if ckpt["epoch"] == cfg.epochs else f"{ckpt['epoch']} of {cfg.epochs}"
    calls = _calls(run)
    devices = sorted({f"{c.get('processes', 1)} x {c.get('device', 'unknown')}"
                      if c.get("processes", 1) > 1 else c.get("device", "unknown")
                      for c in calls}) or ["unknown"]
    commands = [f"`{c['command']}`" for c in calls if c.get("command")] or ["unknown"]
    seconds = sum(r["seconds"] for r in rows)
    walls = [c.get("wall_seconds") for c in calls]
    wall = (duration(sum(walls)) if walls and all(_is_number(w) for w in walls)
            else "unknown")
    return (f"| {cfg.method} | {cfg.arch} | {epochs} | {cfg.batch_size} | "
            f"{final_knn(run, rows, cfg)} | {duration(seconds)} | {wall} | {', '.join(devices)} | "
            f"{'<br>'.join(commands)} |")


def results_table(runs: list[str | Path]) -> str:
    """The header and one row per run folder; the first bad folder is a one-line error."""
    return "\n".join([HEADER, *(result_row(run) for run in runs)])


def rows_and_errors(runs: list[str | Path]) -> tuple[list[str], list[str]]:
    """(table rows of the good runs, one-line errors of the bad ones), each in the given order:
    one damaged or missing folder does not hide the others' rows."""
    rows, errors = [], []
    for run in runs:
        try:
            rows.append(result_row(run))
        except SSLKitError as err:
            errors.append(str(err))
    return rows, errors
