"""What a plan (and a kernel's element predicate) needs to know beyond the expression:
the call's ``n``, its document ids, random-block tables, group lowerings, and the inner
contexts of ``blockwise`` terms (whose ``n`` is ``ceil(n / b)``).  The class lives in
:mod:`.runtime`; this one builds random tables with psparse's vectorised generator."""
from __future__ import annotations

from .. import ir
from ..errors import PsparseUsageError
from . import runtime as _rt
from .runtime import cap  # noqa: F401
from .tables import random_table
from .transpose import Swapped


class Context(_rt.Context):
    __doc__ = _rt.Context.__doc__
    _make_random = staticmethod(random_table)


GROUP_TYPES = (ir.Block, ir.Random, ir.Document, ir.Blockwise, Swapped)


def check_static(expr: ir.Expr) -> None:
    if expr.is_dynamic:
        raise PsparseUsageError(
            "data-dependent terms (vertical(topk=..), slash(topk=..), blocks(..)) are planned per "
            "call from the data; a static plan cannot hold them")
