"""The transposed pattern: ``E^T`` allows ``(a, b)`` iff ``E`` allows ``(q=b, k=a)``.

Backward kernels that walk key tiles need, per key tile, the query tiles to visit: the same
closed-form machinery applied to ``E^T`` (rows are keys, columns are queries) gives them.
Every primitive has an IR transpose except ``random``, which gets the private
:class:`Swapped` wrapper (its group is the random table read by columns).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import ir


@dataclass(frozen=True)
class Swapped(ir.Expr):
    """``expr`` with the roles of query and key exchanged (only around ``Random``)."""

    expr: ir.Expr

    def children(self):
        return (self.expr,)


def _neg(item):
    if isinstance(item, ir.Slice):
        return ir.Slice(-item.start, -item.stop, -(item.step or 1))
    return -item


def transpose_expr(e: ir.Expr, n: int) -> ir.Expr:
    big = max(n, 1)
    if isinstance(e, (ir.All, ir.Nothing, ir.Block, ir.Stride, ir.Dilated, ir.Global, ir.Prefix,
                      ir.Document)):
        return e
    if isinstance(e, ir.Causal):
        return ir.Local(0, big)
    if isinstance(e, ir.Local):
        return ir.Local(e.right, e.left)
    if isinstance(e, ir.Every):
        return ir.Rows(ir.IndexSet((ir.Slice(e.offset, None, e.step),)))
    if isinstance(e, ir.Sink):
        return ir.Rows(ir.IndexSet((ir.Slice(None, min(e.count, big), None),)))
    if isinstance(e, ir.Rows):
        return ir.Cols(e.index)
    if isinstance(e, ir.Cols):
        return ir.Rows(e.index)
    if isinstance(e, ir.Slash):
        return ir.Slash(ir.IndexSet(tuple(_neg(x) for x in e.offsets.items)))
    if isinstance(e, ir.Random):
        return Swapped(e)
    if isinstance(e, Swapped):
        return e.expr
    if isinstance(e, ir.Blockwise):
        return ir.Blockwise(e.block, transpose_expr(e.expr, -(-n // e.block)))
    if isinstance(e, ir.Union):
        return ir.Union(tuple(transpose_expr(t, n) for t in e.terms))
    if isinstance(e, ir.Intersect):
        return ir.Intersect(tuple(transpose_expr(t, n) for t in e.terms))
    if isinstance(e, ir.Difference):
        return ir.Difference(transpose_expr(e.left, n), transpose_expr(e.right, n))
    raise TypeError(f"cannot transpose {e!r}")
