"""From per-tile key spaces to the runs of key tiles a kernel visits (hulls round outwards,
cores inwards, maximal runs of one kind).  Code in :mod:`.runtime`."""
from __future__ import annotations

from .runtime import tile_runs  # noqa: F401
