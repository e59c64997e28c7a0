"""Self-supervised methods: one file each, each an nn.Module that owns its networks and state
and whose ``forward(x)`` returns the training loss for a batch of images.

``build_method(name, ...)`` is what the training loop and the command line call.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from sslkit.augment import SimCLRViews, view_config_for
from sslkit.errors import SSLKitError
from sslkit.methods.cpc import CPC, build_cpc
from sslkit.methods.dino import DINO, MultiCropViews
from sslkit.methods.jigsaw import Jigsaw, check_jigsaw_options, check_tile_side
from sslkit.methods.mae import MAE, mae_view_config
from sslkit.methods.moco import MoCo, check_moco_options, moco_view_config
from sslkit.methods.options import check_options
from sslkit.methods.relative_patch import RelativePatch
from sslkit.methods.rotation import Rotation
from sslkit.methods.simclr import SimCLR
from sslkit.methods.triplet import Triplet
from sslkit.models import build_encoder
from sslkit.models.vit import ViT

METHODS = ("simclr", "triplet", "rotation", "jigsaw", "relative_patch", "moco", "dino", "mae",
           "cpc")


# Methods whose constructors take options (--option KEY=VALUE), and the constructor that
# receives them; the others have fixed settings.
_OPTION_TAKERS = {"simclr": SimCLR, "moco": MoCo, "dino": DINO, "mae": MAE, "jigsaw": Jigsaw}
# constructor arguments that build_method supplies
_NOT_OPTIONS = {"encoder", "views", "self", "generator"}
# ... and those it takes from a flag or the data, which --option must not set twice
_SET_ELSEWHERE = {"image_size": "--image-size sets it: use --image-size {value}",
                  "in_channels": "the dataset's images set it: drop the option"}
# The range checks of each method's options (sizes >= 1, temperatures > 0, ...): the same
# function its constructor calls, so a bad value stops before any run folder is made.
_RANGE_CHECKS = {"moco": check_moco_options, "jigsaw": check_jigsaw_options}


def check_method_options(name: str, method_options: dict) -> None:
    """One-line error unless every key is a keyword of the method's constructor, each value
    of its default's kind and in its range (sslkit.methods.options.check_options; MoCo's:
    sslkit.methods.moco.check_moco_options)."""
    if not method_options:
        return
    if name not in _OPTION_TAKERS:
        raise SSLKitError(f"{name} takes no --option (got {', '.join(method_options)}): only "
                          f"{', '.join(_OPTION_TAKERS)} have options")
    for key, value in method_options.items():  # else the run would save the profile's value
        if key in SHARED_SETTINGS.get(name, ()):
            flag = "--" + key.replace("_", "-")
            raise SSLKitError(f"--option {key}={value} sets {name}'s {key}, which has its own "
                              f"flag: use {flag} {value} (the run saves and reports it)")
    parameters = inspect.signature(_OPTION_TAKERS[name]).parameters
    for key, value in method_options.items():
        if key in _SET_ELSEWHERE and key in parameters:
            raise SSLKitError(f"--option {key}={value} is not an option of {name}, "
                              + _SET_ELSEWHERE[key].format(value=value))
    known = [k for k in parameters  # what --option may set: not what a flag sets
             if k not in _NOT_OPTIONS | set(_SET_ELSEWHERE) | set(SHARED_SETTINGS.get(name, ()))]
    unknown = [k for k in method_options if k not in known]
    if unknown:
        raise SSLKitError(f"unknown option {unknown[0]!r} for {name}: use one of "
                          f"{', '.join(known)}")
    for key, value in method_options.items():
        default = parameters[key].default
        if not _same_kind(value, default):
            raise SSLKitError(f"option {key!r} of {name} must be {_kind_name(default)} like its "
                              f"default, got {value!r}: write e.g. --option {key}={default}")
    if name in _RANGE_CHECKS:  # sizes and ranges, before any run folder is made
        _RANGE_CHECKS[name](method_options)
    else:
        check_options(_OPTION_TAKERS[name], method_options)


# The methods that use the shared settings --proj-dim, --temperature and --head (the others
# ignore them), and what each of the others has instead.
SHARED_SETTINGS = {"simclr": ("proj_dim", "temperature", "head"),
                   "moco": ("proj_dim", "temperature", "head"), "triplet": ("proj_dim", "head")}
_INSTEAD = {"triplet": "uses a margin, not a temperature",
            "dino": "sets its own head and temperatures with --option (out_dim, student_temp, "
                    "teacher_temp)",
            "mae": "has no projection head and no temperature (its sizes are --option's)",
            "cpc": "scores its predictions with bilinear maps W_k, without a temperature"}


def check_shared_settings(name: str, given) -> None:
    """One-line error when `given` (the settings a command line set explicitly) holds one of
    --proj-dim, --temperature or --head and method `name` ignores it: the run would otherwise
    train as if the flag had not been given."""
    for key in ("proj_dim", "temperature", "head"):
        if key in given and key not in SHARED_SETTINGS.get(name, ()):
            why = _INSTEAD.get(name, "classifies with its own head, without a temperature")
            raise SSLKitError(f"--{key.replace('_', '-')} does not apply to {name}, which {why}: "
                              "drop it")


def _same_kind(value, default) -> bool:
    """Whether an option's value can stand where its default does (an int for a float is fine,
    a bool is not a number here). Defaults of other kinds (None, tuples) are not checked."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float, str)) and isinstance(value, bool):
        return False
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (int, str)):
        return isinstance(value, type(default))
    return True


def _kind_name(default) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a word"}[
        type(default)]


def build_method(
    name: str,
    arch: str,
    in_channels: int,
    dataset: str,
    image_size: int,
    generator: torch.Generator | None = None,
    method_options: dict | None = None,
    **options,
) -> nn.Module:
    """A method module with a freshly initialised encoder.

    options: proj_dim, temperature, head (used by the methods in SHARED_SETTINGS, ignored by
    the others). method_options: keywords of the method's own constructor (MoCo's
    queue_size, DINO's out_dim, MAE's depth, ...), checked by name; they win over options."""
    if name not in METHODS:
        raise SSLKitError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    method_options = dict(method_options or {})
    check_method_options(name, method_options)
    if name == "dino":  # arch "vit" (or "vit-<dim>"): the small ViT, 4x4 patches; else a CNN
        # SimCLR's options do not apply (DINO has its own head and temperatures)
        options = {k: v for k, v in options.items() if k not in ("proj_dim", "temperature", "head")}
        vit = arch.startswith("vit")
        if vit and image_size % 8:  # 4x4 patches tile the global crops and the local (half)
            raise SSLKitError(
                f"--image-size {image_size} does not fit DINO with --arch {arch}: its 4x4 "
                "patches must tile the global crops and the local ones, half that side; use "
                f"--image-size {f'{image_size - image_size % 8} or ' if image_size > 8 else ''}"
                f"{image_size - image_size % 8 + 8} (a multiple of 8)")
        encoder = (ViT(image_size, 4, in_channels, dim=int(arch[4:] or 64)) if vit
                   else build_encoder(arch, in_channels, image_size))
        smallest = getattr(encoder, "min_image_size", 1)
        if image_size // 2 < smallest:  # the local crops, not the global ones, set the limit
            raise SSLKitError(
                f"--image-size {image_size} is too small for DINO with --arch {arch}: its local "
                f"crops are half that side, {image_size // 2} pixels, and the encoder's "
                f"max-pools need {smallest}; use --image-size {2 * smallest} or more, or --arch "
                "vit or resnet18")
        return DINO(encoder, MultiCropViews(view_config_for(dataset, image_size),
                                            local_size=image_size // 2, generator=generator),
                    **{**options, **method_options})
    if name == "mae":  # a ViT encoder always: arch "vit" (dim 64) or "vit-<dim>"
        if not arch.startswith("vit"):
            raise SSLKitError(f"MAE needs a ViT encoder, got --arch {arch!r}: use --arch vit")
        dim = int(arch[4:] or 64)
        settings = {"patch_size": 4, "dim": dim, "decoder_dim": dim // 2, **method_options}
        return MAE(image_size, in_channels=in_channels,
                   views=SimCLRViews(mae_view_config(view_config_for(dataset, image_size)),
                                     generator), **settings)
    if name == "cpc":  # its own patch encoder (GroupNorm, never BatchNorm); arch sets the width
        widths = {"convnet-small": 32, "convnet": 64}
        if arch not in widths:
            raise SSLKitError(f"CPC encodes patches with its own LayerNorm network, not {arch!r}: "
                              f"use --arch convnet-small or --arch convnet")
        return build_cpc(dataset, in_channels, widths[arch], generator=generator)
    encoder = build_encoder(arch, in_channels, image_size)
    if name == "rotation":
        return Rotation(encoder)
    if name in ("jigsaw", "relative_patch"):  # tiles of a third of the side, less a gap
        method = (Jigsaw(encoder, generator=generator, **method_options) if name == "jigsaw"
                  else RelativePatch(encoder, generator=generator))
        check_tile_side(image_size, method.gap, getattr(method, "grid", 3))
        smallest = getattr(encoder, "min_image_size", 1)
        if name == "jigsaw" and method.tile_size < smallest:  # else the encoder fails later
            raise SSLKitError(f"{name}'s tile_size={method.tile_size} is too small for --arch "
                              f"{arch}, whose max-pools need a side of at least {smallest}: use "
                              f"--option tile_size={smallest} or more")
        return method
    if name == "moco":  # v2: MLP head and blur
        return MoCo(encoder, SimCLRViews(moco_view_config(view_config_for(dataset, image_size)),
                                         generator), **{**options, **method_options})
    views = SimCLRViews(view_config_for(dataset, image_size), generator)
    if name == "triplet":  # margin and mining keep the module's defaults (0.2, semi-hard)
        return Triplet(encoder, views, proj_dim=options.get("proj_dim", 64),
                       head=options.get("head", "mlp"), generator=generator)
    return SimCLR(encoder, views, **{**options, **method_options})


__all__ = [
    "CPC", "SHARED_SETTINGS", "check_shared_settings",
    "DINO", "MAE", "METHODS", "Jigsaw", "MoCo", "RelativePatch", "Rotation", "SimCLR", "Triplet",
    "build_method",
]
