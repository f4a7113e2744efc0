"""The operators on per-tile key spaces (see spaces.py for the primitives).

For ``(hull, core)`` pairs: ``A | B`` unites both; ``A & B`` intersects both; ``A - B`` has
hull ``hull(A) minus core(B)`` (keys every row of the tile gives to B cannot be in A - B)
and core ``core(A) minus hull(B)``.  Every rule keeps "hull is a superset, core a subset".
"""
from __future__ import annotations

from .. import ir
from . import intervals as iv
from .context import Context
from .spaces import band, join, meet, primitive
from .views import Geom


def _norm(ivs):
    out = []
    for a, b in sorted(ivs):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _inter(x, y):
    return _norm([(max(a, c), min(b, d)) for a, b in x for c, d in y if max(a, c) <= min(b, d)])


def _minus(x, y):
    out = x
    for c, d in y:
        nxt = []
        for a, b in out:
            if d < a or c > b:
                nxt.append((a, b))
                continue
            if a < c:
                nxt.append((a, c - 1))
            if d < b:
                nxt.append((d + 1, b))
        out = nxt
    return _norm(out)


def diagonals(e: ir.Expr, n: int):
    """The set of differences ``q - k`` of an expression made only of diagonal bands
    (``all``, ``causal``, ``local``, contiguous ``slash`` offsets and their operators), as
    sorted inclusive intervals; None for anything else.  Band algebra is exact where the
    hull/core rules are not: ``causal - local(100)`` is the band ``q - k >= 101``."""
    big = max(n, 1)
    if isinstance(e, ir.All) or (isinstance(e, ir.Stride) and e.step == 1):
        return [(-big, big)]
    if isinstance(e, ir.Nothing):
        return []
    if isinstance(e, ir.Causal):
        return [(0, big)]
    if isinstance(e, ir.Local):
        return [(-min(e.right, big), min(e.left, big))]
    if isinstance(e, ir.Dilated) and e.dilation == 1:
        w = min(e.width, big)
        return [(-w, w)]
    if isinstance(e, ir.Slash):
        progs = ctx_offsets(e, n)
        if all(s == 1 for _, _, s in progs):
            return _norm([(a, b - 1) for a, b, _ in progs])
        return None
    if isinstance(e, (ir.Union, ir.Intersect, ir.Difference)):
        kids = [diagonals(c, n) for c in e.children()]
        if any(k is None for k in kids):
            return None
        if isinstance(e, ir.Union):
            return _norm([iv_ for k in kids for iv_ in k])
        if isinstance(e, ir.Intersect):
            out = kids[0]
            for k in kids[1:]:
                out = _inter(out, k)
            return out
        return _minus(kids[0], kids[1])
    return None


def ctx_offsets(e: ir.Slash, n: int):
    from .indexsets import resolve_offsets
    return resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1))


def spaces_of(e: ir.Expr, g: Geom, ctx: Context):
    """``(hull, core)`` interval sets ``[T, K]`` in class-local key indices."""
    if isinstance(e, (ir.Union, ir.Intersect, ir.Difference)):
        d = diagonals(e, ctx.n)
        if d is not None:
            if not d:
                return iv.empty(g.T), iv.empty(g.T)
            out = band(g, *d[0])
            for lo, hi in d[1:]:
                out = join(out, band(g, lo, hi))
            return out
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


def tile_spaces(e: ir.Expr, g: Geom, ctx: Context, clip: bool = True):
    """Spaces clipped to the key class and emptied for query tiles without valid rows
    (``clip=False`` leaves both to the caller: `runs.tile_runs` does them elementwise)."""
    if not clip and isinstance(e, ir.Union) and diagonals(e, ctx.n) is None:
        # The caller (tile_runs) merges after rounding anyway: at the top, a union only
        # needs its terms' intervals in position order, not merged.
        hull, core = spaces_of(e.terms[0], g, ctx)
        for t in e.terms[1:]:
            h2, c2 = spaces_of(t, g, ctx)
            hull, core = iv.interleave(hull, h2), iv.interleave(core, c2)
        return hull, core
    hull, core = spaces_of(e, g, ctx)
    if not clip:
        return hull, core
    zero = g.kcount * 0
    hull = iv.clip(hull, zero, g.kcount)
    core = iv.clip(core, zero, g.kcount)
    if not bool(g.valid.all()):
        hull = iv.choose(g.valid, hull, iv.empty(g.T))
        core = iv.choose(g.valid, core, iv.empty(g.T))
    return hull, core
