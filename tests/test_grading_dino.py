"""Tests for sslkit.grading.dino: for every graded exercise of 06_dino, a correct answer passes
the visible and hidden checks, typical wrong answers fail with a one-line message, and answers
that delegate to the sslkit reference fail the hidden check."""

import copy
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from solution_cells import run_solution_cells
from torch import nn

from sslkit import losses
from sslkit.grading import dino as grading
from sslkit.methods import dino as dino_method
from sslkit.methods.momentum import update_momentum

NOTEBOOK = Path(__file__).parent.parent / "solutions" / "06_dino" / "06_dino.ipynb"
SOLUTION_CELLS = ("dino_loss", "update_center", "update_teacher", "dino_step")


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    namespace = {"torch": torch, "F": F, "nn": nn, "math": math, "copy": copy}
    return run_solution_cells(NOTEBOOK, SOLUTION_CELLS, namespace)


# -- correct answers written independently of the notebook, to build wrong ones from ----------

def dino_loss(student_out, teacher_out, center, student_temp=0.1, teacher_temp=0.04):
    total, pairs = 0.0, 0
    for g, t in enumerate(teacher_out):
        p_t = F.softmax((t.detach() - center) / teacher_temp, dim=-1)
        for v, s in enumerate(student_out):
            if v == g:
                continue
            total = total + (-p_t * F.log_softmax(s / student_temp, dim=-1)).sum(-1).mean()
            pairs += 1
    return total / pairs


@torch.no_grad()
def update_center(center, teacher_out, momentum=0.9):
    return momentum * center + (1 - momentum) * torch.cat(teacher_out).mean(0, keepdim=True)


@torch.no_grad()
def update_teacher(student, teacher, m):
    for ps, pt in zip(student.parameters(), teacher.parameters()):
        pt.mul_(m).add_(ps.detach(), alpha=1 - m)


def dino_step(student, teacher, center, optimizer, crops, m, student_temp, teacher_temp,
              center_momentum):
    s_out = [student(v) for v in crops]
    with torch.no_grad():
        t_out = [teacher(v) for v in crops[:2]]
    loss = dino_loss(s_out, t_out, center, student_temp, teacher_temp)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    update_teacher(student, teacher, m)
    return loss.item(), update_center(center, t_out, center_momentum)


CHECKS = {
    "dino_loss": (grading.check_dino_loss, dino_loss),
    "update_center": (grading.check_update_center, update_center),
    "update_teacher": (grading.check_update_teacher, update_teacher),
    "dino_step": (grading.check_dino_step, dino_step),
}


def fails(check, answer, hidden: bool, match: str) -> str:
    with pytest.raises(AssertionError, match=match) as info:
        check(answer, hidden=hidden)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    check, answer = CHECKS[exercise]
    check(getattr(solution, exercise), hidden=hidden)  # the notebook's solution cell
    check(answer, hidden=hidden)


def test_the_sslkit_references_pass_the_visible_checks():
    grading.check_dino_loss(losses.dino_loss)
    grading.check_dino_loss(losses.dino_loss_loop)
    grading.check_update_center(dino_method.update_center)
    grading.check_update_teacher(update_momentum)


# -- wrong answers -----------------------------------------------------------------------------

def test_dino_loss_wrong_answers():
    check = grading.check_dino_loss

    def with_self(s_out, t_out, c, ts=0.1, tt=0.04):
        ce = [(-F.softmax((t - c) / tt, -1) * F.log_softmax(s / ts, -1)).sum(-1).mean()
              for t in t_out for s in s_out]
        return torch.stack(ce).mean()

    def no_centre(s_out, t_out, c, ts=0.1, tt=0.04):
        return dino_loss(s_out, t_out, torch.zeros_like(c), ts, tt)

    def swapped_temps(s_out, t_out, c, ts=0.1, tt=0.04):
        return dino_loss(s_out, t_out, c, tt, ts)

    def teacher_gets_gradient(s_out, t_out, c, ts=0.1, tt=0.04):
        total = 0.0
        for g, t in enumerate(t_out):
            p = F.softmax((t - c) / tt, -1)
            total = total + sum((-p * F.log_softmax(s / ts, -1)).sum(-1).mean()
                                for v, s in enumerate(s_out) if v != g)
        return total / (len(t_out) * (len(s_out) - 1))

    def centres_the_student(s_out, t_out, c, ts=0.1, tt=0.04):
        return dino_loss([s - c for s in s_out], t_out, torch.zeros_like(c), ts, tt)

    assert "TEACHER outputs only" in fails(check, centres_the_student, False, "expected")
    assert "itself" in fails(check, with_self, False, "expected")
    assert "centre" in fails(check, no_centre, False, "expected")
    assert "temp" in fails(check, swapped_temps, False, "expected")
    teacher_gets_gradient([torch.zeros(2, 3)] * 2, [torch.zeros(2, 3)] * 2, torch.zeros(3))
    # the value is right, but the teacher is trained: the visible check names it too
    assert "teacher_out[0].detach()" in fails(check, teacher_gets_gradient, False,
                                               "gradient reaches teacher_out")
    fails(check, teacher_gets_gradient, True, "teacher")
    fails(check, lambda *a: losses.dino_loss(*a), True, "reference")
    fails(check, lambda *a: 1.0, False, "torch.Tensor")


def test_update_center_wrong_answers():
    check = grading.check_update_center

    def swapped(c, t_out, m=0.9):
        return (1 - m) * c + m * torch.cat(t_out).mean(0, keepdim=True)

    def first_crop_only(c, t_out, m=0.9):
        return m * c + (1 - m) * t_out[0].mean(0, keepdim=True)

    assert "swap" in fails(check, swapped, False, "centre")
    assert "cat" in fails(check, first_crop_only, False, "centre")
    fails(check, lambda c, t, m: c, False, "centre")
    fails(check, lambda *a: dino_method.update_center(*a), True, "reference")


def test_update_teacher_wrong_answers():
    check = grading.check_update_teacher

    @torch.no_grad()
    def swapped(student, teacher, m):
        for ps, pt in zip(student.parameters(), teacher.parameters()):
            pt.mul_(1 - m).add_(ps, alpha=m)

    def with_history(student, teacher, m):
        for ps, pt in zip(student.parameters(), teacher.parameters()):
            pt.data = m * pt.data + (1 - m) * ps.data
            pt.requires_grad_(True)

    @torch.no_grad()
    def copies(student, teacher, m):
        teacher.load_state_dict(student.state_dict())

    assert "swap" in fails(check, swapped, False, "differs")
    fails(check, with_history, False, "autograd")
    fails(check, copies, False, "differs")
    fails(check, lambda s, t, m: update_momentum(s, t, m), True, "reference")


def test_update_teacher_that_only_rebinds_a_name():
    def rebinds(student, teacher, m):
        for ps, pt in zip(student.parameters(), teacher.parameters()):
            pt = m * pt + (1 - m) * ps  # the mistake: rebinds the name only

    for hidden in (False, True):  # at m = 0 "swapped m" looks the same: hidden checks it last
        message = fails(grading.check_update_teacher, rebinds, hidden, "did not change")
        assert "in place" in message and "swap" not in message


@pytest.mark.parametrize("mistake", ["swapped", "skips_zero", "m_or_default"])
def test_update_center_at_m_zero_names_the_right_mistake(mistake):
    """At m = 0 a swapped m and a centre returned unchanged give the same value."""
    def update(center, teacher_out, m):
        mean = torch.cat(teacher_out).mean(0, keepdim=True)
        if mistake == "swapped":
            return (1 - m) * center + m * mean
        if mistake == "skips_zero" and not m:
            return center
        m = m or 0.9 if mistake == "m_or_default" else m
        return m * center + (1 - m) * mean

    if mistake == "swapped":
        message = fails(grading.check_update_center, update, True, "swap m and 1 - m")
        assert "m=0.99" in message  # caught before m = 0, where it is ambiguous
    else:
        grading.check_update_center(update)  # right for every m but 0
        message = fails(grading.check_update_center, update, True,
                        "at m=0 the new centre is the mean of the teacher outputs")
        assert "swap" not in message


def test_update_teacher_with_m_swapped_is_told_so_in_the_hidden_check():
    """At m = 0 a swapped m leaves the teacher unchanged, like an update that only rebinds a
    name: the hidden check must still name the swap, not in-place updates."""
    @torch.no_grad()
    def swapped(student, teacher, m):
        for ps, pt in zip(student.parameters(), teacher.parameters()):
            pt.mul_(1 - m).add_(ps, alpha=m)

    message = fails(grading.check_update_teacher, swapped, True, "swap m and 1 - m")
    assert "in place" not in message and "renames" not in message


def test_update_teacher_that_skips_m_zero_is_told_so():
    @torch.no_grad()
    def skips_zero(student, teacher, m):
        m = m or 0.996  # the mistake: m = 0 taken for "no momentum given"
        for ps, pt in zip(student.parameters(), teacher.parameters()):
            pt.mul_(m).add_(ps, alpha=1 - m)

    grading.check_update_teacher(skips_zero)  # right for every m but 0
    message = fails(grading.check_update_teacher, skips_zero, True,
                    "at m=0 the teacher must become a copy of the student")
    assert "m or 0.99" in message and "swap" not in message


def test_dino_loss_that_changes_its_inputs_in_place():
    def in_place(student_out, teacher_out, center, student_temp=0.1, teacher_temp=0.04):
        with torch.no_grad():
            for t in teacher_out:
                t.sub_(center)
        return dino_loss(student_out, teacher_out, torch.zeros_like(center), student_temp,
                         teacher_temp)

    fails(grading.check_dino_loss, in_place, False, r"changed its input teacher_out\[0\] in place")


def test_dino_step_wrong_answers():
    check = grading.check_dino_step

    def no_teacher_update(student, teacher, center, opt, crops, m, ts, tt, cm):
        return dino_step(student, teacher, center, opt, crops, 1.0, ts, tt, cm)

    def no_step(student, teacher, center, opt, crops, m, ts, tt, cm):
        s_out = [student(v) for v in crops]
        t_out = [teacher(v).detach() for v in crops[:2]]
        loss = dino_loss(s_out, t_out, center, ts, tt)
        return loss.item(), update_center(center, t_out, cm)

    def stale_centre(student, teacher, center, opt, crops, m, ts, tt, cm):
        return dino_step(student, teacher, center, opt, crops, m, ts, tt, cm)[0], center

    def tensor_loss(student, teacher, center, opt, crops, m, ts, tt, cm):
        loss, c = dino_step(student, teacher, center, opt, crops, m, ts, tt, cm)
        return torch.tensor(loss), c

    fails(check, no_teacher_update, False, "teacher")
    fails(check, no_step, False, "did not change")
    fails(check, stale_centre, False, "centre")
    fails(check, tensor_loss, False, "float")

    def delegates(student, teacher, center, opt, crops, m, ts, tt, cm):
        dino_method.DINO.loss_on_crops(None, crops)

    fails(check, delegates, True, "reference")


def test_a_centre_computed_in_float64_is_right_not_a_crash():
    def in_float64(center, teacher_out, m):
        return update_center(center.double(), [t.double() for t in teacher_out], m)

    grading.check_update_center(in_float64, hidden=False)
    grading.check_update_center(in_float64, hidden=True)


# -- wrong answers found in a student's pass through the released notebook ---------------------

def dino_loss_variant(kind):
    def loss(student_out, teacher_out, center, student_temp=0.1, teacher_temp=0.04):
        total, pairs = 0.0, 0
        students = student_out[:2] if kind == "globals_only" else student_out
        for g, t in enumerate(teacher_out):
            t = t.detach()
            p_t = (F.softmax(t / teacher_temp - center, dim=-1) if kind == "centre_after_temp"
                   else F.softmax((t - center) / teacher_temp, dim=0 if kind == "teacher_dim0"
                                  else -1))
            for v, s in enumerate(students):
                if v == g:
                    continue
                log_p = F.log_softmax(s / student_temp, dim=0 if kind == "student_dim0" else -1)
                per_image = (-p_t * log_p).sum(-1)
                total = total + (per_image.sum() if kind == "sum_over_n" else per_image.mean())
                pairs += 1
        if kind == "over_all_pairs":
            return total / (len(teacher_out) * len(student_out))
        return total if kind == "no_mean_over_pairs" else total / pairs
    return loss


@pytest.mark.parametrize("kind, hint", [
    ("teacher_dim0", r"softmax over the K outputs \(dim=-1\)"),
    ("student_dim0", r"softmax over the K outputs \(dim=-1\)"),
    ("centre_after_temp", r"softmax\(\(t - center\) / teacher_temp\)"),
    ("over_all_pairs", r"number of \(teacher, student\) pairs"),
    ("no_mean_over_pairs", r"number of \(teacher, student\) pairs"),
    ("globals_only", "local crops too"),
    ("sum_over_n", "average over the N images"),
])
def test_dino_loss_mistakes_are_named(kind, hint):
    fails(grading.check_dino_loss, dino_loss_variant(kind), False, hint)


def test_dino_step_that_centres_with_the_student_outputs_fails_the_visible_check():
    """In the first step the teacher was a copy of the student, so the student's global
    outputs equalled the teacher's and a centre made from them passed the visible check."""
    def student_centre(student, teacher, center, opt, crops, m, ts, tt, cm):
        s_out = [student(v) for v in crops]
        with torch.no_grad():
            t_out = [teacher(v) for v in crops[:2]]
        loss = dino_loss(s_out, t_out, center, ts, tt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_teacher(student, teacher, m)
        return loss.item(), update_center(center, [s.detach() for s in s_out[:2]], cm)

    for hidden in (False, True):
        fails(grading.check_dino_step, student_centre, hidden, "this step's teacher outputs")


def dino_step_variant(kind):
    def step(student, teacher, center, opt, crops, m, ts, tt, cm):
        s_out = [student(v) for v in crops]
        with torch.no_grad():
            t_crops = {"teacher_on_all": crops, "teacher_on_local": crops[2:4]}.get(kind,
                                                                                 crops[:2])
            t_out = [teacher(v) for v in t_crops]
        new_center = update_center(center, t_out, cm)
        loss = dino_loss(s_out, t_out, new_center if kind == "centre_first" else center, ts, tt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if kind == "ema_wrong_direction":
            update_teacher(teacher, student, m)
        else:
            update_teacher(student, teacher, m)
        return loss.item(), new_center
    return step


@pytest.mark.parametrize("kind, hint", [
    ("teacher_on_all", "2 global crops only"),
    ("teacher_on_local", "2 global crops only"),
    ("centre_first", "the centre as given"),
    ("ema_wrong_direction", r"update_teacher\(student, teacher, m\)"),
])
def test_dino_step_mistakes_are_named(kind, hint):
    for hidden in (False, True):
        message = fails(grading.check_dino_step, dino_step_variant(kind), hidden, hint)
        assert "zero_grad" not in message


def test_dino_step_without_zero_grad_fails_the_visible_check():
    def no_zero_grad(student, teacher, center, opt, crops, m, ts, tt, cm):
        s_out = [student(v) for v in crops]
        with torch.no_grad():
            t_out = [teacher(v) for v in crops[:2]]
        loss = dino_loss(s_out, t_out, center, ts, tt)
        loss.backward()
        opt.step()
        update_teacher(student, teacher, m)
        return loss.item(), update_center(center, t_out, cm)

    fails(grading.check_dino_step, no_zero_grad, False, "zero_grad")
