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
"""

from __future__ import annotations

from nbgrader.preprocessors import OverwriteCells


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
