"""Several processes, tested on CPU with the gloo backend and 2 processes.

Each check compares 2 ranks, each holding half of a batch, with ONE process on the whole
(concatenated) batch: a gathered gradient, NT-Xent with labels offset by rank, MoCo's shared
queue and shuffle-BN, DINO's all-reduced centre, triplet mining and CPC candidates across
ranks, synchronised BatchNorm on channels far from zero, one download for all ranks, one
SimCLR training step with synchronised BatchNorm, one MoCo training step with per-rank
BatchNorm, optimiser steps of every method (with --accumulate where the method keeps a moving
average, a queue or a centre), and whole `train()` runs (SimCLR, MAE, MoCo, DINO) with
checkpoints written by rank 0 and resumed under DDP, and rotation runs (device and DataLoader
paths, a dataset that does not fill the last batch, the kNN monitor on rank 0) that must equal
one process's. Each guards against a bug that other SSL libraries shipped, as their users
reported it.

The 2 processes run once per group of checks (a module fixture) and save what they computed;
the tests compare it with a single process here.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from sslkit import distributed
from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.losses import cpc_loss, nt_xent
from sslkit.methods import DINO, MoCo, SimCLR, Triplet
from sslkit.methods.cpc import cpc_loss_across_ranks
from sslkit.methods.dino import MultiCropViews
from sslkit.models.convnet import ConvNet
from sslkit.train import TrainConfig, train_step

WORLD = 2
N = 8  # images in the whole batch; each rank holds N / WORLD


def _join(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)


def _spawn(worker, tmp_path, *args) -> list[dict]:
    """Run worker(rank, init_file, out_dir, *args) in WORLD processes; their saved results."""
    init_file = tmp_path / "rendezvous"
    mp.spawn(worker, args=(str(init_file), str(tmp_path), *args), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _mine(x: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's half of a whole batch."""
    n = len(x) // WORLD
    return x[rank * n : (rank + 1) * n]


# ---------------------------------------------------------------------------------------------
# Shared inputs: built from fixed seeds, identically in every process


def _vectors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g)  # for the gather
    weights = torch.randn(WORLD, N, 3, generator=g)  # rank r's loss: (gathered * weights[r]).sum()
    z1, z2 = torch.randn(N, 5, generator=g), torch.randn(N, 5, generator=g)
    return x, weights, z1, z2


def _encoder() -> nn.Module:
    return ConvNet(1, widths=(4, 6))  # two BatchNorm layers, feature_dim 6


def _views(n: int = N):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    views = SimCLRViews(ViewConfig(size=8, flip_p=0.5), generator=g)
    return images, views.two_views(images)


def _simclr() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(_encoder(), SimCLRViews(ViewConfig(size=8)), proj_dim=4, temperature=0.5)


def _moco() -> MoCo:
    torch.manual_seed(0)
    return MoCo(_encoder(), SimCLRViews(ViewConfig(size=8)), proj_dim=4, queue_size=2 * N,
                momentum=0.9)


def _triplet(mining: str) -> Triplet:
    torch.manual_seed(0)
    return Triplet(_encoder(), SimCLRViews(ViewConfig(size=8)), proj_dim=4, mining=mining)


def _cpc_inputs():
    """z (N, R, C, D), c (N, R, C, H), W (K, D, H) for cpc_loss: a 3x2 grid, 2 steps ahead."""
    g = torch.Generator().manual_seed(3)
    return (torch.randn(N, 3, 2, 4, generator=g), torch.randn(N, 3, 2, 5, generator=g),
            torch.randn(2, 4, 5, generator=g))


def _far_from_zero() -> torch.Tensor:
    """(N, 3, 4, 4) channels whose mean (1000) is large against their spread (1)."""
    return 1000 + torch.randn(N, 3, 4, 4, generator=torch.Generator().manual_seed(4))


def _bn_weights() -> torch.Tensor:
    """(N, 3, 4, 4) float64 weights of a loss on BatchNorm's output."""
    return torch.randn(N, 3, 4, 4, generator=torch.Generator().manual_seed(5),
                       dtype=torch.float64)


def _dino(**options) -> DINO:
    torch.manual_seed(0)
    views = MultiCropViews(ViewConfig(size=8), n_local=1, local_size=4)
    return DINO(_encoder(), views, out_dim=5, hidden_dim=8, bottleneck_dim=3, total_steps=4,
                **options)


def _crops(n: int = N, seed: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 8, 8, generator=g) for _ in range(2)] + [
        torch.rand(n, 1, 4, 4, generator=g)]


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------------------------
# The 2-process worker for the collective and per-method checks


def _worker(rank: int, init_file: str, out: str) -> None:
    _join(rank, init_file)
    result = {"rank": distributed.rank(), "world": distributed.world_size()}
    x, weights, z1, z2 = _vectors()

    # gather with gradient
    local = _mine(x, rank).clone().requires_grad_(True)
    gathered = distributed.gather_with_grad(local)
    (gathered * weights[rank]).sum().backward()
    result["gathered"], result["gather_grad"] = gathered.detach(), local.grad
    # two gathers added: autograd hands both backwards one and the same gradient tensor
    a, b = (_mine(x, rank).clone().requires_grad_(True) for _ in range(2))
    both = distributed.gather_with_grad(a) + distributed.gather_with_grad(b)
    (both * weights[rank]).sum().backward()
    result["shared_grads"] = (a.grad, b.grad)

    # NT-Xent across ranks
    from sslkit.methods.simclr import nt_xent_across_ranks

    a, b = (_mine(z, rank).clone().requires_grad_(True) for z in (z1, z2))
    loss = nt_xent_across_ranks(a, b, 0.5)
    loss.backward()
    result["nt_xent"], result["nt_xent_grads"] = loss.detach(), (a.grad, b.grad)

    # MoCo: the queue after one step
    moco = _moco()
    _, (v1, v2) = _views()
    torch.manual_seed(100 + rank)  # as in training: other random streams on every rank, so
    moco.loss_on_views(_mine(v1, rank), _mine(v2, rank))  # the shuffle must be broadcast
    result["queue"], result["queue_ptr"] = moco.queue.clone(), int(moco.queue_ptr)

    # DINO: the centre after one step
    dino = distributed.sync_batchnorm(_dino(), torch.device("cpu"))  # as train() does
    dino.loss_on_crops([_mine(c, rank) for c in _crops()])
    result["center"] = dino.center.clone()

    # One SimCLR training step under DDP with synchronised BatchNorm
    method = distributed.sync_batchnorm(_simclr(), torch.device("cpu"))
    model = distributed.wrap(method, torch.device("cpu"))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9)
    result["step_loss"] = train_step(model, optimizer, [[_mine(v1, rank), _mine(v2, rank)]])
    result["step_grads"], result["step_weights"] = _grads(method), _params(method)

    # One MoCo training step under DDP: per-rank BatchNorm, shuffle-BN across the ranks
    moco = _moco()
    model = distributed.wrap(moco, torch.device("cpu"))
    optimizer = torch.optim.SGD(moco.parameters(), lr=0.5, momentum=0.9)
    torch.manual_seed(100 + rank)
    result["moco_loss"] = train_step(model, optimizer, [[_mine(v1, rank), _mine(v2, rank)]])
    result["moco_grads"], result["moco_weights"] = _grads(moco), _params(moco)

    # Triplet: negatives mined among every rank's positives, BatchNorm synchronised
    for mining in ("batch_hard", "semi_hard"):
        triplet = distributed.sync_batchnorm(_triplet(mining), torch.device("cpu"))
        loss = triplet.loss_on_views(_mine(v1, rank), _mine(v2, rank))
        loss.backward()
        result[mining] = loss.detach(), _grads(triplet)

    # CPC: every rank's patches are candidates
    z, c, w = _cpc_inputs()
    a, b = (_mine(t, rank).clone().requires_grad_(True) for t in (z, c))
    w = w.clone().requires_grad_(True)
    loss = cpc_loss_across_ranks(a, b, w)
    loss.backward()
    result["cpc"] = loss.detach(), a.grad, b.grad, w.grad

    # Synchronised BatchNorm on channels far from zero
    result["far_bn"] = distributed.GlobalBatchNorm(3)(_mine(_far_from_zero(), rank)).detach()
    # ... and in float64, with the gradients of rank r's loss (y * weights).sum()
    bn = distributed.GlobalBatchNorm(3).double()
    x = _mine(_far_from_zero().double(), rank).requires_grad_(True)
    y = bn(x)
    (y * _mine(_bn_weights(), rank)).sum().backward()
    result["bn64"] = y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_var.clone()

    # --download under torchrun: rank 0 fetches, the others wait and then read its files
    import time

    import sslkit.train as train_module

    calls = []

    def fake_load(name, root, download, image_size, unlabeled):
        calls.append(("start", download, time.monotonic()))
        time.sleep(0.5)  # a download
        calls.append(("end", download, time.monotonic()))
        return SimpleNamespace(subset=lambda n_train, n_test: "the data")

    train_module.load_dataset = fake_load
    result["loaded"] = train_module.load_data(TrainConfig(download=True))
    result["load_calls"] = calls

    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return _spawn(_worker, tmp_path_factory.mktemp("ddp"))


def test_ranks_and_world(ranks):
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    # one process: the identity
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x and distributed.gather(x) is x
    assert distributed.all_reduce_mean(x) is x
    assert distributed.shard(torch.arange(6)).tolist() == list(range(6))


def test_gather_with_grad_sums_gradients_and_keeps_the_local_slice(ranks):
    x, weights, _, _ = _vectors()
    for r in ranks:
        assert torch.equal(r["gathered"], x)  # every rank's rows, in rank order
    # d/dx_local of sum_r (gathered * weights[r]).sum() = sum_r weights[r] at the local rows
    total = weights.sum(dim=0)
    for rank, r in enumerate(ranks):
        assert torch.allclose(r["gather_grad"], _mine(total, rank))
        # a raw all_gather has no backward; keeping only the own rank's gradient is the bug:
        assert not torch.allclose(r["gather_grad"], _mine(weights[rank], rank))


def test_gather_with_grad_leaves_the_incoming_gradient_as_it_was(ranks):
    """Summing over ranks in place would sum an already summed gradient again when autograd
    hands the same tensor to two gathers (x + y): both gradients would come out doubled."""
    _, weights, _, _ = _vectors()
    total = weights.sum(dim=0)
    for rank, r in enumerate(ranks):
        for grad in r["shared_grads"]:
            assert torch.allclose(grad, _mine(total, rank))


def test_nt_xent_with_labels_offset_by_rank_equals_one_process(ranks):
    _, _, z1, z2 = _vectors()
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    whole = nt_xent(a, b, 0.5)
    whole.backward()
    # The mean of the rank losses is the loss of the whole batch ...
    mean = torch.stack([r["nt_xent"] for r in ranks]).mean()
    assert torch.allclose(mean, whole, atol=1e-6)
    # ... and, after DDP divides the summed gradient by the world size, so are the gradients.
    for rank, r in enumerate(ranks):
        ga, gb = r["nt_xent_grads"]
        assert torch.allclose(ga / WORLD, _mine(a.grad, rank), atol=1e-6)
        assert torch.allclose(gb / WORLD, _mine(b.grad, rank), atol=1e-6)
    # A per-rank loss (labels not offset, no other rank's negatives) is not the same loss.
    per_rank = torch.stack([nt_xent(_mine(z1, r), _mine(z2, r), 0.5) for r in range(WORLD)])
    assert not torch.allclose(per_rank.mean(), whole, atol=1e-3)


def test_moco_keys_gathered_before_the_queue_update(ranks):
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])  # one queue, not one per rank
    assert ranks[0]["queue_ptr"] == ranks[1]["queue_ptr"] == N  # every rank's keys went in
    # Shuffle-BN across ranks: 2 ranks with per-rank BatchNorm compute the keys that one
    # process computes with bn_splits=2 and the same permutation, in rank order.
    _, (v1, v2) = _views()
    single = _moco()
    single.bn_splits = WORLD
    torch.manual_seed(100)  # rank 0's stream draws the permutation, which it broadcasts
    single.loss_on_views(v1, v2)
    assert torch.allclose(ranks[0]["queue"], single.queue, atol=1e-5)
    untouched = _moco().queue[N:]
    assert torch.equal(ranks[0]["queue"][N:], untouched)


def test_moco_keys_use_batchnorm_statistics_of_a_shuffled_global_batch(ranks):
    # Without the shuffle, rank r's keys would be those of its own half in one group: the
    # statistics of the very samples its queries were normalised with (the leak).
    _, (v1, v2) = _views()
    unshuffled = []
    for r in range(WORLD):
        single = _moco()
        single.loss_on_views(_mine(v1, r), _mine(v2, r))
        unshuffled.append(single.queue[: N // WORLD])
    assert not torch.allclose(ranks[0]["queue"][:N], torch.cat(unshuffled), atol=1e-3)


def test_dino_centre_all_reduced(ranks):
    assert torch.equal(ranks[0]["center"], ranks[1]["center"])
    single = _dino()
    single.loss_on_crops(_crops())
    assert torch.allclose(ranks[0]["center"], single.center, atol=1e-5)
    assert not torch.allclose(single.center, torch.zeros_like(single.center))


def test_simclr_step_equals_one_process_on_the_whole_batch(ranks):
    method = _simclr()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9)
    _, (v1, v2) = _views()
    loss = train_step(method, optimizer, [[v1, v2]])
    grads, weights = _grads(method), _params(method)
    mean_loss = torch.stack([r["step_loss"] for r in ranks]).mean()
    assert torch.allclose(mean_loss, loss, atol=1e-5)
    for r in ranks:
        assert r["step_grads"].keys() == grads.keys()
        for name, g in grads.items():  # DDP's averaged gradient = the whole batch's gradient
            assert torch.allclose(r["step_grads"][name], g, atol=1e-5), name
        for name, w in weights.items():  # weights and BatchNorm running statistics
            assert torch.allclose(r["step_weights"][name].float(), w.float(), atol=1e-5), name


def test_moco_step_equals_one_process_with_one_batchnorm_group_per_rank(ranks):
    # 2 ranks = one process whose queries and keys use 2 BatchNorm groups (bn_splits=2), the
    # key groups drawn by the same permutation: equal loss, gradients, weights, key network
    # (moved by momentum) and queue.
    moco = _moco()
    moco.bn_splits = WORLD
    optimizer = torch.optim.SGD(moco.parameters(), lr=0.5, momentum=0.9)
    _, (v1, v2) = _views()
    torch.manual_seed(100)  # rank 0's permutation, broadcast to rank 1 (seeded 101)
    loss = train_step(moco, optimizer, [[v1, v2]])
    grads, weights = _grads(moco), _params(moco)
    assert torch.allclose(torch.stack([r["moco_loss"] for r in ranks]).mean(), loss, atol=1e-5)
    for r in ranks:
        assert r["moco_grads"].keys() == grads.keys()
        for name, g in grads.items():
            assert torch.allclose(r["moco_grads"][name], g, atol=1e-5), name
        for name, w in weights.items():  # includes key_encoder.*, key_head.* and the queue
            if "running_" in name or "num_batches" in name:
                continue  # per-rank BatchNorm: each rank's running statistics are its own
            assert torch.allclose(r["moco_weights"][name].float(), w.float(), atol=1e-5), name
    assert torch.equal(ranks[0]["moco_weights"]["queue"], ranks[1]["moco_weights"]["queue"])


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_mines_among_every_ranks_positives(ranks, mining):
    """Each rank mined its negatives in its own half: a loss that depends on the number of
    processes (1.02 on the whole batch, 0.65 as the mean of 2 halves, batch-hard)."""
    triplet = _triplet(mining)
    _, (v1, v2) = _views()
    whole = triplet.loss_on_views(v1, v2)
    whole.backward()
    grads = _grads(triplet)
    assert torch.allclose(torch.stack([r[mining][0] for r in ranks]).mean(), whole, atol=1e-5)
    for name, g in grads.items():  # the mean of the ranks' gradients, as DDP averages them
        mean = torch.stack([r[mining][1][name] for r in ranks]).mean(dim=0)
        assert torch.allclose(mean, g, atol=1e-5), name
    halves = [_triplet(mining).loss_on_views(_mine(v1, r), _mine(v2, r)) for r in range(WORLD)]
    assert not torch.allclose(torch.stack(halves).mean(), whole, atol=1e-3)


def test_cpc_takes_every_ranks_patches_as_candidates(ranks):
    z, c, w = (t.clone().requires_grad_(True) for t in _cpc_inputs())
    whole = cpc_loss(z, c, w)
    whole.backward()
    assert torch.allclose(torch.stack([r["cpc"][0] for r in ranks]).mean(), whole, atol=1e-5)
    for rank, r in enumerate(ranks):
        _, gz, gc, gw = r["cpc"]
        assert torch.allclose(gz / WORLD, _mine(z.grad, rank), atol=1e-6)
        assert torch.allclose(gc / WORLD, _mine(c.grad, rank), atol=1e-6)
    mean_gw = torch.stack([r["cpc"][3] for r in ranks]).mean(dim=0)
    assert torch.allclose(mean_gw, w.grad, atol=1e-5)
    z, c, w = _cpc_inputs()  # per-rank candidates only: fewer negatives, a lower loss
    per_rank = torch.stack([cpc_loss(_mine(z, r), _mine(c, r), w) for r in range(WORLD)])
    assert not torch.allclose(per_rank.mean(), whole.detach(), atol=1e-2)


def test_synchronised_batchnorm_keeps_the_variance_of_channels_far_from_zero(ranks):
    """E[x^2] - mean^2 in float32 lost the variance of a channel at 1000 +- 1 (off by 0.2)."""
    whole = nn.BatchNorm2d(3)(_far_from_zero()).detach()
    assert torch.allclose(torch.cat([r["far_bn"] for r in ranks]), whole, atol=1e-3)


def test_synchronised_batchnorm_in_float64_is_batchnorm_of_the_whole_batch(ranks):
    """Output, input gradients (the statistics' gradient summed over ranks), weight and bias
    gradients (summed by the ranks' losses) and running variance, to float64 precision."""
    bn = nn.BatchNorm2d(3).double()
    x = _far_from_zero().double().requires_grad_(True)
    y = bn(x)
    (y * _bn_weights()).sum().backward()
    exact = dict(atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(torch.cat([r["bn64"][0] for r in ranks]), y.detach(), **exact)
    torch.testing.assert_close(torch.cat([r["bn64"][1] for r in ranks]), x.grad, **exact)
    for i, grad in ((2, bn.weight.grad), (3, bn.bias.grad)):
        torch.testing.assert_close(ranks[0]["bn64"][i] + ranks[1]["bn64"][i], grad, **exact)
    for r in ranks:
        torch.testing.assert_close(r["bn64"][4], bn.running_var, **exact)


def test_download_is_done_by_rank_0_alone_before_the_others_read(ranks):
    assert all(r["loaded"] == "the data" for r in ranks)
    (_, d0, _), (_, _, end0) = ranks[0]["load_calls"]
    (_, d1, start1), _ = ranks[1]["load_calls"]
    assert d0 is True and d1 is False  # one download, into one folder
    # CLOCK_MONOTONIC is system-wide on Linux, so the two processes' times compare
    assert start1 >= end0


def test_per_rank_batchnorm_would_differ():
    # Why BatchNorm is synchronised: per-rank statistics give other embeddings than the batch's.
    method = _simclr()
    _, (v1, v2) = _views()
    halves = [method.embed(torch.cat([_mine(v1, r), _mine(v2, r)])) for r in range(WORLD)]
    whole = method.embed(torch.cat([v1, v2]))
    per_rank = torch.cat([h.chunk(2)[0] for h in halves] + [h.chunk(2)[1] for h in halves])
    assert not torch.allclose(per_rank, whole, atol=1e-3)


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    global_bn = distributed.GlobalBatchNorm(3)
    global_bn.load_state_dict(bn.state_dict())
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(bn(x), global_bn(x))
    assert distributed.sync_batchnorm(bn, torch.device("cpu")) is bn


# ---------------------------------------------------------------------------------------------
# Optimiser steps of every method: 2 ranks x B (DDP, --accumulate) = 1 process x 2B


def _micro(x: torch.Tensor, rank: int, i: int, k: int) -> torch.Tensor:
    """Rank `rank`'s micro-batch i of k in the global batch x, as train's step_batches cuts it:
    the rank's slice, then its i-th chunk."""
    return _mine(x, rank).chunk(k)[i]


def _joined(x: torch.Tensor, i: int, k: int) -> torch.Tensor:
    """One process's micro-batch i: every rank's micro-batch i, in rank order (what 2 ranks
    forward together, so BatchNorm groups and negatives are the same)."""
    return torch.cat([_micro(x, r, i, k) for r in range(WORLD)])


class _OnInputs(nn.Module):
    """A method whose forward takes its random inputs ready-made (the tests draw them for the
    whole batch), so that 2 ranks and one process see the same puzzles, masks and patches.
    batch: the list of the step's tensors, cut like the images."""

    def __init__(self, method: nn.Module, loss):
        super().__init__()
        self.method, self.loss = method, loss

    def forward(self, batch: list[torch.Tensor]) -> torch.Tensor:
        return self.loss(self.method, *batch)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _step_case(name: str, single: bool):
    """(method, global batches: one list of tensors (N, ...) per optimiser step, micro-batches
    per step). single: as one process holds it (MoCo: one BatchNorm group per rank)."""
    torch.manual_seed(0)
    if name == "simclr":
        return _simclr(), [list(_views()[1])], 2
    if name == "moco":
        moco = _moco()
        moco.bn_splits = WORLD if single else 1
        return moco, [list(_views()[1]), list(_views()[1][::-1])], 2
    if name == "dino":  # clipped gradients; the last layer frozen in the first step
        dino = _dino(clip_grad=0.05, freeze_last_layer_epochs=1, steps_per_epoch=1)
        return dino, [_crops(), _crops(seed=5)], 2
    if name == "cpc":
        from sslkit.methods.cpc import CPC, CPCEncoder

        cpc = CPC(CPCEncoder(1, size=20, patch=8, stride=6, width=4, dim=6, context_dim=5),
                  steps=2)
        return (_OnInputs(cpc, lambda m, patches: m.loss_on_patches(patches)),
                [[_rand(N, 3, 3, 1, 8, 8, seed=6)]], 1)
    if name == "mae":
        from sslkit.methods.mae import MAE

        mae = MAE(8, patch_size=4, in_channels=1, dim=8, depth=1, heads=2, decoder_dim=8,
                  decoder_depth=1, decoder_heads=2)
        return (_OnInputs(mae, lambda m, x, noise: m.loss_on(x, noise=noise)[0]),
                [[_rand(N, 1, 8, 8, seed=7), _rand(N, 4, seed=8)]], 2)
    if name == "jigsaw":
        from sslkit.methods.jigsaw import Jigsaw

        jigsaw = Jigsaw(_encoder(), num_permutations=4, tile_size=8, hidden_dim=8)
        labels = torch.arange(N) % 4
        return (_OnInputs(jigsaw, lambda m, t, y: F.cross_entropy(m.classify(t), y)),
                [[_rand(N, 9, 1, 8, 8, seed=9), labels]], 1)
    if name == "relative_patch":
        from sslkit.methods.relative_patch import RelativePatch

        patches = RelativePatch(_encoder(), tile_size=8, hidden_dim=8)
        return (_OnInputs(patches, lambda m, c, n, y: F.cross_entropy(m.classify(c, n), y)),
                [[_rand(N, 1, 8, 8, seed=10), _rand(N, 1, 8, 8, seed=11), torch.arange(N)]], 1)
    raise ValueError(name)


STEP_CASES = ("simclr", "moco", "dino", "cpc", "mae", "jigsaw", "relative_patch")


def _run_steps(name: str, rank: int | None) -> dict:
    """The case's optimiser steps with train_step: under DDP on rank `rank` (BatchNorm
    synchronised, as train() does), or in one process (rank None). Its losses, last gradients
    and state (weights and buffers: EMA networks, queue, centre, step counter)."""
    method, steps, k = _step_case(name, single=rank is None)
    if rank is not None and not getattr(method, "per_rank_batchnorm", False):
        method = distributed.sync_batchnorm(method, torch.device("cpu"))
    model = distributed.wrap(method, torch.device("cpu"))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9)
    torch.manual_seed(100 + (rank or 0))  # MoCo: rank 0's stream draws the key permutation

    def cut(x: torch.Tensor, i: int) -> torch.Tensor:
        return _joined(x, i, k) if rank is None else _micro(x, rank, i, k)

    losses = [train_step(model, optimizer, [[cut(t, i) for t in step] for i in range(k)])
              for step in steps]
    return {"losses": torch.stack(losses), "grads": _grads(method), "state": _params(method)}


def _steps_worker(rank: int, init_file: str, out: str) -> None:
    _join(rank, init_file)
    torch.save({name: _run_steps(name, rank) for name in STEP_CASES}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def step_ranks(tmp_path_factory) -> list[dict]:
    return _spawn(_steps_worker, tmp_path_factory.mktemp("ddp_steps"))


@pytest.mark.parametrize("name", STEP_CASES)
def test_optimiser_steps_on_2_ranks_equal_one_process(step_ranks, name):
    """Loss, DDP-averaged gradients and the state after the steps (weights, EMA teacher or key
    network, MoCo's queue, DINO's centre and step count, synchronised BatchNorm statistics) of
    2 ranks equal those of one process on the whole batch, with and without --accumulate."""
    single = _run_steps(name, None)
    if name == "moco":  # one process enqueues a step's keys micro-batch by micro-batch, the
        # ranks rank by rank: the same keys, in another order inside the step's block of N
        # rows, which the loss never sees (the block is written and overwritten as a whole)
        k, queue = 2, single["state"]["queue"]
        block = torch.arange(N).view(k, WORLD, N // (k * WORLD)).transpose(0, 1).flatten()
        single["state"]["queue"] = queue.view(-1, N, queue.shape[1])[:, block].flatten(0, 1)
    mean_losses = torch.stack([r[name]["losses"] for r in step_ranks]).mean(dim=0)
    torch.testing.assert_close(mean_losses, single["losses"], atol=1e-5, rtol=1e-5)
    for r in step_ranks:
        assert r[name]["grads"].keys() == single["grads"].keys()
        for key, g in single["grads"].items():
            torch.testing.assert_close(r[name]["grads"][key], g, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, key=key: f"{key}: {m}")
        assert r[name]["state"].keys() == single["state"].keys()
        for key, w in single["state"].items():
            if name == "moco" and ("running_" in key or "num_batches" in key):
                continue  # per-rank BatchNorm: each rank's running statistics are its own
            torch.testing.assert_close(r[name]["state"][key], w, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, key=key: f"{key}: {m}")
    for key in step_ranks[0][name]["state"]:  # every rank holds the same buffers
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(step_ranks[0][name]["state"][key],
                               step_ranks[1][name]["state"][key]), key
    if name == "dino":  # counted once per optimiser step, not per micro-batch
        assert int(single["state"]["step"]) == 2


# ---------------------------------------------------------------------------------------------
# A whole train() run under DDP: files on rank 0 only, resume


def _train_worker(rank: int, init_file: str, out: str) -> None:
    _join(rank, init_file)
    import sslkit.train as train_module

    saved_by = []
    real_save = train_module.save_atomic
    train_module.save_atomic = lambda obj, path: (saved_by.append(rank), real_save(obj, path))
    cfg = _train_cfg()
    whole, _ = train_module.train(cfg, f"{out}/whole", progress=False)
    train_module.train(cfg, f"{out}/split", stop_after_epoch=1, progress=False)
    resumed, rows = train_module.train(cfg, f"{out}/split", resume=True, progress=False)
    result = {"whole": _params(whole), "resumed": _params(resumed), "rows": rows,
              "saved_by": saved_by}
    # Another number of processes than the checkpoint's: one process wrote `single` (the test
    # did, before spawning us); 2 ranks continue it. And 2 ranks write `to_single` for 1.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        widened, widened_rows = train_module.train(cfg, f"{out}/single", resume=True,
                                                   progress=False)
    train_module.train(cfg, f"{out}/to_single", stop_after_epoch=1, progress=False)
    result.update(widened=_params(widened), widened_rows=widened_rows, printed=printed.getvalue())
    # MAE draws its masks from torch's global stream, which SimCLR never touches: resuming
    # must restore each rank's own state of it
    mae = replace(cfg, method="mae", arch="vit", method_options={"depth": 1, "decoder_depth": 1})
    mae_whole, _ = train_module.train(mae, f"{out}/mae_whole", progress=False)
    train_module.train(mae, f"{out}/mae_split", stop_after_epoch=1, progress=False)
    mae_resumed, _ = train_module.train(mae, f"{out}/mae_split", resume=True, progress=False)
    result.update(mae_whole=_params(mae_whole), mae_resumed=_params(mae_resumed))
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _ci():
    from sslkit.profiles import get_profile

    return get_profile("ci")


def _train_cfg():
    return TrainConfig.from_profile(
        _ci(), method="simclr", n_train=64, n_test=32, batch_size=32, epochs=2, warmup_epochs=0,
        device="cpu")


def test_train_under_ddp_checkpoints_on_rank_0_and_resumes(tmp_path, capsys):
    from sslkit.train import train

    train(_train_cfg(), tmp_path / "single", stop_after_epoch=1, progress=False)
    ranks = _spawn(_train_worker, tmp_path)
    assert ranks[1]["saved_by"] == [] and set(ranks[0]["saved_by"]) == {0}
    assert len(ranks[0]["saved_by"]) == 10  # 2 epochs; 1 + 1; 1 from one process; 1; MAE 2 + 2
    for r in ranks:  # every rank ends with the same weights; resuming changes nothing
        for name, w in ranks[0]["whole"].items():
            assert torch.allclose(r["whole"][name].float(), w.float(), atol=1e-6), name
            assert torch.allclose(r["resumed"][name].float(), w.float(), atol=1e-6), name
        for name, w in ranks[0]["mae_whole"].items():
            assert torch.allclose(r["mae_whole"][name], w, atol=1e-6), name
            assert torch.allclose(r["mae_resumed"][name], w, atol=1e-6), name
    # each rank has its own augmentation and global random streams, saved to resume from
    ckpt = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    for streams in (ckpt["views_generators"], ckpt["torch_rngs"]):
        assert len(streams) == WORLD and not torch.equal(streams[0], streams[1])
    assert [row["epoch"] for row in ranks[0]["rows"]] == [1, 2]
    assert not list(tmp_path.glob("*/*.tmp"))
    # A one-process checkpoint continued by 2 ranks: both ranks agree, rank 0 says what changed.
    for name, w in ranks[0]["widened"].items():
        assert torch.equal(ranks[1]["widened"][name], w), name
    assert [row["epoch"] for row in ranks[0]["widened_rows"]] == [1, 2]
    assert "saved by 1 process(es) and resumes with 2" in ranks[0]["printed"]
    assert ranks[1]["printed"] == ""
    # ... and a 2-rank checkpoint continued by one process.
    capsys.readouterr()
    _, rows = train(_train_cfg(), tmp_path / "to_single", resume=True, progress=False)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert "saved by 2 process(es) and resumes with 1" in capsys.readouterr().out
    # the checkpoint of a DDP run loads in one process
    from sslkit.train import load_trained

    method, cfg, _ = load_trained(tmp_path / "whole")
    assert cfg.batch_size == 32
    for name, w in method.state_dict().items():
        assert torch.allclose(w.float(), ranks[0]["whole"][name].float()), name


def test_stream_seeds_are_distinct_per_rank_and_epoch():
    from sslkit.train import stream_seed

    assert stream_seed(7, 0) == 8 and stream_seed(7, 3) == 11  # a run's start, as before
    seeds = {stream_seed(0, r, e) for r in range(64) for e in range(1000)}
    assert len(seeds) == 64 * 1000  # a resumed rank never replays another (rank, epoch)'s


def test_torchrun_command_line(tmp_path):
    # The real launcher: torchrun starts 2 processes that join through its env:// rendezvous.
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sslkit", "train", "simclr", "--profile", "ci", "--device", "cpu",
           "--n-train", "64", "--batch-size", "32", "--epochs", "1", "--no-progress",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("checkpoint and metrics in") == 1  # printed by rank 0 only
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "last.pt").is_file()


# ---------------------------------------------------------------------------------------------
# Whole train() runs that 2 ranks and one process must agree on, and resume of EMA methods


def _rotation_cfg(**overrides) -> TrainConfig:
    """Rotation draws no random numbers after the permutation, so a 2-rank run and a
    one-process run see the same batches. 72 images at batch 16: 4 steps, 8 images dropped."""
    return TrainConfig.from_profile(
        _ci(), method="rotation", n_train=72, n_test=32, batch_size=16, epochs=2,
        warmup_epochs=0, device="cpu", optimizer="sgd", lr=0.05, **overrides)


# A ViT: one process's BatchNorm on the CPU is inexact on channels_last convolution outputs
# (2e-3 off on a ConvNet's first layer here), which the ConvNet's max-pools then amplify;
# the head's BatchNorm1d is synchronised all the same.
ROTATION_RUNS = {
    "device": dict(arch="vit", knn_every=1, knn_k=5),  # the kNN monitor runs on rank 0
    "dataloader": dict(arch="vit", loader="dataloader", workers=0),
}


def _ema_cfg(method: str) -> TrainConfig:
    options = {"dino": {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8},
               "moco": {"queue_size": 64, "bn_splits": 2}}[method]
    return TrainConfig.from_profile(
        _ci(), method=method, n_train=64, n_test=32, batch_size=32, epochs=2, warmup_epochs=0,
        device="cpu", accumulate=2 if method == "dino" else 1, method_options=options)


def _runs_worker(rank: int, init_file: str, out: str) -> None:
    _join(rank, init_file)
    from sslkit.train import train

    result = {}
    for name, overrides in ROTATION_RUNS.items():
        method, rows = train(_rotation_cfg(**overrides), f"{out}/{name}", progress=False)
        result[name] = _params(method), rows
    for name in ("moco", "dino"):  # uninterrupted, and interrupted after epoch 1 then resumed
        whole, _ = train(_ema_cfg(name), f"{out}/{name}_whole", progress=False)
        train(_ema_cfg(name), f"{out}/{name}_split", stop_after_epoch=1, progress=False)
        resumed, _ = train(_ema_cfg(name), f"{out}/{name}_split", resume=True, progress=False)
        result[name] = _params(whole), _params(resumed)
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def run_ranks(tmp_path_factory) -> list[dict]:
    return _spawn(_runs_worker, tmp_path_factory.mktemp("ddp_runs"))


@pytest.mark.parametrize("name", ROTATION_RUNS)
def test_train_on_2_ranks_equals_one_process(run_ranks, tmp_path, name):
    """The same permutation on every rank, each rank's slice of each global batch, the same
    number of steps on every rank (the last 8 images dropped), DDP, synchronised BatchNorm
    and the DataLoader path: the weights, BatchNorm statistics, logged losses and
    kNN accuracies of one process on the whole batches."""
    from sslkit.train import train

    method, rows = train(_rotation_cfg(**ROTATION_RUNS[name]), tmp_path / "run", progress=False)
    weights = _params(method)
    for rank, r in enumerate(run_ranks):
        ranks_weights, ranks_rows = r[name]
        assert [row["step"] for row in ranks_rows] == [4, 8]
        for key in ("loss", "knn") if rank == 0 else ("loss",):  # rank 0 alone evaluates
            torch.testing.assert_close([row.get(key) for row in ranks_rows],
                                       [row.get(key) for row in rows], atol=1e-5, rtol=1e-5)
        assert ranks_weights.keys() == weights.keys()
        for key, w in weights.items():
            # the head's BatchNorm input is a sum of 64 weighted features whose mean (~0.9)
            # dwarfs their spread (~0.04): its running mean carries the weights' round-off
            # (1e-7) times 64, step after step
            atol = 1e-3 if "running_" in key else 1e-5
            torch.testing.assert_close(ranks_weights[key], w, atol=atol, rtol=1e-4,
                                       msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", ["moco", "dino"])
def test_resumed_ema_methods_under_ddp_end_as_uninterrupted(run_ranks, name):
    """MoCo (queue, key network, shuffle-BN drawn from rank 0's stream, per-rank BatchNorm)
    and DINO (teacher, centre, step count, --accumulate 2): stopped after epoch 1 and resumed
    on 2 ranks, every rank ends where the uninterrupted run does."""
    for rank, r in enumerate(run_ranks):
        whole, resumed = r[name]
        assert whole.keys() == resumed.keys()
        for key, w in whole.items():
            if rank and name == "moco" and ("running_" in key or "num_batches" in key):
                continue  # per-rank BatchNorm: the checkpoint holds rank 0's statistics only
            torch.testing.assert_close(resumed[key], w, atol=1e-6, rtol=1e-5,
                                       msg=lambda m, key=key: f"{key}: {m}")
    for key, w in run_ranks[0][name][0].items():  # and the ranks agree
        if name == "dino" or ("running_" not in key and "num_batches" not in key):
            assert torch.equal(run_ranks[1][name][0][key], w), key
