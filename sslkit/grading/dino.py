"""Checks for 06_dino: dino_loss, update_center, update_teacher, dino_step. See sslkit.grading
for the conventions."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import losses
from sslkit.grading.guard import (
    as_tensor,
    call,
    close,
    match_moving_average,
    match_step,
    match_value,
    max_param_diff,
    quiet,
    randn,
    require_grad,
    require_graph,
    require_unchanged,
    scalar,
    stale_gradients,
    train_mode_kept,
)
from sslkit.methods import dino as dino_method
from sslkit.methods.momentum import update_momentum
from sslkit.models.vit import ViT

REFERENCES = {
    "dino_loss": {
        "sslkit.losses.dino_loss": losses.dino_loss,
        "sslkit.losses.dino_loss_loop": losses.dino_loss_loop,
    },
    "update_center": {"sslkit.methods.dino.update_center": dino_method.update_center},
    "update_teacher": {"sslkit.methods.momentum.update_momentum": update_momentum},
    # The step may call the kit's versions of the earlier exercises (dino_loss, update_momentum,
    # update_center), as every notebook's step may; blocked is only what does the whole step.
    "dino_step": {
        "sslkit.methods.dino.DINO.loss_on_crops": dino_method.DINO.loss_on_crops,
        "sslkit.methods.dino.DINO.forward": dino_method.DINO.forward,
    },
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    """guard.call with this notebook's references blocked when guard is True."""
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


def _outputs(v: int, g: int, n: int, k: int, seed: int):
    s = [randn(n, k, seed=seed + i) * 2 for i in range(v)]
    t = [randn(n, k, seed=seed + 50 + i) * 0.1 for i in range(g)]  # soft teacher at T=0.04
    return s, t, randn(1, k, seed=seed + 99) * 0.1


# ----------------------------------------------------------------------------------------------
# 1. dino_loss(student_out, teacher_out, center, student_temp, teacher_temp)
# ----------------------------------------------------------------------------------------------


def _loss_variants(s, t, c, ts: float, tt: float) -> dict[str, torch.Tensor]:
    """The values of the usual mistakes, to name the one an answer made."""
    def pairs(keep_self: bool, center: torch.Tensor, t_temp: float, s_temp: float, red=torch.sum,
              student_center: torch.Tensor | None = None, t_dim: int = -1, s_dim: int = -1,
              center_after_temp: bool = False, students=s, divide_by: int | None = None,
              over_n=torch.mean):
        vals = []
        shift = 0 if student_center is None else student_center
        for g, tg in enumerate(t):
            logits = tg / t_temp - center if center_after_temp else (tg - center) / t_temp
            p = F.softmax(logits, dim=t_dim)
            for v, sv in enumerate(students):
                if v != g or keep_self:
                    log_p = F.log_softmax((sv - shift) / s_temp, dim=s_dim)
                    vals.append(over_n(red(-p * log_p, dim=-1)))
        total = torch.stack(vals).sum()
        return total / (len(vals) if divide_by is None else divide_by)

    n_pairs = len(t) * len(s) - len(t)
    pairs_hint = (f"divide the sum by the number of (teacher, student) pairs with v != g "
                  f"({n_pairs} here: 2 teacher crops x {len(s)} student crops, less the 2 "
                  "pairs of a crop with itself)")
    softmax_hint = ("take each softmax over the K outputs (dim=-1), one distribution per image, "
                    "not over the batch")
    return {
        "a crop must not be compared with itself (skip v == g)": pairs(True, c, tt, ts),
        "subtract the centre from the teacher outputs before the softmax":
            pairs(False, torch.zeros_like(c), tt, ts),
        "the teacher uses teacher_temp, the student student_temp": pairs(False, c, ts, tt),
        "sum the cross-entropy over the K dimensions (then average over N)":
            pairs(False, c, tt, ts, red=torch.mean),
        "the centre is subtracted from the TEACHER outputs only, not from the student's":
            pairs(False, torch.zeros_like(c), tt, ts, student_center=c),
        "average over the N images of the batch (.mean() over dim 0), after summing over K":
            pairs(False, c, tt, ts, over_n=torch.sum),
        softmax_hint + " (teacher)": pairs(False, c, tt, ts, t_dim=0),
        softmax_hint + " (student)": pairs(False, c, tt, ts, s_dim=0),
        "subtract the centre, then divide by the temperature: softmax((t - center) / "
        "teacher_temp)": pairs(False, c, tt, ts, center_after_temp=True),
        pairs_hint + " (you divided by all 2 x V pairs)":
            pairs(False, c, tt, ts, divide_by=len(t) * len(s)),
        pairs_hint + " (you divided by V)": pairs(False, c, tt, ts, divide_by=len(s)),
        pairs_hint + " (you returned the sum)": pairs(False, c, tt, ts, divide_by=1),
        "every student crop predicts the teacher, the local crops too (only the teacher sees "
        "the global crops alone)": pairs(False, c, tt, ts, students=s[:2]),
    }


def _compare_loss(ex: str, fn: Callable, case, grad: bool) -> None:
    v, g, n, k, ts, tt, seed = case
    s, t, c = _outputs(v, g, n, k, seed)
    where = f" ({v} student crops, {g} teacher crops, N={n}, K={k}, T_s={ts}, T_t={tt})"
    s_in = [x.clone().requires_grad_(grad) for x in s]
    t_in = [x.clone().requires_grad_(grad) for x in t]
    c_in = c.clone()
    given = (*s_in, *t_in, c_in)  # the tensors themselves, even if the lists get new items
    got = scalar(ex, _call(ex, fn, s_in, t_in, c_in, ts, tt, where=where, guard=grad), where)
    names = [f"student_out[{i}]" for i in range(v)] + [f"teacher_out[{i}]" for i in range(g)]
    require_unchanged(ex, (*names, "center"), given, (*s, *t, c), where)
    expected = losses.dino_loss(s, t, c, ts, tt)
    if not close(got, expected):
        match_value(ex, got, expected, _loss_variants(s, t, c, ts, tt), where)
    if not grad:  # gradients reach every student crop, no teacher output
        frozen = {name: f"the teacher is not trained by gradient: use {name}.detach()"
                  for name in names[v:]}
        require_graph(ex, lambda *x: _call(ex, fn, list(x[:v]), list(x[v:]), c.clone(), ts, tt,
                                           where=where), (*s, *t), where, tuple(names), frozen)
        return
    require_grad(ex, got, where)
    # the teacher must get no gradient: differentiate with respect to both and compare
    grad_fn = functools.partial(torch.autograd.grad, allow_unused=True)
    got_grads = _call(ex, grad_fn, got, [*s_in, *t_in], where=where + " in backward")
    ref_s = [x.clone().requires_grad_() for x in s]
    ref_grads = torch.autograd.grad(losses.dino_loss(ref_s, t, c, ts, tt), ref_s)
    for i, (gg, eg) in enumerate(zip(got_grads[:v], ref_grads)):
        if gg is None or not torch.allclose(gg, eg, atol=1e-5, rtol=1e-4):
            raise AssertionError(f"{ex}: the gradient with respect to student crop {i} differs "
                                 f"from the reference{where}")
    if any(gg is not None and bool(gg.abs().max() > 0) for gg in got_grads[v:]):
        raise AssertionError(f"{ex}: a gradient reaches the teacher outputs{where}: detach them "
                             "(teacher_out[i].detach()) -- the teacher is not trained by gradient")


@quiet
def check_dino_loss(dino_loss: Callable, hidden: bool = False) -> None:
    """DINO's loss gives the reference value (hidden: more cases, gradients only to the student,
    and no delegation)."""
    ex = "dino_loss"
    cases = [(4, 2, 3, 5, 0.1, 0.04, 0)] if not hidden else [
        (2, 2, 2, 3, 0.5, 0.2, 1), (6, 2, 4, 8, 0.1, 0.04, 2), (3, 2, 5, 16, 0.2, 0.07, 3)]
    for case in cases:
        _compare_loss(ex, dino_loss, case, grad=hidden)


# ----------------------------------------------------------------------------------------------
# 2. update_center(center, teacher_out, momentum) -> new centre
# ----------------------------------------------------------------------------------------------


@quiet
def check_update_center(update_center: Callable, hidden: bool = False) -> None:
    """center <- m center + (1 - m) mean over all teacher rows (of every global crop)."""
    ex = "update_center"
    # m = 0 last: there a swapped m and a centre returned unchanged look the same; the cases
    # before it catch a swapped m (at m = 0.5 it is right, at 0.99 it is not)
    cases = [(0.9, 4, 6, 0)] if not hidden else [(0.5, 2, 7, 2), (0.99, 5, 3, 3), (0.0, 3, 5, 1)]
    for m, n, k, seed in cases:
        t = [randn(n, k, seed=seed + i) for i in range(2)]
        t[1] = t[1] + 1.0  # the two crops differ in mean, so using one crop only shows
        c = randn(1, k, seed=seed + 10)
        where = f" (m={m}, 2 teacher crops of N={n}, K={k})"
        got = as_tensor(ex, _call(ex, update_center, c.clone(), [x.clone() for x in t], m,
                                  where=where, guard=hidden), where)
        expected = dino_method.update_center(c, t, m)
        if got.numel() != expected.numel():
            raise AssertionError(f"{ex}: expected a centre of shape {tuple(expected.shape)}, got "
                                 f"{tuple(got.shape)}{where}: average over the batch (dim=0)")
        got = got.reshape(expected.shape).to(expected.dtype)  # float64 is a fine answer too
        if not torch.allclose(got, expected, atol=1e-6):
            at_zero = ("at m=0 the new centre is the mean of the teacher outputs: do not skip "
                       "the update or replace m when it is 0 (`if m:` and `m or 0.9` treat 0 as "
                       "missing)")
            swap = "did you swap m and 1 - m?" if m else at_zero  # the same value at m = 0
            hints = {swap: (1 - m) * c + m * torch.cat(t).mean(0),
                     "average over the rows of every teacher crop (torch.cat them first)":
                         m * c + (1 - m) * t[0].mean(0)}
            hint = next((" — " + h for h, val in hints.items()
                         if torch.allclose(got, val.reshape(got.shape), atol=1e-6)),
                        "" if m else " — " + at_zero)
            raise AssertionError(f"{ex}: the new centre differs from m·center + (1 - m)·mean by "
                                 f"up to {float((got - expected).abs().max()):.2g}{where}{hint}")


# ----------------------------------------------------------------------------------------------
# 3. update_teacher(student, teacher, m)
# ----------------------------------------------------------------------------------------------


def _pair(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.GELU(), nn.Linear(4, 3))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
            p.requires_grad_(False)
    return student, teacher


@quiet
def check_update_teacher(update_teacher: Callable, hidden: bool = False) -> None:
    """θt <- m θt + (1 - m) θs for every parameter; the student is untouched; no autograd."""
    ex = "update_teacher"
    # m = 0 last: there a swapped m and a teacher left unchanged look the same (see
    # match_moving_average); the cases before it tell them apart
    cases = [(0.9, 0)] if not hidden else [(0.5, 2), (0.996, 3), (0.0, 1)]
    for m, seed in cases:
        student, teacher = _pair(seed)
        old_s = [p.detach().clone() for p in student.parameters()]
        old_t = [p.detach().clone() for p in teacher.parameters()]
        where = f" (m={m}, a Linear-LayerNorm-GELU-Linear network)"
        _call(ex, update_teacher, student, teacher, m, where=where, guard=hidden)
        match_moving_average(ex, student, teacher, old_s, old_t, m, where,
                             ("student", "teacher"))
        for name, t1 in teacher.named_parameters():
            if t1.grad_fn is not None or t1.requires_grad:
                raise AssertionError(f"{ex}: teacher {name} now takes part in autograd{where}: "
                                     "update in place under torch.no_grad()")


# ----------------------------------------------------------------------------------------------
# 4. dino_step(student, teacher, center, optimizer, crops, m, student_temp, teacher_temp,
#              center_momentum) -> (loss as a float, new centre)
# ----------------------------------------------------------------------------------------------

STEP_HPARAMS = dict(m=0.9, student_temp=0.1, teacher_temp=0.05, center_momentum=0.8)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(ViT(8, 4, 1, dim=8, depth=1, heads=2),
                         dino_method.DINOHead(8, out_dim=16, hidden_dim=16, bottleneck_dim=4))


def _step_case(seed: int, n: int = 4):
    student = _net(seed)
    teacher = copy.deepcopy(student)
    with torch.no_grad():  # not a copy of the student any more, as after a few steps: a centre
        for p in teacher.parameters():  # made from the student's outputs would match otherwise
            p.add_(0.05 * torch.randn(p.shape))
            p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    crops = [torch.rand(n, 1, 8, 8, generator=g) for _ in range(2)]
    crops += [torch.rand(n, 1, 4, 4, generator=g) for _ in range(2)]
    center = randn(1, 16, seed=seed + 2) * 0.1
    return student, teacher, center, crops


def _optimizer(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=0.5, momentum=0.9)


def _reference_step(student, teacher, center, optimizer, crops, m, student_temp, teacher_temp,
                    center_momentum):
    """Algorithm 1 of the DINO paper: loss, student update, teacher EMA, centre EMA."""
    s_out = [student(v) for v in crops]
    with torch.no_grad():
        t_out = [teacher(v) for v in crops[:2]]
    loss = losses.dino_loss(s_out, t_out, center, student_temp, teacher_temp)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    update_momentum(student, teacher, m)
    return loss.item(), dino_method.update_center(center, t_out, center_momentum)


def _step_hint(student, teacher, center, crops, got: float) -> str:
    """Names the mistake whose loss ``got`` equals (student, teacher, centre: before the step)."""
    h = STEP_HPARAMS
    ts, tt = h["student_temp"], h["teacher_temp"]
    with torch.no_grad():
        s_out = [student(v) for v in crops]
        t_out = [teacher(v) for v in crops]
        new_center = dino_method.update_center(center, t_out[:2], h["center_momentum"])
        variants = (
            (losses.dino_loss(s_out, t_out[:2], new_center, ts, tt),
             "the loss uses the centre as given; compute the new centre after it, from this "
             "step's teacher outputs"),
            (losses.dino_loss(s_out, t_out, center, ts, tt), "the teacher sees the 2 global "
             "crops only (crops[:2]); every crop goes through the student"),
            (losses.dino_loss(s_out, t_out[2:4], center, ts, tt), "the teacher sees the 2 global "
             "crops only (crops[:2]), the first two of the list"),
            (losses.dino_loss(s_out, t_out[:2], center, tt, ts),
             "the student uses student_temp, the teacher teacher_temp"),
        )
    for value, text in variants:
        if abs(got - float(value)) < 1e-5:
            return " — " + text
    return (" — did you use the centre and both temperatures as given? If your dino_loss does "
            "not pass its tests yet, call sslkit.losses.dino_loss here")


def _check_one_step(ex: str, dino_step: Callable, seed: int, steps: int, guard: bool) -> None:
    student, teacher, center, crops = _step_case(seed)
    ref_s, ref_t, ref_c = copy.deepcopy(student), copy.deepcopy(teacher), center.clone()
    optimizer, ref_opt = _optimizer(student), _optimizer(ref_s)
    h = STEP_HPARAMS
    where = (f" (2 global 1x8x8 + 2 local 1x4x4 crops of N={len(crops[0])}, m={h['m']}, "
             f"T_s={h['student_temp']}, T_t={h['teacher_temp']}, centre momentum "
             f"{h['center_momentum']}, SGD lr=0.5 momentum=0.9)")
    for step in range(steps):
        label = f"step {step + 1}: " if steps > 1 else ""
        stale_gradients(student, ref_s, seed + step)  # zero_grad must clear them
        before, teacher_before = copy.deepcopy(student), copy.deepcopy(teacher)
        with train_mode_kept(ex, {"student": student, "teacher": teacher}, label, where):
            result = _call(ex, dino_step, student, teacher, center.clone(), optimizer,
                           [v.clone() for v in crops], *h.values(), where=where, guard=guard)
        if not isinstance(result, tuple) or len(result) != 2:
            raise AssertionError(f"{ex}: expected (loss, new_center), got "
                                 f"{type(result).__name__}{where}")
        got, new_center = result
        expected, ref_c = _reference_step(ref_s, ref_t, ref_c, ref_opt, crops, *h.values())
        m = h["m"]
        if (isinstance(got, float) and abs(got - expected) <= 1e-5
                and max_param_diff(teacher, teacher_before) == 0
                and all(torch.allclose(p.detach(), m * r + (1 - m) * t, atol=1e-5)
                        for p, r, t in zip(student.parameters(), ref_s.parameters(),
                                           teacher_before.parameters()))):
            raise AssertionError(f"{ex}: {label}the loss is right, but the teacher did not move "
                                 f"and the student differs from the reference's{where}: after "
                                 "optimizer.step(), call update_teacher(student, teacher, m) — "
                                 "the teacher moves towards the student, never the other way")
        match_step(ex, got, expected, student, before, ref_s, label, where,
                   hint=lambda b=before, tb=teacher_before, c=center, v=got:
                   _step_hint(b, tb, c, crops, v))
        diff = max_param_diff(teacher, ref_t)
        if diff > 1e-5:
            raise AssertionError(f"{ex}: {label}the teacher differs from the reference's by up "
                                 f"to {diff:.2g}{where}: after optimizer.step(), move it with "
                                 "update_teacher(student, teacher, m)")
        new_center = as_tensor(ex, new_center, where)
        if new_center.numel() != ref_c.numel() or not torch.allclose(
                new_center.detach().reshape(ref_c.shape).to(ref_c.dtype), ref_c, atol=1e-5):
            raise AssertionError(f"{ex}: {label}the new centre differs from the reference's"
                                 f"{where}: update it from this step's teacher outputs")
        center = new_center.detach().reshape(ref_c.shape).to(ref_c.dtype)


@quiet
def check_dino_step(dino_step: Callable, hidden: bool = False) -> None:
    """One step from the same seed, weights and crops gives the reference's loss, student,
    teacher and centre (reference: Algorithm 1 of the paper with sslkit's pieces)."""
    ex = "dino_step"
    if not hidden:
        _check_one_step(ex, dino_step, seed=0, steps=1, guard=False)
    else:
        _check_one_step(ex, dino_step, seed=1, steps=2, guard=True)
