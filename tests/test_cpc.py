"""CPC: the patch grid against explicit slicing, the loss against a plain loop over k, t and j
(values and gradients) and closed forms, the choice of negatives, no leak between patches
(LayerNorm, not BatchNorm), causality of the context, training, the 1-D variant, bad input and
the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sslkit.cli import main
from sslkit.errors import SSLKitError
from sslkit.evaluate import extract_features
from sslkit.losses import cpc_logits, cpc_loss, cpc_loss_loop
from sslkit.methods import build_method
from sslkit.methods.cpc import (
    CPC,
    CPCEncoder,
    PatchEncoder,
    SignalCPC,
    augment_patches,
    column_context,
    encode_patches,
    patch_grid,
    prediction_accuracy,
    sinusoids,
)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- the patch grid ---------------------------------------------------------------------------

@pytest.mark.parametrize("h,w,patch,stride", [(32, 32, 8, 6), (12, 9, 4, 1), (11, 14, 5, 3),
                                              (8, 8, 4, 4), (6, 6, 6, 2)])
def test_patch_grid_equals_explicit_slicing(h, w, patch, stride):
    x = rand(3, 2, h, w)
    grid = patch_grid(x, patch, stride)
    rows, cols = (h - patch) // stride + 1, (w - patch) // stride + 1
    assert grid.shape == (3, rows, cols, 2, patch, patch)
    for i in range(rows):
        for j in range(cols):
            expected = x[:, :, i * stride:i * stride + patch, j * stride:j * stride + patch]
            assert torch.equal(grid[:, i, j], expected)


def test_patch_grid_of_digits_is_five_by_five_with_overlap():
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    grid = patch_grid(x, 8, 6)
    assert grid.shape == (1, 5, 5, 1, 8, 8)
    # neighbours in a row share 2 columns of pixels; neighbours in a column share 2 rows
    assert torch.equal(grid[0, 0, 0, 0, :, 6:], grid[0, 0, 1, 0, :, :2])
    assert torch.equal(grid[0, 0, 0, 0, 6:, :], grid[0, 1, 0, 0, :2, :])


@pytest.mark.parametrize("args,match", [((torch.zeros(1, 30, 30), 8, 6), "(N, C, H, W)"),
                                        ((torch.zeros(1, 1, 30, 32), 8, 6), "height 30"),
                                        ((torch.zeros(1, 1, 32, 31), 8, 6), "width 31"),
                                        ((torch.zeros(1, 1, 4, 4), 8, 6), "height 4"),
                                        ((torch.zeros(1, 1, 8, 8), 4, 0), "stride")])
def test_patch_grid_errors_are_one_line(args, match):
    with pytest.raises(SSLKitError, match=match) as info:
        patch_grid(*args)
    assert "\n" not in str(info.value)


def test_patch_grid_error_suggests_a_size_that_tiles():
    with pytest.raises(SSLKitError, match="resize the images to 32") as info:
        patch_grid(torch.zeros(1, 1, 33, 32), 8, 6)
    fit = int(str(info.value).split("resize the images to ")[1].split()[0])
    patch_grid(torch.zeros(1, 1, fit, 32), 8, 6)  # the suggestion works


# -- the loss ---------------------------------------------------------------------------------

CASES = [(2, 4, 3, 5, 6, 3), (3, 3, 1, 4, 4, 2), (1, 5, 2, 3, 7, 1), (4, 2, 2, 2, 3, 1)]


@pytest.mark.parametrize("n,rows,cols,d,h,k", CASES)
def test_vectorised_loss_equals_the_plain_loop_values_and_gradients(n, rows, cols, d, h, k):
    z = rand(n, rows, cols, d, seed=1).requires_grad_()
    c = rand(n, rows, cols, h, seed=2).requires_grad_()
    w = rand(k, d, h, seed=3).requires_grad_()
    fast, slow = cpc_loss(z, c, w), cpc_loss_loop(z, c, w)
    assert torch.allclose(fast, slow, atol=1e-12)
    g_fast = torch.autograd.grad(fast, (z, c, w))
    g_slow = torch.autograd.grad(slow, (z, c, w))
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-12)


def test_gradcheck():
    z = rand(2, 3, 2, 3, seed=4).requires_grad_()
    c = rand(2, 3, 2, 4, seed=5).requires_grad_()
    w = rand(2, 3, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(cpc_loss, (z, c, w))


@pytest.mark.parametrize("n,rows,cols,k", [(2, 4, 3, 3), (5, 2, 1, 1), (1, 6, 4, 2)])
def test_identical_candidates_give_log_of_their_number(n, rows, cols, k):
    # every patch encodes to the same z: all M = N·R·C scores of a context are equal, so every
    # term is log M whatever the context and the maps
    z = rand(1, 1, 1, 5, seed=7).expand(n, rows, cols, 5)
    loss = cpc_loss(z, rand(n, rows, cols, 4, seed=8), rand(k, 5, 4, seed=9))
    assert math.isclose(float(loss), math.log(n * rows * cols), rel_tol=1e-12)
    acc = prediction_accuracy(z, rand(n, rows, cols, 4, seed=8), rand(k, 5, 4, seed=9))
    assert acc.tolist() == [0.0] * k  # ties count as misses


@pytest.mark.parametrize("a", [0.0, 1.0, 5.0, 30.0])
def test_closed_form_when_the_context_holds_the_future(a):
    # z: orthogonal one-hot codes of length sqrt(a), one per patch. The context carries the
    # codes of the patches 1 and 2 rows below, c = [z_{t+1}; z_{t+2}], and W_1 = [I 0],
    # W_2 = [0 I] read them back. The positive then scores a and each of the M - 1 other
    # candidates 0, so every term is log(1 + (M - 1) e^{-a}) -> 0 as a grows.
    n, rows, cols = 2, 4, 3
    m = n * rows * cols
    z = (torch.eye(m, dtype=torch.float64) * math.sqrt(a)).view(n, rows, cols, m)
    below = torch.zeros(n, rows, cols, 2 * m, dtype=torch.float64)
    below[:, : rows - 1, :, :m] = z[:, 1:]
    below[:, : rows - 2, :, m:] = z[:, 2:]
    eye, zero = torch.eye(m, dtype=torch.float64), torch.zeros(m, m, dtype=torch.float64)
    w = torch.stack([torch.cat([eye, zero], 1), torch.cat([zero, eye], 1)])  # (2, M, 2M)
    expected = math.log(1 + (m - 1) * math.exp(-a))
    assert math.isclose(float(cpc_loss(z, below, w)), expected, rel_tol=1e-10, abs_tol=1e-12)
    assert math.isclose(float(cpc_loss_loop(z, below, w)), expected, rel_tol=1e-10,
                        abs_tol=1e-12)
    if a > 0:
        assert prediction_accuracy(z, below, w).tolist() == [1.0, 1.0]
    # swapping the maps asks step 1 for the patch 2 rows below: the positive now scores 0
    swapped = cpc_loss(z, below, w.flip(0))
    assert float(swapped) > expected or a == 0


def test_candidates_are_every_patch_of_the_batch():
    n, rows, cols, k = 2, 4, 3, 2
    z, c, w = rand(n, rows, cols, 5), rand(n, rows, cols, 6, seed=1), rand(k, 5, 6, seed=2)
    for step, (logits, labels) in enumerate(cpc_logits(z, c, w), start=1):
        assert logits.shape == (n * (rows - step) * cols, n * rows * cols)
        # label of context (b, t, j) is the flat index of z[b, t + step, j]
        b, t, j = 1, rows - step - 1, 2
        row = (b * (rows - step) + t) * cols + j
        assert z.reshape(-1, 5)[labels[row]].equal(z[b, t + step, j])
        prediction = w[step - 1] @ c[b, t, j]
        assert torch.allclose(logits[row], z.reshape(-1, 5) @ prediction)
    # a patch of another image is a negative: changing it changes the loss
    other = z.clone()
    other[1, 0, 0] += 1.0
    assert not torch.allclose(cpc_loss(z[:1], c[:1], w), cpc_loss(other, c, w)[None])


def test_loss_runs_in_float32_under_half_precision():
    z, c, w = (t.float() for t in (rand(2, 4, 3, 5), rand(2, 4, 3, 6, seed=1),
                                    rand(3, 5, 6, seed=2)))
    half = cpc_loss(z.bfloat16(), c.bfloat16(), w.bfloat16())
    assert half.dtype == torch.float32
    assert torch.allclose(half, cpc_loss(z.bfloat16().float(), c.bfloat16().float(),
                                         w.bfloat16().float()))


@pytest.mark.parametrize("z,c,w,match", [
    (torch.zeros(2, 4, 5), torch.zeros(2, 4, 1, 6), torch.zeros(1, 5, 6), "z must be"),
    (torch.zeros(2, 4, 1, 5), torch.zeros(2, 3, 1, 6), torch.zeros(1, 5, 6), "c must be"),
    (torch.zeros(2, 4, 1, 5), torch.zeros(2, 4, 1, 6), torch.zeros(1, 6, 5), "W must be"),
    (torch.zeros(2, 4, 1, 5), torch.zeros(2, 4, 1, 6), torch.zeros(4, 5, 6), "K <= 3"),
    (torch.zeros(2, 4, 1, 5, dtype=torch.long), torch.zeros(2, 4, 1, 6), torch.zeros(1, 5, 6),
     "floating"),
])
def test_loss_errors_are_one_line(z, c, w, match):
    for fn in (cpc_loss, cpc_loss_loop):
        with pytest.raises(SSLKitError, match=match) as info:
            fn(z, c, w)
        assert "\n" not in str(info.value)


# -- encoder and context ----------------------------------------------------------------------

def test_layernorm_keeps_each_patch_to_itself():
    # In training mode, a patch's z must not depend on the other patches of the batch. The same
    # test catches BatchNorm, which normalises with statistics of the whole batch.
    torch.manual_seed(0)
    patches = torch.rand(2, 3, 3, 1, 8, 8)
    changed = patches.clone()
    changed[1] = torch.rand(3, 3, 1, 8, 8)  # another image
    changed[0, 2, 2] = torch.rand(1, 8, 8)  # another patch of the same image
    g_enc = PatchEncoder(1, width=8, dim=6).train()
    z, z_changed = encode_patches(g_enc, patches), encode_patches(g_enc, changed)
    assert z.shape == (2, 3, 3, 6)
    assert torch.allclose(z[0, :2], z_changed[0, :2], atol=1e-6)
    assert not torch.allclose(z[1], z_changed[1])
    with_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten()).train()
    leak = encode_patches(with_bn, patches)[0, 0] - encode_patches(with_bn, changed)[0, 0]
    assert leak.abs().max() > 1e-3  # BatchNorm lets the other images in
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g_enc.modules())


def test_context_is_causal_down_each_column():
    torch.manual_seed(0)
    gru = nn.GRU(5, 7, batch_first=True)
    z = torch.randn(2, 5, 3, 5)
    c = column_context(gru, z)
    assert c.shape == (2, 5, 3, 7)
    for t in range(5):
        later = z.clone()
        later[:, t + 1:] = torch.randn_like(later[:, t + 1:])  # rows below t
        assert torch.allclose(column_context(gru, later)[:, : t + 1], c[:, : t + 1])
        if t < 4:
            assert not torch.allclose(column_context(gru, later)[:, t + 1:], c[:, t + 1:])
    # one column's context knows nothing of the other columns, and row 0 sees only row 0
    other = z.clone()
    other[:, :, 1:] = torch.randn_like(other[:, :, 1:])
    assert torch.allclose(column_context(gru, other)[:, :, 0], c[:, :, 0])
    first, _ = gru(z[:, :1, 2])  # (N, 1, H): the GRU on row 0 of column 2 alone
    assert torch.allclose(c[:, 0, 2], first[:, 0], atol=1e-6)


def test_context_equals_running_the_gru_on_each_column():
    torch.manual_seed(1)
    gru = nn.GRU(4, 3, batch_first=True)
    z = torch.randn(2, 4, 3, 4)
    c = column_context(gru, z)
    for n in range(2):
        for j in range(3):
            out, _ = gru(z[n, :, j][None])  # (1, R, H), top to bottom
            assert torch.allclose(c[n, :, j], out[0], atol=1e-6)


def test_augment_patches_acts_per_patch():
    patches = torch.full((2, 3, 3, 1, 4, 4), 0.5)
    out = augment_patches(patches, brightness=0.4, generator=torch.Generator().manual_seed(0))
    factors = out[..., 0, 0, 0].flatten()  # one value per patch
    assert out.shape == patches.shape and (0.3 <= factors).all() and (factors <= 0.7).all()
    assert len(factors.unique()) == 18  # every patch its own brightness
    ramp = torch.arange(4.0).expand(1, 1, 1, 1, 4, 4) / 4
    assert torch.equal(augment_patches(ramp, 0.0, flip_p=1.0), ramp.flip(-1))


# -- the method -------------------------------------------------------------------------------

def small_cpc(steps: int = 2) -> CPC:
    torch.manual_seed(0)
    encoder = CPCEncoder(1, size=16, patch=6, stride=5, width=8, dim=16, context_dim=16)
    return CPC(encoder, views=None, steps=steps, brightness=0.0)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    method = small_cpc()
    patches = method.encoder.grid(torch.rand(8, 1, 16, 16))  # (8, 3, 3, 1, 6, 6)
    assert patches.shape == (8, 3, 3, 1, 6, 6)
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = method.loss_on_patches(patches)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isclose(losses[0], math.log(8 * 9), rel_tol=0.05)  # near chance at the start
    assert losses[-1] < losses[0] - 1.5  # far below chance, log 72
    assert len(method.last_stats["accuracy"]) == 2


def test_method_forward_and_encoder_features():
    method = build_method("cpc", "convnet-small", 1, "shifted_digits", 32,
                          torch.Generator().manual_seed(0))
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    loss = method(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert method.W.grad is not None and method.encoder.g_enc.proj.weight.grad is not None
    assert len(method.last_stats["accuracy"]) == 3
    feats = extract_features(method.encoder, x)
    assert feats.shape == (4, method.encoder.feature_dim)
    # larger images are resized to the 32x32 the grid is cut from
    assert method.encoder(torch.rand(2, 1, 40, 40)).shape == (2, method.encoder.feature_dim)


def test_wrong_channels_or_too_short_signals_are_one_line_errors():
    """Grey images into an RGB CPC encoder and signals shorter than g_enc's 8-sample stride
    raised deep in torch's convolutions."""
    for call, x, match in (
        (CPC(CPCEncoder(3)), torch.rand(2, 1, 32, 32), r"\(N, 3, H, W\), got shape"),
        (CPCEncoder(1), torch.rand(2, 3, 32, 32), r"\(N, 1, H, W\), got shape"),
        (SignalCPC(), torch.randn(2, 1, 7), "L >= 8"),
        (SignalCPC(channels=2), torch.randn(2, 1, 64), r"\(N, 2, L\)"),
    ):
        with pytest.raises(SSLKitError, match=match) as err:
            call(x)
        assert "\n" not in str(err.value)


def test_unsupported_arch_is_a_one_line_error():
    with pytest.raises(SSLKitError, match="convnet-small") as info:
        build_method("cpc", "resnet18", 3, "cifar10", 32)
    assert "\n" not in str(info.value)


def test_cpc_trains_from_the_command_line(tmp_path):
    out = tmp_path / "cpc"
    assert main(["train", "cpc", "--out", str(out), "--epochs", "1", "--n-train", "64",
                 "--n-test", "60", "--batch-size", "32", "--profile", "ci", "--no-progress",
                 "--knn-every", "1"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["loss"]))
    assert 0.0 <= rows[0]["knn"] <= 1.0
    assert main(["eval", str(out)]) == 0


# -- CPC on a 1-D signal ------------------------------------------------------------------------

def test_sinusoids_hide_the_class_from_the_mean():
    x, y = sinusoids(2000, length=64, seed=0)
    assert x.shape == (2000, 1, 64) and y.shape == (2000,) and set(y.tolist()) == {0, 1, 2, 3}
    # random phases: the mean signal of every class is ~0 (std of one sample ~1.1 / sqrt(500))
    for cls in range(4):
        assert x[y == cls].mean(0).abs().max() < 0.25
    assert torch.equal(sinusoids(5, seed=3)[0], sinusoids(5, seed=3)[0])


def test_signal_cpc_shapes_and_a_falling_loss():
    torch.manual_seed(0)
    model = SignalCPC(steps=3)
    x, _ = sinusoids(16, length=128)
    z, c = model.encode(x)
    assert z.shape == (16, 16, 32) and c.shape == (16, 16, 32)
    assert model.features(x).shape == (16, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(x).item()
    assert math.isclose(first, math.log(16 * 16), rel_tol=0.05)
    for _ in range(20):
        loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(x).item() < first - 0.5
