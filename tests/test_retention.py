"""Retention: ``auto`` against brute force over future decode rows of the reference mask,
position policies, and the memory-freeing cache against full-cache decoding."""
from __future__ import annotations

import random

import pytest
import torch

from patterndsl import ir
from patterndsl.errors import PsparseError, PsparseUsageError
from patterndsl.retention.auto import analyze
from patterndsl.retention.cache import KVCache
from patterndsl.retention.policy import head_policies, position_policy
from patterndsl.spec import parse

from decoding import decode_inputs, decode_steps

pytestmark = pytest.mark.usefixtures("one_thread")



def needed(text: str, n: int, horizon: int, num_heads: int | None = None) -> torch.Tensor:
    """bool [n]: keys < n attended by some decode row q = m - 1, m in [n, n + horizon],
    each resolved against its own m (the reference mask, one row per call)."""
    spec = parse(text)
    need = torch.zeros(n, dtype=torch.bool)
    for m in range(n, n + horizon + 1):
        row = spec.mask(m, nq=1)
        need |= row[0, :n]
    return need


EXACT = [
    "causal & (local(5) | sink(2))",
    "causal & block(4)",
    "causal & local(3)",
    "causal & stride(3)",
    "global([-1])",
    "blockwise(4, local(1) | global([0, -1]))",
    "causal & dilated(2, 3)",
    "causal & slash([0, 5, 2:4])",
    "prefix(6) | causal & local(2)",
    "causal & rows([3, 7:9])",
    "cols([1, -2, 4:6, -3:])",
    "causal & local(6) - sink(3)",
    "causal & every(3, 1) & local(7)",
    "rows([::4])",
    "causal & blockwise(3, block(2))",
    "causal & cols([2, 10:14]) | causal & local(1)",
    "none",
    "causal & rows([::-3])",
    "rows([-2::-2]) | causal & local(1)",
    "rows([9:2:-2])",
]


@pytest.mark.parametrize("text", EXACT)
def test_auto_equals_brute_force(text):
    reach = analyze(parse(text).pattern())
    assert reach.exact
    for n in range(1, 26):
        need = needed(text, n, max(2 * n, 30))
        kept = reach.keep(torch.arange(n), n)
        assert torch.equal(need, kept), (n, need.nonzero().flatten(), kept.nonzero().flatten())
        if reach.bound is not None:
            assert int(kept.sum()) <= reach.bound


def test_required_answers():
    r = analyze(parse("causal & (local(1024) | sink(4))").pattern())
    assert r.bound == 1029 and r.exact
    kept = r.keep(torch.arange(5000), 5000)
    assert int(kept.sum()) == 1029
    assert kept[:4].all() and kept[5000 - 1025:].all() and not kept[4:5000 - 1025].any()
    b = analyze(parse("causal & block(16)").pattern())
    assert b.bound == 16
    kept = b.keep(torch.arange(40), 40)
    assert kept.nonzero().flatten().tolist() == list(range(32, 40))
    for text in ("stride(4)", "causal & stride(4)", "random(2, block=4)", "global([-1])", "all",
                 "causal", "document"):
        r = analyze(parse(text).pattern())
        assert r.bound is None and r.why, text
        assert r.keep(torch.arange(50), 50).all(), text
    r = analyze(parse("cols([3:])").pattern())
    assert r.bound is None and r.exact
    assert r.keep(torch.arange(50), 50).nonzero().flatten().tolist() == list(range(3, 50))


def _random_expr(rng: random.Random, depth: int) -> str:
    leaves = ["causal", "local(2)", "local(1, 3)", "block(3)", "stride(2)", "dilated(1, 2)",
              "every(2, 1)", "sink(2)", "rows([4, -1])", "rows([2:6])", "cols([1, -3])",
              "cols([5:9:2])", "global([3])", "prefix(5)", "slash([1, 4])", "random(1, block=2)",
              "blockwise(2, local(1))", "cols([-6::2])", "all", "none"]
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(leaves)
    op = rng.choice([" | ", " & ", " - "])
    return f"({_random_expr(rng, depth - 1)}{op}{_random_expr(rng, depth - 1)})"


def test_auto_is_a_superset_on_random_expressions():
    rng = random.Random(5)
    for _ in range(40):
        text = _random_expr(rng, 3)
        reach = analyze(parse(text).pattern())
        for n in (1, 3, 7, 12, 19):
            need = needed(text, n, 2 * n + 12)
            kept = reach.keep(torch.arange(n), n)
            assert not (need & ~kept).any(), (text, n)
            if reach.exact:
                assert torch.equal(need, kept), (text, n)
            if reach.bound is not None:
                assert int(kept.sum()) <= reach.bound, (text, n)


def test_policy_union_of_position_terms():
    pat = parse("causal & block(8)").pattern()
    ret = ir.Retention((ir.KvSink(3), ir.KvRecent(4), ir.KvAuto(), ir.KvSink(1)))
    p = position_policy(ret, [pat])
    assert p.bound == 3 + 4 + 8
    for n in range(1, 40):
        k = torch.arange(n)
        want = {i for i in range(n) if i < 3 or i >= n - 4 or i >= (n - 1) // 8 * 8}
        assert set(p.keep(k, n).nonzero().flatten().tolist()) == want
    assert position_policy(None, [pat]).bound is None
    assert position_policy(ir.Retention((ir.KvSink(2), ir.KvHeavy(4))), [pat]).bound == 6
    # built without the front end, a score term beside auto is still refused
    with pytest.raises(PsparseUsageError, match="beside auto"):
        position_policy(ir.Retention((ir.KvAuto(), ir.KvHeavy(4))), [pat])


def test_score_term_beside_auto_is_rejected_by_the_front_end():
    with pytest.raises(PsparseError, match="auto"):
        parse("causal\nkv = auto + heavy(8)")


def test_auto_per_kv_head_covers_each_query_head():
    spec = parse("heads 0 = causal & local(2)\nheads 1 = causal & sink(3)\n"
                 "heads 2:4 = causal & block(4)\nkv = auto")
    pols = head_policies(spec.canonical_ir, num_heads=4, num_kv_heads=2)
    assert [p.bound for p in pols] == [3 + 3, 4]
    kept = pols[0].keep(torch.arange(20), 20).nonzero().flatten().tolist()
    assert kept == [0, 1, 2, 17, 18, 19]


def _dense_decode(spec, k_all, v_all, q, n, num_heads):
    """One decode step over the full cache under the reference mask row q = n - 1."""
    mask = spec.mask(n, nq=1, num_heads=num_heads)[:, 0]                 # [H, n]
    group = num_heads // k_all.shape[1]
    kk = k_all[:, :, :n].repeat_interleave(group, dim=1)
    vv = v_all[:, :, :n].repeat_interleave(group, dim=1)
    logits = torch.einsum("bhd,bhnd->bhn", q[:, :, 0].double(), kk.double()) * q.shape[-1] ** -0.5
    logits = logits.masked_fill(~mask, float("-inf"))
    p = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhn,bhnd->bhd", p, vv.double())


LOSSLESS = [
    ("causal & (sink(4) | local(16))", 4 + 17),
    ("causal & block(8)", 8),
    ("causal & local(8)", 9),
    ("causal & stride(4)", None),
    ("blockwise(4, causal & local(1)) & causal | sink(2)", 8 + 2),
]


@pytest.mark.parametrize("text,bound", LOSSLESS)
def test_auto_decoding_is_lossless(text, bound):
    torch.manual_seed(0)
    spec = parse(text + "\nkv = auto")
    layers, batch, hkv, hq, d = 2, 2, 2, 4, 8
    prompt, steps = 37, 400
    total = prompt + steps
    k_all = torch.randn(layers, batch, hkv, total, d)
    v_all = torch.randn(layers, batch, hkv, total, d)
    qs = torch.randn(layers, batch, hq, total, d)
    cache = KVCache(spec, layers, batch, hkv, d, num_heads=hq, max_len=total)
    assert cache.bounded == (bound is not None)
    if bound is not None:
        assert cache.capacity == bound
    for layer in range(layers):
        cache.update(layer, k_all[layer, :, :, :prompt], v_all[layer, :, :, :prompt])
    worst = 0.0
    for n in range(prompt, total + 1):
        if n > prompt:
            for layer in range(layers):
                cache.update(layer, k_all[layer, :, :, n - 1: n], v_all[layer, :, :, n - 1: n])
        for layer in range(layers):
            assert cache.length(layer) == n
            held = cache.held(layer)
            if bound is not None:
                assert max(held) <= bound and cache.capacity == bound
            q = qs[layer, :, :, n - 1: n]
            got = cache.decode(layer, q)[:, :, 0].double()
            want = _dense_decode(spec, k_all[layer], v_all[layer], q, n, hq)
            err = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
            worst = max(worst, err)
            for h in range(hkv):
                pos = cache.positions(layer, h)
                assert torch.equal(pos, pos.sort().values)
    assert worst < 1e-5


def test_unbounded_cache_grows_in_chunks_and_stops_at_max_len():
    spec = parse("causal & stride(3)\nkv = auto")
    cache = KVCache(spec, 1, 1, 1, 4, max_len=20, chunk=8)
    assert not cache.bounded and cache.capacity == 8 and "stride" in cache.why
    cache.update(0, torch.randn(1, 1, 9, 4), torch.randn(1, 1, 9, 4))
    assert cache.capacity == 16 and cache.held(0) == [9]
    cache.update(0, torch.randn(1, 1, 11, 4), torch.randn(1, 1, 11, 4))
    assert cache.capacity == 20 and cache.held(0) == [20]
    before = cache.positions(0, 0)
    with pytest.raises(PsparseUsageError, match="max_len"):
        cache.update(0, torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4))
    assert cache.length(0) == 20 and torch.equal(cache.positions(0, 0), before)


def test_bounded_cache_frees_memory():
    spec = parse("causal & local(5)\nkv = sink(2) + recent(3)")
    cache = KVCache(spec, 1, 1, 1, 4)
    assert cache.bounded and cache.capacity == 5
    cache.update(0, torch.randn(1, 1, 100, 4), torch.randn(1, 1, 100, 4))
    assert cache.positions(0, 0).tolist() == [0, 1, 97, 98, 99]
    assert cache._k[0].shape[2] == 5
    cache.update(0, torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4))
    assert cache.positions(0, 0).tolist() == [0, 1, 98, 99, 100]


def test_bad_use_is_refused_and_leaves_the_cache_unchanged():
    spec = parse("causal & local(4)\nkv = auto")
    cache = KVCache(spec, 2, 1, 2, 4, num_heads=4)
    with pytest.raises(PsparseUsageError, match="before prefill"):
        cache.decode(0, torch.randn(1, 4, 1, 4))
    cache.update(0, torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4))
    state = (cache.length(0), cache.held(0), cache.positions(0, 0), cache._k[0].clone())
    bad = [
        (torch.randn(1, 2, 1, 5), torch.randn(1, 2, 1, 5), "head_dim"),
        (torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4), "kv_heads"),
        (torch.randn(1, 2, 1, 4), torch.randn(1, 2, 2, 4), "v must"),
        (torch.randn(1, 2, 1, 4, dtype=torch.float64), torch.randn(1, 2, 1, 4, dtype=torch.float64),
         "dtype"),
        (torch.randn(1, 2, 0, 4), torch.randn(1, 2, 0, 4), ">= 1"),
    ]
    for k, v, msg in bad:
        with pytest.raises(PsparseUsageError, match=msg):
            cache.update(0, k, v)
    with pytest.raises(PsparseUsageError, match="num_layers"):
        cache.update(2, torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    with pytest.raises(PsparseUsageError, match="one decode query"):
        cache.decode(0, torch.randn(1, 4, 2, 4))
    assert (cache.length(0), cache.held(0)) == state[:2]
    assert torch.equal(cache.positions(0, 0), state[2]) and torch.equal(cache._k[0], state[3])


def test_snap_needs_the_prompt_queries():
    cache = KVCache(parse("causal\nkv = sink(4) + snap(16)"), 1, 1, 1, 4)
    assert not cache.bounded and "snap" in cache.why
    with pytest.raises(PsparseUsageError, match="snap"):
        cache.update(0, torch.randn(1, 1, 8, 4), torch.randn(1, 1, 8, 4))
    assert cache.lengths(0).tolist() == [0] and cache.held(0) == [0]


def test_compiled_pattern_kv_cache_and_2000_steps():
    from patterndsl.attention import compile as compile_pattern
    torch.manual_seed(1)
    attn = compile_pattern("causal & (sink(4) | local(16))\nkv = auto")
    cache = attn.kv_cache(1, 1, 1, 8, num_heads=2)
    assert cache.bounded and cache.capacity == 21 and cache.dtype == torch.float32
    prompt, steps, d = 50, 2000, 8
    total = prompt + steps
    k_all, v_all, qs = decode_inputs(total, d)
    cache.update(0, k_all[:, :, :prompt], v_all[:, :, :prompt])
    worst = 0.0
    for n in range(prompt, total + 1):
        if n > prompt:
            cache.update(0, k_all[:, :, n - 1: n], v_all[:, :, n - 1: n])
        assert max(cache.held(0)) <= 21
        q = qs[:, :, n - 1: n]
        got = cache.decode(0, q)[:, :, 0].double()
        # The full-cache answer, written out: keys 0..3 and n-17..n-1 (q = n - 1).
        allowed = torch.zeros(n, dtype=torch.bool)
        allowed[:4] = True
        allowed[max(0, n - 17):] = True
        logits = torch.einsum("bhd,bnd->bhn", q[:, :, 0].double(), k_all[:, 0, :n].double()) * d ** -0.5
        p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        want = torch.einsum("bhn,bnd->bhd", p, v_all[:, 0, :n].double())
        worst = max(worst, ((got - want).norm() / want.norm()).item())
    assert worst < 1e-5
    assert cache.positions(0, 0).tolist() == [0, 1, 2, 3, *range(total - 17, total)]


def _static_examples():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "examples"
    out = []
    for path in sorted(root.glob("*.psp")):
        lines = [ln for ln in path.read_text().splitlines() if not ln.strip().startswith("kv")]
        spec = parse("\n".join(lines))
        prog = spec.canonical_ir
        if prog.has_heads or prog.has_layers or spec.is_dynamic or spec.needs_doc_ids:
            continue
        # A decode row only ever sees keys before it, so every static example applies.
        out.append(pytest.param("\n".join(lines) + "\nkv = auto", id=path.stem))
    return out


@pytest.mark.parametrize("text", _static_examples())
def test_examples_decode_losslessly_past_their_windows(text):
    torch.manual_seed(2)
    spec = parse(text)
    cache = KVCache(spec, 1, 1, 1, 8, num_heads=2)
    bound = cache.policies[0][0].bound
    prompt = min(bound if bound is not None else 300, 5000) + 40
    steps, d = 48, 8
    total = prompt + steps
    k_all, v_all, qs = decode_inputs(total, d)
    for n, out in decode_steps(cache, k_all, v_all, qs, prompt, bound):
        q = qs[:, :, n - 1: n]
        got = out[:, :, 0].double()
        want = _dense_decode(spec, k_all, v_all, q, n, 2)
        assert ((got - want).norm() / want.norm()).item() < 1e-5, n


def _norm_reference(keys, n, sink, recent, terms, auto_keep=None):
    """Kept positions at length n, written from the rule: position terms first, then each
    norm term keeps its count best among the keys no one before keeps (ties: the later
    position stays)."""
    kept = {i for i in range(n) if i < sink or i >= n - recent}
    if auto_keep is not None:
        kept |= {i for i in range(n) if auto_keep(i, n)}
    norms = keys[:n].float().norm(dim=-1).tolist()
    for count, low in terms:
        rest = [i for i in range(n) if i not in kept]
        rest.sort(key=lambda i: ((norms[i] if low else -norms[i]), -i))
        kept |= set(rest[:count])
    return sorted(kept)


@pytest.mark.parametrize("kv,terms", [
    ("sink(2) + recent(3) + norm(4)", [(4, False)]),
    ("norm(3, low=true) + recent(2)", [(3, True)]),
    ("recent(1) + norm(2) + norm(3, low=true)", [(2, False), (3, True)]),
])
def test_norm_terms_match_the_rule(kv, terms):
    torch.manual_seed(3)
    spec = parse("causal\nkv = " + kv)
    sink = sum(t.count for t in spec.canonical_ir.kv.terms if isinstance(t, ir.KvSink))
    recent = sum(t.count for t in spec.canonical_ir.kv.terms if isinstance(t, ir.KvRecent))
    batch, hkv, d, total = 2, 2, 4, 60
    # Few distinct values, so equal norms (ties) happen.
    k_all = torch.randint(-2, 3, (batch, hkv, total, d)).float()
    v_all = torch.randn(batch, hkv, total, d)
    cache = KVCache(spec, 1, batch, hkv, d, num_heads=4)
    assert cache.bounded and cache.capacity == sink + recent + sum(c for c, _ in terms)
    cache.update(0, k_all[:, :, :20], v_all[:, :, :20])
    for n in range(20, total + 1):
        if n > 20:
            cache.update(0, k_all[:, :, n - 1: n], v_all[:, :, n - 1: n])
        for b in range(batch):
            for h in range(hkv):
                want = _norm_reference(k_all[b, h], n, sink, recent, terms)
                assert cache.positions(0, h, b).tolist() == want, (n, b, h)
        # Decoding attends exactly the kept keys (causal allows all of them).
        q = torch.randn(batch, 4, 1, d)
        got = cache.decode(0, q)[:, :, 0]
        for b in range(batch):
            for hq in range(4):
                h = hq // 2
                keep = torch.tensor(_norm_reference(k_all[b, h], n, sink, recent, terms))
                p = torch.softmax(k_all[b, h, keep] @ q[b, hq, 0] * d ** -0.5, dim=0)
                torch.testing.assert_close(got[b, hq], p @ v_all[b, h, keep], rtol=1e-5, atol=1e-6)


def test_norm_counts_follow_a_pyramid_budget():
    spec = parse("causal\nkv = recent(2) + norm(10)\nbudget = pyramid(beta=2)")
    cache = KVCache(spec, 3, 1, 1, 4)
    # lo = 5, hi = 15: layers 0, 1, 2 keep 15, 10, 5 by norm.
    assert [p[0].scores for p in cache.policies] == [((15, False),), ((10, False),), ((5, False),)]
    assert cache.capacity == 2 + 15
