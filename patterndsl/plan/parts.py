"""Splitting a pattern into disjoint parts, each executed in the view that suits it.

``split`` maps an expression to ``{ViewKind: Expr}`` whose union is the expression:
congruence terms prefer residue views (docs/PLAN.md, section 4), everything else the
identity view.  ``disjoint_parts`` orders the views (identity first) and makes them
disjoint: part ``i`` is ``E_i - (E_1 | ... | E_{i-1})`` (earlier pieces restricted to other
rows left out).  Single index positions in arithmetic progression are planned as that
progression (``coalesce``).  The code lives in
:mod:`.runtime` (shared with generated kernel modules); here it builds ``ir`` nodes.
"""
from __future__ import annotations

from .. import ir
from . import runtime as _rt
from .runtime import (COALESCE, MIN_CLASS, SHORT_ROWS, coalesce, extent, few_diagonals,  # noqa: F401
                      transpose_kind)


def split(e: ir.Expr, n: int) -> dict:
    """``{ViewKind: Expr}``: pieces whose union is ``e``, keyed by preferred view."""
    return _rt.split(e, n, ir)


def disjoint_parts(e: ir.Expr, n: int) -> list:
    """``[(view, predicate)]``: disjoint, their union is ``e``."""
    return _rt.disjoint_parts(e, n, ir)
