"""MAE: the loss per the contract (against a plain loop, closed forms, norm_pix by hand, no
gradient from visible patches), the sine-cosine positions, the encoder that sees only the kept
patches, the decoder's un-shuffling, training steps, and one-line errors on bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslkit.errors import SSLKitError
from sslkit.evaluate import extract_features
from sslkit.losses import mae_loss, mae_loss_loop
from sslkit.methods import build_method
from sslkit.methods.mae import MAE, mae_view_config, sincos_pos_embed
from sslkit.models.vit import patchify, random_masking


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def case(n=3, length=8, p=6, ratio=0.5, seed=0, dtype=torch.float64):
    g = gen(seed)
    pred = torch.randn(n, length, p, generator=g, dtype=dtype)
    target = torch.randn(n, length, p, generator=g, dtype=dtype)
    mask = (torch.rand(n, length, generator=g) < ratio).to(dtype)
    mask[:, 0] = 1  # at least one masked patch per image
    return pred, target, mask


def small_mae(**kw) -> MAE:
    torch.manual_seed(0)
    args = dict(image_size=16, patch_size=4, in_channels=1, dim=16, depth=2, heads=2,
                decoder_dim=8, decoder_depth=1, decoder_heads=2)
    return MAE(**{**args, **kw})


# -- the loss ----------------------------------------------------------------------------------

@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("n,length,p,seed", [(1, 4, 2, 0), (3, 8, 6, 1), (5, 16, 48, 2)])
def test_vectorised_loss_equals_the_plain_loop(norm_pix, n, length, p, seed):
    pred, target, mask = case(n, length, p, seed=seed)
    assert torch.allclose(mae_loss(pred, target, mask, norm_pix),
                          mae_loss_loop(pred, target, mask, norm_pix), atol=1e-12)


def test_closed_form_without_norm_pix():
    # pred = target + c on masked patches (anything on visible ones): every masked pixel is off
    # by c, so the loss is c^2 whatever the visible predictions are.
    pred, target, mask = case()
    wild = torch.where(mask[..., None].bool(), target + 0.3, pred * 100)
    assert math.isclose(float(mae_loss(wild, target, mask)), 0.09, rel_tol=1e-12)
    # masked patches weigh equally: two images, one masked patch each, errors 1 and 3 -> 5
    pred, target = torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)
    pred[0, 1], pred[1, 0] = 1.0, 3.0
    mask = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert math.isclose(float(mae_loss(pred, target, mask)), (1 + 9) / 2, rel_tol=1e-6)


def test_norm_pix_by_hand():
    # One masked patch [0, 1, 2, 3]: mean 1.5, unbiased variance 5/3 (divide by P - 1 = 3),
    # normalised target (x - 1.5) / sqrt(5/3 + 1e-6). With pred = 0 the loss is the mean square
    # of the normalised target: (sum (x - 1.5)^2 / P) / (5/3 + 1e-6) = (5/4) / (5/3 + 1e-6).
    target = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [9.0, 9.0, 9.0, 9.0]]], dtype=torch.float64)
    pred = torch.zeros_like(target)
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    expected = (5 / 4) / (5 / 3 + 1e-6)
    assert math.isclose(float(mae_loss(pred, target, mask, norm_pix=True)), expected,
                        rel_tol=1e-12)
    # pred equal to the hand-normalised target gives 0
    normalised = (target[0, 0] - 1.5) / math.sqrt(5 / 3 + 1e-6)
    pred[0, 0] = normalised
    assert float(mae_loss(pred, target, mask, norm_pix=True)) < 1e-20
    # a constant patch normalises to 0 (the eps keeps it finite), so pred 0 is exact there
    mask = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert float(mae_loss(torch.zeros_like(target), target, mask, norm_pix=True)) == 0.0
    # norm_pix makes the loss invariant to each target patch's brightness and contrast
    pred, target, mask = case(seed=4)
    scale = torch.rand(3, 8, 1, dtype=torch.float64) + 0.5
    shift = torch.randn(3, 8, 1, dtype=torch.float64)
    assert torch.allclose(mae_loss(pred, target, mask, True),
                          mae_loss(pred, target * scale + shift, mask, True), atol=1e-6)


def test_visible_patches_get_no_gradient_and_the_target_none():
    pred, target, mask = case(seed=5)
    pred.requires_grad_()
    target.requires_grad_()
    for norm_pix in (False, True):
        pred.grad = None
        mae_loss(pred, target, mask, norm_pix).backward()
        visible = mask == 0
        assert float(pred.grad[visible].abs().max()) == 0.0
        assert float(pred.grad[~visible].abs().min()) > 0.0
        assert target.grad is None
    # the gradient on a masked patch is 2 (pred - target) / (P * number of masked patches)
    pred.grad = None
    mae_loss(pred, target, mask).backward()
    expected = 2 * (pred - target).detach() / (pred.shape[2] * mask.sum()) * mask[..., None]
    assert torch.allclose(pred.grad, expected, atol=1e-12)


def test_no_masked_patch_gives_zero_and_half_precision_is_upcast():
    pred, target, _ = case()
    assert float(mae_loss(pred, target, torch.zeros(3, 8))) == 0.0
    pred, target, mask = case(dtype=torch.float32)
    half = mae_loss(pred.half(), target.half(), mask.half(), norm_pix=True)
    assert half.dtype == torch.float32
    assert torch.allclose(half, mae_loss(pred.half().float(), target.half().float(), mask, True))


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2)), "(N, L, P)"),
    ((torch.zeros(2, 4, 3), torch.zeros(2, 4, 2), torch.zeros(2, 4)), "(N, L, P)"),
    ((torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), torch.zeros(2, 5)), "mask must be"),
    ((torch.zeros(2, 4, 3, dtype=torch.long),) * 2 + (torch.zeros(2, 4),), "floating"),
    (([0.0], torch.zeros(2, 4, 3), torch.zeros(2, 4)), "torch.Tensor"),
])
def test_bad_loss_input_is_one_line(args, match):
    for fn in (mae_loss, mae_loss_loop):
        with pytest.raises(SSLKitError, match=match) as info:
            fn(*args)
        assert "\n" not in str(info.value)
    with pytest.raises(SSLKitError, match="norm_pix"):
        mae_loss(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.ones(1, 2), norm_pix=True)


# -- positions ---------------------------------------------------------------------------------

def test_sincos_positions():
    dim, grid = 16, 4
    emb = sincos_pos_embed(dim, grid)  # (17, 16)
    assert emb.shape == (1 + grid * grid, dim)
    assert float(emb[0].abs().max()) == 0.0  # [CLS] has no position
    patches = emb[1:].reshape(grid, grid, dim)
    # the first half encodes the row only, the second the column only
    assert torch.allclose(patches[:, :1, : dim // 2].expand(-1, grid, -1), patches[..., : dim // 2])
    assert torch.allclose(patches[:1, :, dim // 2 :].expand(grid, -1, -1), patches[..., dim // 2 :])
    # frequency 0 of the row half: sin(row), cos(row)
    rows = torch.arange(grid, dtype=torch.float32)
    assert torch.allclose(patches[:, 0, 0], rows.sin()) and torch.allclose(patches[:, 0, 4],
                                                                            rows.cos())
    # every patch gets a different vector
    assert torch.cdist(emb[1:], emb[1:]).add(torch.eye(grid * grid)).min() > 0.1
    with pytest.raises(SSLKitError, match="divisible by 4"):
        sincos_pos_embed(18, 4)


# -- masking and the encoder -------------------------------------------------------------------

def test_random_masking_restores_the_order():
    g = gen(1)
    x = torch.randn(3, 10, 4, generator=g)
    noise = torch.rand(3, 10, generator=g)
    kept, mask, ids_restore = random_masking(x, 0.7, noise)
    ids_shuffle = noise.argsort(dim=1)
    assert kept.shape == (3, 3, 4)  # int(10 * 0.3) = 3 kept
    assert torch.equal(kept, torch.stack([x[i, ids_shuffle[i, :3]] for i in range(3)]))
    assert torch.equal(mask.sum(1), torch.full((3,), 7.0))
    # masked exactly where the noise is not among the 3 smallest
    assert torch.equal(mask.bool(), noise > noise.sort(dim=1).values[:, 2:3])
    # kept + the masked rest, un-shuffled with ids_restore, is x again
    rest = torch.stack([x[i, ids_shuffle[i, 3:]] for i in range(3)])
    full = torch.cat([kept, rest], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, 4))
    assert torch.equal(full, x)


def test_encoder_sees_only_the_kept_patches():
    mae = small_mae().eval()
    g = gen(2)
    x = torch.rand(2, 1, 16, 16, generator=g)
    noise = torch.rand(2, 16, generator=g)
    for ratio, keep in [(0.0, 16), (0.5, 8), (0.75, 4), (0.9, 1)]:
        latent, mask, _ = mae.forward_encoder(x, ratio, noise)
        assert latent.shape == (2, 1 + keep, 16) and int(mask.sum()) == 2 * (16 - keep)
    latent, mask, _ = mae.forward_encoder(x, 0.75, noise)
    # change every masked pixel: the latent does not move
    hidden = mask.reshape(2, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).bool()
    changed = torch.where(hidden, torch.rand(x.shape, generator=g), x)
    assert torch.equal(mae.forward_encoder(changed, 0.75, noise)[0], latent)
    # change one visible pixel: it does
    visible = (~hidden).nonzero()[0].tolist()
    changed = x.clone()
    changed[tuple(visible)] += 0.5
    assert not torch.allclose(mae.forward_encoder(changed, 0.75, noise)[0], latent)


def test_decoder_output_and_loss_on_masked_patches():
    mae = small_mae()
    g = gen(3)
    x = torch.rand(2, 1, 16, 16, generator=g)
    noise = torch.rand(2, 16, generator=g)
    latent, mask, ids_restore = mae.forward_encoder(x, 0.75, noise)
    pred = mae.forward_decoder(latent, ids_restore)
    assert pred.shape == (2, 16, 4 * 4 * 1)
    target = patchify(x, 4)
    for norm_pix in (False, True):
        mae.norm_pix = norm_pix
        assert torch.allclose(mae.forward_loss(x, pred, mask),
                              mae_loss_loop(pred, target, mask, norm_pix), atol=1e-6)
    loss, pred2, mask2 = mae.loss_on(x, noise=noise)
    assert torch.equal(pred2, pred) and torch.equal(mask2, mask)
    # no gradient reaches the predictions of visible patches
    pred.retain_grad()
    mae.forward_loss(x, pred, mask).backward()
    assert float(pred.grad[mask == 0].abs().max()) == 0.0
    # visible target pixels do not enter the loss: change them, the loss stays
    hidden = mask.reshape(2, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).bool()
    other = torch.where(hidden, x, torch.rand(x.shape, generator=g))
    assert torch.equal(mae.forward_loss(other, pred, mask), mae.forward_loss(x, pred, mask))


def test_decoder_unshuffles_to_the_original_positions():
    # With an identity-like decoder (no blocks, pred = the token's first values), the output at
    # patch l comes from the visible token of patch l, or the mask token if l was hidden.
    mae = small_mae(decoder_depth=1)
    mae.decoder_blocks = torch.nn.ModuleList()  # (decoder_depth=0 is refused: see below)
    n, length, d = 2, 16, 8
    g = gen(4)
    noise = torch.rand(n, length, generator=g)
    patch_ids = torch.arange(length, dtype=torch.float32).expand(n, -1)  # (N, L)
    tokens = patch_ids[..., None].expand(-1, -1, 16)  # each token carries its patch index
    kept, mask, ids_restore = random_masking(tokens, 0.5, noise)
    latent = torch.cat([torch.full((n, 1, 16), -1.0), kept], dim=1)
    with torch.no_grad():
        mae.decoder_embed.weight.copy_(torch.eye(d, 16))
        mae.decoder_embed.bias.zero_()
        mae.mask_token.fill_(-5.0)
        mae.decoder_pos_embed.zero_()
    mae.decoder_norm = torch.nn.Identity()
    mae.decoder_pred = torch.nn.Linear(d, 16)
    with torch.no_grad():
        mae.decoder_pred.weight.copy_(torch.eye(16, d))
        mae.decoder_pred.bias.zero_()
    out = mae.forward_decoder(latent, ids_restore)[..., 0]  # (N, L)
    assert torch.equal(out, torch.where(mask.bool(), torch.tensor(-5.0), patch_ids))


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    # smooth images (bilinear upsampling of 4x4 noise): hidden pixels follow from visible ones
    g = gen(5)
    x = F.interpolate(torch.rand(8, 1, 4, 4, generator=g), size=16, mode="bilinear",
                      align_corners=False)
    noise = torch.rand(8, 16, generator=g)
    for norm_pix, factor in ((False, 0.2), (True, 0.8)):
        mae = small_mae(norm_pix=norm_pix)
        opt = torch.optim.AdamW(mae.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.05)
        losses = []
        for _ in range(40):
            loss = mae.loss_on(x, noise=noise)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < factor * losses[0], (norm_pix, losses[0], losses[-1])
    # the fixed positions did not move; the mask token and the encoder did
    assert torch.equal(mae.encoder.pos_embed, small_mae().encoder.pos_embed)


def test_forward_from_uint8_and_features_for_evaluation():
    mae = build_method("mae", "vit-32", 1, "shifted_digits", 32, gen(0))
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    loss = mae(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert mae.mask_token.grad is not None and mae.encoder.pos_embed.grad is None
    feats = extract_features(mae.encoder, x)
    assert feats.shape == (4, 32)
    assert mae.encoder.pos_embed.requires_grad is False
    views = mae.views.cfg
    assert views.crop_scale == (0.2, 1.0) and views.jitter_p == 0 and views.blur_p == 0
    assert mae_view_config(views).gray_p == 0
    recon, mask_img = mae.reconstruct(x[:2])
    assert recon.shape == (2, 1, 32, 32) and float(mask_img.mean()) == 0.75


def test_bad_input_is_one_line():
    cases = [
        (lambda: small_mae(image_size=18), "not a multiple of the patch size"),
        (lambda: small_mae(mask_ratio=1.0), "mask_ratio=0.75 on the command line"),
        (lambda: small_mae(mask_ratio=-0.1), "mask_ratio must be a number in"),
        (lambda: small_mae().forward_encoder(torch.rand(1, 1, 16, 16), 1.0), "mask ratio"),
        (lambda: small_mae()(torch.rand(1, 1, 20, 20)), "MAE built for images"),
        (lambda: small_mae()(torch.rand(1, 3, 16, 16)), "MAE built for images"),
        (lambda: patchify(torch.rand(1, 1, 18, 18), 4), "not a multiple of the patch size"),
        (lambda: build_method("mae", "convnet-small", 1, "shifted_digits", 32), "--arch vit"),
    ]
    for make, match in cases:
        with pytest.raises(SSLKitError, match=match) as info:
            make()
        assert "\n" not in str(info.value)


def test_decoder_positions_are_what_tells_hidden_patches_apart():
    # The mask tokens are one shared vector and attention is permutation-equivariant, so the
    # decoder's predictions for two hidden patches of one image differ only through the
    # decoder's position embeddings: equal without them, different with them.
    mae = small_mae().eval()
    g = gen(5)
    x = torch.rand(2, 1, 16, 16, generator=g)
    latent, mask, ids_restore = mae.forward_encoder(x, 0.75, torch.rand(2, 16, generator=g))
    hidden = mask[0].bool()
    with torch.no_grad():
        pred = mae.forward_decoder(latent, ids_restore)[0, hidden]  # (12, P)
        assert (pred - pred[:1]).abs().amax(dim=1)[1:].min() > 1e-4  # all differ from the first
        mae.decoder_pos_embed.zero_()
        pred = mae.forward_decoder(latent, ids_restore)[0, hidden]
    assert torch.allclose(pred, pred[:1].expand_as(pred), atol=1e-5)


def test_unmasked_encoder_pass_is_the_vits_own_token_path():
    # Mask ratio 0 with increasing noise keeps every patch in its order: the encoder's latent
    # must be the ViT's blocks on ViT.tokens(x) ([CLS] and the patches with their positions),
    # so the positions are added patch by patch, the same table the whole-image pass uses.
    mae = small_mae().eval()
    x = torch.rand(2, 1, 16, 16, generator=gen(6))
    latent, mask, ids_restore = mae.forward_encoder(x, 0.0, torch.arange(16.0).expand(2, -1))
    assert float(mask.sum()) == 0 and torch.equal(ids_restore, torch.arange(16).expand(2, -1))
    t = mae.encoder.tokens(x)
    for block in mae.encoder.blocks:
        t = block(t)
    assert torch.allclose(latent, mae.encoder.norm(t), atol=1e-5)


def test_reconstruct_undoes_norm_pix_with_each_patchs_mean_and_std():
    # A decoder that predicts the norm_pix target exactly gives back the image.
    mae = small_mae(norm_pix=True)
    x = torch.rand(2, 1, 16, 16, generator=gen(7))
    target = patchify(x, 4)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    mae.forward_decoder = lambda latent, ids_restore: (target - mean) / (var + 1e-6) ** 0.5
    recon, mask_img = mae.reconstruct(x)
    assert torch.allclose(recon, x, atol=1e-5) and mask_img.shape == (2, 1, 16, 16)
