"""``blockwise(b, E)`` as a group: per block row, the exact runs of allowed key blocks.

``E`` is planned at block scale (``n' = ceil(n / b)``) with one-row, one-key tiles: its
core there is exact for everything but congruences, and the few keys its hull leaves
undecided are settled by evaluating ``E`` itself.  The cost is O(n' + runs + undecided
blocks), never O(n^2) positions.
"""
from __future__ import annotations

import torch

from .. import ir
from .arith import INF
from .combine import tile_spaces
from .context import Context, cap
from . import intervals as iv
from .predicate import evaluate
from .tables import Group, merge_runs, runs_group
from .views import IDENTITY, Geom, View

_CHUNK = 1 << 22


def _expand(s):
    """Flat (row, value) pairs of every integer inside the interval sets."""
    lo, hi = s
    real = lo < INF
    length = torch.where(real, hi - lo, torch.zeros_like(lo)).reshape(-1)
    rows = torch.arange(lo.shape[0]).unsqueeze(1).expand_as(lo).reshape(-1)
    idx = torch.repeat_interleave(torch.arange(length.numel()), length)
    off = torch.arange(idx.numel()) - torch.repeat_interleave(torch.cumsum(length, 0) - length, length)
    return rows[idx], lo.reshape(-1)[idx] + off


def blockwise_group(node: ir.Blockwise, ctx: Context) -> Group:
    inner = ctx.inner(node)
    n2 = inner.n
    b = cap(node.block, ctx.n)
    qv = View.make(1, 0, n2, 1)
    g = Geom.make(IDENTITY, qv, qv, n2)
    hull, core = tile_spaces(node.expr, g, inner)
    rows_c, lo_c = [], []
    rows_u, j_u = _expand(iv.difference(hull, core))
    for s in range(0, rows_u.numel(), _CHUNK):
        r, j = rows_u[s:s + _CHUNK], j_u[s:s + _CHUNK]
        ok = evaluate(node.expr, r, j, inner)
        rows_c.append(r[ok])
        lo_c.append(j[ok])
    creal = core[0] < INF
    crow = torch.arange(n2).unsqueeze(1).expand_as(core[0])[creal]
    rows = torch.cat([crow] + rows_c)
    lo = torch.cat([core[0][creal]] + lo_c)
    hi = torch.cat([core[1][creal]] + [x + 1 for x in lo_c])
    rows, lo, hi = merge_runs(rows, lo, hi)
    return runs_group(b, ctx.n, rows, lo, hi, n2)
