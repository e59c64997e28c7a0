"""Range checks of the methods' options (sslkit.methods.options): a size below its least, a
probability outside [0, 1], a temperature <= 0 or a non-finite number is a one-line error that
names the valid range and the fix in both spellings (``key=value`` for Python, ``--option
key=value`` on the command line), before any run folder is made and in the constructors that
notebooks call. Before, DINO's out_dim=0 trained with loss 0.0, hidden_dim=0 (DINO, SimCLR) and
MAE's depth=0 trained silently, and Jigsaw's gap=-3 or tile_size=0 ended in torch tracebacks."""

from __future__ import annotations

import math

import pytest
import torch
from one_line import one_line_error

from sslkit.augment import SimCLRViews, ViewConfig
from sslkit.cli import main
from sslkit.errors import SSLKitError
from sslkit.methods import (
    DINO,
    MAE,
    Jigsaw,
    RelativePatch,
    Rotation,
    SimCLR,
    Triplet,
    build_method,
    check_method_options,
)
from sslkit.methods.dino import MultiCropViews
from sslkit.methods.simclr_ablation import SimCLRAblation
from sslkit.models import ConvNet

ARCH = {"mae": "vit"}


def build(method: str, options: dict):
    """build_method as the training loop calls it (DINO also gets its schedules' length)."""
    extra = {"total_steps": 10} if method == "dino" else {}
    return build_method(method, ARCH.get(method, "convnet-small"), 1, "digits", 32,
                        method_options=options, **extra)

# (method, option, bad value, what the message must say)
BAD = [
    ("jigsaw", "gap", -3, "gap must be a whole number of at least 0 (got -3): use e.g. gap=2 "
                          "(--option gap=2 on the command line)"),
    ("jigsaw", "tile_size", 0, "at least 1 (got 0): use e.g. tile_size=16 (--option "
                               "tile_size=16"),
    ("jigsaw", "num_permutations", 0, "at least 2 (got 0): use e.g. num_permutations=30 "
                                      "(--option num_permutations=30"),
    ("jigsaw", "num_permutations", 1, "at least 2"),  # one class: loss 0 whatever is learnt
    ("jigsaw", "num_permutations", 400000, "from 2 to 9! = 362880 for a 3x3 grid"),
    ("jigsaw", "grid", 1, "grid must be a whole number from 2 to 3 (got 1): use e.g. grid=3 "
                          "(--option grid=3"),
    ("jigsaw", "grid", 2, "from 2 to 4! = 24 for a 2x2 grid (got 30): use e.g. "
                          "num_permutations=24 (--option num_permutations=24"),
    ("jigsaw", "hidden_dim", 0, "--option hidden_dim=256"),
    ("dino", "out_dim", 0, "DINO's out_dim must be a whole number of at least 2 (got 0): use "
                           "e.g. out_dim=256 (--option out_dim=256 on the command line)"),
    ("dino", "out_dim", 1, "at least 2"),  # a softmax over one prototype: loss 0
    ("dino", "hidden_dim", 0, "--option hidden_dim=256"),
    ("dino", "bottleneck_dim", -1, "--option bottleneck_dim=64"),
    ("dino", "student_temp", math.inf, "finite number > 0 (got inf): use e.g. "
                                       "student_temp=0.1 (--option student_temp=0.1"),
    ("dino", "teacher_temp", math.nan, "--option teacher_temp=0.04"),
    ("dino", "warmup_teacher_temp", 0.0, "--option warmup_teacher_temp=0.04"),
    ("dino", "momentum", 1.5, "momentum must be a number in [0, 1] (got 1.5): use e.g. "
                              "momentum=0.996 (--option momentum=0.996"),
    ("dino", "center_momentum", 2, "--option center_momentum=0.9"),
    ("dino", "clip_grad", -1.0, "clip_grad must be a finite number >= 0"),
    ("dino", "clip_grad", math.nan, "clip_grad must be a finite number >= 0"),
    ("dino", "warmup_steps", -5, "--option warmup_steps=0"),
    ("dino", "total_steps", 0, "total_steps must be a whole number of at least 1"),
    ("dino", "freeze_last_layer_epochs", -1, "--option freeze_last_layer_epochs=0"),
    ("simclr", "hidden_dim", 0, "SimCLR's hidden_dim must be a whole number of at least 1 (got "
                                "0): use e.g. hidden_dim=512 (--option hidden_dim=512"),
    ("simclr", "hidden_dim", -1, "at least 1"),
    ("simclr", "hidden_dim", 1.5, "whole number"),
    ("simclr", "hidden_dim", "abc", "whole number"),
    ("mae", "depth", 0, "MAE's depth must be a whole number of at least 1 (got 0): use e.g. "
                        "depth=4 (--option depth=4 on the command line)"),
    ("mae", "decoder_depth", 0, "--option decoder_depth=2"),
    ("mae", "dim", 0, "--option dim=64"),
    ("mae", "heads", 0, "--option heads=4"),
    ("mae", "decoder_heads", -2, "--option decoder_heads=4"),
    ("mae", "decoder_dim", 0, "--option decoder_dim=32"),
    ("mae", "patch_size", 0, "--option patch_size=4"),
    ("mae", "mlp_ratio", 0.0, "mlp_ratio must be a finite number > 0"),
    ("mae", "mlp_ratio", math.nan, "--option mlp_ratio=2.0"),
    ("mae", "mask_ratio", 1.5, "mask_ratio must be a number in [0, 1) (got 1.5): use e.g. "
                               "mask_ratio=0.75 (--option mask_ratio=0.75 on the command line)"),
]


@pytest.mark.parametrize("method,key,value,expected", BAD,
                         ids=[f"{m}-{k}={v}" for m, k, v, _ in BAD])
def test_a_value_out_of_range_stops_before_the_run_and_in_the_constructor(method, key, value,
                                                                          expected):
    assert expected in one_line_error(lambda: check_method_options(method, {key: value}))
    assert expected in one_line_error(lambda: build(method, {key: value}))


GOOD = [("jigsaw", {"gap": 0}), ("jigsaw", {"grid": 2, "num_permutations": 24}),
        ("jigsaw", {"num_permutations": 2}),
        ("dino", {"out_dim": 2, "momentum": 1, "center_momentum": 0.0, "clip_grad": 0,
                  "warmup_steps": 0, "freeze_last_layer_epochs": 0}),
        ("simclr", {"hidden_dim": 1}), ("mae", {"mask_ratio": 0, "depth": 1, "mlp_ratio": 0.5})]


@pytest.mark.parametrize("method,options", GOOD, ids=[m for m, _ in GOOD])
def test_the_edges_of_each_range_are_accepted(method, options):
    check_method_options(method, options)
    build(method, options)


@pytest.mark.parametrize("options,expected", [
    ({"heads": 3}, "MAE's dim=64 must be divisible by heads=3 (each attention head takes dim / "
                   "heads values): use e.g. heads=2 (--option heads=2 on the command line)"),
    ({"dim": 30}, "must be divisible by 4 (its 2-D sine-cosine positions) and by heads=4: use "
                  "e.g. dim=32 (--option dim=32"),
    ({"decoder_heads": 3}, "decoder_dim=32 must be divisible by decoder_heads=3"),
    ({"mlp_ratio": 0.01}, "leaves the MLP of its dim=64 blocks no unit"),
    ({"image_size": 16}, "use --image-size 16"),
    ({"in_channels": 3}, "the dataset's images set it"),
])
def test_mae_widths_that_do_not_fit_are_one_line_errors(options, expected):
    # heads=3 and dim=30 failed in the ViT without naming an option, mlp_ratio=0.01 trained
    # blocks whose MLP had no unit, and image_size / in_channels ended in a TypeError
    assert expected in one_line_error(lambda: build("mae", options))


def test_jigsaw_tiles_smaller_than_the_encoder_takes_are_refused_before_training():
    message = one_line_error(lambda: build("jigsaw", {"tile_size": 8}))
    assert "tile_size=8 is too small for --arch convnet-small" in message
    assert "--option tile_size=16" in message


def _views():
    return SimCLRViews(ViewConfig(size=16))


def encoder():
    return ConvNet(1, (4, 8, 8, 8))


@pytest.mark.parametrize("make,expected", [
    (lambda: DINO(encoder(), MultiCropViews(ViewConfig(size=16)), out_dim=0),
     "out_dim=256 (--option out_dim=256"),
    (lambda: SimCLR(encoder(), _views(), hidden_dim=0), "hidden_dim=512"),
    (lambda: SimCLR(encoder(), _views(), proj_dim=0), "proj_dim=128 (--proj-dim 128 on the"),
    (lambda: SimCLR(encoder(), _views(), temperature=math.inf),
     "temperature=0.5 (--temperature 0.5 on the command line)"),
    (lambda: SimCLRAblation(encoder(), _views(), loss="margin_triplet", margin=-0.5),
     "margin must be a finite number >= 0"),
    (lambda: MAE(16, 4, 1, dim=16, heads=2, depth=0), "depth=4"),
    (lambda: Jigsaw(encoder(), gap=-1), "gap=2"),
    (lambda: Triplet(encoder(), _views(), margin=math.nan), "margin=0.2"),
    (lambda: Triplet(encoder(), _views(), hidden_dim=0), "hidden_dim=512"),
    (lambda: Rotation(encoder(), hidden_dim=-4), "hidden_dim=512"),
    (lambda: RelativePatch(encoder(), tile_size=0), "tile_size=16"),
])
def test_the_constructors_notebooks_call_check_the_same_ranges(make, expected):
    assert expected in one_line_error(make)


def test_a_bad_option_on_the_command_line_is_one_line_without_a_traceback(tmp_path, capsys):
    for method, option in (("jigsaw", "gap=-3"), ("dino", "out_dim=0")):
        code = main(["train", method, "--profile", "ci", "--epochs", "1", "--n-train", "64",
                     "--n-test", "32", "--batch-size", "16", "--out", str(tmp_path / method),
                     "--option", option])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and f"--option {option.split('=')[0]}=" in err
        assert not (tmp_path / method).exists()  # stopped before any run folder was made


def test_a_size_of_zero_no_longer_trains_silently():
    """DINO's out_dim=0 gave a constant loss 0.0; now it does not build."""
    with pytest.raises(SSLKitError):
        DINO(encoder(), MultiCropViews(ViewConfig(size=16)), out_dim=0)
    dino = DINO(encoder(), MultiCropViews(ViewConfig(size=32), local_size=16), out_dim=8,
                total_steps=2)
    loss = dino(torch.rand(4, 1, 32, 32))
    assert torch.isfinite(loss) and float(loss.detach()) > 0


def test_methods_the_command_line_builds_with_fixed_settings_name_no_option_flag():
    for make in (lambda: Triplet(encoder(), _views(), margin=-1.0),
                 lambda: Rotation(encoder(), hidden_dim=0),
                 lambda: RelativePatch(encoder(), gap=-1)):
        message = one_line_error(make)
        assert "use e.g. " in message and "--option" not in message
