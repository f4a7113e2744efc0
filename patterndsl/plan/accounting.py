"""Work accounting: exact allowed pairs (closed form) and executed pairs (tile arithmetic).

Allowed pairs come from the atom expansion (atoms.py), at any ``n``.  An expression whose
inclusion-exclusion expansion is too large (hundreds of overlapping index items, say) is
counted by evaluating its predicate in bounded chunks instead: exact, O(pairs) time, O(chunk)
memory.  Executed pairs are sums over runs of prefix sums of valid keys per tile.
"""
from __future__ import annotations

import torch

from .. import ir
from .atoms import TooComplex, atoms_of, count_rects
from .context import Context
from .predicate import evaluate, tile_mask

_CHUNK = 1 << 22


def rect_counts(expr: ir.Expr, ctx: Context, q0, q1, k0, k1) -> torch.Tensor:
    """Exact allowed pairs of ``expr`` in each rectangle ``[q0, q1) x [k0, k1)``."""
    try:
        return count_rects(atoms_of(expr, ctx), q0, q1, k0, k1, ctx)
    except TooComplex:
        return _brute_rects(expr, ctx, q0, q1, k0, k1)


def _brute_rects(expr, ctx, q0, q1, k0, k1) -> torch.Tensor:
    q0, q1, k0, k1 = (torch.as_tensor(x, dtype=torch.int64).reshape(-1) for x in (q0, q1, k0, k1))
    out = torch.zeros(q0.numel(), dtype=torch.int64)
    h = (q1 - q0).clamp(min=0)
    w = (k1 - k0).clamp(min=0)
    small = h * w <= _CHUNK
    idx = torch.nonzero(small & (h > 0) & (w > 0)).flatten()
    if idx.numel():
        # tiles: a batch of equally padded rectangles at a time
        hq, hk = int(h[idx].max()), int(w[idx].max())
        per = max(1, _CHUNK // (hq * hk))
        for s in range(0, idx.numel(), per):
            sel = idx[s:s + per]
            qp = q0[sel].unsqueeze(1) + torch.arange(hq)
            kp = k0[sel].unsqueeze(1) + torch.arange(hk)
            qp = torch.where(qp < q1[sel].unsqueeze(1), qp, torch.full_like(qp, -1))
            kp = torch.where(kp < k1[sel].unsqueeze(1), kp, torch.full_like(kp, -1))
            out[sel] = tile_mask(expr, qp, kp, ctx).sum((1, 2))
    for r in torch.nonzero(~small).flatten().tolist():
        # a big rectangle (whole rows of a long sequence): strip by strip
        k = torch.arange(int(k0[r]), int(k1[r]))
        rows = max(1, _CHUNK // max(k.numel(), 1))
        total = 0
        for a in range(int(q0[r]), int(q1[r]), rows):
            q = torch.arange(a, min(a + rows, int(q1[r])))
            total += int(evaluate(expr, q.unsqueeze(1), k.unsqueeze(0), ctx).expand(q.numel(), k.numel()).sum())
        out[r] = total
    return out


def allowed_pairs(expr: ir.Expr, ctx: Context, q0: int, q1: int) -> int:
    t = rect_counts(expr, ctx, torch.tensor([q0]), torch.tensor([q1]), torch.tensor([0]),
                    torch.tensor([ctx.n]))
    return int(t.sum())


def executed_pairs(kv_lo: torch.Tensor, kv_hi: torch.Tensor, q_valid: torch.Tensor,
                   k_valid: torch.Tensor) -> int:
    """Sum over query tiles and runs of valid rows x valid keys of the run's tiles."""
    if kv_lo.numel() == 0:
        return 0
    cum = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(k_valid, 0)])
    keys = cum[kv_hi.long()] - cum[kv_lo.long()]
    return int((keys.sum(1) * q_valid).sum())
