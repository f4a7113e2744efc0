"""``kv = auto``: which stored keys some present or future query may still attend.

At logical length ``n`` the stored keys are ``0 .. n-1`` and the queries still to come are
``q = n-1, n, n+1, ...``, each a decode step resolved against its own call's ``n' = q + 1``
(LANGUAGE.md "Positions").  For every pattern node this module derives, without looking at
any data, a rule ``keep(k, n)`` that is true for every stored key such a query may attend,
and a static ``bound``: the most keys ``keep`` holds at any ``n`` (``None`` when the count
grows with the context, i.e. keys stay reachable forever).

The rule is always a superset of the keys really needed (so decoding over the kept keys is
lossless); ``exact`` says it is also no larger.  It is exact for unions of exact terms and
for intersections/differences where the other operands are *fixed*: terms whose verdict on a
stored key is the same for every future query (``causal``, ``all``, ``sink``, ``every``,
``cols`` with non-negative items).  That covers bands, sinks, blocks, dilated and slash
windows, prefixes, rows and columns with fixed indices, and ``blockwise`` over any of them.
``random``, ``document`` and the data-dependent terms keep every key (not exact: a key's
reachability there depends on draws or data the analysis does not see).

``keep`` is evaluated on int64 tensors of positions with elementwise operators only, so this
module does not import torch (the front end must not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .. import ir

__all__ = ["Reach", "analyze", "auto_bound"]

# Rows' query-side test scans future queries up to the point where the index set becomes
# periodic; a period longer than this is treated as "hit" (a superset, still lossless).
_MAX_SCAN = 1 << 16


@dataclass(frozen=True)
class Reach:
    """The stored keys a pattern may still attend.

    ``keep(k, n)``: bool tensor like ``k`` (int64 positions, all ``< n``);
    ``bound``: the most keys kept per head at any ``n``, ``None`` when unbounded;
    ``exact``: ``keep`` is exactly the needed set, not only a superset;
    ``fixed``: for stored keys the pattern's verdict is ``keep(k, n)`` for every future
    query and independent of ``n`` (what lets intersections and differences stay exact);
    ``why``: for an unbounded rule, the term that keeps keys forever."""

    keep: Callable
    bound: int | None
    exact: bool = True
    fixed: bool = False
    why: str = ""


def _true(k, n):
    return k == k


def _false(k, n):
    return k != k


def _window(w: int) -> Callable:
    """The last ``w`` positions ``[n - w, n)``."""
    return lambda k, n: k >= n - w


_ALL_FIXED = Reach(_true, None, fixed=True, why="all")


def _everything(why: str, exact: bool) -> Reach:
    return Reach(_true, None, exact=exact, why=why)


# ---------------------------------------------------------------------------
# Index sets
# ---------------------------------------------------------------------------

def _col_item(item) -> Reach:
    """``k`` in one item of ``cols(I)`` resolved against some ``n' >= n`` (``n' > k``)."""
    if not isinstance(item, ir.Slice):
        if item >= 0:
            return Reach(lambda k, n, i=item: k == i, 1, fixed=True)
        # n' + i for n' >= n: exactly the last -i positions.
        return Reach(_window(-item), -item)
    a, b, c = item.start, item.stop, item.step or 1
    if c > 0 and (a is None or a >= 0) and (b is None or b >= 0):
        # range(n')[a:b:c] for k < n' is range(a, b, c) itself: no dependence on n'.
        a = a or 0

        def keep(k, n, a=a, b=b, c=c):
            m = k >= a
            if b is not None:
                m = m & (k < b)
            if c > 1:
                m = m & ((k - a) % c == 0)
            return m
        count = None if b is None else len(range(a, b, c))
        return Reach(keep, count, fixed=True, why="" if count is not None else "cols(open slice)")
    if c > 0 and a is not None and a < 0 and b is None:
        # range(n')[a::c] starts at n' + a, and n' may be any of n, n+1, ...: the key k is
        # the start for n' = k - a, so exactly the last -a positions are reachable.
        return Reach(_window(-a), -a)
    return _everything("cols(slice resolved against a growing n)", exact=False)


def _union(parts: list[Reach]) -> Reach:
    if not parts:
        return Reach(_false, 0, fixed=True)

    def keep(k, n):
        m = parts[0].keep(k, n)
        for p in parts[1:]:
            m = m | p.keep(k, n)
        return m
    bounds = [p.bound for p in parts]
    unbounded = [p.why for p in parts if p.bound is None]
    return Reach(keep, None if unbounded else sum(bounds), exact=all(p.exact for p in parts),
                 fixed=all(p.fixed for p in parts), why=unbounded[0] if unbounded else "")


def _index_literals(index: ir.IndexSet) -> tuple[int, int]:
    """(largest magnitude of a literal, lcm of the steps) of an index set."""
    big, period = 0, 1
    for item in index.items:
        if isinstance(item, ir.Slice):
            for x in (item.start, item.stop):
                if x is not None:
                    big = max(big, abs(x))
            period = math.lcm(period, abs(item.step or 1))
        else:
            big = max(big, abs(item))
    return big, period


def _row_hits(index: ir.IndexSet, q: int) -> bool:
    """Whether query ``q`` (resolved against ``n' = q + 1``) is in ``I``."""
    n = q + 1
    for item in index.items:
        if isinstance(item, ir.Slice):
            if q in range(n)[slice(item.start, item.stop, item.step)]:
                return True
        elif (item + n if item < 0 else item) == q:
            return True
    return False


@lru_cache(maxsize=256)
def _rows_info(index: ir.IndexSet) -> tuple[bool, int, int, int]:
    """(periodic hit, scan end, last hit below it or -1, limit) for ``rows(I)``.

    Past every literal's magnitude, whether ``q`` is in ``I`` resolved against ``q + 1``
    depends only on ``q`` modulo the steps' lcm, so one period past the literals decides
    all larger queries."""
    big, period = _index_literals(index)
    if period > _MAX_SCAN:
        return True, 0, -1, 0
    start = big + 2
    end = start + 2 * period
    periodic = any(_row_hits(index, q) for q in range(start, end))
    last = -1
    if not periodic:
        last = max((q for q in range(start) if _row_hits(index, q)), default=-1)
    return periodic, end, last, start


def _rows_reach(index: ir.IndexSet) -> Reach:
    periodic, end, last, start = _rows_info(index)

    def hit(n: int) -> bool:
        if periodic and n - 1 >= start:
            return True
        if not periodic and n - 1 > last:
            return False
        return any(_row_hits(index, q) for q in range(n - 1, max(n - 1, end) + 1))

    def keep(k, n):
        return _true(k, n) if hit(n) else _false(k, n)
    if periodic:
        return Reach(keep, None, why="rows (some query row in every later step)")
    return Reach(keep, last + 1)


# ---------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------

@lru_cache(maxsize=1024)
def analyze(e: ir.Expr) -> Reach:
    """The ``Reach`` of a pattern expression (see the module docstring)."""
    if isinstance(e, (ir.All, ir.Causal)):
        # Every stored key is <= every future query: causal allows all of them, always.
        return Reach(_true, None, fixed=True, why=type(e).__name__.lower())
    if isinstance(e, ir.Nothing):
        return Reach(_false, 0, fixed=True)
    if isinstance(e, ir.Local):
        return Reach(_window(e.left + 1), e.left + 1)
    if isinstance(e, ir.Block):
        b = e.size
        return Reach(lambda k, n: k >= ((n - 1) // b) * b, b)
    if isinstance(e, ir.Stride):
        if e.step == 1:
            return Reach(_true, None, fixed=True, why="stride(1)")
        return _everything(f"stride({e.step})", exact=True)
    if isinstance(e, ir.Dilated):
        # k is reached by q = k + d * ceil((n - 1 - k) / d) whenever n - 1 - k <= w * d.
        reach = e.width * e.dilation + 1
        return Reach(_window(reach), reach)
    if isinstance(e, ir.Every):
        s, o = e.step, e.offset
        return Reach(lambda k, n: k % s == o, None, fixed=True, why=f"every({s})")
    if isinstance(e, ir.Sink):
        m = e.count
        return Reach(lambda k, n: k < m, m, fixed=True)
    if isinstance(e, ir.Cols):
        return _union([_col_item(i) for i in e.index.items])
    if isinstance(e, ir.Rows):
        return _rows_reach(e.index)
    if isinstance(e, ir.Global):
        return _union([_rows_reach(e.index), analyze(ir.Cols(e.index))])
    if isinstance(e, ir.Prefix):
        # Future queries are >= n - 1: while that is below p, every stored key (< n <= p).
        p = e.length
        return Reach(lambda k, n: (k < p) & (k == k) if n <= p else _false(k, n), p)
    if isinstance(e, ir.Slash):
        # q - k = o with q >= max(n - 1, k): keys within the largest offset o >= 0 of n - 1.
        top = -1
        for item in e.offsets.items:
            if isinstance(item, ir.Slice):
                r = range(item.start, item.stop, item.step or 1)
                if len(r):
                    top = max(top, max(r[0], r[-1]))
            else:
                top = max(top, item)
        if top < 0:
            return Reach(_false, 0, fixed=True)
        return Reach(_window(top + 1), top + 1)
    if isinstance(e, ir.Random):
        if e.count == 0:
            return Reach(_false, 0, fixed=True)
        return _everything("random", exact=False)
    if isinstance(e, ir.Document):
        return _everything("document (document ids are not known ahead)", exact=False)
    if isinstance(e, ir.DYNAMIC_TYPES):
        return _everything("a data-dependent term", exact=False)
    if isinstance(e, ir.Blockwise):
        # A decode query q is block q // b resolved against ceil((q + 1) / b) = q // b + 1
        # blocks: the inner pattern sees decode steps over blocks, so its own analysis
        # applies at N = (n - 1) // b + 1 blocks.
        inner, b = analyze(e.expr), e.block
        return Reach(lambda k, n: inner.keep(k // b, (n - 1) // b + 1),
                     None if inner.bound is None else inner.bound * b,
                     exact=inner.exact, fixed=inner.fixed, why=inner.why and f"blockwise({inner.why})")
    if isinstance(e, ir.Union):
        return _union([analyze(t) for t in e.terms])
    if isinstance(e, ir.Intersect):
        parts = [analyze(t) for t in e.terms]

        def keep(k, n):
            m = parts[0].keep(k, n)
            for p in parts[1:]:
                m = m & p.keep(k, n)
            return m
        bounds = [p.bound for p in parts if p.bound is not None]
        loose = sum(not p.fixed for p in parts)
        return Reach(keep, min(bounds) if bounds else None,
                     exact=all(p.exact for p in parts) and loose <= 1,
                     fixed=loose == 0,
                     why="" if bounds else next((p.why for p in parts if not p.fixed), parts[0].why))
    if isinstance(e, ir.Difference):
        left, right = analyze(e.left), analyze(e.right)
        if right.fixed:
            return Reach(lambda k, n: left.keep(k, n) & ~right.keep(k, n), left.bound,
                         exact=left.exact and right.exact, fixed=left.fixed, why=left.why)
        # What the right side removes may differ between future queries: keep the left.
        return Reach(left.keep, left.bound, exact=False, fixed=False, why=left.why)
    raise TypeError(f"not a pattern expression: {e!r}")


def auto_bound(expr: ir.Expr) -> int | None:
    """The most keys ``auto`` keeps per head at any step under ``expr`` (None: unbounded)."""
    return analyze(expr).bound
