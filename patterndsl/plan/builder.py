"""``build_plan``: option checks, caching, and assembling the parts of a plan."""
from __future__ import annotations

from functools import lru_cache

import torch

from .. import ir
from ..errors import PsparseUsageError, out_of_memory_as_usage_error
from ..args import checked_int, query_rows
from .arith import single_threaded
from .context import Context, check_static
from .model import Part, Plan
from .runtime import plan_parts

MAX_N = 1 << 40


class _DocKey:
    """doc_ids as a cache key, by content: the runs of equal ids (starts and ids) are what a
    plan depends on, and they are short, so hashing them is cheap."""

    def __init__(self, doc: torch.Tensor):
        from .tables import document_runs
        self.doc = doc
        self.doc_runs = document_runs(doc)
        starts, _, ids = self.doc_runs
        self.runs = (starts, ids)
        self._hash = hash((doc.numel(), starts.numpy().tobytes(), ids.numpy().tobytes()))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (isinstance(other, _DocKey) and self._hash == other._hash
                and self.doc.numel() == other.doc.numel()
                and all(torch.equal(a, b) for a, b in zip(self.runs, other.runs)))


def _doc(doc_ids, n: int):
    try:
        d = torch.as_tensor(doc_ids)
    except (TypeError, ValueError, RuntimeError):
        raise PsparseUsageError(f"doc_ids must be an integer tensor of shape [n], not {type(doc_ids).__name__}") from None
    if d.dim() == 2 and d.shape[0] == 1:
        d = d[0]
    if d.dim() != 1 or d.shape[0] != n:
        raise PsparseUsageError(
            f"a plan takes doc_ids of shape [n] (or [1, n]) with n = {n}; got {list(d.shape)} "
            "(plan each batch element separately when their documents differ)")
    if d.is_floating_point() or d.dtype == torch.bool:
        raise PsparseUsageError("doc_ids must be integers")
    # a copy the plan owns: cached plans are shared, and the caller may reuse its tensor
    return d.to(device="cpu", dtype=torch.int64, memory_format=torch.contiguous_format, copy=True)


def build_plan(spec, n: int, *, nq: int | None = None, q_offset: int | None = None, head: int | None = 0,
               layer: int | None = 0, head_dim: int = 128, dtype=torch.bfloat16, block_m: int | None = None,
               block_n: int | None = None, doc_ids=None) -> Plan:
    """The plan of ``spec`` (a Spec, or an ir.Expr) for one call (docs/PLAN.md)."""
    # head/layer select a spec line; a negative or non-integer one is a caller's mistake, not
    # "the default line" (Spec.mask rejects them the same way)
    if head is not None:
        head = checked_int("head", head, 0)
    if layer is not None:
        layer = checked_int("layer", layer, 0)
    if isinstance(spec, ir.Expr):
        expr = spec
    else:
        if spec.has_heads and head is None:
            raise PsparseUsageError("this spec has 'heads' lines: pass head=")
        rule = spec.canonical_ir.rule_for(head, layer)
        if rule is None and layer is None and spec.has_layers:
            raise PsparseUsageError("this spec has 'layers' lines and no line for every layer: pass layer=")
        expr = rule.expr if rule is not None else spec.pattern(head, layer)
    n = checked_int("n", n, 0)
    if n >= MAX_N:
        raise PsparseUsageError(f"n = {n} is beyond what plans support (< 2**40)")
    nq, q_offset = query_rows(n, nq, q_offset)
    head_dim = checked_int("head_dim", head_dim, 1)
    if block_m is not None:
        block_m = checked_int("block_m", block_m, 1)
    if block_n is not None:
        block_n = checked_int("block_n", block_n, 1)
    if not isinstance(dtype, torch.dtype):
        raise PsparseUsageError(f"dtype must be a torch.dtype, not {dtype!r}")
    check_static(expr)
    key = None
    if expr.needs_doc_ids:
        if doc_ids is None:
            raise PsparseUsageError("this spec uses `document`: pass doc_ids (shape [n])")
        key = _DocKey(_doc(doc_ids, n))
    # a plan holds O(n / block) entries per run: at n near 2**40 that outgrows any machine
    with out_of_memory_as_usage_error(
            f"the plan for n = {n} does not fit in memory (its arrays hold about n / block_m entries "
            "per key run); use a shorter sequence or larger tiles"):
        return _cached(ir.strip_spans(expr), n, nq, q_offset, head_dim, dtype, block_m, block_n, key)


@lru_cache(maxsize=256)
@single_threaded
def _cached(expr, n, nq, q_offset, head_dim, dtype, block_m, block_n, doc_key) -> Plan:
    ctx = Context(n, doc_key.doc if doc_key is not None else None,
                  doc_runs=doc_key.doc_runs if doc_key is not None else None)
    runs, (bm, bn) = plan_parts(expr, n, nq, q_offset, head_dim, dtype, block_m, block_n, ctx, ir)
    parts = tuple(Part(p.predicate, p.view, p.q_view, p.k_view, p.kv_lo, p.kv_hi, p.kv_full, ctx)
                  for p in runs)
    return Plan(expr, n, nq, q_offset, bm, bn, head_dim, dtype, parts, ctx)


def clear_cache() -> None:
    _cached.cache_clear()
