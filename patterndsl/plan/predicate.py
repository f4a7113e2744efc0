"""The element predicate of a partial tile: ``evaluate(expr, q, k, ctx) -> bool``.

``q`` and ``k`` are broadcastable int64 tensors of absolute positions.  Only elementwise
torch ops and table lookups are used, with no branching on tensor values, so the same
function serves the torch backend, FlexAttention's vmapped ``mask_mod`` and brute-force
checks.  docs/PLAN.md lists the formula of each node; a Triton code generator emits those.
"""
from __future__ import annotations

import torch

from .. import ir
from ..errors import PsparseUsageError
from .arith import fdiv
from .context import Context, cap
from .transpose import Swapped


def _member(x: torch.Tensor, progs) -> torch.Tensor:
    out = torch.zeros_like(x, dtype=torch.bool)
    for start, stop, step in progs:
        m = (x >= start) & (x < stop)
        if step > 1:
            m = m & (torch.remainder(x - start, step) == 0)
        out = out | m
    return out


def evaluate(e: ir.Expr, q: torch.Tensor, k: torch.Tensor, ctx: Context) -> torch.Tensor:
    n = ctx.n
    if isinstance(e, ir.Union):
        out = evaluate(e.terms[0], q, k, ctx)
        for t in e.terms[1:]:
            out = out | evaluate(t, q, k, ctx)
        return out
    if isinstance(e, ir.Intersect):
        out = evaluate(e.terms[0], q, k, ctx)
        for t in e.terms[1:]:
            out = out & evaluate(t, q, k, ctx)
        return out
    if isinstance(e, ir.Difference):
        return evaluate(e.left, q, k, ctx) & ~evaluate(e.right, q, k, ctx)
    if isinstance(e, ir.All):
        return (q - k) == (q - k)
    if isinstance(e, ir.Nothing):
        return (q - k) != (q - k)
    if isinstance(e, ir.Causal):
        return k <= q
    if isinstance(e, ir.Local):
        return (k >= q - cap(e.left, n)) & (k <= q + cap(e.right, n))
    if isinstance(e, ir.Block):
        b = cap(e.size, n)
        return fdiv(q, b) == fdiv(k, b)
    if isinstance(e, ir.Stride):
        # |q - k| < n: for s >= n, "(q - k) mod s == 0" is q == k, the same as mod n.
        return torch.remainder(q - k, cap(e.step, n)) == 0
    if isinstance(e, ir.Dilated):
        d = q - k
        return (d.abs() <= cap(e.width * e.dilation, n)) & (torch.remainder(d, cap(e.dilation, n)) == 0)
    if isinstance(e, ir.Every):
        if e.step > max(n, 1):
            return k == e.offset
        return torch.remainder(k, e.step) == e.offset
    if isinstance(e, ir.Rows):
        return _member(q, ctx.index_set(e.index)) & (k == k)
    if isinstance(e, ir.Cols):
        return _member(k, ctx.index_set(e.index)) & (q == q)
    if isinstance(e, ir.Global):
        progs = ctx.index_set(e.index)
        return _member(q, progs) | _member(k, progs)
    if isinstance(e, ir.Sink):
        return (k < cap(e.count, n)) & (q == q)
    if isinstance(e, ir.Prefix):
        p = cap(e.length, n)
        return (q < p) & (k < p)
    if isinstance(e, ir.Slash):
        return _member(q - k, ctx.offset_set(e.offsets))
    if isinstance(e, ir.Document):
        doc = ctx.require_doc_ids()
        return doc[q] == doc[k]
    if isinstance(e, ir.Random):
        table = ctx.random_table(e)
        if table.shape[1] == 0:
            return (q - k) != (q - k)
        b = cap(e.block, n)
        return (table[fdiv(q, b)] == fdiv(k, b).unsqueeze(-1)).any(-1)
    if isinstance(e, ir.Blockwise):
        b = cap(e.block, n)
        return evaluate(e.expr, fdiv(q, b), fdiv(k, b), ctx.inner(e))
    if isinstance(e, Swapped):
        return evaluate(e.expr, k, q, ctx)
    if isinstance(e, ir.DYNAMIC_TYPES):
        raise PsparseUsageError("data-dependent terms are planned per call (they need q and k)")
    raise TypeError(f"not a pattern expression: {e!r}")


def tile_mask(e: ir.Expr, q_pos: torch.Tensor, k_pos: torch.Tensor, ctx: Context) -> torch.Tensor:
    """``[..., len(q_pos), len(k_pos)]`` mask of one or a batch of tiles; padding (-1)
    positions are never allowed."""
    q = q_pos.unsqueeze(-1)
    k = k_pos.unsqueeze(-2)
    qs = torch.clamp(q, min=0)
    ks = torch.clamp(k, min=0)
    return evaluate(e, qs, ks, ctx) & (q >= 0) & (k >= 0)
