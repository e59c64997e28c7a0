"""The pieces every notebook's checks share: the delegation guard, quiet checks, one-line
failures, seeded inputs.

Students have sslkit installed, so an answer that only calls the reference would pass every
numerical test. While the student's function runs, ``references_blocked`` swaps the
``__code__`` of each reference function (for a decorated function, of the function it wraps)
for one that raises: a student may hold an alias (``from sslkit.losses import nt_xent as
ref``), and an alias points at the same function object. The original code is restored in
``finally``.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_MARK = "sslkit-grading: reference called: "
NOT_FINITE = "look for log(0), 0 * inf (e.g. a -inf mask times 0) or a division by zero"


def _blocked(*args, **kwargs):
    raise RuntimeError("sslkit-grading: reference called: ?")



@contextmanager
def references_blocked(references: dict[str, Callable]) -> Iterator[None]:
    """While inside, every function in ``references`` (name -> function) raises when called."""
    swapped = []
    try:
        for name, fn in references.items():
            target = inspect.unwrap(fn)  # the undecorated function a wrapper calls
            consts = tuple(_MARK + name if isinstance(c, str) and c.startswith(_MARK) else c
                           for c in _blocked.__code__.co_consts)
            code = _blocked.__code__.replace(co_consts=consts, co_name=target.__code__.co_name)
            swapped.append((target, target.__code__))
            target.__code__ = code
        yield
    finally:
        for target, code in reversed(swapped):
            target.__code__ = code


def quiet(check: Callable) -> Callable:
    """Decorator: no warnings from a check (a test cell must print nothing to stderr)."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return check(*args, **kwargs)

    return wrapper


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def call(exercise: str, fn: Callable, *args, where: str = "",
         blocked: dict[str, Callable] | None = None):
    """fn(*args); any exception becomes a one-line AssertionError naming the exercise.

    blocked: references (name -> function) that raise while fn runs (the delegation guard).
    """
    try:
        with references_blocked(blocked or {}):
            return fn(*args)
    except AssertionError as e:
        if str(e).startswith(exercise):  # a check's own failure
            raise
        message = one_line(e)  # an assert in the student's code: often with no message
        raise AssertionError(f"{exercise}: an assert in your code failed{where}"
                             + (f": {message}" if message else "")) from None
    except Exception as e:  # noqa: BLE001 -- a student's bug must become a readable failure
        message = one_line(e)
        if _MARK in message:
            ref = message.split(_MARK, 1)[1].split()[0]
            raise AssertionError(
                f"{exercise}: your answer calls the reference {ref}; write the computation "
                "yourself (torch and torch.nn.functional are fine)"
            ) from None
        if isinstance(e, NotImplementedError) and not message:  # nbgrader's unfinished cell
            raise AssertionError(
                f"{exercise} is not written yet: it raised NotImplementedError{where}; replace "
                "the `raise NotImplementedError()` line with your code"
            ) from None
        if "not have been used in the graph" in message:  # from torch.autograd.grad
            raise AssertionError(
                f"{exercise}: no gradient flows from your result back to the inputs{where}: "
                "compute it from the inputs with torch operations (no torch.tensor(...), "
                ".item(), .detach() or numpy)"
            ) from None
        if "needed for gradient computation has been modified by an inplace" in message:
            message = (message.split(" Hint: enable anomaly")[0] + " A tensor the backward pass "
                       "needs was changed in place between the forward pass and "
                       "loss.backward(): an in-place update (a momentum update, optimizer.step()"
                       ") of the network being trained came too early, or went the wrong way")
        if "leaf Variable that requires grad is being used in an in-place" in message:
            message += (" In a loss, make new tensors instead of changing an input (z = z / n, "
                        "not z /= n or .div_()); to update parameters in place, do it under "
                        "torch.no_grad() (with torch.no_grad(): p.mul_(m)...), so that autograd "
                        "does not record the update")
        raise AssertionError(
            f"{exercise} raised {type(e).__name__}{where}" + (f": {message}" if message else "")
        ) from None


# ----------------------------------------------------------------------------------------------
# Seeded inputs and comparisons
# ----------------------------------------------------------------------------------------------


def randn(*shape: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def as_tensor(exercise: str, value, where: str) -> torch.Tensor:
    if value is None:
        raise AssertionError(f"{exercise}: expected a torch.Tensor, got None{where}: did you "
                             "forget the return statement?")
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"{exercise}: expected a torch.Tensor, got {type(value).__name__}"
                             f"{where}: keep the computation in torch")
    return value


def scalar(exercise: str, value, where: str) -> torch.Tensor:
    value = as_tensor(exercise, value, where)
    if value.numel() != 1:
        raise AssertionError(f"{exercise}: expected a scalar (the mean over the anchors), got "
                             f"shape {tuple(value.shape)}{where}: average with .mean()")
    return value.reshape(())


def require_unchanged(exercise: str, names: tuple[str, ...], passed, originals,
                      where: str) -> None:
    """Fail if the student's function changed one of its tensor inputs (passed as copies of
    ``originals``, in the order of ``names``) in place."""
    for name, given, original in zip(names, passed, originals):
        if not torch.equal(given.detach(), original):
            raise AssertionError(f"{exercise}: your function changed its input {name} in place"
                                 f"{where}: make new tensors (z = z / n), not in-place updates "
                                 "(z /= n, .div_(), masked_fill_)")


def case_label(n: int, d: int, t: float | None = None) -> str:
    return f" for N={n}, D={d}" + ("" if t is None else f", T={t}")


# ----------------------------------------------------------------------------------------------
# 1. build_augmentation(size)
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Comparisons shared by the loss and training-step exercises
# ----------------------------------------------------------------------------------------------


def close(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    got = got.detach().to(expected.dtype)
    return got.shape == expected.shape and torch.allclose(got, expected, atol=atol, rtol=1e-4)


def match_value(exercise: str, got: torch.Tensor, expected: torch.Tensor,
                variants: dict[str, torch.Tensor], where: str) -> None:
    """Fail unless got ≈ expected (scalars); the hint names the known mistake (a key of
    ``variants``) whose value ``got`` equals, if any."""
    if close(got, expected):
        return
    if not torch.isfinite(got).all():
        raise AssertionError(f"{exercise}: expected {float(expected):.4f}, got {float(got)}"
                             f"{where}: {NOT_FINITE}")
    hint = next((" — " + text for text, value in variants.items()
                 if close(got, value, atol=1e-4)), "")
    raise AssertionError(f"{exercise}: expected {float(expected):.4f}, got {float(got):.4f}"
                         f"{where}{hint}")


def require_grad(exercise: str, got: torch.Tensor, where: str) -> None:
    if not got.requires_grad:
        raise AssertionError(f"{exercise}: the loss carries no gradient{where}: keep the "
                             "computation in torch (no .item(), numpy or torch.no_grad())")


def require_graph(exercise: str, run: Callable, inputs: tuple[torch.Tensor, ...],
                  where: str, names: tuple[str, ...] = (),
                  frozen: dict[str, str] | None = None, what: str = "the loss") -> None:
    """The visible checks' look at gradients: ``run(*inputs)`` once more, with copies of the
    inputs that all require grad, must give a result that carries a gradient. An answer with
    the right value computed through .item(), numpy, .detach() or torch.no_grad() fails here.

    names: the inputs' names, in order; then ``require_flow`` also checks which inputs the
    gradient reaches (every named input not in ``frozen``, none in ``frozen``). The hidden
    checks compare the gradients themselves. what: the result, as the failure names it."""
    copies = [t.detach().clone().requires_grad_() for t in inputs]
    got = run(*copies)
    if not (isinstance(got, torch.Tensor) and got.requires_grad):
        raise AssertionError(f"{exercise}: the value is right, but {what} carries no gradient"
                             f"{where}: training backpropagates through it, so keep the "
                             "computation in torch (no .item(), float(), numpy, .detach() or "
                             "torch.no_grad())")
    if names:
        require_flow(exercise, got, dict(zip(names, copies)), where, frozen)


def require_flow(exercise: str, got: torch.Tensor, inputs: dict[str, torch.Tensor], where: str,
                 frozen: dict[str, str] | None = None) -> None:
    """Which inputs the gradient of ``got`` (a result that requires grad) reaches: each of
    ``inputs`` (name -> leaf tensor that requires grad) must be in the graph (autograd gives it
    a gradient, if only zeros), except those named in ``frozen`` (name -> the hint that says
    why it must get none), which must get none (None or zeros). A loss that detaches one of its
    inputs, or keeps in the graph one the method does not train through, fails with the
    input's name. The graph is kept: a hidden check may go on to compare the gradients."""
    frozen = frozen or {}
    weight = randn(*got.shape, seed=11).to(got.dtype) if got.numel() > 1 else 1.0
    out = (got * weight).sum()  # a random loss of a non-scalar result: every entry counts
    names = list(inputs)
    try:
        grads = torch.autograd.grad(out, [inputs[n] for n in names], allow_unused=True,
                                    retain_graph=True)
    except RuntimeError as e:
        if "modified by an inplace operation" in str(e):
            raise AssertionError(
                f"{exercise}: the value is right, but an in-place operation (z /= n, .div_(), "
                f".mul_()) breaks the backward pass{where}: autograd needs the tensors it "
                "saved, so write z = z / n") from None
        raise AssertionError(f"{exercise}: the backward pass through your result failed"
                             f"{where}: {one_line(e)[:160]}") from None
    if len(grads) > 1 and all(g is None for g in grads):  # torch.tensor(v, requires_grad=True)
        raise AssertionError(f"{exercise}: no gradient flows from your result back to the inputs"
                             f"{where}: compute it from the inputs with torch operations (no "
                             "torch.tensor(...), .item(), .detach() or numpy)")
    for name, g in zip(names, grads):
        if name in frozen and g is not None and bool((g != 0).any()):
            raise AssertionError(f"{exercise}: a gradient reaches {name}{where}: "
                                 f"{frozen[name]}")
        if name not in frozen and g is None:  # a zero gradient can be right (an inactive hinge)
            raise AssertionError(
                f"{exercise}: the value is right, but no gradient reaches {name}{where}: "
                f"training backpropagates through {name} too, so keep it in the graph (no "
                f".detach(), .data, torch.no_grad() or numpy on its way into the loss)")


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def match_step(exercise: str, got, expected: float, model: torch.nn.Module,
               before: torch.nn.Module, reference: torch.nn.Module, label: str, where: str,
               hint: Callable[[], str]) -> None:
    """The checks of one training step: the loss came back as a float equal to the reference's,
    the weights changed, and they equal the reference's updated weights. ``hint()`` explains a
    wrong loss; ``reference`` holds the reference's parameters in the model's order."""
    if not isinstance(got, float):
        raise AssertionError(f"{exercise}: expected the loss as a Python float, got "
                             f"{type(got).__name__}{where}: return loss.item()")
    if not math.isfinite(got):
        raise AssertionError(f"{exercise}: {label}expected loss {expected:.5f}, got {got}{where}:"
                             f" {NOT_FINITE}")
    if abs(got - expected) > 1e-5:
        raise AssertionError(f"{exercise}: {label}expected loss {expected:.5f}, got {got:.5f}"
                             f"{where}{hint()}")
    if max_param_diff(model, before) == 0:
        raise AssertionError(f"{exercise}: {label}the weights did not change{where}: call "
                             "optimizer.zero_grad(), loss.backward(), then optimizer.step(), in "
                             "this order (a zero_grad() between backward() and step() throws "
                             "the gradients away)")
    diff = max_param_diff(model, reference)
    if not diff <= 1e-5:  # NaN weights fail too
        differ = [name for (name, p), q in zip(model.named_parameters(), reference.parameters())
                  if not float((p - q).abs().max()) <= 1e-5]
        which = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3
                                          else "")
        raise AssertionError(
            f"{exercise}: {label}the loss is right but the updated weights differ from the "
            f"reference's by up to {diff:.2g} ({which}){where}: call optimizer.zero_grad() "
            "before loss.backward(), then optimizer.step(), once per step; and keep every "
            "stage in the graph (a .detach() or torch.no_grad() stops the gradient on its way "
            "to those weights)")


def _mode_dependent(module: torch.nn.Module) -> str | None:
    """What eval mode changes in ``module`` (None where it changes nothing)."""
    nn = torch.nn
    if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
        return "normalises with running statistics, not the batch's, and stops updating them"
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
        return "drops nothing"
    if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
        return "drops no attention weights"
    if isinstance(module, nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
        return "drops nothing between its layers"
    return None


@contextmanager
def train_mode_kept(exercise: str, nets: dict[str, torch.nn.Module], label: str,
                    where: str) -> Iterator[None]:
    """Around one call of a student's training step: every module of ``nets`` (name -> network
    as the step's arguments call it) whose behaviour depends on the mode (BatchNorm, dropout)
    must run its forward passes in train mode, as the reference's step does, and be left in the
    mode it came in. A step that calls model.eval() (for the key pass, say, or after the update)
    fails with a hint that names the network; its loss alone would only have been wrong."""
    runs: list[tuple[str, str, bool]] = []  # (network, module, training) of each forward pass
    came_in: dict[tuple[str, str], bool] = {}
    handles = []

    def recorder(net: str, name: str):  # a closure: deepcopy keeps it (and the list) as it is
        return lambda module, args: runs.append((net, name, module.training))

    try:
        for net, module in nets.items():
            for name, m in module.named_modules():
                if _mode_dependent(m):
                    came_in[net, name] = m.training
                    handles.append(m.register_forward_pre_hook(recorder(net, name)))
        yield
    finally:
        for handle in handles:
            handle.remove()
    modules = {(net, name): m for net, module in nets.items()
               for name, m in module.named_modules()}

    def named(net: str, name: str) -> str:
        m = modules.get((net, name))
        if m is None:  # the step took the module out of the network
            return f"{net}.{name}"
        return f"{net}.{name} is a {type(m).__name__}, which in eval mode {_mode_dependent(m)}"

    for net, name, training in runs:
        if came_in[net, name] and not training:
            raise AssertionError(
                f"{exercise}: {label}{net} ran in eval mode during the step{where}: "
                f"{named(net, name)}; a training step keeps every network in train mode: do not "
                f"call {net}.eval() in it")
    for (net, name), was in came_in.items():
        if was and (net, name) in modules and not modules[net, name].training:
            raise AssertionError(
                f"{exercise}: {label}the step left {net} in eval mode{where}, so the next step "
                f"would run in it: {named(net, name)}; do not call {net}.eval() in a training "
                "step")


def stale_gradients(model: torch.nn.Module, reference: torch.nn.Module, seed: int) -> None:
    """Give the trainable parameters of ``model`` and ``reference`` (the same architecture) the
    same random .grad, as an earlier step leaves them: a step that forgets
    optimizer.zero_grad() then fails its first step, not only its second."""
    g = torch.Generator().manual_seed(seed)
    for p, r in zip(model.parameters(), reference.parameters()):
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            r.grad = p.grad.clone()


def match_moving_average(exercise: str, source: torch.nn.Module, average: torch.nn.Module,
                         old_source: list[torch.Tensor], old_average: list[torch.Tensor],
                         m: float, where: str, names: tuple[str, str]) -> None:
    """After an EMA update, check parameter by parameter that ``source`` is unchanged and
    ``average`` = m·old_average + (1 - m)·old_source (hinting at a swapped m). ``names``, e.g.
    ("online", "target"), word the messages. Autograd checks stay with the caller.

    At m = 0 several mistakes give the same numbers: a swapped m, an update that only rebinds
    a name, and an update skipped for m = 0 all leave the average unchanged. Callers check a
    case with 0 < m < 1, m != 0.5 (where a swapped m is right) before m = 0, so that the first
    two fail there with their own hint; what fails only at m = 0 is told so."""
    src, avg = names
    for name, s0, a0, s1, a1 in zip(dict(source.named_parameters()), old_source, old_average,
                                   source.parameters(), average.parameters()):
        if not torch.equal(s1.detach(), s0):
            raise AssertionError(f"{exercise}: the {src} {'network ' * (src == 'online')}"
                                 f"changed ({name}){where}: only the {avg} moves")
        expected = m * a0 + (1 - m) * s0
        if m == 0 and not torch.allclose(a1.detach(), expected, atol=1e-6):
            raise AssertionError(
                f"{exercise}: at m=0 the {avg} must become a copy of the {src}"
                f"{' network' * (src == 'online')}, but {name} "
                f"differs from it by up to {float((a1.detach() - expected).abs().max()):.2g}"
                f"{where}: m=0 is a valid momentum; do not skip the update or replace m when it "
                "is 0 (`if m:` and `m or 0.99` treat 0 as missing)")
        if m < 1 and not torch.equal(s0, a0) and torch.equal(a1.detach(), a0):
            raise AssertionError(
                f"{exercise}: the {avg} did not change ({name}){where}: update each parameter "
                "in place (p_t.mul_(m).add_(...) or p_t.copy_(...)); `p_t = ...` in the loop only "
                "renames the variable")
        if not torch.allclose(a1.detach(), expected, atol=1e-6):
            swapped = (1 - m) * a0 + m * s0
            hint = " — did you swap m and 1 - m?" if torch.allclose(
                a1.detach(), swapped, atol=1e-6) else ""
            raise AssertionError(
                f"{exercise}: {avg} {name} differs from m·{avg} + (1 - m)·{src} by up to "
                f"{float((a1.detach() - expected).abs().max()):.2g}{where}{hint}")

