"""sslkit.plots: each figure is built and saved; the t-SNE legend names and colours the classes
actually shown; tensors on any device or needing gradients are drawn; bad input is a one-line
error."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from sslkit import plots
from sslkit.errors import SSLKitError

matplotlib.use("Agg")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    matplotlib.pyplot.close("all")


def legend_of(fig):
    """(names, RGBA colours) of the figure legend's entries."""
    legend = fig.legends[0]
    names = [t.get_text() for t in legend.get_texts()]
    return names, [matplotlib.colors.to_rgba(h.get_color()) for h in legend.legend_handles]


def test_tsne_legend_names_the_classes_present():
    """With class names given and a class missing from the points, every entry keeps its own
    name (the names used to be paired with the handles by position: 4 was called 'three')."""
    names = ["zero", "one", "two", "three", "four", "five"]
    labels = np.array([0, 1, 2, 4, 5] * 4)
    emb = np.random.default_rng(0).normal(size=(20, 2))
    fig = plots.tsne_panels({"a": emb, "b": emb * 2}, torch.as_tensor(labels), classes=names)
    shown, colours = legend_of(fig)
    assert shown == ["zero", "one", "two", "four", "five"]
    # each legend colour is the colour of that class's points
    points = fig.axes[0].collections[0].get_facecolors()  # (20, 4)
    for c, colour in zip([0, 1, 2, 4, 5], colours):
        assert np.allclose(points[labels == c], colour)
    assert len({tuple(np.round(c, 4)) for c in colours}) == 5  # all different


def test_tsne_panels_colours_more_than_ten_classes_apart(tmp_path):
    labels = np.arange(15).repeat(2)
    emb = np.random.default_rng(1).normal(size=(30, 2))
    fig = plots.tsne_panels({"x": emb}, labels, path=tmp_path / "t.png")
    colours = fig.axes[0].collections[0].get_facecolors()[::2]  # one point per class
    assert len({tuple(np.round(c, 4)) for c in colours}) == 15  # tab10 clipped 10..14 to one
    assert legend_of(fig)[0] == [str(c) for c in range(15)]
    assert (tmp_path / "t.png").stat().st_size > 0


def test_figures_take_tensors_that_need_gradients(tmp_path):
    images = torch.rand(5, 3, 8, 8, generator=gen(2), requires_grad=True)
    fig = plots.image_grid(images * 1, nrow=4, title="t", path=tmp_path / "g.png")
    assert len(fig.axes) == 8 and (tmp_path / "g.png").exists()
    shown = fig.axes[0].images[0].get_array()
    assert np.allclose(shown, images[0].detach().permute(1, 2, 0).numpy())
    gray = plots.image_grid(torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8), nrow=3)
    assert gray.axes[0].images[0].get_array().max() <= 1
    sim = torch.randn(4, 4, requires_grad=True) * 1
    plots.similarity_matrix(sim, path=tmp_path / "s.png")
    plots.training_curves([{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.5, "knn": 0.4}])


@pytest.mark.parametrize("call,expected", [
    (lambda: plots.tsne_panels({"a": np.zeros((3, 2))}, [0, 1]), "3, 2"),
    (lambda: plots.tsne_panels({}, [0, 1]), "at least one embedding"),
    (lambda: plots.tsne_panels({"a": np.zeros((2, 2))}, [0, 7], classes=["a", "b"]),
     "2 class names"),
    (lambda: plots.image_grid(torch.zeros(0, 1, 4, 4)), "non-empty"),
    (lambda: plots.image_grid(torch.zeros(4, 4)), "non-empty"),
    (lambda: plots.similarity_matrix(torch.zeros(3)), "matrix"),
    (lambda: plots.training_curves([{"epoch": 0, "acc": 1.0}]), "loss"),
])
def test_bad_input_is_a_one_line_error(call, expected):
    with pytest.raises(SSLKitError, match=expected) as err:
        call()
    assert "\n" not in str(err.value)


RAMP = torch.linspace(0, 255, 4 * 3 * 4 * 4).reshape(4, 3, 4, 4)  # values 0..255


@pytest.mark.parametrize("images,expected", [
    (RAMP, r"float images in \[0, 255\]"),  # a forgotten / 255
    (RAMP.long(), "torch.int64"),
    (RAMP / 255 * 6 - 3, r"float images in \[-3, 3\]"),  # standardised pixels
])
def test_image_grid_refuses_images_it_would_show_all_white(images, expected):
    """The grid clamped these to [0, 1] and showed white (or clipped) squares without a word."""
    with pytest.raises(SSLKitError, match=expected) as err:
        plots.image_grid(images)
    assert "\n" not in str(err.value) and "image_grid" in str(err.value)
