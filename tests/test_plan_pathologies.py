"""Specs outside the canonical set that the planner once handled badly (issue #3's audit):

* strides / dilations / stepped offsets whose period is too long for a residue view (a few
  diagonals) ran as the plain tiling, every tile partial (work ratio in the thousands);
* a long list of single global tokens made one part per token, each minus all before it, and
  its columns a few per key tile (seconds to plan, work ratio 32);
* ``blockwise(b, E)`` with a stride-like ``E`` evaluated ``E`` on all (n/b)^2 block pairs.

Each fix is checked for exactness against the reference mask at small n (tile classes,
counts, disjoint covering parts, truthful full flags, the kernels' ownership predicate) and
by analytic bounds (work ratio, runs, parts, evaluated pairs) at long lengths, never by time.
"""
from __future__ import annotations

import random

import pytest
import torch

from patterndsl import ir
from patterndsl.plan import build_plan, runtime
from patterndsl.reference import expr_mask
from patterndsl.spec import parse
from test_plan import _max, check_part, tile_classes
from test_module_plan import check_owner, compare_plans, load, multi_head_spec
from patterndsl.codegen.module import render_module

SPACED = "global([" + ", ".join(str(i * 37) for i in range(40)) + "]) & causal | every(3, 1) & local(9)"


def _scattered(count: int, top: int, seed: int) -> str:
    xs = sorted(random.Random(seed).sample(range(top), count))
    return "global([" + ", ".join(map(str, xs)) + "]) & causal | every(3, 1) & local(9)"


def pattern(text: str) -> ir.Expr:
    return ir.strip_spans(parse(text).pattern())


def check_exact(e: ir.Expr, n: int, nq: int | None = None, bm=None, bn=None):
    """Counts and tile classes match the reference mask; parts are disjoint, cover the pattern
    and flag full tiles truthfully (tests/test_plan.py's checks)."""
    nq = n if nq is None else nq
    off = n - nq
    mask = expr_mask(e, n, nq=nq, q_offset=off)
    plan = build_plan(e, n, nq=nq, q_offset=off, block_m=bm, block_n=bn)
    assert plan.allowed_pairs == int(mask.sum())
    assert torch.equal(plan.layout().to_dense(), tile_classes(mask, plan.block_m, plan.block_n))
    union = torch.zeros_like(mask, dtype=torch.int64)
    for part in plan.parts:
        pred = expr_mask(part.predicate, n, nq=nq, q_offset=off)
        check_part(plan, part, pred)
        union += pred.to(torch.int64)
    assert _max(union) <= 1
    assert torch.equal(union.bool(), mask)
    return plan


# ---------------------------------------------------------------------------
# 1. Long periods: a few diagonals, each a band of width 1
# ---------------------------------------------------------------------------

LONG_PERIODS = [
    "causal & stride(23)", "stride(40)", "causal & (stride(41) | stride(37))", "dilated(3, 30)",
    "causal & dilated(9, 25) | local(2)", "slash([0:300:45, -7, 60:64])", "stride(33) - local(40)",
    "(stride(50) | every(7, 2)) & causal", "stride(29) & every(3)", "rows([3, 90]) & stride(31)",
]


@pytest.mark.parametrize("text", LONG_PERIODS)
def test_long_periods_are_exact(text):
    e = pattern(text)
    for n, nq, bm, bn in ((300, None, None, None), (300, 41, 16, 32), (97, None, 8, 8)):
        check_exact(e, n, nq, bm, bn)
    # the ownership predicate the generated kernels evaluate gives exactly these parts
    for n in (37, 150):
        check_owner(e, n)


@pytest.mark.parametrize("n", [65536, 1 << 20])
@pytest.mark.parametrize("p", [64, 128, 1000, 4097, 30000])
def test_causal_stride_work_ratio_at_long_lengths(p, n):
    plan = build_plan(pattern(f"causal & stride({p})"), n)
    if runtime._fits(p, n):
        # residue view: a causal triangle per class
        assert [x.view.kind for x in plan.parts] == ["d"]
        assert plan.work_ratio < 2.0
    else:
        # at most 2n/p diagonals, each crossing about two 16 x 16 tiles per query tile:
        # block size / 16 allowed pairs per tile at worst, never every tile partial
        (part,) = plan.parts
        assert (part.block_m, part.block_n) == (16, 16)
        assert part.num_runs <= n // p + 1
        assert plan.work_ratio < 2 * 16 + 2


def test_two_long_strides_reproducer():
    plan = build_plan(pattern("causal & (stride(4099) | stride(4097))"), 65536)
    assert plan.work_ratio < 34          # was 2052.9: the plain tiling, every tile partial
    assert plan.parts[0].num_runs <= 2 * 16 + 1


# ---------------------------------------------------------------------------
# 2. Long global lists
# ---------------------------------------------------------------------------

GLOBAL_LISTS = [
    "global([" + ", ".join(str(i * 7) for i in range(12)) + "]) & causal | every(3, 1) & local(4)",
    "global([0, 1, 20, 40, 60, 80, 81, 99, 150, 155, 160]) | local(2)",
    "rows([5, 10, 15, 20, 50]) | cols([3, 6, 9, 12, 13, -1])",
    "global([-1, -11, -21, -31, 4]) & causal - local(3)",
    "(global([2, 4, 6, 8]) | stride(40)) & causal",
]


@pytest.mark.parametrize("text", GLOBAL_LISTS + [_scattered(12, 200, 1)])
def test_global_lists_are_exact(text):
    e = pattern(text)
    for n, nq, bm, bn in ((203, None, None, None), (203, 30, 16, 16), (64, 64, 8, 16)):
        check_exact(e, n, nq, bm, bn)
    for n in (37, 150):
        check_owner(e, n)


def test_spaced_global_list_plans_as_residue_views():
    for n in (65536, 1 << 20):
        plan = build_plan(pattern(SPACED), n)
        # tokens 37 apart: rows as one query-residue part, columns as one key-residue part
        assert sorted(x.view.kind for x in plan.parts) == ["k", "k", "q"]
        assert plan.work_ratio < 2.5          # was 32
        cols = [x for x in plan.parts if x.view.kind == "k" and x.view.s == 37]
        assert len(cols) == 1
        # one key tile (64 keys of the class, 40 of them the tokens) per query tile
        assert cols[0].num_runs == 1
        assert cols[0].executed_pairs < 1.7 * cols[0].allowed_pairs


def test_scattered_global_tokens_make_small_parts():
    # 40 tokens no progression holds: one short part per token, each minus only the
    # unrestricted pieces (not minus every token part before it)
    plan = build_plan(pattern(_scattered(40, 60000, 0)), 65536)
    rows = [x for x in plan.parts if x.view.qlo is not None]
    assert len(rows) == 40
    for x in rows:
        assert x.q_view.stop - x.q_view.start == 1
        assert repr(x.predicate).count("Rows(") == 1


def test_coalesce_single_positions():
    c = runtime.coalesce
    assert c([(0, 1, 1), (37, 38, 1), (74, 75, 1)]) == [(0, 75, 37)] * 3
    # two points are not a progression worth a view; a slice item stays as written
    assert c([(0, 1, 1), (5, 6, 1), None, (3, 30, 3)]) == [(0, 1, 1), (5, 6, 1), None, (3, 30, 3)]
    # greedy in increasing order: 0, 1 | 1, 4, 7 | 9
    assert c([(9, 10, 1), (0, 1, 1), (1, 2, 1), (4, 5, 1), (7, 8, 1)]) == [
        (9, 10, 1), (0, 1, 1), (1, 8, 3), (1, 8, 3), (1, 8, 3)]


# ---------------------------------------------------------------------------
# 3. blockwise(b, E) with stride-like E: blocks listed, not searched
# ---------------------------------------------------------------------------

BLOCKWISE = [
    "blockwise(4, stride(3))", "blockwise(8, causal & stride(2))", "blockwise(3, every(4, 1) | local(1))",
    "blockwise(5, stride(4) - rows([2]))", "blockwise(4, dilated(2, 3) & causal) | local(3)",
    "causal & blockwise(2, global([0, 3, 6, 9]) | slash([1:20:5]))",
]


@pytest.mark.parametrize("text", BLOCKWISE)
def test_blockwise_with_congruences_is_exact(text):
    e = pattern(text)
    for n, nq, bm, bn in ((300, None, None, None), (300, 50, 8, 16), (131, None, 16, 4)):
        check_exact(e, n, nq, bm, bn)


def _evaluated_pairs(monkeypatch, text: str, n: int) -> tuple[int, runtime.Group]:
    seen = []
    real = runtime.evaluate

    def counting(e, q, k, ctx):
        seen.append(torch.broadcast_shapes(q.shape, k.shape).numel())
        return real(e, q, k, ctx)
    monkeypatch.setattr(runtime, "evaluate", counting)
    node = pattern(text)
    grp = runtime.blockwise_group(node, runtime.Context(n))
    return sum(seen), grp


@pytest.mark.parametrize("text,density", [("blockwise(64, stride(4))", 4), ("blockwise(64, causal & stride(8))", 16)])
def test_blockwise_stride_bodies_need_no_evaluation(monkeypatch, text, density):
    n = 1 << 16
    evaluated, grp = _evaluated_pairs(monkeypatch, text, n)
    assert evaluated == 0                    # was (n/64)^2 = 1M evaluated block pairs
    n2 = n // 64
    runs = int((grp.ptr_hi - grp.ptr_lo).sum())
    # one run per allowed key block: the output, nothing more
    assert runs == int(((grp.run_hi - grp.run_lo) // 64).sum())
    assert abs(runs - n2 * n2 // density) <= n2


def test_module_plans_match_for_these_specs(tmp_path):
    """Generated modules inline the same planner: same parts, views, runs and full flags."""
    patterns = [pattern(t) for t in (SPACED, _scattered(12, 3000, 2), "causal & (stride(4099) | stride(4097))",
                                     "dilated(2, 5000) | slash([0:60000:7000])", "blockwise(64, stride(4))",
                                     "blockwise(16, causal & stride(8)) | local(5)")]
    mod = load(render_module(multi_head_spec(patterns)), tmp_path, "pathologies")
    geos = [(65536, None, None, 128, torch.bfloat16, None, None), (5000, 300, 1000, 64, torch.float32, None, None),
            (300, None, None, 128, torch.bfloat16, 16, 32)]
    compare_plans(mod, patterns, geos)
