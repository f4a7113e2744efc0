"""Index sets (``rows``/``cols``/``global``) and offset sets (``slash``) as progressions.

A resolved set is a tuple of ascending arithmetic progressions ``(start, stop, step)``
with ``start < stop`` and ``stop == last + 1`` (so equal sets of one progression compare
equal).  ``x`` is in ``(start, stop, step)`` iff ``start <= x < stop`` and
``(x - start) % step == 0``.  Kernels test membership with exactly that formula.
"""
from __future__ import annotations

from functools import lru_cache

from .. import ir
from ..errors import PsparseUsageError
from .arith import crt

Prog = tuple  # (start, stop, step)


def _prog(r: range) -> Prog | None:
    """``range`` -> ascending canonical progression, or None when empty."""
    if len(r) == 0:
        return None
    first, last = (r[0], r[-1]) if r.step > 0 else (r[-1], r[0])
    step = abs(r.step) if len(r) > 1 else 1
    return (first, last + 1, step)


def _clip(p: Prog, lo: int, hi: int) -> Prog | None:
    """Elements of ``p`` in ``[lo, hi)``."""
    start, stop, step = p
    if start < lo:
        start += -(-(lo - start) // step) * step
    stop = min(stop, hi)
    if start >= stop:
        return None
    last = start + (stop - 1 - start) // step * step
    return (start, last + 1, step if last > start else 1)


@lru_cache(maxsize=1024)
def resolve_index(index: ir.IndexSet, n: int) -> tuple[Prog, ...]:
    """The positions an index set selects at length ``n`` (LANGUAGE.md: Python slice rules;
    a negative integer ``i`` is ``n + i``; out-of-range integers select nothing)."""
    out = []
    for item in index.items:
        if isinstance(item, ir.Slice):
            if item.step == 0:
                raise PsparseUsageError("a slice step of 0 selects nothing meaningful; use a step >= 1 or <= -1")
            p = _prog(range(n)[slice(item.start, item.stop, item.step)])
        else:
            i = item + n if item < 0 else item
            p = (i, i + 1, 1) if 0 <= i < n else None
        if p is not None:
            out.append(p)
    return tuple(out)


@lru_cache(maxsize=1024)
def resolve_offsets(offsets: ir.IndexSet, lo: int, hi: int) -> tuple[Prog, ...]:
    """The literal offsets of ``slash(O)`` inside ``[lo, hi)`` (never resolved against n)."""
    out = []
    for item in offsets.items:
        if isinstance(item, ir.Slice):
            if item.start is None or item.stop is None:
                raise PsparseUsageError("a slash offset slice needs both ends (a:b or a:b:c)")
            if item.step == 0:
                raise PsparseUsageError("a slice step of 0 selects nothing meaningful")
            p = _prog(range(item.start, item.stop, item.step or 1))
        else:
            p = (item, item + 1, 1)
        if p is not None:
            p = _clip(p, lo, hi)
        if p is not None:
            out.append(p)
    return tuple(out)


def intersect(p: Prog, q: Prog) -> Prog | None:
    c = crt(p[0] % p[2], p[2], q[0] % q[2], q[2])
    if c is None:
        return None
    r, m = c
    lo, hi = max(p[0], q[0]), min(p[1], q[1])
    if lo >= hi:
        return None
    first = lo + (r - lo) % m
    return _clip((first, hi, m), lo, hi) if first < hi else None


@lru_cache(maxsize=1024)
def signed_disjoint(progs: tuple[Prog, ...]) -> tuple[tuple[int, Prog], ...]:
    """A signed sum of progressions whose indicator is the union's indicator.

    Step-1 pieces (ranges and single indices, the common case) are merged into disjoint
    intervals first; stepped progressions join by inclusion-exclusion, keeping only
    non-empty intersections, so a set of disjoint items stays linear in size."""
    plain = sorted((p[0], p[1]) for p in progs if p[2] == 1)
    merged: list[list[int]] = []
    for a, b in plain:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    terms: dict[Prog, int] = {(a, b, 1): 1 for a, b in merged}
    for p in (p for p in progs if p[2] > 1):
        new = dict(terms)
        new[p] = new.get(p, 0) + 1
        for t, c in terms.items():
            x = intersect(t, p)
            if x is not None:
                new[x] = new.get(x, 0) - c
        terms = {t: c for t, c in new.items() if c}
    return tuple((c, t) for t, c in terms.items())
