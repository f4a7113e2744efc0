"""BigBird-style random key blocks, exactly as LANGUAGE.md specifies them.

``R(i)`` for query block ``i`` is drawn from a splitmix64 stream that depends only
on ``(seed, i)`` and the candidate count, so the same spec and ``n`` give the same
blocks on every device, process and run.  Tables are always built on the CPU and
moved by the caller.

The draws are vectorised over query blocks with torch int64 tensors that hold the
64-bit patterns of unsigned values: addition, multiplication and xor wrap the same
way for signed and unsigned words, while right shifts and the final ``mod cand``
need the unsigned corrections below.  numpy would make this simpler, but it is not
one of the package's dependencies.
"""
from __future__ import annotations

from functools import lru_cache

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def splitmix64(x: int) -> int:
    """One splitmix64 step on a Python int, mod 2**64 (the scalar definition)."""
    x = (x + _GOLDEN) & _MASK64
    y = ((x ^ (x >> 30)) * _MUL1) & _MASK64
    y = ((y ^ (y >> 27)) * _MUL2) & _MASK64
    return y ^ (y >> 31)


def _signed(u: int) -> int:
    """The int64 whose bit pattern is the uint64 ``u``."""
    u &= _MASK64
    return u - (1 << 64) if u >= 1 << 63 else u


def _lshr(x, s: int):
    # torch's >> on int64 is arithmetic; clearing the sign-extended bits makes it logical.
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64_tensor(x):
    """splitmix64 on an int64 tensor of uint64 bit patterns (wrapping arithmetic)."""
    x = x + _signed(_GOLDEN)
    y = (x ^ _lshr(x, 30)) * _signed(_MUL1)
    y = (y ^ _lshr(y, 27)) * _signed(_MUL2)
    return y ^ _lshr(y, 31)


def _umod(x, c):
    """``u mod c`` for the uint64 ``u`` stored in the int64 ``x`` (``1 <= c < 2**61``)."""
    import torch

    r = torch.remainder(x, c)  # = (u - 2**64 * [x < 0]) mod c
    # 2**64 mod c, built from 2**62 so every intermediate stays below 2**63.
    wrap = torch.remainder(torch.remainder(torch.full_like(c, 1 << 62), c) * 4, c)
    return torch.where(x < 0, torch.remainder(r + wrap, c), r)


@lru_cache(maxsize=64)
def _table(count: int, block: int, seed: int, causal: bool, n: int):
    import torch

    nb = -(-n // block)
    table = torch.zeros((nb, nb), dtype=torch.bool)
    if nb == 0:
        return table
    rows = torch.arange(nb, dtype=torch.int64)
    cand = rows + 1 if causal else torch.full((nb,), nb, dtype=torch.int64)
    target = torch.clamp(cand, max=count)
    # A row that wants every candidate ends up with all of them whatever the draws
    # (splitmix64 is a bijection, so the stream hits every residue): skip its draws.
    full = target == cand
    table[full] = torch.arange(nb).unsqueeze(0) < cand[full].unsqueeze(1)
    base = splitmix64_tensor(torch.tensor(_signed(splitmix64(seed)), dtype=torch.int64) ^ rows)
    held = torch.zeros(nb, dtype=torch.int64)
    active = torch.nonzero(~full & (target > 0)).flatten()
    j = 0  # draws consumed so far by every still-active row
    width = 16
    while active.numel():
        # Draw a chunk of the stream at once, then keep, in stream order, the first
        # values that are new to the row until it holds its target: the same set as
        # drawing one at a time.  The chunk doubles so coupon-collector tails
        # (count close to cand) take few rounds.
        need = target[active] - held[active]
        width = max(width, 2 * int(need.max()))
        width = min(width, max(16, (1 << 22) // active.numel()))
        steps = torch.arange(j, j + width, dtype=torch.int64)
        draw = _umod(splitmix64_tensor(base[active].unsqueeze(1) + steps), cand[active].unsqueeze(1))
        order = torch.sort(draw, dim=1, stable=True)
        repeat = torch.zeros_like(draw, dtype=torch.bool)
        repeat[:, 1:] = order.values[:, 1:] == order.values[:, :-1]
        later = torch.zeros_like(repeat).scatter_(1, order.indices, repeat)
        fresh = ~later & ~table[active.unsqueeze(1), draw]
        take = fresh & (torch.cumsum(fresh, dim=1) <= need.unsqueeze(1))
        hit = take.nonzero()
        table[active[hit[:, 0]], draw[hit[:, 0], hit[:, 1]]] = True
        held[active] += take.sum(dim=1)
        active = active[held[active] < target[active]]
        j += width
        width *= 2
    return table


def random_blocks(count: int, block: int, seed: int, causal: bool, n: int):
    """``torch.bool [nb, nb]`` (on the CPU), ``nb = ceil(n / block)``: row ``i`` is ``R(i)``."""
    if block < 1 or count < 0 or n < 0:
        raise ValueError("random blocks need block >= 1, count >= 0 and n >= 0")
    # Counts above nb behave like nb; capping keeps huge literals out of int64 tensors.
    nb = -(-n // block)
    return _table(min(count, nb), block, seed & _MASK64, bool(causal), n).clone()


def random_block_lists(count: int, block: int, seed: int, causal: bool, n: int) -> list[tuple[int, ...]]:
    """``R(i)`` for every query block ``i``, each as a sorted tuple of key blocks."""
    table = random_blocks(count, block, seed, causal, n)
    return [tuple(row.nonzero().flatten().tolist()) for row in table]
