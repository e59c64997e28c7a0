"""`sslkit results`: the row of a finished run carries the final epoch's kNN (never the best
one), the summed epoch times, the device and the command that `sslkit train` recorded."""

from __future__ import annotations

import json

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
    assert main([*TRAIN, "--knn-every", "1", "--resume", "--out", str(out)]) == 0
    return out


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
    method, arch, epochs, batch, knn, seconds, device, commands = cells
    assert (method, arch, epochs, batch, device) == ("simclr", "convnet-small", "2", "32", "CPU")
    assert knn == "25.0 % (k=20)"
    assert seconds == duration(rows[0]["seconds"] + rows[1]["seconds"])
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
