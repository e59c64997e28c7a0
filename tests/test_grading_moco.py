"""Tests for sslkit.grading.moco: for every graded exercise of solutions/05_moco, the solution
(taken from the source notebook's solution cells) passes the visible and hidden checks, typical
wrong answers fail with a one-line message, and answers that delegate to the sslkit reference
fail the hidden check."""

import json
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslkit import losses
from sslkit.grading import moco as grading
from sslkit.methods.moco import MoCo
from sslkit.methods.momentum import update_momentum as reference_update_momentum

NOTEBOOK = Path(__file__).parent.parent / "solutions" / "05_moco" / "05_moco.ipynb"
SOLUTION_CELLS = ("update_momentum", "enqueue", "moco_loss", "moco_step")


@pytest.fixture(scope="module")
def solution() -> types.SimpleNamespace:
    cells = {c["metadata"].get("nbgrader", {}).get("grade_id"): "".join(c["source"])
             for c in json.loads(NOTEBOOK.read_text())["cells"]}
    namespace = {"torch": torch, "F": F, "nn": nn, "math": math}
    for grade_id in SOLUTION_CELLS:
        exec(compile(cells[grade_id], f"{NOTEBOOK.name}:{grade_id}", "exec"), namespace)
    return types.SimpleNamespace(namespace=namespace,
                                 **{name: namespace[name] for name in SOLUTION_CELLS})


def fails(check, answer, hidden: bool, match: str) -> str:
    with pytest.raises(AssertionError, match=match) as info:
        check(answer, hidden=hidden)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


CHECKS = {
    "update_momentum": grading.check_update_momentum,
    "enqueue": grading.check_enqueue,
    "moco_loss": grading.check_moco_loss,
    "moco_step": grading.check_moco_step,
}


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", list(CHECKS))
def test_solution_passes(solution, exercise, hidden):
    CHECKS[exercise](getattr(solution, exercise), hidden=hidden)


# 1. update_momentum

def test_update_momentum_wrong_answers():
    check = grading.check_update_momentum

    def swapped(online, target, m):
        with torch.no_grad():
            for a, b in zip(online.parameters(), target.parameters()):
                b.mul_(1 - m).add_(a, alpha=m)

    def with_history(online, target, m):
        for a, b in zip(online.parameters(), target.parameters()):
            b.data = m * b.data + (1 - m) * a.data
            b.requires_grad_(True)

    def moves_online(online, target, m):
        with torch.no_grad():
            for a, b in zip(online.parameters(), target.parameters()):
                b.mul_(m).add_(a, alpha=1 - m)
                a.copy_(b)

    def averages_buffers(online, target, m):
        with torch.no_grad():
            for a, b in zip(online.parameters(), target.parameters()):
                b.mul_(m).add_(a, alpha=1 - m)
            for a, b in zip(online.buffers(), target.buffers()):
                if b.is_floating_point():
                    b.mul_(m).add_(a, alpha=1 - m)

    fails(check, swapped, False, "swap m and 1 - m")
    fails(check, moves_online, False, "online network changed")
    fails(check, with_history, True, "autograd history")
    fails(check, averages_buffers, True, "buffers")


def test_update_momentum_that_only_rebinds_a_name():
    def rebinds(online, target, m):
        for a, b in zip(online.parameters(), target.parameters()):
            b = m * b + (1 - m) * a  # the mistake: rebinds the name only

    for hidden in (False, True):  # at m = 0 "swapped m" looks the same: hidden checks it last
        message = fails(grading.check_update_momentum, rebinds, hidden, "did not change")
        assert "in place" in message and "swap" not in message


def test_update_momentum_with_m_swapped_is_told_so_in_the_hidden_check():
    """At m = 0 a swapped m leaves the target unchanged, like an update that only rebinds a
    name: the hidden check must still name the swap, not in-place updates."""
    def swapped(online, target, m):
        with torch.no_grad():
            for a, b in zip(online.parameters(), target.parameters()):
                b.mul_(1 - m).add_(a, alpha=m)

    message = fails(grading.check_update_momentum, swapped, True, "swap m and 1 - m")
    assert "in place" not in message and "renames" not in message


def test_update_momentum_that_skips_m_zero_is_told_so():
    def skips_zero(online, target, m):
        if not m:  # the mistake: m = 0 taken for "no momentum given"
            return
        with torch.no_grad():
            for a, b in zip(online.parameters(), target.parameters()):
                b.mul_(m).add_(a, alpha=1 - m)

    grading.check_update_momentum(skips_zero)  # right for every m but 0
    message = fails(grading.check_update_momentum, skips_zero, True, "at m=0 the target must "
                    "become a copy of the online network")
    assert "swap" not in message and "renames" not in message


def test_update_momentum_delegation_fails_hidden():
    grading.check_update_momentum(reference_update_momentum)
    fails(grading.check_update_momentum, reference_update_momentum, True,
          "calls the reference sslkit")
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    reference_update_momentum(online, target, 0.0)  # the guard restored the reference
    assert torch.equal(online.weight, target.weight)


# 2. enqueue

def test_enqueue_wrong_answers(solution):
    check = grading.check_enqueue

    def no_wrap(queue, ptr, keys):
        queue[ptr:ptr + len(keys)] = keys
        return ptr + len(keys)

    def no_check(queue, ptr, keys):
        b = min(len(keys), len(queue) - ptr)
        queue[ptr:ptr + b] = keys[:b]
        return (ptr + len(keys)) % len(queue)

    def copy_not_in_place(queue, ptr, keys):
        queue = queue.clone()
        queue[ptr:ptr + len(keys)] = keys
        return (ptr + len(keys)) % len(queue)

    def tensor_ptr(queue, ptr, keys):
        return torch.tensor(solution.enqueue(queue, ptr, keys))

    grading.check_enqueue(tensor_ptr, hidden=True)  # a 0-d tensor pointer is fine
    fails(check, no_wrap, False, "expected the pointer 0, got 8")
    fails(check, no_check, False, "expected an error")
    fails(check, copy_not_in_place, False, "in place")


def test_enqueue_that_keeps_the_keys_graph_fails_hidden():
    """Keys with a gradient (a key pass without torch.no_grad) must enter the queue detached:
    otherwise the queue keeps every step's graph alive."""
    def keeps_graph(queue, ptr, keys):
        k, b = queue.shape[0], keys.shape[0]
        if k % b != 0:
            raise ValueError(f"K={k} is not a multiple of B={b}")
        queue[ptr:ptr + b] = keys  # the mistake: no keys.detach()
        return (ptr + b) % k

    grading.check_enqueue(keeps_graph)  # the visible keys carry no gradient
    fails(grading.check_enqueue, keeps_graph, True, r"keys\.detach\(\)")


def test_enqueue_delegation_fails_hidden():
    def via_method(queue, ptr, keys):
        holder = types.SimpleNamespace(queue=queue, queue_ptr=torch.tensor(ptr))
        MoCo.enqueue(holder, keys)
        return int(holder.queue_ptr)

    grading.check_enqueue(via_method)
    fails(grading.check_enqueue, via_method, True, "calls the reference sslkit")


# 3. moco_loss

def test_moco_loss_wrong_answers(solution):
    check = grading.check_moco_loss

    def variant(normalise=True, positive_last=False, t_used=True, reduce="mean", detach=True):
        def loss(q, k, queue, t):
            if detach:
                k, queue = k.detach(), queue.detach()
            if normalise:
                q, k, queue = (F.normalize(x, dim=1) for x in (q, k, queue))
            pos, neg = (q * k).sum(1, keepdim=True), q @ queue.T
            logits = torch.cat([neg, pos] if positive_last else [pos, neg], 1)
            logits = logits / t if t_used else logits
            label = torch.full((len(q),), logits.shape[1] - 1 if positive_last else 0)
            return F.cross_entropy(logits, label, reduction=reduce)
        return loss

    fails(check, variant(normalise=False), False, "L2-normalise")
    fails(check, variant(t_used=False), False, "temperature")
    fails(check, variant(reduce="sum"), False, "average over the N")
    fails(check, lambda q, k, u, t: variant()(q, k, u, t).detach(), True, "no gradient")
    fails(check, variant(detach=False), True, "gradient reached the keys")
    fails(check, lambda q, k, u, t: variant(reduce="none")(q, k, u, t), False, "scalar")


def test_moco_loss_alternatives_and_delegation():
    def with_info_nce_formula(q, k, queue, t):
        q = F.normalize(q, dim=1)
        logits = torch.cat([F.cosine_similarity(q, k.detach()).unsqueeze(1),
                            q @ F.normalize(queue.detach(), dim=1).T], 1) / t
        return -torch.log_softmax(logits, 1)[:, 0].mean()

    grading.check_moco_loss(with_info_nce_formula, hidden=True)
    for answer in (losses.moco_loss, lambda q, k, u, t: losses.info_nce(q, k.detach(),
                                                                         u.detach(), t)):
        grading.check_moco_loss(answer)
        fails(grading.check_moco_loss, answer, True, "calls the reference sslkit")


# 4. moco_step

def make_step(solution, order="right"):
    ns = solution.namespace
    update, enqueue, loss_fn = ns["update_momentum"], ns["enqueue"], ns["moco_loss"]

    def step(query_net, key_net, queue, ptr, optimizer, v1, v2, m, t):
        q = query_net(v1)
        if order != "late_momentum":
            update(query_net, key_net, m)
        with torch.no_grad():
            k = key_net(v2)
        if order == "late_momentum":
            update(query_net, key_net, m)
        if order == "enqueue_first":
            ptr = enqueue(queue, ptr, k)
        loss = loss_fn(q, k, queue, t)
        if order != "no_zero_grad":
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if order != "enqueue_first":
            ptr = enqueue(queue, ptr, k) if order != "no_enqueue" else ptr
        return loss.item(), ptr

    return step


def test_moco_step_wrong_answers(solution):
    check = grading.check_moco_step
    fails(check, make_step(solution, "late_momentum"), False, "BEFORE the key pass")
    fails(check, make_step(solution, "enqueue_first"), False, "AFTER computing the loss")
    fails(check, make_step(solution, "no_zero_grad"), False, "zero_grad")
    fails(check, make_step(solution, "no_enqueue"), False, "pointer")

    def no_pointer(*args):
        return make_step(solution)(*args)[0], None

    fails(check, no_pointer, False, "expected the new pointer as an int, got NoneType")


def test_moco_loss_that_normalises_its_inputs_in_place(solution):
    def in_place(q, k, queue, t):
        with torch.no_grad():
            q /= q.norm(dim=1, keepdim=True)
        return solution.moco_loss(q, k, queue, t)

    fails(grading.check_moco_loss, in_place, False, "changed its input q in place")


def kit_step(order="right"):
    """moco_step built from the kit's versions of the notebook's earlier exercises only:
    sslkit's update_momentum, moco_loss and MoCo.enqueue (through a stand-in for the module)."""
    def enqueue(queue, ptr, keys):
        holder = types.SimpleNamespace(queue=queue, queue_ptr=torch.tensor(ptr))
        MoCo.enqueue(holder, keys)
        return int(holder.queue_ptr)

    def step(query_net, key_net, queue, ptr, optimizer, v1, v2, m, t):
        q = query_net(v1)
        if order != "late_momentum":
            reference_update_momentum(query_net, key_net, m)
        with torch.no_grad():
            k = key_net(v2)
        if order == "late_momentum":
            reference_update_momentum(query_net, key_net, m)
        if order == "enqueue_first":
            ptr = enqueue(queue, ptr, k)
        loss = losses.moco_loss(q, k, queue, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if order != "enqueue_first":
            ptr = enqueue(queue, ptr, k)
        return loss.item(), ptr

    return step


def test_moco_step_may_call_the_kits_earlier_exercises(solution):
    """As in 04 and 06: a student whose moco_loss (or momentum update, or queue) is broken may
    use sslkit's in the step, and loses those points once, not again in the step."""
    grading.check_moco_step(kit_step(), hidden=False)
    grading.check_moco_step(kit_step(), hidden=True)

    def kit_loss_only(query_net, key_net, queue, ptr, optimizer, v1, v2, m, t):
        q = query_net(v1)
        solution.update_momentum(query_net, key_net, m)
        with torch.no_grad():
            k = key_net(v2)
        loss = losses.info_nce(q, k, queue.detach(), t)  # moco_loss's own building block
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item(), solution.enqueue(queue, ptr, k)

    grading.check_moco_step(kit_loss_only, hidden=True)


@pytest.mark.parametrize("order, mistake", [("late_momentum", "BEFORE the key pass"),
                                            ("enqueue_first", "AFTER computing the loss")])
def test_moco_step_with_the_kits_pieces_in_the_wrong_order_fails(order, mistake):
    for hidden in (False, True):
        fails(grading.check_moco_step, kit_step(order), hidden, mistake)


def test_moco_step_that_passes_one_minus_m_is_told_so(solution):
    """The hint for a key network updated with 1 - m names that mistake and the rule, not the
    order of update_momentum's arguments (which is not what it computes)."""
    def one_minus_m(query_net, key_net, queue, ptr, optimizer, v1, v2, m, t):
        q = query_net(v1)
        solution.update_momentum(query_net, key_net, 1 - m)  # the mistake
        with torch.no_grad():
            k = key_net(v2)
        loss = solution.moco_loss(q, k, queue, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item(), solution.enqueue(queue, ptr, k)

    for hidden in (False, True):
        message = fails(grading.check_moco_step, one_minus_m, hidden, "expected loss")
        assert "1 - m" in message and "in this order" not in message
        assert "m·θk + (1 - m)·θq" in message


class _StandIn:
    """What a student could hand MoCo's methods as `self` to run the kit's whole step on the
    networks of the exercise."""

    first_micro_batch = last_micro_batch = True
    symmetric = False
    loss_on_views = MoCo.loss_on_views

    def __init__(self, query_net, key_net, queue, ptr, m, t):
        self.query_net, self.key_net, self.m = query_net, key_net, m
        self.queue, self.queue_ptr, self.temperature = queue, torch.tensor(ptr), t
        self._pending_keys = []

    def embed_query(self, v):
        return self.query_net(v)

    @torch.no_grad()
    def embed_keys(self, v):
        return self.key_net(v)

    def momentum_update(self):
        reference_update_momentum(self.query_net, self.key_net, self.m)

    def enqueue(self, keys):
        MoCo.enqueue(self, keys)


@pytest.mark.parametrize("whole", ["loss_on_views", "forward"])
def test_moco_step_that_calls_the_kits_whole_step_fails_hidden(whole):
    def via_kit_step(query_net, key_net, queue, ptr, optimizer, v1, v2, m, t):
        holder = _StandIn(query_net, key_net, queue, ptr, m, t)
        loss = (MoCo.loss_on_views(holder, v1, v2) if whole == "loss_on_views"
                else MoCo.forward(holder, (v1, v2)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item(), int(holder.queue_ptr)

    grading.check_moco_step(via_kit_step)  # the right numbers ...
    message = fails(grading.check_moco_step, via_kit_step, True, "calls the reference")
    assert f"sslkit.methods.MoCo.{whole}" in message  # ... only by calling the whole step


# Wrong answers found in a student's pass through the released notebook

def test_enqueue_that_asserts_instead_of_raising_value_error_fails():
    """The exercise asks for a ValueError; an assert (gone under python -O) or an accidental
    error must not pass the bad-size check."""
    def asserts(queue, ptr, keys):
        k, b = len(queue), len(keys)
        assert k % b == 0
        queue[ptr:ptr + b] = keys.detach()
        return (ptr + b) % k

    for hidden in (False, True):
        message = fails(grading.check_enqueue, asserts, hidden, "expected a ValueError")
        assert "assert" in message


def moco_loss_variant(label="zero", softmax_dim=1, normalise_k=True, multiply_t=False):
    def loss(q, k, queue, t):
        k, queue = k.detach(), queue.detach()
        q, queue = F.normalize(q, dim=1), F.normalize(queue, dim=1)
        k = F.normalize(k, dim=1) if normalise_k else k
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1)
        logits = logits * t if multiply_t else logits / t
        if softmax_dim == 0:
            return -torch.log_softmax(logits, dim=0)[:, 0].mean()
        labels = torch.zeros(len(q), dtype=torch.long) if label == "zero" else torch.arange(len(q))
        return F.cross_entropy(logits, labels)
    return loss


@pytest.mark.parametrize("kwargs, hint", [
    (dict(label="arange"), r"label is 0 for every query.*not torch\.arange"),
    (dict(softmax_dim=0), r"softmax over the 1 \+ K candidates"),
    (dict(normalise_k=False), "L2-normalise the keys k too"),
    (dict(multiply_t=True), "divide the logits by the temperature"),
])
def test_moco_loss_mistakes_are_named(kwargs, hint):
    fails(grading.check_moco_loss, moco_loss_variant(**kwargs), False, hint)


@pytest.mark.parametrize("mistake, hint", [
    ("swapped_views", "queries from v1"),
    ("keys_from_v1", "keys from v2"),
    ("keys_from_query_net", "keys come from key_net"),
])
def test_moco_step_view_and_network_mistakes_are_named(solution, mistake, hint):
    ns = solution.namespace

    def step(query_net, key_net, queue, ptr, optimizer, v1, v2, m, t):
        q = query_net(v2 if mistake == "swapped_views" else v1)
        ns["update_momentum"](query_net, key_net, m)
        with torch.no_grad():
            net = query_net if mistake == "keys_from_query_net" else key_net
            k = net(v2 if mistake == "keys_from_query_net" else
                    v1 if mistake in ("swapped_views", "keys_from_v1") else v2)
        loss = ns["moco_loss"](q, k, queue, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item(), ns["enqueue"](queue, ptr, k)

    for hidden in (False, True):
        message = fails(grading.check_moco_step, step, hidden, "expected loss")
        assert hint in message and "does not pass its tests yet" not in message


def test_update_momentum_without_no_grad_is_told_to_use_it():
    """An in-place update of a trainable target outside torch.no_grad() is torch's 'leaf
    Variable' error; the failure says what to do about it."""
    def no_no_grad(online, target, m):
        for a, b in zip(online.parameters(), target.parameters()):
            b.mul_(m).add_(a, alpha=1 - m)

    fails(grading.check_update_momentum, no_no_grad, False, r"leaf Variable.*torch\.no_grad\(\)")


def test_moco_step_that_averages_the_query_net_into_the_key_net_backwards_is_told_so(solution):
    """update_momentum(key_net, query_net, m) moves the query network in place after its
    forward pass: torch's 'modified by an inplace operation' error, which the failure
    explains."""
    ns = solution.namespace

    def backwards(query_net, key_net, queue, ptr, optimizer, v1, v2, m, t):
        q = query_net(v1)
        ns["update_momentum"](key_net, query_net, m)  # the mistake: arguments swapped
        with torch.no_grad():
            k = key_net(v2)
        loss = ns["moco_loss"](q, k, queue, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item(), ns["enqueue"](queue, ptr, k)

    message = fails(grading.check_moco_step, backwards, False, "changed in place")
    assert "anomaly detection" not in message and "went the wrong way" in message
