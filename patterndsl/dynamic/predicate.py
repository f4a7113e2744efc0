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


def tile_bounds(e: ir.Expr, qlo: torch.Tensor, qhi: torch.Tensor, k: torch.Tensor,
                bh: torch.Tensor, ctx, tabs):
    """``(sure, never)`` bool tensors: ``e`` holds at ``(q, k)`` for every ``q`` in
    ``[qlo, qhi]`` (sure), or for none of them (never); both False where undecided.
    Conservative (a leaf it does not know is undecided), so a torch backend evaluates the
    element predicate only on the key slots of a tile that are undecided.  ``qlo``/``qhi``
    broadcast with ``k`` (keys, non-negative) and the table rows ``bh``."""
    n = tabs.n
    if isinstance(e, ir.Union) or isinstance(e, ir.Intersect):
        parts = [tile_bounds(t, qlo, qhi, k, bh, ctx, tabs) for t in e.terms]
        sure, never = parts[0]
        for s, v in parts[1:]:
            if isinstance(e, ir.Union):
                sure, never = sure | s, never & v
            else:
                sure, never = sure & s, never | v
        return sure, never
    if isinstance(e, ir.Difference):
        ls, lv = tile_bounds(e.left, qlo, qhi, k, bh, ctx, tabs)
        rs, rv = tile_bounds(e.right, qlo, qhi, k, bh, ctx, tabs)
        return ls & rv, lv | rs
    yes = torch.ones_like(k, dtype=torch.bool) & (qlo == qlo)
    if isinstance(e, ir.All):
        return yes, ~yes
    if isinstance(e, ir.Nothing):
        return ~yes, yes
    if isinstance(e, ir.Causal):
        return (k <= qlo) & yes, (k > qhi) & yes
    if isinstance(e, ir.Local):
        lft, rgt = min(e.left, max(n, 1)), min(e.right, max(n, 1))
        return ((k >= qhi - lft) & (k <= qlo + rgt)) & yes, ((k < qlo - lft) | (k > qhi + rgt)) & yes
    if isinstance(e, ir.Sink):
        s = (k < min(e.count, max(n, 1))) & yes
        return s, ~s
    if isinstance(e, ir.Prefix):
        p = min(e.length, max(n, 1))
        return ((qhi < p) & (k < p)) & yes, ((qlo >= p) | (k >= p)) & yes
    if isinstance(e, ir.TopVertical):
        s = evaluate(e, qlo, k, bh, ctx, tabs) & yes
        return s, ~s
    if isinstance(e, ir.TopSlash):
        # selected offsets in [qlo - k, qhi - k] by one prefix sum over the offset bitmap
        cs = tabs.slash_prefix(e)                                   # [BH, n + 1]
        a = (qlo - k).clamp(min=0, max=n)
        b = (qhi - k + 1).clamp(min=0, max=n)
        b = torch.maximum(a, b)
        base = bh * cs.shape[1]
        flat = cs.reshape(-1)
        got = torch.take(flat, base + b) - torch.take(flat, base + a)
        return (got == (qhi - qlo + 1)) & (qlo >= k) & yes, (got == 0) & yes
    if isinstance(e, ir.TopBlocks):
        _, _, _, b, _ = tabs.blk_layout[e]
        one = _fdiv(qlo, b) == _fdiv(qhi, b)
        s = evaluate(e, qlo, k, bh, ctx, tabs)
        return s & one & yes, ~s & one & yes
    return ~yes, ~yes
