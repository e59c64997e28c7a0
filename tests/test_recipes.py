"""Full-size recipes and method options: the gpu profile gives each method the settings of its
paper or CIFAR-10 reference run (sslkit.recipes names them), flags and --option win over the
recipe, the options reach the module and survive a checkpoint, and a wrong option is a one-line
error. --proj-dim, --temperature and --head reach the methods that use them and are refused by
the others."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslkit.cli import build_parser, main, parse_option
from sslkit.errors import SSLKitError
from sslkit.methods import (
    MAE,
    METHODS,
    SHARED_SETTINGS,
    build_method,
    check_method_options,
    check_shared_settings,
)
from sslkit.profiles import get_profile
from sslkit.recipes import RECIPES, recipe_for
from sslkit.train import TrainConfig, build, load_trained, make_optimizer, train

GPU = get_profile("gpu")


def test_moco_recipe_is_the_cifar10_demo():
    cfg = TrainConfig.from_profile(GPU, method="moco")
    assert (cfg.arch, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.temperature) == (
        "resnet18", 512, 0.06, 5e-4, 0.1)
    assert cfg.method_options == {"queue_size": 4096, "momentum": 0.99, "bn_splits": 8}


def test_simclr_keeps_the_profile_and_other_profiles_have_no_recipes():
    simclr = TrainConfig.from_profile(GPU, method="simclr")
    assert (simclr.lr, simclr.temperature, simclr.method_options) == (0.12, 0.5, {})
    for profile in ("ci", "laptop"):
        for method in ("moco", "dino", "mae"):
            cfg = TrainConfig.from_profile(get_profile(profile), method=method)
            assert cfg.method_options == {} and recipe_for(profile, method).train == {}
            assert cfg.lr == get_profile(profile).lr


def test_mae_recipe_is_the_papers_optimiser_on_a_vit_tiny():
    cfg = TrainConfig.from_profile(GPU, method="mae")
    assert (cfg.optimizer, cfg.adam_beta2, cfg.weight_decay) == ("adamw", 0.95, 0.05)
    assert cfg.lr == pytest.approx(1.5e-4 * cfg.batch_size / 256)  # blr x B / 256
    optimizer = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    o = cfg.method_options
    assert (o["dim"], o["depth"], o["heads"], o["mask_ratio"], o["norm_pix"]) == (
        192, 12, 3, 0.75, True)


def test_adamw_leaves_biases_and_norm_weights_undecayed_as_maes_code():
    """MAE's (and DINO's) optimiser decays the weight matrices only; one AdamW step on zero
    gradients moves nothing but the decay: w <- w (1 - lr wd) for a matrix, unchanged for a
    bias or a LayerNorm weight. SGD keeps decaying every parameter (MoCo's CIFAR-10 demo)."""
    cfg = TrainConfig.from_profile(GPU, method="mae")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = make_optimizer(cfg, net.parameters())
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    weight, bias, ln_weight, ln_bias = net.parameters()
    torch.testing.assert_close(weight, before[0] * (1 - cfg.lr * cfg.weight_decay))
    for p, p0 in zip((bias, ln_weight, ln_bias), before[1:]):
        assert torch.equal(p, p0)
    sgd = make_optimizer(replace(cfg, optimizer="sgd"), net.parameters())
    assert [g["weight_decay"] for g in sgd.param_groups] == [cfg.weight_decay]


def test_flags_and_options_win_over_the_recipe():
    cfg = TrainConfig.from_profile(GPU, method="moco", temperature=0.2,
                                   method_options={"queue_size": 8192})
    assert cfg.temperature == 0.2 and cfg.lr == 0.06
    assert cfg.method_options == {"queue_size": 8192, "momentum": 0.99, "bn_splits": 8}


def _cifar_shaped(method: str):
    cfg = TrainConfig.from_profile(GPU, method=method)
    torch.manual_seed(0)
    return cfg, build_method(method, cfg.arch, 3, "cifar10", 32,
                             method_options=cfg.method_options, proj_dim=cfg.proj_dim,
                             temperature=cfg.temperature, head=cfg.head)


def test_moco_recipe_builds_the_demos_module():
    cfg, moco = _cifar_shaped("moco")
    assert moco.queue.shape == (4096, 128) and moco.momentum == 0.99 and moco.bn_splits == 8
    assert moco.temperature == 0.1
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    assert torch.isfinite(moco(x))  # 16 images in 8 shuffle-BN groups of 2


def test_dino_recipe_builds_the_papers_head():
    _, dino = _cifar_shaped("dino")
    mlp = [m for m in dino.head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in mlp] == [(512, 2048), (2048, 2048),
                                                             (2048, 256)]
    assert dino.head.last_layer.weight.shape == (4096, 256)
    assert dino.teacher_head.last_layer.weight.shape == (4096, 256)
    loss = dino(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))  # 2 + 4 crops
    loss.backward()  # a cross-entropy: positive; gradients reach the student only
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is None for p in dino.teacher_head.parameters())
    assert dino.head.last_layer.weight.grad.abs().sum() > 0


def test_dino_recipe_clips_and_freezes_the_last_layer_for_one_epoch():
    """As the paper's training: gradients clipped at 3.0, last layer frozen in epoch 1 (the
    training loop tells DINO its steps per epoch: 97 for CIFAR-10's 50,000 images at 512)."""
    from types import SimpleNamespace

    cfg = TrainConfig.from_profile(GPU, method="dino")
    assert (cfg.method_options["clip_grad"], cfg.method_options["freeze_last_layer_epochs"]) == (
        3.0, 1)
    data = SimpleNamespace(channels=3, image_size=32)
    dino = build(cfg, data, total_steps=cfg.epochs * 97)
    assert dino.clip_grad == 3.0 and dino.frozen_last_layer_steps == 97


def test_mae_recipe_builds_a_vit_tiny():
    _, mae = _cifar_shaped("mae")
    assert isinstance(mae, MAE) and mae.encoder.feature_dim == 192
    blocks = [m for m in mae.modules() if type(m).__name__ == "Block"]
    assert len(blocks) == 12 + 4  # encoder and decoder
    n_params = sum(p.numel() for p in mae.encoder.parameters())
    assert 5e6 < n_params < 6e6  # ViT-tiny's 5.5 M (without a classifier)
    loss = mae(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert torch.isfinite(loss)


def test_every_method_builds_with_the_gpu_profile():
    """``sslkit train METHOD --profile gpu`` starts for every method: CPC, whose patch encoder
    must not be the profile's ResNet-18 (BatchNorm), gets its own wider one."""
    for method in METHODS:
        cfg, module = _cifar_shaped(method)
        assert isinstance(module, torch.nn.Module), method
    assert TrainConfig.from_profile(GPU, method="cpc").arch == "convnet"


def test_every_recipe_option_is_a_constructor_keyword():
    for recipes in RECIPES.values():
        for method, recipe in recipes.items():
            assert set(recipe.train) <= set(TrainConfig.__dataclass_fields__), method
            module = build_method(method, recipe.train.get("arch", "convnet-small"), 3,
                                  "cifar10", 32, method_options={**recipe.options, **(
                                      {"queue_size": 16} if method == "moco" else {})})
            stored = [k for k in recipe.options
                      if hasattr(module, k) and not callable(getattr(module, k))]
            assert stored or not recipe.options, method  # the options kept as attributes
            for k in stored:
                assert getattr(module, k) == recipe.options[k], (method, k)


def test_wrong_options_are_one_line_errors():
    with pytest.raises(SSLKitError, match="unknown option 'queue' for moco: use one of") as e:
        build_method("moco", "convnet-small", 3, "cifar10", 32, method_options={"queue": 1})
    assert "queue_size" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SSLKitError, match="rotation takes no --option"):
        build_method("rotation", "convnet-small", 3, "cifar10", 32,
                     method_options={"depth": 2})
    for bad in ("queue_size", "=3"):
        with pytest.raises(SSLKitError, match="is not KEY=VALUE"):
            parse_option(bad)
    with pytest.raises(SSLKitError, match="unknown option 'generator' for jigsaw") as e:
        build_method("jigsaw", "convnet-small", 1, "digits", 32, method_options={"generator": 1})
    assert "normalise" in str(e.value)  # what build_method supplies is no option


@pytest.mark.parametrize("method", ["simclr", "moco", "dino", "mae", "jigsaw"])
def test_the_keys_an_unknown_option_suggests_are_all_accepted(method):
    """The "use one of" list names only what --option may set: not proj_dim or temperature,
    which have their own flags and are refused as options."""
    import inspect

    from sslkit.methods import _OPTION_TAKERS, check_method_options

    with pytest.raises(SSLKitError, match="use one of") as e:
        check_method_options(method, {"no_such_option": 1})
    suggested = str(e.value).split("use one of ")[1].split(", ")
    defaults = inspect.signature(_OPTION_TAKERS[method]).parameters
    assert suggested
    for key in suggested:
        check_method_options(method, {key: defaults[key].default})  # no error


def test_jigsaw_takes_the_papers_tile_normalisation_as_an_option():
    key, value = parse_option("normalise=true")
    method = build_method("jigsaw", "convnet-small", 1, "digits", 32,
                          method_options={key: value})
    assert method.normalise is True
    assert build_method("jigsaw", "convnet-small", 1, "digits", 32).normalise is False


@pytest.mark.parametrize("method,key,value,kind", [
    ("dino", "out_dim", "abc", "an integer"), ("dino", "out_dim", 2.5, "an integer"),
    ("moco", "symmetric", 1, "true or false"), ("moco", "momentum", True, "a number"),
    ("mae", "norm_pix", "yes", "true or false")])
def test_an_option_of_the_wrong_kind_is_a_one_line_error(method, key, value, kind):
    """Checked against the default's kind before anything is built, not deep inside torch."""
    with pytest.raises(SSLKitError, match=f"option '{key}' of {method} must be {kind}") as e:
        build_method(method, "vit" if method == "mae" else "convnet-small", 3, "cifar10", 32,
                     method_options={key: value})
    assert "\n" not in str(e.value) and f"--option {key}=" in str(e.value)
    ok = {"out_dim": 64, "symmetric": True, "momentum": 1, "norm_pix": False}[key]
    check_method_options(method, {key: ok})  # an int where a float is expected is fine


def test_option_values_are_typed():
    assert parse_option("queue_size=64") == ("queue_size", 64)
    assert parse_option("momentum=0.9") == ("momentum", 0.9)
    assert parse_option("symmetric=true") == ("symmetric", True)
    assert parse_option("norm_pix=False") == ("norm_pix", False)
    assert parse_option("head=linear") == ("head", "linear")


def test_command_line_options_reach_the_module_and_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "moco"
    args = ["train", "moco", "--profile", "ci", "--device", "cpu", "--n-train", "64",
            "--n-test", "32", "--batch-size", "16", "--epochs", "1", "--no-progress",
            "--option", "queue_size=32", "--option", "symmetric=true", "--option",
            "bn_splits=2", "--out", str(out)]
    assert build_parser().parse_args(args).option == ["queue_size=32", "symmetric=true",
                                                       "bn_splits=2"]
    assert main(args) == 0
    method, cfg, _ = load_trained(out)
    assert cfg.method_options == {"queue_size": 32, "symmetric": True, "bn_splits": 2}
    assert method.queue.shape[0] == 32 and method.symmetric and method.bn_splits == 2
    # an unknown option stops before any training, in one line
    assert main([*args[:-1], str(tmp_path / "other"), "--option", "size=3"]) != 0
    err = capsys.readouterr().err
    assert "unknown option 'size' for moco" in err and "Traceback" not in err


def test_resume_keeps_the_options(tmp_path):
    cfg = TrainConfig(method="moco", n_train=64, n_test=32, batch_size=16, epochs=2,
                      device="cpu", method_options={"queue_size": 48})
    train(cfg, tmp_path, stop_after_epoch=1, progress=False)
    method, _ = train(cfg, tmp_path, resume=True, progress=False)
    assert method.queue.shape[0] == 48
    rebuilt = build(cfg, load_trained(tmp_path)[2])
    assert rebuilt.queue.shape[0] == 48


# ------------------------------------------ --proj-dim, --temperature, --head: who uses them
SETTING_VALUES = {"proj_dim": (8, 16), "temperature": (0.1, 0.7), "head": ("mlp", "linear")}


def loss_and_shapes(name: str, **setting) -> tuple[float, dict]:
    """One method built from a fixed seed with one shared setting changed: its loss on a fixed
    batch, and its parameters' shapes."""
    arch = "vit" if name == "mae" else "convnet-small"
    torch.manual_seed(0)  # the same initial weights
    method = build_method(name, arch, 1, "digits", 32, torch.Generator().manual_seed(0),
                          **setting)
    x = (torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).byte()
    torch.manual_seed(2)
    return float(method(x).detach()), {k: v.shape for k, v in method.state_dict().items()}


@pytest.mark.parametrize("name", METHODS)
def test_shared_settings_table_says_which_methods_use_each_setting(name):
    """SHARED_SETTINGS is what check_shared_settings refuses from: a setting is listed for a
    method exactly when changing it changes the module (its shapes) or its loss."""
    for key, (a, b) in SETTING_VALUES.items():
        loss_a, shapes_a = loss_and_shapes(name, **{key: a})
        loss_b, shapes_b = loss_and_shapes(name, **{key: b})
        used = shapes_a != shapes_b or loss_a != loss_b
        assert used == (key in SHARED_SETTINGS.get(name, ())), (name, key, loss_a, loss_b)


@pytest.mark.parametrize("method,key", [("rotation", "temperature"), ("jigsaw", "head"),
                                        ("dino", "proj_dim"), ("mae", "temperature"),
                                        ("cpc", "head"), ("triplet", "temperature")])
def test_a_flag_the_method_ignores_is_a_one_line_error(tmp_path, capsys, method, key):
    """`train rotation --temperature 50` trained exactly as without the flag."""
    flag = "--" + key.replace("_", "-")
    value = str(SETTING_VALUES[key][1])
    assert main(["train", method, "--out", str(tmp_path / "r"), flag, value, "--profile",
                 "ci", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sslkit: error: {flag} does not apply to {method}")
    assert "\n" not in err and not (tmp_path / "r").exists()


def test_the_methods_that_use_a_flag_accept_it():
    for name, keys in SHARED_SETTINGS.items():
        check_shared_settings(name, {key: SETTING_VALUES[key][0] for key in keys})


# ------------------------------------------ the gpu recipes, detail by detail (what the first
# full-size GPU run compares with published numbers: a wrong detail would waste that run)
STEPS = 50_000 // 512  # optimiser steps per CIFAR-10 epoch at batch 512 (97)


def _lr(cfg: TrainConfig):
    from sslkit.schedules import cosine_schedule

    return cosine_schedule(cfg.lr, 0.0, cfg.epochs, STEPS, cfg.warmup_epochs)


def test_simclr_gpu_is_sgd_with_warmup_and_cosine_on_the_cifar_views():
    """SGD with momentum 0.9 and weight decay 5e-4 on every parameter (the SGD CIFAR-10 runs:
    dkobak/simclr-cifar10, lightly, the MoCo demo), lr 0.06 x B/256 = 0.12 reached after 10
    linear warm-up epochs from 0, then a per-step cosine to 0; T 0.5; a 2-layer MLP head
    512 -> 512 -> 128 with BatchNorm; the CIFAR views: crops of scale 0.08-1, colour jitter of
    strength 0.5 (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, no blur; the CIFAR stem."""
    cfg, simclr = _cifar_shaped("simclr")
    lr = _lr(cfg)
    assert (cfg.optimizer, cfg.weight_decay, cfg.temperature, cfg.warmup_epochs) == (
        "sgd", 5e-4, 0.5, 10)
    assert lr[0] == 0.0 and lr[10 * STEPS] == pytest.approx(0.12) and lr.max() == 0.12
    assert lr[-1] == pytest.approx(0.0, abs=1e-12)
    optimizer = make_optimizer(cfg, simclr.parameters())
    assert [(g["momentum"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups
            ] == [(0.9, 5e-4, len(list(simclr.parameters())))]
    linears = [m for m in simclr.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 128)]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in simclr.head)
    v = simclr.views.cfg
    assert (v.size, v.crop_scale, v.flip_p, v.jitter_p, v.gray_p, v.blur_p) == (
        32, (0.08, 1.0), 0.5, 0.8, 0.2, 0.0)
    assert (0.8 * v.jitter_strength, 0.2 * v.jitter_strength) == (0.4, 0.1)
    conv1 = simclr.encoder.conv1
    assert (conv1.kernel_size, conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(simclr.encoder.maxpool, torch.nn.Identity)


def test_moco_gpu_follows_the_demos_schedule_without_warmup():
    """The MoCo CIFAR-10 demo starts at lr 0.06 and decays it by a cosine from the first epoch;
    it has no warm-up (the profile's 10 warm-up epochs are SimCLR's)."""
    cfg = TrainConfig.from_profile(GPU, method="moco")
    lr = _lr(cfg)
    assert cfg.warmup_epochs == 0
    assert lr[0] == pytest.approx(0.06) and lr[len(lr) // 2] == pytest.approx(0.03, rel=1e-3)
    assert cfg.optimizer == "sgd" and cfg.weight_decay == 5e-4


def test_moco_gpu_module_matches_the_demo():
    """K 4096 (divisible by the batch of 512), m 0.99, T 0.1, 8 shuffle-BN groups, asymmetric
    loss (the demo's default: 82.6 % at 200 epochs), an MLP head to 128 as v2, keys without
    gradient."""
    cfg, moco = _cifar_shaped("moco")
    moco.check_batch(512, 512)  # K divisible by the keys per step, 64 images per BN group
    assert (moco.queue.shape, moco.momentum, moco.temperature, moco.bn_splits,
            moco.symmetric) == ((4096, 128), 0.99, 0.1, 8, False)
    assert not any(p.requires_grad for p in moco.key_encoder.parameters())
    linears = [m for m in moco.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 128)]


def test_dino_gpu_uses_the_authors_resnet_crop_scales():
    """DINO's authors train a ResNet with global crops of scale 0.14-1 and local crops of
    0.05-0.14 (their README's ResNet-50 command); 0.4-1 and 0.05-0.4 are their ViT defaults.
    The laptop profile keeps the defaults its numbers were measured with."""
    _, dino = _cifar_shaped("dino")
    g, loc = dino.views.global_views.cfg, dino.views.local_views.cfg
    assert (g.size, g.crop_scale, loc.size, loc.crop_scale, dino.views.n_local) == (
        32, (0.14, 1.0), 16, (0.05, 0.14), 4)
    crops = dino.views(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert [tuple(c.shape[-2:]) for c in crops] == [(32, 32)] * 2 + [(16, 16)] * 4
    laptop = build_method("dino", "convnet-small", 1, "shifted_digits", 32)
    assert laptop.views.global_views.cfg.crop_scale == (0.4, 1.0)
    assert laptop.views.local_views.cfg.crop_scale == (0.05, 0.4)


def test_dino_gpu_schedules_and_teacher():
    """Teacher momentum 0.996 -> 1 by a cosine over every optimiser step of the run; teacher
    temperature 0.04 throughout (DINO's default, and its ResNet recipe's: the warm-up to 0.07 is
    for ViTs), student 0.1, centre momentum 0.9; only the 2 global crops reach the teacher."""
    from types import SimpleNamespace

    cfg = TrainConfig.from_profile(GPU, method="dino")
    dino = build(cfg, SimpleNamespace(channels=3, image_size=32), total_steps=cfg.epochs * STEPS)
    m = dino.momentums
    assert len(m) == cfg.epochs * STEPS and m[0] == pytest.approx(0.996)
    assert m[-1] == pytest.approx(1.0) and bool(np.all(np.diff(m) >= 0))
    mid = len(m) // 2  # the cosine's midpoint on the step axis
    assert m[mid] == pytest.approx((0.996 + 1) / 2, abs=1e-6)
    assert np.allclose(dino.teacher_temps, 0.04) and dino.student_temp == 0.1
    assert dino.center_momentum == 0.9
    seen = []
    dino.teacher_encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    dino(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert seen == [(4, 3, 32, 32)]  # one pass: the 2 global crops of 2 images


def test_dino_last_layer_is_weight_normalised_with_its_norm_fixed_to_1():
    """DINO's norm_last_layer: weight_norm with the gain g fixed to 1, no bias. Every output
    unit's weight vector has norm 1 whatever its stored length, and there is no gain to learn;
    its input is the L2-normalised 256-d bottleneck."""
    _, dino = _cifar_shaped("dino")
    last = dino.head.last_layer
    assert [name for name, _ in last.named_parameters()] == ["weight"]  # no gain, no bias
    x = F.normalize(torch.randn(3, 256), dim=1)
    with torch.no_grad():
        last.weight.mul_(torch.rand(4096, 1) * 5 + 0.1)  # every row's length changes
        y = last(x)
        w = F.normalize(last.weight, dim=1)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(4096))
    torch.testing.assert_close(y, x @ w.T)
    h = torch.randn(3, 512)
    with torch.no_grad():  # the bottleneck is L2-normalised before the last layer
        z = dino.head.mlp(h)
        torch.testing.assert_close(dino.head(h), last(F.normalize(z, dim=1)))


def test_mae_gpu_optimiser_decays_what_maes_pretraining_decays():
    """MAE's main_pretrain.py: AdamW(betas (0.9, 0.95)) over timm's add_weight_decay without a
    skip list: no decay on 1-D parameters (biases, LayerNorm weights), decay 0.05 on every other
    trainable parameter, the [CLS] and mask tokens included (only fine-tuning exempts them); the
    sine-cosine position embeddings are fixed (no parameter to decay). lr = 1.5e-4 x 512 / 256
    after 10 warm-up epochs, cosine to 0."""
    cfg, mae = _cifar_shaped("mae")
    optimizer = make_optimizer(cfg, mae.parameters())
    decayed, undecayed = optimizer.param_groups
    assert (decayed["weight_decay"], undecayed["weight_decay"]) == (0.05, 0.0)
    assert decayed["betas"] == undecayed["betas"] == (0.9, 0.95)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert {id(mae.encoder.cls_token), id(mae.mask_token)} <= ids(decayed["params"])
    names = {id(p): n for n, p in mae.named_parameters()}
    assert all(p.ndim == 1 for p in undecayed["params"])
    assert {names[i].rsplit(".", 1)[-1] for i in ids(undecayed["params"])} == {"bias", "weight"}
    assert not mae.encoder.pos_embed.requires_grad  # fixed, so AdamW never moves it
    assert "decoder_pos_embed" in dict(mae.named_buffers())
    lr = _lr(cfg)
    assert lr[0] == 0.0 and lr[10 * STEPS] == pytest.approx(3e-4) and lr[-1] == pytest.approx(0)
    v = mae.views.cfg
    assert (v.crop_scale, v.flip_p, v.jitter_p, v.gray_p, v.blur_p) == ((0.2, 1.0), 0.5, 0.0,
                                                                      0.0, 0.0)


def test_mae_gpu_masks_three_quarters_and_encodes_only_the_visible_patches():
    _, mae = _cifar_shaped("mae")
    assert (mae.patch_size, mae.mask_ratio, mae.norm_pix) == (4, 0.75, True)
    x = torch.rand(2, 3, 32, 32)
    latent, mask, _ = mae.forward_encoder(x, mae.mask_ratio)
    assert latent.shape == (2, 1 + 16, 192) and mask.sum(1).tolist() == [48.0, 48.0]
