"""Attention of a few query rows over the keys a retention cache stores, on any backend.

``attend`` is what ``KVCache.decode`` runs and what feeds the score terms: it returns the
output and, fused, each stored key's attention probability summed over the query rows and
the query heads of its KV head (``heavy`` accumulates those; ``snap`` reads them for the
prompt's last queries).  Backends: ``"torch"`` (here, any device), ``"interpret"`` and
``"triton"`` (the generated kernel of :mod:`patterndsl.codegen.decode`).
"""
from __future__ import annotations

import torch

from .. import ir
from ..errors import PsparseUsageError
from ..plan.context import Context
from ..plan.predicate import evaluate

__all__ = ["BACKENDS", "attend"]

BACKENDS = ("torch", "interpret", "triton")


def _torch_attend(groups, k, v, pos, q, qpos, contexts, scale, with_probs):
    """All batch elements and heads at once: the predicate is evaluated once per pattern
    and element length (elements of equal length share it), broadcast over the KV heads'
    own key positions; one batched matmul per product, query heads folded per KV head."""
    B, Hq, R, _ = q.shape
    Hkv, C = k.shape[1], k.shape[2]
    G = Hq // Hkv
    dev = q.device
    head_expr = {}
    for expr, heads in groups:
        for h in heads:
            head_expr[h] = expr
    exprs = list(dict.fromkeys(head_expr[h] for h in range(Hq)))
    present = pos >= 0                                                   # [B, Hkv, C]
    q_ok = qpos >= 0                                                     # [B, R]
    kc = pos.clamp(min=0)[:, :, None, :]                                 # [B, Hkv, 1, C]
    qc = qpos.clamp(min=0)[:, None, :, None]                             # [B, 1, R, 1]
    by_n: dict = {}
    for b, ctx in enumerate(contexts):
        by_n.setdefault(ctx.n, []).append(b)
    if len(by_n) == 1:
        bsets = [(slice(None), contexts[0])]
    else:
        bsets = [(torch.tensor(bs, device=dev), contexts[bs[0]]) for bs in by_n.values()]
    masks = {e: torch.zeros((B, Hkv, R, C), dtype=torch.bool, device=dev) for e in exprs}
    for bs, ctx in bsets:
        for e in exprs:
            masks[e][bs] = evaluate(e, qc[bs], kc[bs], ctx)
    ok = present[:, :, None, :] & q_ok[:, None, :, None]                 # [B, Hkv, R, C]
    if len(exprs) == 1:
        allowed = (masks[exprs[0]] & ok)[:, :, None]                     # [B, Hkv, 1, R, C]
    else:
        allowed = torch.stack([masks[head_expr[h]][:, h // G] for h in range(Hq)], dim=1)
        allowed = allowed.view(B, Hkv, G, R, C) & ok[:, :, None]
    # query heads folded into the rows of their KV head: no broadcast copy of the keys
    qf = q.float().reshape(B, Hkv, G * R, -1)
    kf, vf = k.float(), v.float()
    logits = scale * torch.matmul(qf, kf.transpose(-1, -2)).view(B, Hkv, G, R, C)
    logits = logits.masked_fill(~allowed, float("-inf"))
    top = logits.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    p = torch.exp(logits - top)
    denom = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    out = torch.matmul(p.view(B, Hkv, G * R, C), vf).view(B, Hq, R, v.shape[-1])
    probs = p.sum(dim=(2, 3)) if with_probs else None
    return out, probs


def attend(groups, k, v, pos, q, qpos, ns, *, scale: float, with_probs: bool = False,
           backend: str = "torch"):
    """``(out [B, Hq, r, Dv] float32, probs [B, Hkv, C] float32 or None)``.

    ``groups``: ``[(expr, heads), ...]`` (each query head in exactly one); ``k``/``v``
    ``[B, Hkv, C, D]`` stored keys with original positions ``pos [B, Hkv, C]`` (``-1`` free);
    ``q [B, Hq, r, D]`` at positions ``qpos [B, r]`` (``-1``: not a query row); ``ns``: each
    element's logical length, against which the pattern is resolved.  A row with no allowed
    key gets 0 and gives no probability."""
    for e, _ in groups:
        if e.needs_doc_ids or e.is_dynamic:
            raise PsparseUsageError(
                "decoding over the cache supports static patterns: this one uses "
                + ("`document`" if e.needs_doc_ids else "data-dependent terms"))
    contexts = [Context(max(int(n), 1)) for n in ns]
    if backend == "torch":
        return _torch_attend(groups, k, v, pos, q, qpos, contexts, scale, with_probs)
    if backend not in BACKENDS:
        raise PsparseUsageError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "triton" and q.device.type != "cuda":
        raise PsparseUsageError("backend 'triton' needs CUDA tensors; use 'torch' or 'interpret'")
    if backend == "interpret" and q.device.type != "cpu":
        raise PsparseUsageError("backend 'interpret' runs Triton's interpreter on CPU tensors")
    try:
        from ..codegen.decode import decode_attend
    except ImportError as e:  # pragma: no cover - triton missing
        raise PsparseUsageError(f"backend {backend!r} is not available ({e}); use 'torch'") from None
    return decode_attend(groups, k.contiguous(), v.contiguous(), pos.contiguous(), q.contiguous(),
                         qpos, contexts, scale=scale, with_probs=with_probs,
                         interpret=backend == "interpret")


def head_groups(program: ir.Program, layer: int, num_heads: int):
    """``[(expr, heads), ...]``: the query heads of ``layer`` grouped by their pattern."""
    out: dict = {}
    for h in range(num_heads):
        rule = program.rule_for(h if program.has_heads else None, layer)
        if rule is None:
            raise PsparseUsageError(f"no line of the spec covers layer {layer} head {h}")
        out.setdefault(ir.strip_spans(rule.expr), []).append(h)
    return list(out.items())
