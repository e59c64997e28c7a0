"""`sslkit experiment NAME`: every experiment runs in the ci profile (a few steps on a few dozen
images) through the command line; the tests check its files (the table printed and written is
the one in results.json), its table's structure (rows and columns named as expected), the
ranges of its values, and, by watching ``pretrain`` and ``downstream``, that the compared arms
start from the same weights, train for the same number of steps and are evaluated on the
trained encoder's features h; by watching the settings, that results.json records exactly
the settings the run reads. Bad input (an --out holding results, an unknown profile or device)
fails with one line before any work."""

import contextlib
import dataclasses
import io
import json
import math
from types import SimpleNamespace

import pytest
import torch

from sslkit import atomic
from sslkit.cli import main
from sslkit.errors import SSLKitError
from sslkit.experiments import EXPERIMENTS, get_experiment, run_experiment
from sslkit.experiments.fit import SCALES
from sslkit.experiments.report import Result, format_value, markdown_table

CI = SCALES["ci"]
_RUNS: dict = {}


def watch(module, calls: dict, mp: pytest.MonkeyPatch) -> None:
    """Replace the module's pretrain and downstream by wrappers that record, per call: the
    encoder, its weights before training, the optimiser steps taken (calls of the method's
    forward), the batch size and the losses returned; and which encoder was evaluated."""
    real_pretrain = module.pretrain

    def pretrain(method, images, scale, device, batch_size=None, epochs=None, **kwargs):
        steps = [0]
        hook = method.register_forward_pre_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
        init = torch.cat([p.detach().flatten().clone() for p in method.encoder.parameters()])
        try:
            losses = real_pretrain(method, images, scale, device, batch_size, epochs, **kwargs)
        finally:
            hook.remove()
        calls["pretrain"].append({"encoder": method.encoder, "init": init, "steps": steps[0],
                                  "images": len(images),
                                  "batch": batch_size or scale.batch_size, "losses": losses})
        return losses

    mp.setattr(module, "pretrain", pretrain)
    if hasattr(module, "downstream"):
        real_downstream = module.downstream

        def downstream(encoder, *args, **kwargs):
            calls["downstream"].append(encoder)
            return real_downstream(encoder, *args, **kwargs)

        mp.setattr(module, "downstream", downstream)


def watch_settings(module, calls: dict, mp: pytest.MonkeyPatch) -> None:
    """Give the module's run a copy of its ci settings that notes the name of every field read
    from it, and keep in calls["read"] the fields read before the run records its settings
    (recorded_settings reads them all)."""
    settings = module.SETTINGS["ci"]
    names = {f.name for f in dataclasses.fields(settings)}
    read = set()

    class Watched(type(settings)):
        def __getattribute__(self, name):
            if name in names:
                read.add(name)
            return super().__getattribute__(name)

    watched = Watched(**dataclasses.asdict(settings))
    read.clear()  # what building the copy read (its own checks) is not the run's
    mp.setitem(module.SETTINGS, "ci", watched)
    real_recorded_settings = module.recorded_settings

    def recorded_settings(s):
        calls["read"] = set(read)
        return real_recorded_settings(s)

    mp.setattr(module, "recorded_settings", recorded_settings)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """ran(name) -> (results.json as a dict, printed output, output folder, calls of pretrain
    and downstream and the settings read, see watch and watch_settings); each experiment runs
    once per module, through `sslkit experiment NAME --profile ci`."""

    def get(name):
        if name not in _RUNS:
            out = tmp_path_factory.mktemp(name)
            printed = io.StringIO()
            calls = {"pretrain": [], "downstream": []}
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
                watch(get_experiment(name), calls, mp)
                watch_settings(get_experiment(name), calls, mp)
                rc = main(["experiment", name, "--profile", "ci", "--out", str(out),
                           "--device", "cpu"])
            assert rc == 0
            _RUNS[name] = (json.loads((out / "results.json").read_text()), printed.getvalue(),
                           out, calls)
        return _RUNS[name]

    return get


def percent(value) -> bool:
    return value is not None and 0.0 <= value <= 100.0


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_writes_its_three_files(ran, name):
    result, printed, out, _ = ran(name)
    module = get_experiment(name)
    table = (out / "table.md").read_text()
    assert table.startswith(f"## {module.TITLE}")
    assert "| " + " | ".join(result["columns"]) + " |" in table
    assert module.PAPER["source"] in table and "command: `sslkit experiment" in table
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["name"] == name and result["profile"] == "ci" and result["seconds"] >= 0
    # the settings, less the shared ones the experiment declares it does not use
    s = module.SETTINGS["ci"]
    assert set(type(s).unused) <= {f.name for f in dataclasses.fields(s)}
    recorded = {k: v for k, v in dataclasses.asdict(s).items() if k not in type(s).unused}
    assert result["settings"] == json.loads(json.dumps(recorded))
    for row in result["rows"]:
        assert set(row) == set(result["columns"])
    # the tables written and printed are those of results.json, measured beside the paper
    tables = [markdown_table(result["columns"], result["rows"])]
    tables += [markdown_table(t["columns"], t["rows"]) for t in result["more"]]
    for t in tables:
        assert t in table and t in printed
    assert "paper (" in printed
    # written atomically: nothing else (no temporary file) is left in the folder
    assert sorted(p.name for p in out.iterdir()) == ["figure.png", "results.json", "table.md"]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_results_record_exactly_the_settings_the_run_reads(ran, name):
    """A reader reproduces a run from its recorded settings: each is one the run read (a field
    recorded but never read, like a batch size where the runs train at others, is no setting of
    the run: the experiment declares it unused), and every field read is recorded. Reading is
    not proof of use (a value read and then overridden would pass), but a field never read
    cannot have changed the run."""
    result, _, _, calls = ran(name)
    assert set(result["settings"]) == calls["read"], (
        f"recorded, never read: {sorted(set(result['settings']) - calls['read'])}; "
        f"read, not recorded: {sorted(calls['read'] - set(result['settings']))}")


# the experiments that compare several pre-trained arms (rotation_pretext trains one network)
COMPARED = [name for name in EXPERIMENTS if name != "rotation_pretext"]


@pytest.mark.parametrize("name", COMPARED)
def test_compared_arms_share_weights_data_and_budget(ran, name):
    result, _, _, calls = ran(name)
    s = get_experiment(name).SETTINGS["ci"]
    runs = calls["pretrain"]
    assert len(runs) >= 2
    for run in runs:  # the same initial encoder, every epoch of every arm run in full
        assert torch.equal(run["init"], runs[0]["init"])
        assert run["images"] == s.n_train
        assert run["steps"] == s.epochs * (s.n_train // run["batch"])
        assert len(run["losses"]) == s.epochs
    if name not in ("batch_size", "moco_vs_simclr"):  # arms that differ only in what they test
        assert {run["batch"] for run in runs} == {s.batch_size}
    if name == "augmentations":  # one run per entry of the matrix
        assert len(runs) == len(get_experiment(name).pairs(s.ops))
    elif name == "batch_size":  # one run per batch size, evaluated along the way
        assert [run["batch"] for run in runs] == list(s.batch_sizes)
    else:  # one run per row, at the row's batch size
        assert len(runs) == len(result["rows"])
        assert all(run["batch"] == r.get("batch", s.batch_size)
                   for run, r in zip(runs, result["rows"]))


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "projection_head"])
def test_downstream_evaluates_the_trained_encoder(ran, name):
    """kNN and the linear probe see h, the output of the encoder just trained (never g(h)):
    each run's encoder, in the order trained, once (or at every evaluated epoch), one
    evaluation per table row (per matrix entry for augmentations)."""
    result, _, _, calls = ran(name)
    s = get_experiment(name).SETTINGS["ci"]
    per_run = len(s.eval_epochs) if name in ("batch_size", "rotation_pretext") else 1
    trained = [run["encoder"] for run in calls["pretrain"]]
    evaluated = calls["downstream"]
    assert [id(e) for e in evaluated] == [id(t) for t in trained for _ in range(per_run)]
    if name != "augmentations":
        assert len(evaluated) == len(result["rows"])


@pytest.mark.parametrize("name", ["loss_functions", "mae_mask_ratio"])
def test_final_loss_is_the_last_epochs(ran, name):
    result, _, _, calls = ran(name)
    assert [r["final loss"] for r in result["rows"]] == pytest.approx(
        [run["losses"][-1] for run in calls["pretrain"]])


def test_loss_functions_table(ran):
    result, *_ = ran("loss_functions")
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
    result, *_ = ran("temperature")
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
    result, *_ = ran("projection_head")
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
    result, *_ = ran("augmentations")
    ops = list(get_experiment("augmentations").SETTINGS["ci"].ops)
    assert result["columns"] == ["1st \\ 2nd", *ops]
    for table in (result["rows"], result["more"][0]["rows"]):
        assert [r["1st \\ 2nd"] for r in table] == ops
        for i, r in enumerate(table):
            for j, op in enumerate(ops):
                assert (r[op] is None) == (j < i)  # the upper triangle and the diagonal
                assert r[op] is None or percent(r[op])


def test_batch_size_table(ran):
    result, *_ = ran("batch_size")
    s = get_experiment("batch_size").SETTINGS["ci"]
    rows = result["rows"]
    assert [(r["batch"], r["epochs"]) for r in rows] == [
        (b, e) for b in s.batch_sizes for e in s.eval_epochs]
    for r in rows:
        assert r["negatives per anchor"] == 2 * r["batch"] - 2
        assert r["steps"] == r["epochs"] * (s.n_train // r["batch"])
        assert percent(r["kNN (%)"]) and percent(r["linear (%)"])
    # the steps reported at the last evaluation are the steps the run took
    runs = ran("batch_size")[3]["pretrain"]
    assert [run["steps"] for run in runs] == [
        max(r["steps"] for r in rows if r["batch"] == b) for b in s.batch_sizes]


@pytest.mark.parametrize("name", ["batch_size", "rotation_pretext"])
def test_evaluated_epochs_are_epochs_of_the_run(name):
    """eval_epochs lie within the run's epochs (an epoch beyond them would be recorded and never
    evaluated); batch_size's runs train to the last of them, the epochs recorded (the scale's 8
    were recorded while the runs trained 16)."""
    module = get_experiment(name)
    first = 1 if name == "batch_size" else 0  # rotation_pretext evaluates before training too
    for s in module.SETTINGS.values():
        assert first <= min(s.eval_epochs) and max(s.eval_epochs) <= s.epochs
        assert name != "batch_size" or max(s.eval_epochs) == s.epochs
    for epochs, eval_epochs in ((4, (2, 8)), (4, (first - 1, 4))):
        with pytest.raises(SSLKitError, match=r"eval_epochs \("):
            module.Settings(epochs=epochs, eval_epochs=eval_epochs)
    if name == "batch_size":
        with pytest.raises(SSLKitError, match="end at epochs=8"):
            module.Settings(epochs=8, eval_epochs=(2, 4))


def test_moco_vs_simclr_tables(ran):
    result, *_ = ran("moco_vs_simclr")
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
    result, *_ = ran("rotation_pretext")
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


def fail_one_line(argv, capsys) -> str:
    """The one-line error `sslkit ARGV` prints, checking it exits with 2 and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sslkit: error: ") and "\n" not in err
    return err


@pytest.fixture
def no_work(monkeypatch):
    """Make loading the data (the first piece of work of every experiment) fail the test."""
    for name in EXPERIMENTS:
        monkeypatch.setattr(get_experiment(name), "load_data",
                            lambda *_: pytest.fail("bad input must fail before any work"))


@pytest.mark.parametrize("held", ["results.json", "table.md"])
def test_an_out_folder_holding_results_is_refused_before_any_work(tmp_path, capsys, no_work,
                                                                    held):
    (tmp_path / held).write_text("an earlier run\n")
    err = fail_one_line(["experiment", "temperature", "--profile", "ci", "--out", str(tmp_path),
                         "--device", "cpu"], capsys)
    assert f"{tmp_path} already holds" in err and held in err and "--out" in err
    assert (tmp_path / held).read_text() == "an earlier run\n"  # nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == [held]


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys, no_work):
    (tmp_path / "x").write_text("")
    err = fail_one_line(["experiment", "batch_size", "--profile", "ci", "--out",
                         str(tmp_path / "x"), "--device", "cpu"], capsys)
    assert "is a file, not a folder" in err


@pytest.mark.parametrize("device", ["gpu", "meta", "cuda:7"])
def test_an_unknown_or_missing_device_is_refused(tmp_path, capsys, no_work, device):
    err = fail_one_line(["experiment", "loss_functions", "--profile", "ci", "--out",
                         str(tmp_path / "out"), "--device", device], capsys)
    assert repr(device) in err and "--device" in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_profile_is_refused(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setenv("SSLKIT_PROFILE", "huge")  # the default when --profile is left out
    err = fail_one_line(["experiment", "mae_mask_ratio", "--out", str(tmp_path / "out"),
                         "--device", "cpu"], capsys)
    assert "unknown profile 'huge'" in err and "ci or laptop or gpu" in err
    with pytest.raises(SSLKitError, match="unknown profile 'huge'"):
        run_experiment("temperature", "huge", tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()


def test_results_are_written_atomically(tmp_path, monkeypatch):
    """A write that fails part-way leaves the earlier files whole and no temporary file."""
    import matplotlib.pyplot as plt

    def result(value):
        return Result(name="t", title="T", profile="ci", columns=["a"], rows=[{"a": value}],
                      paper={"source": "s", "claim": "c"}, settings={}, out=str(tmp_path))

    result(1.0).write(plt.figure())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert json.loads(before["results.json"])["rows"] == [{"a": 1.0}]

    def replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        result(2.0).write(plt.figure())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


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
    result, *_ = ran("mae_mask_ratio")
    s = get_experiment("mae_mask_ratio").SETTINGS["ci"]
    rows = result["rows"]
    assert [r["mask ratio"] for r in rows] == list(s.mask_ratios)
    for r in rows:
        assert percent(r["kNN (%)"]) and percent(r["linear (%)"]) and percent(r["fine-tune (%)"])
        assert math.isfinite(r["final loss"]) and r["final loss"] > 0
    paper = {r["mask ratio"]: (r["paper linear (%)"], r["paper fine-tune (%)"]) for r in rows}
    assert paper[0.75] == (73.5, 84.9) and paper[0.5] == (None, None)


def test_mae_fine_tunes_with_the_recorded_steps_and_warm_up(monkeypatch):
    """fine_tune gets finetune_steps and finetune_warmup as recorded, in every profile (the ci
    profile recorded a warm-up of 30 steps and ran none: it was cut to a fifth of the steps)."""
    module = get_experiment("mae_mask_ratio")

    class Asked(Exception):
        pass

    def fine_tune(encoder, images, labels, **options):
        raise Asked(options)

    monkeypatch.setattr(module, "fine_tune", fine_tune)
    data = SimpleNamespace(train_x=None, train_y=None)
    for s in module.SETTINGS.values():
        with pytest.raises(Asked) as asked:
            module.fine_tune_accuracy(None, data, s)
        options = asked.value.args[0]
        assert (options["steps"], options["warmup_steps"]) == (s.finetune_steps,
                                                                s.finetune_warmup)
    with pytest.raises(SSLKitError, match="finetune_warmup=20 must lie in 0..finetune_steps=10"):
        module.Settings(finetune_steps=10, finetune_warmup=20)


def test_rotation_block_features_of_the_gpu_profile_resnet():
    """The block table (which depth transfers best) exists for the gpu profile's ResNet-18 too:
    the globally pooled output of each of its 4 stages, the first as computed by hand, the last
    the encoder's h."""
    from sslkit.evaluate import extract_features
    from sslkit.models import build_encoder

    module = get_experiment("rotation_pretext")
    torch.manual_seed(0)
    net = build_encoder(module.SETTINGS["gpu"].arch, 3).eval()
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    assert module.has_blocks(net)
    blocks = module.block_features(net, images, batch_size=4)  # two batches: 4 + 2 images
    assert [tuple(b.shape) for b in blocks] == [(6, 64), (6, 128), (6, 256), (6, 512)]
    with torch.no_grad():
        x = images.float() / 255
        first = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))).mean(dim=(2, 3))
    torch.testing.assert_close(blocks[0], first)
    torch.testing.assert_close(blocks[-1], extract_features(net, images))
