"""Block plans: which (query, key) tiles a kernel computes, in closed form.

``build_plan(spec_or_expr, n, **options) -> Plan`` (also ``Spec.plan``).  docs/PLAN.md
specifies the structure.  The closed-form planner itself is ``runtime`` (torch, math and the
standard library only), which generated kernel modules inline verbatim (docs/PLAN.md,
section 7); the modules below re-export its pieces or add what only the package needs:

* ``views``: residue-class layouts of an axis (``View``, ``ViewKind``, ``Geom``);
* ``spaces`` / ``combine`` / ``intervals``: per-tile key spaces of primitives and operators;
* ``runs``: key spaces -> runs of key tiles, flagged full or partial;
* ``parts``: splitting a pattern into disjoint parts by preferred view;
* ``tiles``: the tile choice rule;
* ``atoms`` / ``arith`` / ``accounting``: exact pair counts in closed form, work accounting;
* ``layout``: exact tile classes of the plain tiling, FlexAttention interop;
* ``tables`` / ``context`` / ``blockwise`` / ``indexsets``: random tables, documents, groups;
* ``predicate``: the element predicate kernels evaluate on partial tiles;
* ``transpose``: the transposed pattern, for key-major backward loops.
"""
from __future__ import annotations

from .builder import build_plan, clear_cache
from .context import Context
from .layout import Layout
from .model import Part, Plan, TransposedRuns
from .predicate import evaluate, tile_mask
from .views import View, ViewKind

__all__ = ["build_plan", "clear_cache", "Plan", "Part", "TransposedRuns", "Layout", "View", "ViewKind",
           "Context", "evaluate", "tile_mask"]
