"""From per-tile key spaces (element intervals) to the runs of key tiles a kernel visits.

Hulls round outwards to tiles (every tile touching the hull is visited), cores inwards (a
tile is full only when every valid key of it lies in the core).  The visited tiles are then
cut into maximal runs of one kind (full / partial), left-aligned per query tile.
"""
from __future__ import annotations

import torch

from .arith import INF, cdiv, fdiv, pick
from . import intervals as iv
from .views import Geom


def tile_runs(hull, core, g: Geom):
    """``(kv_lo, kv_hi, kv_full)``: int32, int32, bool ``[T, S]`` in k_view tile numbers.

    ``hull`` and ``core`` need only be sorted by start (they may overlap; empty entries
    anywhere), unclipped: this clips, rounds and merges them."""
    bn = g.kv.block
    ct = g.kv.class_tiles
    T = g.T
    # Clip to the key class (and to tiles with rows); outward rounding keeps the order
    # (touching tiles merge); inward rounding only shrinks.
    rows = g.valid.unsqueeze(1)
    kc = g.kcount.unsqueeze(1)
    hlo = torch.clamp(hull[0], min=0)
    hhi = torch.minimum(hull[1], kc)
    real = (hlo < hhi) & rows
    h = iv.merge_sorted(pick(real, fdiv(hlo, bn), INF), pick(real, cdiv(hhi, bn), INF))
    clo = torch.clamp(core[0], min=0)
    chi = torch.minimum(core[1], kc)
    creal = (clo < chi) & rows
    # the class's last tile may be short: it is full when the core reaches the class end
    chi = pick(chi >= kc, ct * bn, chi)
    f = iv.merge_sorted(pick(creal, cdiv(clo, bn), INF), pick(creal, fdiv(chi, bn), INF))
    # Sweep the boundaries in position order: +1/-1 at hull ends, +2/-2 at full ends (full
    # tiles lie inside the hull), so the running level is 0 outside, 1 on partial and 3 on
    # full tiles.  Each set's ends are already sorted (lo0 < hi0 < lo1 ...), so the two
    # sequences merge by rank, without a row-wise sort.  Hull intervals never touch, nor do
    # full ones: consecutive pieces of positive length always differ in kind, so each is a
    # maximal run.
    hp = torch.stack([h[0], h[1]], 2).reshape(T, 2 * h[0].shape[1])
    fp = torch.stack([f[0], f[1]], 2).reshape(T, 2 * f[0].shape[1])
    KH, KF = hp.shape[1], fp.shape[1]
    rh = torch.arange(KH) + torch.searchsorted(fp, hp, right=False)
    rf = torch.arange(KF) + torch.searchsorted(hp, fp, right=True)
    th = torch.tensor([1, -1], dtype=torch.int64).repeat(KH // 2) * (hp < INF)
    tf = torch.tensor([2, -2], dtype=torch.int64).repeat(KF // 2) * (fp < INF)
    pts = torch.empty((T, KH + KF), dtype=torch.int64).scatter_(1, rh, hp).scatter_(1, rf, fp)
    tag = torch.empty((T, KH + KF), dtype=torch.int64).scatter_(1, rh, th).scatter_(1, rf, tf)
    level = torch.cumsum(tag, 1)[:, :-1]
    a, b = pts[:, :-1], pts[:, 1:]
    run = (b > a) & (level > 0) & (a < INF)
    # left-align the runs, carrying their kind
    slot = torch.cumsum(run, 1) - 1
    S = int(run.sum(1).max()) if T and run.numel() else 0
    slot = pick(run, slot, S)
    lo = torch.zeros((T, S + 1), dtype=torch.int64).scatter_(1, slot, a)[:, :S]
    hi = torch.zeros((T, S + 1), dtype=torch.int64).scatter_(1, slot, b)[:, :S]
    full = torch.zeros((T, S + 1), dtype=torch.bool).scatter_(1, slot, level > 1)[:, :S]
    used = hi > lo
    full = full & used
    base = (g.kclass * ct).unsqueeze(1)
    lo = pick(used, lo + base, 0)
    hi = pick(used, hi + base, 0)
    return lo.to(torch.int32), hi.to(torch.int32), full
