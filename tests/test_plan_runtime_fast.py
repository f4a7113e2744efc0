"""The planner's fast paths give what the general code gives.

Tile runs built in slices of query tiles, a top-level union handed to ``tile_runs`` as
separate sets, merges that leave already-normal rows alone, rank counts by comparison,
segments found by division, and random rows finished by the scalar definition: each is
checked against the general path on fresh inputs, and the plans against the dense mask.
"""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

import patterndsl
from patterndsl import ir
from patterndsl.codegen.module import render_module
from patterndsl.plan import clear_cache
from patterndsl.plan import runtime as rt
from patterndsl.reference import expr_mask
from test_plan import check_part
from test_randomblocks import slow_R

SPECS = [
    "local(192) | global([0:64]) | random(3, block=64, seed=0)",
    "causal & (local(128) | stride(128))",
    "causal & block(2048) | sink(64)",
    "local(20) | random(2, block=16, seed=3, causal=true) | global([5, -1])",
    "causal & (dilated(16, 3) | slash([0, 40:60:7]))",
    "blockwise(16, causal & local(2)) | random(4, block=32, seed=9)",
    "causal & document",
]


def _doc(n, seed):
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randperm(n - 1, generator=g)[:5] + 1).values
    d = torch.zeros(n, dtype=torch.int64)
    d[cuts] = 1
    return torch.cumsum(d, 0)


def _parts(plan):
    return [(p.view, p.q_view, p.k_view, p.kv_lo, p.kv_hi, p.kv_full) for p in plan.parts]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[:3] == y[:3]
        for u, v in zip(x[3:], y[3:]):
            assert u.dtype == v.dtype and torch.equal(u, v)


@pytest.mark.parametrize("text", SPECS)
def test_tile_runs_in_slices_are_the_whole_plan(monkeypatch, text):
    n = 1500 + random.Random(text).randrange(200)
    spec = patterndsl.parse(text)
    doc = _doc(n, len(text)) if "document" in text else None
    kw = dict(head_dim=32, dtype=torch.float32, block_m=16, block_n=16, doc_ids=doc)
    clear_cache()
    whole = spec.plan(n, **kw)
    monkeypatch.setattr(rt, "RUN_ROWS", 7)   # slices of 7 query tiles, the last one short
    clear_cache()
    sliced = spec.plan(n, **kw)
    clear_cache()
    _same(_parts(whole), _parts(sliced))
    expr = spec.pattern(0, 0)
    for part in sliced.parts:
        pred = expr_mask(part.predicate, n, doc_ids=doc)
        check_part(sliced, part, pred)
    assert sliced.allowed_pairs == int(expr_mask(expr, n, doc_ids=doc).sum())


def test_tile_runs_take_a_union_as_separate_sets_or_interleaved():
    n = 3000
    expr = patterndsl.parse("local(100) | global([0:40]) | random(3, block=32, seed=1)").pattern(0, 0)
    ctx = rt.Context(n)
    for bm, bn in [(32, 32), (64, 16), (48, 80)]:
        qv, kv = rt.IDENTITY.views(0, n, n, bm, bn)
        g = rt.Geom.make(rt.IDENTITY, qv, kv, n)
        hulls, cores = rt.tile_spaces(ir.strip_spans(expr), g, ctx, clip=False)
        assert isinstance(hulls, list) and len(hulls) == 3
        hull, core = hulls[0], cores[0]
        for h, c in zip(hulls[1:], cores[1:]):
            hull, core = rt.iv_interleave(hull, h), rt.iv_interleave(core, c)
        for x, y in zip(rt.tile_runs(hulls, cores, g), rt.tile_runs(hull, core, g)):
            assert torch.equal(x, y)


def _python_union(row):
    out = []
    for lo, hi in sorted((a, b) for a, b in row if b > a):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


@pytest.mark.parametrize("clean_share", [0.0, 0.5, 0.97, 1.0])
def test_merge_sorted_is_the_union_whatever_the_share_of_normal_rows(clean_share):
    rng = random.Random(int(clean_share * 100))
    T, K = 300, 4
    rows = []
    for _ in range(T):
        if rng.random() < clean_share:   # normal already: real, separated, sorted
            xs = sorted(rng.sample(range(0, 400), 2 * K))
            rows.append([(xs[2 * i], xs[2 * i + 1]) for i in range(K)])
        else:                            # sorted by start, overlapping, touching, empty
            starts = sorted(rng.randrange(0, 60) for _ in range(K))
            row = []
            for s in starts:
                kind = rng.random()
                row.append((s, s) if kind < 0.2 else (s, s + rng.randrange(1, 25)))
            rows.append(row)
    lo = torch.tensor([[a for a, _ in r] for r in rows])
    hi = torch.tensor([[b for _, b in r] for r in rows])
    nlo, nhi = rt.iv_merge_sorted(lo, hi)
    for t in range(T):
        got = [[int(a), int(b)] for a, b in zip(nlo[t], nhi[t]) if int(a) < rt.INF]
        assert got == _python_union(rows[t])
        assert bool((nhi[t][nlo[t] == rt.INF] == rt.INF).all())
    assert nlo.shape[1] == max(len(_python_union(r)) for r in rows)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(1, 40), st.integers(1, 8), st.integers(1, 8), st.booleans(), st.integers(0, 2**31))
def test_count_before_is_searchsorted(T, kx, ky, right, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.sort(torch.randint(0, 20, (T, kx), generator=g), 1).values
    y = torch.randint(-2, 22, (T, ky), generator=g)
    assert torch.equal(rt._count_before(x, y, right), torch.searchsorted(x, y, right=right))


@pytest.mark.parametrize("b,n", [(1, 5), (3, 10), (64, 1000), (7, 7), (16, 0)])
def test_uniform_segments_are_found_like_the_search(b, n):
    g = rt.block_group(b, n)
    assert g.seg_len == b
    q = torch.arange(-2 * b - 1, max(n, 1) + 3 * b)
    plain = rt.Group(g.n, g.seg_starts, g.ptr_lo, g.ptr_hi, g.run_lo, g.run_hi)
    assert torch.equal(g.segment_of(q), plain.segment_of(q))


@pytest.mark.parametrize("count,block,seed,causal,n", [
    (3, 1, 0, True, 300), (5, 2, 11, False, 30), (8, 1, 2**40 + 3, True, 200), (2, 4, 7, False, 9),
    (8, 1, 5, False, 12), (3, 64, 1, False, 20000),
])
def test_random_rows_by_scalar_and_by_vector_agree_with_the_definition(monkeypatch, count, block, seed,
                                                                       causal, n):
    nb = -(-n // block)
    expect = [sorted(slow_R(count, seed, causal, nb, i)) for i in range(nb)]
    scalar = rt.random_table(count, block, seed, causal, n)
    monkeypatch.setattr(rt, "SCALAR_ROWS", -1)   # every row with a repeat goes the vector way
    vector = rt.random_table(count, block, seed, causal, n)
    assert torch.equal(scalar, vector)
    r = min(count, nb)
    assert scalar.tolist() == [row + [-1] * (r - len(row)) for row in expect]


def test_generated_module_draws_random_blocks_with_the_runtime_table():
    src = render_module("local(16) | random(2, block=16, seed=5)")
    assert src.count("\ndef random_table(") == 1 and "_splitmix64" not in src
    assert src.count("\ndef splitmix64(") == 1

