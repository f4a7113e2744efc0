"""Exact tile classes of the plain tiling (docs/PLAN.md, section 3).

Candidates come from the identity-view runs of the whole pattern: tiles in full runs are
full by construction; every tile in a partial run is counted exactly (atoms.py) and is
empty (0 pairs), full (its whole in-range area) or partial.  O(candidate tiles).
"""
from __future__ import annotations

from functools import cached_property

import torch

from .. import ir
from .accounting import rect_counts
from .combine import tile_spaces
from .context import Context
from .runs import tile_runs
from .views import IDENTITY, Geom

EMPTY, PARTIAL, FULL = 0, 1, 2


class Layout:
    """Per tile of the plain tiling: 0 empty, 1 partial, 2 full."""

    def __init__(self, dense: torch.Tensor, block_m: int, block_n: int, nq: int, n: int, q_offset: int):
        self._dense = dense
        self.block_m, self.block_n = block_m, block_n
        self.nq, self.n, self.q_offset = nq, n, q_offset

    def to_dense(self) -> torch.Tensor:
        """int8 ``[ceil(nq / block_m), ceil(n / block_n)]``."""
        return self._dense

    @property
    def shape(self):
        return tuple(self._dense.shape)

    def _compressed(self, cls: int):
        m = self._dense == cls
        num = m.sum(1, dtype=torch.int32)
        # stable sort puts the selected tiles first, in increasing order
        idx = torch.argsort((~m).to(torch.int8), dim=1, stable=True).to(torch.int32)
        return num, idx

    @cached_property
    def _partial(self):
        return self._compressed(PARTIAL)

    @cached_property
    def _full(self):
        return self._compressed(FULL)

    @property
    def kv_num_blocks(self) -> torch.Tensor:
        """int32 ``[Tq]``: partial tiles per query tile."""
        return self._partial[0]

    @property
    def kv_indices(self) -> torch.Tensor:
        """int32 ``[Tq, Tk]``: the partial tiles of each row first, ascending (then padding)."""
        return self._partial[1]

    @property
    def full_kv_num_blocks(self) -> torch.Tensor:
        return self._full[0]

    @property
    def full_kv_indices(self) -> torch.Tensor:
        return self._full[1]

    @property
    def num_partial(self) -> int:
        return int((self._dense == PARTIAL).sum())

    @property
    def num_full(self) -> int:
        return int((self._dense == FULL).sum())

    @cached_property
    def executed_pairs(self) -> int:
        """In-range pairs of every non-empty tile: what a plain-tiling kernel computes."""
        Tq, Tk = self._dense.shape
        rows = torch.clamp(self.nq - torch.arange(Tq) * self.block_m, 0, self.block_m)
        cols = torch.clamp(self.n - torch.arange(Tk) * self.block_n, 0, self.block_n)
        nonempty = (self._dense != EMPTY).to(torch.int64)
        return int(((nonempty @ cols) * rows).sum())


def tile_sizes(block_m, block_n, default_m: int, default_n: int) -> tuple[int, int]:
    """The tiling ``layout()`` / ``to_flex_block_mask()`` are asked for: the plan's own when
    not given, else positive integers (0 is not "the default": it is no tiling at all)."""
    from ..args import checked_int
    return (default_m if block_m is None else checked_int("block_m", block_m, 1),
            default_n if block_n is None else checked_int("block_n", block_n, 1))


def build_layout(expr: ir.Expr, ctx: Context, nq: int, q_offset: int, bm: int, bn: int) -> Layout:
    from ..errors import out_of_memory_as_usage_error
    # the dense layout is one byte per tile: n**2 / (bm * bn) outgrows memory at long n
    with out_of_memory_as_usage_error(
            f"the layout of {-(-nq // bm)} x {-(-ctx.n // bn)} tiles does not fit in memory; "
            "ask for larger tiles (layout(block_m, block_n)) or a shorter sequence"):
        return _build_layout(expr, ctx, nq, q_offset, bm, bn)


def _build_layout(expr: ir.Expr, ctx: Context, nq: int, q_offset: int, bm: int, bn: int) -> Layout:
    n = ctx.n
    Tq, Tk = -(-nq // bm), -(-n // bn)
    dense = torch.zeros((Tq, Tk), dtype=torch.int8)   # first: the one allocation of n**2 size
    if Tq == 0 or Tk == 0:
        return Layout(dense, bm, bn, nq, n, q_offset)
    qv, kv = IDENTITY.views(q_offset, q_offset + nq, n, bm, bn)
    g = Geom.make(IDENTITY, qv, kv, n)
    hull, core = tile_spaces(expr, g, ctx, clip=False)
    lo, hi, full = tile_runs(hull, core, g)
    lo, hi = lo.long(), hi.long()
    # full runs: a difference array along each row, then a running sum
    diff = torch.zeros((Tq, Tk + 1), dtype=torch.int8)
    rows = torch.arange(Tq).unsqueeze(1).expand_as(lo)
    sel = full & (hi > lo)
    two = torch.full((int(sel.sum()),), FULL, dtype=torch.int8)
    diff.index_put_((rows[sel], lo[sel]), two, accumulate=True)
    diff.index_put_((rows[sel], hi[sel]), -two, accumulate=True)
    torch.cumsum(diff[:, :Tk], 1, out=dense)
    # partial runs: count each tile exactly
    psel = ~full & (hi > lo)
    length = (hi - lo)[psel]
    if length.numel():
        t = torch.repeat_interleave(rows[psel], length)
        j = torch.repeat_interleave(lo[psel], length) + torch.arange(int(length.sum())) - \
            torch.repeat_interleave(torch.cumsum(length, 0) - length, length)
        q0 = q_offset + t * bm
        q1 = torch.clamp(q0 + bm, max=q_offset + nq)
        k0 = j * bn
        k1 = torch.clamp(k0 + bn, max=n)
        cnt = rect_counts(expr, ctx, q0, q1, k0, k1)
        area = (q1 - q0) * (k1 - k0)
        cls = torch.where(cnt == 0, EMPTY, torch.where(cnt == area, FULL, PARTIAL)).to(torch.int8)
        dense[t, j] = cls
    return Layout(dense, bm, bn, nq, n, q_offset)
