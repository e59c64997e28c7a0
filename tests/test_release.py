"""notebooks/ is what nbgrader makes of solutions/ now, and gives no answer away.

The release is regenerated from the current solutions/ into a temporary copy of the course
(``autograder/course.py release``, as ``make release`` does) and compared with the committed
notebooks/ cell by cell: type, source and nbgrader marks (volatile metadata such as cell ids,
outputs and kernel info is ignored). The committed release must also hold no line that exists
in a source notebook only inside a solution (or a solution cell) or a hidden test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "solutions"
NOTEBOOKS = REPO / "notebooks"
SOURCES = sorted(SOLUTIONS.glob("*/*.ipynb"))
IGNORED = (".ipynb_checkpoints", "__pycache__")
NBGRADER_MARKS = ("grade", "solution", "locked", "grade_id", "points", "task")
SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")
HIDDEN = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def files(folder: Path) -> list[str]:
    """Every file under ``folder``, as paths relative to it."""
    return sorted(
        str(path.relative_to(folder)) for path in folder.rglob("*")
        if path.is_file() and not any(part in IGNORED for part in path.parts)
    )  # fmt: skip


def comparable(path: Path) -> list[tuple]:
    """What a student sees of each cell: its type, source and nbgrader marks."""
    nb = nbformat.read(path, as_version=4)
    cells = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        marks = tuple((key, meta[key]) for key in NBGRADER_MARKS if key in meta)
        cells.append((cell.cell_type, cell.source, marks))
    return cells


def split_regions(source: str, begin: str, end: str) -> tuple[list[str], list[str]]:
    """(lines inside begin/end delimiter comments, lines outside), stripped, delimiters dropped."""
    inside, outside, depth = [], [], 0
    for line in source.splitlines():
        if begin in line:
            depth += 1
        elif end in line:
            depth -= 1
        else:
            (inside if depth else outside).append(line.strip())
    return inside, outside


def secret_lines(source: Path, delimiters: tuple[str, str], whole_solution_cells: bool) -> set:
    """Lines that occur in the source notebook only inside the delimited regions."""
    secret, visible = set(), set()
    for cell in nbformat.read(source, as_version=4).cells:
        inside, outside = split_regions(cell.source, *delimiters)
        is_solution = cell.metadata.get("nbgrader", {}).get("solution", False)
        if whole_solution_cells and is_solution and delimiters[0] not in cell.source:
            inside, outside = outside, []  # a solution cell without delimiters: all of it
        secret.update(inside)
        visible.update(outside)
    return {line for line in secret - visible if line}


def released(source: Path) -> Path:
    return NOTEBOOKS / source.parent.name / source.name


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """notebooks/ as `make release` makes it from the current solutions/, in a temporary course."""
    root = tmp_path_factory.mktemp("course")
    made_by_nbgrader = ("gradebook.db", "submitted", "autograded", "feedback", "*.csv")
    shutil.copytree(REPO / "autograder", root / "autograder",
                    ignore=shutil.ignore_patterns(*made_by_nbgrader, *IGNORED))  # fmt: skip
    shutil.copytree(SOLUTIONS, root / "solutions", ignore=shutil.ignore_patterns(*IGNORED))
    result = subprocess.run([sys.executable, str(root / "autograder" / "course.py"), "release"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, f"release failed:\n{result.stdout}\n{result.stderr}"
    return root / "notebooks"


def test_there_are_solutions():
    assert SOURCES, f"no solutions/NN_topic/NN_topic.ipynb under {SOLUTIONS}"


def test_notebooks_are_the_current_release(regenerated):
    hint = "notebooks/ is out of date with solutions/: run `make release` and commit notebooks/"
    assert files(NOTEBOOKS) == files(regenerated), hint
    for name in files(regenerated):
        committed, fresh = NOTEBOOKS / name, regenerated / name
        if name.endswith(".ipynb"):
            assert comparable(committed) == comparable(fresh), f"{name}: {hint}"
        else:
            assert committed.read_bytes() == fresh.read_bytes(), f"{name}: {hint}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_release_holds_no_solution(source):
    text = released(source).read_text()
    for delimiter in SOLUTION:
        assert delimiter not in text, f"{released(source).name} contains {delimiter!r}"
    release_lines = {line.strip() for cell in nbformat.read(released(source), as_version=4).cells
                     for line in cell.source.splitlines()}  # fmt: skip
    leaked = secret_lines(source, SOLUTION, whole_solution_cells=True) & release_lines
    assert not leaked, f"solution lines in {released(source).name}: {sorted(leaked)}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_release_holds_no_hidden_test(source):
    text = released(source).read_text()
    for delimiter in HIDDEN:
        assert delimiter not in text, f"{released(source).name} contains {delimiter!r}"
    release_lines = {line.strip() for cell in nbformat.read(released(source), as_version=4).cells
                     for line in cell.source.splitlines()}  # fmt: skip
    leaked = secret_lines(source, HIDDEN, whole_solution_cells=False) & release_lines
    assert not leaked, f"hidden test lines in {released(source).name}: {sorted(leaked)}"


LOSS_TEST_CELLS = [  # (notebook, test cell, the function it tests)
    ("02_triplet_loss", "test_triplet_loss", "triplet_loss"),
    ("05_moco", "test_moco_loss", "moco_loss"),
    ("06_dino", "test_dino_loss", "dino_loss"),
    ("06_dino", "test_update_center", "update_center"),
    ("07_mae", "test_mae_loss", "mae_loss"),
    ("08_cpc", "test_cpc_loss", "cpc_loss"),
]


@pytest.mark.parametrize("notebook, cell, name", LOSS_TEST_CELLS,
                         ids=[c for _, c, _ in LOSS_TEST_CELLS])
def test_a_visible_test_cell_says_so_when_the_answer_is_not_a_tensor(notebook, cell, name):
    """A student's loss that returns a Python float (.item() at the end) fails the visible
    test cell with a readable line, not an AttributeError from calling .item() on a float."""
    import math

    import torch
    from solution_cells import notebook_cells

    from sslkit import grading

    path = Path(__file__).parents[1] / "solutions" / notebook / f"{notebook}.ipynb"
    visible = notebook_cells(path)[cell].split("### BEGIN HIDDEN TESTS")[0]
    namespace = {"torch": torch, "math": math, "grading": grading,
                 name: lambda *args, **kwargs: 1.0}
    with pytest.raises(AssertionError, match="expected a tensor"):
        exec(compile(visible, cell, "exec"), namespace)
