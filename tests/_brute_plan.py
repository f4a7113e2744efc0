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
class Transposed:
    q_lo: torch.Tensor
    q_hi: torch.Tensor
    q_full: torch.Tensor


@dataclass(frozen=True, eq=False)
class Part:
    predicate: object
    q_view: View
    k_view: View
    kv_lo: torch.Tensor
    kv_hi: torch.Tensor
    kv_full: torch.Tensor
    masks: tuple  # (any, all) over rows q - q_offset, for transpose()

    def transpose(self):
        some, every = self.masks
        q_offset = self.q_view.start
        lo, hi, fu = _runs(some.T, every.T, self.k_view.positions().view(self.k_view.num_tiles, -1),
                           self.q_view.positions().view(self.q_view.num_tiles, -1) - q_offset, 0)
        return Transposed(lo, hi, fu)


def _runs(some, every, row_tiles, col_tiles, row_shift):
    """Maximal runs of column tiles holding an allowed pair, per row tile; full when every
    valid pair is allowed by every batch row."""
    runs = []
    for t in range(row_tiles.shape[0]):
        rows = row_tiles[t][row_tiles[t] >= 0] - row_shift
        cur = []
        for j in range(col_tiles.shape[0]):
            cols = col_tiles[j][col_tiles[j] >= 0]  # padding slots are negative
            if rows.numel() == 0 or cols.numel() == 0:
                continue
            if not bool(some[rows][:, cols].any()):
                continue
            full = bool(every[rows][:, cols].all())
            if cur and cur[-1][1] == j and cur[-1][2] == full:
                cur[-1][1] = j + 1
            else:
                cur.append([j, j + 1, full])
        runs.append(cur)
    S = max([len(r) for r in runs] + [0])
    lo = torch.zeros((len(runs), S), dtype=torch.int32)
    hi = torch.zeros((len(runs), S), dtype=torch.int32)
    fu = torch.zeros((len(runs), S), dtype=torch.bool)
    for t, r in enumerate(runs):
        for s, (a, b, f) in enumerate(r):
            lo[t, s], hi[t, s], fu[t, s] = a, b, f
    return lo, hi, fu


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
        some, every = part_mask(pred, n, nq, q_offset, doc_ids)  # [nq, n], rows q - q_offset
        qv, kv = View(qp, q_offset, q_offset + nq, bm), View(kp, 0, n, bn)
        qt = qv.positions().view(qv.num_tiles, bm)
        kt = kv.positions().view(kv.num_tiles, bn)
        lo, hi, fu = _runs(some, every, qt, kt, q_offset)
        out.append(Part(pred, qv, kv, lo, hi, fu, (some, every)))
    ctx_doc = doc_ids if doc_ids is None or doc_ids.dim() == 1 else doc_ids[0]
    return Plan(n, nq, q_offset, tuple(out), Context(n, ctx_doc))
