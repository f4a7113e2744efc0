"""Integer arithmetic the planner's closed forms rest on.

Everything here is exact integer math: Python ints for per-term constants, torch int64
tensors (vectorised over query tiles, segments or rectangles) for the rest.  The one
non-trivial routine is :func:`floor_sum`, the classic Euclid-like evaluation of
``sum_{i < cnt} floor((a*i + b) / m)`` in O(log m) steps, which turns "count the keys of a
residue class inside a band, summed over rows" into a handful of vector operations.
"""
from __future__ import annotations

from math import gcd

import torch

# Unbounded interval ends.  Far above any position (n < 2**40 is enforced by the builder)
# and far below int64 overflow even after a few additions.
INF = 1 << 50


def lcm(a: int, b: int) -> int:
    return a // gcd(a, b) * b


def crt(r1: int, m1: int, r2: int, m2: int):
    """The class ``x = r (mod m)`` with ``x = r1 (mod m1)`` and ``x = r2 (mod m2)``, or None."""
    g = gcd(m1, m2)
    if (r2 - r1) % g:
        return None
    m = m1 // g * m2
    # x = r1 + m1 * t with m1 * t = r2 - r1 (mod m2)  ->  t = (r2 - r1)/g * inv(m1/g) mod m2/g
    mg = m2 // g
    t = ((r2 - r1) // g) * pow(m1 // g, -1, mg) % mg if mg > 1 else 0
    return (r1 + m1 * t) % m, m


def fdiv(a, b):
    """Floor division for tensors (and ints)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.div(a, b, rounding_mode="floor")
    return a // b


def cdiv(a, b):
    """Ceiling division for tensors (and ints)."""
    return -fdiv(-a, b)


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


def pow2_floor(x: int) -> int:
    """The largest power of two <= x (x >= 1)."""
    return 1 << (max(int(x), 1).bit_length() - 1)


def largest_pow2_divisor(x: int) -> int:
    return x & -x


def single_threaded(fn):
    """Run ``fn`` with one intra-op thread, restoring the caller's setting.

    Plans work on arrays of about n / block entries: far too small for a thread pool to
    pay, and on a busy machine the pool's synchronisation costs ten times the work."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        if before == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapper


def pick(cond: torch.Tensor, a, b) -> torch.Tensor:
    """``torch.where(cond, a, b)`` for int64 operands (tensors or ints), by arithmetic.

    On CPU, torch.where and masked_fill run several times slower than plain elementwise
    arithmetic; plans are made of such selections over ``[tiles, runs]`` arrays."""
    c = cond.to(torch.int64)
    if isinstance(b, int):
        if b == 0:
            return a * c
        return (a - b) * c + b
    return b + (a - b) * c
