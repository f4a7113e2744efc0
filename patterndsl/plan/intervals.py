"""Sets of integer intervals, one set per query tile, as ``[T, K]`` tensors.

``lo[t, i] <= x < hi[t, i]``.  A normalised set is sorted, disjoint, non-adjacent, with
padding entries ``(INF, INF)`` after the real ones, and no all-padding column.

Cost matters (a 1M-token plan has 16K tiles): intersections, complements and clips of
normalised sets keep the order of what survives, so they only *compact* (left-align the
survivors with a cumulative sum); only unions and re-roundings need a sort.
"""
from __future__ import annotations

import torch

from .arith import INF

Iv = tuple  # (lo [T, K], hi [T, K])


def full(T: int) -> Iv:
    return (torch.full((T, 1), -INF, dtype=torch.int64), torch.full((T, 1), INF, dtype=torch.int64))


def empty(T: int) -> Iv:
    return (torch.full((T, 1), INF, dtype=torch.int64), torch.full((T, 1), INF, dtype=torch.int64))


def is_empty(a: Iv) -> bool:
    return a[0].shape[1] == 1 and bool((a[0] == INF).all())


def is_full(a: Iv) -> bool:
    return a[0].shape[1] == 1 and bool((a[0] == -INF).all() and (a[1] == INF).all())


def pad(a: Iv, K: int) -> Iv:
    lo, hi = a
    if lo.shape[1] >= K:
        return a
    extra = torch.full((lo.shape[0], K - lo.shape[1]), INF, dtype=torch.int64)
    return torch.cat([lo, extra], 1), torch.cat([hi, extra], 1)


def choose(cond: torch.Tensor, a: Iv, b: Iv) -> Iv:
    """Per tile: ``a`` where ``cond`` else ``b`` (both normalised, so the result is)."""
    K = max(a[0].shape[1], b[0].shape[1])
    a, b = pad(a, K), pad(b, K)
    c = cond.unsqueeze(1)
    return torch.where(c, a[0], b[0]), torch.where(c, a[1], b[1])


def single(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    lo = torch.clamp(lo.reshape(-1, 1), -INF, INF)
    hi = torch.clamp(hi.reshape(-1, 1), -INF, INF)
    bad = hi <= lo
    return lo.masked_fill(bad, INF), hi.masked_fill(bad, INF)


def compact(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    """Normalise a set that is sorted and disjoint except for empty entries anywhere."""
    T, K = lo.shape
    lo = torch.clamp(lo, -INF, INF)
    hi = torch.clamp(hi, -INF, INF)
    bad = hi <= lo
    if K == 1:
        return lo.masked_fill(bad, INF), hi.masked_fill(bad, INF)
    good = ~bad
    counts = good.sum(1)
    K2 = int(counts.max()) if T else 0
    if K2 == 0:
        return empty(T)
    if K2 == K and bool(good[:, :K2].all()):
        return lo, hi
    slot = torch.cumsum(good, 1) - 1
    slot = torch.where(good, slot, torch.full_like(slot, K2))   # dump column
    nlo = torch.full((T, K2 + 1), INF, dtype=torch.int64).scatter_(1, slot, lo)
    nhi = torch.full((T, K2 + 1), INF, dtype=torch.int64).scatter_(1, slot, hi)
    return nlo[:, :K2], nhi[:, :K2]


def norm(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    """Normalise any set of intervals (sort, then merge overlapping or touching ones)."""
    T, K = lo.shape
    if K == 0:
        return empty(T)
    if K == 1:
        return compact(lo, hi)
    lo = torch.clamp(lo, -INF, INF)
    hi = torch.clamp(hi, -INF, INF)
    bad = hi <= lo
    lo = lo.masked_fill(bad, INF)
    hi = hi.masked_fill(bad, INF)
    order = torch.argsort(lo, dim=1)
    lo = torch.gather(lo, 1, order)
    hi = torch.gather(hi, 1, order)
    reach = torch.cummax(hi, dim=1).values
    prev = torch.cat([torch.full((T, 1), -INF - 1, dtype=torch.int64), reach[:, :-1]], 1)
    start = (lo > prev) & (lo < INF)
    # each merged interval runs from its first start to the reach just before the next start
    nxt = torch.cat([start[:, 1:] | (lo[:, 1:] >= INF), torch.ones((T, 1), dtype=torch.bool)], 1)
    end = torch.where(nxt & (lo < INF), reach, torch.full_like(reach, INF))
    # keep (start lo) paired with the reach at the last member: shift ends to their start slot
    gid = torch.cumsum(start, 1) - 1
    K2 = int(start.sum(1).max()) if T else 0
    if K2 == 0:
        return empty(T)
    slot = torch.where(start, gid, torch.full_like(gid, K2))
    eslot = torch.where(nxt & (lo < INF) & (gid >= 0), gid, torch.full_like(gid, K2))
    nlo = torch.full((T, K2 + 1), INF, dtype=torch.int64).scatter_(1, slot, lo)
    nhi = torch.full((T, K2 + 1), INF, dtype=torch.int64).scatter_(1, eslot, end)
    return nlo[:, :K2], nhi[:, :K2]


def union(a: Iv, b: Iv) -> Iv:
    if is_empty(a) or is_full(b):
        return b
    if is_empty(b) or is_full(a):
        return a
    if a[0].shape[1] == 1 and b[0].shape[1] == 1:
        return _union11(a, b)
    return norm(torch.cat([a[0], b[0]], 1), torch.cat([a[1], b[1]], 1))


def _union11(a: Iv, b: Iv) -> Iv:
    first = a[0] <= b[0]
    x_lo = torch.where(first, a[0], b[0])
    x_hi = torch.where(first, a[1], b[1])
    y_lo = torch.where(first, b[0], a[0])
    y_hi = torch.where(first, b[1], a[1])
    touch = (y_lo <= x_hi) & (y_lo < INF)
    x_hi = torch.where(touch, torch.maximum(x_hi, y_hi), x_hi)
    y_lo = y_lo.masked_fill(touch, INF)
    y_hi = y_hi.masked_fill(touch, INF)
    if not bool((y_lo < INF).any()):
        return x_lo, x_hi
    return torch.cat([x_lo, y_lo], 1), torch.cat([x_hi, y_hi], 1)


def intersect(a: Iv, b: Iv) -> Iv:
    if is_empty(a) or is_full(b):
        return a
    if is_empty(b) or is_full(a):
        return b
    T = a[0].shape[0]
    K = a[0].shape[1] * b[0].shape[1]
    # (i, j) order of two sorted disjoint lists is sorted by position: compacting suffices
    lo = torch.maximum(a[0].unsqueeze(2), b[0].unsqueeze(1)).reshape(T, K)
    hi = torch.minimum(a[1].unsqueeze(2), b[1].unsqueeze(1)).reshape(T, K)
    return compact(lo, hi)


def complement(a: Iv) -> Iv:
    lo, hi = a
    T = lo.shape[0]
    clo = torch.cat([torch.full((T, 1), -INF, dtype=torch.int64), hi], 1)
    chi = torch.cat([lo, torch.full((T, 1), INF, dtype=torch.int64)], 1)
    return compact(clo, chi)


def difference(a: Iv, b: Iv) -> Iv:
    if is_empty(a) or is_empty(b):
        return a
    return intersect(a, complement(b))


def clip(a: Iv, lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    return compact(torch.maximum(a[0], lo.unsqueeze(1)), torch.minimum(a[1], hi.unsqueeze(1)))
