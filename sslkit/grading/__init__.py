"""What the notebooks' test cells call: seeded cases, comparison with the sslkit reference, and
failures that say what was expected and what came back.

Every graded exercise has one check, ``check_<exercise>(answer, hidden=False)``:

* ``hidden=False`` (the visible test cell): one or two small cases, fast, readable.
* ``hidden=True`` (the hidden test cell): more seeds and shapes, gradients, invariances, and a
  delegation guard. Students have sslkit installed, so an answer that only calls the reference
  would pass every numerical test; while the student's function runs, the references it could
  call are therefore swapped for stand-ins that raise.

A failed check raises ``AssertionError`` with a one-line message; nothing is printed.

One module per notebook holds its checks: ``pretext`` and ``reconstruction`` (01), ``triplet``
(02), ``infonce`` (03), ``simclr`` (04), ``moco`` (05), ``dino`` (06), ``mae`` (07),
``cpc`` (08), ``evaluation`` (09). The shared pieces, the delegation guard among them, are in
``sslkit.grading.guard``. A notebook imports its module (``from sslkit.grading import triplet
as grading``); 04's checks are also re-exported here.
"""

from sslkit.grading.simclr import (
    check_build_augmentation,
    check_nt_xent,
    check_nt_xent_loop,
    check_simclr_step,
    check_similarity_matrix,
)

__all__ = [
    "check_build_augmentation",
    "check_nt_xent",
    "check_nt_xent_loop",
    "check_simclr_step",
    "check_similarity_matrix",
]
