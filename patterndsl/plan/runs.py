"""From per-tile key spaces (element intervals) to the runs of key tiles a kernel visits.

Hulls round outwards to tiles (every tile touching the hull is visited), cores inwards (a
tile is full only when every valid key of it lies in the core).  The visited tiles are then
cut into maximal runs of one kind (full / partial), left-aligned per query tile.
"""
from __future__ import annotations

import torch

from .arith import INF, cdiv, fdiv
from . import intervals as iv
from .views import Geom


def tile_runs(hull, core, g: Geom):
    """``(kv_lo, kv_hi, kv_full)``: int32, int32, bool ``[T, S]`` in k_view tile numbers."""
    bn = g.kv.block
    ct = g.kv.class_tiles
    T = g.T
    real = hull[0] < INF
    h = iv.norm(torch.where(real, fdiv(hull[0], bn), hull[0]), torch.where(real, cdiv(hull[1], bn), hull[1]))
    creal = core[0] < INF
    # the class's last tile may be short: it is full when the core reaches the class end
    chi = torch.where(core[1] >= g.kcount.unsqueeze(1), torch.full_like(core[1], ct * bn), core[1])
    f = iv.norm(torch.where(creal, cdiv(core[0], bn), core[0]), torch.where(creal, fdiv(chi, bn), core[1]))
    f = iv.intersect(f, h)
    # Sweep the boundaries: +1/-1 at hull ends, +2/-2 at full ends (full lies inside the
    # hull), so the running sum is 0 outside, 1 on partial tiles and 3 on full ones.
    KH, KF = h[0].shape[1], f[0].shape[1]
    pts = torch.cat([h[0], h[1], f[0], f[1]], 1)
    tag = torch.cat([torch.ones(KH, dtype=torch.int64), -torch.ones(KH, dtype=torch.int64),
                     torch.full((KF,), 2, dtype=torch.int64), torch.full((KF,), -2, dtype=torch.int64)])
    tag = torch.where(pts < INF, tag.expand_as(pts), torch.zeros_like(pts))
    pts, order = torch.sort(pts, dim=1, stable=True)
    level = torch.cumsum(torch.gather(tag, 1, order), 1)
    a, b = pts[:, :-1], pts[:, 1:]
    level = level[:, :-1]
    kind = torch.where(level >= 3, 2, torch.where(level >= 1, 1, 0))
    kind = torch.where((b > a) & (a < INF), kind, torch.zeros_like(kind))
    # Zero-length pieces (repeated points) must not split a run: compare each piece with the
    # kind of the last piece of positive length before it.
    poslen = (b > a) & (a < INF)
    P = kind.shape[1]
    last = torch.cummax(torch.where(poslen, torch.arange(P).expand_as(kind), torch.full_like(kind, -1)), 1).values
    prev_idx = torch.cat([torch.full((T, 1), -1, dtype=torch.int64), last[:, :-1]], 1)
    prev = torch.where(prev_idx >= 0, torch.gather(kind, 1, torch.clamp(prev_idx, min=0)), torch.zeros_like(kind))
    start = (kind != 0) & (kind != prev)
    nz = kind != 0
    gid = torch.cumsum(start.to(torch.int64), 1) - 1
    S = int(start.sum(1).max()) if T and start.numel() else 0
    lo = torch.zeros((T, max(S, 1)), dtype=torch.int64)
    hi = torch.zeros((T, max(S, 1)), dtype=torch.int64)
    full = torch.zeros((T, max(S, 1)), dtype=torch.bool)
    if S:
        rows = torch.arange(T).unsqueeze(1).expand_as(start)
        lo[rows[start], gid[start]] = a[start]
        full[rows[start], gid[start]] = kind[start] == 2
        g2 = torch.where(nz, torch.clamp(gid, min=0), torch.zeros_like(gid))
        hi = hi.scatter_reduce(1, g2, torch.where(nz, b, torch.zeros_like(b)), reduce="amax")
        base = (g.kclass * ct).unsqueeze(1)
        used = hi > lo
        lo = torch.where(used, lo + base, torch.zeros_like(lo))
        hi = torch.where(used, hi + base, torch.zeros_like(hi))
        full = full & used
    else:
        lo, hi, full = lo[:, :0], hi[:, :0], full[:, :0]
    return lo.to(torch.int32), hi.to(torch.int32), full
