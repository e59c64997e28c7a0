"""The small ViT and MAE's patch helpers: shapes, inverses, attention rows that sum to 1."""

import pytest
import torch

from sslkit.errors import SSLKitError
from sslkit.models.vit import ViT, patchify, random_masking, unpatchify


def test_patchify_ordering_is_h_w_p_q_c():
    imgs = torch.randn(2, 3, 8, 8)
    patches = patchify(imgs, 4)  # (2, 4, 48)
    assert patches.shape == (2, 4, 48)
    # patch (h=1, w=0) = rows 4..7, columns 0..3; flattened as (p, q, c)
    expected = imgs[1, :, 4:8, 0:4].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[1, 2], expected)


def test_unpatchify_inverts_patchify():
    imgs = torch.randn(3, 1, 32, 32)
    assert torch.equal(unpatchify(patchify(imgs, 4), 4), imgs)
    with pytest.raises(SSLKitError):
        patchify(torch.randn(1, 3, 30, 30), 4)


def test_random_masking_keeps_the_smallest_noise():
    x = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 8, 1)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6],
                          [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    kept, mask, ids_restore = random_masking(x, 0.75, noise)
    assert kept.shape == (2, 2, 1)  # int(8 * 0.25) = 2 kept
    assert kept[0, :, 0].tolist() == [1.0, 5.0] and kept[1, :, 0].tolist() == [8.0, 9.0]
    assert mask[0].tolist() == [1, 0, 1, 1, 1, 0, 1, 1]
    assert torch.equal(torch.argsort(ids_restore, dim=1)[:, :2].sort(dim=1).values,
                       torch.tensor([[1, 5], [0, 1]]))


def test_random_masking_noise_of_the_wrong_shape_is_a_one_line_error():
    with pytest.raises(SSLKitError, match=r"noise must be \(N, L\) = \(2, 8\).*got \(8,\)"):
        random_masking(torch.zeros(2, 8, 3), 0.75, torch.rand(8))


def test_vit_shapes_and_cls_output():
    torch.manual_seed(0)
    net = ViT(32, 4, in_channels=1, dim=32, depth=2, heads=4)
    x = torch.rand(5, 1, 32, 32)
    assert net(x).shape == (5, 32) and net.feature_dim == 32
    assert net.tokens(x).shape == (5, 1 + 64, 32)
    assert net(torch.rand(5, 1, 16, 16)).shape == (5, 32)  # a local crop: positions interpolated


def test_attention_rows_sum_to_one_and_cls_maps():
    torch.manual_seed(0)
    net = ViT(32, 8, in_channels=3, dim=32, depth=2, heads=2)
    x = torch.rand(3, 3, 32, 32)
    attn = net.last_attention(x)
    assert attn.shape == (3, 2, 17, 17) and bool((attn >= 0).all())
    assert torch.allclose(attn.sum(-1), torch.ones(3, 2, 17), atol=1e-5)
    maps = net.cls_attention_maps(x)
    assert maps.shape == (3, 2, 4, 4)
    assert torch.allclose(maps.sum((-1, -2)) + attn[:, :, 0, 0], torch.ones(3, 2), atol=1e-5)


def test_wrong_channels_is_an_error():
    with pytest.raises(SSLKitError):
        ViT(32, 4, in_channels=1)(torch.rand(2, 3, 32, 32))


def test_attention_equals_the_plain_formula():
    # softmax(q kᵀ / sqrt(d_head)) v per head, written out with a loop over heads.
    torch.manual_seed(0)
    attn_layer = ViT(8, 4, 1, dim=12, depth=1, heads=3).blocks[0].attn
    x = torch.randn(2, 5, 12)
    qkv = attn_layer.qkv(x)  # (N, T, 3·dim): q, k, v, each heads x d_head
    heads = []
    for h in range(3):
        q, k, v = (qkv[..., i * 12 + 4 * h: i * 12 + 4 * h + 4] for i in range(3))
        heads.append(torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v)  # sqrt(4) = 2
    expected = attn_layer.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(attn_layer(x), expected, atol=1e-5)


def test_block_is_pre_norm():
    # y = x + Attn(LN1(x)), out = y + MLP(LN2(y)): each sublayer sees a normalised copy, the
    # residual stream itself is never normalised inside the block (pre-norm, as ViT and MAE).
    torch.manual_seed(0)
    block = ViT(8, 4, 1, dim=8, depth=1, heads=2).blocks[0]
    x = torch.randn(2, 5, 8)
    y = x + block.attn(block.norm1(x))
    assert torch.allclose(block(x), y + block.mlp(block.norm2(y)), atol=1e-6)


def test_the_representation_is_the_final_cls_token():
    # With no blocks, h = LN(cls + pos_0) whatever the image: the [CLS] token, not a pool.
    torch.manual_seed(0)
    net = ViT(8, 4, 1, dim=8, depth=0, heads=2)
    h = net(torch.rand(3, 1, 8, 8))
    expected = net.norm(net.cls_token[0, 0] + net.pos_embed[0, 0])
    assert torch.allclose(h, expected.expand(3, -1), atol=1e-6)


def test_non_square_images_are_a_one_line_error():
    with pytest.raises(SSLKitError, match="square") as info:
        ViT(8, 4, 1, dim=8, depth=1, heads=2)(torch.rand(2, 1, 8, 12))
    assert "\n" not in str(info.value)


def test_an_image_without_its_batch_axis_is_named_as_such():
    """(C, S, S) was reported as 'built for 3 channels, got 32': the side read as channels."""
    with pytest.raises(SSLKitError, match=r"got \(3, 32, 32\): for one image add the batch "
                                          r"axis, x\[None\]"):
        ViT(32, 4, 3, dim=8, depth=1, heads=2)(torch.rand(3, 32, 32))


@pytest.mark.parametrize("patch_size", [0, -4])
def test_a_patch_size_below_one_is_a_one_line_error(patch_size):
    with pytest.raises(SSLKitError, match="patch size") as info:
        ViT(32, patch_size, 3, dim=8, depth=1, heads=2)
    assert "\n" not in str(info.value)
    with pytest.raises(SSLKitError, match="patch size"):
        patchify(torch.rand(1, 3, 8, 8), patch_size)
    with pytest.raises(SSLKitError, match="patch size"):
        unpatchify(torch.rand(1, 4, 48), patch_size)
