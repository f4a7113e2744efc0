"""Index sets (``rows``/``cols``/``global``) and offset sets (``slash``) as progressions.

A resolved set is a tuple of ascending arithmetic progressions ``(start, stop, step)``
with ``start < stop`` and ``stop == last + 1`` (so equal sets of one progression compare
equal).  ``x`` is in ``(start, stop, step)`` iff ``start <= x < stop`` and
``(x - start) % step == 0``.  Kernels test membership with exactly that formula.
"""
from __future__ import annotations

from functools import lru_cache

from .runtime import Prog, _clip, _prog, crt, resolve_index, resolve_offsets  # noqa: F401


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
