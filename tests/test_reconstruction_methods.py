"""The reconstruction pretext methods: Lab conversion (colorization) against known values and
invariances, block masks and the masked loss (inpainting) in closed form, and both methods'
losses carrying gradients to the encoder and decreasing under a few optimiser steps."""

import pytest
import torch
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.methods.colorization import (
    Colorization,
    colour_patches,
    lab_to_rgb,
    merge_lab,
    rgb_to_lab,
    split_lab,
)
from sslkit.methods.inpainting import Inpainting, masked_reconstruction_loss, random_block_mask
from sslkit.models.convnet import ConvNet
from sslkit.models.decoder import ConvDecoder, decoder_for, feature_map


def pixel(*rgb: float) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------
# Lab conversion


@pytest.mark.parametrize("rgb, lab", [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),
    ((0.0, 1.0, 0.0), (87.7347, -86.1827, 83.1793)),
    ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),
    # sRGB 0.5 -> linear ((0.5 + 0.055) / 1.055)^2.4 = 0.21404 = Y; L = 116 Y^(1/3) - 16
    ((0.5, 0.5, 0.5), (116 * 0.2140411404 ** (1 / 3) - 16, 0.0, 0.0)),
])
def test_lab_known_values(rgb, lab):
    got = rgb_to_lab(pixel(*rgb)).flatten()
    assert torch.allclose(got, torch.tensor(lab), atol=2e-3), (got, lab)


def test_lab_dark_values_use_the_linear_segments():
    # sRGB c <= 0.04045 -> linear c / 12.92; Y <= (6/29)^3 -> L = (29/3)^3 Y
    c = 0.02
    got = rgb_to_lab(pixel(c, c, c)).flatten()
    assert torch.allclose(got[0], torch.tensor((29 / 3) ** 3 * c / 12.92), atol=1e-4)
    assert got[1:].abs().max() < 1e-4


def test_lab_round_trip():
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-4
    x64 = x.double()
    assert (lab_to_rgb(rgb_to_lab(x64)) - x64).abs().max() < 1e-10


def test_grey_has_no_colour_and_l_depends_only_on_luminance():
    g = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    lab = rgb_to_lab(g.expand(4, 3, 8, 8))
    assert lab[:, 1:].abs().max() < 1e-3
    # L is a monotone function of the luminance Y alone: two colours with the same linear Y
    # (changing R against B along Y's coefficients) have the same L.
    lin = torch.tensor([0.2, 0.3, 0.4])
    shift = torch.tensor([0.0722, 0.0, -0.2126]) * 0.5  # dY = 0.2126 dR + 0.0722 dB = 0
    def encode(v):
        return torch.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)
    a = rgb_to_lab(encode(lin).view(1, 3, 1, 1))
    b = rgb_to_lab(encode(lin + shift).view(1, 3, 1, 1))
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-3)
    assert (a[:, 1:] - b[:, 1:]).abs().max() > 1
    # and L grows with luminance
    greys = torch.linspace(0, 1, 11).view(1, 1, 1, 11).expand(1, 3, 1, 11)
    assert (rgb_to_lab(greys)[0, 0, 0].diff() > 0).all()


def test_split_merge_is_identity():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    L, ab = split_lab(x)
    assert L.shape == (3, 1, 8, 8) and ab.shape == (3, 2, 8, 8)
    assert 0 <= L.min() and L.max() <= 100
    assert torch.allclose(merge_lab(L, ab), x, atol=1e-4)


def test_merge_clamps_out_of_gamut():
    L = torch.full((1, 1, 2, 2), 50.0)
    ab = torch.tensor([[[[110.0, -110.0], [0.0, 90.0]], [[-110.0, 110.0], [0.0, -90.0]]]])
    raw = lab_to_rgb(torch.cat([L, ab], 1))
    assert raw.min() < 0 or raw.max() > 1  # out of gamut
    assert torch.equal(merge_lab(L, ab), raw.clamp(0, 1))


def test_lab_gradients_are_finite_at_black_and_white():
    x = torch.tensor([0.0, 1.0, 0.02, 0.5]).view(1, 1, 1, 4).expand(1, 3, 1, 4).clone()
    x.requires_grad_()
    lab_to_rgb(rgb_to_lab(x)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_colour_patches():
    p = colour_patches(6, size=16, seed=3)
    assert p.shape == (6, 3, 16, 16) and p.dtype == torch.uint8
    assert torch.equal(p, colour_patches(6, size=16, seed=3))
    assert not torch.equal(p, colour_patches(6, size=16, seed=4))
    ab = split_lab(p.float() / 255)[1]
    assert ab.abs().mean() > 2  # real colour, unlike the grey digits


# ---------------------------------------------------------------------------------------------
# Decoder


def test_decoder_mirrors_the_encoder():
    enc = ConvNet(1, (4, 8, 12, 16))
    dec = decoder_for(enc, 2)
    assert isinstance(dec, ConvDecoder)
    z = feature_map(enc, torch.rand(2, 1, 32, 32))
    assert z.shape == (2, 16, 2, 2)
    assert dec(z).shape == (2, 2, 32, 32)


# ---------------------------------------------------------------------------------------------
# Colorization


def tiny_colorization(seed: int = 0) -> Colorization:
    torch.manual_seed(seed)
    return Colorization(3, ConvNet(1, (4, 8, 8, 8)))


def test_colorization_encoder_takes_one_channel():
    model = Colorization()  # convnet-small
    assert model.encoder(torch.rand(2, 1, 32, 32)).shape == (2, model.encoder.feature_dim)
    with pytest.raises(Exception, match="in_channels=3"):
        Colorization(1)


def test_colorize_keeps_l():
    model = tiny_colorization()
    x = colour_patches(4, size=16, seed=1)
    out = model.colorize(x)
    assert out.shape == (4, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    L_in, _ = split_lab(x.float() / 255)
    # With the last layer zeroed the prediction is ab = 0: a grey image with exactly the input's L.
    head = model.decoder.head
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    grey = model.colorize(x)
    L_out, ab_out = split_lab(grey)
    assert torch.allclose(L_out, L_in, atol=1e-3)
    assert ab_out.abs().max() < 1e-2
    assert model.training  # colorize restores the mode


def test_colorize_keeps_l_where_in_gamut():
    model = tiny_colorization(1)
    x = colour_patches(4, size=16, seed=2)
    L_in, _ = split_lab(x.float() / 255)
    with torch.no_grad():  # colorize predicts in eval mode (BatchNorm's running statistics)
        raw = lab_to_rgb(torch.cat([L_in, model.eval().predict_ab(L_in.clone())], 1))
    inside = ((raw > 0) & (raw < 1)).all(1, keepdim=True)
    L_out, _ = split_lab(model.colorize(x))
    assert inside.any()
    assert (L_out - L_in)[inside].abs().max() < 1e-3


def test_colorization_loss_and_gradients():
    model = tiny_colorization()
    x = colour_patches(4, size=16, seed=0)
    loss = model(x)
    assert loss.shape == () and torch.isfinite(loss)
    assert torch.allclose(loss, model(x.float() / 255))  # uint8 and float inputs agree
    # closed form: the mean squared ab error in units of 110
    ab_hat, ab = torch.full((1, 2, 2, 2), 55.0), torch.zeros(1, 2, 2, 2)
    assert torch.allclose(model.forward_loss(ab_hat, ab), torch.tensor(0.25))
    loss.backward()
    first = model.encoder.blocks[0][0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_colorization_trains():
    model = tiny_colorization(2)
    x = colour_patches(8, size=16, seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---------------------------------------------------------------------------------------------
# Masks and the masked loss


def test_random_block_mask():
    g = torch.Generator().manual_seed(0)
    m = random_block_mask(32, 16, 5, g)
    assert m.shape == (32, 1, 16, 16) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m.sum(dim=(1, 2, 3)) == 25).all()
    # one square: its rows and columns are 5 consecutive indices
    for mi in m[:, 0]:
        rows, cols = mi.any(1).nonzero().flatten(), mi.any(0).nonzero().flatten()
        assert len(rows) == 5 and len(cols) == 5
        assert rows[-1] - rows[0] == 4 and cols[-1] - cols[0] == 4
    assert len({tuple(mi.flatten().tolist()) for mi in m}) > 10  # positions vary
    again = random_block_mask(32, 16, 5, torch.Generator().manual_seed(0))
    assert torch.equal(m, again)
    rect = random_block_mask(4, (8, 12), 8, g)
    assert rect.shape == (4, 1, 8, 12) and (rect.sum(dim=(1, 2, 3)) == 64).all()
    full = random_block_mask(2, 6, 6)
    assert (full == 1).all()
    with pytest.raises(SSLKitError, match="block must be 1 to 6 pixels wide") as info:
        random_block_mask(2, 6, 7)
    assert "\n" not in str(info.value)


def test_block_positions_cover_the_image():
    m = random_block_mask(400, 8, 3, torch.Generator().manual_seed(1))
    covered = m.sum(0)[0]
    assert (covered > 0).all()  # every pixel, corners included, is masked sometimes
    assert covered[0, 0] < covered[3, 3]  # a corner lies in fewer blocks than the centre


def test_masked_loss_ignores_unmasked_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, 8, generator=g)
    mask = random_block_mask(3, 8, 4, g)
    recon = torch.where(mask.bool(), x, torch.rand(3, 2, 8, 8, generator=g) + 5)
    assert masked_reconstruction_loss(x, recon, mask) == 0


def test_masked_loss_closed_form():
    # N=2, C=3: 2x2 and 1x3 blocks = 7 masked pixels x 3 channels; differences 2 on the mask,
    # 5 off it -> (7 * 3 * 4) / (7 * 3) = 4. With -2 and +2 on alternate channels: still 4.
    x = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2, :2] = 1
    mask[1, 0, 3, :3] = 1
    recon = torch.where(mask.bool(), x + 2, x + 5)
    assert masked_reconstruction_loss(x, recon, mask) == 4
    signs = torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)
    assert masked_reconstruction_loss(x, x + 2 * signs * mask, mask) == 4
    # a single masked pixel with differences (1, 2, 3): (1 + 4 + 9) / 3
    one = torch.zeros(1, 1, 4, 4)
    one[0, 0, 1, 2] = 1
    diff = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) * one
    assert torch.isclose(masked_reconstruction_loss(x[:1], diff, one), torch.tensor(14 / 3))
    # all ones: the plain MSE; all zeros: 0
    r = torch.rand(2, 3, 4, 4)
    assert torch.isclose(masked_reconstruction_loss(x, r, torch.ones(2, 1, 4, 4)),
                         ((x - r) ** 2).mean())
    assert masked_reconstruction_loss(x, r, torch.zeros(2, 1, 4, 4)) == 0


def test_masked_loss_gradient_only_on_the_mask():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 8, 8, generator=g)
    recon = torch.rand(2, 3, 8, 8, generator=g).requires_grad_()
    mask = random_block_mask(2, 8, 3, g)
    masked_reconstruction_loss(x, recon, mask).backward()
    m = mask.expand_as(x).bool()
    assert (recon.grad[~m] == 0).all()
    # d/dr of sum (r - x)^2 / (9 * 3 * 2) = 2 (r - x) / 54 on the mask
    assert torch.allclose(recon.grad[m], (2 * (recon - x) / 54)[m].detach())


# ---------------------------------------------------------------------------------------------
# Inpainting


def tiny_inpainting(c: int = 1, seed: int = 0) -> Inpainting:
    torch.manual_seed(seed)
    return Inpainting(c, ConvNet(c, (4, 8, 8, 8)), block=8,
                      generator=torch.Generator().manual_seed(seed))


def test_inpainting_reconstruct():
    model = Inpainting(3, block=12, generator=torch.Generator().manual_seed(0))  # convnet-small
    x = torch.rand(2, 3, 32, 32)
    masked, recon, mask = model.reconstruct(x)
    assert masked.shape == recon.shape == (2, 3, 32, 32) and mask.shape == (2, 1, 32, 32)
    assert (mask.sum(dim=(1, 2, 3)) == 144).all()
    assert torch.equal(masked, (1 - mask) * x)
    assert 0 < recon.min() and recon.max() < 1
    assert model.training
    default = Inpainting(1, ConvNet(1, (4, 4, 4, 4)))
    assert (default.reconstruct(torch.rand(1, 1, 32, 32))[2].sum() == 256)  # block = side / 2


def test_inpainting_encoder_sees_only_the_context():
    # The hidden block's content cannot change the loss's input: changing x inside the mask
    # leaves the reconstruction unchanged.
    model = tiny_inpainting(1).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        model.generator.manual_seed(7)
        masked, mask = model.mask_batch(x)
        y = x + mask * torch.rand_like(x)
        model.generator.manual_seed(7)
        masked_y, _ = model.mask_batch(y)
    assert torch.equal(masked, masked_y)


def test_inpainting_loss_and_gradients():
    model = tiny_inpainting(3)
    x = (torch.rand(4, 3, 16, 16) * 255).to(torch.uint8)
    loss = model(x)
    assert loss.shape == () and torch.isfinite(loss) and loss > 0
    loss.backward()
    first = model.encoder.blocks[0][0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_inpainting_trains():
    model = tiny_inpainting(1, seed=1)
    # smooth images (a random brightness plus a random horizontal ramp): the hidden block can be
    # predicted from its context
    g = torch.Generator().manual_seed(0)
    level, slope = torch.rand(2, 8, 1, 1, 1, generator=g)
    x = 0.2 + 0.4 * level + 0.3 * slope * torch.linspace(-1, 1, 16).view(1, 1, 1, 16)
    x = x.expand(8, 1, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        model.generator.manual_seed(0)  # the same masks each step: a fixed problem
        loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_colorization_rejects_grey_input_and_three_channel_encoders():
    model = tiny_colorization()
    with pytest.raises(Exception, match="RGB images"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(Exception, match="1 input channel"):
        Colorization(3, ConvNet(3, (4, 8)))


def test_colorization_under_autocast_matches_float32():
    model = tiny_colorization().eval()
    x = colour_patches(2, size=16, seed=9)
    L32, ab32 = model.lab(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        L, ab = model.lab(x)
        assert torch.isfinite(model(x))
    assert torch.equal(L, L32) and torch.equal(ab, ab32)


@pytest.mark.parametrize("side", [8, 20, 31, 35])
def test_a_side_the_decoder_cannot_give_back_is_a_one_line_error(side):
    """The decoder doubles the side once per encoder block: only multiples of 16 come back
    whole. Other sides raised deep in torch (a size mismatch in the loss) or, for colorization,
    warned and broadcast; now both methods say so in one line, in every entry point."""
    colour, inpaint = tiny_colorization(), tiny_inpainting(3)
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(side))
    for call in (colour, colour.colorize, inpaint, inpaint.reconstruct):
        with pytest.raises(SSLKitError, match="divisible by 16") as err:
            call(x)
        assert "\n" not in str(err.value)
    assert torch.isfinite(inpaint(torch.rand(2, 3, 16, 48)))  # non-square multiples work


def test_inpainting_on_images_of_the_wrong_channel_count_is_a_one_line_error():
    with pytest.raises(SSLKitError, match=r"\(N, 3, H, W\), got shape \(2, 1, 16, 16\)") as err:
        tiny_inpainting(3)(torch.rand(2, 1, 16, 16))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("make", [lambda: Colorization(), lambda: Inpainting(3)])
@pytest.mark.parametrize("images,expected", [
    (torch.full((2, 3, 32, 32), 200.0), "got float images in [200, 200]"),  # forgot / 255
    (torch.zeros(2, 3, 32, 32, dtype=torch.long), "got torch.int64"),
])
def test_pixels_in_0_to_255_as_floats_or_int64_are_one_line_errors(make, images, expected):
    """Both took the floats without an error, training on pixels 255 times too large."""
    with pytest.raises(SSLKitError) as info:
        make()(images)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["mae", "cpc"])
def test_mae_and_cpc_refuse_pixels_in_0_to_255_as_floats(method):
    """Both trained on floats 255 times too large without an error (a forgotten / 255), with
    their views (MAE's refuse them now) or without (MAE's own and CPC's patch check)."""
    from sslkit.methods import build_method

    model = build_method(method, "vit" if method == "mae" else "convnet-small", 3, "cifar10", 32)
    model.views = None  # the method's own input check, not the views'
    with pytest.raises(SSLKitError, match=f"{method.upper()} got float images in .200, 200.") as e:
        model(torch.full((4, 3, 32, 32), 200.0))
    assert "\n" not in str(e.value)
