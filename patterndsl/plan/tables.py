"""Tables for the data-like primitives: random key blocks, document runs, and "groups".

A :class:`Group` describes a primitive that depends on which segment of the query axis a
query falls in: ``block(b)``, ``document``, ``random`` and ``blockwise``.  The query axis
``[0, n)`` is cut into segments; segment ``s`` allows the keys of a few disjoint runs
``[run_lo, run_hi)``.  Both the exact pair counts (atoms.py) and the per-tile key ranges
(spaces.py) read groups, so each of these primitives is lowered once, in O(n / b) or O(n).

The random-block table (``random_table``) lives in :mod:`.runtime` with the rest of the
planner, so generated modules draw it with the same vectorised code.
"""
from __future__ import annotations

from .runtime import (Group, block_group, document_group, document_runs, merge_runs,  # noqa: F401
                      random_group, random_table, runs_group, transposed_random_group)

__all__ = ["random_table", "Group", "block_group", "random_group", "transposed_random_group",
           "document_group", "document_runs", "runs_group", "merge_runs"]
