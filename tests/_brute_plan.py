"""A brute-force planner for kernel tests: the structure of docs/PLAN.md (parts, views,
runs) computed from dense masks, independent of patterndsl.plan's closed forms.

Each part is given as (predicate, q_period, k_period, block_m, block_n); the runs of a
query tile are the maximal ranges of key tiles holding an allowed pair, marked full when
every valid pair of the range is allowed."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from patterndsl.plan.context import Context
from patterndsl.reference import expr_mask


@dataclass(frozen=True, eq=False)
class View:
    period: int
    start: int
    stop: int
    block: int

    def _count(self, c):
        first = self.start + (c - self.start) % self.period
        return max(0, -(-(self.stop - first) // self.period)), first

    @property
    def class_tiles(self):
        return max(-(-self._count(c)[0] // self.block) for c in range(self.period))

    @property
    def num_tiles(self):
        return self.period * self.class_tiles

    def positions(self):
        per = self.class_tiles * self.block
        out = torch.full((self.period * per,), -1, dtype=torch.int64)
        for c in range(self.period):
            cnt, first = self._count(c)
            out[c * per:c * per + cnt] = first + self.period * torch.arange(cnt)
        return out


@dataclass(frozen=True, eq=False)
class Part:
    predicate: object
    q_view: View
    k_view: View
    kv_lo: torch.Tensor
    kv_hi: torch.Tensor
    kv_full: torch.Tensor


@dataclass(frozen=True, eq=False)
class Plan:
    n: int
    nq: int
    q_offset: int
    parts: tuple
    context: Context


def part_mask(pred, n, nq, q_offset, doc_ids):
    """(pairs some batch row allows, pairs every batch row allows): the runs must cover
    the first, and only the second may be marked full."""
    m = expr_mask(pred, n, nq=nq, q_offset=q_offset, doc_ids=doc_ids).reshape(-1, nq, n)
    return m.any(0), m.all(0)


def build(parts, n, nq=None, q_offset=None, doc_ids=None):
    nq = n if nq is None else nq
    q_offset = n - nq if q_offset is None else q_offset
    out = []
    for pred, qp, kp, bm, bn in parts:
        mask, every = part_mask(pred, n, nq, q_offset, doc_ids)  # [nq, n], rows q - q_offset
        qv, kv = View(qp, q_offset, q_offset + nq, bm), View(kp, 0, n, bn)
        qpos, kpos = qv.positions(), kv.positions()
        tq, tk = qv.num_tiles, kv.num_tiles
        qt = qpos.view(tq, bm)
        kt = kpos.view(tk, bn)
        runs = []
        for t in range(tq):
            rows = qt[t][qt[t] >= 0] - q_offset
            cur = []
            for j in range(tk):
                cols = kt[j][kt[j] >= 0]
                if rows.numel() == 0 or cols.numel() == 0:
                    continue
                sub = mask[rows][:, cols]
                if not bool(sub.any()):
                    continue
                full = bool(every[rows][:, cols].all())
                if cur and cur[-1][1] == j and cur[-1][2] == full:
                    cur[-1][1] = j + 1
                else:
                    cur.append([j, j + 1, full])
            runs.append(cur)
        S = max([len(r) for r in runs] + [0])
        lo = torch.zeros((tq, S), dtype=torch.int32)
        hi = torch.zeros((tq, S), dtype=torch.int32)
        fu = torch.zeros((tq, S), dtype=torch.bool)
        for t, r in enumerate(runs):
            for s, (a, b, f) in enumerate(r):
                lo[t, s], hi[t, s], fu[t, s] = a, b, f
        out.append(Part(pred, qv, kv, lo, hi, fu))
    ctx_doc = doc_ids if doc_ids is None or doc_ids.dim() == 1 else doc_ids[0]
    return Plan(n, nq, q_offset, tuple(out), Context(n, ctx_doc))
