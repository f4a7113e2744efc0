"""Score terms (heavy, snap, norm) and budgets (pyramid, adaptive) of the retention cache
against plain implementations of their rules (LANGUAGE.md "Retention", "Budgets"), with GQA;
bad use refused with the cache unchanged."""
from __future__ import annotations

import copy

import pytest
import torch

from patterndsl.errors import PsparseError, PsparseUsageError
from patterndsl.retention.cache import KVCache
from patterndsl.spec import parse


_MASKS: dict = {}

pytestmark = pytest.mark.usefixtures("one_thread")



def _mask(spec, n, nq, heads=8):
    key = (spec.canonical(), n, nq)
    if key not in _MASKS:
        if len(_MASKS) > 512:
            _MASKS.clear()
        _MASKS[key] = spec.mask(n, nq=nq, num_heads=heads)
    return _MASKS[key]


def _softmax_rows(spec, n, nq, q, keys, kpos, hq, d):
    """float64 probabilities [nq, len(kpos)] of query head ``hq``'s last ``nq`` rows at
    length ``n`` over the keys at positions ``kpos`` (reference mask)."""
    mask = _mask(spec, n, nq)[hq][:, kpos]
    logits = (q.double() @ keys.double().T) * d ** -0.5
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)


def _top(cands, score, count):
    """The ``count`` candidates with the largest score; ties evict the earliest."""
    order = sorted(cands, key=lambda p: (-score[p], -p))
    return set(order[:count])


class H2ORef:
    """H2O for one (batch element, KV head), written from the rule: every query's
    probabilities over the keys kept at the time, summed over the KV head's query heads,
    accumulate per key; after each step the position terms' keys stay and the ``h`` best
    others are kept."""

    def __init__(self, spec, sink, recent, h, heads, d):
        self.spec, self.sink, self.recent, self.h, self.heads, self.d = spec, sink, recent, h, heads, d
        self.kept, self.score = [], {}

    def _evict(self, n):
        base = {p for p in self.kept if p < self.sink or p >= n - self.recent}
        rest = [p for p in self.kept if p not in base]
        self.kept = sorted(base | _top(rest, self.score, self.h))

    def prompt(self, keys, qs):
        n = keys.shape[0]
        self.kept = list(range(n))
        self.score = {p: 0.0 for p in self.kept}
        for g, hq in enumerate(self.heads):
            p = _softmax_rows(self.spec, n, n, qs[g], keys, self.kept, hq, self.d)
            for j, pos in enumerate(self.kept):
                self.score[pos] += float(p[:, j].sum())
        self._evict(n)

    def step(self, keys, q, n):
        self.kept.append(n - 1)
        self.score[n - 1] = 0.0
        for g, hq in enumerate(self.heads):
            p = _softmax_rows(self.spec, n, 1, q[g], keys[self.kept], self.kept, hq, self.d)
            for j, pos in enumerate(self.kept):
                self.score[pos] += float(p[0, j])
        self._evict(n)


@pytest.mark.parametrize("text", [
    "causal\nkv = sink(2) + recent(3) + heavy(5)",
    "causal & (sink(1) | local(9))\nkv = recent(2) + heavy(4)",
])
def test_heavy_matches_h2o_written_from_the_rule(text):
    torch.manual_seed(21)
    spec = parse(text)
    B, hkv, hq, d, prompt, steps = 2, 2, 4, 8, 16, 40
    terms = spec.canonical_ir.kv.terms
    sink = max([t.count for t in terms if type(t).__name__ == "KvSink"] or [0])
    recent = max([t.count for t in terms if type(t).__name__ == "KvRecent"] or [0])
    h = [t.count for t in terms if type(t).__name__ == "KvHeavy"][0]
    total = prompt + steps
    k = torch.randn(B, hkv, total, d)
    v = torch.randn(B, hkv, total, d)
    q = torch.randn(B, hq, total, d) * 2
    cache = KVCache(spec, 1, B, hkv, d, num_heads=hq)
    assert cache.bounded and cache.capacity == sink + recent + h + 1
    cache.update(0, k[:, :, :prompt], v[:, :, :prompt], q=q[:, :, :prompt])
    refs = {}
    for b in range(B):
        for kh in range(hkv):
            heads = [2 * kh, 2 * kh + 1]
            r = H2ORef(spec, sink, recent, h, heads, d)
            r.prompt(k[b, kh, :prompt], q[b, heads, :prompt])
            refs[b, kh] = r
            assert cache.positions(0, kh, b).tolist() == r.kept
    for n in range(prompt + 1, total + 1):
        cache.update(0, k[:, :, n - 1:n], v[:, :, n - 1:n])
        out = cache.decode(0, q[:, :, n - 1:n])
        for (b, kh), r in refs.items():
            kept_before = list(r.kept) + [n - 1]
            heads = [2 * kh, 2 * kh + 1]
            # the output is attention over the keys kept at the time
            for g, hqq in enumerate(heads):
                p = _softmax_rows(spec, n, 1, q[b, hqq, n - 1:n], k[b, kh, kept_before], kept_before, hqq, d)
                torch.testing.assert_close(out[b, hqq, 0].double(), (p @ v[b, kh, kept_before].double())[0],
                                           rtol=1e-5, atol=1e-6)
            r.step(k[b, kh], q[b, heads, n - 1:n], n)
            assert cache.positions(0, kh, b).tolist() == r.kept, (n, b, kh)
            want = torch.tensor([r.score[p] for p in r.kept], dtype=torch.float64)
            torch.testing.assert_close(cache.scores(0, kh, b), want, rtol=1e-5, atol=1e-6)
        assert max(cache.held(0)) <= sink + recent + h


def _snap_ref(spec, keys, qs, heads, n, recent, h, window, pool, d):
    """SnapKV for one KV head from the rule: the last ``window`` prompt keys, plus the ``h``
    best others (not kept by recent) by the window queries' attention summed over heads,
    max-pooled over ``pool`` keys centred (clamped at the ends)."""
    score = torch.zeros(n, dtype=torch.float64)
    w = min(window, n)
    for g, hq in enumerate(heads):
        p = _softmax_rows(spec, n, w, qs[g][n - w:n], keys, list(range(n)), hq, d)
        score += p.sum(0)
    half = pool // 2
    pooled = {i: max(float(score[j]) for j in range(max(0, i - half), min(n, i + half + 1)))
              for i in range(n)}
    base = {i for i in range(n) if i >= n - recent}
    win = {i for i in range(n) if i >= n - window}
    rest = [i for i in range(n) if i not in base and i not in win]
    return base | win | _top(rest, pooled, h)


def test_snap_matches_the_rule_and_keeps_generated_keys():
    torch.manual_seed(22)
    spec = parse("causal & (sink(2) | local(20))\nkv = recent(2) + snap(4, window=5, pool=3)")
    B, hkv, hq, d, prompt, steps = 2, 2, 4, 8, 30, 6
    total = prompt + steps
    k, v = torch.randn(B, hkv, total, d), torch.randn(B, hkv, total, d)
    q = torch.randn(B, hq, total, d) * 2
    cache = KVCache(spec, 1, B, hkv, d, num_heads=hq, max_len=64, chunk=16)
    assert not cache.bounded
    cache.update(0, k[:, :, :prompt], v[:, :, :prompt], q=q[:, :, :prompt])
    want = {}
    for b in range(B):
        for kh in range(hkv):
            heads = [2 * kh, 2 * kh + 1]
            want[b, kh] = _snap_ref(spec, k[b, kh, :prompt], q[b, heads], heads, prompt, 2, 4, 5, 3, d)
            assert set(cache.positions(0, kh, b).tolist()) == want[b, kh]
            assert len(want[b, kh]) == 5 + 4     # window + h (recent inside the window)
    for n in range(prompt + 1, total + 1):
        cache.update(0, k[:, :, n - 1:n], v[:, :, n - 1:n])
        cache.decode(0, q[:, :, n - 1:n])
        for (b, kh), kept in want.items():
            assert cache.positions(0, kh, b).tolist() == sorted(kept | set(range(prompt, n)))


def _adaptive_ref(scores, cands, h, floor):
    """Per head: its round(floor * h) best candidates first; the rest of h * H to the best
    remaining across heads (ties: smaller position, then smaller head).  -> counts."""
    H = len(scores)
    first = round(floor * h)
    taken = []
    for hh in range(H):
        order = sorted(cands[hh], key=lambda p: (-scores[hh][p], p))
        taken.append(set(order[:first]))
    left = h * H - sum(len(t) for t in taken)
    pool = [(-scores[hh][p], p, hh) for hh in range(H) for p in cands[hh] if p not in taken[hh]]
    for _, p, hh in sorted(pool)[:left]:
        taken[hh].add(p)
    return [len(t) for t in taken]


def test_adaptive_norm_counts_sum_to_the_total_and_match_the_rule():
    torch.manual_seed(23)
    spec = parse("causal\nkv = recent(2) + norm(4)\nbudget = adaptive(floor=0.25)")
    B, hkv, d, prompt = 2, 4, 8, 24
    k = torch.randn(B, hkv, prompt + 5, d) * torch.rand(1, hkv, 1, 1) * 3
    v = torch.randn(B, hkv, prompt + 5, d)
    cache = KVCache(spec, 1, B, hkv, d)
    # storage holds the most one head can take: 4 * 4 - 3 * round(0.25 * 4)
    assert cache.capacity == 2 + 13
    cache.update(0, k[:, :, :prompt], v[:, :, :prompt])
    for b in range(B):
        norms = k[b, :, :prompt].norm(dim=-1)
        scores = [{p: float(norms[hh, p]) for p in range(prompt)} for hh in range(hkv)]
        cands = [[p for p in range(prompt - 2)] for _ in range(hkv)]
        counts = _adaptive_ref(scores, cands, 4, 0.25)
        assert sum(counts) == 4 * hkv
        assert [cache.counts(0, hh, b)[0] for hh in range(hkv)] == counts
        for hh in range(hkv):
            kept = _top(cands[hh], scores[hh], counts[hh]) | {prompt - 2, prompt - 1}
            assert cache.positions(0, hh, b).tolist() == sorted(kept)
    # the counts stay for the rest of decoding
    for n in range(prompt + 1, prompt + 6):
        cache.update(0, k[:, :, n - 1:n], v[:, :, n - 1:n])
        for b in range(B):
            for hh in range(hkv):
                held = cache.positions(0, hh, b)
                assert len(held) == 2 + cache.counts(0, hh, b)[0]


def test_adaptive_snap_and_heavy_budgets_sum_to_totals():
    torch.manual_seed(24)
    B, hkv, hq, d, prompt = 1, 3, 6, 8, 30
    k, v = torch.randn(B, hkv, prompt + 2, d), torch.randn(B, hkv, prompt + 2, d)
    q = torch.randn(B, hq, prompt + 2, d) * 3
    for kv, h in (("snap(5, window=4, pool=1)", 5), ("heavy(5)", 5)):
        spec = parse(f"causal\nkv = sink(1) + {kv}\nbudget = adaptive(floor=0.4)")
        cache = KVCache(spec, 1, B, hkv, d, num_heads=hq)
        cache.update(0, k[:, :, :prompt], v[:, :, :prompt], q=q[:, :, :prompt])
        counts = [cache.counts(0, hh)[0] for hh in range(hkv)]
        assert sum(counts) == h * hkv and min(counts) >= round(0.4 * h)
        for hh in range(hkv):
            extra = 4 if kv.startswith("snap") else 0
            assert len(cache.positions(0, hh)) == 1 + extra + counts[hh]


def test_pyramid_budget_over_heavy_and_per_layer_patterns():
    spec = parse("layers 0 = causal & local(3)\nlayers 1:4 = causal\n"
                 "kv = sink(1) + recent(2) + heavy(10)\nbudget = pyramid(beta=5)")
    cache = KVCache(spec, 4, 1, 1, 4, num_heads=2)
    # lo = 2, hi = 18 over 4 layers: 18, 13, 7, 2 (Python's round)
    want = [round(2 + 16 * (3 - l) / 3) for l in range(4)]
    assert [p[0].terms[0].count for p in cache.policies] == want == [18, 13, 7, 2]
    assert cache.capacity == 1 + 2 + 18 + 1
    torch.manual_seed(25)
    k, v, q = torch.randn(1, 1, 40, 4), torch.randn(1, 1, 40, 4), torch.randn(1, 2, 40, 4)
    for layer in range(4):
        cache.update(layer, k, v, q=q)
        assert cache.held(layer) == [min(40, 3 + want[layer])]
    # layer 0 decodes under its own pattern: only the last 4 positions are attended
    out = cache.decode(0, q[:, :, -1:])
    kept = cache.positions(0, 0).tolist()
    allowed = [i for i, p in enumerate(kept) if p >= 37]
    assert allowed
    p = torch.softmax(q[0, :, -1] @ k[0, 0, [kept[i] for i in allowed]].T * 0.5, dim=-1)
    torch.testing.assert_close(out[0, :, 0], p @ v[0, 0, [kept[i] for i in allowed]], rtol=1e-5, atol=1e-6)


def _state(cache):
    return copy.deepcopy((cache._n, cache._held, cache._started, cache._counts, cache._cap,
                          [t.clone() for t in cache._k], [t.clone() for t in cache._v],
                          [t.clone() for t in cache._pos],
                          [None if t is None else t.clone() for t in cache._acc]))


def _same(a, b):
    assert a[:5] == b[:5]
    for xs, ys in zip(a[5:], b[5:]):
        for x, y in zip(xs, ys):
            assert (x is None and y is None) or torch.equal(x, y)


def test_bad_use_is_refused_and_leaves_the_cache_unchanged():
    spec = parse("causal\nkv = sink(1) + recent(2) + heavy(2)")
    cache = KVCache(spec, 1, 2, 1, 4, num_heads=2, max_len=40)
    with pytest.raises(PsparseUsageError, match="before prefill"):
        cache.decode(0, torch.randn(2, 2, 1, 4))
    k, v, q = torch.randn(2, 1, 6, 4), torch.randn(2, 1, 6, 4), torch.randn(2, 2, 6, 4)
    cache.update(0, k, v, q=q)
    before = _state(cache)
    bad_updates = [
        (dict(k=torch.randn(2, 1, 1, 5), v=torch.randn(2, 1, 1, 5)), "head_dim"),
        (dict(k=torch.randn(2, 1, 1, 4, dtype=torch.float64), v=torch.randn(2, 1, 1, 4, dtype=torch.float64)), "dtype"),
        (dict(k=torch.randn(2, 1, 1, 4, device="meta"), v=torch.randn(2, 1, 1, 4, device="meta")), "meta"),
        (dict(k=torch.randn(2, 1, 1, 4), v=torch.randn(2, 1, 1, 4), valid=torch.ones(2, 2, dtype=torch.bool)), "valid"),
        (dict(k=torch.randn(2, 1, 1, 4), v=torch.randn(2, 1, 1, 4), valid=torch.ones(2, 1)), "valid"),
        (dict(k=torch.randn(2, 1, 1, 4), v=torch.randn(2, 1, 1, 4), q=torch.randn(2, 2, 2, 4)), "q must"),
        # heavy decides after each step's attention: two steps without a decode in between
        (dict(k=torch.randn(2, 1, 2, 4), v=torch.randn(2, 1, 2, 4)), "decode"),
    ]
    for kw, msg in bad_updates:
        with pytest.raises(PsparseUsageError, match=msg):
            cache.update(0, **kw)
        _same(_state(cache), before)
    for qq, msg in ((torch.randn(2, 2, 2, 4), "rows"), (torch.randn(2, 3, 1, 4), "heads"),
                    (torch.randn(2, 2, 1, 4, dtype=torch.float16), "dtype")):
        with pytest.raises(PsparseUsageError, match=msg):
            cache.decode(0, qq)
        _same(_state(cache), before)
    # growing past max_len
    grow = KVCache(parse("causal & stride(2)\nkv = auto"), 1, 1, 1, 4, max_len=10, chunk=4)
    grow.update(0, torch.randn(1, 1, 10, 4), torch.randn(1, 1, 10, 4))
    before = _state(grow)
    with pytest.raises(PsparseUsageError, match="max_len"):
        grow.update(0, torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4))
    _same(_state(grow), before)
    # a score term beside auto
    with pytest.raises(PsparseError, match="auto"):
        KVCache(parse("causal\nkv = auto + heavy(8)"), 1, 1, 1, 4)
    # decode with no position at all yet (every token was padding)
    pad = KVCache(parse("causal\nkv = auto"), 1, 1, 1, 4)
    with pytest.raises(PsparseUsageError, match="before prefill"):
        pad.update(0, torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4),
                   valid=torch.zeros(1, 3, dtype=torch.bool))
        pad.decode(0, torch.randn(1, 1, 1, 4))


def test_heavy_fed_by_the_interpreted_kernel_equals_the_torch_backend():
    """The generated kernel's fused probabilities drive heavy exactly like the torch
    backend's (prompt and decode steps), through CompiledPattern.kv_cache."""
    from patterndsl.attention import compile as compile_pattern
    torch.manual_seed(26)
    attn = compile_pattern("causal & (sink(1) | local(10))\nkv = sink(1) + recent(2) + heavy(3)")
    B, hkv, hq, d, prompt, steps = 2, 1, 2, 8, 12, 4
    k, v = torch.randn(B, hkv, prompt + steps, d), torch.randn(B, hkv, prompt + steps, d)
    q = torch.randn(B, hq, prompt + steps, d) * 2
    caches = [attn.kv_cache(1, B, hkv, d, num_heads=hq, backend=be) for be in ("torch", "interpret")]
    assert caches[1].backend == "interpret"
    for c in caches:
        c.update(0, k[:, :, :prompt], v[:, :, :prompt], q=q[:, :, :prompt])
    for n in range(prompt + 1, prompt + steps + 1):
        outs = []
        for c in caches:
            c.update(0, k[:, :, n - 1:n], v[:, :, n - 1:n])
            outs.append(c.decode(0, q[:, :, n - 1:n]))
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
        for b in range(B):
            assert torch.equal(caches[0].positions(0, 0, b), caches[1].positions(0, 0, b))
            torch.testing.assert_close(caches[0].scores(0, 0, b), caches[1].scores(0, 0, b),
                                       rtol=1e-5, atol=1e-6)
