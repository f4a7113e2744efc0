"""Robustness: whatever the input, the front end answers with a result or a PsparseError
that points inside the text, never a traceback, a hang or a RecursionError."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patterndsl
from patterndsl import ir
from patterndsl.errors import PsparseError, PsparseSemanticError, PsparseSyntaxError
from patterndsl.lower import MAX_DEPTH, lower
from patterndsl.parser import MAX_NESTING, parse_tree

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def front(text: str):
    return lower(parse_tree(text), text)


def assert_good_error(e: PsparseError, text: str):
    """The error names a place in the text and renders without failing."""
    assert isinstance(e, PsparseError)
    rendered = str(e)
    assert rendered and "Traceback" not in rendered
    if isinstance(e, (PsparseSyntaxError, PsparseSemanticError)) and text.strip():
        assert e.span is not None, rendered
        lines = text.split("\n")
        assert 1 <= e.line <= len(lines), rendered
        assert 1 <= e.column <= len(lines[e.line - 1]) + 1, rendered


def outcome(fn, text):
    try:
        return fn(text)
    except PsparseError as e:
        assert_good_error(e, text if isinstance(text, str) else "")
        return e


# ---------------------------------------------------------------------------
# Arbitrary input
# ---------------------------------------------------------------------------

@FUZZ
@given(st.text())
def test_random_text_only_raises_psparse_errors(text):
    outcome(patterndsl.parse, text)


@FUZZ
@given(st.binary())
def test_random_bytes_only_raise_psparse_errors(data):
    outcome(patterndsl.parse, data)


SPEC_ALPHABET = "()[]|&-+=,:;#\n\t _.0123456789abcdeghiklmnoprstuvwxy"


@FUZZ
@given(st.text(alphabet=SPEC_ALPHABET, max_size=80))
def test_spec_alphabet_soup(text):
    outcome(front, text)


WORDS = ["causal", "all", "none", "document", "local", "block", "stride", "dilated", "every",
         "rows", "cols", "vertical", "global", "sink", "slash", "prefix", "random", "blockwise",
         "blocks", "topk", "last", "by", "norm", "lownorm", "seed", "causal", "true", "false",
         "let", "w", "heads", "layers", "pattern", "kv", "budget", "auto", "recent", "heavy",
         "snap", "window", "pool", "low", "uniform", "pyramid", "adaptive", "beta", "floor",
         "(", ")", "[", "]", "|", "&", "-", "+", "=", ",", ":", ";", "\n", "#", "0", "1", "4",
         "64", "-1", "-8", "0.5", "1_0", "1__0", "2.5", "4294967296", "99999999999999999999"]


@FUZZ
@given(st.lists(st.sampled_from(WORDS), max_size=30))
def test_token_soup(words):
    """Sequences of real tokens reach deep parser states and every lowering check."""
    text = " ".join(words)
    result = outcome(front, text)
    if isinstance(result, ir.Program):
        assert result.rules


# ---------------------------------------------------------------------------
# Mutated valid specs
# ---------------------------------------------------------------------------

CORPUS = [
    "causal & local(128) | sink(4)",
    "all - causal & local(3)",
    "blockwise(64, local(1) | global([0, -1])) & causal",
    "causal & (vertical(topk=1000) | slash(topk=6000))",
    "random(3, block=16, seed=7, causal=true) | every(8, 3) | dilated(4, 2)",
    "rows([0, 5, 9]) | cols([0:64]) | slash([0:4, -8]) | prefix(100) - stride(2)",
    "document & causal & local(131_072)",
    "vertical(topk=5, by=norm) | blocks(topk=4, block=32)",
    ("# a file\nlet w = local(128) & causal\npattern = w | sink(4)\n"
     "heads 0:8 = causal & (vertical(topk=1000) | slash(topk=6000))\nlayers 0 = all\n"
     "layers 1: heads 8::2 = w\nkv = sink(4) + recent(1024) + heavy(256)\n"
     "budget = pyramid(beta=20)\n"),
    "causal\nkv = auto\nbudget = adaptive(floor=0.25)",
    "heads 0 = causal; heads 1 = local(2); kv = snap(100, window=16, pool=5) + norm(3, low=true)",
    "pattern = causal & (\n  local(64)\n  | global([0,\n  -1])\n)\n",
]

INSERTS = ["(", ")", "[", "]", "|", "&", "-", "+", "=", ",", ":", ";", "\n", "#", " ", "_",
           "0", "-1", "1__0", "0.5", "99999999999999999999", "true", "let x = ", "heads 0 = ",
           "layers 0: ", "kv = ", "budget = ", "document", "vertical(topk=3)", "auto", "causal",
           "local", "\x00", "é", "@", "\r", "\t", "((((", "))))", "[[", "blockwise(2, "]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "duplicate", "swap"]))
        n = len(text)
        i = draw(st.integers(0, n))
        if kind == "delete" and n:
            j = draw(st.integers(i, min(n, i + 8)))
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(INSERTS)) + text[i:]
        elif kind == "duplicate" and n:
            j = draw(st.integers(i, min(n, i + 12)))
            k = draw(st.integers(0, n))
            text = text[:k] + text[i:j] + text[k:]
        elif kind == "swap" and n >= 2:
            i = min(i, n - 2)
            text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return text


def test_corpus_is_valid():
    for text in CORPUS:
        assert isinstance(patterndsl.parse(text), patterndsl.Spec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_specs_parse_or_raise_psparse_errors(text):
    result = outcome(front, text)
    if isinstance(result, ir.Program):
        # What lowers must also survive the rest of the front end.
        outcome(patterndsl.parse, text)


# ---------------------------------------------------------------------------
# Size and depth
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("opener,closer", [("(", ")"), ("blockwise(1, ", ")")])
def test_ten_thousand_deep_nesting_is_a_clear_error(opener, closer):
    text = opener * 10_000 + "causal" + closer * 10_000
    t = time.perf_counter()
    with pytest.raises(PsparseSyntaxError) as info:
        front(text)
    assert time.perf_counter() - t < 5
    assert "nest too deeply" in info.value.message
    # The caret is on the first bracket past the limit.
    assert info.value.line == 1
    assert info.value.column == MAX_NESTING * len(opener) + opener.index("(") + 1


def test_ten_thousand_unclosed_brackets():
    with pytest.raises(PsparseSyntaxError, match="nest too deeply"):
        patterndsl.parse("(" * 10_000)
    with pytest.raises(PsparseSyntaxError, match="unexpected '\\['"):
        patterndsl.parse("[" * 10_000)
    with pytest.raises(PsparseSyntaxError, match="unexpected '\\)'"):
        patterndsl.parse(")" * 10_000)
    with pytest.raises(PsparseSyntaxError, match="'\\(' was never closed"):
        patterndsl.parse("causal & " + "(" * MAX_NESTING)


def test_one_megabyte_chain_gives_a_result():
    terms = 1_000_000 // len("local(1) | ") + 1
    text = " | ".join(f"local({i % 7})" for i in range(terms))
    assert len(text) > 1_000_000
    program = front(text)
    (rule,) = program.rules
    assert isinstance(rule.expr, ir.Union) and len(rule.expr.terms) == terms
    assert rule.expr.terms[-1] == ir.Local((terms - 1) % 7, (terms - 1) % 7)


def test_one_megabyte_of_garbage_fails_fast():
    text = "causal " + "x" * 1_000_000
    t = time.perf_counter()
    with pytest.raises(PsparseSyntaxError) as info:
        front(text)
    assert time.perf_counter() - t < 5
    assert (info.value.line, info.value.column) == (1, 8)
    # The message quotes and underlines a bounded part of the million-character word.
    assert len(str(info.value)) < 1000


def test_one_megabyte_of_comments_and_statements():
    lines = []
    for i in range(1_000_000 // 50):
        lines.append(f"# comment line {i:08d} with | & - ( [ ] ) noise ; inside")
    lines.append("heads 0 = causal")
    lines.append("heads 1 = local(4)")
    text = "\n".join(lines)
    assert len(text) > 1_000_000
    program = front(text)
    assert [r.heads.start for r in program.rules] == [0, 1]
    assert program.rules[0].span.line == len(lines) - 1


def test_many_disjoint_heads_lines():
    # Overlap checking must not compare every pair of lines (50 million pairs here).
    count = 10_000
    text = "\n".join(f"heads {i} = causal" for i in range(count))
    program = front(text)
    assert len(program.rules) == count
    # ...and the same file with one overlapping line at the end names it.
    with pytest.raises(PsparseSemanticError) as info:
        front(text + "\nheads 17:19 = all")
    assert info.value.line == count + 1
    assert "line 18" in info.value.message and "head 17" in info.value.message


def test_let_chains_cannot_blow_up():
    text = "let a0 = local(1)\n" + "\n".join(f"let a{i + 1} = a{i} | a{i} - a{i}"
                                              for i in range(60)) + "\na60"
    t = time.perf_counter()
    with pytest.raises(PsparseSemanticError, match="expands to more than|nests too deeply"):
        front(text)
    assert time.perf_counter() - t < 5


# ---------------------------------------------------------------------------
# Overlap of heads/layers lines against brute force
# ---------------------------------------------------------------------------

selector_parts = st.tuples(st.integers(0, 20), st.one_of(st.none(), st.integers(1, 30)),
                           st.integers(1, 6))


def _selector_text(start, length, step):
    stop = "" if length is None else str(start + length)
    return f"{start}:{stop}:{step}"


def _members(start, length, step, horizon):
    stop = horizon if length is None else start + length
    return set(range(start, stop, step))


@settings(max_examples=200, deadline=None)
@given(selector_parts, selector_parts)
def test_heads_overlap_matches_brute_force(a, b):
    # Two progressions that meet do so below max(start) + lcm(step) <= 20 + 30 = 50.
    common = _members(*a, 200) & _members(*b, 200)
    text = f"heads {_selector_text(*a)} = causal\nheads {_selector_text(*b)} = all"
    if not common:
        assert len(front(text).rules) == 2
        return
    with pytest.raises(PsparseSemanticError) as info:
        front(text)
    assert info.value.line == 2
    assert f"overlaps the one on line 1 (both cover head {min(common)})" in info.value.message


@settings(max_examples=150, deadline=None)
@given(selector_parts, selector_parts, selector_parts, selector_parts)
def test_layers_heads_overlap_needs_both_sides(la, ha, lb, hb):
    layers = _members(*la, 200) & _members(*lb, 200)
    heads = _members(*ha, 200) & _members(*hb, 200)
    text = (f"layers {_selector_text(*la)} heads {_selector_text(*ha)} = causal\n"
            f"layers {_selector_text(*lb)} heads {_selector_text(*hb)} = all")
    if not (layers and heads):
        assert len(front(text).rules) == 2
        return
    with pytest.raises(PsparseSemanticError) as info:
        front(text)
    assert f"(both cover layer {min(layers)}, head {min(heads)})" in info.value.message


def test_deepest_allowed_inputs_survive_the_whole_front_end():
    """At the nesting limits, lowering, passes and printer all finish without recursing
    too deep."""
    deepest = [
        "blockwise(2,\n" * (MAX_NESTING - 2) + "rows([0])" + ")" * (MAX_NESTING - 2),
        "(" * (MAX_NESTING - 1) + "causal"
        + "".join(f" | local({i}))" for i in range(MAX_NESTING - 1)),
        "all" + " - causal" * (MAX_DEPTH - 1),
        "(" * 49 + "causal" + "".join(f" & local({i}) - sink({i}))" for i in range(49)),
    ]
    for text in deepest:
        assert isinstance(patterndsl.parse(text), patterndsl.Spec)
