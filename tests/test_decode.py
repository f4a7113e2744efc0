"""The decode kernel (Triton under the interpreter, and the torch backend) against dense
float64 attention under the reference mask at the keys' original positions; lossless
``kv = auto`` decoding of the causal examples; padding against each element run alone."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patterndsl.retention.attend import attend, head_groups
from patterndsl.retention.cache import KVCache
from patterndsl.spec import parse

from decoding import decode_inputs, decode_steps

pytestmark = pytest.mark.usefixtures("one_thread")



def dense_reference(spec, k, v, pos, q, ns, layer=0, num_layers=None):
    """float64 ``(out [B, Hq, r, Dv], probs [B, Hkv, C])``: the last ``r`` positions of each
    element attend its stored keys where the reference mask at length ``n_b`` allows the
    pair (query row, the key's original position)."""
    B, Hq, r, d = q.shape
    Hkv, C = k.shape[1], k.shape[2]
    G = Hq // Hkv
    out = torch.zeros(B, Hq, r, v.shape[-1], dtype=torch.float64)
    probs = torch.zeros(B, Hkv, C, dtype=torch.float64)
    scale = d ** -0.5
    for b in range(B):
        n = int(ns[b])
        rows = min(r, n)
        if rows == 0:
            continue
        mask = spec.mask(n, nq=rows, num_heads=Hq, layer=layer, num_layers=num_layers)  # [Hq, rows, n]
        for hq in range(Hq):
            hk = hq // G
            p_ = pos[b, hk]
            present = p_ >= 0
            allowed = torch.zeros(rows, C, dtype=torch.bool)
            allowed[:, present] = mask[hq][:, p_[present]]
            logits = (q[b, hq, r - rows:].double() @ k[b, hk].double().T) * scale
            p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
            out[b, hq, r - rows:] = p @ v[b, hk].double()
            probs[b, hk] += p.sum(0)
    return out, probs


def _rel(got, want):
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


CASES = [
    ("causal & (sink(2) | local(5))", None),
    ("causal & stride(3) | global([-1])", None),
    ("random(2, block=4) & causal", None),
    ("blockwise(4, local(1) | global([0, -1]))", None),
    ("heads 0 = causal & local(3)\nheads 1:4 = causal & block(8) | sink(1)", None),
    ("layers 0 = causal & local(3)\nlayers 1 = causal & sink(2) | rows([-1])\npattern = causal", 1),
]


@pytest.mark.parametrize("backend", ["torch", "interpret"])
@pytest.mark.parametrize("text,layer", CASES, ids=[c[0].split("\n")[0] for c in CASES])
def test_decode_backends_match_dense_float64(text, layer, backend):
    torch.manual_seed(11)
    spec = parse(text)
    prog = spec.canonical_ir
    B, Hkv, G, r, C, d = 3, 2, 2, 3, 40, 8
    ns = [70, 55, 2]       # the last element has fewer positions than rows
    k, v = torch.randn(B, Hkv, C, d), torch.randn(B, Hkv, C, d)
    q = torch.randn(B, Hkv * G, r, d)
    pos = torch.full((B, Hkv, C), -1, dtype=torch.int64)
    for b in range(B):
        for h in range(Hkv):
            m = min(ns[b], C - 3 * h)          # some free slots at the end
            pos[b, h, :m] = torch.randperm(ns[b])[:m].sort().values
    qpos = torch.tensor([[n - r + i for i in range(r)] for n in ns]).clamp(min=-1)
    groups = head_groups(prog, layer or 0, Hkv * G)
    out, probs = attend(groups, k, v, pos, q, qpos, ns, scale=d ** -0.5, with_probs=True,
                        backend=backend)
    want, want_p = dense_reference(spec, k, v, pos, q, ns, layer=layer or 0,
                                   num_layers=2 if layer is not None else None)
    assert _rel(out, want) < 1e-5
    assert _rel(probs, want_p) < 1e-5
    # every query row that attends something gives probability 1 in total
    assert (probs.sum(-1) <= G * r + 1e-4).all()


@pytest.mark.parametrize("backend", ["torch", "interpret"])
def test_decode_without_probabilities_and_in_bfloat16(backend):
    torch.manual_seed(3)
    spec = parse("causal & (sink(2) | local(9))")
    B, Hkv, G, C, d = 1, 1, 4, 30, 16
    k, v = torch.randn(B, Hkv, C, d), torch.randn(B, Hkv, C, d)
    q = torch.randn(B, Hkv * G, 1, d)
    pos = torch.arange(C)[None, None] * 2
    groups = head_groups(spec.canonical_ir, 0, G)
    out, probs = attend(groups, k, v, pos, q, torch.tensor([[59]]), [60], scale=0.25, backend=backend)
    assert probs is None
    want, _ = dense_reference(spec, k, v, pos, q * (0.25 / d ** -0.5), [60])
    assert _rel(out, want) < 1e-5
    kb, vb, qb = k.bfloat16(), v.bfloat16(), q.bfloat16()
    out_b, _ = attend(groups, kb, vb, pos, qb, torch.tensor([[59]]), [60], scale=0.25, backend=backend)
    want_b, _ = dense_reference(spec, kb.float(), vb.float(), pos, qb.float() * (0.25 / d ** -0.5), [60])
    assert _rel(out_b, want_b) < 2e-2


def _causal_examples():
    root = Path(__file__).resolve().parent.parent / "examples"
    out = []
    for path in sorted(root.glob("*.psp")):
        lines = [ln for ln in path.read_text().splitlines() if not ln.strip().startswith(("kv", "budget"))]
        text = "\n".join(lines)
        spec = parse(text)
        if spec.is_dynamic or spec.needs_doc_ids:
            continue
        m = spec.mask(96)
        if m.dim() != 2 or bool(torch.triu(m, 1)[64:].any()):
            continue    # not causal (past a prefix)
        out.append(pytest.param(text + "\nkv = auto", id=path.stem))
    return out


@pytest.mark.parametrize("text", _causal_examples())
def test_causal_examples_decode_2000_steps_losslessly(text):
    """kv = auto over 2,000 decode steps equals full-cache decoding under the reference mask,
    and the cache never holds more than the analytic bound."""
    torch.manual_seed(5)
    spec = parse(text)
    cache = KVCache(spec, 1, 1, 1, 4, num_heads=2)
    bound = cache.policies[0][0].bound
    prompt = min(bound if bound is not None else 200, 5000) + 30
    steps, d = 2000, 4
    total = prompt + steps
    k_all, v_all, qs = decode_inputs(total, d)
    # Rows of a mask at the full length equal each step's own row for these patterns
    # (no term depends on n): checked on a prefix, then used as the full-cache answer.
    full = spec.mask(total)
    for m in (prompt, prompt + 17):
        assert torch.equal(spec.mask(m), full[:m, :m])
    kd, vd, qd = k_all[0, 0].double(), v_all[0, 0].double(), qs[0].double()
    worst = 0.0
    for n, out in decode_steps(cache, k_all, v_all, qs, prompt, bound):
        got = out[0, :, 0].double()
        row = full[n - 1, :n]
        logits = (qd[:, n - 1] @ kd[:n].T) * d ** -0.5
        p = torch.softmax(logits.masked_fill(~row, float("-inf")), dim=-1)
        want = p @ vd[:n]
        worst = max(worst, _rel(got, want))
    assert worst < 1e-5


def test_interpreter_decodes_64_steps_losslessly():
    torch.manual_seed(6)
    spec = parse("causal & (sink(4) | local(24))\nkv = auto")
    cache = KVCache(spec, 1, 1, 1, 8, num_heads=2, backend="interpret")
    assert cache.bounded and cache.capacity == 29
    prompt, steps, d = 40, 64, 8
    total = prompt + steps
    k_all, v_all, qs = decode_inputs(total, d)
    for n, got in decode_steps(cache, k_all, v_all, qs, prompt, bound=29):
        full_pos = torch.arange(n)[None, None]
        want, _ = dense_reference(spec, k_all[:, :, :n], v_all[:, :, :n], full_pos,
                                  qs[:, :, n - 1: n], [n])
        assert _rel(got, want) < 1e-5, n


def test_multi_row_decode_with_lookback():
    """A cache built with rows=3 serves three new rows per call losslessly, holding at most
    the bound plus the two extra rows' lookback."""
    torch.manual_seed(7)
    spec = parse("causal & (sink(2) | local(6))\nkv = auto")
    cache = KVCache(spec, 1, 2, 1, 8, num_heads=2, rows=3)
    assert cache.capacity == 2 + 7 + 2
    total = 60
    k_all, v_all = torch.randn(2, 1, total, 8), torch.randn(2, 1, total, 8)
    qs = torch.randn(2, 2, total, 8)
    cache.update(0, k_all[:, :, :20], v_all[:, :, :20])
    n = 20
    while n + 3 <= total:
        cache.update(0, k_all[:, :, n: n + 3], v_all[:, :, n: n + 3])
        n += 3
        assert max(cache.held(0)) <= 11 and cache.lengths(0).tolist() == [n, n]
        got = cache.decode(0, qs[:, :, n - 3: n])
        want, _ = dense_reference(spec, k_all[:, :, :n], v_all[:, :, :n],
                                  torch.arange(n)[None, None].expand(2, 1, n), qs[:, :, n - 3: n], [n, n])
        assert _rel(got, want) < 1e-5


PAD_SPECS = [
    "causal & (sink(2) | local(5))\nkv = auto",
    "causal\nkv = sink(2) + recent(3) + heavy(4)",
    "causal & (sink(1) | local(12))\nkv = recent(2) + snap(3, window=4, pool=3)",
    "causal\nkv = recent(2) + norm(3)\nbudget = adaptive(floor=0.5)",
]


@pytest.mark.parametrize("text", PAD_SPECS, ids=["auto", "heavy", "snap", "norm-adaptive"])
def test_left_padded_batch_equals_each_element_alone(text):
    torch.manual_seed(8)
    spec = parse(text)
    lens, t, steps, hkv, hq, d = [9, 14, 5], 14, 12, 2, 4, 8
    B = len(lens)
    k = torch.randn(B, hkv, t + steps, d)
    v = torch.randn(B, hkv, t + steps, d)
    q = torch.randn(B, hq, t + steps, d)
    valid = torch.zeros(B, t, dtype=torch.bool)
    for b, m in enumerate(lens):
        valid[b, t - m:] = True
    batched = KVCache(spec, 1, B, hkv, d, num_heads=hq)
    batched.update(0, k[:, :, :t], v[:, :, :t], valid=valid, q=q[:, :, :t])
    alone = []
    for b, m in enumerate(lens):
        c = KVCache(spec, 1, 1, hkv, d, num_heads=hq)
        c.update(0, k[b:b + 1, :, t - m:t], v[b:b + 1, :, t - m:t], q=q[b:b + 1, :, t - m:t])
        alone.append(c)
    assert batched.lengths(0).tolist() == lens
    for s in range(steps):
        i = t + s
        batched.update(0, k[:, :, i:i + 1], v[:, :, i:i + 1])
        got = batched.decode(0, q[:, :, i:i + 1])
        for b, c in enumerate(alone):
            c.update(0, k[b:b + 1, :, i:i + 1], v[b:b + 1, :, i:i + 1])
            want = c.decode(0, q[b:b + 1, :, i:i + 1])
            torch.testing.assert_close(got[b:b + 1], want, rtol=1e-5, atol=1e-6)
            for h in range(hkv):
                assert torch.equal(batched.positions(0, h, b), c.positions(0, h, 0))
        assert batched.lengths(0).tolist() == [m + s + 1 for m in lens]
