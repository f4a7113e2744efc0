"""Put the terms of every union and intersection in one deterministic order.

Both operators are commutative (every term is a fixed predicate for a call, so
order cannot change the mask), and a fixed order makes equal meanings print as
equal text: ``causal | local(2)`` and ``local(2) | causal`` both come out as
``causal | local(2)``.  The order is a kind rank chosen to read naturally
(``causal & local(64)``, ``local(64) | sink(4)``), then the printed text.
Difference is not commutative and keeps its operands.
"""
from __future__ import annotations

from .. import ir
from ..printer import expr_text
from ._walk import LEAF_TYPES, bottom_up, memo_by_node

_RANK = {cls: i for i, cls in enumerate((
    ir.All, ir.Nothing, ir.Causal, ir.Document, ir.Local, ir.Dilated, ir.Stride, ir.Block,
    ir.Slash, ir.Sink, ir.Prefix, ir.Every, ir.Rows, ir.Cols, ir.Global, ir.Random,
    ir.Blockwise, ir.TopVertical, ir.TopSlash, ir.TopBlocks, ir.Intersect, ir.Union,
    ir.Difference,
))}


@memo_by_node
def term_key(e: ir.Expr):
    # Remembered per node: printing is most of a comparison's cost, and sorting and the
    # subsume pass ask for the key of one node many times.
    return (_RANK.get(type(e), len(_RANK)), expr_text(e))


def _sort_node(e: ir.Expr) -> ir.Expr:
    t = type(e)
    if t is ir.Union or t is ir.Intersect:
        terms = tuple(sorted(e.terms, key=term_key))
        if terms != e.terms:
            return t(terms, span=e.span)
    return e


# The rule only reorders chains.
_KEEP = LEAF_TYPES


def sort_terms(e: ir.Expr, memo: dict | None = None) -> ir.Expr:
    return bottom_up(e, _sort_node, memo, _KEEP)


#: The node-level rule and what it never rewrites, for drivers that walk the tree.
RULE = _sort_node
KEEP = _KEEP
