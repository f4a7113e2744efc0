"""Closed-form key spaces of each primitive, per query tile of a view (hull: a superset of
the keys any row of the tile may attend; core: keys every row attends).  The code lives in
:mod:`.runtime`, shared with generated kernel modules."""
from __future__ import annotations

from .runtime import (EXPAND_KEYS, GROUP_GATHER_LIMIT, band, d_cong, group, index_cols,  # noqa: F401
                      index_rows, join, k_cong, k_interval, k_prog, meet, primitive, q_interval, q_rows)
