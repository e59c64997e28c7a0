"""nbgrader's Execute with a cap on how much output one cell may leave in memory.

nbgrader (outside the sandbox) keeps every output message of the cell it runs until the cell
ends; its LimitOutput trims the lines afterwards. A submission that prints in a loop until the
cell's time limit (``while True: print("x" * 100_000)``) thus grows the grading process by
gigabytes: 15 s of it took nbgrader to 4.4 GiB and left a 100 MB autograded notebook, and
the longer the cell runs (120 s in this course) the more it keeps. With the cap it keeps 5 MiB
per cell; what it still holds at once is bounded by the size of one message, which the
kernel's memory limit in the sandbox bounds (the same 15 s then peaked at 2.4 GiB).

``CappedExecute`` keeps a cell's output messages until they total ``max_output_bytes``, drops
the rest of its printed and displayed output and appends one line saying so (on stdout: the
cut does not fail a test; ``report.py`` flags it). Errors are always kept, since they decide
the score.
"""

from __future__ import annotations

from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from traitlets import Integer

CUT = "output cut: the cell printed more than"  # report.py looks for this


class CappedExecute(Execute):
    max_output_bytes = Integer(
        5 * 1024 * 1024, help="Output kept per cell, in bytes; the rest is dropped"
    ).tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self.output_bytes: dict[int, int] = {}
        return super().preprocess(nb, resources, km)

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] == "error":
            return super().output(outs, msg, display_id, cell_index)
        used = self.output_bytes.get(cell_index, 0)
        if used > self.max_output_bytes:
            return None
        content = msg["content"]
        data = content.get("data", {}).values()  # display data: one string per mimetype
        used += len(content.get("text", "")) + sum(len(str(value)) for value in data)
        self.output_bytes[cell_index] = used
        if used <= self.max_output_bytes:
            return super().output(outs, msg, display_id, cell_index)
        note = f"\n... {CUT} {self.max_output_bytes} bytes; the rest was dropped ...\n"
        self.log.warning("Cell %d printed more than %d bytes; cutting its output", cell_index,
                         self.max_output_bytes)  # fmt: skip
        out = new_output("stream", name="stdout", text=note)
        outs.append(out)
        return out
