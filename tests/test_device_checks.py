"""tests/gpu/device_checks.py, the prepared GPU run, works before it costs device time: the kit's
repacking keeps every byte, the deadline and the step limits hold, a call that ran out resumes
its run, and the whole run goes through on the CPU at the smallest sizes (--tiny)."""

from __future__ import annotations

import importlib.util
import io
import json
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).parent / "gpu" / "device_checks.py"
spec = importlib.util.spec_from_file_location("device_checks", SCRIPT)
checks = importlib.util.module_from_spec(spec)
sys.modules["device_checks"] = checks  # dataclasses look their module up there
spec.loader.exec_module(checks)


def jpeg(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def cifar_like_zip(path: Path, per_class: dict[str, int]) -> dict[str, bytes]:
    """A zip laid out as ../shared/data/cifar10-jpeg.zip: cifar10/<split>/<class>/NNNN.jpg."""
    files = {}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("cifar10/", b"")
        for split, n in per_class.items():
            for c in ("cat", "dog"):
                z.writestr(f"cifar10/{split}/{c}/", b"")
                for i in range(n):
                    name = f"cifar10/{split}/{c}/{i:04d}.jpg"
                    files[name] = jpeg(len(files))
                    z.writestr(name, files[name])
    return files


def test_repacking_keeps_every_file_byte_for_byte(tmp_path):
    files = cifar_like_zip(tmp_path / "data.zip", {"train": 3, "test": 2})
    assert checks.repack_zip(tmp_path / "data.zip", tmp_path / "data.tar.xz") == len(files)
    with tarfile.open(tmp_path / "data.tar.xz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert {n for n, m in members.items() if m.isfile()} == set(files)
        for name, data in files.items():
            assert tar.extractfile(members[name]).read() == data
        assert members["cifar10/train/cat"].isdir()
    assert not list(tmp_path.glob("*.partial"))  # renamed into place


def runner(tmp_path, deadline):
    return checks.Runner(tmp_path, deadline, env={"PATH": "/usr/bin:/bin"})


def test_a_step_past_its_limit_is_stopped_and_the_next_runs(tmp_path):
    r = runner(tmp_path, deadline=300)
    sleeper = checks.Step("sleep", [sys.executable, "-c", "import time; time.sleep(120)"], 10)
    begun = time.monotonic()
    assert r.run(sleeper).status == "stopped at its limit (10 s)"
    assert time.monotonic() - begun < 40
    echo = r.run(checks.Step("echo", [sys.executable, "-c", "print('still here')"], 30))
    assert echo.status == "ok" and echo.output == ["still here"]
    failing = r.run(checks.Step("fail", [sys.executable, "-c", "raise SystemExit(3)"], 30))
    assert failing.status == "failed (exit 3)"
    summary = (tmp_path / "summary.md").read_text()
    assert "| sleep | stopped at its limit (10 s) |" in summary and "| echo | ok |" in summary
    assert "still here" in (tmp_path / "logs.txt").read_text()


def test_a_step_that_would_end_past_the_deadline_is_cut_or_skipped(tmp_path):
    """A step is cut at the deadline, less the time kept for the last step, `results`: a
    training run that reaches the deadline (the usual end of call 1) leaves the table of the
    runs its time, since the checkpoints that `sslkit results` reads stay on the machine."""
    r = runner(tmp_path, deadline=checks.RESERVE_S + checks.RESULTS_S + 12)  # 12 s for steps
    first = r.run(checks.Step("long", [sys.executable, "-c", "import time; time.sleep(60)"], 1e9))
    assert first.status.startswith("stopped at its limit") and first.seconds < 30
    second = r.run(checks.Step("next", [sys.executable, "-c", "pass"], 60))
    assert second.status == "skipped: no time left before the deadline"
    results = r.run(checks.Step("results", [sys.executable, "-c", "print('| simclr |')"], 60))
    assert results.status == "ok" and results.output == ["| simclr |"]


def test_a_step_stops_at_sigint_even_when_the_script_ignores_it(tmp_path):
    """Started in the background, the script and its steps inherited SIGINT ignored: the
    step's SIGINT did nothing (no KeyboardInterrupt, so training saved no epoch) and it was
    killed 15 s later."""
    r = runner(tmp_path, deadline=checks.RESERVE_S + checks.RESULTS_S + 12)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup ... &` leaves it
    try:
        step = r.run(checks.Step("long", [sys.executable, "-c", "import time\ntry:\n "
                                          "time.sleep(60)\nexcept KeyboardInterrupt:\n "
                                          "print('saved')"], 1e9))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert step.status.startswith("stopped at its limit") and step.seconds < 14
    assert step.output == ["saved"]


def test_a_run_left_by_an_earlier_call_is_resumed(tmp_path):
    runs = tmp_path / "runs"
    (fresh,) = checks.plan(["simclr"], False, tmp_path / "cifar10", runs, 20)
    assert "--resume" not in fresh.command and "--knn-every" in fresh.command
    assert fresh.command[fresh.command.index("--profile") + 1] == "gpu"
    (runs / "simclr").mkdir(parents=True)
    (runs / "simclr" / "last.pt").write_bytes(b"")
    (again,) = checks.plan(["simclr"], False, tmp_path / "cifar10", runs, 20)
    assert again.command[-1] == "--resume"
    (moco,) = checks.plan(["moco"], False, tmp_path / "cifar10", runs, 7)
    assert moco.command[moco.command.index("--epochs") + 1] == "7"
    with pytest.raises(SystemExit, match="unknown step 'simcrl'"):
        checks.plan(["simcrl"], False, None, runs, 20)


def test_the_whole_run_goes_through_on_the_cpu_at_the_smallest_sizes(tmp_path):
    cifar_like_zip(tmp_path / "data.zip", {"train": 40, "test": 16})
    checks.repack_zip(tmp_path / "data.zip", tmp_path / "data.tar.xz")
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "run", "--tiny", "--deadline", "400",
               "--out", str(out), "--data", str(tmp_path / "data.tar.xz"),
               "--wheels", str(tmp_path / "no-wheels"), "--runs", str(tmp_path / "runs"),
               "--unpack-to", str(tmp_path / "unpacked"), "tests", "bench", "simclr"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    summary = (out / "summary.md").read_text()
    assert done.returncode == 0, summary + (out / "logs.txt").read_text()[-3000:]
    for step in ("data", "env", "tests", "bench", "simclr", "results"):
        assert f"| {step} | ok |" in summary, step
    assert "(a) sslkit, device path" in summary and "a/d:" in summary  # the bench table
    assert "| simclr | convnet-small | 2 |" in summary  # the results row
    with tarfile.open(out / "runs.tar.gz") as tar:
        rows = [json.loads(line) for line in
                tar.extractfile("simclr/metrics.jsonl").read().decode().splitlines()]
        assert "simclr/run.json" in tar.getnames()
    assert [r["epoch"] for r in rows] == [1, 2] and 0 <= rows[-1]["knn"] <= 1


def test_a_training_steps_metrics_are_packed_before_the_next_step(tmp_path, monkeypatch):
    """runs.tar.gz is written after every training step, not only at the end: a call killed
    later (the device tool's own limit) still brings back the finished run's metrics."""
    runs, out = tmp_path / "runs", tmp_path / "out"

    def fake_run(self, step):
        if step.name == "simclr":  # the run as sslkit train leaves it
            (runs / "simclr").mkdir(parents=True)
            for name, text in (("last.pt", ""), ("metrics.jsonl", '{"epoch": 1}\n'),
                               ("run.json", "{}")):
                (runs / "simclr" / name).write_text(text)
        if step.name == "results":
            raise KeyboardInterrupt  # the call is killed here
        step.status = "ok"
        return step

    monkeypatch.setattr(checks.Runner, "run", fake_run)
    with pytest.raises(KeyboardInterrupt):
        checks.main(["run", "simclr", "--out", str(out), "--runs", str(runs),
                     "--data", str(tmp_path / "none.tar.xz"), "--wheels", str(tmp_path)])
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["simclr/metrics.jsonl", "simclr/run.json"]
        assert tar.extractfile("simclr/metrics.jsonl").read() == b'{"epoch": 1}\n'
    assert not list(out.glob("*.partial"))


@pytest.mark.parametrize("name", ["bench", "compile", "simclr", *checks.METHOD_STEPS])
def test_the_commands_only_the_gpu_runs_are_ones_sslkit_accepts(tmp_path, monkeypatch, name):
    """The full-size commands never run on the CPU: sslkit's own parser reads each, and a
    training command is checked by train() as far as loading the data (here on the CPU)."""
    from sslkit import cli
    from sslkit import train as train_module

    data_root = tmp_path / "cifar10"
    (step,) = checks.plan([name], False, data_root, tmp_path / "runs", 20)
    assert step.command[:3] == [sys.executable, "-m", "sslkit"]
    argv = step.command[3:]
    args = cli.build_parser().parse_args(argv)
    assert args.device == "cuda"
    if args.command == "bench":
        assert (args.size, args.batch, args.compile) == ("full", 512, name == "compile")
        assert args.workers >= 1
        return

    class Loading(Exception):
        pass

    def load_data(cfg, unlabeled=True):
        raise Loading(cfg)

    monkeypatch.setattr(train_module, "load_data", load_data)
    argv[argv.index("--device") + 1] = "cpu"
    with pytest.raises(Loading) as reached:
        cli.main(argv)
    cfg = reached.value.args[0]
    assert (cfg.method, cfg.dataset, cfg.data_root) == (name, "folder", str(data_root))
    assert (cfg.epochs, cfg.knn_every) == ((100, 25) if name == "simclr" else (20, 20))
    # a shortened run warms up for the same share as the recipe: 10 of 100 epochs -> 2 of 20
    # (it kept 10, half the run); MoCo's recipe has no warm-up
    assert cfg.warmup_epochs == {"simclr": 10, "moco": 0}.get(name, 2)
