"""sslkit.models: encoder output shapes, the CIFAR stem of the ResNets, heads, and the name
errors. Shapes follow from the architectures' definitions in the module docstrings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.models import ARCHS, ConvNet, build_encoder, projection_head, resnet


@pytest.mark.parametrize("side", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_convnet_small_output(side, channels):
    net = build_encoder("convnet-small", channels).eval()
    h = net(torch.rand(2, channels, side, side))
    assert net.feature_dim == 128
    assert h.shape == (2, 128)


def test_convnet_forward_blocks_shapes_and_agreement():
    net = ConvNet(3, (4, 8, 12, 16)).eval()
    x = torch.rand(3, 3, 32, 32)
    pooled = net.forward_blocks(x)
    assert [tuple(p.shape) for p in pooled] == [(3, 4), (3, 8), (3, 12), (3, 16)]
    # The last block's pooled output is h; the first equals pooling block 1's feature map.
    torch.testing.assert_close(pooled[-1], net(x))
    torch.testing.assert_close(pooled[0], net.blocks[0](x).mean(dim=(2, 3)))
    # Spatial side halves per block: 32 -> 16 -> 8 -> 4 -> 2.
    y = x
    for block, side in zip(net.blocks, (16, 8, 4, 2)):
        y = block(y)
        assert y.shape[-2:] == (side, side)


def test_convnet_features_are_pooled_relu_outputs():
    # ReLU outputs pooled over the whole map: h >= 0 everywhere.
    net = build_encoder("convnet", 1).eval()
    assert net.feature_dim == 256
    h = net(torch.randn(4, 1, 32, 32))
    assert h.shape == (4, 256) and bool((h >= 0).all())


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_cifar_stem(channels):
    net = build_encoder("resnet18", channels).eval()
    conv = net.conv1
    assert isinstance(conv, nn.Conv2d)
    assert conv.in_channels == channels and conv.out_channels == 64
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert isinstance(net.maxpool, nn.Identity) and isinstance(net.fc, nn.Identity)
    assert net.feature_dim == 512
    with torch.no_grad():
        assert net(torch.rand(2, channels, 32, 32)).shape == (2, 512)
    # With the CIFAR stem the first stage sees the full 32x32 resolution.
    with torch.no_grad():
        stem = net.relu(net.bn1(net.conv1(torch.rand(1, channels, 32, 32))))
        assert net.layer1(net.maxpool(stem)).shape == (1, 64, 32, 32)


def test_resnet50_feature_dim_and_imagenet_stem():
    assert resnet(50, 3).feature_dim == 2048
    imagenet = resnet(18, 1, cifar_stem=False)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert imagenet.conv1.in_channels == 1
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_every_arch_builds():
    for arch in ARCHS:
        if arch == "resnet50":
            continue  # slow to build; feature size checked above
        net = build_encoder(arch, 3)
        assert isinstance(net.feature_dim, int) and net.feature_dim > 0


def test_unknown_arch_is_a_one_line_error():
    with pytest.raises(SSLKitError) as err:
        build_encoder("resnet9000", 3)
    msg = str(err.value)
    assert "\n" not in msg and "resnet9000" in msg and "convnet-small" in msg


@pytest.mark.parametrize("kind", ["mlp", "linear", "none"])
def test_projection_head_kinds(kind):
    head = projection_head(32, 8, hidden_dim=16, kind=kind).eval()
    h = torch.randn(5, 32)
    z = head(h)
    if kind == "none":
        assert torch.equal(z, h)
    else:
        assert z.shape == (5, 8)
    if kind == "mlp":
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(32, 16), (16, 8)]
        assert any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
        assert any(isinstance(m, nn.ReLU) for m in head.modules())
    if kind == "linear":  # affine: g(a + b) - g(b) = W a
        a, b = torch.randn(5, 32), torch.randn(5, 32)
        torch.testing.assert_close(head(a + b) - head(b), head(a) - head(torch.zeros(5, 32)),
                                   atol=1e-5, rtol=0)


def test_mlp_head_hidden_defaults_to_input_size():
    head = projection_head(24, 4)
    assert head[0].out_features == 24


def test_unknown_head_is_a_one_line_error():
    with pytest.raises(SSLKitError) as err:
        projection_head(8, 4, kind="transformer")
    msg = str(err.value)
    assert "\n" not in msg and "transformer" in msg and "mlp" in msg


def test_image_side_too_small_for_the_convnet_is_a_one_line_error():
    """--image-size 8 with convnet-small failed in the first forward ("Output size is too
    small"): four max-pools leave nothing of 8 pixels; 16 is the smallest side that works."""
    with pytest.raises(SSLKitError, match="--image-size 16 or more") as info:
        build_encoder("convnet-small", 3, image_size=8)
    assert "\n" not in str(info.value)
    net = build_encoder("convnet-small", 3, image_size=16).eval()
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 128)
    assert build_encoder("resnet18", 3, image_size=8).feature_dim == 512  # no max-pool


def test_image_side_the_vit_patches_do_not_tile_is_a_one_line_error():
    """--image-size 18 with --arch vit passed the build and failed in the first forward, after
    the run folder was made: 4x4 patches do not tile 18 pixels. The error names both multiples
    of 4 around it."""
    for side, fix in ((18, "use --image-size 16 or 20"), (2, "use --image-size 4")):
        with pytest.raises(SSLKitError, match=fix) as info:
            build_encoder("vit", 3, image_size=side)
        assert "\n" not in str(info.value)
    net = build_encoder("vit", 3, image_size=20).eval()  # positions interpolated to a 5x5 grid
    assert net(torch.rand(2, 3, 20, 20)).shape == (2, net.feature_dim)


@pytest.mark.parametrize("arch", ["convnet-small", "resnet18"])
def test_images_with_the_wrong_channel_count_are_a_one_line_error(arch):
    """A 1-channel encoder fed RGB images failed deep inside conv1 with torch's message."""
    net = build_encoder(arch, 1).eval()
    with pytest.raises(SSLKitError, match=r"1 channel.*got \(2, 3, 32, 32\)") as info:
        net(torch.rand(2, 3, 32, 32))
    assert "\n" not in str(info.value)
    with pytest.raises(SSLKitError, match=r"\(N, C, H, W\)"):
        net(torch.rand(1, 32, 32))  # one image without its batch axis


@pytest.mark.parametrize("arch", ["convnet-small", "resnet18", "vit"])
@pytest.mark.parametrize("images,expected", [
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float images in [0, 1], got torch.uint8"),
    (torch.zeros(2, 32, 32, 3), "channels-last (N, H, W, C): pass x.permute(0, 3, 1, 2)"),
    (torch.zeros(3, 32, 32), "add the batch axis, x[None]"),
    ([[0.0]], "got list"),
])
def test_every_encoder_names_the_fix_for_images_as_pil_or_numpy_give_them(arch, images, expected):
    """uint8 pixels failed inside conv1 ("expected scalar type Byte"); channels-last images
    were taken for 32 channels (ViT: for non-square images)."""
    net = build_encoder(arch, 3).eval()
    with pytest.raises(SSLKitError) as info:
        net(images)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_convnet_images_smaller_than_its_pools_are_a_one_line_error():
    """8x8 images through four max-pools failed in the fourth ("Output size is too small")."""
    net = ConvNet(1, (4, 8, 12, 16)).eval()
    with pytest.raises(SSLKitError, match="at least 16") as info:
        net(torch.rand(2, 1, 8, 8))
    assert "\n" not in str(info.value)
    with pytest.raises(SSLKitError, match="at least 16"):
        net.forward_blocks(torch.rand(2, 1, 16, 8))
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, 16)


def test_resnet_depth_other_than_18_or_50_is_a_one_line_error():
    with pytest.raises(SSLKitError, match="18 or 50") as info:
        resnet(34)
    assert "\n" not in str(info.value)


def test_decoder_mirrors_the_convnet_and_restores_the_image_side():
    """Stages (w3, w2, w1, w1) each doubling the side: a 2^4-fold upsampling of the last map."""
    from sslkit.models.decoder import decoder_for, feature_map

    encoder = ConvNet(3, (4, 8, 12, 16)).eval()
    decoder = decoder_for(encoder, 2).eval()
    widths = [stage[1].out_channels for stage in decoder.stages]
    assert widths == [12, 8, 4, 4] and decoder.head.out_channels == 2
    for side in (16, 32, 48):
        z = feature_map(encoder, torch.rand(1, 3, side, side))
        assert z.shape == (1, 16, side // 16, side // 16)
        assert decoder(z).shape == (1, 2, side, side)


def test_decoder_for_an_encoder_without_conv_blocks_is_a_one_line_error():
    """A ViT has .blocks (transformer blocks, no convolution): decoder_for failed with
    'IndexError: list index out of range' instead of saying what encoder it needs."""
    from sslkit.models.decoder import decoder_for, resolve_encoder

    vit = build_encoder("vit", 3)
    for call in (lambda: decoder_for(vit, 3), lambda: resolve_encoder(vit, 3)):
        with pytest.raises(SSLKitError, match="conv blocks") as info:
            call()
        assert "\n" not in str(info.value)


def test_an_encoder_of_another_channel_count_takes_its_own_images():
    """A 2-channel ConvNet given its (N, 2, 4, 4) images was told they looked channels-last
    (width 4 is a channel count); the channels-last hint is for a mismatch only."""
    net = ConvNet(2, widths=(8,)).eval()
    assert net(torch.rand(2, 2, 4, 4)).shape == (2, 8)
