"""Splitting a pattern into disjoint parts, each executed in the view that suits it.

``split`` maps an expression to ``{ViewKind: Expr}`` whose union is the expression:
congruence terms prefer residue views (docs/PLAN.md, section 4), everything else the
identity view.  ``parts`` orders the views (identity first) and makes them disjoint:
part ``i`` is ``E_i - (E_1 | ... | E_{i-1})``.
"""
from __future__ import annotations

from .. import ir
from dataclasses import replace

from .arith import crt
from .indexsets import resolve_index, resolve_offsets
from .views import IDENTITY, ViewKind

# A residue view needs classes long enough to fill a minimal tile.
MIN_CLASS = 16
# Row sets at most this long run as parts of their own (a global token's row, say).
SHORT_ROWS = 32


def _fits(s: int, n: int) -> bool:
    """A diagonal residue view needs classes long enough to fill a minimal tile (its query
    tiles would otherwise hold a few rows each)."""
    return 1 < s and s * MIN_CLASS <= n


def _fits_axis(s: int, n: int) -> bool:
    """Key (or query) residue views only permute one axis: any period below n pays, since the
    other axis keeps full tiles and the permuted one needs a single tile per class."""
    return 1 < s < n


def _combine(a: ViewKind, b: ViewKind, n: int):
    """The view for ``A & B``; None when their constraints cannot hold together."""
    lo = max((x for x in (a.qlo, b.qlo) if x is not None), default=None)
    hi = min((x for x in (a.qhi, b.qhi) if x is not None), default=None)
    if lo is not None and hi is not None and lo >= hi:
        return None
    v = _combine_kind(a, b, n)
    return None if v is None else replace(v, qlo=lo, qhi=hi)


def _combine_kind(a: ViewKind, b: ViewKind, n: int):
    if a.kind == "id":
        return b
    if b.kind == "id":
        return a
    if a.kind == b.kind:
        c = crt(a.r, a.s, b.r, b.s)
        if c is None:
            return None
        r, m = c
        if (_fits if a.kind == "d" else _fits_axis)(m, n):
            return ViewKind(a.kind, m, r)
        return a if a.s >= b.s else b
    rank = {"d": 0, "k": 1, "q": 2}
    return a if rank[a.kind] < rank[b.kind] else b


def _row_groups(progs, n: int):
    """Rows of an index set by view: short runs of rows get a query view of their own (a
    kernel then runs those rows alone, not whole query tiles of them); stepped items a
    residue view; long runs stay in the identity view."""
    out: dict = {}
    plain = sorted((a, b) for a, b, s in progs if s == 1)
    merged: list[list[int]] = []
    for a, b in plain:
        if merged and a - merged[-1][1] <= MIN_CLASS:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in merged:
        items = [p for p in progs if p[2] == 1 and a <= p[0] and p[1] <= b]
        v = ViewKind("id", qlo=a, qhi=b) if b - a <= SHORT_ROWS else IDENTITY
        out.setdefault(v, []).extend(items)
    for p in progs:
        if p[2] > 1:
            v = ViewKind("q", p[2], p[0] % p[2], p[0], p[1]) if _fits_axis(p[2], n) else IDENTITY
            out.setdefault(v, []).append(p)
    return {v: ir.Rows(_items(ps)) for v, ps in out.items()}


def _items(progs):
    return ir.IndexSet(tuple(ir.Slice(a, b, s) for a, b, s in progs))


def _by_step(progs, n: int, kind: str, make):
    out: dict = {}
    for p in progs:
        start, stop, step = p
        fits = _fits(step, n) if kind == "d" else _fits_axis(step, n)
        v = ViewKind(kind, step, start % step) if step > 1 and fits else IDENTITY
        out.setdefault(v, []).append(p)
    return {v: make(_items(ps)) for v, ps in out.items()}


def _union(a: ir.Expr | None, b: ir.Expr) -> ir.Expr:
    return b if a is None else ir.Union((a, b))


def _merge(into: dict, other: dict) -> dict:
    out = dict(into)
    for v, e in other.items():
        out[v] = _union(out.get(v), e)
    return out


def split(e: ir.Expr, n: int) -> dict:
    """``{ViewKind: Expr}``: pieces whose union is ``e``, keyed by preferred view."""
    out = _split(e, n)
    if len(out) == 1:
        return {next(iter(out)): e}  # keep the written expression when nothing moves
    return out


def _split(e: ir.Expr, n: int) -> dict:
    if isinstance(e, ir.Stride):
        return {ViewKind("d", e.step, 0) if _fits(e.step, n) else IDENTITY: e}
    if isinstance(e, ir.Dilated):
        return {ViewKind("d", e.dilation, 0) if _fits(e.dilation, n) else IDENTITY: e}
    if isinstance(e, ir.Every):
        return {ViewKind("k", e.step, e.offset) if _fits_axis(e.step, n) else IDENTITY: e}
    if isinstance(e, ir.Slash):
        return _by_step(resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1)), n, "d", ir.Slash) or {IDENTITY: e}
    if isinstance(e, ir.Cols):
        return _by_step(resolve_index(e.index, n), n, "k", ir.Cols) or {IDENTITY: e}
    if isinstance(e, ir.Rows):
        return _row_groups(resolve_index(e.index, n), n) or {IDENTITY: e}
    if isinstance(e, ir.Global):
        progs = resolve_index(e.index, n)
        rows = _row_groups(progs, n)
        if list(rows) == [IDENTITY] and all(s == 1 or not _fits_axis(s, n) for _, _, s in progs):
            return {IDENTITY: e}
        return _merge(rows, _by_step(progs, n, "k", ir.Cols))
    if isinstance(e, ir.Union):
        out: dict = {}
        for t in e.terms:
            out = _merge(out, split(t, n))
        return out
    if isinstance(e, ir.Intersect):
        acc = split(e.terms[0], n)
        for t in e.terms[1:]:
            nxt: dict = {}
            for v2, e2 in split(t, n).items():
                for v1, e1 in acc.items():
                    v = _combine(v1, v2, n)
                    if v is not None:
                        nxt[v] = _union(nxt.get(v), ir.Intersect((e1, e2)))
            acc = nxt
        return acc or {IDENTITY: ir.Nothing()}
    if isinstance(e, ir.Difference):
        return {v: ir.Difference(x, e.right) for v, x in split(e.left, n).items()}
    return {IDENTITY: e}


def disjoint_parts(e: ir.Expr, n: int) -> list[tuple[ViewKind, ir.Expr]]:
    """``[(view, predicate)]``: disjoint, their union is ``e``."""
    pieces = sorted(split(e, n).items(), key=lambda kv: kv[0].order())
    out = []
    seen: ir.Expr | None = None
    for v, x in pieces:
        out.append((v, x if seen is None else ir.Difference(x, seen)))
        seen = _union(seen, x)
    return out


def transpose_kind(v: ViewKind) -> ViewKind:
    """The view of the transposed problem (rows are keys, columns are queries)."""
    if v.kind == "d":
        return ViewKind("d", v.s, (-v.r) % v.s)
    if v.kind == "k":
        return ViewKind("q", v.s, v.r)
    if v.kind == "q":
        return ViewKind("k", v.s, v.r)
    return IDENTITY


def extent(e: ir.Expr, sk: int, n: int):
    """How many key-class diagonals a row of ``e`` may span (int), None when unbounded,
    "cols" when ``e`` is made of row/column/group pieces that tiles align with anyway."""
    def band(w):
        return max(1, -(-w // sk))
    if isinstance(e, ir.Local):
        return band(min(e.left, n) + min(e.right, n) + 1)
    if isinstance(e, ir.Dilated):
        return band(1 if e.dilation >= n else 2 * min(e.width * e.dilation, n) + 1)
    if isinstance(e, ir.Stride) and e.step >= n:
        return 1   # only the diagonal q == k
    if isinstance(e, ir.Slash):
        progs = resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1))
        if not progs:
            return "cols"
        return band(max(p[1] for p in progs) - min(p[0] for p in progs))
    if isinstance(e, (ir.All, ir.Causal, ir.Stride)):
        return None
    if isinstance(e, ir.Intersect):
        xs = [extent(t, sk, n) for t in e.terms]
        bounded = [x for x in xs if isinstance(x, int)]
        if bounded:
            return min(bounded)
        return None if any(x is None for x in xs) else "cols"
    if isinstance(e, ir.Union):
        xs = [extent(t, sk, n) for t in e.terms]
        if any(x is None for x in xs):
            return None
        bounded = [x for x in xs if isinstance(x, int)]
        return max(bounded) if bounded else "cols"
    if isinstance(e, ir.Difference):
        return extent(e.left, sk, n)
    return "cols"
