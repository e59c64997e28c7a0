"""More tests for the 04_simclr checks (tests/test_grading.py holds the rest): the hidden
build_augmentation check measures the colour jitter's strength and probability, which the
text fixes (s = 0.5, p = 0.8) and which plausible wrong answers get wrong: SimCLR's ImageNet
strength s = 1, the strength without the factor 0.8, jitter on every view."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails
from torchvision.transforms import v2

from sslkit import grading


def augmentation(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8):
    def build_augmentation(size):
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=p),
            v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True),
        ])

    return build_augmentation


def test_the_texts_augmentation_passes():
    grading.check_build_augmentation(augmentation(), hidden=True)


@pytest.mark.parametrize("answer, match", [
    (augmentation(0.8, 0.8, 0.8, 0.2), "too strong"),  # s = 1, SimCLR's ImageNet setting
    (augmentation(0.5, 0.5, 0.5, 0.1), "too strong"),  # s = 0.5 without the factor 0.8
    (augmentation(0.2, 0.2, 0.2, 0.05), "too weak"),  # s = 0.25
    (augmentation(p=1.0), "without colour jitter"),  # jitter on every view
    (augmentation(p=0.5), "without colour jitter"),
    (augmentation(hue=0), "shift the hue"),  # ColorJitter(0.8 s, 0.8 s, 0.8 s): hue forgotten
    (augmentation(contrast=0, saturation=0, hue=0), "contrast and saturation"),  # brightness only
], ids=["s=1", "no 0.8", "s=0.25", "p=1", "p=0.5", "no hue", "brightness only"])
def test_augmentation_with_the_wrong_jitter_fails_hidden(answer, match):
    grading.check_build_augmentation(answer)  # the visible check does not measure the jitter
    fails(grading.check_build_augmentation, answer, True, match)


def _similarity_in_place(z1, z2):
    z = torch.cat([z1, z2])
    z /= z.norm(dim=1, keepdim=True)  # right values, but autograd needed the z it overwrote
    return z @ z.T


def _similarity_numpy(z1, z2):
    z = torch.cat([z1, z2]).detach().numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return torch.from_numpy(z @ z.T)


def _similarity_detached(z1, z2):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    return (z @ z.T).detach()


def _similarity_norm_detached(z1, z2):
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True).detach()  # the norm treated as a constant
    return z @ z.T


@pytest.mark.parametrize("answer, match", [
    (_similarity_in_place, "in-place operation"),
    (_similarity_numpy, "carries no gradient"),
    (_similarity_detached, "carries no gradient"),
    (_similarity_norm_detached, "gradient with respect to z1"),
], ids=["z /= norm", "numpy", "detach", "norm detached"])
def test_similarity_matrix_that_breaks_the_gradient_fails_hidden(answer, match):
    """NT-Xent trains through the matrix: right values with a broken backward pass must fail."""
    grading.check_similarity_matrix(answer)  # the values are right
    fails(grading.check_similarity_matrix, answer, True, match)
