"""`sslkit results`: the row of a finished run carries the final epoch's kNN (never the best
one), the summed epoch times, the calls' wall time, the device and the command that
`sslkit train` recorded."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from sslkit.cli import main
from sslkit.errors import SSLKitError
from sslkit.results import duration, results_table

TRAIN = ["train", "simclr", "--profile", "ci", "--device", "cpu", "--n-train", "64",
         "--n-test", "32", "--batch-size", "32", "--epochs", "2", "--no-progress"]


def test_duration():
    assert [duration(s) for s in (0.4, 42.1, 340, 7260)] == ["0 s", "42 s", "5 min 40 s",
                                                             "2 h 1 min"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "simclr"
    assert main([*TRAIN, "--knn-every", "1", "--stop-after-epoch", "1", "--out", str(out)]) == 0
    shutil.copytree(out, out.parent / "partial")  # the run as the first call left it
    assert main([*TRAIN, "--knn-every", "1", "--resume", "--out", str(out)]) == 0
    return out


def copy(run, tmp_path, name="copy"):
    return shutil.copytree(run, tmp_path / name)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def cells(table):
    return [c.strip() for c in table.splitlines()[-1].strip("|").split("|")]


def test_row_of_a_run_trained_in_two_calls(run, capsys):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # make the final epoch worse than the first: the table must still show the final one
    rows[0]["knn"], rows[1]["knn"] = 0.9, 0.25
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["results", str(run)]) == 0
    header, rule, row = capsys.readouterr().out.strip().splitlines()
    assert header.startswith("| method | encoder | epochs |") and rule.startswith("|---|")
    cells = [c.strip() for c in row.strip("|").split("|")]
    method, arch, epochs, batch, knn, seconds, wall, device, commands = cells
    assert (method, arch, epochs, batch, device) == ("simclr", "convnet-small", "2", "32", "CPU")
    assert knn == "25.0 % (k=20)"
    assert seconds == duration(rows[0]["seconds"] + rows[1]["seconds"])
    calls = json.loads((run / "run.json").read_text())["calls"]
    assert len(calls) == 2 and all(c["wall_seconds"] > 0 for c in calls)
    assert wall == duration(sum(c["wall_seconds"] for c in calls))
    first, second = commands.split("<br>")
    assert first == f"`sslkit {' '.join(TRAIN)} --knn-every 1 --stop-after-epoch 1 --out {run}`"
    assert second == f"`sslkit {' '.join(TRAIN)} --knn-every 1 --resume --out {run}`"


def test_knn_from_eval_json_or_a_hint(run, tmp_path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("knn", None)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert f"not measured: `sslkit eval {run}`" in results_table([run])
    (run / "eval.json").write_text(json.dumps({"knn": 0.5123, "knn_k": 200}))
    assert "| 51.2 % (k=200) |" in results_table([run])


def test_unfinished_or_missing_runs():
    with pytest.raises(SSLKitError, match="no checkpoint at"):
        results_table(["no-such-run"])


def test_unfinished_run_shows_its_saved_epoch(run, tmp_path):
    partial = copy(run.parent / "partial", tmp_path)
    (first,) = metrics(partial)
    _, _, epochs, _, knn, seconds, wall, _, _ = cells(results_table([partial]))
    assert epochs == "1 of 2" and knn == f"{100 * first['knn']:.1f} % (k=20)"
    assert seconds == duration(first["seconds"])
    (call,) = json.loads((partial / "run.json").read_text())["calls"]
    assert wall == duration(call["wall_seconds"]) and call["wall_seconds"] >= first["seconds"]


def test_rows_written_after_the_checkpoint_are_left_out(run, tmp_path):
    """A call killed after writing epoch 2's row but before saving its checkpoint, or while
    writing the row: the checkpoint is at epoch 1, and so is the table (as --resume has it)."""
    partial = copy(run.parent / "partial", tmp_path)
    (first,) = metrics(partial)
    unsaved = {"epoch": 2, "step": 4, "loss": 4.0, "lr": 0.0, "seconds": 5000.0, "knn": 0.99}
    with open(partial / "metrics.jsonl", "a") as f:
        f.write(json.dumps(unsaved) + "\n")
    expected = ("1 of 2", f"{100 * first['knn']:.1f} % (k=20)", duration(first["seconds"]))
    _, _, epochs, _, knn, seconds, _, _, _ = cells(results_table([partial]))
    assert (epochs, knn, seconds) == expected
    with open(partial / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 6, "lo')  # killed mid-write
    _, _, epochs, _, knn, seconds, _, _, _ = cells(results_table([partial]))
    assert (epochs, knn, seconds) == expected


def test_eval_json_older_than_the_checkpoint_is_not_reported(run, tmp_path):
    """knn_every 0, then `sslkit eval` after epoch 1, then the run resumed: that kNN is stale."""
    done = copy(run, tmp_path)
    rows = metrics(done)
    for row in rows:
        row.pop("knn", None)
    (done / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (done / "eval.json").write_text(json.dumps({"knn": 0.5123, "knn_k": 20}))
    saved = os.stat(done / "last.pt").st_mtime
    os.utime(done / "eval.json", (saved - 60, saved - 60))
    assert cells(results_table([done]))[4] == f"eval.json predates the last epoch: `sslkit " \
                                              f"eval {done}`"


def test_eval_json_is_dated_by_the_epoch_it_records_not_by_file_times(run, tmp_path):
    """A copied run folder gets new file times in any order: an eval.json of the last epoch
    could look older than last.pt (reported stale), a stale one newer (reported current).
    `sslkit eval` records the epoch it evaluated, and that decides."""
    done = copy(run, tmp_path)
    rows = metrics(done)
    for row in rows:
        row.pop("knn", None)
    (done / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    saved = os.stat(done / "last.pt").st_mtime
    last = rows[-1]["epoch"]
    (done / "eval.json").write_text(json.dumps({"knn": 0.5123, "knn_k": 20, "epoch": last}))
    os.utime(done / "eval.json", (saved - 60, saved - 60))  # older, yet of the last epoch
    assert cells(results_table([done]))[4] == "51.2 % (k=20)"
    (done / "eval.json").write_text(json.dumps({"knn": 0.5123, "knn_k": 20, "epoch": last - 1}))
    os.utime(done / "eval.json", (saved + 60, saved + 60))  # newer, yet of an earlier epoch
    assert cells(results_table([done]))[4] == f"eval.json predates the last epoch: `sslkit " \
                                              f"eval {done}`"


def test_missing_run_json_shows_unknown(run, tmp_path):
    done = copy(run, tmp_path)
    (done / "run.json").unlink()
    assert cells(results_table([done]))[6:] == ["unknown", "unknown", "unknown"]


def test_a_call_that_recorded_no_wall_time_makes_it_unknown(run, tmp_path):
    """run.json of a call that never recorded its wall time: the total is not known."""
    done = copy(run, tmp_path)
    info = json.loads((done / "run.json").read_text())
    del info["calls"][0]["wall_seconds"]
    (done / "run.json").write_text(json.dumps(info))
    assert cells(results_table([done]))[6] == "unknown"


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "metrics.jsonl").unlink(), "no metrics.jsonl"),
    (lambda run: (run / "metrics.jsonl").write_text(""), "epochs none"),
    (lambda run: (run / "metrics.jsonl").write_text("{oops\n" + (run / "metrics.jsonl")
                                                    .read_text()), "line 1 is not a metrics row"),
    (lambda run: (run / "metrics.jsonl").write_text(
        (run / "metrics.jsonl").read_text().splitlines()[1] + "\n"), "epochs [2]"),
    (lambda run: (run / "run.json").write_text('{"calls": ['), "run.json cannot be read"),
    (lambda run: (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000]),
     "last.pt cannot be read"),
], ids=["no-metrics", "empty-metrics", "bad-line", "missing-epoch", "bad-run-json", "bad-ckpt"])
def test_damaged_runs_are_one_line_errors(run, tmp_path, capsys, damage, message):
    broken = copy(run, tmp_path)
    damage(broken)
    capsys.readouterr()
    assert main(["results", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sslkit: error:") and message in err


def test_a_file_is_not_a_run_folder(run, capsys):
    assert main(["results", str(run / "metrics.jsonl")]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err


def test_checkpoint_file_names_its_run_and_unreadable_files_are_one_line(run, tmp_path,
                                                                         monkeypatch):
    """The checkpoint file stands for its folder (as in `sslkit eval`); a file that cannot be
    read (permissions) is a one-line error naming it, not a traceback."""
    assert cells(results_table([run / "last.pt"]))[:3] == ["simclr", "convnet-small", "2"]
    real_read_text = type(run).read_text

    def unreadable(path, *args, **kwargs):
        if path.name == "metrics.jsonl":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(type(run), "read_text", unreadable)
    with pytest.raises(SSLKitError) as info:
        results_table([run])
    assert f"cannot read {run / 'metrics.jsonl'} (Permission denied)" in str(info.value)
    assert "\n" not in str(info.value)


def set_field(path, index, key, value):
    """Set `key` of the `index`-th metrics row (a .jsonl path) or run.json call to `value`."""
    if path.name == "run.json":
        info = json.loads(path.read_text())
        info["calls"][index][key] = value
        path.write_text(json.dumps(info))
    else:
        rows = metrics(path.parent)
        rows[index][key] = value
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("file, key, value, message", [
    ("metrics.jsonl", "seconds", "abc", "metrics.jsonl line 1 is not a metrics row"),
    ("metrics.jsonl", "seconds", None, "metrics.jsonl line 1 is not a metrics row"),
    ("metrics.jsonl", "epoch", "1", "metrics.jsonl line 1 is not a metrics row"),
    ("metrics.jsonl", "knn", True, "metrics.jsonl line 2 is not a metrics row"),
    ("metrics.jsonl", "knn", "abc", "metrics.jsonl line 2 is not a metrics row"),
    ("run.json", "processes", "2", "run.json call 1 has processes '2', not an integer"),
    ("run.json", "device", ["cpu"], "run.json call 1 has device ['cpu'], not a string"),
], ids=["seconds-text", "seconds-null", "epoch-text", "knn-bool", "knn-text", "processes-text",
        "device-list"])
def test_damaged_values_are_one_line_errors(run, tmp_path, capsys, file, key, value, message):
    """A metrics row or run.json call with a value of the wrong kind ended in a TypeError
    traceback (seconds "abc", processes "2") or, for a kNN of true, showed "100.0 %"."""
    broken = copy(run, tmp_path)
    set_field(broken / file, 0 if file == "run.json" or key != "knn" else 1, key, value)
    capsys.readouterr()
    assert main(["results", str(broken)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    fix = ("the file is damaged; restore it from a copy of the run" if file == "metrics.jsonl"
           else "fix or delete it (the device and command then show as unknown)")
    assert captured.err == f"sslkit: error: {broken / file}{message[len(file):]}: {fix}\n"


def test_a_wall_time_that_is_not_a_number_is_unknown(run, tmp_path):
    """wall_seconds NaN raised ValueError in round(); true was counted as 1 s."""
    done = copy(run, tmp_path)
    for value in (float("nan"), True):
        set_field(done / "run.json", 0, "wall_seconds", value)
        assert cells(results_table([done]))[6] == "unknown"
