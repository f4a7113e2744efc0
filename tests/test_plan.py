"""Plans against the reference mask: exact counts, exact tile classes, and the executed
structure of docs/PLAN.md (disjoint parts whose union is the pattern, covering runs,
truthful full flags, executed-pair accounting).  Everything is compared with
``patterndsl.reference`` (an independent, dense evaluator) or brute force."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from patterndsl import ir
from patterndsl.plan import build_plan
from patterndsl.plan.arith import floor_sum
from patterndsl.plan.context import Context
from patterndsl.plan.predicate import evaluate
from patterndsl.plan.tables import random_table
from patterndsl.randomblocks import random_blocks
from patterndsl.reference import expr_mask
from strategies import static_exprs

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=True)
tiles = st.sampled_from([1, 2, 3, 5, 8, 16, 32])


def _docs(draw, n):
    if draw(st.booleans()):
        return torch.sort(torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(n))).values
    return torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n + 1))


@st.composite
def cases(draw, max_n=96):
    e = draw(static_exprs(document=True))
    n = draw(st.integers(0, max_n))
    nq = draw(st.integers(0, n))
    off = draw(st.integers(0, n - nq))
    return e, n, nq, off, _docs(draw, n)


def tile_classes(mask: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """0/1/2 per tile of a dense mask, by definition: any pair allowed / every in-range pair."""
    nq, n = mask.shape
    Tq, Tk = -(-nq // bm), -(-n // bn)
    pad = torch.zeros((Tq * bm, Tk * bn), dtype=torch.bool)
    inside = torch.zeros_like(pad)
    pad[:nq, :n] = mask
    inside[:nq, :n] = True
    tiles = pad.view(Tq, bm, Tk, bn).permute(0, 2, 1, 3).reshape(Tq, Tk, bm * bn)
    out_of_range = (~inside).view(Tq, bm, Tk, bn).permute(0, 2, 1, 3).reshape(Tq, Tk, bm * bn)
    anyt = tiles.any(-1) if tiles.shape[-1] else torch.zeros((Tq, Tk), dtype=torch.bool)
    allt = (tiles | out_of_range).all(-1)
    return torch.where(anyt, torch.where(allt, 2, 1), 0).to(torch.int8)


def _tile_marks(lo, hi, fl, ncols):
    """Tile-level visit counts and full flags from runs."""
    T, S = lo.shape
    visits = torch.zeros((T, ncols), dtype=torch.int64)
    full = torch.zeros((T, ncols), dtype=torch.bool)
    for t in range(T):
        for s in range(S):
            a, b = int(lo[t, s]), int(hi[t, s])
            if b > a:
                visits[t, a:b] += 1
                full[t, a:b] |= bool(fl[t, s])
    return visits, full


def _tiles_of(dense: torch.Tensor, row_view, col_view, row_off: int, col_off: int = 0):
    """A dense bool mask laid out in two views' slots, per tile: (any pair, every valid
    pair, valid pairs).  Entry [i, j] of ``dense`` is position (i + row_off, j + col_off)."""
    rpos, cpos = row_view.positions(), col_view.positions()
    vr, vc = rpos >= 0, cpos >= 0
    slots = torch.zeros((rpos.numel(), cpos.numel()), dtype=torch.bool)
    valid = torch.zeros_like(slots)
    slots[vr.nonzero(), vc.nonzero().T] = dense[(rpos[vr] - row_off).unsqueeze(1), (cpos[vc] - col_off).unsqueeze(0)]
    valid[vr.nonzero(), vc.nonzero().T] = True
    Tr, Tc, br, bc = row_view.num_tiles, col_view.num_tiles, row_view.block, col_view.block

    def tiles(x):
        return x.view(Tr, br, Tc, bc).permute(0, 2, 1, 3).reshape(Tr, Tc, br * bc)
    return tiles(slots).any(-1), (tiles(slots) | ~tiles(valid)).all(-1), tiles(valid).sum(-1)


def check_part(plan, part, pred):
    """The runs of a part cover its predicate, flag full tiles truthfully, and executed pairs
    are the valid pairs of the visited tiles."""
    check_runs_shape(part.kv_lo, part.kv_hi, part.kv_full)
    visits, full = _tile_marks(part.kv_lo, part.kv_hi, part.kv_full, part.k_view.num_tiles)
    anyt, allt, valid = _tiles_of(pred, part.q_view, part.k_view, plan.q_offset)
    assert _max(visits) <= 1                                  # no tile visited twice
    assert not bool((anyt & (visits == 0)).any())             # runs cover the part
    assert not bool((full & ~allt).any())                     # full: every pair allowed
    assert part.executed_pairs == int((visits * valid).sum())


def _max(t: torch.Tensor) -> int:
    return int(t.max()) if t.numel() else 0


def check_runs_shape(lo, hi, full):
    assert lo.dtype == torch.int32 and hi.dtype == torch.int32 and full.dtype == torch.bool
    assert bool((hi >= lo).all())
    nonempty = hi > lo
    # non-empty runs first, sorted, disjoint
    assert bool((nonempty[:, 1:] <= nonempty[:, :-1]).all())
    both = nonempty[:, 1:] & nonempty[:, :-1]
    assert bool((hi[:, :-1][both] <= lo[:, 1:][both]).all())
    assert not bool((full & ~nonempty).any())


@SETTINGS
@given(cases(), tiles, tiles)
def test_counts_and_layout_match_reference(case, bm, bn):
    e, n, nq, off, doc = case
    mask = expr_mask(e, n, nq=nq, q_offset=off, doc_ids=doc)
    plan = build_plan(e, n, nq=nq, q_offset=off, doc_ids=doc if e.needs_doc_ids else None,
                      block_m=bm, block_n=bn)
    assert plan.allowed_pairs == int(mask.sum())
    assert torch.equal(plan.layout().to_dense(), tile_classes(mask, bm, bn))


@st.composite
def long_cases(draw):
    e = draw(static_exprs(document=True))
    n = draw(st.integers(512, 2048))
    nq = draw(st.sampled_from([n, 1, n // 3]))
    return e, n, nq, n - nq, _docs(draw, n)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(long_cases(), st.sampled_from([16, 48, 64, 128]), st.sampled_from([16, 64, 80, 128]))
def test_counts_and_layout_match_reference_at_long_lengths(case, bm, bn):
    e, n, nq, off, doc = case
    mask = expr_mask(e, n, nq=nq, q_offset=off, doc_ids=doc)
    plan = build_plan(e, n, nq=nq, doc_ids=doc if e.needs_doc_ids else None, block_m=bm, block_n=bn)
    assert plan.allowed_pairs == int(mask.sum())
    assert torch.equal(plan.layout().to_dense(), tile_classes(mask, bm, bn))


@SETTINGS
@given(cases(max_n=72), st.one_of(st.none(), tiles), st.one_of(st.none(), tiles))
def test_parts_are_disjoint_cover_the_pattern_and_flag_full_tiles_truthfully(case, bm, bn):
    e, n, nq, off, doc = case
    mask = expr_mask(e, n, nq=nq, q_offset=off, doc_ids=doc)
    plan = build_plan(e, n, nq=nq, q_offset=off, doc_ids=doc if e.needs_doc_ids else None,
                      head_dim=64, block_m=bm, block_n=bn)
    union = torch.zeros_like(mask, dtype=torch.int64)
    executed = 0
    for part in plan.parts:
        pred = expr_mask(part.predicate, n, nq=nq, q_offset=off, doc_ids=doc)
        check_part(plan, part, pred)
        assert part.allowed_pairs == int(pred.sum())
        union += pred.to(torch.int64)
        executed += part.executed_pairs
    assert _max(union) <= 1                # parts are disjoint
    assert torch.equal(union.bool(), mask)               # and their union is the pattern
    assert plan.executed_pairs == executed >= plan.allowed_pairs
    assert plan.work_ratio == (1.0 if plan.allowed_pairs == 0 else executed / plan.allowed_pairs)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(cases(max_n=64), st.one_of(st.none(), tiles))
def test_transposed_runs_cover_the_part_and_flag_full_tiles_truthfully(case, bm):
    e, n, nq, off, doc = case
    mask_kw = dict(nq=nq, q_offset=off, doc_ids=doc)
    plan = build_plan(e, n, nq=nq, q_offset=off, doc_ids=doc if e.needs_doc_ids else None,
                      block_m=bm, block_n=bm)
    for part in plan.parts:
        pred = expr_mask(part.predicate, n, **mask_kw)
        tr = part.transpose()
        check_runs_shape(tr.q_lo, tr.q_hi, tr.q_full)
        assert tr.q_lo.shape[0] == part.k_view.num_tiles
        visits, full = _tile_marks(tr.q_lo, tr.q_hi, tr.q_full, part.q_view.num_tiles)
        anyt, allt, _ = _tiles_of(pred.T.contiguous(), part.k_view, part.q_view, 0, off)
        assert _max(visits) <= 1
        assert not bool((anyt & (visits == 0)).any())
        assert not bool((full & ~allt).any())


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(cases(max_n=80))
def test_element_predicate_is_the_reference(case):
    e, n, nq, off, doc = case
    mask = expr_mask(e, n, nq=nq, q_offset=off, doc_ids=doc)
    q = torch.arange(off, off + nq).view(-1, 1)
    k = torch.arange(n).view(1, -1)
    got = evaluate(e, q, k, Context(n, doc)).expand(nq, n)
    assert torch.equal(got, mask)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 40), st.integers(1, 50), st.integers(-300, 300), st.integers(-300, 300))
def test_floor_sum_is_the_sum_of_floors(cnt, m, a, b):
    got = floor_sum(torch.tensor([cnt]), torch.tensor([m]), torch.tensor([a]), torch.tensor([b]))
    assert int(got) == sum((a * i + b) // m for i in range(cnt))


def test_random_table_known_answers_and_dense_reference():
    t = random_table(3, 1, 0, False, 8)
    assert [sorted(x for x in row if x >= 0) for row in t[:4].tolist()] == [[1, 3, 7], [0, 3, 7], [0, 2, 5], [0, 4, 5]]
    t = random_table(3, 1, 0, True, 8)
    assert [[x for x in row if x >= 0] for row in t[:4].tolist()] == [[0], [0, 1], [0, 1, 2], [0, 1, 3]]
    t = random_table(2, 1, 42, False, 5)
    assert t.tolist() == [[0, 3], [1, 4], [3, 4], [1, 2], [1, 3]]
    for count, block, seed, causal, n in [(4, 3, 7, True, 100), (5, 2, 2**32 - 1, False, 37), (0, 4, 1, False, 9)]:
        dense = torch.zeros(random_blocks(count, block, seed, causal, n).shape, dtype=torch.bool)
        for i, row in enumerate(random_table(count, block, seed, causal, n).tolist()):
            for x in row:
                if x >= 0:
                    dense[i, x] = True
        assert torch.equal(dense, random_blocks(count, block, seed, causal, n))


def test_long_fixed_cases_match_reference():
    # lengths up to 2048 with realistic arguments, several tilings
    doc = torch.repeat_interleave(torch.arange(5), torch.tensor([300, 17, 900, 531, 300]))
    for text_expr, n in [
        (ir.Intersect((ir.Causal(), ir.Union((ir.Local(128, 128), ir.Stride(128))))), 2048),
        (ir.Intersect((ir.Causal(), ir.Dilated(64, 4))), 2048),
        (ir.Union((ir.Local(96, 96), ir.Global(ir.IndexSet((ir.Slice(0, 64, None),))),
                   ir.Random(3, 64, 0, False))), 2048),
        (ir.Union((ir.Intersect((ir.Causal(), ir.Block(512))), ir.Sink(64))), 2048),
        (ir.Intersect((ir.Causal(), ir.Document())), 2048),
        (ir.Blockwise(64, ir.Union((ir.Local(1, 1), ir.Global(ir.IndexSet((0, -1)))))), 2048),
    ]:
        mask = expr_mask(text_expr, n, doc_ids=doc)
        for bm, bn in [(128, 64), (48, 80)]:
            plan = build_plan(text_expr, n, block_m=bm, block_n=bn, doc_ids=doc if text_expr.needs_doc_ids else None)
            assert plan.allowed_pairs == int(mask.sum())
            assert torch.equal(plan.layout().to_dense(), tile_classes(mask, bm, bn))
        plan = build_plan(text_expr, n, doc_ids=doc if text_expr.needs_doc_ids else None)
        total = torch.zeros_like(mask, dtype=torch.int64)
        for part in plan.parts:
            pred = expr_mask(part.predicate, n, doc_ids=doc)
            check_part(plan, part, pred)
            total += pred.to(torch.int64)
        assert torch.equal(total, mask.to(torch.int64))


def test_exotic_terms_that_fall_back_to_evaluation_are_still_exact():
    # many overlapping stepped index items blow up inclusion-exclusion: counted by evaluation
    items = tuple(ir.Slice(i, None, 3 + i % 5) for i in range(14))
    e = ir.Union((ir.Global(ir.IndexSet(items)), ir.Intersect((ir.Causal(), ir.Stride(7)))))
    n = 200
    mask = expr_mask(e, n)
    plan = build_plan(e, n, block_m=16, block_n=16)
    assert plan.allowed_pairs == int(mask.sum())
    assert torch.equal(plan.layout().to_dense(), tile_classes(mask, 16, 16))


def test_queries_with_offsets_and_decode_rows():
    e = ir.Union((ir.Intersect((ir.Causal(), ir.Local(50, 50))), ir.Sink(4)))
    for n, nq, off in [(1000, 1, None), (1000, 37, 500), (1000, 1000, None), (10, 0, None)]:
        mask = expr_mask(e, n, nq=nq, q_offset=off)
        plan = build_plan(e, n, nq=nq, q_offset=off)
        assert plan.q_offset == (n - nq if off is None else off)
        assert plan.allowed_pairs == int(mask.sum())
        assert torch.equal(plan.layout().to_dense(), tile_classes(mask, plan.block_m, plan.block_n))
