"""heavy's prompt scores computed tile by tile on the pattern's block plan
(``patterndsl.retention.prompt``) against dense float64 column sums under ``Spec.mask``, with
GQA, several head groups, a non-causal band and padded batches; the kept set after a padded
prefill against the H2O rule written out."""
from __future__ import annotations

import pytest
import torch

from patterndsl.retention.attend import head_groups
from patterndsl.retention.cache import KVCache
from patterndsl.retention.prompt import prompt_column_probs
from patterndsl.spec import parse


def _dense_cols(spec, q, k, scale):
    """float64 ``[B, Hkv, n]``: column sums of softmax under the reference mask, summed over
    each KV head's query heads."""
    B, Hq, n, _ = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    mask = spec.mask(n, num_heads=Hq)                                  # [Hq, n, n]
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double().repeat_interleave(g, 1)) * scale
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    return p.view(B, Hkv, g, n, n).sum((2, 3))


@pytest.mark.parametrize("text,hq,hkv,n", [
    ("causal", 8, 2, 200),
    ("causal & (sink(4) | local(37))", 6, 3, 173),
    ("local(20)", 4, 2, 150),                                  # a band, not causal
    ("stride(7) | sink(2)", 4, 1, 96),
    ("heads 0 = causal & local(9)\nheads 1:3 = causal\nheads 3 = local(5) | sink(1)", 4, 2, 130),
])
def test_prompt_column_sums_equal_dense_float64(text, hq, hkv, n):
    torch.manual_seed(5)
    spec = parse(text)
    B, d = 2, 16
    q = torch.randn(B, hq, n, d) * 2
    k = torch.randn(B, hkv, n, d)
    scale = d ** -0.5
    got = prompt_column_probs(head_groups(spec.canonical_ir, 0, hq), q, k, scale=scale)
    want = _dense_cols(spec, q, k, scale)
    assert got.shape == (B, hkv, n) and got.dtype == torch.float32
    assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-5


def test_prompt_scores_of_a_padded_batch_equal_each_element_alone():
    """Left padding: each element's real tokens are positions 0..n_b-1; its heavy scores
    after the prefill are the dense column sums of that element alone, and its kept set is
    the rule's (position terms, then the best scores, ties evicting the earliest)."""
    torch.manual_seed(7)
    text = "causal & (sink(2) | local(40))\nkv = sink(2) + recent(5) + heavy(11)"
    spec = parse(text)
    B, hkv, hq, d, t = 3, 2, 4, 8, 90
    k = torch.randn(B, hkv, t, d)
    v = torch.randn(B, hkv, t, d)
    q = torch.randn(B, hq, t, d) * 2
    valid = torch.ones(B, t, dtype=torch.bool)
    valid[1, :17] = False
    valid[2, :60] = False
    cache = KVCache(spec, 1, B, hkv, d, num_heads=hq)
    cache.update(0, k, v, q=q, valid=valid)
    for b in range(B):
        idx = valid[b].nonzero().flatten()
        n = idx.numel()
        cols = _dense_cols(parse(text.split("\n")[0]), q[b:b + 1, :, idx], k[b:b + 1, :, idx], d ** -0.5)[0]
        for kh in range(hkv):
            score = cols[kh]
            base = {p for p in range(n) if p < 2 or p >= n - 5}
            rest = sorted((p for p in range(n) if p not in base), key=lambda p: (-float(score[p]), -p))
            want = sorted(base | set(rest[:11]))
            assert cache.positions(0, kh, b).tolist() == want, (b, kh)
            torch.testing.assert_close(cache.scores(0, kh, b), score[want], rtol=1e-5, atol=1e-6)
