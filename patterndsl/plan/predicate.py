"""The element predicate of a partial tile: ``evaluate(expr, q, k, ctx) -> bool``.

``q`` and ``k`` are broadcastable int64 tensors of absolute positions.  Only elementwise
torch ops and table lookups are used, with no branching on tensor values, so the same
function serves the torch backend, FlexAttention's vmapped ``mask_mod`` and brute-force
checks.  docs/PLAN.md lists the formula of each node; a Triton code generator emits those.
The code lives in :mod:`.runtime`, shared with generated kernel modules.
"""
from __future__ import annotations

from .runtime import evaluate, tile_mask  # noqa: F401
