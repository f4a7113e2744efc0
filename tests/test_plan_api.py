"""The plan API as a user calls it (``Spec.plan``): its signature, whole specs with
``heads``/``layers`` lines against ``Spec.mask``, FlexAttention running the plan's BlockMask,
argument errors, and the memory a plan at 1M tokens takes."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import patterndsl
from patterndsl import PsparseUsageError
from patterndsl.printer import to_text
from strategies import programs, static_exprs
from test_plan import tile_classes

ROOT = Path(__file__).resolve().parents[1]


def test_spec_plan_signature_is_the_documented_one():
    sig = inspect.signature(patterndsl.Spec.plan)
    params = dict(sig.parameters)
    assert list(params)[:2] == ["self", "n"]
    expected = {"nq": None, "q_offset": None, "head": 0, "layer": 0, "head_dim": 128, "dtype": None,
                "block_m": None, "block_n": None, "doc_ids": None}
    assert {k: p.default for k, p in params.items() if k not in ("self", "n")} == expected
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in expected)
    # dtype=None is bfloat16: the same cached plan
    spec = patterndsl.parse("causal & local(77)")
    assert spec.plan(3000) is spec.plan(3000, dtype=torch.bfloat16)
    assert spec.plan(3000).dtype == torch.bfloat16


# -- whole specs: the plan of each head/layer is that head's row of Spec.mask --------------

def _doc_ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randint(0, 5, (n,), generator=g)).values


@st.composite
def spec_calls(draw, min_n=0, max_n=96):
    program = draw(programs(static_exprs(document=True, max_leaves=6)))
    spec = patterndsl.parse(to_text(program))
    n = draw(st.integers(min_n, max_n))
    nq = draw(st.integers(0, n))
    off = draw(st.one_of(st.none(), st.integers(0, n - nq)))
    heads = draw(st.integers(1, 4))
    layer = draw(st.integers(0, 3))
    return spec, n, nq, off, heads, layer


def _check_spec_call(spec, n, nq, off, heads, layer, bm, bn):
    kw = {"doc_ids": _doc_ids(n, n)} if spec.needs_doc_ids else {}
    try:
        masks = spec.mask(n, nq=nq, q_offset=off, num_heads=heads, layer=layer, **kw)
    except PsparseUsageError:
        # some head of this layer has no line: its plan says so too
        with pytest.raises(PsparseUsageError):
            for h in range(heads):
                spec.plan(n, nq=nq, q_offset=off, head=h, layer=layer, **kw)
        return
    for h in range(heads):
        plan = spec.plan(n, nq=nq, q_offset=off, head=h, layer=layer, block_m=bm, block_n=bn, **kw)
        assert plan.allowed_pairs == int(masks[h].sum())
        dense = plan.layout().to_dense()
        assert dense.dtype == torch.int8
        assert torch.equal(dense, tile_classes(masks[h], plan.block_m, plan.block_n))
        assert plan.executed_pairs >= plan.allowed_pairs


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(spec_calls(), st.sampled_from([None, 1, 3, 16, 32]), st.sampled_from([None, 2, 5, 16, 64]))
def test_spec_plans_per_head_and_layer_match_spec_mask(call, bm, bn):
    _check_spec_call(*call, bm, bn)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(spec_calls(min_n=1024, max_n=2048), st.sampled_from([None, 48, 128]), st.sampled_from([None, 64, 80]))
def test_spec_plans_match_spec_mask_at_long_lengths(call, bm, bn):
    _check_spec_call(*call, bm, bn)


# -- FlexAttention runs the plan's BlockMask --------------------------------------------------

FLEX_CASES = [
    # spec, n, nq, block_m, block_n
    ("causal & (local(40) | stride(16))", 200, 200, 32, 16),
    ("causal & (local(40) | stride(16))", 200, 77, None, None),
    ("local(30) | global([0, -1]) | random(2, block=16)", 200, 90, 48, 80),
    ("causal & document", 200, 130, None, None),
    ("blockwise(16, local(1) | global([0, -1])) & slash([0:40, -3])", 180, 180, 16, 32),
    ("causal & dilated(8, 3) | sink(4)", 150, 1, None, None),
    ("causal & sink(8) & rows([-5:])", 200, 60, None, None),   # rows with no key: output 0
    ("none", 64, 30, None, None),
]


@pytest.mark.parametrize("text,n,nq,bm,bn", FLEX_CASES)
def test_flex_attention_with_the_plans_block_mask_is_dense_attention(text, n, nq, bm, bn):
    from torch.nn.attention.flex_attention import flex_attention
    spec = patterndsl.parse(text)
    kw = {}
    if spec.needs_doc_ids:
        kw["doc_ids"] = torch.repeat_interleave(torch.arange(4), torch.tensor([50, 70, 30, n - 150]))
    plan = spec.plan(n, nq=nq, block_m=bm, block_n=bn, head_dim=16, **kw)
    block_mask = plan.to_flex_block_mask()
    assert tuple(block_mask.BLOCK_SIZE) == (plan.block_m, plan.block_n)
    q, k, v = (torch.randn(2, 3, rows, 16) for rows in (nq, n, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # "flex_attention called without torch.compile()"
        out = flex_attention(q, k, v, block_mask=block_mask)
    mask = spec.mask(n, nq=nq, **kw)
    scores = (q.double() @ k.double().transpose(-1, -2)) * 16 ** -0.5
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    ref = probs @ v.double()
    assert out.shape == ref.shape
    assert float((out.double() - ref).abs().max()) <= 1e-5 * max(float(ref.abs().max()), 1.0)


# -- arguments -------------------------------------------------------------------------------

def test_bad_plan_arguments_are_usage_errors():
    spec = patterndsl.parse("causal & local(8)")
    for kw in [dict(head=-1), dict(head="a"), dict(layer=-1), dict(layer=1.5), dict(head_dim=0),
               dict(block_m=0), dict(block_n=-4), dict(nq=65), dict(nq=-1), dict(q_offset=1, nq=64),
               dict(dtype="bf16")]:
        with pytest.raises(PsparseUsageError):
            spec.plan(64, **kw)
    for n in (-1, 1.5, "10", True):
        with pytest.raises(PsparseUsageError):
            spec.plan(n)
    plan = spec.plan(64)
    for args in [(0, 16), (16, 0), (-1, 16), ("a", 16)]:
        with pytest.raises(PsparseUsageError):
            plan.layout(*args)
        with pytest.raises(PsparseUsageError):
            plan.to_flex_block_mask(*args)
    doc_spec = patterndsl.parse("causal & document")
    for doc in ["abcd", torch.zeros(4), torch.zeros(3, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int64)]:
        with pytest.raises(PsparseUsageError):
            doc_spec.plan(4, doc_ids=doc)
    layered = patterndsl.parse("layers 0 = causal\nlayers 1: = causal & local(4)\n")
    with pytest.raises(PsparseUsageError, match="layer="):
        layered.plan(64, layer=None)
    assert layered.plan(64, layer=3).allowed_pairs == int(layered.mask(64, layer=3).sum())


@pytest.mark.parametrize("n", [0, 1, 5, 17])
def test_tiny_lengths_and_tiles_larger_than_the_call(n):
    for text in ["causal", "all", "none", "local(1_000_000_000_000)", "global([-1]) | sink(2)",
                 "causal & stride(3)"]:
        spec = patterndsl.parse(text)
        for nq in {0, 1, n}:
            if nq > n:
                continue
            mask = spec.mask(n, nq=nq)
            for bm, bn in [(None, None), (64, 128), (3, 7)]:
                plan = spec.plan(n, nq=nq, block_m=bm, block_n=bn)
                assert plan.allowed_pairs == int(mask.sum())
                assert plan.executed_pairs >= plan.allowed_pairs
                assert plan.work_ratio == (1.0 if plan.allowed_pairs == 0
                                           else plan.executed_pairs / plan.allowed_pairs)
                assert torch.equal(plan.layout().to_dense(), tile_classes(mask, plan.block_m, plan.block_n))


def test_a_new_length_plans_without_running_the_front_end_again(monkeypatch):
    import patterndsl.lower
    import patterndsl.parser
    import patterndsl.passes
    spec = patterndsl.parse("causal & (local(64) | stride(32))")
    spec.plan(1000)

    def refuse(*a, **k):
        raise AssertionError("the front end ran again for a new n")
    for mod, name in [(patterndsl.parser, "parse_tree"), (patterndsl.lower, "lower"),
                      (patterndsl.passes, "canonicalize")]:
        monkeypatch.setattr(mod, name, refuse)
    plan = spec.plan(1001)
    assert plan.n == 1001 and plan.allowed_pairs == int(spec.mask(1001).sum())


# -- memory at 1M tokens ---------------------------------------------------------------------

_PEAK_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import layout, patterndsl
from patterndsl.plan import clear_cache
def kb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))
out = {}
for text in layout.CANONICAL:
    spec = patterndsl.parse(text)
    layout._plan(spec, 4096).allowed_pairs
    clear_cache()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")            # VmHWM := VmRSS
    base = kb("VmRSS")
    plan = layout._plan(spec, 1 << 20)
    plan.allowed_pairs, plan.executed_pairs
    out[text] = (kb("VmHWM") - base) / 1024
    del plan
    clear_cache()
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's VmHWM reset")
def test_canonical_plans_at_one_million_tokens_peak_under_256_mb():
    res = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(ROOT / "benchmarks")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    peaks = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(peaks) == 10
    assert all(mb < 256 for mb in peaks.values()), peaks


def test_a_cached_plan_keeps_its_own_document_ids():
    # the caller reuses its doc_ids tensor: a later plan for the old content must not see it
    spec = patterndsl.parse("causal & document")
    d = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 25, 35]))
    before = d.clone()
    spec.plan(100, doc_ids=d, block_m=16, block_n=16)
    d[:] = 0
    plan = spec.plan(100, doc_ids=before, block_m=16, block_n=16)
    q, k = torch.arange(100).view(-1, 1), torch.arange(100).view(1, -1)
    assert torch.equal(plan.predicate(q, k), spec.mask(100, doc_ids=before))
    assert plan.allowed_pairs == int(spec.mask(100, doc_ids=before).sum())


def _memory_refuses(nbytes: int) -> bool:
    """Whether the kernel refuses one allocation of ``nbytes`` outright (heuristic or strict
    overcommit and less memory than that), so asking for it cannot get the test killed."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            mode = int(f.read())
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    except OSError:
        return False
    return mode != 1 and info["MemTotal"] + info.get("SwapTotal", 0) < nbytes // 4


def test_plans_and_layouts_too_large_for_memory_are_usage_errors():
    plan = patterndsl.parse("causal").plan(1 << 24)
    # one byte per 1x1 tile: 2**48 bytes, beyond any x86_64 address space
    with pytest.raises(PsparseUsageError, match="does not fit in memory"):
        plan.layout(1, 1)
    n = (1 << 40) - 1
    if not _memory_refuses(8 * n):
        pytest.skip("this machine might try to allocate a plan of 2**40 one-row tiles")
    with pytest.raises(PsparseUsageError, match="does not fit in memory"):
        patterndsl.parse("causal & local(100)").plan(n, block_m=1, block_n=1)
