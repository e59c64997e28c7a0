"""What only a real GPU can show: these run where CUDA is available (the device checks,
tests/gpu/device_checks.py) and are skipped elsewhere.

* No training step makes the host wait: PyTorch's sync debug mode turns every synchronising
  call (a host read of a device value, a blocking copy) into an error. tests/test_no_host_sync.py
  checks the same on the meta device on every machine; this is the real thing.
* The views are the same on the GPU as on the CPU: their random parameters come from the same
  CPU generator, so only floating-point rounding may differ.
* One float32 training step on the GPU gives the CPU's loss and weights; a bfloat16 autocast
  step stays close to it; torch.compile gives the eager loss.
* The training loop and the benchmark run end to end on the GPU; the kNN monitor votes there
  and gets the CPU's accuracy.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.methods import METHODS, MultiCropViews, build_method
from sslkit.profiles import get_profile
from sslkit.train import TrainConfig, make_optimizer, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = get_profile("gpu")
CUDA = torch.device("cuda")
BATCH = 64  # the full-size networks at a smaller batch: seconds per method


@contextlib.contextmanager
def syncs_are_errors():
    """Every call that makes the host wait for the GPU raises inside this block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture
def exact_float32():
    """float32 convolutions and matrix products without TF32, the same on every run."""
    cudnn = torch.backends.cudnn
    saved = (cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic,
             torch.get_float32_matmul_precision())
    cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = False, False, True
    torch.set_float32_matmul_precision("highest")
    yield
    cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved[:3]
    torch.set_float32_matmul_precision(saved[3])


def full_size_method(method: str, seed: int = 0, **overrides):
    """The method with its full-size recipe (gpu profile), freshly built from `seed`."""
    cfg = TrainConfig.from_profile(GPU, method=method, **overrides)
    torch.manual_seed(seed)
    module = build_method(method, cfg.arch, 3, "cifar10", 32, torch.Generator().manual_seed(seed),
                          method_options=cfg.method_options, proj_dim=cfg.proj_dim,
                          temperature=cfg.temperature, head=cfg.head)
    return module, cfg


def images(n: int = BATCH, device=CUDA, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)


def test_sync_debug_mode_catches_a_host_read():
    """The premise of the next test: a host read of a device value raises in the block."""
    x = torch.ones(4, device=CUDA)
    with syncs_are_errors(), pytest.raises(RuntimeError):
        x.sum().item()
    with syncs_are_errors(), pytest.raises(RuntimeError):
        torch.arange(3).to(CUDA)  # a blocking copy from pageable memory


@pytest.mark.parametrize("method", [m for m in METHODS if m != "triplet"])  # triplet: on purpose
def test_full_size_training_steps_never_wait_for_the_gpu(method):
    module, cfg = full_size_method(method)
    module = module.to(CUDA, memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, module.parameters())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    x = images()
    train_step(module, optimizer, [x], autocast)  # first step: lazy initialisation, cuDNN
    with syncs_are_errors():
        for _ in range(2):
            train_step(module, optimizer, [x], autocast)
        train_step(module, optimizer, list(x.chunk(2)), autocast)  # gradient accumulation
    torch.cuda.synchronize()


def close_everywhere(gpu: torch.Tensor, cpu: torch.Tensor, what: str) -> None:
    """Equal up to rounding: a tiny mean difference, and no value off by more than 1e-3."""
    diff = (gpu.cpu() - cpu).abs()
    assert float(diff.mean()) < 1e-5 and float(diff.max()) < 1e-3, (
        f"{what}: mean |gpu - cpu| = {float(diff.mean()):.2e}, max {float(diff.max()):.2e}")


@pytest.mark.parametrize("cfg", [ViewConfig(), ViewConfig(size=24, blur_p=0.5, solarize_p=0.3),
                                 ViewConfig(rotate_degrees=20.0, jitter_strength=1.0)],
                         ids=["cifar", "blur-solarize", "rotate"])
def test_views_on_the_gpu_equal_the_views_on_the_cpu(cfg, exact_float32):
    x = images(32, device="cpu")
    on_cpu = SimCLRViews(cfg, torch.Generator().manual_seed(5)).two_views(x)
    on_gpu = SimCLRViews(cfg, torch.Generator().manual_seed(5)).two_views(x.to(CUDA))
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        close_everywhere(gpu, cpu, "view")


def test_multi_crop_on_the_gpu_equals_the_cpu(exact_float32):
    x = images(16, device="cpu")
    make = lambda: MultiCropViews(ViewConfig(), n_local=4, local_size=16,  # noqa: E731
                                  generator=torch.Generator().manual_seed(7))
    on_cpu, on_gpu = make()(x), make()(x.to(CUDA))
    assert [c.shape for c in on_gpu] == [c.shape for c in on_cpu]
    for gpu, cpu in zip(on_gpu, on_cpu):
        close_everywhere(gpu, cpu, "crop")


def one_step(device, autocast=None, compile=False, arch="resnet18"):
    """(loss, weights after the step) of one SimCLR step of the full-size recipe."""
    module, cfg = full_size_method("simclr", seed=3, arch=arch)
    module = module.to(device, memory_format=torch.channels_last)
    if compile:
        module.encoder.compile()
        module.head.compile()
    optimizer = make_optimizer(cfg, module.parameters())
    loss = train_step(module, optimizer, [images(32, device=device, seed=4)], autocast)
    return float(loss), {k: v.detach().cpu() for k, v in module.state_dict().items()}


def test_a_float32_step_on_the_gpu_matches_the_cpu(exact_float32):
    cpu_loss, cpu_weights = one_step(torch.device("cpu"))
    gpu_loss, gpu_weights = one_step(CUDA)
    assert abs(gpu_loss - cpu_loss) < 1e-4 * cpu_loss
    for name, weight in cpu_weights.items():
        torch.testing.assert_close(gpu_weights[name], weight, rtol=1e-3, atol=1e-4, msg=name)


def test_a_bfloat16_autocast_step_stays_close_to_float32(exact_float32):
    exact, _ = one_step(CUDA)
    mixed, weights = one_step(CUDA, torch.autocast("cuda", dtype=torch.bfloat16))
    assert abs(mixed - exact) < 0.02 * exact
    assert all(bool(torch.isfinite(w.float()).all()) for w in weights.values())


def test_compile_gives_the_eager_loss(exact_float32):
    eager, _ = one_step(CUDA, arch="convnet-small")  # a small network compiles in seconds
    compiled, _ = one_step(CUDA, compile=True, arch="convnet-small")
    assert abs(compiled - eager) < 1e-3 * eager


def test_train_runs_on_the_gpu_and_its_checkpoint_loads_on_a_cpu(tmp_path):
    """A run trained on a GPU is used on a laptop: the notebooks load its checkpoint there."""
    from sslkit.train import load_trained, train

    cfg = TrainConfig.from_profile(get_profile("ci"), device="cuda", epochs=2, knn_every=1)
    trained, rows = train(cfg, tmp_path / "run", progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["knn"] <= 1 and r["loss"] > 0 for r in rows)
    method, _, _ = load_trained(tmp_path / "run", device="cpu")
    for name, weight in method.state_dict().items():
        assert weight.device.type == "cpu", name
        torch.testing.assert_close(weight, trained.state_dict()[name].cpu(), msg=name)


def test_the_knn_monitor_votes_on_the_gpu_as_on_the_cpu(exact_float32):
    """The monitor keeps the features on the GPU for the vote; its accuracy is the CPU's (a
    rounding difference may at most reorder a near tie: one test image in 200)."""
    from sslkit.data import ImageData
    from sslkit.models import ConvNet
    from sslkit.train import monitor_knn

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (1200, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (1200,), generator=g)
    data = ImageData("random", x[:1000], y[:1000], x[1000:], y[1000:], [str(c) for c in range(10)])
    torch.manual_seed(0)
    encoder = ConvNet(in_channels=3)
    on_cpu = monitor_knn(encoder, data, k=20)
    on_gpu = monitor_knn(encoder.to(CUDA), data, k=20)
    assert abs(on_gpu - on_cpu) <= 1 / 200


def test_bench_measures_every_pipeline_on_the_gpu():
    from sslkit.bench import run_bench

    results = run_bench("cuda", batch=32, steps=2, size="tiny", warmup=1, workers=0)
    views_mib = 2 * 32 * 3 * 32 * 32 * 4 / 2**20  # a step's two float32 views at least
    for r in results:
        if r.name != "c" or r.images_per_s is not None:  # (c) needs lightly
            assert r.images_per_s > 0 and r.peak_mib >= views_mib, r


def test_masking_on_the_gpu_takes_noise_drawn_on_the_cpu():
    """A seeded CPU generator's noise (the notebooks' way to make masking repeatable) masks
    GPU patches exactly as it masks CPU ones."""
    from sslkit.models.vit import random_masking

    x = torch.randn(4, 64, 12)
    noise = torch.rand(4, 64, generator=torch.Generator().manual_seed(1))
    on_cpu = random_masking(x, 0.75, noise)
    on_gpu = random_masking(x.to(CUDA), 0.75, noise)
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
