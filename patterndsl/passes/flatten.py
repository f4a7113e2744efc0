"""Flatten nested chains of the same associative operator.

``(a | b) | c`` parses as a Union inside a Union; union and intersection are
associative, so it is the chain ``a | b | c``.  A chain of one term is that term,
and an empty chain is the operator's identity.  Difference is not associative
and is left alone.
"""
from __future__ import annotations

from dataclasses import replace

from .. import ir
from ._walk import LEAF_TYPES, bottom_up, nary


def _flatten_node(e: ir.Expr) -> ir.Expr:
    cls = type(e)
    if cls is not ir.Union and cls is not ir.Intersect:
        return e
    if len(e.terms) >= 2 and not any(isinstance(t, cls) for t in e.terms):
        return e
    terms: list[ir.Expr] = []
    for t in e.terms:
        # Children were flattened already (bottom-up), so one level of splicing suffices.
        if isinstance(t, cls):
            terms.extend(t.terms)
        else:
            terms.append(t)
    out = nary(cls, terms)
    return replace(out, span=e.span) if isinstance(out, cls) else out


# The rule only rewrites chains.
_KEEP = LEAF_TYPES


def flatten(e: ir.Expr, memo: dict | None = None) -> ir.Expr:
    return bottom_up(e, _flatten_node, memo, _KEEP)


#: The node-level rule and what it never rewrites, for drivers that walk the tree.
RULE = _flatten_node
KEEP = _KEEP
