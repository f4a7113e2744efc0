"""The front end's speed-ups keep its results.

canonicalize brings each node to a fixed point once its operands are: its result must be
a fixed point of every plain whole-tree pass, whatever objects are shared.  Passes and the
subset oracle and printer remember per node object (shared between the lines of a
program), the parser drives lark's tables in its own loop, and IR nodes and spans are
built by filling their dicts.  Each is checked here against a plain re-implementation or
the library's own behaviour."""
from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import FrozenInstanceError, MISSING, fields, is_dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patterndsl
from patterndsl import ir
from patterndsl.errors import Span
from patterndsl.passes import canonicalize, canonicalize_expr
from patterndsl.passes import _walk

# The package exports the pass functions under the modules' names, so fetch the modules.
flatten, identities, merge, sort, subsume = (
    importlib.import_module(f"patterndsl.passes.{m}")
    for m in ("flatten", "identities", "merge", "sort", "subsume"))
from patterndsl.printer import expr_text

from strategies import exprs, programs

CHECK = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RULES = [(flatten.flatten, flatten._flatten_node), (identities.simplify_identities,
                                                     identities._identities_node),
         (merge.merge, merge._merge_node), (subsume.subsume, subsume._subsume_node),
         (sort.sort_terms, sort._sort_node)]


def plain_bottom_up(e, rule):
    """The traversal every pass had before memos and skipped leaves: visit everything."""
    if isinstance(e, (ir.Union, ir.Intersect)):
        terms = tuple(plain_bottom_up(t, rule) for t in e.terms)
        if any(a is not b for a, b in zip(terms, e.terms)):
            e = replace(e, terms=terms)
    elif isinstance(e, ir.Difference):
        left, right = plain_bottom_up(e.left, rule), plain_bottom_up(e.right, rule)
        if left is not e.left or right is not e.right:
            e = replace(e, left=left, right=right)
    elif isinstance(e, ir.Blockwise):
        inner = plain_bottom_up(e.expr, rule)
        if inner is not e.expr:
            e = replace(e, expr=inner)
    return rule(e)


def plain_canonical(e):
    while True:
        out = e
        for _, rule in RULES:
            out = plain_bottom_up(out, rule)
        if out == e:
            return out
        e = out


def shared(e, depth: int = 2):
    """``e`` used several times as one object, the way lowering substitutes a let name."""
    for i in range(depth):
        e = ir.Union((e, ir.Difference(e, ir.Sink(i + 1)), ir.Intersect((ir.Causal(), e))))
    return e


@CHECK
@given(exprs(max_leaves=8))
def test_each_pass_equals_the_plain_traversal(e):
    for pass_, rule in RULES:
        memo: dict = {}
        got = pass_(e, memo)
        assert got == plain_bottom_up(e, rule)
        # A second call with the same memo answers from it, and the same object comes back.
        assert pass_(e, memo) is got


@CHECK
@given(exprs(max_leaves=8))
def test_sorting_a_sorted_tree_returns_it(e):
    # A sorted chain of sorted operands sorts to itself (the sort is stable and the keys
    # depend on the operands alone): canonicalize tries sort last, so a node it settles in
    # stays settled.
    out = plain_bottom_up(e, sort._sort_node)
    assert plain_bottom_up(out, sort._sort_node) is out
    memo: dict = {}
    assert sort.sort_terms(e, memo) == out
    assert sort.sort_terms(sort.sort_terms(e, memo), memo) == out


def unshared(e):
    """A copy of ``e`` in which no node object occurs twice."""
    t = type(e)
    if t is ir.Union or t is ir.Intersect:
        return t(tuple(unshared(c) for c in e.terms))
    if t is ir.Difference:
        return ir.Difference(unshared(e.left), unshared(e.right))
    if t is ir.Blockwise:
        return ir.Blockwise(e.block, unshared(e.expr))
    return replace(e)


@CHECK
@given(exprs(max_leaves=6))
def test_canonical_form_is_a_fixed_point_of_every_pass(e):
    # canonicalize works node by node (operands first, then the rules until none applies);
    # its result must be what the plain whole-tree passes leave alone, and sharing
    # objects (as let does) must not change it.
    for x in (e, shared(e)):
        c = canonicalize_expr(x)
        for _, rule in RULES:
            assert plain_bottom_up(c, rule) == c
        assert plain_canonical(c) == c
        assert canonicalize_expr(unshared(x)) == c


@pytest.mark.parametrize("text, expected", [
    # A group that holds a union keeps it whole while subsume compares the terms, so
    # `a | (a & b)` and `a | (a - b)` lose the part inside `a` however they are grouped.
    ("(local(2) | sink(3)) | causal & (local(2) | sink(3))", "local(2) | sink(3)"),
    ("(local(2) | sink(3)) | (local(2) | sink(3)) - every(4)", "local(2) | sink(3)"),
    ("let e = local(2) | sink(1)\npattern = (e | causal & e) | e - every(3)",
     "local(2) | sink(1)"),
])
def test_a_union_operand_absorbs_what_it_contains(text, expected):
    assert patterndsl.parse(text).canonical() == expected


@CHECK
@given(programs())
def test_canonicalize_equals_each_line_alone(program):
    # Lines share one object, as with `heads 0 = g` and `heads 1 = g | causal`.
    e = program.rules[0].expr
    rules = tuple(replace(r, expr=ir.Union((r.expr, e)) if i % 2 else e)
                  for i, r in enumerate(program.rules))
    program = replace(program, rules=rules)
    out = canonicalize(program)
    assert out == canonicalize(program)
    expected = sorted(((r, canonicalize_expr(unshared(r.expr))) for r in program.rules),
                      key=lambda rc: (rc[0].specificity,
                                      tuple(s.start for s in (rc[0].layers, rc[0].heads)
                                            if s is not None)))
    assert sorted(r.expr for r in out.rules if r.layers is None and r.heads is None) == \
        sorted(c for r, c in expected if r.layers is None and r.heads is None)
    by_selectors = {(r.layers, r.heads): r.expr for r in out.rules}
    for r, c in expected:
        assert by_selectors[(r.layers, r.heads)] == c


def test_memos_are_empty_after_canonicalize():
    spec = patterndsl.parse("let a = causal & (local(8) | sink(2))\nlet b = a | global([0])\n"
                            "heads 0 = a | (b - every(4))\nheads 1 = b & a")
    assert spec.canonical()  # the printer ran too
    assert all(not memo for memo in _walk._NODE_MEMOS)
    canonicalize_expr(shared(ir.Union((ir.Local(3, 3), ir.Sink(2)))))
    assert all(not memo for memo in _walk._NODE_MEMOS)


def test_node_memo_is_bounded():
    calls = []

    @_walk.memo_by_node
    def probe(node):
        calls.append(node)
        return node.left

    nodes = [ir.Local(i, i) for i in range(_walk._MEMO_LIMIT + 10)]
    for n in nodes:
        assert probe(n) == n.left
    assert len(probe.cache) <= _walk._MEMO_LIMIT + 1
    assert probe(nodes[-1]) == nodes[-1].left and len(calls) == len(nodes)  # remembered
    probe.cache.clear()


def test_walk_visits_a_shared_object_once():
    # 2**40 paths from the root to the leaf, 41 distinct objects.
    e = ir.Causal()
    for _ in range(40):
        e = ir.Difference(e, e)
    seen = []

    def rule(node):
        seen.append(node)
        return node

    assert _walk.bottom_up(e, rule) is e
    assert len(seen) == 41


@pytest.mark.parametrize("pass_", [p for p, _ in RULES])
def test_kept_leaves_are_really_unchanged(pass_):
    # Every leaf type a pass skips must come back as itself from the pass's own rule.
    module = inspect.getmodule(pass_)
    rule = dict((p, r) for p, r in RULES)[pass_]
    examples = {ir.All: ir.All(), ir.Nothing: ir.Nothing(), ir.Causal: ir.Causal(),
                ir.Document: ir.Document(), ir.Local: ir.Local(0, 0), ir.Block: ir.Block(1),
                ir.Stride: ir.Stride(1), ir.Dilated: ir.Dilated(0, 1), ir.Every: ir.Every(1),
                ir.Sink: ir.Sink(0), ir.Prefix: ir.Prefix(0), ir.Random: ir.Random(0),
                ir.TopVertical: ir.TopVertical(1), ir.TopSlash: ir.TopSlash(1),
                ir.TopBlocks: ir.TopBlocks(1),
                ir.Rows: ir.Rows(ir.IndexSet((5, 0, 5))), ir.Cols: ir.Cols(ir.IndexSet(())),
                ir.Global: ir.Global(ir.IndexSet((0, ir.Slice(0, 4, 1)))),
                ir.Slash: ir.Slash(ir.IndexSet((ir.Slice(3, 3, None),)))}
    assert set(examples) == _walk.LEAF_TYPES
    for cls in module._KEEP:
        assert cls in _walk.LEAF_TYPES
        node = examples[cls]
        assert rule(node) is node, cls.__name__
        assert pass_(node) is node


def test_subset_memo_answers_like_the_oracle():
    a = shared(ir.Union((ir.Local(4, 4), ir.Sink(1))))
    b = ir.Union((a, ir.Global(ir.IndexSet((0,)))))
    first = [subsume.subset(x, y) for x in (a, b) for y in (a, b)]
    subsume._subset_memo.clear()
    assert first == [subsume._subset(x, y) for x in (a, b) for y in (a, b)]
    assert first == [True, True, False, True]


def test_printed_text_is_remembered_correctly():
    e = shared(ir.Union((ir.Local(4, 2), ir.Sink(1))))
    text = expr_text(e)
    assert expr_text(e) is text or expr_text(e) == text
    assert patterndsl.parse(text).ir.rules[0].expr == e


# ---------------------------------------------------------------------------
# IR construction
# ---------------------------------------------------------------------------

def _ir_classes():
    return [c for c in vars(ir).values()
            if isinstance(c, type) and is_dataclass(c) and c.__module__ == ir.__name__
            and fields(c)]


def test_ir_inits_keep_the_dataclass_signature():
    for cls in _ir_classes():
        params = list(inspect.signature(cls).parameters.values())
        assert [p.name for p in params] == [f.name for f in fields(cls)], cls
        for p, f in zip(params, fields(cls)):
            assert (p.default is inspect.Parameter.empty) == (f.default is MISSING), (cls, f)
            if f.default is not MISSING:
                assert p.default == f.default
            assert (p.kind is inspect.Parameter.KEYWORD_ONLY) == f.kw_only


def test_ir_nodes_stay_frozen_and_compare_without_spans():
    sp = Span(1, 1, 1, 5, 0, 4)
    r = ir.Random(3, seed=2, span=sp)
    assert (r.count, r.block, r.seed, r.causal, r.span) == (3, 64, 2, False, sp)
    assert r == ir.Random(3, 64, 2) and hash(r) == hash(ir.Random(3, 64, 2))
    assert repr(r) == "Random(count=3, block=64, seed=2, causal=False)"
    with pytest.raises(FrozenInstanceError):
        r.count = 4
    assert replace(r, count=5) == ir.Random(5, seed=2)
    with pytest.raises(TypeError):
        ir.Local(1)


def test_fast_spans_equal_constructed_ones():
    from patterndsl.lower import _make_span
    s = _make_span(2, 3, 2, 9, 10, 16)
    assert s == Span(2, 3, 2, 9, 10, 16) and hash(s) == hash(Span(2, 3, 2, 9, 10, 16))
    assert type(s) is Span and repr(s) == repr(Span(2, 3, 2, 9, 10, 16))
    with pytest.raises(FrozenInstanceError):
        s.line = 1


# ---------------------------------------------------------------------------
# The parser's driver
# ---------------------------------------------------------------------------

def _benchmark_file():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "frontend.py"
    spec = importlib.util.spec_from_file_location("_frontend_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.five_hundred_lines()


def test_large_file_parses_like_larks_own_driver():
    import lark
    from patterndsl.parser import PositionedTree, grammar_text, parse_tree
    from test_parser import _DropNewlinesInBrackets, _shape
    reference = lark.Lark(grammar_text(), parser="lalr", lexer="contextual",
                          maybe_placeholders=False, tree_class=PositionedTree,
                          postlex=_DropNewlinesInBrackets())
    text = _benchmark_file()
    assert _shape(parse_tree(text)) == _shape(reference.parse(text))


_REFERENCE: list = []


def _reference():
    import lark
    from patterndsl.parser import PositionedTree, grammar_text
    from test_parser import _DropNewlinesInBrackets
    if not _REFERENCE:
        _REFERENCE.append(lark.Lark(grammar_text(), parser="lalr", lexer="contextual",
                                    maybe_placeholders=False, tree_class=PositionedTree,
                                    postlex=_DropNewlinesInBrackets()))
    return _REFERENCE[0]


@CHECK
@given(st.text(alphabet="causl&|()-[]:,0123456789_ =\n#hedyrtiwk", max_size=40))
def test_driver_fails_where_larks_driver_fails(text):
    from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedToken
    from patterndsl.errors import PsparseSyntaxError
    from patterndsl.parser import parse_tree
    from test_parser import _shape
    ours = theirs = our_err = their_err = None
    try:
        ours = _shape(parse_tree(text))
    except PsparseSyntaxError as e:
        our_err = e
    try:
        theirs = _shape(_reference().parse(text))
    except LarkError as e:
        their_err = e
    if their_err is None:
        if our_err is None:
            assert ours == theirs, text
        else:  # psparse's own checks, on top of the grammar
            assert our_err.message.startswith(("malformed number", "empty spec")), text
        return
    assert our_err is not None, text
    if our_err.message.startswith("malformed number"):
        return  # found while reading tokens, before the parser got that far
    if isinstance(their_err, UnexpectedToken) and their_err.token.type != "$END":
        where = (their_err.token.line, their_err.token.column)
    elif isinstance(their_err, UnexpectedCharacters):
        where = (their_err.line, their_err.column)
    else:
        return
    assert (our_err.line, our_err.column) == where, (text, str(our_err))
