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


@pytest.mark.parametrize("text", [
    "causal\nkv = sink(2) + recent(3) + heavy(6)",
    "causal & (sink(2) | local(12))\nkv = auto",
    "heads 0:2 = causal & local(9)\nheads 2:4 = causal & (sink(1) | local(5))\nkv = recent(2) + heavy(4)",
])
def test_batched_step_bookkeeping_equals_the_per_element_path(text, monkeypatch):
    """The batched append and heavy eviction (elements in step) against the general
    per-element path on the same inputs: same positions, scores and outputs."""
    torch.manual_seed(11)
    spec = parse(text)
    B, hkv, hq, d, prompt, steps = 2, 2, 4, 8, 20, 30
    total = prompt + steps
    k = torch.randn(B, hkv, total, d)
    v = torch.randn(B, hkv, total, d)
    q = torch.randn(B, hq, total, d) * 2

    def run():
        cache = KVCache(spec, 1, B, hkv, d, num_heads=hq)
        extra = {"q": q[:, :, :prompt]} if cache.heavy else {}
        cache.update(0, k[:, :, :prompt], v[:, :, :prompt], **extra)
        outs, seen = [], []
        for n in range(prompt + 1, total + 1):
            cache.update(0, k[:, :, n - 1:n], v[:, :, n - 1:n])
            outs.append(cache.decode(0, q[:, :, n - 1:n]))
            seen.append([(cache.positions(0, h, b).tolist(),
                          cache.scores(0, h, b) if cache.heavy else None)
                         for b in range(B) for h in range(hkv)])
        return outs, seen

    fast = run()
    monkeypatch.setattr(KVCache, "_append_fast", lambda self, *a: False)
    monkeypatch.setattr(KVCache, "_settle_fast", lambda self, *a: False)
    slow = run()
    for o1, o2 in zip(fast[0], slow[0]):
        torch.testing.assert_close(o1, o2, rtol=1e-6, atol=1e-7)
    for s1, s2 in zip(fast[1], slow[1]):
        for (p1, a1), (p2, a2) in zip(s1, s2):
            assert p1 == p2
            if a1 is not None:
                torch.testing.assert_close(a1, a2, rtol=1e-12, atol=1e-12)
