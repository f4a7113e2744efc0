"""The operators on per-tile key spaces (see spaces.py for the primitives).

For ``(hull, core)`` pairs: ``A | B`` unites both; ``A & B`` intersects both; ``A - B`` has
hull ``hull(A) minus core(B)`` (keys every row of the tile gives to B cannot be in A - B)
and core ``core(A) minus hull(B)``.  Every rule keeps "hull is a superset, core a subset".
"""
from __future__ import annotations

from .. import ir
from . import intervals as iv
from .context import Context
from .spaces import join, meet, primitive
from .views import Geom


def spaces_of(e: ir.Expr, g: Geom, ctx: Context):
    """``(hull, core)`` interval sets ``[T, K]`` in class-local key indices."""
    if isinstance(e, ir.Union):
        out = spaces_of(e.terms[0], g, ctx)
        for t in e.terms[1:]:
            out = join(out, spaces_of(t, g, ctx))
        return out
    if isinstance(e, ir.Intersect):
        out = spaces_of(e.terms[0], g, ctx)
        for t in e.terms[1:]:
            out = meet(out, spaces_of(t, g, ctx))
        return out
    if isinstance(e, ir.Difference):
        a = spaces_of(e.left, g, ctx)
        b = spaces_of(e.right, g, ctx)
        return iv.difference(a[0], b[1]), iv.difference(a[1], b[0])
    return primitive(e, g, ctx)


def tile_spaces(e: ir.Expr, g: Geom, ctx: Context):
    """Spaces clipped to the key class and emptied for query tiles without valid rows."""
    hull, core = spaces_of(e, g, ctx)
    zero = g.kcount * 0
    hull = iv.clip(hull, zero, g.kcount)
    core = iv.clip(core, zero, g.kcount)
    hull = iv.choose(g.valid, hull, iv.empty(g.T))
    core = iv.choose(g.valid, core, iv.empty(g.T))
    return hull, core
