"""`sslkit experiment NAME`: every experiment runs in the ci profile (a few steps on a few dozen
images) through the command line; the tests check its files, its table's structure (rows and
columns named as expected) and the ranges of its values."""

import contextlib
import dataclasses
import io
import json
import math

import pytest

from sslkit.cli import main
from sslkit.experiments import EXPERIMENTS, get_experiment
from sslkit.experiments.fit import SCALES
from sslkit.experiments.report import format_value, markdown_table

CI = SCALES["ci"]
_RUNS: dict = {}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """ran(name) -> (results.json as a dict, printed output, output folder); each experiment
    runs once per module, through `sslkit experiment NAME --profile ci`."""

    def get(name):
        if name not in _RUNS:
            out = tmp_path_factory.mktemp(name)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                rc = main(["experiment", name, "--profile", "ci", "--out", str(out),
                           "--device", "cpu"])
            assert rc == 0
            _RUNS[name] = (json.loads((out / "results.json").read_text()), printed.getvalue(),
                           out)
        return _RUNS[name]

    return get


def percent(value) -> bool:
    return value is not None and 0.0 <= value <= 100.0


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_writes_its_three_files(ran, name):
    result, printed, out = ran(name)
    module = get_experiment(name)
    table = (out / "table.md").read_text()
    assert table.startswith(f"## {module.TITLE}")
    assert "| " + " | ".join(result["columns"]) + " |" in table
    assert module.PAPER["source"] in table and "command: `sslkit experiment" in table
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["name"] == name and result["profile"] == "ci" and result["seconds"] >= 0
    assert result["settings"] == json.loads(json.dumps(dataclasses.asdict(module.SETTINGS["ci"])))
    for row in result["rows"]:
        assert set(row) == set(result["columns"])
    # measured beside the paper, printed
    assert "paper (" in printed and result["columns"][0] in printed


def test_loss_functions_table(ran):
    result, _, _ = ran("loss_functions")
    rows = result["rows"]
    assert [(r["loss"], r["semi-hard"]) for r in rows] == [
        (loss, sh) for loss in ("NT-Xent", "NT-Logistic", "Margin") for sh in (False, True)]
    for r in rows:
        assert percent(r["kNN (%)"]) and percent(r["linear (%)"])
        assert math.isfinite(r["final loss"]) and r["final loss"] >= 0
    paper = {(r["loss"], r["semi-hard"]): r["paper top-1 (%)"] for r in rows}
    assert paper[("NT-Xent", False)] == 63.9 and paper[("NT-Xent", True)] is None
    assert paper[("Margin", False)] < paper[("Margin", True)] < paper[("NT-Xent", False)]


def test_temperature_table(ran):
    result, _, _ = ran("temperature")
    s = get_experiment("temperature").SETTINGS["ci"]
    rows = result["rows"]
    assert [(r["L2 norm"], r["temperature"]) for r in rows] == (
        [(True, t) for t in s.normalized] + [(False, t) for t in s.unnormalized])
    max_entropy = math.log(2 * s.batch_size - 1)  # uniform over the 2B - 1 candidates
    for r in rows:
        assert 0 <= r["entropy"] <= max_entropy + 1e-6
        assert percent(r["contrastive acc (%)"]) and percent(r["linear (%)"])
    assert rows[0]["paper top-1 (%)"] == 64.4  # L2 norm, T = 0.1


def test_projection_head_tables(ran):
    result, _, _ = ran("projection_head")
    s = get_experiment("projection_head").SETTINGS["ci"]
    rows = result["rows"]
    assert [r["head"] for r in rows] == [kind for kind, _ in s.heads]
    assert rows[0]["output size"] == 128  # no head: g(h) = h, the encoder's features
    assert rows[0]["linear on h (%)"] == rows[0]["linear on g(h) (%)"]
    assert [r["output size"] for r in rows[1:]] == [size for _, size in s.heads[1:]]
    assert all(percent(r["linear on h (%)"]) and percent(r["linear on g(h) (%)"]) for r in rows)
    (transformations,) = result["more"]
    tasks = [r["predict"] for r in transformations["rows"]]
    assert tasks == ["rotation", "original vs corrupted", "original vs Sobel filtered"]  # grey
    assert [r["random guess (%)"] for r in transformations["rows"]] == [25.0, 50.0, 50.0]
    for r in transformations["rows"]:
        assert percent(r["from h (%)"]) and percent(r["from g(h) (%)"])
        assert r["paper h (%)"] > r["paper g(h) (%)"]


def test_augmentations_matrix(ran):
    result, _, _ = ran("augmentations")
    ops = list(get_experiment("augmentations").SETTINGS["ci"].ops)
    assert result["columns"] == ["1st \\ 2nd", *ops]
    for table in (result["rows"], result["more"][0]["rows"]):
        assert [r["1st \\ 2nd"] for r in table] == ops
        for i, r in enumerate(table):
            for j, op in enumerate(ops):
                assert (r[op] is None) == (j < i)  # the upper triangle and the diagonal
                assert r[op] is None or percent(r[op])


def test_batch_size_table(ran):
    result, _, _ = ran("batch_size")
    s = get_experiment("batch_size").SETTINGS["ci"]
    rows = result["rows"]
    assert [(r["batch"], r["epochs"]) for r in rows] == [
        (b, e) for b in s.batch_sizes for e in s.eval_epochs]
    for r in rows:
        assert r["negatives per anchor"] == 2 * r["batch"] - 2
        assert r["steps"] == r["epochs"] * (s.n_train // r["batch"])
        assert percent(r["kNN (%)"]) and percent(r["linear (%)"])


def test_moco_vs_simclr_tables(ran):
    result, _, _ = ran("moco_vs_simclr")
    s = get_experiment("moco_vs_simclr").SETTINGS["ci"]
    rows = result["rows"]
    assert [(r["method"], r["batch"]) for r in rows] == [
        ("SimCLR", s.small_batch), ("SimCLR", s.large_batch), ("MoCo v2", s.small_batch)]
    assert [r["negatives per anchor"] for r in rows] == [
        2 * s.small_batch - 2, 2 * s.large_batch - 2, s.queue_size]
    assert all(percent(r["kNN (%)"]) and percent(r["linear (%)"]) for r in rows)
    assert [r["paper top-1 (%)"] for r in rows] == [61.9, 66.6, 67.5]
    memory = result["more"][0]["rows"]
    unit = "saved for backward (MiB)"
    assert all(m[unit] > 0 and m["seconds per step"] > 0 for m in memory)
    simclr = [m[unit] for m in memory if m["method"] == "SimCLR"]
    moco = [m[unit] for m in memory if m["method"] == "MoCo v2"]
    # SimCLR's activations grow with its batch (= its negatives); MoCo's queue costs none
    assert simclr[-1] / simclr[0] == pytest.approx(s.memory_batches[-1] / s.memory_batches[0],
                                                   rel=0.1)
    assert max(moco) / min(moco) < 1.05


def test_rotation_pretext_tables(ran):
    result, _, _ = ran("rotation_pretext")
    s = get_experiment("rotation_pretext").SETTINGS["ci"]
    rows = result["rows"]
    assert [r["epoch"] for r in rows] == list(s.eval_epochs)
    for r in rows:
        assert percent(r["pretext accuracy (%)"]) and percent(r["linear (%)"])
    blocks = result["more"][0]["rows"]
    assert [b["block"] for b in blocks] == [1, 2, 3, 4]
    assert [b["width"] for b in blocks] == [16, 32, 64, 128]  # convnet-small
    assert [b["paper (%)"] for b in blocks] == [85.07, 89.06, 86.21, 61.73]
    assert all(percent(b["linear (%)"]) for b in blocks)


def test_experiment_list_and_bad_names(capsys):
    assert main(["experiment", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPERIMENTS)
    assert main(["experiment", "nope", "--profile", "ci"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sslkit: error: unknown experiment 'nope'") and "\n" not in err
    with pytest.raises(SystemExit):
        main(["experiment", "temperature", "--profile", "huge"])


def test_markdown_table_format():
    table = markdown_table(["a", "b"], [{"a": 1.234567, "b": None}, {"a": True, "b": 64.44}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | — |", "| yes | 64.4 |"]
    assert format_value(float("nan")) == "—" and format_value("x") == "x"


def test_every_profile_has_settings_and_paper_numbers():
    for name in EXPERIMENTS:
        module = get_experiment(name)
        assert set(module.SETTINGS) == {"ci", "laptop", "gpu"}
        assert module.SETTINGS["ci"].n_train == CI.n_train  # the ci profile stays tiny
        assert module.SETTINGS["ci"].epochs <= 2
        assert module.PAPER["source"] and module.PAPER["claim"]


def test_mae_mask_ratio_table(ran):
    result, _, _ = ran("mae_mask_ratio")
    s = get_experiment("mae_mask_ratio").SETTINGS["ci"]
    rows = result["rows"]
    assert [r["mask ratio"] for r in rows] == list(s.mask_ratios)
    for r in rows:
        assert percent(r["kNN (%)"]) and percent(r["linear (%)"]) and percent(r["fine-tune (%)"])
        assert math.isfinite(r["final loss"]) and r["final loss"] > 0
    paper = {r["mask ratio"]: (r["paper linear (%)"], r["paper fine-tune (%)"]) for r in rows}
    assert paper[0.75] == (73.5, 84.9) and paper[0.5] == (None, None)
