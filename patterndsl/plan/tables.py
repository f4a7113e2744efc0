"""Tables for the data-like primitives: random key blocks, document runs, and "groups".

A :class:`Group` describes a primitive that depends on which segment of the query axis a
query falls in: ``block(b)``, ``document``, ``random`` and ``blockwise``.  The query axis
``[0, n)`` is cut into segments; segment ``s`` allows the keys of a few disjoint runs
``[run_lo, run_hi)``.  Both the exact pair counts (atoms.py) and the per-tile key ranges
(spaces.py) read groups, so each of these primitives is lowered once, in O(n / b) or O(n).
"""
from __future__ import annotations

import torch

from ..randomblocks import splitmix64, splitmix64_tensor
from .arith import pick
from .runtime import (Group, block_group, document_group, document_runs, merge_runs,  # noqa: F401
                      random_group, runs_group, transposed_random_group)

_MASK64 = (1 << 64) - 1


def _signed(u: int) -> int:
    u &= _MASK64
    return u - (1 << 64) if u >= 1 << 63 else u


def _wrap(c: torch.Tensor) -> torch.Tensor:
    """``2**64 mod c`` (``1 <= c < 2**61``), built from 2**62 so nothing overflows."""
    return torch.remainder(torch.remainder(torch.full_like(c, 1 << 62), c) * 4, c)


def _umod(x: torch.Tensor, c: torch.Tensor, wrap: torch.Tensor) -> torch.Tensor:
    """``u mod c`` for uint64 bit patterns ``x`` held in int64, given ``wrap = 2**64 mod c``."""
    r = torch.remainder(x, c)
    return torch.where(x < 0, torch.remainder(r + wrap, c), r)


def random_table(count: int, block: int, seed: int, causal: bool, n: int) -> torch.Tensor:
    """``R(i)`` of LANGUAGE.md for every query block ``i``: int64 ``[ceil(n/block), r]`` with
    ``r = min(count, nb)``, each row ascending and padded with ``-1`` (causal rows that have
    fewer than ``r`` candidates).  O(nb * r) memory, unlike a dense ``[nb, nb]`` table."""
    nb = -(-n // block) if n > 0 else 0
    r = min(count, nb)
    table = torch.full((nb, r), -1, dtype=torch.int64)
    if nb == 0 or r == 0:
        return table
    rows = torch.arange(nb, dtype=torch.int64)
    cand = rows + 1 if causal else torch.full((nb,), nb, dtype=torch.int64)
    target = torch.clamp(cand, max=r)
    # A row wanting every candidate holds all of them whatever order the stream visits them.
    full = target == cand
    if bool(full.any()):
        cols = torch.arange(r, dtype=torch.int64)
        table[full] = torch.where(cols < cand[full].unsqueeze(1), cols, torch.full_like(cols, -1))
    base = splitmix64_tensor(torch.tensor(_signed(splitmix64(seed & _MASK64)), dtype=torch.int64) ^ rows)
    held = torch.zeros(nb, dtype=torch.int64)
    active = torch.nonzero(~full).flatten()
    wrap = _wrap(cand)
    j = 0
    # Draws are made a few stream positions at a time for all still-active rows, then taken
    # one stream position after another: a row takes a draw when it does not hold it yet and
    # still needs one (stream order, exactly as the definition).
    width = r + 2
    while active.numel():
        c = cand[active].unsqueeze(1)
        v = _umod(splitmix64_tensor(base[active].unsqueeze(1) + torch.arange(j, j + width)), c,
                  wrap[active].unsqueeze(1))
        rows = table[active]
        h = held[active]
        need = target[active]
        for col in range(width):
            x = v[:, col]
            new = ~(rows == x.unsqueeze(1)).any(1) & (h < need)
            idx = new.nonzero().flatten()
            rows[idx, h[idx]] = x[idx]
            h = h + new
        table[active] = rows
        held[active] = h
        active = active[h < need]
        j += width
    # Ascending rows, padding (-1) last.  Rows are short: an odd-even transposition network
    # over columns beats torch's row-wise sort.
    big = 1 << 62
    key = pick(table < 0, big, table)
    if r > 8:
        key = torch.sort(key, dim=1).values
    else:
        cols = list(key.unbind(1))
        for rnd in range(r):
            for i in range(rnd % 2, r - 1, 2):
                a, b = cols[i], cols[i + 1]
                cols[i], cols[i + 1] = torch.minimum(a, b), torch.maximum(a, b)
        key = torch.stack(cols, 1)
    return pick(key == big, -1, key)


__all__ = ["random_table", "Group", "block_group", "random_group", "transposed_random_group",
           "document_group", "document_runs", "runs_group", "merge_runs"]
