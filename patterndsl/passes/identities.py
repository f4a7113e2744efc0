"""Identity and annihilator laws, idempotence, and primitives that degenerate.

Every rewrite here holds pointwise for every (q, k) and every n, whatever the
terms are (random, dynamic and document terms included: each is a fixed
predicate for a given call, so ``A - A`` is empty and ``A | A`` is ``A``).

Set laws: ``A | all = all``, ``A | none = A``, ``A & all = A``,
``A & none = none``, ``A - none = A``, ``A - all = none``, ``none - A = none``,
``A - A = none``, ``all - (all - A) = A``, and duplicate terms of a chain drop.

Degenerate primitives (LANGUAGE.md's definitions at the edge of their ranges):
``stride(1)`` and ``every(1)`` allow every pair; ``sink(0)``, ``prefix(0)``,
``random(0, ...)`` and a slash or index set with no items allow none;
``dilated(w, 1)`` is ``local(w)``, and ``dilated(0, d)`` and ``block(1)`` are the
diagonal ``local(0)``.  For blockwise: block size 1 is the identity map on
positions (and ceil(n / 1) = n); ``all``/``none`` stay themselves on block
numbers; ``blockwise(b, local(0))`` is ``q // b == k // b``, i.e. ``block(b)``;
and nesting composes, since ``(q // b) // c == q // (b * c)`` and
``ceil(ceil(n / b) / c) == ceil(n / (b * c))``.
"""
from __future__ import annotations

from dataclasses import replace

from .. import ir
from ._walk import bottom_up, nary


def _dedupe(terms):
    terms = list(terms)
    out: list[ir.Expr] = []
    if len(terms) <= _SMALL_CHAIN:
        # Comparing a few terms directly is cheaper than hashing each deep term whole
        # (hashes are not cached; equality stops at the first difference).
        for t in terms:
            ty = type(t)
            for o in out:
                if o is t or (type(o) is ty and o == t):
                    break
            else:
                out.append(t)
        return out
    seen: set = set()
    for t in terms:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


_SMALL_CHAIN = 16


def _slash_is_empty(s: ir.Slash) -> bool:
    for item in s.offsets.items:
        if isinstance(item, ir.Slice):
            if len(range(item.start, item.stop, 1 if item.step is None else item.step)):
                return False
        else:
            return False
    return True


def _degenerate(e: ir.Expr) -> ir.Expr:
    if isinstance(e, ir.Stride) and e.step == 1:
        return ir.All(span=e.span)
    if isinstance(e, ir.Every) and e.step == 1:
        return ir.All(span=e.span)
    if isinstance(e, (ir.Sink, ir.Random)) and e.count == 0:
        return ir.Nothing(span=e.span)
    if isinstance(e, ir.Prefix) and e.length == 0:
        return ir.Nothing(span=e.span)
    if isinstance(e, ir.Dilated):
        if e.dilation == 1:
            return ir.Local(e.width, e.width, span=e.span)
        if e.width == 0:
            return ir.Local(0, 0, span=e.span)
    if isinstance(e, ir.Block) and e.size == 1:
        return ir.Local(0, 0, span=e.span)
    if isinstance(e, ir.Slash) and _slash_is_empty(e):
        return ir.Nothing(span=e.span)
    if isinstance(e, (ir.Rows, ir.Cols, ir.Global)) and not e.index.items:
        return ir.Nothing(span=e.span)
    if isinstance(e, ir.Blockwise):
        inner = e.expr
        if e.block == 1 or isinstance(inner, (ir.All, ir.Nothing)):
            return inner
        if isinstance(inner, ir.Blockwise):
            return ir.Blockwise(e.block * inner.block, inner.expr, span=e.span)
        if isinstance(inner, ir.Local) and inner.left == 0 and inner.right == 0:
            return ir.Block(e.block, span=e.span)
    return e


def _identities_node(e: ir.Expr) -> ir.Expr:
    t = type(e)
    if t is not ir.Union and t is not ir.Intersect and t is not ir.Difference:
        return _degenerate(e)
    if isinstance(e, ir.Union):
        if any(isinstance(t, ir.All) for t in e.terms):
            return ir.All(span=e.span)
        terms = _dedupe(t for t in e.terms if not isinstance(t, ir.Nothing))
        if len(terms) == len(e.terms):
            return e
        out = nary(ir.Union, terms)
        return replace(out, span=e.span) if isinstance(out, ir.Union) else out
    if isinstance(e, ir.Intersect):
        if any(isinstance(t, ir.Nothing) for t in e.terms):
            return ir.Nothing(span=e.span)
        terms = _dedupe(t for t in e.terms if not isinstance(t, ir.All))
        if len(terms) == len(e.terms):
            return e
        out = nary(ir.Intersect, terms)
        return replace(out, span=e.span) if isinstance(out, ir.Intersect) else out
    if isinstance(e, ir.Difference):
        left, right = e.left, e.right
        if isinstance(right, ir.Nothing):
            return left
        if isinstance(right, ir.All) or isinstance(left, ir.Nothing) or left == right:
            return ir.Nothing(span=e.span)
        if (isinstance(left, ir.All) and isinstance(right, ir.Difference)
                and isinstance(right.left, ir.All)):
            return right.right
        return e
    return _degenerate(e)


# Leaves that no law or degenerate case rewrites.
_KEEP = frozenset({ir.All, ir.Nothing, ir.Causal, ir.Document, ir.Local, ir.TopVertical,
                   ir.TopSlash, ir.TopBlocks})


def simplify_identities(e: ir.Expr, memo: dict | None = None) -> ir.Expr:
    return bottom_up(e, _identities_node, memo, _KEEP)


#: The node-level rule and what it never rewrites, for drivers that walk the tree.
RULE = _identities_node
KEEP = _KEEP
