"""Several processes, tested on CPU with the gloo backend and 2 processes.

Each check compares 2 ranks, each holding half of a batch, with ONE process on the whole
(concatenated) batch: a gathered gradient, NT-Xent with labels offset by rank, MoCo's shared
queue and shuffle-BN, DINO's all-reduced centre, triplet mining and CPC candidates across
ranks, synchronised BatchNorm on channels far from zero, one download for all ranks, one
SimCLR training step with synchronised BatchNorm, one MoCo training step with per-rank
BatchNorm, and whole `train()` runs (SimCLR, MAE) with checkpoints written by rank 0 and
resumed under DDP. Each guards
against a bug that other SSL libraries shipped, as their users reported it.

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


def _dino() -> DINO:
    torch.manual_seed(0)
    views = MultiCropViews(ViewConfig(size=8), n_local=1, local_size=4)
    return DINO(_encoder(), views, out_dim=5, hidden_dim=8, bottleneck_dim=3, total_steps=4)


def _crops(n: int = N) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
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
