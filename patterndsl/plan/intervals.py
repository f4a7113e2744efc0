"""Sets of integer intervals, one set per query tile, as ``[T, K]`` tensors.

``lo[t, i] <= x < hi[t, i]``.  A normalised set is sorted, disjoint, non-adjacent, with
padding entries ``(INF, INF)`` after the real ones, and no all-padding column.

Cost matters (a 1M-token plan has 16K tiles): intersections, complements and clips of
normalised sets keep the order of what survives, so they only *compact* (left-align the
survivors with a cumulative sum); only unions and re-roundings need a sort.
"""
from __future__ import annotations

import torch

from .arith import INF, pick

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
    return pick(c, a[0], b[0]), pick(c, a[1], b[1])


def single(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    lo = torch.clamp(lo.reshape(-1, 1), -INF, INF)
    hi = torch.clamp(hi.reshape(-1, 1), -INF, INF)
    bad = hi <= lo
    return pick(bad, INF, lo), pick(bad, INF, hi)


def compact(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    """Normalise a set that is sorted and disjoint except for empty entries anywhere."""
    T, K = lo.shape
    lo = torch.clamp(lo, -INF, INF)
    hi = torch.clamp(hi, -INF, INF)
    bad = hi <= lo
    if K == 1:
        return pick(bad, INF, lo), pick(bad, INF, hi)
    good = ~bad
    counts = good.sum(1)
    K2 = int(counts.max()) if T else 0
    if K2 == 0:
        return empty(T)
    if K2 == K and bool(good[:, :K2].all()):
        return lo, hi
    slot = torch.cumsum(good, 1) - 1
    slot = pick(good, slot, K2)   # dump column
    nlo = torch.full((T, K2 + 1), INF, dtype=torch.int64).scatter_(1, slot, lo)
    nhi = torch.full((T, K2 + 1), INF, dtype=torch.int64).scatter_(1, slot, hi)
    return nlo[:, :K2], nhi[:, :K2]


def norm(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    """Normalise any set of intervals (sort, then merge overlapping or touching ones)."""
    T, K = lo.shape
    if K <= 1:
        return compact(lo, hi) if K else empty(T)
    bad = hi <= lo
    order = torch.argsort(pick(bad, INF + 1, lo), dim=1)
    return merge_sorted(torch.gather(lo, 1, order), torch.gather(hi, 1, order))


def merge_sorted(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    """Normalise a set whose non-empty entries are already ordered by ``lo`` (empties may
    sit anywhere): e.g. a normalised set rounded outwards."""
    T, K = lo.shape
    if K == 1:
        return compact(lo, hi)
    lo = torch.clamp(lo, -INF, INF)
    hi = torch.clamp(hi, -INF, INF)
    real = hi > lo
    h = pick(real, hi, -INF - 1)
    reach = torch.cummax(h, dim=1).values
    prev = torch.cat([torch.full((T, 1), -INF - 1, dtype=torch.int64), reach[:, :-1]], 1)
    start = real & (lo > prev)
    gid = torch.cumsum(start, 1) - 1
    K2 = int(start.sum(1).max()) if T else 0
    if K2 == 0:
        return empty(T)
    slot = pick(start, gid, K2)
    mslot = pick(real, gid, K2)
    nlo = torch.full((T, K2 + 1), INF, dtype=torch.int64).scatter_(1, slot, lo)
    nhi = torch.full((T, K2 + 1), -INF, dtype=torch.int64).scatter_reduce(1, mslot, h, reduce="amax")
    nlo, nhi = nlo[:, :K2], nhi[:, :K2]
    return nlo, pick(nlo < INF, nhi, INF)


def interleave(a: Iv, b: Iv, extra=None):
    """The entries of two normalised sets in position order, without a row-wise sort
    (torch sorts short rows slowly): each entry's rank is its index plus the number of the
    other set's entries before it.  ``extra``: per-set tensors ``(xa, xb)`` carried along."""
    T, Ka = a[0].shape
    Kb = b[0].shape[1]
    K = Ka + Kb
    ra = torch.arange(Ka) + torch.searchsorted(b[0].contiguous(), a[0].contiguous(), right=False)
    rb = torch.arange(Kb) + torch.searchsorted(a[0].contiguous(), b[0].contiguous(), right=True)
    ra = pick(a[0] < INF, ra, K)
    rb = pick(b[0] < INF, rb, K)

    def put(x, y, fill):
        out = torch.full((T, K + 1), fill, dtype=x.dtype)
        return out.scatter_(1, ra, x).scatter_(1, rb, y)[:, :K]
    lo = put(a[0], b[0], INF)
    hi = put(a[1], b[1], INF)
    if extra is None:
        return lo, hi
    return lo, hi, put(extra[0], extra[1], False)


def union(a: Iv, b: Iv) -> Iv:
    if is_empty(a) or is_full(b):
        return b
    if is_empty(b) or is_full(a):
        return a
    if a[0].shape[1] == 1 and b[0].shape[1] == 1:
        return _union11(a, b)
    return merge_sorted(*interleave(a, b))


def _union11(a: Iv, b: Iv) -> Iv:
    first = a[0] <= b[0]
    x_lo = torch.minimum(a[0], b[0])
    x_hi = pick(first, a[1], b[1])
    y_lo = torch.maximum(a[0], b[0])
    y_hi = pick(first, b[1], a[1])
    touch = (y_lo <= x_hi) & (y_lo < INF)
    x_hi = pick(touch, torch.maximum(x_hi, y_hi), x_hi)
    y_lo = pick(touch, INF, y_lo)
    y_hi = pick(touch, INF, y_hi)
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
