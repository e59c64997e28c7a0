"""The training step in one process: gradient accumulation (the moving averages, MoCo's queue
and DINO's centre move once per optimiser step, and k micro-batches give the step of one big
batch), DINO's schedules span the run's real number of steps, the DataLoader path, the compile
option, and the batch-split check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.errors import SSLKitError
from sslkit.methods import DINO, MoCo
from sslkit.methods.dino import MultiCropViews
from sslkit.profiles import get_profile
from sslkit.train import TrainConfig, step_batches, train, train_step

N = 8


class Flat(nn.Module):
    """A BatchNorm-free encoder (BatchNorm would see other statistics per micro-batch)."""

    def __init__(self, pixels: int = 64, feature_dim: int = 6):
        super().__init__()
        self.feature_dim = feature_dim
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, feature_dim), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _moco() -> MoCo:
    torch.manual_seed(0)
    return MoCo(Flat(), SimCLRViews(ViewConfig(size=8)), head="linear", proj_dim=4,
                queue_size=4 * N, momentum=0.9)


def _dino() -> DINO:
    torch.manual_seed(0)
    views = MultiCropViews(ViewConfig(size=8), n_local=1, local_size=4)

    class Multi(Flat):  # global 8x8 and local 4x4 crops: pool to 4x4 first
        def forward(self, x):
            return super().forward(nn.functional.adaptive_avg_pool2d(x, 4))

    return DINO(Multi(16), views, out_dim=5, hidden_dim=8, bottleneck_dim=3, total_steps=10)


def _views(step: int):
    g = torch.Generator().manual_seed(step)
    return [torch.rand(N, 1, 8, 8, generator=g), torch.rand(N, 1, 8, 8, generator=g)]


def _crops(step: int):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.rand(N, 1, 8, 8, generator=g) for _ in range(2)] + [
        torch.rand(N, 1, 4, 4, generator=g)]


def _halves(inputs):
    return [[v[: N // 2] for v in inputs], [v[N // 2 :] for v in inputs]]


def _counting(method):
    calls = []
    original = method.momentum_update
    method.momentum_update = lambda: (calls.append(1), original())
    return calls


@pytest.mark.parametrize("make,inputs", [(_moco, _views), (_dino, _crops)])
def test_accumulation_moves_the_average_once_per_step_and_equals_one_big_batch(make, inputs):
    whole, split = make(), make()
    calls_whole, calls_split = _counting(whole), _counting(split)
    opt_whole = torch.optim.SGD(whole.parameters(), lr=0.3)
    opt_split = torch.optim.SGD(split.parameters(), lr=0.3)
    for step in range(3):
        loss_whole = train_step(whole, opt_whole, [inputs(step)])
        loss_split = train_step(split, opt_split, _halves(inputs(step)))
        assert torch.allclose(loss_whole, loss_split, atol=1e-6)
    # one EMA update per optimiser step, not per micro-batch (the REFERENCE pitfall)
    assert len(calls_whole) == len(calls_split) == 3
    for (name, a), b in zip(whole.state_dict().items(), split.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name  # weights, EMA, queue/centre
    if isinstance(whole, DINO):
        assert int(split.step) == 3


def test_step_batches_split_the_global_batch():
    cfg = TrainConfig(batch_size=8, accumulate=2)
    order = torch.arange(20).flip(0)
    parts = step_batches(order, 1, cfg)
    assert [p.tolist() for p in parts] == [[11, 10, 9, 8], [7, 6, 5, 4]]


def _cfg(**overrides) -> TrainConfig:
    base = dict(n_train=64, n_test=32, epochs=2, batch_size=16, warmup_epochs=0, device="cpu")
    return TrainConfig.from_profile(get_profile("ci"), **{**base, **overrides})


def test_dino_schedules_span_the_real_number_of_steps(tmp_path):
    cfg = _cfg(method="dino", arch="vit", accumulate=2, n_train=32)
    method, _ = train(cfg, tmp_path / "run", progress=False)
    steps = cfg.epochs * (32 // cfg.batch_size)  # 4 optimiser steps (the default was 1000)
    assert len(method.momentums) == len(method.teacher_temps) == steps
    assert int(method.step) == steps  # counted per optimiser step, not per micro-batch (8)
    assert method.momentums[-1] == pytest.approx(1.0)  # the teacher momentum reaches 1 at the end


@pytest.mark.parametrize("method,workers", [("simclr", 0), ("moco", 1), ("dino", 0)])
def test_dataloader_path_trains(tmp_path, method, workers):
    extra = {"arch": "vit"} if method == "dino" else {}
    cfg = _cfg(method=method, loader="dataloader", workers=workers, epochs=1, **extra)
    _, rows = train(cfg, tmp_path / "run", progress=False)
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["loss"]))


def test_compile_option_compiles_encoder_and_head(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    method, _ = train(_cfg(compile=True, epochs=1), tmp_path / "run", progress=False)
    assert compiled == [method.encoder, method.head]


@pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"), reason="needs torch >= 2.6")
def test_the_knn_monitor_adds_no_compiled_graph(tmp_path, monkeypatch):
    """--compile with --knn-every: the monitor's eval mode and its last, shorter batches would
    each make torch.compile trace the encoder again (a recompile per run, minutes at full
    size); it runs the encoder eagerly, so the run traces the same graphs as without it."""
    from torch._dynamo.utils import counters

    eager_backend = nn.Module.compile  # dynamo traces and guards as always, compiles nothing
    monkeypatch.setattr(nn.Module, "compile", lambda self: eager_backend(self, backend="eager"))
    graphs = {}
    for every in (0, 1):
        torch._dynamo.reset()
        counters.clear()
        cfg = _cfg(compile=True, knn_every=every, n_train=48, n_test=40, batch_size=16)
        _, rows = train(cfg, tmp_path / f"every{every}", progress=False)
        graphs[every] = counters["stats"]["unique_graphs"]
    assert "knn" in rows[-1] and graphs[1] == graphs[0] > 0


def test_the_knn_monitor_votes_on_the_encoders_device(monkeypatch):
    """The monitor's features are not copied to the CPU for the vote (seconds per check at
    CIFAR-10's size there, milliseconds on a GPU); the meta device stands in for a GPU."""
    import sslkit.train as train_module
    from sslkit.data import ImageData

    votes = []
    monkeypatch.setattr(train_module, "knn_accuracy", lambda train_f, train_y, test_f, test_y,
                        k: votes.append((train_f.device.type, test_f.device.type, k)) or 0.5)
    images = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    data = ImageData("toy", images, labels, images[:4], labels[:4], classes=["a", "b"])
    assert train_module.monitor_knn(Flat().to("meta"), data, k=3) == 0.5
    assert votes == [("meta", "meta", 3)]


@pytest.mark.parametrize("overrides,fix", [({"batch_size": 15, "accumulate": 2}, "divisible by 2"),
                                           ({"accumulate": 0}, "--accumulate 1"),
                                           ({"loader": "disk"}, "device, dataloader")])
def test_bad_split_or_loader_is_a_one_line_error(tmp_path, overrides, fix):
    with pytest.raises(SSLKitError, match=fix) as info:
        train(_cfg(**overrides), tmp_path / "run", progress=False)
    assert "\n" not in str(info.value)
