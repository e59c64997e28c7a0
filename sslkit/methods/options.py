"""Range checks of the methods' constructor options, in one place for every method.

The same check runs twice: in each constructor (notebooks build methods directly) and in
``sslkit.methods.check_method_options``, before a run folder is made (``--option KEY=VALUE``).
So its messages name both spellings of the fix: ``use out_dim=256 (--option out_dim=256 on the
command line)``.

What goes wrong without it: a width of 0 trains silently (DINO's out_dim=0 gives loss 0.0, a
hidden_dim of 0 became the encoder's width, an MAE without blocks learns a constant [CLS]),
a negative one fails deep inside torch, and a momentum of 2 or an infinite temperature trains
something that is not the method.
"""

from __future__ import annotations

import inspect
import math
import numbers

from sslkit.errors import SSLKitError

# Whole-number options (widths, counts of blocks, heads, tiles, classes, steps): the least and
# the largest value they may take (None: no limit). A softmax over one class (DINO's out_dim,
# Jigsaw's num_permutations) is constant, so its loss is 0 whatever the network does.
WHOLE_NUMBERS = {
    "proj_dim": (1, None), "hidden_dim": (1, None), "bottleneck_dim": (1, None),
    "out_dim": (2, None), "num_permutations": (2, None),
    "dim": (1, None), "depth": (1, None), "heads": (1, None), "decoder_dim": (1, None),
    "decoder_depth": (1, None), "decoder_heads": (1, None), "patch_size": (1, None),
    "image_size": (1, None), "in_channels": (1, None),
    "grid": (2, 3), "gap": (0, None), "tile_size": (1, None),
    "total_steps": (1, None), "warmup_steps": (0, None), "steps_per_epoch": (0, None),
    "freeze_last_layer_epochs": (0, None),
}

# Real-valued options: (low, high, whether low itself is allowed, whether high is). Every one
# must also be finite (NaN fails every comparison, so it fails here too).
NUMBERS = {
    "temperature": (0.0, math.inf, False, False),
    "student_temp": (0.0, math.inf, False, False),
    "teacher_temp": (0.0, math.inf, False, False),
    "warmup_teacher_temp": (0.0, math.inf, False, False),
    "momentum": (0.0, 1.0, True, True),
    "center_momentum": (0.0, 1.0, True, True),
    "clip_grad": (0.0, math.inf, True, False),
    "mask_ratio": (0.0, 1.0, True, False),
    "mlp_ratio": (0.0, math.inf, False, False),
    "margin": (0.0, math.inf, True, False),  # 0 is allowed: notebook 02 shows it collapse
}

# Options with a flag of their own on the command line (--option is refused for them there).
OWN_FLAGS = {"proj_dim": "--proj-dim", "temperature": "--temperature"}

# Examples where the constructor's default is None.
EXAMPLES = {"hidden_dim": 512}


def fix(key: str, example, command_line: bool = True) -> str:
    """'key=example (--option key=example on the command line)', the fix in both spellings;
    'key=example' alone for a method whose options the command line does not set."""
    if not command_line:
        return f"{key}={example}"
    flag = f"{OWN_FLAGS[key]} {example}" if key in OWN_FLAGS else f"--option {key}={example}"
    return f"{key}={example} ({flag} on the command line)"


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
    if high == math.inf:
        return f"a finite number {'>=' if low_in else '>'} {low:g}"
    return f"a number in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_options(cls: type, options: dict, command_line: bool = True) -> None:
    """One-line SSLKitError for the first of `options` (keywords of cls's constructor) outside
    its range: WHOLE_NUMBERS must be integers within their bounds, NUMBERS finite and within
    theirs. None is accepted where it is the constructor's default (e.g. hidden_dim: the
    encoder's width); keywords not in either table are left to the constructor.
    command_line=False: the fix names no --option (a method the command line builds with fixed
    settings)."""
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    who = f"{cls.__name__}'s"
    for key, value in options.items():
        default = defaults.get(key, inspect.Parameter.empty)
        if value is None and default is None:
            continue
        example = EXAMPLES.get(key) if default in (None, inspect.Parameter.empty) else default
        if key in WHOLE_NUMBERS:
            least, most = WHOLE_NUMBERS[key]
            if not _is_whole(value) or value < least or (most is not None and value > most):
                bound = (f"from {least} to {most}" if most is not None else f"of at least {least}")
                raise SSLKitError(f"{who} {key} must be a whole number {bound} (got {value!r}): "
                                  f"use e.g. {fix(key, example, command_line)}")
        elif key in NUMBERS:
            low, high, low_in, high_in = NUMBERS[key]
            ok = (_is_real(value) and math.isfinite(value)
                  and (low <= value if low_in else low < value)
                  and (value <= high if high_in else value < high))
            if not ok:
                raise SSLKitError(f"{who} {key} must be {_interval(low, high, low_in, high_in)} "
                                  f"(got {value!r}): use e.g. {fix(key, example, command_line)}")
