"""The decode loop the retention tests share: a prompt, then one new key and one decode a step."""
from __future__ import annotations

import torch


def decode_inputs(total: int, d: int, q_heads: int = 2):
    """Fresh normal keys and values ``[1, 1, total, d]`` and queries ``[1, q_heads, total, d]``
    (one KV head shared by ``q_heads`` query heads) for a prompt-then-decode run."""
    k_all, v_all = torch.randn(1, 1, total, d), torch.randn(1, 1, total, d)
    return k_all, v_all, torch.randn(1, q_heads, total, d)


def decode_steps(cache, k_all, v_all, qs, prompt, bound=None, layer=0):
    """Prefill ``cache`` with the first ``prompt`` keys of ``k_all``/``v_all`` ``[B, Hkv, total, D]``,
    then for ``n = prompt .. total`` add key ``n - 1`` (after the first step) and decode the
    query ``qs[:, :, n - 1]``; yields ``(n, output [B, Hq, 1, Dv])``, asserting after every update
    that no (element, KV head) holds more than ``bound`` keys."""
    cache.update(layer, k_all[:, :, :prompt], v_all[:, :, :prompt])
    for n in range(prompt, k_all.shape[2] + 1):
        if n > prompt:
            cache.update(layer, k_all[:, :, n - 1: n], v_all[:, :, n - 1: n])
        if bound is not None:
            assert max(cache.held(layer)) <= bound
        yield n, cache.decode(layer, qs[:, :, n - 1: n])
