"""The prompt's attention probabilities per key, summed over its queries, without ``n x n``.

``heavy`` starts from the column sums of the prompt's attention under the pattern (per KV
head, over its query heads).  They are computed on the pattern's block plan, tile by tile
over the visited tiles only: a first pass (:func:`~patterndsl.backends.torch_backend.forward_part`)
gives each row's log-sum-exp merged over the plan's disjoint parts, a second
(:func:`~patterndsl.backends.torch_backend.column_probs_part`) turns the scores of the same
tiles into probabilities and adds them per key.  Memory is the chunk budget plus per-row
state, time follows the pattern's density (half the square for ``causal``, linear for a band).
"""
from __future__ import annotations

import torch

from ..backends import torch_backend
from ..plan import build_plan

__all__ = ["prompt_column_probs"]


def _lse(plan, q, k, v, scale):
    lse = None
    for part in plan.parts:
        _, l_p = torch_backend.forward_part(part, plan, q, k, v, scale=scale)
        lse = l_p if lse is None else torch.logaddexp(lse, l_p)
    return lse


def prompt_column_probs(groups, q, k, *, scale: float) -> torch.Tensor:
    """float32 ``[B, Hkv, n]``: for every key of a whole prompt (positions ``0..n-1``, the
    pattern resolved against ``n``), its attention probability summed over the prompt's
    queries and the query heads of its KV head.

    ``groups``: ``[(expr, heads), ...]`` (each query head in exactly one); ``q [B, Hq, n, D]``,
    ``k [B, Hkv, n, D]``.  Rows with no allowed key give nothing."""
    B, Hq, n, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    total = torch.zeros((B, Hkv, n), dtype=torch.float32, device=q.device)
    if n == 0:
        return total
    # The values only feed forward_part's output, unused here: a one-column stand-in.
    for expr, heads in groups:
        plan = build_plan(expr, n, head_dim=D, dtype=torch.float32)
        kv_of = [h // g for h in heads]
        kv_set = sorted(set(kv_of))
        if len(heads) == g * len(kv_set):
            # whole KV groups: grouped-query attention over the group's KV heads
            hq = sorted(heads)
            batches = [(hq, kv_set)]
        else:
            batches = [([h], [h // g]) for h in heads]
        for hq, hk in batches:
            qs = q[:, hq]
            ks = k[:, hk]
            vs = ks.new_zeros((B, len(hk), n, 1))
            lse = _lse(plan, qs, ks, vs, scale)
            cols = None
            for part in plan.parts:
                c = torch_backend.column_probs_part(part, plan, qs, ks, lse, scale=scale)
                cols = c if cols is None else cols + c
            total.index_add_(1, torch.tensor(hk, device=q.device), cols)
    return total
