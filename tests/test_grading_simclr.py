"""More tests for the 04_simclr checks (tests/test_grading.py holds the rest): the hidden
build_augmentation check measures the colour jitter's strength and probability, which the
text fixes (s = 0.5, p = 0.8) and which plausible wrong answers get wrong: SimCLR's ImageNet
strength s = 1, the strength without the factor 0.8, jitter on every view; and, for an answer
that is not a Compose, the probabilities of grayscale and jitter and the crops' areas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from solution_cells import fails
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

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
    """Measured on the views, for an answer whose steps cannot be read (here a function that
    calls the Compose): the visible check does not measure the jitter."""
    def opaque(size):
        transform = answer(size)
        return lambda img: transform(img)

    grading.check_build_augmentation(opaque)
    fails(grading.check_build_augmentation, opaque, True, match)
    # the Compose itself: its ColorJitter's ranges and probability are read, visibly
    fails(grading.check_build_augmentation, answer, False, "ColorJitter|p=0.8|hue")


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


@pytest.mark.parametrize("answer, match, visible", [
    (_similarity_in_place, "in-place operation", True),
    (_similarity_numpy, "carries no gradient", True),
    (_similarity_detached, "carries no gradient", True),
    (_similarity_norm_detached, "gradient with respect to z1", False),
], ids=["z /= norm", "numpy", "detach", "norm detached"])
def test_similarity_matrix_that_breaks_the_gradient_fails(answer, match, visible):
    """NT-Xent trains through the matrix: right values with a broken backward pass must fail;
    the visible check tells a matrix cut off from z1 and z2 (it passed these before), the hidden
    one a gradient that differs (the norm treated as a constant)."""
    if visible:
        fails(grading.check_similarity_matrix, answer, False, match)
    else:
        grading.check_similarity_matrix(answer)  # the values are right
    fails(grading.check_similarity_matrix, answer, True, match)


def pipeline(*steps):
    """build_augmentation(size) from steps, each a function of size giving one transform."""
    return lambda size: v2.Compose([step(size) for step in steps])


CROP = lambda size: v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True)  # noqa: E731
FLIP = lambda size: v2.RandomHorizontalFlip(p=0.5)  # noqa: E731
JITTER = lambda size: v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)  # noqa: E731
GRAY = lambda size: v2.RandomGrayscale(p=0.2)  # noqa: E731
FLOAT = lambda size: v2.ToDtype(torch.float32, scale=True)  # noqa: E731


@pytest.mark.parametrize("answer, match", [
    (pipeline(lambda size: v2.RandomCrop(size), FLIP, JITTER, GRAY, FLOAT), "RandomResizedCrop"),
    (pipeline(lambda size: v2.Resize(size, antialias=True), lambda size: v2.RandomCrop(size),
              FLIP, JITTER, GRAY, FLOAT), "RandomResizedCrop"),
    (pipeline(lambda size: v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), FLIP,
              JITTER, GRAY, FLOAT), r"scale=\(0.08, 1.0\)"),
    (pipeline(CROP, lambda size: v2.RandomHorizontalFlip(p=0.8), JITTER, GRAY, FLOAT),
     r"RandomHorizontalFlip\(p=0.5\)"),
    (pipeline(CROP, lambda size: v2.RandomVerticalFlip(p=0.5), JITTER, GRAY, FLOAT),
     "RandomVerticalFlip"),
    (pipeline(CROP, FLIP, JITTER, lambda size: v2.RandomGrayscale(), FLOAT),
     r"RandomGrayscale\(p=0.2\)"),
    (pipeline(CROP, FLIP, lambda size: v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)],
                                                      p=0.7), GRAY, FLOAT), "p=0.8"),
    (pipeline(CROP, FLIP, lambda size: v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)],
                                                      p=0.9), GRAY, FLOAT), "p=0.8"),
    (pipeline(CROP, FLIP, lambda size: v2.ColorJitter(0.4, 0.4, 0.4, 0.1), GRAY, FLOAT),
     "p=0.8"),
    (pipeline(CROP, FLIP, lambda size: v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.2)],
                                                      p=0.8), GRAY, FLOAT), "hue"),
    (pipeline(CROP, FLIP, lambda size: v2.RandomApply([v2.ColorJitter(0.4, 0.8, 0.8, 0.1)],
                                                      p=0.8), GRAY, FLOAT), "contrast"),
    (pipeline(CROP, FLIP, lambda size: v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0, 0.1)],
                                                      p=0.8), GRAY, FLOAT), "saturation"),
    (pipeline(CROP, FLIP, JITTER, GRAY, lambda size: v2.GaussianBlur(3), FLOAT),
     "GaussianBlur"),
], ids=["RandomCrop", "Resize+RandomCrop", "scale 0.2", "flip p=0.8", "vertical flip",
        "grayscale default p", "jitter p=0.7", "jitter p=0.9", "jitter always", "hue 0.2",
        "contrast and saturation 0.8", "no saturation", "extra blur"])
def test_augmentation_with_the_wrong_steps_fails(answer, match):
    """Each passed the visible check (which looked at shapes, dtypes and randomness only), and
    all but the vertical flip and the jitter on every view passed the hidden one too (which
    measures some of the steps statistically, with wide bounds): the parameters the text fixes
    are now read from the Compose."""
    for hidden in (False, True):
        message = fails(grading.check_build_augmentation, answer, hidden, match)
        assert message.startswith("build_augmentation: ")


@pytest.mark.parametrize("answer", [
    pipeline(lambda size: v2.ToImage(), CROP, FLIP, JITTER, GRAY, FLOAT),  # a harmless extra
    pipeline(lambda size: v2.Compose([CROP(size), FLIP(size)]), JITTER, GRAY, FLOAT),  # nested
    pipeline(CROP, lambda size: v2.RandomApply([v2.RandomHorizontalFlip(p=1.0)], p=0.5),
             JITTER, GRAY, FLOAT),  # the same flip probability, written otherwise
    pipeline(CROP, FLIP, lambda size: v2.RandomApply([v2.ColorJitter(
        brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=(-0.1, 0.1))],
        p=0.8), GRAY, FLOAT),  # ranges instead of strengths
    pipeline(CROP, FLIP, JITTER, GRAY, lambda size: v2.ToDtype(torch.float32, scale=True),
             lambda size: v2.ToPureTensor()),
], ids=["ToImage first", "nested Compose", "flip in RandomApply", "jitter ranges",
        "ToPureTensor last"])
def test_augmentation_written_otherwise_passes(answer):
    for hidden in (False, True):
        grading.check_build_augmentation(answer, hidden=hidden)


# -- answers that are not a Compose: their parameters measured on the views (_check_distributions)


def own_augmentation(size, side_uniform=False, sides_apart=False, jitter_each=False,
                     gray_p=0.2):
    """The text's pipeline written by hand from torchvision's functional ops (right, but with no
    Compose whose steps the check can read), or with one of the mistakes such code makes."""
    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand(()))

    def transform(img):
        height, width = img.shape[-2:]
        area = height * width * uniform(0.08, 1.0)
        ratio = math.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if side_uniform:  # "8 % to 100 %" read as the side
            side = uniform(0.08, 1.0)
            w, h = side * width * math.sqrt(ratio), side * height / math.sqrt(ratio)
        if sides_apart:  # width and height drawn one by one
            w, h = width * uniform(0.08 ** 0.5, 1), height * uniform(0.08 ** 0.5, 1)
        w, h = min(width, max(1, round(w))), min(height, max(1, round(h)))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        x = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        if torch.rand(()) < 0.5:
            x = TF.horizontal_flip(x)
        jitter = [(TF.adjust_brightness, 0.6, 1.4), (TF.adjust_contrast, 0.6, 1.4),
                  (TF.adjust_saturation, 0.6, 1.4), (TF.adjust_hue, -0.1, 0.1)]
        if jitter_each:  # each of the four with probability 0.8
            for adjust, lo, hi in jitter:
                if torch.rand(()) < 0.8:
                    x = adjust(x, uniform(lo, hi))
        elif torch.rand(()) < 0.8:
            for adjust, lo, hi in jitter:
                x = adjust(x, uniform(lo, hi))
        if torch.rand(()) < gray_p and x.shape[0] == 3:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        return TF.to_dtype(x, torch.float32, scale=True)

    return transform


def opaque(steps):
    """build_augmentation returning a function that calls a Compose: its steps cannot be read."""
    def build_augmentation(size):
        transform = v2.Compose([step(size) for step in steps])
        return lambda img: transform(img)

    return build_augmentation


def test_augmentation_of_ones_own_that_is_right_passes():
    for answer in (own_augmentation, opaque([CROP, FLIP, JITTER, GRAY, FLOAT])):
        for hidden in (False, True):
            grading.check_build_augmentation(answer, hidden=hidden)


@pytest.mark.parametrize("answer, match", [
    (opaque([CROP, FLIP, JITTER, lambda size: v2.RandomGrayscale(), FLOAT]),
     r"about 20% grayscale views, got 1\d\.\d%"),
    (lambda size: own_augmentation(size, gray_p=0.1), "about 20% grayscale"),
    (opaque([lambda size: v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), FLIP,
             JITTER, GRAY, FLOAT]), r"less than 19% of the image, got 0 of"),
    (lambda size: own_augmentation(size, side_uniform=True), r"crops cover less than 5\.5%"),
    (lambda size: own_augmentation(size, sides_apart=True), r"aspect ratio .* outside"),
    (lambda size: own_augmentation(size, jitter_each=True), "without colour jitter, got 0"),
], ids=["grayscale default p", "grayscale p=0.1", "scale 0.2", "side uniform",
        "width and height apart", "each jitter op with p=0.8"])
def test_augmentation_of_ones_own_with_a_wrong_parameter_fails_hidden(answer, match):
    """Each passed the hidden check before, which measured answers that are not a Compose
    with wide bounds only (grayscale 5 % to 50 %, crops: most views differ from a resize)."""
    grading.check_build_augmentation(answer)
    message = fails(grading.check_build_augmentation, answer, True, match)
    assert "v2." in message


def test_binomial_tail():
    from sslkit.grading.simclr import _binomial_tail

    assert _binomial_tail(0, 10, 0.5, upper=False) == pytest.approx(0.5 ** 10)
    assert _binomial_tail(10, 10, 0.5, upper=True) == pytest.approx(0.5 ** 10)
    assert _binomial_tail(3, 10, 0.3, upper=False) + _binomial_tail(4, 10, 0.3, upper=True) \
        == pytest.approx(1.0)
