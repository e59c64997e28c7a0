"""The visible loss checks look at where the gradient goes (sslkit.grading.guard.require_flow):
a loss with the right value that detaches an input the method trains through, or that lets a
gradient reach an input the text keeps out of training (MoCo's keys and queue, DINO's teacher,
MAE's target), fails visibly with the input's name. Each answer below passed the visible check
before (it made every input require grad and looked only at whether the loss carried a
gradient) and was caught only by the hidden one."""

import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails

from sslkit import losses
from sslkit.grading import cpc, dino, infonce, mae, moco, triplet
from sslkit.grading import simclr as grading
from sslkit.methods.cpc import column_context

# -- 04 SimCLR: both views are trained ---------------------------------------------------------


def similarity_stop_gradient(z1, z2):
    z = F.normalize(torch.cat([z1, z2.detach()]), dim=1)  # z2 as a fixed target (BYOL-style)
    return z @ z.T


def nt_xent_stop_gradient(z1, z2, t):
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2.detach()]), dim=1)
    logits = (z @ z.T / t).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    return F.cross_entropy(logits, (torch.arange(2 * n) + n) % (2 * n))


def nt_xent_loop_stop_gradient(z1, z2, t):
    n = len(z1)
    z = F.normalize(torch.cat([z1.detach(), z2]), dim=1)
    total = 0
    for i in range(2 * n):
        sims = z[i] @ z.T / t
        others = torch.cat([sims[:i], sims[i + 1:]])
        total = total - sims[(i + n) % (2 * n)] + torch.logsumexp(others, 0)
    return total / (2 * n)


@pytest.mark.parametrize("check, answer, name", [
    (grading.check_similarity_matrix, similarity_stop_gradient, "z2"),
    (grading.check_nt_xent, nt_xent_stop_gradient, "z2"),
    (grading.check_nt_xent_loop, nt_xent_loop_stop_gradient, "z1"),
], ids=["similarity_matrix", "nt_xent", "nt_xent_loop"])
def test_simclr_loss_that_detaches_a_view_fails_visible(check, answer, name):
    message = fails(check, answer, False, f"no gradient reaches {name} ")
    assert ".detach()" in message
    fails(check, answer, True, name)  # the hidden check names it too


# -- 02 triplet loss, 03 InfoNCE: every input is trained ---------------------------------------


def triplet_fixed_negative(anchor, positive, negative, margin=1.0):
    negative = negative.detach()  # "the negative is only something to push away from"
    d_ap = (anchor - positive).pow(2).sum(1)
    d_an = (anchor - negative).pow(2).sum(1)
    return F.relu(d_ap - d_an + margin).mean()


def info_nce_fixed_targets(query, positive, negatives, temperature=0.1):
    positive, negatives = positive.detach(), negatives.detach()  # MoCo's habit, too early
    return losses.info_nce(query, positive, negatives, temperature)


def test_triplet_loss_that_detaches_the_negative_fails_visible():
    for hidden in (False, True):
        fails(triplet.check_triplet_loss, triplet_fixed_negative, hidden,
              "no gradient reaches negative ")


def test_info_nce_that_detaches_positive_and_negatives_fails_visible():
    fails(infonce.check_info_nce, info_nce_fixed_targets, False, "no gradient reaches positive ")


# -- 05 MoCo: the keys and the queue carry no gradient, the queries do -------------------------


def moco_keys_in_the_graph(q, k, queue, t):
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def moco_queue_in_the_graph(q, k, queue, t):
    return moco_keys_in_the_graph(q, k.detach(), queue, t)


def moco_query_detached(q, k, queue, t):
    return moco_keys_in_the_graph(q.detach(), k.detach(), queue.detach(), t)


def test_moco_loss_with_the_wrong_inputs_in_the_graph_fails_visible():
    check = moco.check_moco_loss
    assert "k.detach()" in fails(check, moco_keys_in_the_graph, False, "gradient reaches k ")
    assert "queue.detach()" in fails(check, moco_queue_in_the_graph, False,
                                     "gradient reaches queue ")
    fails(check, moco_query_detached, False, "carries no gradient")  # nothing left to train


# -- 06 DINO: every student crop is trained, the teacher is not --------------------------------


def dino_detaches_the_wrong_side(s_out, t_out, c, ts=0.1, tt=0.04):
    total, pairs = 0, 0
    for g, t in enumerate(t_out):
        p_t = F.softmax((t - c) / tt, dim=-1)
        for v, s in enumerate(s_out):
            if v != g:  # the student detached, the teacher left in the graph
                total = total + (-p_t * F.log_softmax(s.detach() / ts, dim=-1)).sum(-1).mean()
                pairs += 1
    return total / pairs


def test_dino_loss_that_detaches_the_student_fails_visible():
    fails(dino.check_dino_loss, dino_detaches_the_wrong_side, False,
          r"no gradient reaches student_out\[0\] ")


# -- 07 MAE: the predictions are trained, the target is data -----------------------------------


def test_mae_loss_that_trains_the_target_fails_visible():
    def target_in_the_graph(pred, target, mask, norm_pix=False):  # forgets target.detach()
        if norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()

    assert "target.detach()" in fails(mae.check_mae_loss, target_in_the_graph, False,
                                      "gradient reaches target ")


# -- 08 CPC: the loss trains the encoder through z and c, and W --------------------------------


def cpc_fixed_candidates(z, c, W):
    return losses.cpc_loss(z.detach(), c, W)  # the patches as fixed targets


def cpc_fixed_context(z, c, W):
    return losses.cpc_loss(z, c.detach(), W)


@pytest.mark.parametrize("answer, name", [(cpc_fixed_candidates, "z"),
                                          (cpc_fixed_context, "c")], ids=["z", "c"])
def test_cpc_loss_that_detaches_an_input_fails_visible(answer, name):
    fails(cpc.check_cpc_loss, answer, False, f"no gradient reaches {name} ")


def test_column_context_of_detached_patches_fails_visible():
    def detached(g_ar, z):
        return column_context(g_ar, z.detach())

    fails(cpc.check_column_context, detached, False, "no gradient reaches z ")
