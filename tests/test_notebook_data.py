"""The solution notebooks' data and run cells where the profile's data is not the digits.

In the "gpu" profile (chosen when CUDA is available) the notebooks train on CIFAR-10: 3-channel
images, read from the repository's data folder (DATA_ROOT = ../../data, as notebook 09 has it),
and `sslkit train` runs in runs/ may hold a CIFAR-10 ResNet where a notebook expects digits. No
GPU is needed to check that path: the cells are run here, in a course folder laid out like the
repository (solutions/NN/ as the working folder, data/ and runs/ two levels up), in the "ci"
profile with its dataset swapped for a tiny CIFAR-10 written in the real file format.

* a missing dataset stops the data cell with one line that says how to get it;
* the cells that draw or cut up images work on 3 channels;
* a run trained on another dataset (here: digits) is not used, the notebook trains its own and
  says so; a run on the notebook's own data is still loaded.
"""

from __future__ import annotations

import dataclasses
import pickle
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from solution_cells import notebook_cells

from sslkit import profiles
from sslkit.data import DataNotFound
from sslkit.train import TrainConfig, train

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

# matplotlib asks torch tensors for __array__(copy=...), which torch does not take yet
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]  # fmt: skip


def notebook(name: str) -> Path:
    return SOLUTIONS / name / f"{name}.ipynb"


def run_cells(name: str, grade_ids, namespace: dict) -> dict:
    """Run the notebook's cells named by grade_ids, in order, in one namespace (IPython magics
    such as %matplotlib are dropped)."""
    cells = notebook_cells(notebook(name))
    for grade_id in grade_ids:
        source = "\n".join(line for line in cells[grade_id].splitlines()
                           if not line.lstrip().startswith("%"))
        exec(compile(source, f"{name}:{grade_id}", "exec"), namespace)
    return namespace


def write_tiny_cifar10(root: Path, per_batch: int = 40, n_test: int = 50) -> None:
    """root/cifar-10-batches-py in torchvision's format: 5 x per_batch training images, n_test
    test images, random pixels and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(file: str, n: int) -> None:
        batch = {b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)}
        with open(folder / file, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    for b in range(1, 6):
        dump(f"data_batch_{b}", per_batch)
    dump("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_NAMES]}, f, protocol=2)


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course folder: data/ with a tiny CIFAR-10, runs/ with short digits runs of SimCLR,
    MAE (ViT) and CPC, as `sslkit train METHOD --out runs/METHOD` leaves them."""
    root = tmp_path_factory.mktemp("course")
    write_tiny_cifar10(root / "data")
    for method, arch in (("simclr", "convnet-small"), ("mae", "vit"), ("cpc", "convnet-small")):
        cfg = TrainConfig(method=method, arch=arch, dataset="shifted_digits", n_train=64,
                          n_test=32, epochs=1, batch_size=32, warmup_epochs=0)
        train(cfg, out=root / "runs" / method, progress=False)
    return root


@pytest.fixture
def in_notebook_folder(monkeypatch, tmp_path):
    """cd into ROOT/solutions/NN (so that ../../data and ../../runs are ROOT's), temporary
    folders of the cells under tmp_path, figures closed afterwards."""
    def enter(root: Path, name: str) -> None:
        folder = root / "solutions" / name
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(folder)

    monkeypatch.setenv("SSLKIT_PROFILE", "ci")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield enter
    plt.close("all")


@pytest.fixture
def cifar_profile(monkeypatch):
    """The "ci" profile's sizes with CIFAR-10 as its dataset, as the gpu profile has it."""
    monkeypatch.setitem(profiles.PROFILES, "ci",
                        dataclasses.replace(profiles.PROFILES["ci"], dataset="cifar10"))


# Each notebook's setup cell, then the cell that loads p.dataset.
DATA_CELLS = {
    "02_triplet_loss": ["setup", "batch"],
    "04_simclr": ["setup", "digits"],
    "05_moco": ["setup", "few_steps"],
    "06_dino": ["setup", "views"],
    "07_mae": ["setup", "patches_show"],
    "08_cpc": ["setup"],
    "09_evaluation": ["setup", "methods"],
}


@pytest.mark.parametrize("name", list(DATA_CELLS))
def test_missing_dataset_stops_the_data_cell_with_one_line_saying_how_to_get_it(
        name, tmp_path, in_notebook_folder, cifar_profile):
    empty = tmp_path / "no-data-here"
    in_notebook_folder(empty, name)
    with pytest.raises(DataNotFound) as info:
        run_cells(name, DATA_CELLS[name], {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"CIFAR-10 is not in {(empty / 'data').resolve()}: ")
    assert "load_dataset('cifar10', DATA_ROOT, download=True)" in message
    assert info.value.__suppress_context__  # the notebook's line, not load_dataset's traceback


@pytest.mark.parametrize("name", list(DATA_CELLS))
def test_data_comes_from_the_repositorys_data_folder(name, course, in_notebook_folder,
                                                     cifar_profile):
    in_notebook_folder(course, name)
    cells = DATA_CELLS[name]
    if name == "05_moco":  # the data cell runs the student's step on the data
        cells = ["setup", "update_momentum", "enqueue", "moco_loss", "moco_step", "few_steps"]
    if name == "07_mae":  # the data cell cuts an image with the student's patchify
        cells = ["setup", "patchify", "patches_show"]
    if name == "09_evaluation":  # its data cell trains every method: the setup is enough
        namespace = run_cells(name, ["setup"], {})
        assert namespace["DATA_ROOT"] == Path("../../data")
        return
    namespace = run_cells(name, cells, {})
    assert namespace["DATA_ROOT"] == Path("../../data")  # notebook 09's definition
    assert namespace["data"].name == "cifar10"
    assert tuple(namespace["data"].train_x.shape) == (200, 3, 32, 32)


def test_triplet_figures_draw_colour_batches(course, in_notebook_folder, cifar_profile):
    in_notebook_folder(course, "02_triplet_loss")
    ns = run_cells("02_triplet_loss", ["setup", "batch", "batch_hard_negatives",
                                       "semi_hard_negatives", "mined"], {})
    picture = ns["tile"](torch.cat([ns["anchors"], ns["positives"]]))
    assert tuple(picture.shape) == (64, 256, 3)
    assert torch.equal(picture[32:64, 32:64], ns["positives"][1].permute(1, 2, 0))
    assert tuple(ns["tile"](ns["rows"]).shape) == (128, 256, 3)
    grey = ns["tile"](torch.rand(16, 1, 32, 32))
    assert tuple(grey.shape) == (64, 256)


def test_simclr_trains_its_own_run_when_runs_simclr_holds_another_dataset(
        course, in_notebook_folder, cifar_profile, capsys):
    in_notebook_folder(course, "04_simclr")
    ns = run_cells("04_simclr", ["setup", "digits", "train", "evaluate"], {})
    out = capsys.readouterr().out
    assert "was trained on shifted_digits (1-channel), not on cifar10 (3-channel)" in out
    assert ns["eval_data"] is ns["data"]
    assert ns["cfg"].dataset == "cifar10"


def test_dino_cells_take_colour_crops(course, in_notebook_folder, cifar_profile):
    in_notebook_folder(course, "06_dino")
    ns = run_cells("06_dino", ["setup", "views", "vit", "collapse", "attention"], {})
    assert [tuple(c.shape[1:]) for c in ns["crops"]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4


def test_mae_cells_cut_colour_patches_and_train_when_runs_mae_holds_digits(
        course, in_notebook_folder, cifar_profile, capsys):
    in_notebook_folder(course, "07_mae")
    ns = run_cells("07_mae", ["setup", "patchify", "unpatchify", "patches_show",
                              "random_masking", "masks_show", "encoder_shapes", "pretrain",
                              "reconstructions"], {})
    tiles, digit = ns["tiles"], ns["digit"]
    assert tuple(tiles.shape) == (64, 3, 4, 4)
    assert torch.equal(tiles[8 + 3], digit[0, :, 4:8, 12:16])  # patch row 1, column 3
    out = capsys.readouterr().out
    assert ("was trained on shifted_digits (1-channel), not on cifar10 (3-channel): "
            "training here instead") in out
    assert ns["mae"].in_channels == 3


def test_cpc_cells_use_the_datas_channels_and_skip_runs_of_other_data(
        course, in_notebook_folder, cifar_profile, capsys):
    in_notebook_folder(course, "08_cpc")
    ns = run_cells("08_cpc", ["setup", "patch_grid", "grid_figure", "leak", "column_context",
                              "cpc_loss", "cpc_step", "test_cpc_step", "train_cpc",
                              "accuracy_per_step", "compare"], {})
    assert tuple(ns["batch"].shape) == (16, 5, 5, 3, 8, 8)
    out = capsys.readouterr().out
    for run in ("cpc", "simclr"):
        assert (f"runs/{run} was trained on shifted_digits (1-channel), not on cifar10 "
                "(3-channel): training here instead") in out
    assert ns["cpc_source"].startswith("trained 1 epochs here")


def test_runs_on_the_notebooks_own_data_are_still_loaded(course, in_notebook_folder, capsys):
    """In the digits profiles the digits runs of runs/ are used, as before (and 07 draws the
    loaded MAE's reconstructions whatever its patch size)."""
    in_notebook_folder(course, "07_mae")
    ns = run_cells("07_mae", ["setup", "patchify", "unpatchify", "patches_show",
                              "random_masking", "masks_show", "pretrain", "reconstructions"], {})
    assert "loaded ../../runs/mae: 1 epochs of MAE" in capsys.readouterr().out
    assert ns["noise"].shape[1] == (32 // ns["mae"].patch_size) ** 2
    in_notebook_folder(course, "08_cpc")
    ns = run_cells("08_cpc", ["setup", "train_cpc"], {})
    assert ns["cpc_source"] == "loaded ../../runs/cpc (1 epochs)"
    in_notebook_folder(course, "04_simclr")
    ns = run_cells("04_simclr", ["setup", "digits", "train"], {})
    assert "loaded the trained run in ../../runs/simclr" in capsys.readouterr().out


def test_evaluation_cifar_figure_trains_a_short_run(course, in_notebook_folder, capsys):
    """09's CIFAR-10 figure (digits profile, CIFAR-10 in the data folder, runs/simclr on digits):
    the SimCLR run it trains is the short one its text promises, the budget's `epochs`, not
    SimCLR's full `simclr_epochs`."""
    in_notebook_folder(course, "09_evaluation")
    ns = run_cells("09_evaluation", ["setup"], {})
    ns["budget"].update(epochs=1, simclr_epochs=2)  # tell the two apart
    cells = notebook_cells(notebook("09_evaluation"))
    # the definitions only (the rest of these cells trains and evaluates every method)
    for grade_id, start, end in (("methods", "ARCH_FOR = ", "encoders, how = "),  # trained_encoder
                                 ("neighbours", "def nearest", "ssl_name = ")):  # show_neighbours
        source = cells[grade_id]
        source = source[source.index(start):source.index(end)]
        exec(compile(source, f"09_evaluation:{grade_id}", "exec"), ns)
    run_cells("09_evaluation", ["cifar"], ns)
    assert "runs/simclr was trained on shifted_digits, not cifar10" in capsys.readouterr().out
    assert ns["cifar_how"] == "trained here, 1 epochs"
