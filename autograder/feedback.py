"""Feedback without the hidden tests' code.

nbgrader's feedback is the autograded notebook as HTML, and autograde has put the instructor's
test cells back into it, hidden tests included. HideHiddenTests (a generate_feedback
preprocessor, nbgrader_config.py) replaces each ``### BEGIN HIDDEN TESTS`` ...
``### END HIDDEN TESTS`` region of a test cell by one comment line, and reduces an error in a
test cell to its one-line message (``AssertionError: nt_xent: expected 2.0794, got 1.3863``):
IPython's traceback quotes the failing line, which may be a hidden one. A student still sees
each test's score, its visible checks, and why it failed.
"""

from __future__ import annotations

import re

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*",
                    re.MULTILINE | re.DOTALL)  # fmt: skip
PLACEHOLDER = "# (hidden tests ran here; their messages are below)"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_test_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("grade")) and not meta.get("solution")


class HideHiddenTests(Preprocessor):
    enabled = Bool(True)  # nbconvert's preprocessors are off unless enabled

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or not is_test_cell(cell):
            return cell, resources
        cell.source = HIDDEN.sub(PLACEHOLDER, cell.source)
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                message = ANSI.sub("", f"{output.get('ename', '')}: {output.get('evalue', '')}")
                output["traceback"] = [message]
        return cell, resources
