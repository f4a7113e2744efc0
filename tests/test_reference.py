"""The reference mask against hand-written tables, brute force, and LANGUAGE.md's rules."""
import math
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from patterndsl import ir
from patterndsl.errors import PsparseUsageError
from patterndsl.reference import expr_mask, index_table, offset_values, program_mask
from test_randomblocks import slow_R


def M(text):
    """A bool table from rows of 0/1 digits."""
    return torch.tensor([[c == "1" for c in row] for row in text.split()], dtype=torch.bool)


def I(*items):
    return ir.IndexSet(tuple(items))


S = ir.Slice


def check(expr, table, n=None, **kw):
    want = M(table)
    got = expr_mask(expr, n if n is not None else want.shape[1], **kw)
    assert got.dtype == torch.bool
    if "q" in kw:
        assert got.shape[:2] == (1, 1)
        got = got[0, 0]
    assert got.tolist() == want.tolist(), "\n" + "\n".join(
        "".join("1" if v else "0" for v in row) for row in got.reshape(-1, got.shape[-1]).tolist())


# ---------------------------------------------------------------------------
# Primitives, one hand-written table each
# ---------------------------------------------------------------------------

def test_all_none():
    check(ir.All(), "111 111 111")
    check(ir.Nothing(), "000 000 000")


def test_causal():
    check(ir.Causal(), """
        100000
        110000
        111000
        111100
        111110
        111111""")


def test_local_symmetric():
    check(ir.Local(1, 1), """
        110000
        111000
        011100
        001110
        000111
        000011""")


def test_local_asymmetric():
    check(ir.Local(2, 0), """
        100000
        110000
        111000
        011100
        001110
        000111""")
    check(ir.Local(0, 1), """
        110000
        011000
        001100
        000110
        000011
        000001""")


def test_block_with_partial_last_block():
    check(ir.Block(3), """
        1110000
        1110000
        1110000
        0001110
        0001110
        0001110
        0000001""")


def test_stride():
    check(ir.Stride(3), """
        1001001
        0100100
        0010010
        1001001
        0100100
        0010010
        1001001""")


def test_dilated():
    check(ir.Dilated(1, 2), """
        1010000
        0101000
        1010100
        0101010
        0010101
        0001010
        0000101""")


def test_every():
    check(ir.Every(3), "1001001 " * 3, nq=3)
    check(ir.Every(3, 1), "0100100 " * 3, nq=3)
    check(ir.Every(10, 4), "0000100 " * 2, nq=2)


def test_rows_and_cols():
    check(ir.Rows(I(0, -1)), """
        111111
        000000
        000000
        000000
        000000
        111111""")
    check(ir.Rows(I(S(1, 3))), "000000 111111 111111 000000 000000 000000")
    check(ir.Cols(I(S(None, None, 2))), "101010 " * 6)
    check(ir.Cols(I(S(-2, None))), "000011 " * 6)
    check(ir.Cols(I(S(None, None, -2))), "010101 " * 6)
    check(ir.Cols(I(7, -7, 2)), "001000 " * 6)


def test_python_slice_semantics_against_n():
    # [-64:10] is empty when n = 100 but everything when n = 6.
    assert not expr_mask(ir.Cols(I(S(-64, 10))), 100).any()
    check(ir.Cols(I(S(-64, 10))), "111111 " * 6)
    check(ir.Cols(I(S(4, 1, -1))), "001110 " * 6)
    check(ir.Cols(I(S(1, 4), 3, -1)), "011101 " * 6)


def test_global():
    check(ir.Global(I(1)), """
        01000
        11111
        01000
        01000
        01000""")


def test_sink_and_prefix():
    check(ir.Sink(2), "11000 " * 5)
    check(ir.Sink(0), "00000 " * 5)
    check(ir.Prefix(3), "11100 11100 11100 00000 00000")


def test_slash_literal_offsets():
    check(ir.Slash(I(S(0, 2), -3)), """
        100100
        110010
        011001
        001100
        000110
        000011""")
    check(ir.Slash(I(S(5, 1, -2))), """
        000000
        000000
        000000
        100000
        010000
        101000""")
    check(ir.Slash(I(-2)), "001000 000100 000010 000001 000000 000000")
    check(ir.Slash(I(100, -100, S(-1000, -6), S(6, 1000))), "000000 " * 6)


def test_document_1d_and_2d():
    check(ir.Document(), """
        110000
        110000
        001110
        001110
        001110
        000001""", doc_ids=torch.tensor([0, 0, 1, 1, 1, 2]))
    docs = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    got = expr_mask(ir.Document(), 6, doc_ids=docs)
    assert got.shape == (2, 6, 6)
    assert got[0].tolist() == M("110000 110000 001110 001110 001110 000001").tolist()
    assert got[1].tolist() == M("100000 011111 011111 011111 011111 011111").tolist()


def test_random_known_answers():
    got = expr_mask(ir.Random(3, 1, 0, False), 8)
    assert got[:4].tolist() == M("01010001 10010001 10100100 10001100").tolist()
    got = expr_mask(ir.Random(3, 1, 0, True), 8)
    assert got[:4].tolist() == M("10000000 11000000 11100000 11010000").tolist()
    check(ir.Random(2, 1, 42, False), """
        10010
        01001
        00011
        01100
        01010""")


def test_random_blocks_expand_to_positions():
    check(ir.Random(2, 2, 42, False), """
        1100001100
        1100001100
        0011000011
        0011000011
        0000001111
        0000001111
        0011110000
        0011110000
        0011001100
        0011001100""")
    # n = 9: the same five blocks, the last one holding position 8 only.
    check(ir.Random(2, 2, 42, False), """
        110000110
        110000110
        001100001
        001100001
        000000111
        000000111
        001111000
        001111000
        001100110""")


def test_blockwise_bigbird():
    bigbird = ir.Blockwise(2, ir.Union((ir.Local(1, 1), ir.Global(I(0, -1)))))
    check(bigbird, "11111111 " * 8)
    check(bigbird, """
        111111111111
        111111111111
        111111000011
        111111000011
        111111110011
        111111110011
        110011111111
        110011111111
        110000111111
        110000111111
        111111111111
        111111111111""")


def test_blockwise_resolves_against_block_count():
    check(ir.Blockwise(2, ir.Causal()), "11000 11000 11110 11110 11111")
    check(ir.Blockwise(2, ir.Global(I(-1))), "00001 00001 00001 00001 11111")
    check(ir.Blockwise(2, ir.Causal()), "11110 11111", n=5, nq=2)
    check(ir.Blockwise(2, ir.Blockwise(2, ir.Causal())), "11110000 " * 4 + "11111111 " * 4)
    # Ten positions in blocks of two are five blocks: random(2, seed=42)'s known answer at n = 5.
    check(ir.Blockwise(2, ir.Random(2, 1, 42, False)), """
        1100001100
        1100001100
        0011000011
        0011000011
        0000001111
        0000001111
        0011110000
        0011110000
        0011001100
        0011001100""")


def _rows_of(n, nq, q_offset):
    start = n - nq if q_offset is None else q_offset
    return range(start, start + nq)


@pytest.mark.parametrize("n, nq, q_offset, block", [
    (37, None, None, 4), (37, 5, None, 4), (37, 6, 9, 4), (37, 1, 0, 4), (37, 0, None, 4),
    (40, 11, 13, 8), (5, None, None, 8), (5, 2, 1, 64), (64, 7, None, 1), (23, 9, 3, 3)])
def test_block_terms_at_every_row_offset(n, nq, q_offset, block):
    """random and blockwise, with rows starting mid-block and ragged last blocks, against the
    definitions evaluated pair by pair: R(q // b) from the scalar generator, and blockwise's
    pattern on block numbers (written as loops over blocks)."""
    rows = _rows_of(n, n if nq is None else nq, q_offset)
    nb = -(-n // block)
    for causal in (False, True):
        want = torch.tensor([[k // block in slow_R(2, 7, causal, nb, q // block) for k in range(n)]
                             for q in rows], dtype=torch.bool).view(len(rows), n)
        got = expr_mask(ir.Random(2, block, 7, causal), n, nq=nq, q_offset=q_offset)
        assert got.shape == (len(rows), n) and torch.equal(got, want), (causal,)

    def inner(i, j):  # local(1) | global([0, -1]) | (causal & stride(3)) on block numbers
        return abs(i - j) <= 1 or i in (0, nb - 1) or j in (0, nb - 1) or (j <= i and (i - j) % 3 == 0)

    expr = ir.Blockwise(block, ir.Union((ir.Local(1, 1), ir.Global(I(0, -1)),
                                         ir.Intersect((ir.Causal(), ir.Stride(3))))))
    want = torch.tensor([[inner(q // block, k // block) for k in range(n)] for q in rows],
                        dtype=torch.bool).view(len(rows), n)
    assert torch.equal(expr_mask(expr, n, nq=nq, q_offset=q_offset), want)
    # Terms that depend on one side only keep working when spread (rows(), cols()).
    for e, f in ((ir.Blockwise(block, ir.Rows(I(-1))), lambda i, j: i == nb - 1),
                 (ir.Blockwise(block, ir.Cols(I(S(None, None, 2)))), lambda i, j: j % 2 == 0)):
        want = torch.tensor([[f(q // block, k // block) for k in range(n)] for q in rows],
                            dtype=torch.bool).view(len(rows), n)
        assert torch.equal(expr_mask(e, n, nq=nq, q_offset=q_offset), want)


# ---------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------

def test_operators():
    cl = ir.Intersect((ir.Causal(), ir.Local(1, 1)))
    check(cl, "1000 1100 0110 0011")
    check(ir.Difference(ir.All(), cl), "0111 0011 1001 1100")
    # (all - causal) - local(0, 1): difference is left-associative.
    check(ir.Difference(ir.Difference(ir.All(), ir.Causal()), ir.Local(0, 1)), "0011 0001 0000 0000")
    check(ir.Union((cl, ir.Sink(1), ir.Cols(I(-1)))), "1001 1101 1111 1011")
    check(ir.Intersect((ir.Causal(), ir.Union((ir.Local(0, 0), ir.Every(2))))), "1000 1100 1010 1011")


# ---------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------

def test_bottom_right_alignment():
    check(ir.Causal(), "111100 111110 111111", n=6, nq=3)
    check(ir.Global(I(-1)), "11111", n=5, nq=1)


def test_explicit_query_offset():
    check(ir.Causal(), "110000 111000 111100", n=6, nq=3, q_offset=1)
    check(ir.Global(I(-1)), "00001 00001", n=5, nq=2, q_offset=0)
    check(ir.Slash(I(1)), "100000 010000", n=6, nq=2, q_offset=1)


@pytest.mark.parametrize("nq,q_offset", [(3, 4), (3, -1), (7, None), (-1, None)])
def test_bad_alignment(nq, q_offset):
    with pytest.raises(PsparseUsageError):
        expr_mask(ir.Causal(), 6, nq=nq, q_offset=q_offset)


def test_integer_arguments():
    assert expr_mask(ir.Causal(), torch.tensor(4), nq=torch.tensor(2)).shape == (2, 4)
    for bad in [dict(n=4.0), dict(n=4, nq="2"), dict(n=4, num_heads=0), dict(n=4, layer=-1)]:
        with pytest.raises(PsparseUsageError):
            expr_mask(ir.Causal(), **bad)


def test_empty_query_block():
    assert expr_mask(ir.Causal(), 6, nq=0).shape == (0, 6)


# ---------------------------------------------------------------------------
# Index and offset sets directly
# ---------------------------------------------------------------------------

@given(st.integers(0, 20), st.lists(st.one_of(
    st.integers(-25, 25),
    st.tuples(st.one_of(st.none(), st.integers(-25, 25)), st.one_of(st.none(), st.integers(-25, 25)),
              st.one_of(st.none(), st.integers(-4, 4).filter(lambda s: s != 0)))), max_size=4))
@settings(max_examples=150, deadline=None)
def test_index_table_is_python_indexing(n, items):
    want = set()
    built = []
    for it in items:
        if isinstance(it, tuple):
            built.append(S(*it))
            want |= set(range(n)[slice(*it)])
        else:
            built.append(it)
            if -n <= it < n:
                want.add(it % n)
    got = index_table(I(*built), n)
    assert set(got.nonzero().flatten().tolist()) == want


@given(st.integers(-30, 30), st.integers(-30, 30), st.integers(-5, 5).filter(lambda s: s != 0),
       st.integers(-12, 0), st.integers(0, 12))
@settings(max_examples=150, deadline=None)
def test_offset_values_clip(a, b, c, lo, hi):
    got = set()
    for r in offset_values(I(S(a, b, c)), lo, hi):
        got |= set(r)
    assert got == {o for o in range(a, b, c) if lo <= o <= hi}


# ---------------------------------------------------------------------------
# Static expressions against a per-pair brute force
# ---------------------------------------------------------------------------

def slow_in(index, n, x):
    for it in index.items:
        if isinstance(it, ir.Slice):
            if x in range(n)[slice(it.start, it.stop, it.step)]:
                return True
        elif (it + n if it < 0 else it) == x:
            return True
    return False


def slow_allowed(e, q, k, n, doc=None):
    if isinstance(e, ir.All):
        return True
    if isinstance(e, ir.Nothing):
        return False
    if isinstance(e, ir.Causal):
        return k <= q
    if isinstance(e, ir.Local):
        return q - e.left <= k <= q + e.right
    if isinstance(e, ir.Block):
        return q // e.size == k // e.size
    if isinstance(e, ir.Stride):
        return (q - k) % e.step == 0
    if isinstance(e, ir.Dilated):
        return abs(q - k) <= e.width * e.dilation and (q - k) % e.dilation == 0
    if isinstance(e, ir.Every):
        return k % e.step == e.offset
    if isinstance(e, ir.Rows):
        return slow_in(e.index, n, q)
    if isinstance(e, ir.Cols):
        return slow_in(e.index, n, k)
    if isinstance(e, ir.Global):
        return slow_in(e.index, n, q) or slow_in(e.index, n, k)
    if isinstance(e, ir.Sink):
        return k < e.count
    if isinstance(e, ir.Prefix):
        return q < e.length and k < e.length
    if isinstance(e, ir.Slash):
        return any((q - k) in range(it.start, it.stop, it.step or 1) if isinstance(it, ir.Slice)
                   else q - k == it for it in e.offsets.items)
    if isinstance(e, ir.Document):
        return doc[q] == doc[k]
    if isinstance(e, ir.Random):
        nb = -(-n // e.block)
        return k // e.block in slow_R(e.count, e.seed, e.causal, nb, q // e.block)
    if isinstance(e, ir.Blockwise):
        return slow_allowed(e.expr, q // e.block, k // e.block, -(-n // e.block))
    if isinstance(e, ir.Union):
        return any(slow_allowed(t, q, k, n, doc) for t in e.terms)
    if isinstance(e, ir.Intersect):
        return all(slow_allowed(t, q, k, n, doc) for t in e.terms)
    if isinstance(e, ir.Difference):
        return slow_allowed(e.left, q, k, n, doc) and not slow_allowed(e.right, q, k, n, doc)
    raise TypeError(e)


small = st.integers(0, 6)
pos = st.integers(1, 5)
index_sets = st.lists(st.one_of(st.integers(-9, 9), st.builds(
    S, st.one_of(st.none(), st.integers(-9, 9)), st.one_of(st.none(), st.integers(-9, 9)),
    st.one_of(st.none(), st.sampled_from([1, 2, 3, -1, -2])))), min_size=1, max_size=3).map(lambda x: I(*x))
offset_sets = st.lists(st.one_of(st.integers(-9, 9), st.builds(
    S, st.integers(-9, 9), st.integers(-9, 9), st.sampled_from([None, 1, 2, -1, -3]))),
    min_size=1, max_size=3).map(lambda x: I(*x))
leaves = st.one_of(
    st.just(ir.All()), st.just(ir.Nothing()), st.just(ir.Causal()), st.just(ir.Document()),
    st.builds(ir.Local, small, small), st.builds(ir.Block, pos), st.builds(ir.Stride, pos),
    st.builds(ir.Dilated, small, pos),
    pos.flatmap(lambda s: st.builds(ir.Every, st.just(s), st.integers(0, s - 1))),
    st.builds(ir.Rows, index_sets), st.builds(ir.Cols, index_sets), st.builds(ir.Global, index_sets),
    st.builds(ir.Sink, small), st.builds(ir.Prefix, small), st.builds(ir.Slash, offset_sets),
    st.builds(ir.Random, st.integers(0, 4), pos, st.integers(0, 2**32 - 1), st.booleans()),
)


def no_document(e):
    return not e.needs_doc_ids


def exprs():
    return st.recursive(leaves, lambda sub: st.one_of(
        st.builds(lambda t: ir.Union(tuple(t)), st.lists(sub, min_size=2, max_size=3)),
        st.builds(lambda t: ir.Intersect(tuple(t)), st.lists(sub, min_size=2, max_size=3)),
        st.builds(ir.Difference, sub, sub),
        st.builds(ir.Blockwise, pos, sub.filter(no_document)),
    ), max_leaves=6)


@given(exprs(), st.integers(1, 11), st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_static_expressions_match_brute_force(e, n, data):
    nq = data.draw(st.integers(0, n))
    q_offset = data.draw(st.one_of(st.none(), st.integers(0, n - nq)))
    doc = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    got = expr_mask(e, n, nq=nq, q_offset=q_offset, doc_ids=torch.tensor(doc))
    start = n - nq if q_offset is None else q_offset
    want = [[slow_allowed(e, start + i, k, n, doc) for k in range(n)] for i in range(nq)]
    assert got.tolist() == want


# ---------------------------------------------------------------------------
# Programs: heads, layers, shapes, errors
# ---------------------------------------------------------------------------

def prog(*rules, budget=None):
    return ir.Program(tuple(rules), budget=budget)


def test_heads_lines():
    p = prog(ir.Rule(ir.Causal(), heads=ir.Selector(0, 2)), ir.Rule(ir.Local(1, 1), heads=ir.Selector(2, 4)))
    got = program_mask(p, 4, num_heads=4)
    assert got.shape == (4, 4, 4)
    for h in (0, 1):
        assert got[h].tolist() == M("1000 1100 1110 1111").tolist()
    for h in (2, 3):
        assert got[h].tolist() == M("1100 1110 0111 0011").tolist()
    with pytest.raises(PsparseUsageError, match="num_heads"):
        program_mask(p, 4)
    with pytest.raises(PsparseUsageError, match="head 4"):
        program_mask(p, 4, num_heads=5)


def test_interleaved_heads_and_default():
    p = prog(ir.Rule(ir.All()), ir.Rule(ir.Nothing(), heads=ir.Selector(1, None, 2)))
    got = program_mask(p, 3, num_heads=4)
    assert [bool(got[h].any()) for h in range(4)] == [True, False, True, False]
    assert got[0].all() and got[2].all()


def test_layers_lines():
    p = prog(ir.Rule(ir.Causal()), ir.Rule(ir.All(), layers=ir.Selector(0, 1)),
             ir.Rule(ir.Nothing(), layers=ir.Selector(0, 1), heads=ir.Selector(1, 2)))
    assert program_mask(p, 3, layer=0, num_heads=2)[0].all()
    assert not program_mask(p, 3, layer=0, num_heads=2)[1].any()
    assert program_mask(p, 3, layer=1, num_heads=2)[1].tolist() == M("100 110 111").tolist()
    assert program_mask(p, 3, num_heads=2)[1].tolist() == M("100 110 111").tolist()
    only_layers = prog(ir.Rule(ir.All(), layers=ir.Selector(0, 2)))
    with pytest.raises(PsparseUsageError, match="layer"):
        program_mask(only_layers, 3)
    with pytest.raises(PsparseUsageError, match="layer 2"):
        program_mask(only_layers, 3, layer=2)


def test_shapes():
    e = ir.Causal()
    assert expr_mask(e, 5).shape == (5, 5)
    assert expr_mask(e, 5, nq=2, num_heads=3).shape == (3, 2, 5)
    assert expr_mask(e, 5, doc_ids=torch.zeros(5)).shape == (5, 5)
    assert expr_mask(e, 5, doc_ids=torch.zeros(2, 5)).shape == (2, 5, 5)
    assert expr_mask(e, 5, doc_ids=torch.zeros(2, 5), num_heads=3).shape == (2, 3, 5, 5)
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8)
    assert expr_mask(e, 5, q=q, k=k).shape == (2, 4, 3, 5)


def test_document_errors():
    with pytest.raises(PsparseUsageError, match="pass doc_ids"):
        expr_mask(ir.Union((ir.Causal(), ir.Document())), 4)
    with pytest.raises(PsparseUsageError, match="doc_ids"):
        expr_mask(ir.Document(), 4, doc_ids=torch.zeros(5))
    with pytest.raises(PsparseUsageError, match="doc_ids"):
        expr_mask(ir.Document(), 4, doc_ids=torch.zeros(1, 2, 4))
    with pytest.raises(PsparseUsageError, match="batch"):
        expr_mask(ir.Document(), 4, doc_ids=torch.zeros(3, 4),
                  q=torch.randn(2, 1, 4, 2), k=torch.randn(2, 1, 4, 2))


def test_document_with_qk_batch():
    docs = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    got = expr_mask(ir.Document(), 4, doc_ids=docs, q=torch.randn(2, 2, 2, 3), k=torch.randn(2, 1, 4, 3))
    assert got.shape == (2, 2, 2, 4)
    assert got[0, 1].tolist() == M("0011 0011").tolist()
    assert got[1, 0].tolist() == M("0111 0111").tolist()


def test_dynamic_needs_qk():
    with pytest.raises(PsparseUsageError, match="pass q and k"):
        expr_mask(ir.Intersect((ir.Causal(), ir.TopVertical(3))), 8)
    with pytest.raises(PsparseUsageError):
        expr_mask(ir.Causal(), 8, q=torch.randn(1, 1, 8, 4))


@pytest.mark.parametrize("q_shape,k_shape,kw", [
    ((1, 3, 4, 2), (1, 2, 4, 2), {}),        # 3 query heads over 2 KV heads
    ((1, 2, 4, 2), (1, 2, 5, 2), {}),        # k length is not n
    ((1, 2, 4, 2), (2, 2, 4, 2), {}),        # batch differs
    ((1, 2, 4, 2), (1, 2, 4, 3), {}),        # head_dim differs
    ((1, 2, 4, 2), (1, 2, 4, 2), {"num_heads": 3}),
    ((1, 2, 3, 2), (1, 2, 4, 2), {"nq": 2}),
    ((2, 4, 2), (1, 2, 4, 2), {}),
])
def test_bad_qk(q_shape, k_shape, kw):
    with pytest.raises(PsparseUsageError):
        expr_mask(ir.TopVertical(1), 4, q=torch.randn(q_shape), k=torch.randn(k_shape), **kw)


def test_blockwise_rejects_document_and_dynamic():
    with pytest.raises(PsparseUsageError, match="blockwise"):
        expr_mask(ir.Blockwise(2, ir.Document()), 4, doc_ids=torch.zeros(4))
    with pytest.raises(PsparseUsageError, match="blockwise"):
        expr_mask(ir.Blockwise(2, ir.TopVertical(1)), 4, q=torch.randn(1, 1, 4, 2), k=torch.randn(1, 1, 4, 2))


def test_huge_arguments_stay_exact():
    big = 10**30
    check(ir.Local(big, 0), "100 110 111")
    check(ir.Stride(big), "100 010 001")
    check(ir.Dilated(big, big), "100 010 001")
    check(ir.Every(big, 1), "010 010 010")
    check(ir.Block(big), "111 111 111")
    check(ir.Sink(big), "111 111 111")
    check(ir.Prefix(big), "111 111 111")
    check(ir.Random(big, big, 5, True), "111 111 111")
    check(ir.Blockwise(big, ir.Causal()), "111 111 111")
    check(ir.Slash(I(S(-big, big, 2))), "101 010 101")


# ---------------------------------------------------------------------------
# Dynamic terms: answers known by construction
# ---------------------------------------------------------------------------

def e(i, d, scale=1.0):
    v = torch.zeros(d)
    v[i] = scale
    return v


def test_vertical_attention_known():
    # Every query points along e0; key 2 matches strongly, key 4 half as much, the rest not.
    n, d = 6, 4
    q = torch.stack([e(0, d, 10.0)] * n).view(1, 1, n, d)
    k = torch.zeros(1, 1, n, d)
    k[0, 0, 2] = e(0, d, 10.0)
    k[0, 0, 4] = e(0, d, 5.0)
    vert = ir.TopVertical(2, 2)
    check(vert, "001010 " * 6, q=q, k=k)
    check(ir.Intersect((ir.Causal(), vert)), "000000 000000 001000 001000 001010 001010", q=q, k=k)
    check(ir.TopVertical(1, 2), "001000 " * 6, q=q, k=k)
    # Third place: keys 0, 1, 3 tie on both rows; the smaller position wins.
    check(ir.TopVertical(3, 2), "101010 " * 6, q=q, k=k)
    check(ir.TopVertical(100, 2), "111111 " * 6, q=q, k=k)


def test_vertical_norm_known():
    n, d = 6, 3
    norms = [1.0, 5.0, 3.0, 5.0, 0.0, 2.0]
    k = torch.stack([e(1, d, v) for v in norms]).view(1, 1, n, d)
    q = torch.randn(1, 1, n, d)
    check(ir.TopVertical(2, by="norm"), "010100 " * 6, q=q, k=k)
    check(ir.TopVertical(1, by="norm"), "010000 " * 6, q=q, k=k)
    check(ir.TopVertical(3, by="norm"), "011100 " * 6, q=q, k=k)
    check(ir.TopVertical(2, by="lownorm"), "100010 " * 6, q=q, k=k)
    same = torch.ones(1, 1, n, d)
    check(ir.TopVertical(2, by="norm"), "110000 " * 6, q=q, k=same)
    check(ir.TopVertical(2, by="lownorm"), "110000 " * 6, q=q, k=same)


def diagonal_qk(n, lag, strength=20.0):
    """Row i's query matches key i - lag only (rows below lag match nothing)."""
    q = torch.zeros(1, 1, n, n)
    k = torch.eye(n).view(1, 1, n, n)
    for i in range(lag, n):
        q[0, 0, i, i - lag] = strength
    return q, k


def test_slash_known():
    q, k = diagonal_qk(6, 2)
    # Offsets: 2 gets ~4 (rows 2..5), 0 gets ~1.5 (rows 0, 1), 1 gets ~0.5 (row 1).
    check(ir.TopSlash(1, 6), "000000 000000 100000 010000 001000 000100", q=q, k=k, scale=1.0)
    check(ir.TopSlash(2, 6), "100000 010000 101000 010100 001010 000101", q=q, k=k, scale=1.0)
    check(ir.TopSlash(3, 6), "100000 110000 111000 011100 001110 000111", q=q, k=k, scale=1.0)
    # Only the last two rows vote: offset 2, then the tie among 0, 1, 3, 4 goes to 0.
    check(ir.TopSlash(2, 2), "100000 010000 101000 010100 001010 000101", q=q, k=k, scale=1.0)


def test_slash_with_bottom_right_rows():
    q, k = diagonal_qk(6, 3)
    # Only rows 3..5 are in the call: offset 3 wins; rows sit at positions 3, 4, 5.
    check(ir.TopSlash(1, 64), "100000 010000 001000", n=6, q=q[:, :, 3:], k=k, scale=1.0)


def block_qk(targets, n, b, d=4, rows=None):
    """Queries in query block i point at key block targets[i]; key block j is e_j."""
    k = torch.stack([e(j // b, d) for j in range(n)]).view(1, 1, n, d)
    rows = range(n) if rows is None else rows
    q = torch.stack([e(targets[p // b], d) for p in rows]).view(1, 1, len(rows), d)
    return q, k


def test_blocks_known():
    q, k = block_qk([0, 1, 0, 2], 8, 2)
    check(ir.TopBlocks(1, 2), """
        11000000
        11000000
        00110000
        00110000
        11000000
        11000000
        00001100
        00001100""", q=q, k=k)
    # Second place ties at 0 among the remaining blocks j <= i: the smaller block wins.
    check(ir.TopBlocks(2, 2), """
        11000000
        11000000
        11110000
        11110000
        11110000
        11110000
        11001100
        11001100""", q=q, k=k)
    check(ir.TopBlocks(9, 2), "11000000 11000000 11110000 11110000 11111100 11111100 " + "11111111 " * 2,
          q=q, k=k)


def test_blocks_means_over_present_rows():
    n, b, d = 8, 2, 4
    _, k = block_qk([0] * 4, n, b)
    # Rows at positions 5, 6, 7: block 2 holds only row 5 (points at block 1); block 3's
    # mean is 1.5 e0 + 0.5 e3, so block 0 beats block 3.
    q = torch.stack([e(1, d), e(0, d, 3.0), e(3, d, 1.0)]).view(1, 1, 3, d)
    check(ir.TopBlocks(1, 2), "00110000 11000000 11000000", n=8, q=q, k=k)
    # A partial last key block still averages the keys it has.
    q7, k7 = block_qk([0, 1, 2, 3], 7, 2)
    check(ir.TopBlocks(1, 2), "1100000 1100000 0011000 0011000 0000110 0000110 0000001", q=q7, k=k7)


def test_gqa_head_mapping():
    n, d = 5, 2
    q = torch.ones(1, 4, n, d)
    k = torch.zeros(1, 2, n, d)
    k[0, 0, 1] = 30.0
    k[0, 1, 3] = 30.0
    got = expr_mask(ir.TopVertical(1, 64), n, q=q, k=k)
    for h, want in [(0, "01000"), (1, "01000"), (2, "00010"), (3, "00010")]:
        assert got[0, h].tolist() == M(" ".join([want] * n)).tolist()


# ---------------------------------------------------------------------------
# Dynamic terms against a per-row brute force
# ---------------------------------------------------------------------------

def slow_pick(scores, count, candidates):
    order = sorted(candidates, key=lambda c: (-scores[c], c))
    return set(order[:count])


def margin_ok(scores, count, candidates):
    """Whether the count-th and next scores are far enough apart for float32 to agree."""
    vals = sorted((scores[c] for c in candidates), reverse=True)
    if count <= 0 or count >= len(vals):
        return True
    return vals[count - 1] - vals[count] > 1e-4 or vals[count - 1] == vals[count] == 0


def slow_dynamic_sets(qh, kh, positions, n, scale, term):
    """For one (batch, head): the chosen set of keys/offsets/blocks, in float64."""
    qh, kh = qh.double(), kh.double()
    if isinstance(term, ir.TopBlocks):
        b = term.block
        nb = -(-n // b)
        kmeans = [kh[j * b:min(n, (j + 1) * b)].mean(0) for j in range(nb)]
        out = {}
        for i in sorted({p // b for p in positions}):
            qmean = qh[[r for r, p in enumerate(positions) if p // b == i]].mean(0)
            scores = [float(qmean @ km) for km in kmeans]
            cands = list(range(i + 1))
            if not margin_ok(scores, term.topk, cands):
                return None
            out[i] = slow_pick(scores, term.topk, cands)
        return out
    if getattr(term, "by", "attn") in ("norm", "lownorm"):
        norms = [math.sqrt(float(kh[j] @ kh[j])) for j in range(n)]
        scores = norms if term.by == "norm" else [-v for v in norms]
        return slow_pick(scores, term.topk, range(n)) if margin_ok(scores, term.topk, range(n)) else None
    rows = list(range(len(positions)))[-term.last:] if term.last else []
    col = [0.0] * n
    diag = [0.0] * n
    for r in rows:
        p = positions[r]
        logits = [scale * float(qh[r] @ kh[j]) for j in range(p + 1)]
        top = max(logits)
        ex = [math.exp(v - top) for v in logits]
        z = sum(ex)
        for j in range(p + 1):
            col[j] += ex[j] / z
            diag[p - j] += ex[j] / z
    scores = col if isinstance(term, ir.TopVertical) else diag
    return slow_pick(scores, term.topk, range(n)) if margin_ok(scores, term.topk, range(n)) else None


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    B, Hq, Hkv, n, d = 2, 4, 2, 11, 5
    nq = [11, 5, 1][seed % 3]
    q = torch.randn(B, Hq, nq, d, generator=g) * 2
    k = torch.randn(B, Hkv, n, d, generator=g) * 2
    positions = list(range(n - nq, n))
    scale = d ** -0.5
    terms = [ir.TopVertical(3, 4), ir.TopSlash(2, 3), ir.TopVertical(4, by="norm"),
             ir.TopVertical(2, by="lownorm"), ir.TopBlocks(2, 3), ir.TopVertical(2, 0)]
    compared = 0
    for term in terms:
        got = expr_mask(term, n, q=q, k=k)
        for bb in range(B):
            for h in range(Hq):
                chosen = slow_dynamic_sets(q[bb, h], k[bb, h // 2], positions, n, scale, term)
                if chosen is None:
                    continue
                compared += 1
                for r, p in enumerate(positions):
                    for key in range(n):
                        if isinstance(term, ir.TopBlocks):
                            want = key // term.block in chosen[p // term.block]
                        elif isinstance(term, ir.TopSlash):
                            want = p - key in chosen
                        else:
                            want = key in chosen
                        assert bool(got[bb, h, r, key]) == want, (term, bb, h, r, key)
    # Near-ties are skipped above; nearly every case must still have been compared.
    assert compared >= 0.9 * len(terms) * B * Hq


def test_combined_dynamic_expression():
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(1, 2, 9, 4, generator=g), torch.randn(1, 1, 9, 4, generator=g)
    vs = ir.Intersect((ir.Causal(), ir.Union((ir.TopVertical(2, 64), ir.TopSlash(2, 64)))))
    got = expr_mask(vs, 9, q=q, k=k)
    v = expr_mask(ir.TopVertical(2, 64), 9, q=q, k=k)
    s = expr_mask(ir.TopSlash(2, 64), 9, q=q, k=k)
    c = expr_mask(ir.Causal(), 9)
    assert torch.equal(got, c & (v | s))


# ---------------------------------------------------------------------------
# Budgets on dynamic terms
# ---------------------------------------------------------------------------

def test_pyramid_on_dynamic_terms():
    n, d = 8, 2
    k = torch.stack([e(0, d, float(n - j)) for j in range(n)]).view(1, 1, n, d)  # norms decrease
    q = torch.randn(1, 1, n, d)
    p = prog(ir.Rule(ir.TopVertical(4, by="norm")), budget=ir.Pyramid(2.0))
    # h=4, beta=2: lo=2, hi=6 -> layers 0, 1, 2 keep 6, 4, 2 keys: the first ones.
    for layer, count in [(0, 6), (1, 4), (2, 2)]:
        got = program_mask(p, n, q=q, k=k, layer=layer, num_layers=3)
        assert got[0, 0, 0].tolist() == [j < count for j in range(n)]
    with pytest.raises(PsparseUsageError, match="num_layers"):
        program_mask(p, n, q=q, k=k, layer=0)
    # Static specs do not need layers under a pyramid budget.
    assert program_mask(prog(ir.Rule(ir.Causal()), budget=ir.Pyramid(2.0)), 3).sum() == 6


def test_adaptive_on_dynamic_terms():
    n, d = 6, 1
    q = torch.ones(1, 2, n, d)
    k = torch.zeros(1, 2, n, d)
    # KV head 0's norms are all large, KV head 1's small: with floor 0.5 and h=2 each query
    # head keeps its best one, and the other two go to head 0's next best.
    k[0, 0, :, 0] = torch.tensor([10.0, 9.0, 8.0, 7.0, 6.0, 5.0])
    k[0, 1, :, 0] = torch.tensor([1.0, 2.0, 0.5, 0.2, 0.1, 0.0])
    p = prog(ir.Rule(ir.TopVertical(2, by="norm")), budget=ir.Adaptive(0.5))
    got = program_mask(p, n, q=q, k=k)
    assert got[0, 0, 0].tolist() == [True, True, True, False, False, False]
    assert got[0, 1, 0].tolist() == [False, True, False, False, False, False]
    uniform = program_mask(prog(ir.Rule(ir.TopVertical(2, by="norm"))), n, q=q, k=k)
    assert uniform[0, 1, 0].tolist() == [True, True, False, False, False, False]


def test_adaptive_pools_within_a_heads_line():
    n, d = 4, 1
    q = torch.ones(1, 4, n, d)
    k = torch.zeros(1, 4, n, d)
    k[0, 0, :, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    k[0, 1, :, 0] = torch.tensor([0.1, 0.0, 0.0, 0.0])
    k[0, 2, :, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    k[0, 3, :, 0] = torch.tensor([0.1, 0.0, 0.0, 0.0])
    term = ir.TopVertical(2, by="norm")
    p = prog(ir.Rule(term, heads=ir.Selector(0, 2)),
             ir.Rule(ir.Union((term, ir.Nothing())), heads=ir.Selector(2, 4)),
             budget=ir.Adaptive(0.0))
    got = program_mask(p, n, q=q, k=k)
    # Each line's two heads share 4 picks: all go to the strong head of that line.
    for h, want in [(0, [1, 1, 1, 1]), (1, [0, 0, 0, 0]), (2, [1, 1, 1, 1]), (3, [0, 0, 0, 0])]:
        assert got[0, h, 0].tolist() == [bool(x) for x in want]


# ---------------------------------------------------------------------------
# Performance smoke
# ---------------------------------------------------------------------------

def test_n4096_under_a_second():
    bigbird = ir.Blockwise(64, ir.Union((ir.Local(1, 1), ir.Global(I(0, -1)), ir.Random(3, 1, 0, False))))
    specs = [
        ir.Union((ir.Intersect((ir.Causal(), ir.Local(256, 256))), ir.Sink(4))),
        ir.Intersect((ir.Causal(), ir.Union((ir.Stride(64), ir.Dilated(8, 4), ir.Slash(I(S(0, 4), -8)))))),
        bigbird,
    ]
    for spec in specs:
        expr_mask(spec, 4096)
        start = time.perf_counter()
        got = expr_mask(spec, 4096)
        assert time.perf_counter() - start < 1.0
        assert got.shape == (4096, 4096)


# ---------------------------------------------------------------------------
# Through the parser
# ---------------------------------------------------------------------------

def test_through_parser():
    from patterndsl import parse
    assert parse("causal & local(2) | sink(1)").mask(6).tolist() == M("""
        100000
        110000
        111000
        111100
        101110
        100111""").tolist()
    assert parse("blockwise(2, local(1) | global([0, -1]))").mask(8).all()
    assert parse("all - causal & local(1)").mask(4).tolist() == M("0100 0010 0001 0000").tolist()
    spec = parse("heads 0:2 = causal\nheads 2:4 = local(1)")
    got = spec.mask(4, num_heads=4, nq=2)
    assert got[0].tolist() == M("1110 1111").tolist()
    assert got[3].tolist() == M("0111 0011").tolist()
    got = parse("document & causal").mask(4, doc_ids=[0, 0, 1, 1])
    assert got.tolist() == M("1000 1100 0010 0011").tolist()
    assert parse("cols([-64:10])").mask(100).sum() == 0


def test_full_size_results_are_fresh_tensors():
    # A mask the evaluator already builds at full size is returned as is: it must be the
    # caller's own, so writing into one result never changes the next.
    from patterndsl import parse
    doc = [[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]]
    s = parse("causal & document")
    first = s.mask(5, doc_ids=torch.tensor(doc))
    first.fill_(False)
    again = s.mask(5, doc_ids=torch.tensor(doc))
    assert again.tolist() == [[[k <= q and d[q] == d[k] for k in range(5)] for q in range(5)]
                              for d in doc]
    q, k = torch.randn(2, 2, 5, 4), torch.randn(2, 1, 5, 4)
    s = parse("causal & (vertical(topk=2) | slash(topk=1))")
    first = s.mask(5, q=q, k=k)
    want = first.clone()
    first.fill_(False)
    assert want.any() and torch.equal(s.mask(5, q=q, k=k), want)
