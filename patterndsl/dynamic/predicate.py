"""The element predicate of a table part, in torch: static nodes as
:func:`patterndsl.plan.predicate.evaluate`, dynamic leaves read from a call's
:class:`~.tables.CallTables` (the same tables the generated kernels read)."""
from __future__ import annotations

import torch

from .. import ir
from ..plan.predicate import evaluate as evaluate_static

__all__ = ["evaluate"]


def _fdiv(a, b):
    return torch.div(a, b, rounding_mode="floor")


def evaluate(e: ir.Expr, q: torch.Tensor, k: torch.Tensor, bh: torch.Tensor, ctx, tabs) -> torch.Tensor:
    """``e`` at absolute positions ``q``, ``k`` (int64, non-negative, broadcastable with the
    table rows ``bh``)."""
    if not e.is_dynamic:
        return evaluate_static(e, q, k, ctx)
    if isinstance(e, ir.Union):
        out = evaluate(e.terms[0], q, k, bh, ctx, tabs)
        for t in e.terms[1:]:
            out = out | evaluate(t, q, k, bh, ctx, tabs)
        return out
    if isinstance(e, ir.Intersect):
        out = evaluate(e.terms[0], q, k, bh, ctx, tabs)
        for t in e.terms[1:]:
            out = out & evaluate(t, q, k, bh, ctx, tabs)
        return out
    if isinstance(e, ir.Difference):
        return evaluate(e.left, q, k, bh, ctx, tabs) & ~evaluate(e.right, q, k, bh, ctx, tabs)
    n = tabs.n
    if isinstance(e, ir.TopBlocks):
        bmap = tabs.block_bitmap(e)
        _, _, first, b, nqb = tabs.blk_layout[e]
        rows = (_fdiv(q, b) - first).clamp(min=0, max=max(nqb - 1, 0))
        cols = _fdiv(k, b).clamp(max=max(bmap.shape[2] - 1, 0))
        return bmap[bh, rows, cols]
    # One flat gather (torch.take) per atom: cheaper than two-tensor advanced indexing.
    flat = tabs.dyn.reshape(-1)
    row = bh * tabs.dyn.shape[1] + tabs.layout[e]
    if isinstance(e, ir.TopVertical):
        # The key axis alone: broadcasting with the rows happens where it is combined.
        return torch.take(flat, row + k.clamp(max=n - 1)) != 0
    d = q - k
    ok = (d >= 0) & (d < n)
    return ok & (torch.take(flat, row + d.clamp(min=0, max=n - 1)) != 0)
