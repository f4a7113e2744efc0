"""A spec line with dynamic terms as one static part plus one table part per term.

For an expression ``E`` that is monotone in its dynamic terms ``d_1 .. d_m`` (none of them
on the right of ``-``: then allowing more pairs in a term never removes a pair from ``E``):

* ``E0 = E[d := nothing]`` is static: it is planned and launched as any static pattern
  (closed-form runs, residue views);
* part ``i`` is ``P_i = (E & d_i) - (E0 | d_1 | .. | d_{i-1})``.  The parts are pairwise
  disjoint and, with ``E0``, cover ``E`` exactly (a pair of ``E`` outside ``E0`` needs some
  ``d_j``, and the first such ``j`` owns it), so they merge by log-sum-exp like plan parts.
  ``P_i`` is evaluated per element with the dynamic atoms read from per-call tables; the
  key tiles it visits come from ``d_i``'s selection, clipped by the key interval of
  ``hull_i = E[d_i := all, d_j := nothing (j < i), d_j := all (j > i)]`` (a static
  superset of ``P_i``, see :func:`key_interval`).

A non-monotone line (``causal - vertical(topk=4)``) has no such split: :func:`split` returns
None and the caller substitutes each head's choice instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ir

__all__ = ["DynamicSplit", "TablePartSpec", "split", "is_monotone", "key_interval"]


@dataclass(frozen=True)
class TablePartSpec:
    """Part ``i`` of a split: the term that drives its tiles, its exact predicate (with
    dynamic leaves), the static hull its visited keys are clipped to, and ``visit``: the
    predicate without the atom ``d_i`` itself, equal to ``predicate`` on every pair where
    ``d_i`` holds (the gathered columns of a ``vertical`` term, the chosen blocks of a
    ``blocks`` term), so kernels that visit only such pairs evaluate less."""

    term: ir.Expr
    predicate: ir.Expr
    hull: ir.Expr
    visit: ir.Expr


@dataclass(frozen=True)
class DynamicSplit:
    static: ir.Expr                     # E0 (ir.Nothing when nothing is static)
    parts: tuple[TablePartSpec, ...]
    terms: tuple[ir.Expr, ...]          # the distinct dynamic terms, in walk order


def _dynamic_in(e: ir.Expr) -> bool:
    return e.is_dynamic


def is_monotone(expr: ir.Expr) -> bool:
    """No dynamic term below the right side of a ``-``."""
    for node in expr.walk():
        if isinstance(node, ir.Difference) and _dynamic_in(node.right):
            return False
    return True


def _replace(e: ir.Expr, values: dict) -> ir.Expr:
    if isinstance(e, ir.DYNAMIC_TYPES):
        return values[e]
    if isinstance(e, (ir.Union, ir.Intersect)):
        return type(e)(tuple(_replace(t, values) for t in e.terms))
    if isinstance(e, ir.Difference):
        return ir.Difference(_replace(e.left, values), _replace(e.right, values))
    return e


def _simplify(e: ir.Expr) -> ir.Expr:
    """Constant folding of ``all``/``nothing`` (the canonical passes do the rest)."""
    from ..passes import canonicalize_expr
    return canonicalize_expr(e)


def _terms(expr: ir.Expr) -> tuple[ir.Expr, ...]:
    seen: dict[ir.Expr, None] = {}
    for node in expr.walk():
        if isinstance(node, ir.DYNAMIC_TYPES):
            seen.setdefault(node, None)
    return tuple(seen)


def split(expr: ir.Expr) -> DynamicSplit | None:
    """The static part and the table parts of ``expr`` (None if it is not monotone)."""
    expr = ir.strip_spans(expr)
    if not is_monotone(expr):
        return None
    terms = _terms(expr)
    nothing, everything = ir.Nothing(), ir.All()
    static = _simplify(_replace(expr, {t: nothing for t in terms}))
    parts = []
    for i, term in enumerate(terms):
        before = terms[:i]
        hull = _simplify(_replace(expr, {t: (nothing if j < i else everything)
                                         for j, t in enumerate(terms)}))
        if isinstance(hull, ir.Nothing):
            continue
        # Where d_i holds and no earlier d_j does, E equals E[d_i := all, d_j := nothing]:
        # often much simpler (causal & (A | d_1 | d_2) -> causal).
        core = _simplify(_replace(expr, {t: (nothing if j < i else everything if j == i else t)
                                         for j, t in enumerate(terms)}))
        taken = [t for t in (static, *before) if not isinstance(t, ir.Nothing)]
        away = None if not taken else taken[0] if len(taken) == 1 else ir.Union(tuple(taken))

        def minus(e):
            return e if away is None else ir.Difference(e, away)
        owned = term if isinstance(core, ir.All) else ir.Intersect((core, term))
        pred = _simplify(minus(owned))
        visit = _simplify(minus(core))
        parts.append(TablePartSpec(term, pred, hull, visit))
    return DynamicSplit(static, tuple(parts), terms)


# ---------------------------------------------------------------------------
# Key intervals of a static hull, per query tile
# ---------------------------------------------------------------------------

def key_interval(e: ir.Expr, qlo: torch.Tensor, qhi: torch.Tensor, n: int):
    """``(lo, hi)`` int64 tensors like ``qlo``: every key ``k`` that ``e`` allows for some
    query position in ``[qlo, qhi]`` (inclusive) lies in ``[lo, hi)``.  Exact for bands,
    sinks and prefixes, the whole ``[0, n)`` for anything else (always a superset)."""
    zero = torch.zeros_like(qlo)
    full = (zero, zero + n)
    if isinstance(e, ir.Nothing):
        return zero, zero
    if isinstance(e, ir.Causal):
        return zero, (qhi + 1).clamp(max=n)
    if isinstance(e, ir.Local):
        l, r = min(e.left, n), min(e.right, n)
        return (qlo - l).clamp(min=0, max=n), (qhi + r + 1).clamp(min=0, max=n)
    if isinstance(e, ir.Sink):
        return zero, zero + min(e.count, n)
    if isinstance(e, ir.Prefix):
        p = min(e.length, n)
        hi = torch.where(qlo < p, zero + p, zero)
        return zero, hi
    if isinstance(e, ir.Intersect):
        lo, hi = full
        for t in e.terms:
            a, b = key_interval(t, qlo, qhi, n)
            lo, hi = torch.maximum(lo, a), torch.minimum(hi, b)
        return lo, torch.maximum(hi, lo)
    if isinstance(e, ir.Union):
        lo, hi = None, None
        for t in e.terms:
            a, b = key_interval(t, qlo, qhi, n)
            empty = b <= a
            a = torch.where(empty, zero + n, a)
            b = torch.where(empty, zero, b)
            lo = a if lo is None else torch.minimum(lo, a)
            hi = b if hi is None else torch.maximum(hi, b)
        return lo, torch.maximum(hi, lo)
    if isinstance(e, ir.Difference):
        return key_interval(e.left, qlo, qhi, n)
    return full
