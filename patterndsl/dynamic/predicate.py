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
    """``(sure, never)`` bool tensors shaped like ``k``: ``e`` holds at ``(q, k)`` for every
    ``q`` in ``[qlo, qhi]`` (sure), or for none of them (never); both False where
    undecided.  Conservative (a leaf it does not know is undecided), so a torch backend
    evaluates the element predicate only on the key slots of a tile that are undecided.
    ``qlo``/``qhi`` broadcast with ``k`` (keys, non-negative) and the table rows ``bh``."""
    sure, never = _bounds(e, qlo, qhi, k, bh, ctx, tabs)
    shape = torch.broadcast_shapes(k.shape, qlo.shape)

    def full(x):
        if isinstance(x, bool):
            return torch.full(shape, x, dtype=torch.bool, device=k.device)
        return x.expand(shape)
    return full(sure), full(never)


def _and(a, b):
    if isinstance(a, bool):
        return b if a else False
    if isinstance(b, bool):
        return a if b else False
    return a & b


def _or(a, b):
    if isinstance(a, bool):
        return True if a else b
    if isinstance(b, bool):
        return True if b else a
    return a | b


def _not(a):
    return (not a) if isinstance(a, bool) else ~a


def _bounds(e, qlo, qhi, k, bh, ctx, tabs):
    """:func:`tile_bounds` with Python bools for constants (fewer tensor passes)."""
    n = tabs.n
    if isinstance(e, (ir.Union, ir.Intersect)):
        union = isinstance(e, ir.Union)
        sure, never = _bounds(e.terms[0], qlo, qhi, k, bh, ctx, tabs)
        for t in e.terms[1:]:
            s, v = _bounds(t, qlo, qhi, k, bh, ctx, tabs)
            sure, never = (_or(sure, s), _and(never, v)) if union else (_and(sure, s), _or(never, v))
        return sure, never
    if isinstance(e, ir.Difference):
        ls, lv = _bounds(e.left, qlo, qhi, k, bh, ctx, tabs)
        if isinstance(lv, bool) and lv:
            return False, True
        rs, rv = _bounds(e.right, qlo, qhi, k, bh, ctx, tabs)
        return _and(ls, rv), _or(lv, rs)
    if isinstance(e, ir.All):
        return True, False
    if isinstance(e, ir.Nothing):
        return False, True
    if isinstance(e, ir.Causal):
        return k <= qlo, k > qhi
    if isinstance(e, ir.Local):
        lft, rgt = min(e.left, max(n, 1)), min(e.right, max(n, 1))
        return (k >= qhi - lft) & (k <= qlo + rgt), (k < qlo - lft) | (k > qhi + rgt)
    if isinstance(e, ir.Sink):
        s = k < min(e.count, max(n, 1))
        return s, ~s
    if isinstance(e, ir.Prefix):
        p = min(e.length, max(n, 1))
        return (qhi < p) & (k < p), (qlo >= p) | (k >= p)
    if isinstance(e, ir.TopVertical):
        s = evaluate(e, qlo, k, bh, ctx, tabs)
        return s, ~s
    if isinstance(e, ir.TopSlash):
        # selected offsets in [qlo - k, qhi - k] by one prefix sum over the offset bitmap
        cs = tabs.slash_prefix(e)                                   # [BH, n + 1]
        a = (qlo - k).clamp(min=0, max=n)
        b = torch.maximum(a, (qhi - k + 1).clamp(min=0, max=n))
        base = bh * cs.shape[1]
        flat = cs.reshape(-1)
        got = torch.take(flat, base + b) - torch.take(flat, base + a)
        return (got == (qhi - qlo + 1)) & (qlo >= k), got == 0
    if isinstance(e, ir.TopBlocks):
        _, _, _, b, _ = tabs.blk_layout[e]
        one = _fdiv(qlo, b) == _fdiv(qhi, b)
        s = evaluate(e, qlo, k, bh, ctx, tabs)
        return s & one, ~s & one
    return False, False


# Nodes whose value depends on the offset q - k alone (static ones evaluated through the
# shared runtime, which only ever compares q against k here).
_OFFSET_STATIC = (ir.All, ir.Nothing, ir.Causal, ir.Local)


def offset_only(e: ir.Expr) -> bool:
    """Whether ``e`` is a function of ``q - k`` alone (so constant along a diagonal)."""
    if isinstance(e, (ir.Union, ir.Intersect)):
        return all(offset_only(t) for t in e.terms)
    if isinstance(e, ir.Difference):
        return offset_only(e.left) and offset_only(e.right)
    return isinstance(e, _OFFSET_STATIC + (ir.TopSlash,))


def _eval_offsets(e, d, bh, ctx, tabs):
    """An :func:`offset_only` ``e`` at offsets ``d`` (int64, any sign)."""
    if isinstance(e, ir.Union):
        out = _eval_offsets(e.terms[0], d, bh, ctx, tabs)
        for t in e.terms[1:]:
            out = out | _eval_offsets(t, d, bh, ctx, tabs)
        return out
    if isinstance(e, ir.Intersect):
        out = _eval_offsets(e.terms[0], d, bh, ctx, tabs)
        for t in e.terms[1:]:
            out = out & _eval_offsets(t, d, bh, ctx, tabs)
        return out
    if isinstance(e, ir.Difference):
        return _eval_offsets(e.left, d, bh, ctx, tabs) & ~_eval_offsets(e.right, d, bh, ctx, tabs)
    if isinstance(e, ir.TopSlash):
        n = tabs.n
        flat = tabs.dyn.reshape(-1)
        row = bh * tabs.dyn.shape[1] + tabs.layout[e]
        ok = (d >= 0) & (d < n)
        return ok & (torch.take(flat, row + d.clamp(min=0, max=max(n - 1, 0))) != 0)
    # shift to non-negative positions: only q - k matters to these nodes
    base = (-d).clamp(min=0)
    return evaluate_static(e, d + base, base, ctx)


def evaluate_windows(e: ir.Expr, q: torch.Tensor, k: torch.Tensor, bh: torch.Tensor, ctx, tabs,
                     d: torch.Tensor, expand) -> torch.Tensor:
    """:func:`evaluate` on diagonal windows: the :func:`offset_only` subtrees of ``e`` are
    evaluated once per offset in ``d`` (shaped ``[..., windows, bm + bn - 1]``) and spread
    to the slots by ``expand`` (a constant index), the rest per element as usual.  Equal to
    :func:`evaluate` wherever ``q - k`` is the offset ``expand`` maps the slot to."""
    if offset_only(e):
        return expand(_eval_offsets(e, d, bh.view(-1, *([1] * (d.dim() - 1))), ctx, tabs))
    if not e.is_dynamic:
        return evaluate_static(e, q, k, ctx)
    if isinstance(e, ir.Union):
        out = evaluate_windows(e.terms[0], q, k, bh, ctx, tabs, d, expand)
        for t in e.terms[1:]:
            out = out | evaluate_windows(t, q, k, bh, ctx, tabs, d, expand)
        return out
    if isinstance(e, ir.Intersect):
        out = evaluate_windows(e.terms[0], q, k, bh, ctx, tabs, d, expand)
        for t in e.terms[1:]:
            out = out & evaluate_windows(t, q, k, bh, ctx, tabs, d, expand)
        return out
    if isinstance(e, ir.Difference):
        return (evaluate_windows(e.left, q, k, bh, ctx, tabs, d, expand) &
                ~evaluate_windows(e.right, q, k, bh, ctx, tabs, d, expand))
    return evaluate(e, q, k, bh, ctx, tabs)
