"""Per-call tables for the table parts of a dynamic line (built on the device, no host read).

For one head group (query heads ``heads`` of one spec line, ``BH = B * len(heads)`` rows,
row ``bh = b * len(heads) + i``) and one :class:`~.split.DynamicSplit`:

* **atom tables**, read by the element predicates of every table part:
  ``dyn`` uint8 ``[BH, L]`` holds one bitmap of ``n`` entries per ``vertical`` term (keys) and
  per ``slash`` term (offsets ``q - k``), at ``layout[term]``; ``blk`` int32 ``[BH, Lb]``
  holds per ``blocks`` term its ``[nqb, W]`` key-block lists (``-1`` padded), at
  ``blk_layout[term] = (offset, W, first_block, block, nqb)``.
* **visit tables**, one :class:`TablePart` per part: which keys a query tile visits.

  ========  ==========================================================================
  mode      a query tile ``t`` of a ``(bh)`` row visits
  ========  ==========================================================================
  0 gather  (``vertical``) the selected columns ``list[bh, lo:hi]`` (sorted), ``block_n``
            at a time: the columns inside the key interval of the part's hull
  1 diag    (``slash``) the key windows ``list[bh, lo:hi]``: window ``m`` is keys
            ``[p0 + bm - (m+1) bn, p0 + bm - m bn)`` (``p0`` the tile's first row); every
            pair on a selected diagonal ``o`` lies in window ``o // bn .. (o+bm-1) // bn``,
            so ``m`` is listed when a selected offset is in ``[m bn - bm + 1, m bn + bn)``
            (one prefix sum over the offset bitmap); windows partition the keys, so no
            pair is visited twice
  2 blocks  (``blocks``) query tiles are ``(query block r, sub-tile)``; the chosen key
            blocks ``list[bh, lo:hi]`` of block ``r`` (sorted) inside the key-block
            interval of the part's hull over the sub-tile's rows, each cut into
            ``ceil(b / bn)`` windows of its own keys
  ========  ==========================================================================

  ``lo``/``hi`` are int32 ``[BH, num_tiles]``.  Modes 0 and 2 visit only pairs where
  their own term holds, so their kernels evaluate ``kernel_predicate`` (the part's
  predicate without that atom, :attr:`.split.TablePartSpec.visit`); mode 1 visits whole
  windows and evaluates the exact predicate.  Everything is sized from shapes and spec
  numbers; nothing is ``n x n``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import ir
from .split import DynamicSplit, key_interval

__all__ = ["CallTables", "TablePart", "build_tables", "PAD"]

PAD = 1 << 30   # sorts after every position, offset and window number


@dataclass(eq=False)
class TablePart:
    predicate: ir.Expr      # exact pairs of the part, dynamic leaves read from the tables
    term: ir.Expr
    kernel_predicate: ir.Expr  # what kernels evaluate on the slots they visit (see below)
    mode: int               # 0 gather (vertical), 1 diagonal windows (slash), 2 blocks
    block_m: int
    block_n: int
    num_tiles: int
    list: torch.Tensor      # int32 [BH, W]
    lo: torch.Tensor        # int32 [BH, num_tiles]
    hi: torch.Tensor
    bsize: int = 0          # mode 2: the block size and sub-tiles per query block
    sub_tiles: int = 1
    first_block: int = 0

    def tile_rows(self, q_offset: int, nq: int):
        """``(first, end)`` int64 ``[num_tiles]``: the query positions ``[first, end)`` of
        each tile (``end`` may be ``<= first`` for empty sub-tiles of a short block)."""
        t = torch.arange(self.num_tiles, device=self.lo.device)
        if self.mode == 2:
            r, sub = torch.div(t, self.sub_tiles, rounding_mode="floor"), t % self.sub_tiles
            qb = self.first_block + r
            first = torch.clamp(qb * self.bsize, min=q_offset) + sub * self.block_m
            end = torch.clamp(qb * self.bsize + self.bsize, max=q_offset + nq)
            end = torch.minimum(end, first + self.block_m)
            return first, end
        first = q_offset + t * self.block_m
        return first, torch.clamp(first + self.block_m, max=q_offset + nq)

    def executed_pairs(self, q_offset: int, nq: int) -> torch.Tensor:
        """int64 scalar tensor (on the device): valid rows times key slots visited
        (mode 0: the gathered columns; modes 1, 2: whole windows)."""
        first, end = self.tile_rows(q_offset, nq)
        rows = (end - first).clamp(min=0)
        visits = (self.hi.long() - self.lo.long()).clamp(min=0)
        if self.mode == 1:
            visits = visits * self.block_n
        elif self.mode == 2:
            visits = visits * self.bsize
        return (visits * rows).sum()


@dataclass(eq=False)
class CallTables:
    n: int
    nq: int
    q_offset: int
    BH: int
    dyn: torch.Tensor                                   # uint8 [BH, L]
    blk: torch.Tensor                                   # int32 [BH, Lb]
    layout: dict = field(default_factory=dict)          # term -> offset into dyn rows
    blk_layout: dict = field(default_factory=dict)      # term -> (offset, W, first, block, nqb)
    parts: list = field(default_factory=list)
    _block_bitmaps: dict = field(default_factory=dict)
    _slash_prefix: dict = field(default_factory=dict)

    def slash_prefix(self, term) -> torch.Tensor:
        """int64 ``[BH, n + 1]``: selected offsets below each offset (built once, for the
        torch backend's tile bounds)."""
        if term not in self._slash_prefix:
            off = self.layout[term]
            cs = torch.zeros((self.BH, self.n + 1), dtype=torch.int64, device=self.dyn.device)
            cs[:, 1:] = torch.cumsum(self.dyn[:, off:off + self.n].to(torch.int64), 1)
            self._slash_prefix[term] = cs
        return self._slash_prefix[term]

    def vertical_bitmap(self, term) -> torch.Tensor:
        off = self.layout[term]
        return self.dyn[:, off:off + self.n]

    def block_bitmap(self, term) -> torch.Tensor:
        """bool ``[BH, nqb, nb]`` (built once, for the torch backend's predicate)."""
        if term not in self._block_bitmaps:
            off, W, first, b, nqb = self.blk_layout[term]
            nb = -(-self.n // b) if self.n else 0
            lists = self.blk[:, off:off + nqb * W].view(self.BH, nqb, W).long()
            bm = torch.zeros((self.BH, nqb, nb + 1), dtype=torch.bool, device=self.blk.device)
            bm.scatter_(2, torch.where(lists >= 0, lists, nb), True)
            self._block_bitmaps[term] = bm[:, :, :nb]
        return self._block_bitmaps[term]


def _pow2(x: int) -> int:
    return 1 << (max(x, 1) - 1).bit_length()


def _rows(sel, heads: torch.Tensor) -> torch.Tensor:
    """``sel.index`` restricted to ``heads``, batch and head merged: ``[BH, ...]``."""
    idx = sel.index.index_select(1, heads.to(sel.index.device))
    return idx.reshape(idx.shape[0] * idx.shape[1], *idx.shape[2:])


def _bitmap(items: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 ``[BH, n]`` with 1 at the (non-negative) entries of ``items [BH, W]``."""
    out = torch.zeros((items.shape[0], n + 1), dtype=torch.uint8, device=items.device)
    out.scatter_(1, torch.where(items >= 0, items, n).clamp(max=n), 1)
    return out[:, :n]


def _sorted_padded(items: torch.Tensor) -> torch.Tensor:
    """``items`` (ascending, -1 padded) with ``PAD`` instead of -1, int64."""
    return torch.where(items >= 0, items, PAD).long()


def _fdiv(a, b):
    return torch.div(a, b, rounding_mode="floor")


def build_tables(sp: DynamicSplit, selections: dict, heads: list[int], B: int, nq: int, n: int,
                 q_offset: int, *, block_m: int = 64, block_n: int = 64) -> CallTables:
    """Atom and visit tables for the query heads ``heads`` of one line."""
    dev = next(iter(selections.values())).index.device if selections else torch.device("cpu")
    hs = torch.tensor(heads, dtype=torch.int64, device=dev)
    BH = B * len(heads)
    bitmaps, layout, lists, blk_layout = [], {}, [], {}
    off = boff = 0
    for term in sp.terms:
        sel = selections[term]
        if sel.kind in ("vertical", "slash"):
            layout[term] = off
            bitmaps.append(_bitmap(_rows(sel, hs), n))
            off += n
        else:
            rows = _rows(sel, hs)                                   # [BH, nqb, W]
            nqb, W = rows.shape[1], rows.shape[2]
            blk_layout[term] = (boff, W, sel.first_block, sel.block, nqb)
            lists.append(rows.reshape(BH, nqb * W))
            boff += nqb * W
    dyn = torch.cat(bitmaps, 1) if bitmaps else torch.zeros((BH, 1), dtype=torch.uint8, device=dev)
    blk = (torch.cat(lists, 1).to(torch.int32) if lists and boff
           else torch.full((BH, 1), -1, dtype=torch.int32, device=dev))
    tabs = CallTables(n, nq, q_offset, BH, dyn.contiguous(), blk.contiguous(), layout, blk_layout)
    for ps in sp.parts:
        sel = selections[ps.term]
        if sel.kind == "blocks":
            part = _blocks_part(ps, sel, hs, BH, nq, n, q_offset, block_m, block_n)
        else:
            bm, bn = block_m, block_n
            nt = -(-nq // bm)
            first = q_offset + torch.arange(nt, device=dev) * bm
            last = torch.clamp(first + bm, max=q_offset + nq) - 1
            lo_k, hi_k = key_interval(ps.hull, first, last, n)
            if sel.kind == "vertical":
                cols = _sorted_padded(_rows(sel, hs))                # [BH, W]
                lo = torch.searchsorted(cols, lo_k.expand(BH, nt).contiguous())
                hi = torch.searchsorted(cols, hi_k.expand(BH, nt).contiguous())
                part = TablePart(ps.predicate, ps.term, ps.visit, 0, bm, bn, nt,
                                 torch.where(cols < PAD, cols, -1).to(torch.int32).contiguous(),
                                 lo.to(torch.int32), hi.to(torch.int32))
            else:
                part = _slash_part(ps, tabs.dyn[:, layout[ps.term]:layout[ps.term] + n], BH, n,
                                   bm, bn, nt, first, last, lo_k, hi_k)
        tabs.parts.append(part)
    return tabs


def _slash_part(ps, offsets_bm, BH, n, bm, bn, nt, first, last, lo_k, hi_k):
    dev = offsets_bm.device
    M = -(-(n + bm) // bn) + 1                  # windows that can hold a key of a tile
    cs = torch.zeros((BH, n + 1), dtype=torch.int32, device=dev)
    cs[:, 1:] = torch.cumsum(offsets_bm.to(torch.int32), 1)
    m = torch.arange(M, device=dev)
    a = (m * bn - bm + 1).clamp(min=0, max=n)
    b = (m * bn + bn).clamp(min=0, max=n)
    hit = (cs[:, b] - cs[:, a]) > 0                                   # [BH, M]
    key = torch.where(hit, m, PAD)
    wins = torch.sort(key, dim=1).values                              # ascending, PAD last
    # Keys of a slash part are at most the tile's last row (offsets are >= 0).
    hi_k = torch.minimum(hi_k, last + 1)
    m_lo = (_fdiv(first + bm - bn - hi_k, bn) + 1).clamp(min=0)
    m_hi = -_fdiv(-(first + bm - lo_k), bn)
    m_hi = torch.maximum(m_hi, m_lo)
    lo = torch.searchsorted(wins, m_lo.expand(BH, nt).contiguous())
    hi = torch.searchsorted(wins, m_hi.expand(BH, nt).contiguous())
    wins = torch.where(wins < PAD, wins, -1).to(torch.int32).contiguous()
    return TablePart(ps.predicate, ps.term, ps.predicate, 1, bm, bn, nt, wins, lo.to(torch.int32),
                     hi.to(torch.int32))


def _blocks_part(ps, sel, hs, BH, nq, n, q_offset, block_m, block_n):
    b = sel.block
    bm = min(block_m, max(16, _pow2(b)))
    bn = min(block_n, max(16, _pow2(b)))
    rows = _rows(sel, hs)                                             # [BH, nqb, W]
    nqb, W = rows.shape[1], rows.shape[2]
    dev = rows.device
    sub = -(-b // bm)
    count = _rows_count(sel, hs)                                      # [BH, nqb]
    # Each block's chosen key blocks, ascending, PAD after the count: a sub-tile's visits
    # are then the contiguous run inside its hull's key-block interval.
    j = torch.arange(W, device=dev)
    chosen = (j < count.unsqueeze(-1)) & (rows >= 0)
    srt = torch.sort(torch.where(chosen, rows.long(), PAD), dim=2).values  # [BH, nqb, W]
    t = torch.arange(nqb * sub, device=dev)
    r, s = _fdiv(t, sub), t % sub
    qb = sel.first_block + r
    first = torch.clamp(qb * b, min=q_offset) + s * bm
    end = torch.minimum(torch.clamp(qb * b + b, max=q_offset + nq), first + bm)
    lo_k, hi_k = key_interval(ps.hull, first, torch.maximum(end - 1, first), n)
    blo = _fdiv(lo_k, b)
    bhi = torch.where((hi_k > lo_k) & (end > first), -_fdiv(-hi_k, b), blo)
    vals = torch.stack((blo, bhi), 0).view(2, nqb, sub).permute(1, 0, 2).reshape(nqb, 2 * sub)
    at = torch.searchsorted(srt, vals.expand(BH, nqb, 2 * sub).contiguous())
    base = (r * W).view(1, -1)
    lo = base + at[:, :, :sub].reshape(BH, nqb * sub)
    hi = base + at[:, :, sub:].reshape(BH, nqb * sub)
    lst = torch.where(srt < PAD, srt, -1).reshape(BH, nqb * W)
    return TablePart(ps.predicate, ps.term, ps.visit, 2, bm, bn, nqb * sub,
                     lst.to(torch.int32).contiguous(),
                     lo.to(torch.int32).contiguous(), hi.to(torch.int32).contiguous(),
                     bsize=b, sub_tiles=sub, first_block=sel.first_block)


def _rows_count(sel, heads):
    c = sel.count.index_select(1, heads.to(sel.count.device))
    return c.reshape(c.shape[0] * c.shape[1], *c.shape[2:])
