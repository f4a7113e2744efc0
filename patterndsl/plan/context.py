"""What a plan (and a kernel's element predicate) needs to know beyond the expression:
the call's ``n``, its document ids, random-block tables, group lowerings, and the inner
contexts of ``blockwise`` terms (whose ``n`` is ``ceil(n / b)``).  The class lives in
:mod:`.runtime` (generated modules use the same one)."""
from __future__ import annotations

from .. import ir
from ..errors import PsparseUsageError
from .runtime import Context, cap  # noqa: F401
from .transpose import Swapped


GROUP_TYPES = (ir.Block, ir.Random, ir.Document, ir.Blockwise, Swapped)


def check_static(expr: ir.Expr) -> None:
    if expr.is_dynamic:
        raise PsparseUsageError(
            "data-dependent terms (vertical(topk=..), slash(topk=..), blocks(..)) are planned per "
            "call from the data; a static plan cannot hold them")
