"""Integer arithmetic the planner's closed forms rest on.

Everything here is exact integer math: Python ints for per-term constants, torch int64
tensors (vectorised over query tiles, segments or rectangles) for the rest.  The one
non-trivial routine is :func:`floor_sum`, the classic Euclid-like evaluation of
``sum_{i < cnt} floor((a*i + b) / m)`` in O(log m) steps, which turns "count the keys of a
residue class inside a band, summed over rows" into a handful of vector operations.
"""
from __future__ import annotations

import torch

from .runtime import (INF, cdiv, crt, fdiv, largest_pow2_divisor, lcm, pick, pow2_floor,  # noqa: F401
                      single_threaded)


def floor_sum(cnt: torch.Tensor, m: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_{i=0}^{cnt-1} floor((a*i + b) / m)`` elementwise (``cnt >= 0``, ``m >= 1``;
    ``a`` and ``b`` any sign)."""
    cnt, m, a, b = torch.broadcast_tensors(cnt.to(torch.int64), m.to(torch.int64),
                                           a.to(torch.int64), b.to(torch.int64))
    cnt = cnt.clone()
    m = m.clone()
    # Bring a and b into [0, m): the removed multiples contribute arithmetic series.
    qa = fdiv(a, m)
    a = a - qa * m
    qb = fdiv(b, m)
    b = b - qb * m
    ans = qa * (cnt * (cnt - 1) // 2) + qb * cnt
    while True:
        y = a * cnt + b
        active = y >= m
        if not bool(active.any()):
            return ans
        # Swap roles (the lattice-point count reflected along the diagonal); inactive lanes
        # are parked at cnt = 0, m = 1 so they contribute nothing more.
        ncnt = torch.where(active, fdiv(y, m), torch.zeros_like(y))
        nb = torch.where(active, y - fdiv(y, m) * m, torch.zeros_like(y))
        nm = torch.where(active, a, torch.ones_like(a))
        na = torch.where(active, m, torch.zeros_like(m))
        cnt, b, m, a = ncnt, nb, nm, na
        qa = fdiv(a, m)
        a = a - qa * m
        qb = fdiv(b, m)
        b = b - qb * m
        ans = ans + qa * (cnt * (cnt - 1) // 2) + qb * cnt
