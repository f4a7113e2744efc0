"""The tile choice rule (docs/PLAN.md, section 5).

1. A base from head_dim and dtype: what a FlashAttention-style kernel keeps in SRAM and
   registers (16-bit: d <= 64 -> 128x128, d <= 128 -> 128x64, d <= 256 -> 64x64, else
   64x32; 32-bit halves block_n and uses block_m 64 above d = 64).
2. Caps from the pattern: tiles align with block-structured terms (largest power of two
   dividing each ``b`` of ``block``/``random``/``blockwise``, when >= 16); a band spanning
   ``w`` diagonals (in view coordinates) caps tiles at ``w / 4`` (so a tile row wastes at most
   ~half a band); a residue view caps them at a quarter of the class length; short calls cap
   ``block_m`` at ``nq`` and ``block_n`` at ``n`` (rounded up to a power of two).
3. Never below 16 (the smallest tile a tensor-core kernel uses); forced sizes win.
"""
from __future__ import annotations

import torch

from .. import ir
from .arith import largest_pow2_divisor, pow2_floor
from .parts import extent
from .views import ViewKind

MIN_TILE = 16


def base_tiles(head_dim: int, dtype) -> tuple[int, int]:
    wide = torch.empty((), dtype=dtype).element_size() >= 4 if dtype is not None else False
    if head_dim <= 64:
        bm, bn = 128, 128
    elif head_dim <= 128:
        bm, bn = 128, 64
    elif head_dim <= 256:
        bm, bn = 64, 64
    else:
        bm, bn = 64, 32
    if wide:
        bn = max(MIN_TILE, bn // 2)
        if head_dim > 64:
            bm = 64
    return bm, bn


def granule(e: ir.Expr) -> int | None:
    """The alignment cap from block-structured terms (None: no constraint)."""
    caps = []
    for x in _walk_outer(e):
        b = None
        if isinstance(x, ir.Block):
            b = x.size
        elif isinstance(x, ir.Random):
            b = x.block
        elif isinstance(x, ir.Blockwise):
            b = x.block
        if b is not None:
            g = largest_pow2_divisor(b)
            if g >= MIN_TILE:
                caps.append(g)
    return min(caps) if caps else None


def _walk_outer(e: ir.Expr):
    """Nodes of ``e`` without descending into blockwise bodies (those are in block units)."""
    yield e
    if isinstance(e, ir.Blockwise):
        return
    for c in e.children():
        yield from _walk_outer(c)


def _pow2_ceil(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def choose(e: ir.Expr, kind: ViewKind, n: int, nq: int, head_dim: int, dtype) -> tuple[int, int]:
    """``nq``: the query rows the part's view holds."""
    bm, bn = base_tiles(head_dim, dtype)
    caps_m, caps_n = [], []
    g = granule(e)
    if g is not None:
        caps_m.append(g)
        caps_n.append(g)
    sk = kind.s if kind.kind in ("d", "k") else 1
    w = extent(e, sk, n)
    if isinstance(w, int):
        c = pow2_floor(max(w // 4, 1))
        caps_m.append(c)
        caps_n.append(c)
    if kind.kind in ("d", "q"):
        caps_m.append(pow2_floor(max(-(-n // kind.s) // 4, 1)))
    if kind.kind in ("d", "k"):
        caps_n.append(pow2_floor(max(-(-n // kind.s) // 4, 1)))
    caps_m.append(_pow2_ceil(max(nq, 1)))
    caps_n.append(_pow2_ceil(max(n, 1)))
    bm = max(MIN_TILE, min([bm] + caps_m))
    bn = max(MIN_TILE, min([bn] + caps_n))
    return bm, bn
