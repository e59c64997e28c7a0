"""More tests for the 04_simclr checks (tests/test_grading.py holds the rest): the hidden
build_augmentation check measures the colour jitter's strength and probability, which the
text fixes (s = 0.5, p = 0.8) and which plausible wrong answers get wrong: SimCLR's ImageNet
strength s = 1, the strength without the factor 0.8, jitter on every view."""

import pytest
import torch
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
], ids=["s=1", "no 0.8", "s=0.25", "p=1", "p=0.5"])
def test_augmentation_with_the_wrong_jitter_fails_hidden(answer, match):
    grading.check_build_augmentation(answer)  # the visible check does not measure the jitter
    fails(grading.check_build_augmentation, answer, True, match)
