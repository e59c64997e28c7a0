"""The demo behind `make demo`, at one epoch: it trains, scores three representations and
draws the t-SNE figure; pointed at a run made with other settings, it stops with one line."""

import matplotlib.pyplot as plt
import pytest

from sslkit.demo import run_demo
from sslkit.errors import SSLKitError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    plt.close("all")  # figures other tests left open
    return out, run_demo(out, epochs=1)


def test_demo_scores_three_representations(demo, capsys):
    out, scores = demo
    assert set(scores) == {"raw pixels", "random encoder", "SimCLR encoder"}
    for name, s in scores.items():
        assert 0.0 <= s["knn"] <= 1.0 and 0.0 <= s["linear_10"] <= 1.0, name
        assert s["knn"] > 0.15, f"{name}: kNN {s['knn']} is not above chance (0.1) on digits"
    assert (out / "tsne.png").stat().st_size > 10_000
    assert plt.get_fignums() == [], "the saved figure is left open: a loop of demos leaks them"


def test_demo_refuses_a_run_with_other_settings(demo):
    out, _ = demo
    with pytest.raises(SSLKitError, match="other settings"):
        run_demo(out, epochs=2)


def test_zero_epochs_is_an_error_not_the_default(tmp_path, capsys):
    """`sslkit demo --epochs 0` once ran the default 200 epochs (0 read as "not given"); then
    it printed the header of a 0-epoch run before the error."""
    with pytest.raises(SSLKitError, match="--epochs must be at least 1"):
        run_demo(tmp_path, epochs=0)
    assert not (tmp_path / "simclr").exists()
    assert capsys.readouterr().out == ""


def test_a_second_demo_reuses_the_finished_run(demo, capsys):
    """Run again, the demo scores the finished run it left instead of resuming it (which said
    there was nothing to train and pointed to another command)."""
    out, scores = demo
    capsys.readouterr()
    again = run_demo(out, epochs=1)
    printed = capsys.readouterr().out
    assert f"reusing the finished run in {out / 'simclr'}" in printed
    assert "nothing to train" not in printed
    assert again["SimCLR encoder"] == scores["SimCLR encoder"]
