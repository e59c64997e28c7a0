"""OverwriteCells that puts a deleted test cell back without crashing.

nbgrader 0.9's ``OverwriteCells.add_missing_cells`` inserts a missing grade cell after the cell
that precedes it in the source notebook, and looks that cell up among the submission's grade and
solution cells only. When the preceding cell is a read-only cell (in 04_simclr the test of
``build_augmentation`` follows the read-only cell that shows the views) the lookup fails with a
KeyError and the whole submission goes ungraded.

Here a missing grade cell goes after the nearest earlier source cell of any kind (read-only,
solution or grade) that the submission still has, or first if there is none. The inserted cell
is nbgrader's own (``missing_cell_transform``: the gradebook's source and points, locked), so it
is executed and scored like any other test cell.

nbgrader also stops with a traceback, leaving the submission ungraded, on nbgrader metadata a
student can produce by editing the notebook's JSON, pasting a cell from another notebook or
copying and pasting a cell in JupyterLab. ``CleanMetadata``, first of the sanitising
preprocessors, makes every cell's nbgrader metadata one nbgrader can grade:

- a cell whose grade_id the gradebook knows gets the released cell's flags back (grade,
  solution, locked, task), its points and schema version: a test cell marked as a solution, or
  not graded, made nbgrader fail with "Inconsistent checksums";
- a second cell with a grade_id already seen (a copied and pasted cell) becomes an ordinary
  cell, and the first one is graded: nbgrader's DeduplicateIds empties the metadata of all
  copies but the last, and ``add_missing_task_cells`` then fails with ``KeyError: 'grade_id'``;
- a cell whose metadata is not a mapping, has no grade_id, or a grade_id the gradebook does
  not know (a renamed test cell, the notebook of another assignment) becomes an ordinary cell;
  a test cell it was is then missing and put back from the gradebook.

report.py flags changed flags or points as tampered, and a test cell made ordinary as
deleted; a pasted copy is not flagged (the first copy is the one it checks).
"""

from __future__ import annotations

from nbgrader.api import Gradebook
from nbgrader.preprocessors import NbGraderPreprocessor, OverwriteCells

SCHEMA_VERSION = 3  # nbgrader 0.9's cell metadata


def released_flags(notebook) -> dict[str, dict]:
    """grade_id -> the nbgrader flags and points of the released cell, from the gradebook's
    ``notebook`` (nbgrader.api.Notebook). ``locked`` is nbgrader's ``is_locked`` of the cell:
    false for a solution cell, true for a test cell."""
    points = {c.name: float(c.max_score) for c in [*notebook.grade_cells, *notebook.task_cells]}
    grades = {c.name for c in notebook.grade_cells}
    solutions = {c.name for c in notebook.solution_cells}
    tasks = {c.name for c in notebook.task_cells}
    return {
        cell.name: {"grade": cell.name in grades, "solution": cell.name in solutions,
                    "locked": bool(cell.locked), "task": cell.name in tasks,
                    **({"points": points[cell.name]} if cell.name in points else {})}
        for cell in notebook.source_cells
    }  # fmt: skip


class CleanMetadata(NbGraderPreprocessor):
    """Make nbgrader metadata that would crash nbgrader's own preprocessors gradable (see
    above)."""

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gb:
            self.released = released_flags(gb.find_notebook(info["notebook"], info["assignment"]))
        self.seen: set[str] = set()
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = {}
        if "nbgrader" not in cell.metadata:
            return cell, resources
        meta = cell.metadata.nbgrader
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if not isinstance(grade_id, str):
            self.log.warning("Cell %d has unusable nbgrader metadata; grading it as a plain cell",
                             index)  # fmt: skip
        elif grade_id in self.seen:
            self.log.warning("Cell %d is a copy of cell %s; grading it as a plain cell",
                             index, grade_id)  # fmt: skip
        elif grade_id not in self.released:
            self.log.warning("Cell %s is not in the gradebook; grading it as a plain cell",
                             grade_id)  # fmt: skip
        else:
            self.seen.add(grade_id)
            released = self.released[grade_id]
            changed = [key for key, value in released.items() if meta.get(key, False) != value]
            if changed:
                self.log.warning("Cell %s has changed nbgrader metadata (%s); resetting it",
                                 grade_id, ", ".join(changed))  # fmt: skip
            meta.pop("points", None)
            meta.update(released, schema_version=SCHEMA_VERSION)
            return cell, resources
        del cell.metadata["nbgrader"]
        return cell, resources


class RestoreMissingCells(OverwriteCells):
    def add_missing_grade_cells(self, nb, resources):
        source_nb = self.gradebook.find_notebook(self.notebook_id, self.assignment_id)
        source_cells = list(source_nb.source_cells)  # in the instructor notebook's order
        max_scores = {cell.name: cell.max_score for cell in source_nb.grade_cells}
        solutions = {cell.name for cell in source_nb.solution_cells}

        for index, source_cell in enumerate(source_cells):
            present = [cell.metadata.get("nbgrader", {}).get("grade_id") for cell in nb.cells]
            if source_cell.name not in max_scores or source_cell.name in present:
                continue
            self.log.warning("Grade cell %s is missing; adding it back", source_cell.name)
            earlier = [c.name for c in source_cells[:index] if c.name in present]
            position = present.index(earlier[-1]) + 1 if earlier else 0
            nb.cells.insert(position, self.missing_cell_transform(
                source_cell, max_scores[source_cell.name],
                is_solution=source_cell.name in solutions,
            ))  # fmt: skip
        return nb, resources
