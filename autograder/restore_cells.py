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
student can produce by editing the notebook's JSON or pasting a cell from another notebook: a
grade_id the gradebook does not know (a renamed test cell, the notebook of another assignment:
nbgrader 0.9 drops the id and then fails with ``KeyError: 'grade_id'``), points that are not a
number, metadata that is not a mapping or has no grade_id. ``CleanMetadata`` (first of the
sanitising preprocessors) and ``RestoreMissingCells`` turn such a cell into an ordinary,
ungraded cell; a test cell it was is then missing and put back from the gradebook, and the
report flags it as deleted or its points as changed.
"""

from __future__ import annotations

from nbgrader.api import MissingEntry
from nbgrader.preprocessors import NbGraderPreprocessor, OverwriteCells


class CleanMetadata(NbGraderPreprocessor):
    """Drop nbgrader metadata that would crash nbgrader's own preprocessors (see above)."""

    def preprocess_cell(self, cell, resources, index):
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = {}
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            return cell, resources
        if not isinstance(meta, dict) or not isinstance(meta.get("grade_id"), str):
            self.log.warning("Cell %d has unusable nbgrader metadata; grading it as a plain cell",
                             index)  # fmt: skip
            del cell.metadata["nbgrader"]
        elif meta.get("grade"):
            try:
                float(meta.get("points"))
            except (TypeError, ValueError):  # OverwriteCells resets it from the gradebook
                self.log.warning("Cell %s has points %r", meta["grade_id"], meta.get("points"))
                meta["points"] = 0.0
        return cell, resources


class RestoreMissingCells(OverwriteCells):
    def preprocess_cell(self, cell, resources, index):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id is not None:
            try:
                self.gradebook.find_source_cell(grade_id, self.notebook_id, self.assignment_id)
            except MissingEntry:  # nbgrader would keep the rest of its metadata, and crash
                self.log.warning("Cell %s is not in the gradebook; grading it as a plain cell",
                                 grade_id)  # fmt: skip
                del cell.metadata["nbgrader"]
                return cell, resources
        return super().preprocess_cell(cell, resources, index)

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
