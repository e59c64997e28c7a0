"""nbgrader configuration for the sslkit course; this folder is the course root.

Run nbgrader commands from this folder, or through ``python autograder/course.py`` (what
``make release`` and ``make grade`` do). The instructor guide is README.md next to this file.

    ../solutions/NN_topic/NN_topic.ipynb   source: the instructor notebooks with nbgrader markup
    ../notebooks/NN_topic/NN_topic.ipynb   release: what students get (generate_assignment)
    submitted/<student>/NN_topic/          submissions to grade
    autograded/, feedback/, gradebook.db   made by nbgrader, git-ignored

Paths are relative to the course root, so a copy of ``autograder/`` next to a copy of
``solutions/`` (as the tests make) is a complete course of its own.
"""

import os
import sys
import tempfile

from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearOutput,
    DeduplicateIds,
    GetGrades,
    IgnorePattern,
    LimitOutput,
    OverwriteKernelspec,
    SaveAutoGrades,
)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from capped_output import CappedExecute  # noqa: E402 -- importable through the line above
from feedback import HideHiddenTests  # noqa: E402
from restore_cells import CleanMetadata, RestoreMissingCells  # noqa: E402

c = get_config()  # noqa: F821 -- provided by traitlets when it loads this file

# ---------------------------------------------------------------------------------------------
# Course layout
# ---------------------------------------------------------------------------------------------

c.CourseDirectory.root = HERE
c.CourseDirectory.course_id = "sslkit"
c.CourseDirectory.source_directory = os.path.join("..", "solutions")
c.CourseDirectory.release_directory = os.path.join("..", "notebooks")
# submitted/, autograded/, feedback/ and gradebook.db keep nbgrader's default names.

# ---------------------------------------------------------------------------------------------
# generate_assignment: strip solutions and hidden tests, lock what students must not edit
# ---------------------------------------------------------------------------------------------

# Solution or hidden-test delimiters in a cell not marked as such stop the release with an
# error instead of shipping the code inside them.
c.ClearSolutions.enforce_metadata = True
c.ClearHiddenTests.enforce_metadata = True
# Test cells and read-only cells are locked and checksummed: autograde relies on this below.
c.LockCells.lock_grade_cells = True
c.LockCells.lock_readonly_cells = True

# ---------------------------------------------------------------------------------------------
# autograde: restore the instructor's cells, then run each cell under a time limit
# ---------------------------------------------------------------------------------------------

# Before execution each submission is sanitised: outputs cleared, duplicate cell ids fixed, the
# kernel reset to the source's, and the instructor's cells enforced (OverwriteCells). A test or
# read-only cell whose source differs from the gradebook's copy (an assert replaced by `pass`)
# gets the gradebook's source back, hidden tests included; its points, type and lock are reset.
# RestoreMissingCells is OverwriteCells with nbgrader 0.9's re-insertion of deleted test cells
# fixed. CleanMetadata, first, makes nbgrader metadata a student mangled gradable instead of a
# crash (see restore_cells.py): a known cell gets the released cell's flags and points back (a
# test cell marked as a solution), a copied and pasted cell and a cell with an unknown grade_id
# are graded as plain cells.
c.Autograde.sanitize_preprocessors = [
    CleanMetadata,
    ClearOutput,
    DeduplicateIds,
    OverwriteKernelspec,
    RestoreMissingCells,
    CheckCellMetadata,
]
c.OverwriteCells.add_missing_cells = True  # a deleted test cell is put back and run

# Seconds per cell. A cell still running after this (a `while True:` in an exercise) is
# interrupted and recorded as an error: its test scores 0 and grading goes on with the next
# cell. In the "ci" profile (nbgrader sets NBGRADER_EXECUTION; course.py also sets
# SSLKIT_PROFILE=ci) the slowest cell of 04_simclr takes about 30 s on a busy 2-core machine.
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True
# nbgrader's execution steps, with Execute replaced by CappedExecute (capped_output.py): a cell
# that prints without end keeps 5 MiB of output, not gigabytes in nbgrader's memory.
c.Autograde.autograde_preprocessors = [
    CappedExecute,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
c.CappedExecute.max_output_bytes = 5 * 1024 * 1024

# ---------------------------------------------------------------------------------------------
# The sandbox: student code runs in a bubblewrap sandbox (sandbox.py, README "The sandbox")
# ---------------------------------------------------------------------------------------------

# Every notebook nbgrader executes (autograde, and anything else run with this configuration)
# gets the kernel of kernels/sslkit-sandbox, which starts ipykernel inside bwrap with no
# network, no view of this folder and resource limits. The kernel has no network, so it talks
# to nbgrader over unix sockets (jupyter_client's ipc transport) instead of TCP.
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    [HERE, *filter(None, os.environ.get("JUPYTER_PATH", "").split(os.pathsep))]
)
c.Execute.kernel_name = "sslkit-sandbox"
c.KernelManager.transport = "ipc"
# The sockets' path prefix (jupyter_client adds -1, -2, ...): absolute, since the kernel starts
# in another folder, and one per nbgrader process, since parallel graders pick the same numbers.
c.KernelManager.ip = os.path.join(tempfile.gettempdir(), f"sslkit-kernel-{os.getpid()}")

# Feedback shows each test's score and failure message, not the hidden tests' code.
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
