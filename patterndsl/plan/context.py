"""What a plan (and a kernel's element predicate) needs to know beyond the expression:
the call's ``n``, its document ids, random-block tables, group lowerings, and the inner
contexts of ``blockwise`` terms (whose ``n`` is ``ceil(n / b)``)."""
from __future__ import annotations

import torch

from .. import ir
from ..errors import PsparseUsageError
from . import tables
from .transpose import Swapped


def cap(x: int, n: int) -> int:
    """Window-like arguments may be huge; every position and |q - k| is below n, so capping
    at max(n, 1) keeps the meaning and keeps values inside int64."""
    return min(x, max(n, 1))


class Context:
    """Per-(n, doc_ids) tables, built lazily and cached. Read by `predicate.evaluate`,
    the atom counts and the per-tile key spaces."""

    def __init__(self, n: int, doc_ids: torch.Tensor | None = None, *, inner: bool = False,
                 doc_runs=None):
        self.n = n
        self.doc_ids = doc_ids
        self._doc_runs = doc_runs
        self.inner_level = inner
        self._random: dict = {}
        self._groups: dict = {}
        self._inner: dict = {}
        self._sets: dict = {}

    # -- tables a kernel reads ------------------------------------------------
    def random_table(self, node: ir.Random) -> torch.Tensor:
        """int64 ``[ceil(n/b), r]``: ``R(i)`` ascending, ``-1`` padded."""
        key = (node.count, node.block, node.seed, node.causal)
        if key not in self._random:
            self._random[key] = tables.random_table(node.count, node.block, node.seed, node.causal, self.n)
        return self._random[key]

    def inner(self, node: ir.Blockwise) -> "Context":
        """The context ``blockwise(b, E)`` evaluates ``E`` in: ``n' = ceil(n / b)``."""
        if node.block not in self._inner:
            self._inner[node.block] = Context(-(-self.n // node.block), None, inner=True)
        return self._inner[node.block]

    def index_set(self, index: ir.IndexSet) -> tuple:
        """``resolve_index(index, n)``, cached here (a plain dict, so tracing a mask_mod under
        torch.compile sees a constant)."""
        key = ("i", index)
        if key not in self._sets:
            from .indexsets import resolve_index
            self._sets[key] = resolve_index(index, self.n)
        return self._sets[key]

    def offset_set(self, offsets: ir.IndexSet) -> tuple:
        """``resolve_offsets`` over every difference ``q - k`` a length-n call has."""
        key = ("o", offsets)
        if key not in self._sets:
            from .indexsets import resolve_offsets
            self._sets[key] = resolve_offsets(offsets, -max(self.n - 1, 0), max(self.n, 1))
        return self._sets[key]

    def require_doc_ids(self) -> torch.Tensor:
        if self.inner_level:
            raise PsparseUsageError("`document` cannot appear inside blockwise(...)")
        if self.doc_ids is None:
            raise PsparseUsageError("this spec uses `document`: pass doc_ids (shape [n])")
        return self.doc_ids

    # -- groups (segment -> key runs) ---------------------------------------------
    def group(self, node: ir.Expr) -> tables.Group:
        key = node
        if key in self._groups:
            return self._groups[key]
        n = self.n
        if isinstance(node, ir.Block):
            g = tables.block_group(cap(node.size, n), n)
        elif isinstance(node, ir.Random):
            t = self.random_table(node)
            g = tables.random_group(node.count, cap(node.block, n), node.seed, node.causal, n, t)
        elif isinstance(node, ir.Document):
            g = tables.document_group(self.require_doc_ids(), self._doc_runs)
        elif isinstance(node, ir.Blockwise):
            from .blockwise import blockwise_group
            g = blockwise_group(node, self)
        elif isinstance(node, Swapped) and isinstance(node.expr, ir.Random):
            r = node.expr
            g = tables.transposed_random_group(cap(r.block, n), n, self.random_table(r))
        else:
            raise TypeError(f"not a group primitive: {node!r}")
        self._groups[key] = g
        return g


GROUP_TYPES = (ir.Block, ir.Random, ir.Document, ir.Blockwise, Swapped)


def check_static(expr: ir.Expr) -> None:
    if expr.is_dynamic:
        raise PsparseUsageError(
            "data-dependent terms (vertical(topk=..), slash(topk=..), blocks(..)) are planned per "
            "call from the data; a static plan cannot hold them")
