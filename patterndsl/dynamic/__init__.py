"""Data-dependent terms at call time (LANGUAGE.md, "Dynamic terms").

``select(spec, q, k)`` computes what each dynamic term chooses for every batch element and
query head (:mod:`.estimate`).  A spec line that is monotone in its dynamic terms runs as
its static part plus one *table part* per term (:mod:`.split`), whose kernels read per-call
tables built on the device from the selection (:mod:`.tables`; element predicates in torch
in :mod:`.predicate`, in Triton from ``codegen.emit.emit_dynamic``); ``attn.last_work`` /
``attn.work(q, k)`` report the pairs (:mod:`.work`).  Other lines fall back to
``substitute(expr, selections, b, h)``: one head's choice as an equivalent static
expression, planned per (batch element, head) (:mod:`.substitute`).
Importing this package loads torch, so ``patterndsl`` itself never imports it eagerly.
"""
from __future__ import annotations

from .estimate import Selection, select
from .split import DynamicSplit, split
from .substitute import substitute
from .tables import CallTables, TablePart, build_tables

__all__ = ["Selection", "select", "substitute", "split", "DynamicSplit", "build_tables",
           "CallTables", "TablePart"]
