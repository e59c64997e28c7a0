"""Checks for 05_moco: update_momentum, enqueue, moco_loss, moco_step. See sslkit.grading for
the conventions (visible / hidden, one-line failures, the delegation guard)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import augment, losses
from sslkit.grading.guard import (
    call,
    case_label,
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
    train_mode_kept,
)
from sslkit.methods import momentum
from sslkit.methods.moco import MoCo
from sslkit.models.convnet import ConvNet

_LOSS_REFS = {
    "sslkit.losses.moco_loss": losses.moco_loss,
    "sslkit.losses.moco_loss_loop": losses.moco_loss_loop,
    "sslkit.losses.info_nce": losses.info_nce,
    "sslkit.losses.cosine_similarity_matrix": losses.cosine_similarity_matrix,
}
_MOMENTUM_REFS = {
    "sslkit.methods.momentum.update_momentum": momentum.update_momentum,
    "sslkit.methods.MoCo.momentum_update": MoCo.momentum_update,
}
_QUEUE_REFS = {"sslkit.methods.MoCo.enqueue": MoCo.enqueue}
# The step exercise follows the rule of every notebook's step (04's simclr_step, 06's
# dino_step): it may call the kit's versions of this notebook's earlier exercises (the momentum
# update, enqueue, moco_loss), so that a student whose loss is broken loses the loss's points
# only, not the step's too. Blocked is only what does the whole step: MoCo.loss_on_views
# (momentum update, key pass, loss, enqueue, in MoCo's order) and MoCo.forward, which calls it.
REFERENCES = {
    "update_momentum": _MOMENTUM_REFS,
    "enqueue": _QUEUE_REFS,
    "moco_loss": _LOSS_REFS,
    "moco_step": {"sslkit.methods.MoCo.loss_on_views": MoCo.loss_on_views,
                  "sslkit.methods.MoCo.forward": MoCo.forward},
}


def _call(exercise: str, fn: Callable, *args, where: str = "", guard: bool = False):
    return call(exercise, fn, *args, where=where, blocked=REFERENCES[exercise] if guard else None)


# ----------------------------------------------------------------------------------------------
# 1. update_momentum(online, target, m)
# ----------------------------------------------------------------------------------------------


def _two_nets(seed: int, target_trainable: bool):
    torch.manual_seed(seed)
    online = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in target.parameters():
            p.normal_()
            p.requires_grad_(target_trainable)
    target.train()(torch.randn(6, 5))  # running statistics of its own
    return online, target


@quiet
def check_update_momentum(update_momentum: Callable, hidden: bool = False) -> None:
    """θt <- m θt + (1 - m) θo for every parameter; online untouched (hidden: several m, a key
    network without requires_grad, no autograd history, buffers kept)."""
    ex = "update_momentum"
    # m = 0 last: there a swapped m and a target left unchanged look the same (see
    # match_moving_average); the cases before it tell them apart
    cases = [(0.9, 0, True)] if not hidden else [(0.5, 2, False), (0.999, 3, False),
                                                  (0.99, 4, True), (0.0, 1, True)]
    for m, seed, trainable in cases:
        online, target = _two_nets(seed, trainable)
        old_t = [p.detach().clone() for p in target.parameters()]
        old_o = [p.detach().clone() for p in online.parameters()]
        buffers = [b.clone() for b in target.buffers()]
        where = f" (m={m}, a Linear-BN-ReLU-Linear network)"
        _call(ex, update_momentum, online, target, m, where=where, guard=hidden)
        match_moving_average(ex, online, target, old_o, old_t, m, where, ("online", "target"))
        for name, t1 in target.named_parameters():
            if t1.grad_fn is not None or t1.requires_grad != trainable:
                raise AssertionError(f"{ex}: target {name} now has autograd history{where}: "
                                     "update under torch.no_grad() so no gradient reaches it")
        for b0, b1 in zip(buffers, target.buffers()):
            if b0.is_floating_point() and not torch.equal(b0, b1):
                raise AssertionError(f"{ex}: the target's buffers (BatchNorm running statistics)"
                                     f" changed{where}: average .parameters() only")


# ----------------------------------------------------------------------------------------------
# 2. enqueue(queue, ptr, keys) -> new ptr
# ----------------------------------------------------------------------------------------------


def _enqueue_case(ex: str, enqueue: Callable, k: int, b: int, d: int, steps: int,
                  guard: bool) -> None:
    queue = randn(k, d, seed=k)
    expected = queue.clone()
    ptr, ref_ptr = 0, 0
    where = f" (K={k}, batches of {b} keys, D={d})"
    for step in range(steps):
        keys = randn(b, d, seed=100 + step)
        given = keys.clone()
        got = _call(ex, enqueue, queue, ptr, given, where=where, guard=guard)
        expected[ref_ptr:ref_ptr + b] = keys
        ref_ptr = (ref_ptr + b) % k
        label = f" after {step + 1} enqueue(s)"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = int(got)
        if not isinstance(got, int):
            raise AssertionError(f"{ex}: expected the new pointer as an int, got "
                                 f"{type(got).__name__}{where}: return (ptr + B) % K")
        if got != ref_ptr:
            raise AssertionError(f"{ex}: expected the pointer {ref_ptr}, got {got}{label}{where}"
                                 f": it moves by B and wraps around with % K")
        if not torch.equal(queue, expected):
            rows = sorted({int(i) for i in (queue != expected).any(1).nonzero()})
            raise AssertionError(f"{ex}: queue rows {rows} are wrong{label}{where}: write the "
                                 f"keys into rows ptr .. ptr + B - 1 of queue, in place")
        if not torch.equal(given, keys):
            raise AssertionError(f"{ex}: the keys passed in were changed{where}")
        ptr = got


def _enqueue_keeps_no_graph(ex: str, enqueue: Callable) -> None:
    """Keys that still carry the key network's graph (a key pass without torch.no_grad) must
    enter the queue as constants: a queue with autograd history keeps every past step's graph
    alive and lets a later loss reach old keys."""
    queue = randn(8, 3, seed=8)
    weight = randn(3, 3, seed=9).requires_grad_()
    keys = randn(4, 3, seed=10) @ weight  # (4, 3), part of a graph, like a key net's output
    where = " (K=8, 4 keys that carry a gradient)"
    _call(ex, enqueue, queue, 0, keys, where=where, guard=True)
    if queue.requires_grad or queue.grad_fn is not None:
        raise AssertionError(f"{ex}: the queue now takes part in autograd{where}: keys carry no "
                             "gradient, so store them without their graph (keys.detach())")


@quiet
def check_enqueue(enqueue: Callable, hidden: bool = False) -> None:
    """Keys overwrite the oldest rows in place, the pointer wraps around, and a queue size that
    is not a multiple of the batch raises (hidden: more sizes, wrap-around)."""
    ex = "enqueue"
    cases = [(8, 4, 3, 3)] if not hidden else [(12, 4, 5, 5), (6, 2, 2, 7), (4, 4, 3, 3)]
    for k, b, d, steps in cases:
        _enqueue_case(ex, enqueue, k, b, d, steps, hidden)
    if hidden:
        _enqueue_keeps_no_graph(ex, enqueue)
    def raises_value_error(*args):
        try:
            enqueue(*args)
        except ValueError:  # what the exercise asks for (sslkit's own errors are ValueErrors)
            return True
        return False

    for k, b in ([(10, 4)] if not hidden else [(10, 4), (6, 4)]):
        where = f" (K={k}, batches of {b} keys)"
        try:
            raised = call(ex, raises_value_error, torch.zeros(k, 3), 0, torch.ones(b, 3),
                          where=where, blocked=REFERENCES[ex] if hidden else None)
        except AssertionError as e:
            if "calls the reference" in str(e):
                raise
            what = ("an assert failed" if "an assert in your code" in str(e)
                    else str(e).split(where)[0].removeprefix(f"{ex} "))
            raise AssertionError(f"{ex}: expected a ValueError{where}: K must be a multiple of "
                                 f"B, but {what}; check K % B and raise ValueError with a "
                                 "one-line message (not assert, which python -O removes)"
                                 ) from None
        if not raised:
            raise AssertionError(f"{ex}: expected an error{where}: K must be a multiple of B; "
                                 "raise ValueError with a one-line message")


# ----------------------------------------------------------------------------------------------
# 3. moco_loss(q, k, queue, temperature)
# ----------------------------------------------------------------------------------------------


def _loss_variants(q, k, queue, t) -> dict[str, torch.Tensor]:
    qn, kn, un = (F.normalize(x, dim=1) for x in (q, k, queue))
    pos = (qn * kn).sum(1, keepdim=True)
    neg = qn @ un.T
    zero = torch.zeros(len(q), dtype=torch.long)
    ce = F.cross_entropy
    return {
        "did you L2-normalise q, k and the queue (cosine similarity)?":
            ce(torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / t, zero),
        "did you L2-normalise the queue too?":
            ce(torch.cat([pos, qn @ queue.T], 1) / t, zero),
        "did you divide the logits by the temperature?": ce(torch.cat([pos, neg], 1), zero),
        "divide the logits by the temperature, do not multiply them by it":
            ce(torch.cat([pos, neg], 1) * t, zero),
        "did you L2-normalise the keys k too?":
            ce(torch.cat([(qn * k).sum(1, keepdim=True), neg], 1) / t, zero),
        "the positive is logit 0, so the label is 0 for every query (torch.zeros(N, "
        "dtype=torch.long)), not torch.arange(N)":
            ce(torch.cat([pos, neg], 1) / t, torch.arange(len(q))),
        "the softmax over the 1 + K candidates runs along dim=1, one row per query "
        "(F.cross_entropy(logits, labels) does it)":
            -torch.log_softmax(torch.cat([pos, neg], 1) / t, dim=0)[:, 0].mean(),
        "did you put the positive logit first (label 0)?":
            ce(torch.cat([neg, pos], 1) / t, zero),
        "did you average over the N queries (not sum)?":
            len(q) * ce(torch.cat([pos, neg], 1) / t, zero),
        "the negatives are the queue, not the other keys of the batch":
            ce(qn @ kn.T / t, torch.arange(len(q))),
    }


_NO_GRADIENT = {
    "k": "the keys carry no gradient (only the query encoder learns): use k.detach()",
    "queue": "the queue carries no gradient (its keys are constants): use queue.detach()",
}


def _compare_moco_loss(ex: str, fn: Callable, q, k, queue, t: float, grad: bool,
                       where: str) -> None:
    a = q.clone().requires_grad_(grad)
    b = k.clone().requires_grad_(grad)
    c = queue.clone().requires_grad_(grad)
    got = scalar(ex, _call(ex, fn, a, b, c, t, where=where, guard=grad), where)
    require_unchanged(ex, ("q", "k", "queue"), (a, b, c), (q, k, queue), where)
    expected = losses.moco_loss(q, k, queue, t)
    if not close(got, expected):
        match_value(ex, got, expected, _loss_variants(q, k, queue, t), where)
    if not grad:  # the gradient trains the query encoder only
        require_graph(ex, lambda *v: _call(ex, fn, *v, t, where=where), (q, k, queue), where,
                      ("q", "k", "queue"), _NO_GRADIENT)
        return
    require_grad(ex, got, where)
    _call(ex, got.backward, where=where + " in backward")
    if b.grad is not None or c.grad is not None:
        raise AssertionError(f"{ex}: a gradient reached the keys or the queue{where}: keys "
                             "carry no gradient (use k.detach() and queue.detach())")
    ra = q.clone().requires_grad_()
    (ea,) = torch.autograd.grad(losses.moco_loss(ra, k, queue, t), (ra,))
    if a.grad is None or not torch.allclose(a.grad, ea, atol=1e-5, rtol=1e-4):
        diff = "no gradient" if a.grad is None else f"{float((a.grad - ea).abs().max()):.2g}"
        raise AssertionError(f"{ex}: the gradient with respect to q differs from the "
                             f"reference ({diff}){where}")


@quiet
def check_moco_loss(moco_loss: Callable, hidden: bool = False) -> None:
    """The MoCo loss equals the reference (hidden: more cases, gradient to q only, scale
    invariance)."""
    ex = "moco_loss"
    cases = [(4, 8, 16, 0.2, 0)] if not hidden else [(1, 3, 1, 1.0, 1), (3, 5, 7, 0.07, 2),
                                                      (6, 16, 24, 0.2, 3), (8, 4, 64, 0.5, 4)]
    for n, d, kk, t, seed in cases:
        q, k, queue = randn(n, d, seed=seed), randn(n, d, seed=seed + 50), \
            randn(kk, d, seed=seed + 100)
        where = case_label(n, d, t) + f", K={kk}"
        _compare_moco_loss(ex, moco_loss, q, k, queue, t, hidden, where)
    # closed form: q = k = e_i, a queue orthogonal to all queries
    n, kk, t = 3, 5, 0.2
    eye = torch.eye(n + kk)
    where = f" for q = k = e_1..e_{n}, queue e_{n + 1}..e_{n + kk}, T={t}"
    scale = 10.0 if hidden else 1.0
    got = scalar(ex, _call(ex, moco_loss, scale * eye[:n], eye[:n].clone(), 3 * eye[n:], t,
                           where=where, guard=hidden), where)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + kk))
    if abs(float(got) - expected) > 1e-4:
        raise AssertionError(f"{ex}: expected {expected:.4f} = -log(e^5 / (e^5 + 5)), got "
                             f"{float(got):.4f}{where}" + (" (q scaled by 10, queue by 3)"
                                                           if hidden else ""))


# ----------------------------------------------------------------------------------------------
# 4. moco_step(query_net, key_net, queue, ptr, optimizer, v1, v2, m, temperature)
# ----------------------------------------------------------------------------------------------


def _step_case(seed: int, n: int = 4, k: int = 12, m: float = 0.9, t: float = 0.2) -> tuple:
    torch.manual_seed(seed)
    method = MoCo(ConvNet(1, (4, 8)), augment.SimCLRViews(augment.ViewConfig(size=8)),
                  proj_dim=6, hidden_dim=8, queue_size=k, momentum=m, temperature=t)
    with torch.no_grad():  # a key network that is not a copy of the query network any more
        for p in [*method.key_encoder.parameters(), *method.key_head.parameters()]:
            p.add_(0.05 * torch.randn(p.shape))
    v1 = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    v2 = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 2))
    return method.train(), v1, v2


def _query(method: MoCo) -> nn.Module:
    return nn.Sequential(method.encoder, method.head)


def _key(method: MoCo) -> nn.Module:
    return nn.Sequential(method.key_encoder, method.key_head)


def _step_hint(state: MoCo, v1, v2, got: float) -> str:
    m, t = state.momentum, state.temperature
    with torch.no_grad():
        q = state.embed_query(v1)
        late = losses.moco_loss(q, copy.deepcopy(_key(state))(v2), state.queue, t)
        updated = copy.deepcopy(state)
        updated.momentum_update()
        k = updated.embed_keys(v2)
        early = state.queue.clone()
        early[int(state.queue_ptr):int(state.queue_ptr) + len(k)] = k
        enqueued_first = losses.moco_loss(q, k, early, t)
        swapped = copy.deepcopy(state)
        swapped.momentum = 1 - m
        swapped.momentum_update()
        swap = losses.moco_loss(q, swapped.embed_keys(v2), state.queue, t)
        views_swapped = losses.moco_loss(state.embed_query(v2), k_v1 := updated.embed_keys(v1),
                                         state.queue, t)
        keys_from_v1 = losses.moco_loss(q, k_v1, state.queue, t)
        keys_from_query_net = losses.moco_loss(q, state.embed_query(v2), state.queue, t)
    for value, text in ((late, "update the key network (update_momentum) BEFORE the key pass"),
                        (views_swapped, "the views are swapped: queries from v1 through "
                                        "query_net, keys from v2 through key_net"),
                        (keys_from_v1, "the keys from v2 (key_net(v2)), not v1: the positive "
                                       "pair is two different views of one image"),
                        (keys_from_query_net, "the keys come from key_net (the momentum "
                                              "encoder), not query_net"),
                        (enqueued_first, "enqueue the keys AFTER computing the loss"),
                        (swap, "the key network was averaged with 1 - m in place of m: "
                               "pass m itself, update_momentum(query_net, key_net, m), for "
                               "θk <- m·θk + (1 - m)·θq")):
        if abs(got - float(value)) < 1e-5:
            return " — " + text
    return (" — if your moco_loss or update_momentum does not pass its tests yet, call "
            "sslkit.losses.moco_loss or sslkit.methods.momentum.update_momentum here")


def _check_one_step(ex: str, moco_step: Callable, seed: int, steps: int, guard: bool) -> None:
    method, v1, v2 = _step_case(seed)
    student = copy.deepcopy(method)
    query_net, key_net = _query(student), _key(student)
    queue, ptr = student.queue.clone(), 0
    optimizer = torch.optim.SGD(query_net.parameters(), lr=0.1, momentum=0.9)
    reference = copy.deepcopy(method)
    ref_optimizer = torch.optim.SGD(_query(reference).parameters(), lr=0.1, momentum=0.9)
    where = (f" (N={len(v1)} pairs of 1x8x8 views, K={len(queue)}, m={method.momentum}, "
             f"T={method.temperature}, SGD lr=0.1 momentum=0.9)")
    for step in range(steps):
        g = torch.Generator().manual_seed(seed + step)
        for p, r in zip(query_net.parameters(), _query(reference).parameters()):
            p.grad = torch.randn(p.shape, generator=g)  # stale gradients zero_grad must clear
            r.grad = p.grad.clone()
        before = copy.deepcopy(query_net)
        label = f"step {step + 1}: " if steps > 1 else ""
        with train_mode_kept(ex, {"query_net": query_net, "key_net": key_net}, label, where):
            got = _call(ex, moco_step, query_net, key_net, queue, ptr, optimizer, v1.clone(),
                        v2.clone(), method.momentum, method.temperature, where=where,
                        guard=guard)
        hint_state = copy.deepcopy(reference)
        loss = reference.loss_on_views(v1, v2)
        ref_optimizer.zero_grad()
        loss.backward()
        ref_optimizer.step()
        if not (isinstance(got, tuple) and len(got) == 2):
            raise AssertionError(f"{ex}: expected (loss, ptr), got {type(got).__name__}{where}:"
                                 " return loss.item(), the new pointer")
        got_loss, ptr = got
        match_step(ex, got_loss, loss.item(), query_net, before, _query(reference), label,
                   where, hint=lambda s=hint_state, v=got_loss: _step_hint(s, v1, v2, v))
        diff = max_param_diff(key_net, _key(reference))
        if diff > 1e-6:
            raise AssertionError(f"{ex}: {label}the key network differs from the reference's by "
                                 f"up to {diff:.2g}{where}: call update_momentum(query_net, "
                                 "key_net, m) once per step, before the key pass")
        if isinstance(ptr, torch.Tensor) and ptr.numel() == 1:
            ptr = int(ptr)
        if not isinstance(ptr, int):
            raise AssertionError(f"{ex}: {label}expected the new pointer as an int, got "
                                 f"{type(ptr).__name__}{where}: return the pointer enqueue gave "
                                 "back")
        if ptr != int(reference.queue_ptr):
            raise AssertionError(f"{ex}: {label}expected the pointer {int(reference.queue_ptr)},"
                                 f" got {ptr}{where}: return the pointer enqueue gave back")
        if not torch.allclose(queue, reference.queue, atol=1e-5):
            raise AssertionError(f"{ex}: {label}the queue differs from the reference's{where}: "
                                 "enqueue the keys k (the key network's output on v2)")


@quiet
def check_moco_step(moco_step: Callable, hidden: bool = False) -> None:
    """One step from the same seed, weights, queue and views gives the reference's loss, query
    and key weights, queue and pointer (reference: sslkit.methods.MoCo.loss_on_views)."""
    ex = "moco_step"
    if not hidden:
        _check_one_step(ex, moco_step, seed=0, steps=1, guard=False)
    else:
        _check_one_step(ex, moco_step, seed=1, steps=4, guard=True)  # 4 x 4 keys wrap K = 12
