"""Sets of integer intervals, one set per query tile, as ``[T, K]`` tensors.

``lo[t, i] <= x < hi[t, i]``; see :mod:`.runtime` (the ``iv_*`` functions), where the code
lives so that generated kernel modules share it.  This module gives them their short names.
"""
from __future__ import annotations

from .runtime import (iv_choose as choose, iv_clip as clip, iv_compact as compact,  # noqa: F401
                      iv_complement as complement, iv_difference as difference, iv_empty as empty,
                      iv_full as full, iv_interleave as interleave, iv_intersect as intersect,
                      iv_is_empty as is_empty, iv_is_full as is_full, iv_merge_sorted as merge_sorted,
                      iv_norm as norm, iv_pad as pad, iv_single as single, iv_union as union)

Iv = tuple  # (lo [T, K], hi [T, K])
