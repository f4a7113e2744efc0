"""BigBird-style random key blocks, exactly as LANGUAGE.md specifies them.

``R(i)`` for query block ``i`` is drawn from a splitmix64 stream that depends only
on ``(seed, i)`` and the candidate count, so the same spec and ``n`` give the same
blocks on every device, process and run.  Tables are always built on the CPU and
moved by the caller.

The generator and the vectorised draw live in :mod:`patterndsl.plan.runtime` (generated
modules inline that file, so there is one implementation); this module gives the dense
``[nb, nb]`` view the reference masks read.
"""
from __future__ import annotations

from functools import lru_cache

from .plan.runtime import MASK64 as _MASK64
from .plan.runtime import random_table, splitmix64, splitmix64_tensor  # noqa: F401


@lru_cache(maxsize=64)
def _table(count: int, block: int, seed: int, causal: bool, n: int):
    import torch

    nb = -(-n // block)
    rows = random_table(count, block, seed, causal, n)
    # Padding (-1) goes to a dump column past the last block.
    cols = torch.where(rows < 0, torch.full_like(rows, nb), rows)
    dense = torch.zeros((nb, nb + 1), dtype=torch.bool)
    return dense.scatter_(1, cols, True)[:, :nb]


def random_blocks(count: int, block: int, seed: int, causal: bool, n: int):
    """``torch.bool [nb, nb]`` (on the CPU), ``nb = ceil(n / block)``: row ``i`` is ``R(i)``."""
    if block < 1 or count < 0 or n < 0:
        raise ValueError("random blocks need block >= 1, count >= 0 and n >= 0")
    # Counts above nb behave like nb; capping keeps huge literals out of int64 tensors.
    nb = -(-n // block)
    return _table(min(count, nb), block, seed & _MASK64, bool(causal), n).clone()


def random_block_lists(count: int, block: int, seed: int, causal: bool, n: int) -> list[tuple[int, ...]]:
    """``R(i)`` for every query block ``i``, each as a sorted tuple of key blocks."""
    table = random_blocks(count, block, seed, causal, n)
    return [tuple(row.nonzero().flatten().tolist()) for row in table]
