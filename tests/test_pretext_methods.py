"""The classification pretext tasks: rotation (Gidaris et al., 2018), jigsaw puzzles (Noroozi &
Favaro, 2016) and relative patch position (Doersch et al., 2015).

Mathematics of the tile helpers (split/merge are inverse, a permutation and its inverse restore
the image, the relative-patch labels match the geometry, the permutation set is what greedy
max-min Hamming selection gives), one step of each method (finite loss, gradient reaching the
encoder), the training loop running each by name, and a rotation head beating chance after a
short CPU training.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from sslkit.augment import (
    NEIGHBOURS,
    hamming_permutations,
    jigsaw_tiles,
    jitter_tiles,
    merge_tiles,
    min_hamming_distance,
    patch_pairs,
    rotate_batch,
    split_tiles,
)
from sslkit.data import ImageData
from sslkit.errors import SSLKitError
from sslkit.methods import METHODS, Jigsaw, RelativePatch, Rotation, build_method
from sslkit.methods.jigsaw import normalise_tiles
from sslkit.models import ConvNet
from sslkit.train import TrainConfig, train


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coordinate_image(n: int = 2, side: int = 6) -> torch.Tensor:
    """(n, 1, side, side): pixel (i, j) of image m holds 1000 m + 10 (grid row) + (grid col),
    plus a small unique offset, so that every tile is recognisable."""
    cell = side // 3
    i = torch.arange(side)[:, None] // cell
    j = torch.arange(side)[None, :] // cell
    unique = torch.arange(side * side).view(side, side) / (side * side)
    base = (10 * i + j + unique)[None, None]
    return base + 1000 * torch.arange(n).view(n, 1, 1, 1)


# ---------------------------------------------------------------------------------------------
# rotate_batch (the contract; the notebook's exercise)


def test_rotate_batch_blocks_undo_to_the_input():
    x = torch.randn(3, 2, 5, 5, generator=gen())
    x_rot, labels = rotate_batch(x)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for k, block in enumerate(x_rot.chunk(4)):
        assert torch.equal(torch.rot90(block, 4 - k, dims=(2, 3)), x)  # k + (4 - k) = a full turn
    corner = torch.zeros(1, 1, 3, 3)
    corner[0, 0, 0, 2] = 1  # top right
    turned = rotate_batch(corner)[0][1, 0]
    assert turned[0, 0] == 1  # a quarter turn counter-clockwise takes top right to top left


# ---------------------------------------------------------------------------------------------
# Tiles


def test_split_tiles_numbers_row_by_row_and_merge_inverts_it():
    x = coordinate_image(2, 9)
    tiles = split_tiles(x)
    assert tiles.shape == (2, 9, 1, 3, 3)
    for t in range(9):
        r, c = divmod(t, 3)
        assert torch.equal(tiles[:, t], x[:, :, 3 * r:3 * r + 3, 3 * c:3 * c + 3])
    assert torch.equal(merge_tiles(tiles), x)
    with pytest.raises(SSLKitError, match="divisible"):
        split_tiles(torch.zeros(1, 1, 32, 32))


def test_jigsaw_tiles_then_inverse_permutation_restores_the_image():
    x = torch.randn(4, 3, 12, 12, generator=gen(1))
    perms = hamming_permutations(4, seed=3)
    shuffled = jigsaw_tiles(x, perms)
    rows = torch.arange(4)[:, None]
    assert torch.equal(shuffled, split_tiles(x)[rows, perms])  # out[n, i] = tile perms[n, i]
    restored = torch.empty_like(shuffled)
    restored[rows, perms] = shuffled
    assert torch.equal(merge_tiles(restored), x)
    inverse = perms.argsort(dim=1)  # the inverse permutation undoes the shuffle
    assert torch.equal(merge_tiles(jigsaw_tiles(merge_tiles(shuffled), inverse)), x)


def test_jitter_tiles_crops_inside_each_tile():
    tiles = split_tiles(coordinate_image(3, 12))  # (3, 9, 1, 4, 4)
    out = jitter_tiles(tiles, 3, gen(2))
    assert out.shape == (3, 9, 1, 3, 3)
    for n, t in itertools.product(range(3), range(9)):
        crops = [tiles[n, t, :, a:a + 3, b:b + 3] for a in range(2) for b in range(2)]
        assert any(torch.equal(out[n, t], c) for c in crops)


def test_patch_pairs_labels_match_the_geometry():
    x = coordinate_image(8, 6)
    labels = torch.arange(8)
    centre, neighbour = patch_pairs(x, labels)
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    for k in range(8):
        assert int(centre[k, 0, 0, 0]) % 1000 == 11  # grid row 1, column 1: the middle
        code = int(neighbour[k, 0, 0, 0]) % 1000
        assert divmod(code, 10) == (1 + offsets[k][0], 1 + offsets[k][1])
        assert NEIGHBOURS[k] == 3 * (1 + offsets[k][0]) + 1 + offsets[k][1]


# ---------------------------------------------------------------------------------------------
# The permutation set


def test_hamming_permutations_are_distinct_deterministic_permutations():
    perms = hamming_permutations(20, seed=0)
    assert perms.shape == (20, 9) and perms.dtype == torch.long
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 20
    assert torch.equal(perms, hamming_permutations(20, seed=0))
    assert not torch.equal(perms, hamming_permutations(20, seed=1))
    assert torch.equal(hamming_permutations(5, seed=0), perms[:5])  # greedy: a prefix


def test_min_hamming_distance_as_computed_pair_by_pair():
    perms = hamming_permutations(12, seed=4)
    brute = min(sum(a != b for a, b in zip(p, q))
                for p, q in itertools.combinations(perms.tolist(), 2))
    assert min_hamming_distance(perms) == brute
    # The second pick is as far as possible from the first: all 9 positions differ.
    assert min_hamming_distance(hamming_permutations(2, seed=5)) == 9
    # Greedy max-min beats random sets of the same size by a wide margin.
    randoms = [min_hamming_distance(torch.stack([torch.randperm(9, generator=gen(s))
                                                 for _ in range(12)])) for s in range(5)]
    assert min_hamming_distance(perms) > max(randoms)


def test_hamming_permutations_one_line_errors():
    with pytest.raises(SSLKitError, match="count"):
        hamming_permutations(0)
    with pytest.raises(SSLKitError, match="grid"):
        hamming_permutations(3, grid=4)


# ---------------------------------------------------------------------------------------------
# The methods


def tiny(cls, **kw):
    torch.manual_seed(0)
    return cls(ConvNet(1, (4, 8, 8, 8)), **kw)


@pytest.mark.parametrize("cls,classes", [(Rotation, 4), (Jigsaw, 30), (RelativePatch, 8)],
                         ids=["rotation", "jigsaw", "relative_patch"])
def test_one_step_finite_loss_and_gradient_reaches_the_encoder(cls, classes):
    kw = {} if cls is Rotation else {"generator": gen(0)}
    method = tiny(cls, **kw)
    x = (torch.rand(6, 1, 32, 32, generator=gen(1)) * 255).to(torch.uint8)
    logits, labels = method.logits_labels(x)
    assert logits.shape[1] == classes and len(logits) == len(labels)
    assert int(labels.min()) >= 0 and int(labels.max()) < classes
    loss = method(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grad = method.encoder.blocks[0][0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_jigsaw_puzzles_are_the_permuted_tiles():
    method = tiny(Jigsaw, gap=0, tile_size=10, generator=gen(3))
    x = torch.rand(5, 1, 30, 30, generator=gen(4))  # 3 cells of 10: no crop, no gap
    tiles, labels = method.make_puzzles(x)
    assert torch.equal(tiles, jigsaw_tiles(x, method.permutations[labels]))
    assert min_hamming_distance(method.permutations) >= 6
    method = tiny(Jigsaw, gap=0, tile_size=10, normalise=True, generator=gen(3))
    tiles, labels = method.make_puzzles(x)
    assert torch.equal(tiles, normalise_tiles(jigsaw_tiles(x, method.permutations[labels])))


def test_jigsaw_tiles_are_normalised_each_on_its_own():
    """normalise=True, as Noroozi & Favaro: every tile's mean and std independently, so that
    brightness and contrast shared by an image's tiles say nothing about their order. Each tile
    channel: mean 0, std 1; the puzzles of a*x + b (and of tiles brightened by different
    amounts) are those of x."""
    x = torch.rand(4, 3, 36, 36, generator=gen(6))
    tiles, labels = tiny(Jigsaw, normalise=True, generator=gen(7)).make_puzzles(x)
    assert torch.allclose(tiles.mean(dim=(3, 4)), torch.zeros(4, 9, 3), atol=1e-5)
    assert torch.allclose(tiles.std(dim=(3, 4), correction=0), torch.ones(4, 9, 3), atol=1e-4)
    again, labels2 = tiny(Jigsaw, normalise=True, generator=gen(7)).make_puzzles(0.5 * x + 0.25)
    assert torch.equal(labels, labels2) and torch.allclose(again, tiles, atol=1e-4)
    # per-cell gain and offset (a vignette): the crops never straddle two cells, so no effect
    method = tiny(Jigsaw, gap=0, tile_size=12, normalise=True, generator=gen(8))
    gain = 1 + torch.arange(9.0).view(3, 3).repeat_interleave(12, 0).repeat_interleave(12, 1)
    plain, _ = method.make_puzzles(x)
    method.generator.manual_seed(8)
    lit, _ = method.make_puzzles(gain * x + gain / 10)
    assert torch.allclose(lit, plain, atol=1e-4)
    flat = normalise_tiles(torch.full((1, 9, 1, 4, 4), 0.3))  # a flat tile stays flat: 0
    assert flat.abs().max() < 1e-4  # rounding of the mean, not blown up to std 1


@pytest.mark.parametrize("cls", [Jigsaw, RelativePatch], ids=["jigsaw", "relative_patch"])
def test_a_training_batch_of_one_is_a_one_line_error(cls):
    """The head's BatchNorm cannot normalise one sample in training (it raised deep in
    torch); in eval mode a single image is fine."""
    method = tiny(cls, generator=gen(0))
    with pytest.raises(SSLKitError, match="at least 2 images") as err:
        method(torch.rand(1, 1, 32, 32))
    assert "\n" not in str(err.value)
    method.eval()
    logits, labels = method.logits_labels(torch.rand(1, 1, 32, 32))
    assert logits.shape == (1, len(getattr(method, "permutations", range(8)))) and len(labels) == 1


def test_relative_patch_pairs_follow_the_labels():
    method = tiny(RelativePatch, gap=0, tile_size=2, generator=gen(5))
    x = coordinate_image(16, 6)
    centre, neighbour, labels = method.make_pairs(x)
    expected = patch_pairs(x, labels)
    assert torch.allclose(centre, expected[0]) and torch.allclose(neighbour, expected[1])


@pytest.mark.parametrize("name", ["rotation", "jigsaw", "relative_patch"])
def test_the_training_loop_runs_each_method_by_name(tmp_path, shifted_parts, name):
    assert name in METHODS and "simclr" in METHODS
    data = ImageData(name="shifted_digits", **shifted_parts).subset(64, 32)
    cfg = TrainConfig(method=name, n_train=64, n_test=32, batch_size=32, epochs=1,
                      warmup_epochs=0, device="cpu", knn_every=1)
    method, rows = train(cfg, tmp_path, progress=False, data=data)
    assert isinstance(method, (Rotation, Jigsaw, RelativePatch))
    assert rows[-1]["loss"] > 0 and 0 <= rows[-1]["knn"] <= 1


def test_build_method_gives_each_pretext_method():
    for name, cls in (("rotation", Rotation), ("jigsaw", Jigsaw),
                      ("relative_patch", RelativePatch)):
        assert isinstance(build_method(name, "convnet-small", 1, "shifted_digits", 32), cls)


@pytest.mark.parametrize("name,cls", [("jigsaw", Jigsaw), ("relative_patch", RelativePatch)])
def test_a_side_too_small_for_the_tiles_is_a_one_line_error(name, cls):
    """3 tiles of side s // 3 each lose the gap (2) to their crop: side 9 leaves 1 pixel per
    tile, side 8 none (it failed in F.interpolate with an empty input, and side 4 in randint)."""
    for side in (4, 8):
        with pytest.raises(SSLKitError, match="use --image-size 9 or more") as err:
            build_method(name, "resnet18", 1, "digits", side)
        assert "\n" not in str(err.value)
        with pytest.raises(SSLKitError, match="images of side"):  # a direct call, as in 01
            tiny(cls, generator=gen(0))(torch.rand(4, 1, side, side))
    method = build_method(name, "resnet18", 1, "digits", 9)
    assert torch.isfinite(method(torch.rand(4, 1, 9, 9)))
    wide = tiny(cls, gap=4, generator=gen(0))  # the limit follows the gap: 3 x (4 + 1)
    with pytest.raises(SSLKitError, match="15 or more"):
        wide(torch.rand(4, 1, 14, 14))
    assert torch.isfinite(wide(torch.rand(4, 1, 15, 15)))


def test_rotation_head_beats_chance_after_a_short_training(shifted_parts):
    """40 Adam steps on 64 digits: the 4-way accuracy on 4 x 64 rotations of other digits is far
    above chance (25 %; the binomial standard deviation is under 3 points)."""
    torch.manual_seed(0)
    method = Rotation(ConvNet(1, (8, 16, 16, 16)))
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    train_x, test_x = shifted_parts["train_x"][:64], shifted_parts["test_x"][:64]
    for _ in range(40):
        loss = method(train_x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()
    with torch.no_grad():
        logits, labels = method.logits_labels(test_x)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    assert accuracy > 0.4, f"rotation accuracy {accuracy:.2f} after 40 steps"


def test_rotation_labels_say_which_rotation_the_encoder_saw():
    # Record what the encoder receives: image j of the batch must be the input image j mod N
    # turned by labels[j] quarter turns (the contract of rotate_batch, kept by the method).
    class Recorder(torch.nn.Module):
        feature_dim = 1

        def forward(self, x):
            self.seen = x
            return x.mean(dim=(1, 2, 3))[:, None]

    method = Rotation(Recorder())
    x = torch.rand(3, 1, 5, 5, generator=gen(2))
    _, labels = method.logits_labels(x)
    for j, k in enumerate(labels.tolist()):
        assert torch.equal(method.encoder.seen[j], torch.rot90(x[j % 3], k, dims=(1, 2)))
