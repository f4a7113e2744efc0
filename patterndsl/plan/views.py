"""Views: how a part lays out the positions of one axis into tiles.

A view lists the positions ``[start, stop)`` residue class by residue class (``p mod
period``), each class padded to ``class_tiles`` tiles, so a tile never straddles two classes
(docs/PLAN.md, "Views").  ``period == 1`` is the plain, identity layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .arith import cdiv


@dataclass(frozen=True)
class View:
    period: int
    start: int
    stop: int
    block: int
    class_tiles: int

    @staticmethod
    def make(period: int, start: int, stop: int, block: int) -> "View":
        longest = -(-(stop - start) // period) if stop > start else 0
        return View(period, start, stop, block, -(-longest // block))

    @property
    def num_tiles(self) -> int:
        return self.period * self.class_tiles

    @property
    def num_slots(self) -> int:
        return self.num_tiles * self.block

    @property
    def class_slots(self) -> int:
        return self.class_tiles * self.block

    def first(self, c):
        """First position of residue class ``c`` (int or tensor)."""
        return self.start + (c - self.start) % self.period

    def count(self, c):
        """Positions in class ``c`` (int or tensor)."""
        f = self.first(c)
        if isinstance(f, torch.Tensor):
            return torch.clamp(cdiv(self.stop - f, self.period), min=0)
        return max(0, -(-(self.stop - f) // self.period))

    def tile_class(self, t):
        return t // self.class_tiles if self.class_tiles else t * 0

    def positions(self) -> torch.Tensor:
        """int64 ``[num_slots]``: the position of every slot, ``-1`` for padding."""
        v = torch.arange(self.num_slots, dtype=torch.int64)
        return self._pos(v)

    def tile_positions(self, tile) -> torch.Tensor:
        """int64 ``[block]`` (or ``[len(tile), block]`` for a tensor of tiles)."""
        t = torch.as_tensor(tile, dtype=torch.int64)
        v = t.unsqueeze(-1) * self.block + torch.arange(self.block, dtype=torch.int64)
        return self._pos(v)

    def _pos(self, v: torch.Tensor) -> torch.Tensor:
        if self.class_slots == 0:
            return torch.full_like(v, -1)
        c = v // self.class_slots
        t = v % self.class_slots
        ok = (t < self.count(c)) & (c < self.period)
        return torch.where(ok, self.first(c) + self.period * t, torch.full_like(v, -1))

    def valid_per_tile(self) -> torch.Tensor:
        """int64 ``[num_tiles]``: valid (non-padding) slots of each tile."""
        t = torch.arange(self.num_tiles, dtype=torch.int64)
        c = self.tile_class(t)
        u = t - c * self.class_tiles
        return torch.clamp(self.count(c) - u * self.block, min=0, max=self.block)

    def slot_of(self, pos: torch.Tensor) -> torch.Tensor:
        """The slot holding each position (positions must lie in ``[start, stop)``)."""
        c = torch.remainder(pos, self.period)
        return c * self.class_slots + (pos - self.first(c)) // self.period


@dataclass(frozen=True)
class ViewKind:
    """Which pair of views a part uses and how key classes pair with query classes.

    ``kind``: ``"id"`` (both identity), ``"d"`` (both residue ``s``, key class = query class
    minus ``r``: parts under ``(q - k) mod s == r``), ``"k"`` (keys residue ``s``, only key
    class ``r``), ``"q"`` (queries residue ``s``; keys identity).  ``qlo``/``qhi``, when
    set, restrict the query view to the positions ``[qlo, qhi)`` (parts under a row set, such
    as the rows of a ``global`` token)."""

    kind: str
    s: int = 1
    r: int = 0
    qlo: int | None = None
    qhi: int | None = None

    def rows(self, q0: int, q1: int) -> tuple[int, int]:
        a = q0 if self.qlo is None else min(max(q0, self.qlo), q1)
        b = q1 if self.qhi is None else max(min(q1, self.qhi), a)
        return a, b

    def views(self, q0: int, q1: int, n: int, bm: int, bn: int) -> tuple[View, View]:
        sq = self.s if self.kind in ("d", "q") else 1
        sk = self.s if self.kind in ("d", "k") else 1
        a, b = self.rows(q0, q1)
        return View.make(sq, a, b, bm), View.make(sk, 0, n, bn)

    def key_class(self, qclass: torch.Tensor) -> torch.Tensor:
        if self.kind == "d":
            return torch.remainder(qclass - self.r, self.s)
        if self.kind == "k":
            return torch.full_like(qclass, self.r)
        return torch.zeros_like(qclass)

    def order(self):
        restricted = self.qlo is not None or self.qhi is not None
        return (restricted, {"id": 0, "d": 1, "k": 2, "q": 3}[self.kind], self.s, self.r,
                -1 if self.qlo is None else self.qlo, -1 if self.qhi is None else self.qhi)


IDENTITY = ViewKind("id")


@dataclass
class Geom:
    """Per query tile of a part's q_view: its rows and the key class it pairs with.
    Rows of tile ``t`` are ``qf + sq * a`` for ``a`` in ``[a0, a1]``; keys of the paired
    class are ``kf + sk * b`` for ``b`` in ``[0, kcount)``."""

    n: int
    qv: View
    kv: View
    sq: int
    sk: int
    qf: torch.Tensor
    a0: torch.Tensor
    a1: torch.Tensor
    kf: torch.Tensor
    kcount: torch.Tensor
    kclass: torch.Tensor

    @staticmethod
    def make(kind: ViewKind, qv: View, kv: View, n: int) -> "Geom":
        t = torch.arange(qv.num_tiles, dtype=torch.int64)
        c = qv.tile_class(t)
        u = t - c * qv.class_tiles
        qf = qv.first(c)
        a0 = u * qv.block
        a1 = torch.minimum(qv.count(c), a0 + qv.block) - 1
        ck = kind.key_class(c)
        return Geom(n, qv, kv, qv.period, kv.period, qf, a0, a1, kv.first(ck), kv.count(ck), ck)

    @property
    def T(self) -> int:
        return self.qf.numel()

    @property
    def qmin(self):
        return self.qf + self.sq * self.a0

    @property
    def qmax(self):
        return self.qf + self.sq * self.a1

    @property
    def valid(self):
        return self.a1 >= self.a0
