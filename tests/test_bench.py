"""`sslkit bench` at tiny size on the CPU: the table's structure, the ratios computed from the
measured figures, lightly skipped with instructions when it is missing, and the lightly
pipeline wired as it should be (with a stand-in lightly module)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types

import pytest
import torch
from host_sync import copies_must_not_wait

from sslkit import bench
from sslkit.augment import view_config_for, view_transform
from sslkit.cli import main
from sslkit.errors import SSLKitError
from sslkit.losses import nt_xent

TINY = ["--device", "cpu", "--size", "tiny", "--batch", "8", "--steps", "1", "--warmup", "0",
        "--workers", "0"]


def test_ratios_from_the_measured_figures():
    results = [bench.Result("a", "", 300.0, None), bench.Result("b", "", 100.0, None),
               bench.Result("c", "", 120.0, None), bench.Result("d", "", 320.0, None)]
    assert bench.ratios(results) == pytest.approx({"a/c": 2.5, "a/d": 0.9375})
    results[2] = bench.Result("c", "lightly", None, None, bench.LIGHTLY_HINT)
    assert bench.ratios(results)["a/c"] is None
    table = bench.format_table(results)
    assert "a/c: n/a" in table and "a/d: 0.94" in table and "skipped" in table


def test_cli_prints_the_table_and_skips_lightly_with_instructions(capsys, monkeypatch):
    monkeypatch.setattr(bench, "lightly_available", lambda: False)
    assert main(["bench", *TINY]) == 0
    out = capsys.readouterr().out
    rows = {m[0]: float(m[1]) for m in re.findall(r"^\(([abd])\) .*?\s([\d.]+)\s+-$", out, re.M)}
    assert set(rows) == {"a", "b", "d"} and all(v > 0 for v in rows.values())
    assert re.search(r"^\(c\) lightly\s+skipped", out, re.M)
    assert "pip install lightly kornia -e ." in out and "a/c: n/a" in out
    assert "size tiny, CPU" in out  # the device's name (an H100's on CUDA), not the flag
    a_d = float(re.search(r"^a/d: ([\d.]+)$", out, re.M)[1])
    assert a_d == pytest.approx(rows["a"] / rows["d"], rel=0.02, abs=0.006)  # printed rounded


def _fake_lightly(monkeypatch):
    """A stand-in for lightly's two pieces: a per-image two-view transform on PIL images and
    an NT-Xent module, enough to check that (c) is wired and measured."""
    seen = {"transform": 0, "loss": 0}
    tf = view_transform(view_config_for("cifar10"))

    class SimCLRTransform:
        def __init__(self, input_size, cj_strength, gaussian_blur, min_scale):
            assert (input_size, cj_strength, gaussian_blur, min_scale) == (32, 0.5, 0.0, 0.08)

        def __call__(self, image):
            assert not isinstance(image, torch.Tensor)  # lightly works on PIL images
            seen["transform"] += 1
            return [tf(image), tf(image)]

    class NTXentLoss(torch.nn.Module):
        def __init__(self, temperature):
            super().__init__()
            self.temperature = temperature

        def forward(self, z1, z2):
            seen["loss"] += 1
            return nt_xent(z1, z2, self.temperature)

    root = types.ModuleType("lightly")
    loss, transforms = types.ModuleType("lightly.loss"), types.ModuleType("lightly.transforms")
    loss.NTXentLoss, transforms.SimCLRTransform = NTXentLoss, SimCLRTransform
    root.loss, root.transforms = loss, transforms
    for name, module in (("lightly", root), ("lightly.loss", loss),
                         ("lightly.transforms", transforms)):
        monkeypatch.setitem(sys.modules, name, module)
    return seen


def test_lightly_pipeline_is_measured_when_importable(monkeypatch):
    seen = _fake_lightly(monkeypatch)
    assert bench.lightly_available()
    results = bench.run_bench("cpu", batch=8, steps=1, size="tiny", warmup=0, workers=0)
    assert [r.name for r in results] == ["a", "b", "c", "d"]
    assert all(r.images_per_s > 0 and r.peak_mib is None for r in results)  # no CUDA peak on CPU
    assert seen["loss"] == 1 and seen["transform"] >= 8
    r = bench.ratios(results)
    assert r["a/c"] == pytest.approx(results[0].images_per_s / results[2].images_per_s)


def test_bad_size_is_a_one_line_error():
    with pytest.raises(SSLKitError, match="tiny, full"):
        bench.run_bench("cpu", size="huge")


@pytest.mark.parametrize("option, value, message", [
    ("--batch", "1", "--batch must be 2 or more (got 1)"),
    ("--steps", "0", "--steps must be 1 or more (got 0)"),
    ("--warmup", "-1", "--warmup must be 0 or more (got -1)"),
    ("--workers", "-1", "--workers must be 0 or more (got -1)"),
])
def test_counts_out_of_range_are_one_line_errors(capsys, option, value, message):
    args = TINY.copy()
    args[args.index(option) + 1] = value
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_views_bench_checks_its_counts_too():
    from sslkit.bench_views import run_views_bench

    with pytest.raises(SSLKitError, match="--steps must be 1 or more"):
        run_views_bench(torch.device("cpu"), batch=4, steps=0, warmup=0)


def test_asking_for_a_missing_library_says_how_to_install_it(monkeypatch):
    from sslkit import bench_views

    monkeypatch.setattr(bench, "lightly_available", lambda: False)
    monkeypatch.setattr(bench_views, "kornia_available", lambda: False)
    with pytest.raises(SSLKitError, match="pip install lightly kornia"):
        bench.run_bench("cpu", batch=8, steps=1, size="tiny", warmup=0, workers=0, lightly=True)
    with pytest.raises(SSLKitError, match="make bench"):
        bench_views.run_views_bench(torch.device("cpu"), batch=4, steps=1, warmup=0, kornia=True)


# ---------------------------------------------------------------------------------------------
# The second table: which implementation makes the views


def _fake_kornia(monkeypatch):
    """A stand-in for kornia.augmentation that records each transform's arguments (each stage
    is the identity), enough to check that (v2) is built from the recipe and measured."""
    built = []

    def transform(name):
        def make(*args, **kwargs):
            built.append((name, args, kwargs))
            return torch.nn.Identity()
        return make

    augmentation = types.ModuleType("kornia.augmentation")
    for name in ("RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale",
                 "RandomGaussianBlur", "RandomSolarize"):
        setattr(augmentation, name, transform(name))
    augmentation.AugmentationSequential = lambda *stages: torch.nn.Sequential(*stages)
    root = types.ModuleType("kornia")
    root.augmentation = augmentation
    monkeypatch.setitem(sys.modules, "kornia", root)
    monkeypatch.setitem(sys.modules, "kornia.augmentation", augmentation)
    return built


def test_kornia_pipeline_draws_from_the_recipe(monkeypatch):
    from sslkit.augment import ViewConfig
    from sslkit.bench_views import kornia_views

    built = _fake_kornia(monkeypatch)
    kornia_views(view_config_for("cifar10"))
    assert built == [
        ("RandomResizedCrop", ((32, 32),), {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}),
        ("RandomHorizontalFlip", (), {"p": 0.5}),
        ("ColorJitter", (0.4, 0.4, 0.4, 0.1), {"p": 0.8}),  # strength 0.5: 0.8s, 0.8s, 0.8s, 0.2s
        ("RandomGrayscale", (), {"p": 0.2}),
    ]
    built.clear()  # STL-10's recipe adds blur with SimCLRViews' sigma range and support
    kornia_views(ViewConfig(size=96, blur_p=0.5, jitter_strength=1.0, solarize_p=0.2))
    blur = built[4]
    assert blur[0] == "RandomGaussianBlur" and blur[2]["p"] == 0.5
    assert blur[1][1] == pytest.approx((0.1 * 96 / 224, 2.0 * 96 / 224))
    assert blur[1][0] == (5, 5)  # sigma_max 0.857 px: radius ceil(2 * 0.857) = 2, 2 * 2 + 1
    assert built[2][1] == (0.8, 0.8, 0.8, 0.2)
    assert built[5] == ("RandomSolarize", (), {"thresholds": 0.0, "additions": 0.0, "p": 0.2})


def test_views_table_measures_each_implementation(monkeypatch):
    from sslkit.bench_views import format_views_table, run_views_bench

    _fake_kornia(monkeypatch)
    results = run_views_bench(torch.device("cpu"), batch=4, steps=1, warmup=0)
    assert [r.name for r in results] == ["v1", "v2", "v3"]
    assert all(r.images_per_s > 0 for r in results)
    table = format_views_table(results)
    v1_v3 = results[0].images_per_s / results[2].images_per_s
    assert f"v1/v3: {v1_v3:.2f}" in table
    skipped = run_views_bench(torch.device("cpu"), batch=4, steps=1, warmup=0, kornia=False)
    table = format_views_table(skipped)
    assert "v1/v2: n/a" in table and "make bench" in table and "skipped" in table


def test_cli_prints_the_views_table(capsys, monkeypatch):
    monkeypatch.setattr(bench, "lightly_available", lambda: False)
    from sslkit import bench_views

    monkeypatch.setattr(bench_views, "kornia_available", lambda: False)
    assert main(["bench", *TINY]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\(v1\) sslkit batched ops\s+[\d.]+", out, re.M)
    assert re.search(r"^\(v3\) torchvision per image .*\s[\d.]+\s+-$", out, re.M)
    assert re.search(r"^\(v2\) kornia.augmentation\s+skipped", out, re.M)


def test_device_path_batches_are_a_permutation_per_pass_sent_without_waiting():
    """(a) draws its batches as training does: each pass over the images is a permutation,
    copied to the device once and never by a blocking copy (which would stall the GPU at every
    step and measure a slowdown that training does not have)."""
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2)
    batches = bench._random_batches(images, 8)
    passes = [[next(batches) for _ in range(2)] for _ in range(3)]  # 20 // 8 = 2 batches a pass
    seen = []
    for first, second in passes:
        ids = torch.cat([first[:, 0, 0, 0], second[:, 0, 0, 0]]).tolist()
        assert len(set(ids)) == 16 and set(ids) <= set(range(20))  # no image twice in a pass
        seen.append(ids)
    assert seen[0] != seen[1]  # a new permutation each pass
    with copies_must_not_wait():
        on_meta = bench._random_batches(torch.empty(20, 3, 2, 2, dtype=torch.uint8,
                                                    device="meta"), 8)
        assert [next(on_meta).shape for _ in range(3)] == [torch.Size([8, 3, 2, 2])] * 3


def _arms_seen(monkeypatch):
    """Spy on run_bench: each arm's untimed warm-up steps, and the layout and dtype of the
    views each arm's network is given."""
    from sslkit.methods import SimCLR

    seen = {"warmup": {}, "views": {}}
    measure, embed = bench._measure, SimCLR.embed

    def spy_measure(name, label, batches, step, batch, steps, warmup, device):
        seen["warmup"][name] = warmup
        seen["arm"] = name
        return measure(name, label, batches, step, batch, steps, warmup, device)

    def spy_embed(self, v):
        layout = "channels_last" if v.is_contiguous(memory_format=torch.channels_last) else (
            "contiguous" if v.is_contiguous() else "strided")
        seen["views"].setdefault(seen["arm"], set()).add((layout, v.dtype))
        return embed(self, v)

    monkeypatch.setattr(bench, "_measure", spy_measure)
    monkeypatch.setattr(SimCLR, "embed", spy_embed)
    return seen


def test_dataloader_arms_do_not_time_the_batches_their_workers_made_in_advance(monkeypatch):
    """While the warm-up runs (cuDNN's search, torch.compile) a DataLoader's workers fill their
    stock of workers x prefetch_factor batches; timing from there would credit (b) and (c) with
    batches made before the timer started. They take that stock untimed; (a) and (d) have none."""
    _fake_lightly(monkeypatch)
    seen = _arms_seen(monkeypatch)
    bench.run_bench("cpu", batch=8, steps=1, size="tiny", warmup=1, workers=2)
    assert seen["warmup"] == {"a": 1, "b": 1 + 2 * 2, "c": 1 + 2 * 2, "d": 1}


def test_the_ceiling_gets_its_views_as_the_device_path_does(monkeypatch):
    """(d) is (a) without making the views: the network must see the same layout and dtype,
    or a/d compares two different forward passes."""
    monkeypatch.setattr(bench, "lightly_available", lambda: False)
    seen = _arms_seen(monkeypatch)
    bench.run_bench("cpu", batch=8, steps=1, size="tiny", warmup=1, workers=0)
    assert seen["views"]["d"] == seen["views"]["a"] == seen["views"]["b"]


class _BrokenImport:
    """A meta path finder: importing `package` fails with `error`, as a lightly or kornia that
    lacks one of its carried dependencies, or was built for another torch, fails."""

    def __init__(self, error: Exception, package: str = "lightly"):
        self.error, self.package = error, package

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == self.package:
            raise self.error
        return None


@pytest.mark.parametrize("where, error, shown", [
    ("import", RuntimeError("operator torchvision::nms does not exist"), "RuntimeError"),
    ("import", ModuleNotFoundError("No module named 'hydra'", name="hydra"),
     "ModuleNotFoundError"),
    ("step", RuntimeError("CUDA error: an illegal memory access was encountered"),
     "RuntimeError"),
])
def test_a_lightly_that_breaks_costs_only_its_own_row(monkeypatch, where, error, shown):
    """On the device machine lightly comes from carried wheels: if it fails to import or to
    run there, (c) says why (not that lightly is missing) and (a), (b), (d) are still
    measured."""
    if where == "import":
        for name in [m for m in sys.modules if m.split(".")[0] == "lightly"]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(sys, "meta_path", [_BrokenImport(error), *sys.meta_path])
    else:
        _fake_lightly(monkeypatch)

        def broken(self, z1, z2):
            raise error
        monkeypatch.setattr(sys.modules["lightly.loss"].NTXentLoss, "forward", broken)
    results = bench.run_bench("cpu", batch=8, steps=1, size="tiny", warmup=0, workers=0)
    assert [r.name for r in results] == ["a", "b", "c", "d"]
    c = results[2]
    assert c.images_per_s is None and c.note.startswith(f"lightly failed: {shown}: ")
    assert str(error) in c.note
    assert all(r.images_per_s > 0 for r in results if r.name != "c")
    assert f"(c) lightly failed: {shown}" in bench.format_table(results)


def test_lightly_that_is_not_installed_is_only_skipped(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "lightly"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BrokenImport(ModuleNotFoundError(
        "No module named 'lightly'", name="lightly")), *sys.meta_path])
    assert not bench.lightly_available()


def test_each_arm_is_measured_without_the_last_arms_network_or_loader(monkeypatch):
    """An arm's peak memory on a GPU is what is allocated while it runs: a network, gradients,
    momentum or batch of an arm before it that is still alive then counts in its peak, and the
    workers of a DataLoader still alive compete for the CPU. Each arm's are freed before the
    next arm is measured."""
    import weakref

    _fake_lightly(monkeypatch)
    made, loaders, alive = [], [], {}
    simclr, loader_batches, measure = bench._simclr, bench._loader_batches, bench._measure

    def spy_simclr(*args, **kwargs):
        method, optimizer = simclr(*args, **kwargs)
        made.append(weakref.ref(method))
        return method, optimizer

    def spy_loader_batches(*args, **kwargs):
        batches, ahead = loader_batches(*args, **kwargs)
        loaders.append(weakref.ref(batches))
        return batches, ahead

    def spy_measure(name, *args):
        # no gc.collect(): memory must go back when the last reference does, not at a later
        # garbage collection, or it is still allocated while this arm runs
        alive[name] = ([i for i, ref in enumerate(made[:-1]) if ref() is not None],
                       [i for i, ref in enumerate(loaders) if ref() is not None])
        return measure(name, *args)

    monkeypatch.setattr(bench, "_simclr", spy_simclr)
    monkeypatch.setattr(bench, "_loader_batches", spy_loader_batches)
    monkeypatch.setattr(bench, "_measure", spy_measure)
    bench.run_bench("cpu", batch=8, steps=1, size="tiny", warmup=0, workers=0)
    # (networks of the arms before, DataLoaders) alive while an arm is measured: only its own
    assert alive == {"a": ([], []), "b": ([], [0]), "c": ([], [1]), "d": ([], [])}


@pytest.mark.parametrize("where, error, shown", [
    ("import", RuntimeError("operator torchvision::nms does not exist"), "RuntimeError"),
    ("import", ModuleNotFoundError("No module named 'kornia_rs'", name="kornia_rs"),
     "ModuleNotFoundError"),
    ("run", RuntimeError("CUDA error: an illegal memory access was encountered"),
     "RuntimeError"),
])
def test_a_kornia_that_breaks_costs_only_its_own_row(monkeypatch, where, error, shown):
    """kornia, like lightly, comes from carried wheels on the device machine: if it fails to
    import or to run there, (v2) says why, and (v1) and (v3) are still measured (the whole
    views table was lost, and `sslkit bench` failed after its first table)."""
    from sslkit import bench_views

    if where == "import":
        for name in [m for m in sys.modules if m.split(".")[0] == "kornia"]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(sys, "meta_path", [_BrokenImport(error, "kornia"), *sys.meta_path])
    else:
        _fake_kornia(monkeypatch)

        class Broken(torch.nn.Module):
            def forward(self, x):
                raise error
        monkeypatch.setattr(sys.modules["kornia.augmentation"], "AugmentationSequential",
                            lambda *stages: Broken())
    results = bench_views.run_views_bench(torch.device("cpu"), batch=4, steps=1, warmup=0)
    assert [r.name for r in results] == ["v1", "v2", "v3"]
    v2 = results[1]
    assert v2.images_per_s is None and v2.note.startswith(f"kornia failed: {shown}: ")
    assert str(error) in v2.note
    assert all(r.images_per_s > 0 for r in results if r.name != "v2")
    assert f"(v2) kornia failed: {shown}" in bench_views.format_views_table(results)


def test_kornia_that_is_not_installed_is_only_skipped(monkeypatch):
    from sslkit import bench_views

    for name in [m for m in sys.modules if m.split(".")[0] == "kornia"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BrokenImport(ModuleNotFoundError(
        "No module named 'kornia'", name="kornia"), "kornia"), *sys.meta_path])
    assert not bench_views.kornia_available()
    results = bench_views.run_views_bench(torch.device("cpu"), batch=4, steps=1, warmup=0)
    assert results[1].images_per_s is None and results[1].note == bench_views.KORNIA_HINT


def test_a_row_that_crashes_leaves_the_rows_before_it_printed(capsys, monkeypatch):
    """On the device machine the bench is one step of one short call: a crash in (d) (or the
    step's time limit reached there) lost the figures of (a)-(c), printed only as one table at
    the end. Each row is now printed as it is measured."""
    real_measure = bench._measure

    def measure(name, *args, **kwargs):
        if name == "d":
            raise RuntimeError("CUDA out of memory")
        return real_measure(name, *args, **kwargs)

    monkeypatch.setattr(bench, "_measure", measure)
    monkeypatch.setattr(bench, "lightly_available", lambda: False)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["bench", "--device", "cpu", "--size", "tiny", "--batch", "8", "--steps", "1",
              "--warmup", "0", "--workers", "0"])
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(")")[0] for line in printed] == ["measured (a", "measured (b",
                                                        "measured (c"]
    assert re.fullmatch(r"measured \(a\) sslkit, device path: \d+\.\d images/s", printed[0])
    assert printed[2].endswith(": skipped")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_the_default_workers_count_the_cores_this_process_may_use():
    """Pinned to one core (as a container or taskset does), the benchmark's default DataLoader
    workers and the report's machine line see 1 core, not the host's count."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "from sslkit.cores import usable_cpus; from sslkit.experiments.report import machine\n"
            "print(usable_cpus(), os.cpu_count(), machine('cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=2)
    assert out[0] == "1" and out[2].startswith("1-core CPU")  # os.cpu_count() says out[1]
