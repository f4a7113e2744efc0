"""Dynamic lines as a static part plus table parts (patterndsl.dynamic.split / tables):
outputs, log-sum-exp and gradients of the torch and interpret backends against dense
float64 attention under the reference mask (``Spec.mask(n, q=, k=)``), the tables against
that mask, one launch per part (never one plan per batch element and head for a monotone
line), the per-call work accounting, and the dynamic examples.

Inputs are Gaussian with fixed seeds; tests/test_dynamic.py checks that such inputs
separate the scores around every cut, so the chosen sets are the reference's exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import patterndsl
from patterndsl import ir
from patterndsl.dynamic import select
from patterndsl.dynamic.split import split
from patterndsl.dynamic.tables import build_tables
from patterndsl.dynamic import predicate as dyn_predicate
from patterndsl.plan.context import Context

from dense_attention import assert_matches_dense, count_calls, dense, inputs, rel

TOL = 1e-5
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


pytestmark = pytest.mark.usefixtures("small_dynamic_chunks")


def check(attn, n, nq, *, B=2, Hq=4, Hkv=2, D=16, seed=7, kv_lens=None, q_offset=None,
          layer=0, scale=None):
    q, k, v = (x.requires_grad_() for x in inputs(B, Hq, Hkv, n, nq, D, seed))
    out, lse = attn(q, k, v, return_lse=True, kv_lens=kv_lens, q_offset=q_offset, layer=layer,
                    scale=scale)
    sc = D ** -0.5 if scale is None else scale
    mask = attn.mask(n, q=q.detach(), k=k.detach(), layer=layer, q_offset=q_offset, scale=sc,
                     num_layers=attn.num_layers)
    assert_matches_dense(out, lse, (q, k, v), mask, sc, TOL, kv_lens)
    return mask


# ---------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------

def test_split_static_part_and_monotonicity():
    e = patterndsl.parse("causal & (sink(4) | local(8) | vertical(topk=8) | slash(topk=4))") \
        .canonical_ir.rules[0].expr
    sp = split(e)
    assert not sp.static.is_dynamic
    assert patterndsl.parse("causal & (sink(4) | local(8))").canonical_ir.rules[0].expr == sp.static
    assert [type(p.term) for p in sp.parts] == [ir.TopVertical, ir.TopSlash]
    for text in ("causal - vertical(topk=3)", "local(4) - (causal & slash(topk=2))"):
        assert split(patterndsl.parse(text).canonical_ir.rules[0].expr) is None
    assert split(patterndsl.parse("blocks(2, 8) - local(1)").canonical_ir.rules[0].expr) is not None


@pytest.mark.parametrize("text", [
    "causal & (sink(2) | local(6) | vertical(topk=5) | slash(topk=3))",
    "local(5) & slash(topk=2) | causal & blocks(topk=2, block=8) | vertical(topk=2, by=norm)",
    "blocks(3, 7) - local(1) | rows([0:3])",
    "local(6) & vertical(topk=6) | prefix(20) & slash(topk=3) | causal & local(2)",
])
@pytest.mark.parametrize("n,nq", [(45, 45), (45, 17)])
def test_tables_and_parts_reproduce_the_reference_mask(text, n, nq):
    """Static part | table parts == the reference mask, the parts pairwise disjoint, every
    allowed pair of a part inside the key slots its tables visit."""
    from patterndsl.backends.torch_backend import _table_slots
    from patterndsl.reference import expr_mask
    spec = patterndsl.parse(text)
    expr = spec.canonical_ir.rules[0].expr
    q, k, _ = inputs(n=n, nq=nq, seed=3)
    ref = spec.mask(n, q=q, k=k)                                   # [B, H, nq, n]
    sp = split(expr)
    sels = select(spec, q, k)
    tabs = build_tables(sp, sels, [0, 1, 2, 3], 2, nq, n, n - nq, block_m=16, block_n=16)
    ctx = Context(n)
    qq = torch.arange(n - nq, n).view(1, -1, 1)
    kk = torch.arange(n).view(1, 1, -1)
    bh = torch.arange(8).view(-1, 1, 1)
    total = expr_mask(sp.static, n, nq=nq).expand(8, nq, n).clone()
    whole = dyn_predicate.evaluate(expr, qq, kk, bh, ctx, tabs)
    assert torch.equal(whole, ref.reshape(8, nq, n))
    for tp in tabs.parts:
        part = dyn_predicate.evaluate(tp.predicate, qq, kk, bh, ctx, tabs)
        assert not bool((part & total).any())
        total |= part
        qpos, kpos = _table_slots(tp, n - nq, nq, n)
        seen = torch.zeros(8, nq + 1, n + 1, dtype=torch.bool)
        rows = torch.where(qpos >= 0, qpos - (n - nq), nq)          # [T, bm]
        cols = torch.where(kpos >= 0, kpos, n)                      # [BH, T, W]
        seen[torch.arange(8).view(-1, 1, 1, 1), rows[None, :, :, None], cols[:, :, None, :]] = True
        assert not bool((part & ~seen[:, :nq, :n]).any())
    assert torch.equal(total, ref.reshape(8, nq, n))


def test_tables_never_read_the_host():
    from torch._subclasses.fake_tensor import FakeTensorMode
    spec = patterndsl.parse("causal & (local(4) | vertical(topk=4) | slash(topk=3) | "
                            "blocks(topk=2, block=8))")
    sp = split(spec.canonical_ir.rules[0].expr)
    with FakeTensorMode():
        q, k = torch.randn(2, 4, 50, 16), torch.randn(2, 2, 64, 16)
        tabs = build_tables(sp, select(spec, q, k), [0, 1, 2, 3], 2, 50, 64, 14)
    assert [tp.mode for tp in tabs.parts] == [0, 1, 2]


# ---------------------------------------------------------------------------
# Attention against dense float64 (torch backend)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "causal & (vertical(topk=4) | slash(topk=3))",
    "causal & (sink(2) | local(8) | vertical(topk=8) | slash(topk=4))",
    "vertical(topk=3, by=norm) | local(2)",
    "causal & blocks(topk=2, block=16)",
    "blocks(3, 7) | causal & slash(topk=2)",
    "local(5) & slash(topk=2) | causal & blocks(topk=1, block=8)",
])
@pytest.mark.parametrize("n,nq", [(71, 71), (66, 1)])
def test_torch_backend_matches_dense(text, n, nq):
    attn = patterndsl.compile(text, block_m=16, block_n=16)
    check(attn, n, nq)


def test_budgets_kv_lens_offset_and_scale():
    attn = patterndsl.compile("budget = adaptive(floor=0.25); causal & (local(3) | "
                              "vertical(topk=4) | slash(topk=3))", block_m=16, block_n=32)
    check(attn, 63, 40, kv_lens=torch.tensor([50, 63]))
    attn = patterndsl.compile("budget = pyramid(beta=4); causal & (vertical(topk=6) | "
                              "blocks(topk=2, block=8))", num_layers=3, block_m=16, block_n=16)
    check(attn, 59, 59, layer=1)
    attn = patterndsl.compile("causal & (sink(1) | slash(topk=3) | vertical(topk=2))")
    check(attn, 60, 20, q_offset=15, scale=0.7)


def test_mixed_heads_and_gqa_groups():
    text = ("heads 0:2 = causal & local(4)\nheads 2:3 = causal & (sink(1) | slash(topk=2))\n"
            "heads 3:4 = vertical(topk=3, by=lownorm)")
    check(patterndsl.compile(text, block_m=16, block_n=16), 40, 40, Hq=4, Hkv=2)
    check(patterndsl.compile("causal & (vertical(topk=3) | slash(topk=2))"), 90, 90, Hq=6, Hkv=2)


def test_non_monotone_lines_keep_substitution():
    check(patterndsl.compile("causal - vertical(topk=3, last=5)", block_m=16, block_n=16), 40, 40,
          B=1, Hq=2, Hkv=1)


# ---------------------------------------------------------------------------
# One launch per part; work accounting
# ---------------------------------------------------------------------------

def _count(monkeypatch):
    from patterndsl import plan as plan_pkg
    from patterndsl.backends import torch_backend
    return count_calls(monkeypatch, static=(torch_backend, "forward_part"),
                       table=(torch_backend, "forward_table_part"), plans=(plan_pkg, "build_plan"))


def test_one_launch_per_part(monkeypatch):
    calls = _count(monkeypatch)
    attn = patterndsl.compile("causal & (sink(2) | local(8) | vertical(topk=8) | slash(topk=4))",
                              block_m=16, block_n=16)
    q, k, v = inputs(B=3, Hq=4, Hkv=2, n=70, seed=1)
    attn(q, k, v)
    assert calls["plans"] == 1 and calls["table"] == 2
    from patterndsl.plan.builder import build_plan
    plan = build_plan(split(attn.spec.pattern(0)).static, 70, head_dim=16,
                                      dtype=torch.float32, block_m=16, block_n=16)
    assert calls["static"] == len(plan.parts)
    assert attn.last_work.launches == len(plan.parts) + 2
    # a line that is not monotone is still planned per (batch element, head)
    calls.update(plans=0, table=0)
    patterndsl.compile("causal - slash(topk=2)", block_m=16, block_n=16)(q, k, v)
    assert calls["plans"] == 3 * 4 and calls["table"] == 0


def test_work_accounting():
    attn = patterndsl.compile("causal & (sink(2) | local(6) | vertical(topk=5) | slash(topk=3) "
                              "| blocks(topk=1, block=16))", block_m=16, block_n=16)
    q, k, v = inputs(n=75, nq=60, seed=4)
    attn(q, k, v)
    last = attn.last_work
    w = attn.work(q, k)
    mask = attn.mask(75, q=q, k=k)
    assert w.allowed_pairs == int(mask.sum())
    assert w.executed_pairs == last.executed_pairs >= w.allowed_pairs
    assert last.allowed_pairs is None and last.table_executed > 0 and last.static_executed > 0
    assert w.executed_pairs == w.static_executed + w.table_executed


# ---------------------------------------------------------------------------
# The generated kernels under Triton's interpreter (small: the interpreter is slow)
# ---------------------------------------------------------------------------

triton = pytest.importorskip("triton")


@pytest.mark.parametrize("text,n,nq,kw", [
    ("causal & (sink(2) | local(4) | vertical(topk=3) | slash(topk=2))", 40, 40,
     dict(kv_lens=torch.tensor([33]))),
    ("blocks(2, 7) | vertical(topk=2, by=norm)", 37, 20, {}),
    ("causal & (slash(topk=2) | blocks(topk=1, block=16))", 45, 1, {}),
    ("causal & local(20) & blocks(topk=3, block=16)", 64, 64, {}),
])
def test_interpret_backend_matches_dense(text, n, nq, kw):
    attn = patterndsl.compile(text, backend="interpret", block_m=16, block_n=16)
    check(attn, n, nq, B=1, Hq=2, Hkv=1, **kw)


# ---------------------------------------------------------------------------
# The dynamic examples
# ---------------------------------------------------------------------------

DYNAMIC_EXAMPLES = ["minference_vertical_slash.psp", "top2_norms.psp", "block_topk.psp",
                    "sink_local_vertical_slash.psp"]


@pytest.mark.parametrize("name", DYNAMIC_EXAMPLES)
def test_dynamic_examples_run(name):
    attn = patterndsl.compile((EXAMPLES / name).read_text(), block_m=32, block_n=32)
    assert attn.spec.is_dynamic
    # at this length some counts take every candidate; the selection still runs per call
    check(attn, 150, 150, B=1, Hq=2, Hkv=1, D=16)


def test_torch_backend_in_small_chunks(monkeypatch):
    # Many chunks of consecutive query tiles, each padded to its own widest tile.
    from patterndsl.backends import torch_backend
    monkeypatch.setattr(torch_backend, "CHUNK_BYTES", 1 << 15)
    attn = patterndsl.compile("causal & (local(3) | vertical(topk=6) | slash(topk=4) | "
                              "blocks(topk=1, block=16))", block_m=16, block_n=16)
    check(attn, 83, 83)
    q, k, _ = inputs(n=83, seed=7)
    assert attn.work(q, k).allowed_pairs == int(attn.mask(83, q=q, k=k).sum())


def test_block_topk_visits_clipped_by_the_hull():
    # Chosen key blocks outside a band's reach are never visited; every allowed pair still
    # is (the outputs match dense attention under the reference mask).
    from patterndsl.dynamic.tables import TablePart
    text = "causal & local(20) & blocks(topk=3, block=16)"
    attn = patterndsl.compile(text, block_m=16, block_n=16)
    q, k, _ = inputs(n=96, seed=5)
    w = attn.work(q, k)
    spec = patterndsl.parse(text)
    sp = split(spec.canonical_ir.rules[0].expr)
    tabs = build_tables(sp, select(spec, q, k), [0, 1, 2, 3], 2, 96, 96, 0, block_m=16,
                        block_n=16)
    (tp,) = tabs.parts
    off, W, first, b, nqb = tabs.blk_layout[tp.term]
    unclipped = TablePart(tp.predicate, tp.term, tp.kernel_predicate, 2, tp.block_m,
                          tp.block_n, tp.num_tiles, tabs.blk[:, off:off + nqb * W].contiguous(),
                          (torch.arange(nqb) * W).repeat_interleave(tp.sub_tiles).expand(8, -1)
                          .to(torch.int32), None, bsize=b, sub_tiles=tp.sub_tiles,
                          first_block=first)
    sel = select(spec, q, k)[tp.term]
    unclipped.hi = unclipped.lo + sel.count.reshape(8, nqb).repeat_interleave(tp.sub_tiles, 1) \
        .to(torch.int32)
    assert int(tp.executed_pairs(0, 96)) < int(unclipped.executed_pairs(0, 96))
    assert w.table_executed == int(tp.executed_pairs(0, 96))
    assert w.allowed_pairs == int(attn.mask(96, q=q, k=k).sum())
    check(attn, 96, 96)
    check(attn, 96, 40, seed=2)


@pytest.mark.parametrize("text", [
    "causal & (sink(2) | local(6) | vertical(topk=5) | slash(topk=3))",
    "local(5) & slash(topk=2) | causal & blocks(topk=2, block=24) | vertical(topk=2, by=norm)",
    "local(6) & vertical(topk=6) | prefix(20) & slash(topk=3) | causal & local(2)",
    "blocks(3, 7) - local(1) | rows([0:3])",
])
def test_torch_backend_decides_whole_tiles_exactly(text):
    """The torch backend's allowed slots (tile bounds, the predicate only where undecided)
    equal the part's predicate evaluated on every slot."""
    from patterndsl.backends.torch_backend import _table_allowed, _table_slots
    spec = patterndsl.parse(text)
    sp = split(spec.canonical_ir.rules[0].expr)
    for n, nq in ((70, 70), (70, 23)):
        q, k, _ = inputs(n=n, nq=nq, seed=11)
        tabs = build_tables(sp, select(spec, q, k), [0, 1, 2, 3], 2, nq, n, n - nq,
                            block_m=16, block_n=16)
        bh = torch.arange(8)
        for tp in tabs.parts:
            qp, kp, items = _table_slots(tp, n - nq, nq, n, with_items=True)
            want = (qp >= 0)[None, :, :, None] & (kp >= 0)[:, :, None, :]
            want &= dyn_predicate.evaluate(tp.kernel_predicate, qp.clamp(min=0)[None, :, :, None],
                                           kp.clamp(min=0)[:, :, None, :], bh.view(-1, 1, 1, 1),
                                           Context(n), tabs)
            assert torch.equal(_table_allowed(tp, tabs, Context(n), qp, kp, bh, items), want)


@pytest.mark.parametrize("seed", range(6))
def test_slash_windows_fast_path_equals_full_evaluation(seed):
    """The slash part's per-window evaluation (offset-only atoms read once per offset and
    spread to the slots) equals the element predicate on every slot, on random specs,
    sizes, tile shapes and chunks (static exclusions, earlier terms, offsets of queries)."""
    from patterndsl.backends.torch_backend import _table_allowed, _table_chunks, _table_slots
    import random
    rnd = random.Random(seed)
    extra = ["sink(%d)" % rnd.randint(1, 5), "local(%d)" % rnd.randint(0, 9),
             "vertical(topk=%d)" % rnd.randint(1, 6), "prefix(%d)" % rnd.randint(3, 30),
             "blocks(topk=1, block=%d)" % rnd.choice([8, 16, 24]), "local(%d, %d)" % (rnd.randint(0, 4), rnd.randint(0, 4))]
    terms = rnd.sample(extra, rnd.randint(1, 3))
    slash = "slash(topk=%d)" % rnd.randint(1, 9)
    terms.insert(rnd.randint(0, len(terms)), slash)
    body = " | ".join(terms)
    text = rnd.choice(["causal & (%s)", "(%s)", "local(%d) & (%%s)" % rnd.randint(3, 20),
                       "(%s) - sink(2)"]) % body
    spec = patterndsl.parse(text)
    sp = split(spec.canonical_ir.rules[0].expr)
    n = rnd.randint(40, 90)
    nq = rnd.choice([n, rnd.randint(1, n)])
    bm, bn = rnd.choice([(16, 16), (16, 8), (8, 16), (32, 16)])
    q, k, _ = inputs(n=n, nq=nq, seed=seed)
    tabs = build_tables(sp, select(spec, q, k), [0, 1, 2, 3], 2, nq, n, n - nq,
                        block_m=bm, block_n=bn)
    bh = torch.arange(8)
    seen = 0
    for tp in tabs.parts:
        if tp.mode != 1:
            continue
        for t0, t1 in _table_chunks(tp, 8 * bm * 4, rnd.choice([1, 4096, 1 << 20])):
            qp, kp, items = _table_slots(tp, n - nq, nq, n, t0, t1, with_items=True)
            want = (qp >= 0)[None, :, :, None] & (kp >= 0)[:, :, None, :]
            want &= dyn_predicate.evaluate(tp.kernel_predicate, qp.clamp(min=0)[None, :, :, None],
                                           kp.clamp(min=0)[:, :, None, :], bh.view(-1, 1, 1, 1),
                                           Context(n), tabs)
            got = _table_allowed(tp, tabs, Context(n), qp, kp, bh, items)
            assert torch.equal(got, want), text
            seen += 1
    assert seen > 0, text


@pytest.mark.parametrize("per_batch", [False, True])
def test_document_lines_take_the_table_path(monkeypatch, per_batch):
    """A monotone line with ``document`` runs its static part and table parts once per
    document layout (not one plan per batch element and head), matching dense float64."""
    calls = _count(monkeypatch)
    text = "document & causal & (local(3) | vertical(topk=4) | slash(topk=3) | blocks(topk=1, block=16))"
    attn = patterndsl.compile(text, block_m=16, block_n=16)
    n, nq = 67, 50
    q, k, v = (x.requires_grad_() for x in inputs(n=n, nq=nq, seed=9))
    bounds = [[0] * 20 + [1] * 30 + [2] * 17, [0] * 41 + [1] * 26]
    doc = torch.tensor(bounds if per_batch else bounds[0])
    out, lse = attn(q, k, v, doc_ids=doc, return_lse=True)
    layouts = 2 if per_batch else 1
    assert calls["table"] == 3 * layouts and calls["plans"] == layouts
    mask = attn.mask(n, q=q.detach(), k=k.detach(), doc_ids=doc)
    mask = mask if mask.dim() == 4 else mask.expand(2, *mask.shape[-3:])
    assert_matches_dense(out, lse, (q, k, v), mask, 16 ** -0.5, TOL)
    assert attn.work(q.detach(), k.detach(), doc_ids=doc).allowed_pairs == int(mask.sum())


def test_document_lines_on_the_kernels_take_the_table_path(monkeypatch):
    # The generated table kernels read document ids (commit 492cc71): one plan for the
    # document layout, not one per head, and still equal to dense float64.
    calls = _count(monkeypatch)
    attn = patterndsl.compile("document & causal & (local(2) | vertical(topk=2))",
                              backend="interpret", block_m=16, block_n=16)
    q, k, v = inputs(B=1, Hq=2, Hkv=1, n=40, seed=4)
    doc = torch.tensor([0] * 15 + [1] * 25)
    out = attn(q, k, v, doc_ids=doc)
    assert calls["plans"] == 1
    mask = attn.mask(40, q=q, k=k, doc_ids=doc)
    ref, _ = dense(q.double(), k.double(), v.double(), mask, 16 ** -0.5)
    assert rel(out, ref) < TOL
