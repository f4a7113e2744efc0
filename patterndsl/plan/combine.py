"""The operators on per-tile key spaces: ``A | B`` unites hulls and cores, ``A & B``
intersects both, ``A - B`` has hull ``hull(A) minus core(B)`` and core ``core(A) minus
hull(B)``; pure band expressions use exact band algebra.  Code in :mod:`.runtime`."""
from __future__ import annotations

from .runtime import diagonals, spaces_of, tile_spaces  # noqa: F401
