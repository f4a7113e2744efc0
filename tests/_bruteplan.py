"""A block plan built by brute force from the reference mask (tests only).

It follows docs/PLAN.md's executed structure (views, runs, full flags) but derives every run
from the dense mask, so it checks a backend independently of the planner's closed forms.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from patterndsl import ir
from patterndsl.plan.context import Context
from patterndsl.plan.views import View
from patterndsl.reference import expr_mask


def residue(expr: ir.Expr, s: int, r: int, n: int) -> ir.Expr:
    """``expr`` restricted to ``(q - k) mod s == r``."""
    lo = r - s * (-(-n // s)) - s
    return ir.Intersect((expr, ir.Slash(ir.IndexSet((ir.Slice(lo, n + s, s),)))))


def brute_part(predicate, n, nq, q_offset, bm, bn, *, period=1, key_class=None, doc=None,
               waste=False):
    """One part.  ``period > 1`` uses diagonal residue views: query class ``c`` visits key
    class ``key_class(c)`` only.  ``waste`` also visits the tile after each run (allowed:
    runs may cover tiles without allowed pairs)."""
    mask = expr_mask(predicate, n, nq=nq, q_offset=q_offset, doc_ids=doc)
    qv = View.make(period, q_offset, q_offset + nq, bm)
    kv = View.make(period, 0, n, bn)
    qpos = qv.positions().view(qv.num_tiles, bm)
    kpos = kv.positions().view(kv.num_tiles, bn)
    rows_lo, rows_hi, rows_full = [], [], []
    for t in range(qv.num_tiles):
        qp = qpos[t][qpos[t] >= 0] - q_offset
        runs = []
        for j in range(kv.num_tiles):
            if period > 1 and kv.tile_class(j) != key_class(qv.tile_class(t)):
                continue
            kp = kpos[j][kpos[j] >= 0]
            if qp.numel() == 0 or kp.numel() == 0:
                continue
            sub = mask[qp][:, kp]
            if not bool(sub.any()):
                continue
            full = bool(sub.all())
            if runs and runs[-1][1] == j and runs[-1][2] == full:
                runs[-1][1] = j + 1
            else:
                runs.append([j, j + 1, full])
        if waste and runs and runs[-1][1] < kv.num_tiles:
            runs.append([runs[-1][1], runs[-1][1] + 1, False])
            merged = []
            for a, b, f in runs:
                if merged and merged[-1][1] == a and merged[-1][2] == f:
                    merged[-1][1] = b
                elif merged and merged[-1][1] > a:
                    continue
                else:
                    merged.append([a, b, f])
            runs = merged
        rows_lo.append([a for a, _, _ in runs])
        rows_hi.append([b for _, b, _ in runs])
        rows_full.append([f for _, _, f in runs])
    S = max([len(r) for r in rows_lo] + [1])
    lo = torch.zeros((qv.num_tiles, S), dtype=torch.int32)
    hi = torch.zeros((qv.num_tiles, S), dtype=torch.int32)
    fl = torch.zeros((qv.num_tiles, S), dtype=torch.bool)
    for t in range(qv.num_tiles):
        m = len(rows_lo[t])
        lo[t, :m] = torch.tensor(rows_lo[t], dtype=torch.int32)
        hi[t, :m] = torch.tensor(rows_hi[t], dtype=torch.int32)
        fl[t, :m] = torch.tensor(rows_full[t], dtype=torch.bool)
    return SimpleNamespace(predicate=predicate, q_view=qv, k_view=kv, block_m=bm, block_n=bn,
                           kv_lo=lo, kv_hi=hi, kv_full=fl)


def brute_plan(expr, n, nq=None, q_offset=None, *, bm=16, bn=16, period=1, doc=None,
               waste=False):
    """A plan of several disjoint parts: the pairs under ``(q - k) mod period == r`` for each
    ``r`` in residue views (``period > 1``), else two identity parts (``k <= q`` and the
    rest, with different tile sizes)."""
    nq = n if nq is None else nq
    q_offset = n - nq if q_offset is None else q_offset
    if period > 1:
        parts = [brute_part(residue(expr, period, r, n), n, nq, q_offset, bm, bn, period=period,
                            key_class=lambda c, r=r: (c - r) % period, doc=doc, waste=waste)
                 for r in range(period)]
    else:
        parts = [brute_part(ir.Intersect((expr, ir.Causal())), n, nq, q_offset, bm, bn, doc=doc,
                            waste=waste),
                 brute_part(ir.Difference(expr, ir.Causal()), n, nq, q_offset, bn, bm, doc=doc,
                            waste=waste)]
    ctx = Context(n, None if doc is None else torch.as_tensor(doc, dtype=torch.int64))
    return SimpleNamespace(parts=tuple(parts), q_offset=q_offset, n=n, nq=nq, context=ctx)
