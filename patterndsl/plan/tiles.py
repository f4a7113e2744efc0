"""The tile choice rule (docs/PLAN.md, section 5).

1. A base from head_dim and dtype: what a FlashAttention-style kernel keeps in SRAM and
   registers (16-bit: d <= 64 -> 128x128, d <= 128 -> 128x64, d <= 256 -> 64x64, else
   64x32; 32-bit halves block_n and uses block_m 64 above d = 64).
2. Caps from the pattern: tiles align with block-structured terms (largest power of two
   dividing each ``b`` of ``block``/``random``/``blockwise``, when >= 16); a band spanning
   ``w`` diagonals (in view coordinates) caps tiles at ``w / 4`` (so a tile row wastes at most
   ~half a band; a period too long for a residue view is a few width-1 diagonals, ``w = 1``,
   so 16 x 16 tiles); a residue view caps them at a quarter of the class length; short calls cap
   ``block_m`` at ``nq`` and ``block_n`` at ``n`` (rounded up to a power of two).
3. Never below 16 (the smallest tile a tensor-core kernel uses); forced sizes win.

The code lives in :mod:`.runtime`, shared with generated kernel modules.
"""
from __future__ import annotations

from .runtime import MIN_TILE, base_tiles, choose, granule  # noqa: F401
