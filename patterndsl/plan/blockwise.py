"""``blockwise(b, E)`` as a group: per block row, the exact runs of allowed key blocks
(``E`` planned at block scale, undecided blocks evaluated).  Code in :mod:`.runtime`."""
from __future__ import annotations

from .runtime import blockwise_group  # noqa: F401
