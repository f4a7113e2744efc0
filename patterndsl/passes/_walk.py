"""The one traversal every pass shares: rebuild an expression bottom-up.

A pass is a node-level rule (``Expr -> Expr``) that may assume its operands are
already rewritten; :func:`bottom_up` applies it from the leaves to the root and
keeps every unchanged subtree as the same object, so a pass that rewrites nothing
returns its input and the fixed-point loop can stop on ``==``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .. import ir

Rule = Callable[[ir.Expr], ir.Expr]


def bottom_up(e: ir.Expr, rule: Rule) -> ir.Expr:
    if isinstance(e, (ir.Union, ir.Intersect)):
        terms = tuple(bottom_up(t, rule) for t in e.terms)
        if any(a is not b for a, b in zip(terms, e.terms)):
            e = replace(e, terms=terms)
    elif isinstance(e, ir.Difference):
        left, right = bottom_up(e.left, rule), bottom_up(e.right, rule)
        if left is not e.left or right is not e.right:
            e = replace(e, left=left, right=right)
    elif isinstance(e, ir.Blockwise):
        inner = bottom_up(e.expr, rule)
        if inner is not e.expr:
            e = replace(e, expr=inner)
    return rule(e)


def nary(cls, terms) -> ir.Expr:
    """``cls(terms)`` with the degenerate sizes spelled as what they mean: no terms is the
    operator's identity, one term is that term."""
    terms = tuple(terms)
    if not terms:
        return ir.Nothing() if cls is ir.Union else ir.All()
    if len(terms) == 1:
        return terms[0]
    return cls(terms)
