"""Tables for the data-like primitives: random key blocks, document runs, and "groups".

A :class:`Group` describes a primitive that depends on which segment of the query axis a
query falls in: ``block(b)``, ``document``, ``random`` and ``blockwise``.  The query axis
``[0, n)`` is cut into segments; segment ``s`` allows the keys of a few disjoint runs
``[run_lo, run_hi)``.  Both the exact pair counts (atoms.py) and the per-tile key ranges
(spaces.py) read groups, so each of these primitives is lowered once, in O(n / b) or O(n).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..randomblocks import splitmix64, splitmix64_tensor
from .arith import pick

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


@dataclass(frozen=True, eq=False)
class Group:
    """Segments of the query axis, each with disjoint key runs.

    Segment ``s`` covers queries ``[seg_starts[s], seg_starts[s+1])`` (the last one up to
    ``n``) and allows keys in ``[run_lo[j], run_hi[j])`` for ``ptr_lo[s] <= j < ptr_hi[s]``."""

    n: int
    seg_starts: torch.Tensor   # int64 [S], seg_starts[0] == 0
    ptr_lo: torch.Tensor       # int64 [S]
    ptr_hi: torch.Tensor       # int64 [S]
    run_lo: torch.Tensor       # int64 [R]
    run_hi: torch.Tensor       # int64 [R]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_segments(self) -> int:
        return int(self.seg_starts.numel())

    @property
    def max_runs(self) -> int:
        if "max_runs" not in self._cache:
            c = self.ptr_hi - self.ptr_lo
            self._cache["max_runs"] = int(c.max()) if c.numel() else 0
        return self._cache["max_runs"]

    def segment_of(self, q: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.seg_starts, q, right=True) - 1

    def runs_of(self, seg: torch.Tensor, width: int | None = None):
        """``(lo, hi)`` of shape ``[*seg.shape, width]``: the runs of each segment, empty
        (``lo == hi == 0``) past its count."""
        width = self.max_runs if width is None else width
        j = self.ptr_lo[seg].unsqueeze(-1) + torch.arange(width, dtype=torch.int64)
        ok = j < self.ptr_hi[seg].unsqueeze(-1)
        j = pick(ok, j, 0)
        if self.run_lo.numel() == 0:
            z = torch.zeros(j.shape, dtype=torch.int64)
            return z, z
        return pick(ok, self.run_lo[j], 0), pick(ok, self.run_hi[j], 0)

    def _sparse(self, which: str):
        """Sparse tables (range min of run starts / range max of run ends per segment)."""
        if which not in self._cache:
            lo, hi = self.runs_of(torch.arange(self.num_segments))
            has = hi > lo
            big = 1 << 60
            if which == "min":
                base = torch.where(has, lo, torch.full_like(lo, big)).amin(1) if lo.shape[1] else \
                    torch.full((self.num_segments,), big, dtype=torch.int64)
                op = torch.minimum
            else:
                base = torch.where(has, hi, torch.full_like(hi, -big)).amax(1) if hi.shape[1] else \
                    torch.full((self.num_segments,), -big, dtype=torch.int64)
                op = torch.maximum
            levels = [base]
            step = 1
            while 2 * step <= base.numel():
                prev = levels[-1]
                levels.append(op(prev[:-step], prev[step:]))
                step *= 2
            self._cache[which] = levels
        return self._cache[which]

    def range_hull(self, s0: torch.Tensor, s1: torch.Tensor):
        """Per pair of segments ``s0 <= s1``: (smallest run start, largest run end) over the
        segments ``s0 .. s1`` (``lo > hi`` when they hold no run)."""
        mins, maxs = self._sparse("min"), self._sparse("max")
        length = (s1 - s0 + 1).clamp(min=1)
        lev = torch.floor(torch.log2(length.to(torch.float64))).to(torch.int64)
        # float log2 can be off by one at exact powers of two; fix it with integer checks
        lev = torch.where((1 << (lev + 1)) <= length, lev + 1, lev)
        lev = torch.where((1 << lev) > length, lev - 1, lev)
        lo = torch.empty_like(s0)
        hi = torch.empty_like(s0)
        for k in range(len(mins)):
            sel = lev == k
            if bool(sel.any()):
                a, b = s0[sel], s1[sel] - (1 << k) + 1
                lo[sel] = torch.minimum(mins[k][a], mins[k][b])
                hi[sel] = torch.maximum(maxs[k][a], maxs[k][b])
        return lo, hi


def block_group(b: int, n: int) -> Group:
    starts = torch.arange(0, max(n, 1), b, dtype=torch.int64)
    idx = torch.arange(starts.numel(), dtype=torch.int64)
    return Group(n, starts, idx, idx + 1, starts, torch.clamp(starts + b, max=n))


def random_group(count: int, block: int, seed: int, causal: bool, n: int, table: torch.Tensor) -> Group:
    nb, r = table.shape
    b = block
    starts = torch.arange(nb, dtype=torch.int64) * b if nb else torch.zeros(1, dtype=torch.int64)
    if nb == 0:
        z = torch.zeros(1, dtype=torch.int64)
        return Group(n, starts, z, z, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    held = (table >= 0).sum(1)
    ptr_lo = torch.arange(nb, dtype=torch.int64) * r
    flat = table.reshape(-1)
    lo = torch.where(flat >= 0, flat * b, torch.zeros_like(flat))
    hi = torch.where(flat >= 0, torch.clamp(flat * b + b, max=n), torch.zeros_like(flat))
    return Group(n, starts, ptr_lo, ptr_lo + held, lo, hi)


def transposed_random_group(b: int, n: int, table: torch.Tensor) -> Group:
    """Random blocks read by columns: segment ``j`` (key block) holds the query blocks
    ``i`` with ``j`` in ``R(i)``, as runs of positions."""
    nb, r = table.shape
    if nb == 0 or r == 0:
        starts = torch.arange(max(nb, 1), dtype=torch.int64) * b
        z = torch.zeros(starts.numel(), dtype=torch.int64)
        e = torch.zeros(0, dtype=torch.int64)
        return Group(n, starts, z, z, e, e)
    i = torch.arange(nb, dtype=torch.int64).unsqueeze(1).expand(nb, r).reshape(-1)
    j = table.reshape(-1)
    keep = j >= 0
    i, j = i[keep], j[keep]
    order = torch.argsort(j * nb + i)
    i, j = i[order], j[order]
    counts = torch.bincount(j, minlength=nb)
    ptr_hi = torch.cumsum(counts, 0)
    return Group(n, torch.arange(nb, dtype=torch.int64) * b, ptr_hi - counts, ptr_hi, i * b,
                 torch.clamp(i * b + b, max=n))


def document_runs(doc_ids: torch.Tensor):
    """(starts, ends, ids) of the maximal runs of equal document ids (one O(n) pass)."""
    n = doc_ids.numel()
    if n == 0:
        e = torch.zeros(0, dtype=torch.int64)
        return e, e, e
    ids, counts = torch.unique_consecutive(doc_ids, return_counts=True)
    ends = torch.cumsum(counts, 0)
    return ends - counts, ends, ids


def document_group(doc_ids: torch.Tensor, runs=None) -> Group:
    """Segments are the runs of equal ids; a segment's key runs are every run with its id
    (a document may be split into several runs; usually there is one)."""
    n = doc_ids.numel()
    if n == 0:
        z = torch.zeros(1, dtype=torch.int64)
        e = torch.zeros(0, dtype=torch.int64)
        return Group(0, z, z, z, e, e)
    starts, ends, ids = document_runs(doc_ids) if runs is None else runs
    order = torch.sort(ids, stable=True).indices
    sorted_ids = ids[order]
    ptr_lo = torch.searchsorted(sorted_ids, ids, right=False)
    ptr_hi = torch.searchsorted(sorted_ids, ids, right=True)
    return Group(n, starts, ptr_lo, ptr_hi, starts[order], ends[order])


def runs_group(b: int, n: int, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, nrows: int) -> Group:
    """A group with segments of ``b`` queries and key runs given in block units as flat,
    row-sorted, disjoint ``[lo, hi)`` lists (expanded here to positions)."""
    starts = torch.arange(nrows, dtype=torch.int64) * b if nrows else torch.zeros(1, dtype=torch.int64)
    counts = torch.bincount(rows, minlength=max(nrows, 1))[: max(nrows, 1)]
    ptr_hi = torch.cumsum(counts, 0)
    ptr_lo = ptr_hi - counts
    return Group(n, starts, ptr_lo, ptr_hi, lo * b, torch.clamp(hi * b, max=n))


def merge_runs(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Union of flat intervals grouped by row: returns row-sorted disjoint (rows, lo, hi)."""
    keep = hi > lo
    rows, lo, hi = rows[keep], lo[keep], hi[keep]
    if rows.numel() == 0:
        return rows, lo, hi
    span = int(hi.max()) + 1
    order = torch.argsort(rows * span + lo)
    rows, lo, hi = rows[order], lo[order], hi[order]
    # running maximum of hi within each row (rows are sorted, so a key offset by the row
    # keeps earlier rows below), to find where a new merged run starts
    key = rows * span + hi
    reach_key = torch.cummax(key, 0).values
    reach = reach_key - rows * span
    prev_reach = torch.cat([torch.tensor([-1], dtype=torch.int64), reach[:-1]])
    prev_row = torch.cat([torch.tensor([-1], dtype=torch.int64), rows[:-1]])
    start = (rows != prev_row) | (lo > prev_reach)
    gid = torch.cumsum(start.to(torch.int64), 0) - 1
    ng = int(gid[-1]) + 1
    g_rows = rows[start]
    g_lo = lo[start]
    g_hi = torch.full((ng,), -1, dtype=torch.int64).scatter_reduce(0, gid, hi, reduce="amax")
    return g_rows, g_lo, g_hi


__all__ = ["random_table", "Group", "block_group", "random_group", "transposed_random_group",
           "document_group", "document_runs", "runs_group", "merge_runs"]
