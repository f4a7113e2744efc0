"""patterndsl.printer: IR -> spec text.

Hand-written expected strings pin the spelling (defaults left out, named arguments,
parentheses); the property tests check the contract ``lower(parse_tree(to_text(p))) == p``
on random valid programs, and that canonical programs print back as spec text too."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patterndsl.lower import lower
from patterndsl.parser import parse_tree
from patterndsl import ir
from patterndsl.passes import canonicalize
from patterndsl.printer import _decimal, to_text
from strategies import budgets, exprs, programs, retentions, selectors

A, B, C, D = ir.Causal(), ir.Sink(4), ir.Local(2, 2), ir.Document()
S = ir.Slice
I = lambda *items: ir.IndexSet(tuple(items))  # noqa: E731


def _reparse(text: str) -> ir.Program:
    return lower(parse_tree(text), text)


# ---------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("node, text", [
    (ir.All(), "all"),
    (ir.Nothing(), "none"),
    (ir.Causal(), "causal"),
    (ir.Document(), "document"),
    (ir.Local(3, 3), "local(3)"),
    (ir.Local(3, 0), "local(3, 0)"),
    (ir.Local(0, 7), "local(0, 7)"),
    (ir.Block(64), "block(64)"),
    (ir.Stride(8), "stride(8)"),
    (ir.Dilated(4, 2), "dilated(4, 2)"),
    (ir.Every(4), "every(4)"),
    (ir.Every(4, 0), "every(4)"),
    (ir.Every(4, 1), "every(4, 1)"),
    (ir.Sink(4), "sink(4)"),
    (ir.Prefix(128), "prefix(128)"),
    (ir.Random(3), "random(3)"),
    (ir.Random(3, block=64, seed=0, causal=False), "random(3)"),
    (ir.Random(3, block=32, seed=7, causal=True), "random(3, block=32, seed=7, causal=true)"),
    (ir.Random(3, seed=7), "random(3, seed=7)"),
    (ir.Random(0, causal=True), "random(0, causal=true)"),
    (ir.Random(2, block=16), "random(2, block=16)"),
    (ir.TopVertical(8), "vertical(topk=8)"),
    (ir.TopVertical(8, last=32), "vertical(topk=8, last=32)"),
    (ir.TopVertical(8, by="norm"), "vertical(topk=8, by=norm)"),
    (ir.TopVertical(8, by="lownorm"), "vertical(topk=8, by=lownorm)"),
    (ir.TopSlash(4), "slash(topk=4)"),
    (ir.TopSlash(4, last=16), "slash(topk=4, last=16)"),
    (ir.TopBlocks(2), "blocks(topk=2)"),
    (ir.TopBlocks(2, block=128), "blocks(topk=2, block=128)"),
])
def test_primitives(node, text):
    assert to_text(node) == text


@pytest.mark.parametrize("node, text", [
    (ir.Cols(I(0, 5, 9)), "cols([0, 5, 9])"),
    (ir.Rows(I(S(0, 64))), "rows([0:64])"),
    (ir.Global(I(S(-64, None))), "global([-64:])"),
    (ir.Cols(I(S(None, None, 128))), "cols([::128])"),
    (ir.Cols(I(S(1, 10, 3))), "cols([1:10:3])"),
    (ir.Cols(I(S(None, 10))), "cols([:10])"),
    (ir.Cols(I(S(None, None))), "cols([:])"),
    (ir.Cols(I(S(5, None, -1))), "cols([5::-1])"),
    (ir.Cols(I(S(0, 10, 1))), "cols([0:10:1])"),
    (ir.Global(I(0, S(100, 200), -1)), "global([0, 100:200, -1])"),
    (ir.Slash(I(S(0, 4), -8)), "slash([0:4, -8])"),
    (ir.Slash(I(S(-8, 8, 4))), "slash([-8:8:4])"),
    (ir.Cols(I()), "cols([])"),
])
def test_index_sets(node, text):
    assert to_text(node) == text


def test_index_set_and_slice_alone():
    assert to_text(I(0, S(-3, None), -1)) == "[0, -3:, -1]"
    assert to_text(S(None, None, 2)) == "::2"


# ---------------------------------------------------------------------------
# Operators and parentheses
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("node, text", [
    (ir.Union((A, B, C)), "causal | sink(4) | local(2)"),
    (ir.Union((ir.Union((A, B)), C)), "(causal | sink(4)) | local(2)"),
    (ir.Union((A, ir.Union((B, C)))), "causal | (sink(4) | local(2))"),
    (ir.Union((ir.Intersect((A, C)), B)), "causal & local(2) | sink(4)"),
    (ir.Union((ir.Difference(A, C), B)), "causal - local(2) | sink(4)"),
    (ir.Intersect((A, C, B)), "causal & local(2) & sink(4)"),
    (ir.Intersect((ir.Union((A, B)), C)), "(causal | sink(4)) & local(2)"),
    (ir.Intersect((ir.Intersect((A, B)), C)), "(causal & sink(4)) & local(2)"),
    (ir.Intersect((ir.Difference(ir.All(), A), C)), "all - causal & local(2)"),
    (ir.Intersect((C, ir.Difference(ir.All(), A))), "local(2) & all - causal"),
    (ir.Difference(ir.Difference(ir.All(), A), C), "all - causal - local(2)"),
    (ir.Difference(ir.All(), ir.Difference(A, C)), "all - (causal - local(2))"),
    (ir.Difference(ir.Union((A, B)), C), "(causal | sink(4)) - local(2)"),
    (ir.Difference(ir.Intersect((A, B)), C), "(causal & sink(4)) - local(2)"),
    (ir.Difference(A, ir.Union((B, C))), "causal - (sink(4) | local(2))"),
    (ir.Difference(A, ir.Intersect((B, C))), "causal - (sink(4) & local(2))"),
    (ir.Blockwise(64, ir.Union((ir.Local(1, 1), ir.Global(I(0, -1))))),
     "blockwise(64, local(1) | global([0, -1]))"),
    (ir.Intersect((ir.Blockwise(2, ir.Union((A, B))), D)), "blockwise(2, causal | sink(4)) & document"),
    (ir.Intersect((A, ir.Union((ir.TopVertical(1000), ir.TopSlash(6000))))),
     "causal & (vertical(topk=1000) | slash(topk=6000))"),
])
def test_operators(node, text):
    assert to_text(node) == text


# ---------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sel, text", [
    (ir.Selector(3, 4, 1), "3"),
    (ir.Selector(0, 8, 1), "0:8"),
    (ir.Selector(0, 8, 2), "0:8:2"),
    (ir.Selector(4, None, 1), "4:"),
    (ir.Selector(4, None, 3), "4::3"),
    (ir.Selector(3, 4, 2), "3:4:2"),
])
def test_selectors(sel, text):
    assert to_text(sel) == text


@pytest.mark.parametrize("node, text", [
    (ir.Retention((ir.KvAuto(),)), "auto"),
    (ir.Retention((ir.KvSink(4), ir.KvRecent(1024), ir.KvHeavy(256))),
     "sink(4) + recent(1024) + heavy(256)"),
    (ir.Retention((ir.KvSnap(8),)), "snap(8)"),
    (ir.Retention((ir.KvSnap(8, window=16, pool=5),)), "snap(8, window=16, pool=5)"),
    (ir.Retention((ir.KvSnap(8, pool=3),)), "snap(8, pool=3)"),
    (ir.Retention((ir.KvNorm(4),)), "norm(4)"),
    (ir.Retention((ir.KvNorm(4, low=True),)), "norm(4, low=true)"),
    (ir.Uniform(), "uniform"),
    (ir.Pyramid(), "pyramid(beta=20.0)"),
    (ir.Pyramid(2.5), "pyramid(beta=2.5)"),
    (ir.Adaptive(), "adaptive(floor=0.2)"),
    (ir.Adaptive(1e-05), "adaptive(floor=0.00001)"),
    (ir.Pyramid(1e16), "pyramid(beta=10000000000000000.0)"),
])
def test_retention_and_budgets(node, text):
    assert to_text(node) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_decimals_read_back_exactly(x):
    text = _decimal(x)
    assert "e" not in text.lower() and "." in text
    assert float(text) == x


def test_program_forms():
    one = ir.Program((ir.Rule(ir.Intersect((A, C))),))
    assert to_text(one) == "causal & local(2)"
    full = ir.Program(
        (ir.Rule(A), ir.Rule(C, heads=ir.Selector(0, 4)), ir.Rule(B, layers=ir.Selector(2, 3)),
         ir.Rule(D, layers=ir.Selector(0, None, 2), heads=ir.Selector(5, 6))),
        kv=ir.Retention((ir.KvSink(4), ir.KvRecent(64))), budget=ir.Pyramid(10.0))
    assert to_text(full) == ("pattern = causal\n"
                             "heads 0:4 = local(2)\n"
                             "layers 2 = sink(4)\n"
                             "layers 0::2 heads 5 = document\n"
                             "kv = sink(4) + recent(64)\n"
                             "budget = pyramid(beta=10.0)")
    # A lone default line still needs `pattern =` once anything else is in the program.
    assert to_text(ir.Program((ir.Rule(A),), kv=ir.Retention((ir.KvAuto(),)))) == \
        "pattern = causal\nkv = auto"
    assert to_text(ir.Program((ir.Rule(A),), budget=ir.Uniform())) == \
        "pattern = causal\nbudget = uniform"
    assert to_text(ir.Program((ir.Rule(A, heads=ir.Selector(1, 2)),))) == "heads 1 = causal"


def test_unknown_node_is_a_type_error():
    with pytest.raises(TypeError):
        to_text(object())


# ---------------------------------------------------------------------------
# Text that the grammar accepts, and the round-trip contract
# ---------------------------------------------------------------------------

_settings = settings(max_examples=80, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_settings
@given(programs())
def test_round_trip_programs(p):
    from patterndsl.parser import parse_tree
    text = to_text(p)
    parse_tree(text)  # the grammar accepts it, whatever lowering makes of it
    assert _reparse(text) == p
    c = canonicalize(p)
    assert _reparse(to_text(c)) == c


@_settings
@given(exprs(max_leaves=14))
def test_round_trip_exprs(e):
    assert _reparse(to_text(e)) == ir.Program((ir.Rule(e),))


@settings(max_examples=60, deadline=None)
@given(st.one_of(selectors.map(lambda s: ir.Rule(A, heads=s)),
                 selectors.map(lambda s: ir.Rule(A, layers=s))),
       st.one_of(st.none(), retentions()), st.one_of(st.none(), budgets))
def test_round_trip_statements(rule, kv, budget):
    p = ir.Program((rule,), kv=kv, budget=budget)
    assert _reparse(to_text(p)) == p
