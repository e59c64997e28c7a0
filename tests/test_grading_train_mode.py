"""A training step runs in train mode (sslkit.grading.guard.train_mode_kept): a step that calls
.eval() on a network with BatchNorm (for its forward pass, for the key pass, or after the update)
fails with a hint that names the network and eval mode. Before, the first two failed with the
step's generic hint ("if your nt_xent does not pass its tests yet ...") and the third passed
the visible check and failed the hidden one's second step, also with the generic hint."""

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails

from sslkit import augment, losses
from sslkit.grading import dino, moco, pretext
from sslkit.grading import simclr as grading
from sslkit.grading.guard import train_mode_kept
from sslkit.methods.dino import update_center
from sslkit.methods.momentum import update_momentum


def _update(optimizer, loss):
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def simclr_step_in_eval_mode(model, optimizer, v1, v2, temperature):
    model.eval()  # copied from the kNN monitor's cell
    z1, z2 = model(torch.cat([v1, v2])).chunk(2)
    loss = losses.nt_xent(z1, z2, temperature)
    _update(optimizer, loss)
    return loss.item()


def simclr_step_left_in_eval_mode(model, optimizer, v1, v2, temperature):
    z1, z2 = model(torch.cat([v1, v2])).chunk(2)
    loss = losses.nt_xent(z1, z2, temperature)
    _update(optimizer, loss)
    model.eval()  # "done training for this step"
    return loss.item()


def rotation_step_in_eval_mode(model, optimizer, x):
    model.eval()
    x_rot, labels = augment.rotate_batch(x)
    loss = F.cross_entropy(model(x_rot), labels)
    _update(optimizer, loss)
    return loss.item()


def moco_step_key_net_in_eval_mode(query_net, key_net, queue, ptr, optimizer, v1, v2, m, t):
    q = query_net(v1)
    update_momentum(query_net, key_net, m)
    key_net.eval()  # "the key network is not trained": but MoCo's keys use the batch's statistics
    with torch.no_grad():
        k = key_net(v2)
    key_net.train()
    loss = losses.moco_loss(q, k, queue, t)
    _update(optimizer, loss)
    queue[ptr:ptr + len(k)] = k
    return loss.item(), (ptr + len(k)) % len(queue)


@pytest.mark.parametrize("check, answer, hidden, match", [
    (grading.check_simclr_step, simclr_step_in_eval_mode, False, "model ran in eval mode"),
    (grading.check_simclr_step, simclr_step_in_eval_mode, True, "step 1: model ran in eval"),
    (grading.check_simclr_step, simclr_step_left_in_eval_mode, False,
     "the step left model in eval mode"),
    (grading.check_simclr_step, simclr_step_left_in_eval_mode, True,
     "step 1: the step left model in eval mode"),
    (pretext.check_rotation_step, rotation_step_in_eval_mode, False, "model ran in eval mode"),
    (moco.check_moco_step, moco_step_key_net_in_eval_mode, False, "key_net ran in eval mode"),
], ids=["simclr", "simclr hidden", "simclr left", "simclr left hidden", "rotation", "moco key"])
def test_step_in_eval_mode_is_named(check, answer, hidden, match):
    message = fails(check, answer, hidden, match)
    assert "BatchNorm" in message and "running statistics" in message and ".eval()" in message


def test_eval_mode_that_changes_nothing_passes():
    """Checked by behaviour: DINO's ViT and head hold no BatchNorm or dropout, so a teacher run
    in eval mode gives the reference's outputs, and the step is right."""
    def teacher_in_eval_mode(student, teacher, center, optimizer, crops, m, ts, tt, cm):
        teacher.eval()
        s_out = [student(v) for v in crops]
        with torch.no_grad():
            t_out = [teacher(v) for v in crops[:2]]
        loss = losses.dino_loss(s_out, t_out, center, ts, tt)
        _update(optimizer, loss)
        update_momentum(student, teacher, m)
        return loss.item(), update_center(center, t_out, cm)

    dino.check_dino_step(teacher_in_eval_mode, hidden=True)


def test_train_mode_kept_spares_a_network_that_came_in_eval_mode():
    """Only a change the step makes counts: a network handed in eval mode may stay so."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                              torch.nn.Dropout(0.5)).eval()
    with train_mode_kept("ex", {"net": net}, "", ""):
        net(torch.randn(5, 3))
    net.train()
    with pytest.raises(AssertionError, match=r"net ran in eval mode.*net\.2 is a Dropout"):
        with train_mode_kept("ex", {"net": net}, "", ""):
            net[2].eval()  # only the dropout
            net(torch.randn(5, 3))
