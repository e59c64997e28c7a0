"""Helpers the tests of sslkit.grading share (a plain module, imported by those tests).

``run_solution_cells`` runs a source notebook's solution cells in order in one namespace, as
the notebook does, and returns the exercises they define; ``fails`` runs a check that must
fail and returns its message after checking that it is one line.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest


def notebook_cells(notebook: Path) -> dict[str, str]:
    """grade_id -> source of every nbgrader cell of a notebook."""
    return {c["metadata"].get("nbgrader", {}).get("grade_id"): "".join(c["source"])
            for c in json.loads(notebook.read_text())["cells"]}


def run_solution_cells(notebook: Path, grade_ids, namespace: dict) -> types.SimpleNamespace:
    cells = notebook_cells(notebook)
    for grade_id in grade_ids:
        exec(compile(cells[grade_id], f"{notebook.name}:{grade_id}", "exec"), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in grade_ids})


def fails(check, answer, hidden: bool, match: str) -> str:
    with pytest.raises(AssertionError, match=match) as info:
        check(answer, hidden=hidden)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message
