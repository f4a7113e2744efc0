"""Plans of the canonical set at realistic lengths (work-ratio targets, closed-form counts,
1M-token smoke), the tile rule, caching, per-head plans, FlexAttention interop and errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import patterndsl
from patterndsl import PsparseUsageError, ir
from patterndsl.plan import build_plan
from patterndsl.reference import expr_mask

# spec -> work-ratio target at n = 32768 (the planner issue's canonical set)
CANONICAL_TARGETS = {spec: float(target) for target, spec in (
    line.split("\t") for line in
    (Path(__file__).resolve().parents[1] / "benchmarks" / "canonical_set.tsv").read_text().splitlines()
    if line and not line.startswith("#"))}


def sixteen_docs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randperm(n - 1, generator=g)[:15] + 1).values
    d = torch.zeros(n, dtype=torch.int64)
    d[cuts] = 1
    return torch.cumsum(d, 0)


def plan_of(text: str, n: int, **kw):
    spec = patterndsl.parse(text)
    if spec.needs_doc_ids:
        kw.setdefault("doc_ids", sixteen_docs(n))
    return spec.plan(n, **kw)


@pytest.mark.parametrize("text", list(CANONICAL_TARGETS))
def test_canonical_work_ratio_targets_at_32k(text):
    plan = plan_of(text, 32768, head_dim=128)
    assert 1.0 <= plan.work_ratio <= CANONICAL_TARGETS[text], plan


def _closed_forms(n: int, docs: torch.Tensor):
    w, s = 1024, 128
    lengths = torch.bincount(docs).tolist()
    return {
        "causal": n * (n + 1) // 2,
        "causal & local(1024)": w * (w + 1) // 2 + (n - w) * (w + 1),
        "causal & stride(128)": sum(q // s + 1 for q in range(n)),
        "causal & document": sum(L * (L + 1) // 2 for L in lengths),
        # rows below 4 see keys 0..q; the others their band plus the 4 sinks outside it
        "causal & (sink(4) | local(1024))": (w * (w + 1) // 2 + (n - w) * (w + 1)
                                             + sum(min(4, q - w) for q in range(w + 1, n))),
    }


@pytest.mark.parametrize("n", [32768, 1 << 20])
def test_allowed_pairs_match_closed_forms(n):
    docs = sixteen_docs(n)
    for text, expected in _closed_forms(n, docs).items():
        assert plan_of(text, n, doc_ids=docs).allowed_pairs == expected, text


@pytest.mark.parametrize("text", list(CANONICAL_TARGETS))
def test_one_million_tokens_plan_is_a_few_small_arrays(text):
    n = 1 << 20
    plan = plan_of(text, n)
    assert plan.allowed_pairs > 0
    assert plan.executed_pairs >= plan.allowed_pairs
    # runs per query tile: O(n / block) entries, never O(n^2 / block^2)
    assert plan.nbytes() < 4 * 2**20
    assert sum(p.kv_lo.numel() for p in plan.parts) < 64 * n // 16


def test_canonical_parts_use_residue_views_where_it_pays():
    p = plan_of("causal & stride(128)", 32768)
    assert [(x.view.kind, x.q_view.period, x.k_view.period) for x in p.parts] == [("d", 128, 128)]
    p = plan_of("causal & (local(128) | stride(128))", 32768)
    assert [x.view.kind for x in p.parts] == ["id", "d"]
    # the stride part excludes what the band part computes
    assert isinstance(p.parts[1].predicate, ir.Difference)
    p = plan_of("causal & dilated(256, 4)", 32768)
    assert p.parts[0].q_view.period == 4
    # a global token's row runs alone, not as a whole query tile
    p = plan_of("local(256) | global([0])", 32768)
    assert [(x.q_view.start, x.q_view.stop) for x in p.parts] == [(0, 32768), (0, 1)]
    p = plan_of("causal & every(64)", 8192)
    assert (p.parts[0].q_view.period, p.parts[0].k_view.period) == (1, 64)
    assert p.work_ratio < 1.3


def test_tile_rule():
    assert (plan_of("causal", 4096).block_m, plan_of("causal", 4096).block_n) == (128, 64)
    assert (plan_of("causal", 4096, head_dim=64).block_m, plan_of("causal", 4096, head_dim=64).block_n) == (128, 128)
    assert (plan_of("causal", 4096, head_dim=256).block_m, plan_of("causal", 4096, head_dim=256).block_n) == (64, 64)
    f32 = plan_of("causal", 4096, dtype=torch.float32)
    assert (f32.block_m, f32.block_n) == (64, 32)
    # aligned with random blocks; narrow for a thin band; short calls get short tiles
    assert plan_of("local(192) | random(3, block=64)", 8192).block_m == 64
    assert plan_of("causal & local(128)", 8192).block_m == 64
    assert plan_of("causal & local(32)", 8192).block_m == 16
    assert plan_of("causal", 4096, nq=1).block_m == 16
    # a block pattern keeps tiles that divide its blocks
    p = plan_of("causal & block(96)", 4096)
    assert 96 % p.block_m == 0 and 96 % p.block_n == 0
    forced = plan_of("causal & (local(128) | stride(128))", 8192, block_m=32, block_n=16)
    assert all((x.block_m, x.block_n) == (32, 16) for x in forced.parts)
    assert (forced.block_m, forced.block_n) == (32, 16)


def test_plans_are_cached_per_expression_length_and_options():
    spec = patterndsl.parse("causal & local(100)")
    a = spec.plan(5000)
    assert spec.plan(5000) is a
    assert patterndsl.parse("causal & local(100)").plan(5000) is a
    assert spec.plan(5001) is not a
    assert spec.plan(5000, head_dim=64) is not a
    assert spec.plan(5000, nq=1) is not a
    d1, d2 = sixteen_docs(3000), sixteen_docs(3000)
    doc_spec = patterndsl.parse("causal & document")
    assert doc_spec.plan(3000, doc_ids=d1) is doc_spec.plan(3000, doc_ids=d2)
    assert doc_spec.plan(3000, doc_ids=d1) is not doc_spec.plan(3000, doc_ids=sixteen_docs(3000, seed=1))


def test_per_head_plans():
    spec = patterndsl.parse("heads 0:2 = causal\nheads 2: = causal & local(16)\n")
    assert spec.plan(256, head=0).expr == ir.Causal()
    p = spec.plan(256, head=3)
    assert p.allowed_pairs == int(spec.mask(256, num_heads=4)[3].sum())
    with pytest.raises(PsparseUsageError):
        spec.plan(256, head=None)


def test_flex_block_mask_interop():
    from torch.nn.attention.flex_attention import BlockMask, create_mask
    doc = sixteen_docs(300)
    for text, nq in [("causal & (local(40) | stride(16))", 300), ("local(30) | global([0]) | random(2, block=16)", 300),
                     ("causal & document", 300), ("causal & sink(8)", 70)]:
        spec = patterndsl.parse(text)
        kw = {"doc_ids": doc} if spec.needs_doc_ids else {}
        plan = spec.plan(300, nq=nq, block_m=32, block_n=16, **kw)
        bm = plan.to_flex_block_mask()
        assert isinstance(bm, BlockMask)
        assert tuple(bm.BLOCK_SIZE) == (32, 16)
        lay = plan.layout().to_dense()
        dense_blocks = bm.to_dense()[0, 0]
        assert torch.equal(dense_blocks.bool(), lay != 0)
        full = torch.zeros_like(lay, dtype=torch.bool)
        for i in range(lay.shape[0]):
            full[i, bm.full_kv_indices[0, 0, i, :int(bm.full_kv_num_blocks[0, 0, i])].long()] = True
        assert torch.equal(full, lay == 2)
        mask = create_mask(bm.mask_mod, 1, 1, nq, 300, device="cpu")[0, 0]
        assert torch.equal(mask, spec.mask(300, nq=nq, **kw))


def test_layout_compressed_form_and_plain_tiling_work():
    plan = plan_of("causal & stride(128)", 4096, block_m=128, block_n=128)
    lay = plan.layout()
    # FlexAttention's 128x128 tiles: every tile on or below the diagonal holds one stride
    # diagonal, so all of them are partial and the plain tiling computes ~128x the pairs
    assert lay.num_full == 0 and lay.num_partial == 32 * 33 // 2
    assert lay.executed_pairs == sum((i + 1) * 128 * 128 for i in range(32))
    assert torch.equal(lay.kv_num_blocks, torch.arange(1, 33, dtype=torch.int32))
    assert torch.equal(lay.kv_indices[5, :6], torch.arange(6, dtype=torch.int32))
    assert plan.work_ratio < 2.0


def test_nothing_allowed():
    plan = build_plan(ir.Nothing(), 1000)
    assert plan.allowed_pairs == 0 and plan.executed_pairs == 0 and plan.work_ratio == 1.0
    assert plan.parts == ()
    plan = build_plan(ir.Intersect((ir.Stride(4), ir.Slash(ir.IndexSet((1, 2, 3))))), 1000)
    assert plan.allowed_pairs == 0 and plan.work_ratio == 1.0


def test_usage_errors():
    with pytest.raises(PsparseUsageError, match="planned per call"):
        patterndsl.parse("causal & vertical(topk=4)").plan(128)
    with pytest.raises(PsparseUsageError, match="doc_ids"):
        patterndsl.parse("causal & document").plan(128)
    with pytest.raises(PsparseUsageError, match="plan each batch element"):
        patterndsl.parse("causal & document").plan(128, doc_ids=torch.zeros(2, 128, dtype=torch.int64))
    with pytest.raises(PsparseUsageError):
        patterndsl.parse("causal").plan(128, nq=200)
    with pytest.raises(PsparseUsageError):
        patterndsl.parse("causal").plan(128, nq=10, q_offset=120)
    with pytest.raises(PsparseUsageError):
        patterndsl.parse("causal").plan(128, block_m=0)
    with pytest.raises(PsparseUsageError):
        patterndsl.parse("causal").plan(-1)


def test_document_ids_split_into_several_runs():
    doc = torch.tensor([0] * 40 + [1] * 30 + [0] * 20 + [2] * 10)
    e = ir.Intersect((ir.Causal(), ir.Document()))
    plan = build_plan(e, 100, doc_ids=doc, block_m=16, block_n=16)
    assert plan.allowed_pairs == int(expr_mask(e, 100, doc_ids=doc).sum())
