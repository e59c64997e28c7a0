"""A training step never makes the host wait for the GPU: no host reads of device values, and
no CPU -> device copies that wait.

On a GPU the host queues kernels and runs ahead while the GPU works through them. Anything that
reads a value of a device tensor on the host -- ``int(t)``, ``float(t)``, ``t.item()``,
``t.tolist()``, ``if t``, a boolean mask (its result's size depends on the values) -- stops the
host until the GPU has caught up, and the GPU idles while the host then queues the next kernels.
One such read per step costs a few per cent at full size, for nothing.

The check runs on the CPU with PyTorch's "meta" device: meta tensors have shapes and no values,
so every one of those reads raises, while all the arithmetic of a step runs (and costs nothing,
so the full-size recipes are used: ResNet-18 or ViT-tiny at batch 512 on CIFAR's shape).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from host_sync import copies_must_not_wait

from sslkit.methods import METHODS, build_method
from sslkit.profiles import get_profile
from sslkit.train import TrainConfig, make_optimizer, train_step

GPU = get_profile("gpu")

# Methods that read a value on purpose at every step, and why that is worth it.
READS_ON_PURPOSE = {
    "triplet": "its mining checks that every anchor has a negative, for a one-line error "
               "instead of a silently wrong loss (a teaching method, never run at full size)",
}


@pytest.fixture
def meta_autocast(monkeypatch):
    """The meta device has no autocast: the losses' float32 regions become no-ops there."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        if device_type == "meta":
            return contextlib.nullcontext()
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


def test_the_copy_check_catches_a_blocking_copy_and_passes_to_device():
    from sslkit.transfer import to_device

    with copies_must_not_wait():
        with pytest.raises(AssertionError, match="blocking copy"):
            torch.zeros(3).to("meta")
        with pytest.raises(AssertionError, match="copies and waits"):
            torch.tensor([1.0], device="meta")
        assert to_device(torch.zeros(3), torch.device("meta")).device.type == "meta"
        assert torch.zeros(3).to(torch.float64).dtype == torch.float64  # no device: no copy


def test_meta_tensors_catch_every_host_read():
    """The premise of this file: each way of reading a device value fails on meta."""
    x = torch.zeros(4, 3, device="meta")
    reads = [lambda: int(x.sum()), lambda: float(x.sum()), lambda: x.sum().item(),
             lambda: x.tolist(), lambda: bool(x.sum() > 0), lambda: x[x > 0], lambda: x.cpu()]
    for read in reads:
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("method", [m for m in METHODS if m not in READS_ON_PURPOSE])
def test_full_size_training_steps_never_read_a_device_value(method, meta_autocast):
    cfg = TrainConfig.from_profile(GPU, method=method)
    torch.manual_seed(0)
    module = build_method(method, cfg.arch, 3, "cifar10", 32, torch.Generator().manual_seed(0),
                          method_options=cfg.method_options, proj_dim=cfg.proj_dim,
                          temperature=cfg.temperature, head=cfg.head)
    module = module.to("meta", memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, module.parameters())
    images = torch.empty(cfg.batch_size, 3, 32, 32, dtype=torch.uint8, device="meta")
    with copies_must_not_wait():
        for _ in range(2):  # the first step and a later one (queue, centre, schedules moved)
            train_step(module, optimizer, [images])
        train_step(module, optimizer, list(images.chunk(2)))  # gradient accumulation


def test_the_reads_on_purpose_are_still_needed(meta_autocast):
    """Once a method in READS_ON_PURPOSE stops reading, it belongs in the test above."""
    for method in READS_ON_PURPOSE:
        cfg = TrainConfig.from_profile(GPU, method=method)
        module = build_method(method, cfg.arch, 3, "cifar10", 32, proj_dim=cfg.proj_dim,
                              temperature=cfg.temperature, head=cfg.head).to("meta")
        optimizer = make_optimizer(cfg, module.parameters())
        images = torch.empty(cfg.batch_size, 3, 32, 32, dtype=torch.uint8, device="meta")
        with pytest.raises(RuntimeError, match="meta"):
            train_step(module, optimizer, [images])


def test_to_device_waits_for_a_copy_to_the_cpu(monkeypatch):
    """A non-blocking copy from a GPU to the CPU returns before the data has landed, and
    reading it may give stale memory (PyTorch's documentation warns of it); to_device made
    such copies. Copies to the CPU block; copies to a device do not."""
    from sslkit.transfer import to_device

    asked = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):  # records the copy; meta stands in for a GPU
        asked.append((args[0].type, kwargs.get("non_blocking", False)))
        return torch.empty(self.shape) if self.is_meta else real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    to_device(torch.zeros(2, device="meta"), torch.device("cpu"))
    to_device(torch.zeros(2), torch.device("meta"))
    assert asked == [("cpu", False), ("meta", True)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_result_copied_to_the_cpu_is_there_when_read():
    from sslkit.transfer import to_device

    a = torch.randn(4096, 4096, device="cuda")
    product = a @ a  # queued: the copy below must wait for it
    assert torch.equal(to_device(product, torch.device("cpu")), product.cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_device_through_pinned_memory_gives_the_same_values_on_a_gpu():
    from sslkit.transfer import to_device

    t = torch.randn(512, 4)
    moved = to_device(t, torch.device("cuda"))
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), t)
    assert to_device(t, torch.device("cpu")) is t  # already there: no copy
