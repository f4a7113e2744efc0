"""Data-dependent terms at call time (LANGUAGE.md, "Dynamic terms").

``select(spec, q, k)`` computes what each dynamic term chooses for every batch element and
query head (:mod:`.estimate`); ``substitute(expr, selections, b, h)`` turns one head's choice
into an equivalent static expression that the planner and backends run (:mod:`.substitute`).
Importing this package loads torch, so ``patterndsl`` itself never imports it eagerly.
"""
from __future__ import annotations

from .estimate import Selection, select
from .substitute import substitute

__all__ = ["Selection", "select", "substitute"]
