"""An experiment's result and the three files it writes to its output folder.

    table.md       the measured table (with the paper's numbers in their own columns), the
                   paper's claim, the settings, the machine and the wall time
    figure.png     the experiment's figure
    results.json   everything above as data (rows, settings, paper, seconds, device)

``Result.summary()`` is what ``sslkit experiment NAME`` prints. ``check_out(out)``, called
before an experiment does any work, refuses a folder that already holds an earlier run's files,
and every file is written atomically (a temporary file renamed over it), results.json last: a
crash never leaves a half-written file.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sslkit.atomic import write_atomic
from sslkit.cores import usable_cpus
from sslkit.errors import SSLKitError

FILES = ("table.md", "figure.png", "results.json")


@dataclass
class Result:
    name: str  # the experiment's registry name
    title: str  # one line: what is compared
    profile: str  # ci | laptop | gpu
    columns: list[str]  # the table's columns, in order (keys of every row)
    rows: list[dict]  # one dict per table row; None where a value does not apply
    paper: dict  # "source", "claim" and any numbers, from the experiment's PAPER
    settings: dict  # the settings the run used (fit.recorded_settings of its dataclass)
    seconds: float = 0.0  # wall time of the whole experiment
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)  # caveats of the small-scale version
    more: list[dict] = field(default_factory=list)  # further tables: {"caption", "columns", "rows"}
    out: str = ""  # the output folder

    def table(self) -> str:
        return markdown_table(self.columns, self.rows)

    def summary(self) -> str:
        lines = [f"## {self.title}", "", self.table(), ""]
        for extra in self.more:
            lines += [extra["caption"], "", markdown_table(extra["columns"], extra["rows"]), ""]
        lines.append(f"paper ({self.paper['source']}): {self.paper['claim']}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"{self.profile} profile, {machine(self.device)}, {self.seconds:.0f} s")
        return "\n".join(lines)

    def write(self, figure) -> None:
        """table.md, figure.png (from the matplotlib figure) and results.json in self.out, each
        written atomically, results.json last."""
        import matplotlib.pyplot as plt

        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        command = f"sslkit experiment {self.name} --profile {self.profile} --out {self.out}"
        text = [self.summary(), "", f"command: `{command}`", "",
                "settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()), ""]
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=120, bbox_inches="tight")
        plt.close(figure)
        record = asdict(self) | {"machine": machine(self.device), "command": command}
        write_atomic(out / "table.md", "\n".join(text).encode())
        write_atomic(out / "figure.png", png.getvalue())
        write_atomic(out / "results.json",
                     (json.dumps(record, indent=2, default=str) + "\n").encode())


def check_out(out: str | Path) -> None:
    """Refuse, before an experiment does any work, an output folder that is a file, that
    cannot be made or written (under a file, in a read-only folder), or that already holds an
    earlier run's table.md, figure.png or results.json (they would be overwritten)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SSLKitError(f"--out {out} is a file, not a folder: choose another --out")
    existing = next(p for p in (out, *out.parents) if p.exists())  # out, or where it would be made
    if not existing.is_dir():
        raise SSLKitError(f"cannot write --out {out}: {existing} is a file, not a folder: choose "
                          "another --out")
    if not os.access(existing, os.W_OK):
        raise SSLKitError(f"cannot write --out {out}: {existing} is read-only or not yours: "
                          "choose a writable --out")
    held = [name for name in FILES if (out / name).exists()]
    if held:
        raise SSLKitError(f"{out} already holds an experiment's results ({', '.join(held)}): "
                          "choose another --out, or delete them to run the experiment again")


def format_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def markdown_table(columns: list[str], rows: list[dict]) -> str:
    """A GitHub markdown table: one header line, one line per row, "—" for missing values."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def machine(device: str) -> str:
    """The machine in words: the GPU's name, or the CPU's core count."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    threads = torch.get_num_threads()
    return f"{usable_cpus()}-core CPU ({platform.machine()}), {threads} torch threads"
