"""``blockwise(b, E)`` as a group: per block row, the exact runs of allowed key blocks
(``E`` split into parts and planned at block scale with one-block tiles, residue views
listing a congruence's blocks; only undecided block pairs evaluated).  Code in :mod:`.runtime`."""
from __future__ import annotations

from .runtime import blockwise_group  # noqa: F401
