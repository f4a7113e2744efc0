"""LANGUAGE.md's own examples and tables, checked against Spec.mask.

Two halves:
* the concrete examples LANGUAGE.md gives (precedence, index and offset sets, random blocks'
  known answers, BigBird's blockwise window, decode rows, statements, argument ranges),
  transcribed here next to the sentence they come from and checked by plain loops;
* when the document itself is at hand (``../shared/LANGUAGE.md`` beside the checkout), its
  primitive table is read and every condition in it is evaluated as written, by loops over
  (q, k), for a few instantiations; and every inline example in it that parses as a spec
  must be one that the first half checks, so a new example cannot go unchecked.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import patterndsl
from patterndsl.errors import PsparseError, PsparseUsageError

ROOT = Path(__file__).resolve().parents[1]
LANGUAGE = next((p for p in (ROOT.parent / "shared" / "LANGUAGE.md",
                             ROOT / "shared" / "LANGUAGE.md") if p.is_file()), None)
needs_doc = pytest.mark.skipif(LANGUAGE is None, reason="../shared/LANGUAGE.md is not beside "
                               "this checkout")


def loops(n, allowed, nq=None):
    """``bool [nq, n]`` from a predicate on absolute (q, k), rows bottom-right aligned."""
    nq = n if nq is None else nq
    out = torch.zeros(nq, n, dtype=torch.bool)
    for i in range(nq):
        q = i + n - nq
        for k in range(n):
            out[i, k] = bool(allowed(q, k))
    return out


def mask(text, n, **kw):
    return patterndsl.parse(text).mask(n, **kw)


# ---------------------------------------------------------------------------
# Operators: "So `causal & local(4) | sink(2)` is `(causal & local(4)) | sink(2)`, and
# `all - causal & local(3)` is `(all - causal) & local(3)`."
# ---------------------------------------------------------------------------

def test_precedence_examples():
    n = 12
    a = mask("causal & local(4) | sink(2)", n)
    assert torch.equal(a, mask("(causal & local(4)) | sink(2)", n))
    assert torch.equal(a, loops(n, lambda q, k: (k <= q and abs(q - k) <= 4) or k < 2))
    # The other grouping means something else (sink would no longer reach above the diagonal).
    assert not torch.equal(a, mask("causal & (local(4) | sink(2))", n))

    b = mask("all - causal & local(3)", n)
    assert torch.equal(b, mask("(all - causal) & local(3)", n))
    assert torch.equal(b, loops(n, lambda q, k: k > q and abs(q - k) <= 3))
    assert not torch.equal(b, mask("all - (causal & local(3))", n))


# ---------------------------------------------------------------------------
# Positions: "`global([-1])` makes each new last token global"; a decode step over n
# positions sits at q = n - 1 and is not in general a row of a longer prefill's mask.
# ---------------------------------------------------------------------------

def test_decode_step_is_not_a_row_of_a_longer_prefill():
    spec = "global([-1])"
    step = mask(spec, 6, nq=1)            # q = 5, the last of 6 positions: it is global
    assert step.tolist() == [[True] * 6]
    longer = mask(spec, 7)                # at n = 7, position 5 only sees the new last key
    assert longer[5].tolist() == [False] * 6 + [True]
    # Bottom-right alignment in general: Nq rows of n sit at q = i + (n - Nq).
    for nq in (1, 3, 9):
        assert torch.equal(mask("causal & local(2)", 9, nq=nq),
                           loops(9, lambda q, k: k <= q and q - k <= 2, nq=nq))


# ---------------------------------------------------------------------------
# Index and offset sets
# ---------------------------------------------------------------------------

def py_set(n, *items):
    """An index set by Python's own indexing: ints resolve against n, slices are range(n)[s]."""
    out = set()
    for it in items:
        if isinstance(it, slice):
            out |= set(range(n)[it])
        else:
            i = it + n if it < 0 else it
            if 0 <= i < n:
                out.add(i)
    return out


INDEX_EXAMPLES = [  # "`[0, 5, 9]`, `[0:64]`, `[-64:]`, `[::128]`, `[0, 100:200, -1]`"
    ("[0, 5, 9]", (0, 5, 9)),
    ("[0:64]", (slice(0, 64),)),
    ("[-64:]", (slice(-64, None),)),
    ("[::128]", (slice(None, None, 128),)),
    ("[0, 100:200, -1]", (0, slice(100, 200), -1)),
]


@pytest.mark.parametrize("text, items", INDEX_EXAMPLES, ids=[t for t, _ in INDEX_EXAMPLES])
def test_index_set_examples(text, items):
    for n in (50, 300):
        want = py_set(n, *items)
        assert mask(f"cols({text})", n, nq=1)[0].nonzero().flatten().tolist() == sorted(want)


def test_negative_start_slice_can_be_empty():
    # "(so `[-64:10]` is empty when `n = 100`)"
    assert not mask("rows([-64:10])", 100).any()
    assert not mask("cols([-64:10])", 100).any()
    # ... and not empty when n is small enough for -64 to resolve below 10.
    assert mask("cols([-64:10])", 70, nq=1)[0].nonzero().flatten().tolist() == [6, 7, 8, 9]


def test_offset_set_example():
    # "`slash([0:4, -8])` is the offsets 0, 1, 2, 3 and -8."
    n = 20
    assert torch.equal(mask("slash([0:4, -8])", n),
                       loops(n, lambda q, k: q - k in {0, 1, 2, 3, -8}))


def test_integer_separators():
    # "Integers may use `_` separators (`131_072`)."
    assert patterndsl.parse("local(131_072)") == patterndsl.parse("local(131072)")
    assert patterndsl.parse("sink(1_0)").canonical() == "sink(10)"


# ---------------------------------------------------------------------------
# Random blocks: the known answers, read as rows of the mask (block=1, so blocks are keys)
# ---------------------------------------------------------------------------

KNOWN = [  # transcribed from LANGUAGE.md's "Known answers"
    ("random(3, block=1, seed=0)", 8, [{1, 3, 7}, {0, 3, 7}, {0, 2, 5}, {0, 4, 5}]),
    ("random(3, block=1, seed=0, causal=true)", 8, [{0}, {0, 1}, {0, 1, 2}, {0, 1, 3}]),
    ("random(2, block=1, seed=42)", 5, [{0, 3}, {1, 4}, {3, 4}, {1, 2}, {1, 3}]),
]


def rows_as_sets(m):
    return [set(r.nonzero().flatten().tolist()) for r in m]


@pytest.mark.parametrize("text, n, want", KNOWN, ids=[t for t, _, _ in KNOWN])
def test_random_known_answers(text, n, want):
    got = rows_as_sets(mask(text, n))
    assert got[: len(want)] == want
    # "The same spec and n give the same blocks on every ... run": and a decode row agrees,
    # since R(i) depends on n only through nb.
    assert rows_as_sets(mask(text, n, nq=1)) == got[-1:]


@needs_doc
def test_known_answers_are_the_documents():
    text = LANGUAGE.read_text()
    para = text[text.index("Known answers:"):]
    para = para[: para.index("every device")]
    groups = re.split(r"with `causal=true`:|`random\(2, block=1, seed=42\)`", para)
    assert len(groups) == 3
    parsed = [[{int(x) for x in s.split(",")} for s in re.findall(r"\{([\d,\s]+)\}", g)]
              for g in groups]
    assert parsed == [want for _, _, want in KNOWN]


# ---------------------------------------------------------------------------
# blockwise: "`blockwise(64, local(1) | global([0, -1]))` is BigBird's three-block window with
# global first and last blocks."
# ---------------------------------------------------------------------------

def test_bigbird_blockwise_example():
    b, nb = 64, 5
    n = b * nb - 10  # a ragged last block is still the last block
    last = -(-n // b) - 1

    def allowed(q, k):
        i, j = q // b, k // b
        return abs(i - j) <= 1 or i in (0, last) or j in (0, last)

    got = mask("blockwise(64, local(1) | global([0, -1]))", n, nq=70)
    assert torch.equal(got, loops(n, allowed, nq=70))


def test_document_ids_of_both_shapes():
    # "`doc(q) == doc(k)`, with document ids given at call time, shape `[n]` or `[batch, n]`"
    ids = [[0, 0, 1, 1, 1, 2, 2], [5, 5, 5, 5, 3, 3, 9]]
    one = mask("document", 7, doc_ids=torch.tensor(ids[0]))
    assert torch.equal(one, loops(7, lambda q, k: ids[0][q] == ids[0][k]))
    both = mask("causal & document", 7, nq=4, doc_ids=torch.tensor(ids))
    assert both.shape == (2, 4, 7)
    for b in range(2):
        assert torch.equal(both[b], loops(7, lambda q, k: k <= q and ids[b][q] == ids[b][k], nq=4))
    with pytest.raises(PsparseUsageError):
        mask("document", 7)


# ---------------------------------------------------------------------------
# Dynamic terms: MInference's vertical-slash "combine[s] with every operator"; "a topk above
# the number of candidates takes them all", so with few keys it is the causal mask.
# ---------------------------------------------------------------------------

def test_minference_example():
    spec = patterndsl.parse("causal & (vertical(topk=1000) | slash(topk=6000))")
    assert spec.is_dynamic
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 2, 24, 8, generator=g)
    k = torch.randn(2, 1, 40, 8, generator=g)
    m = spec.mask(40, q=q, k=k)
    assert m.shape == (2, 2, 24, 40)
    assert torch.equal(m, loops(40, lambda q, k: k <= q, nq=24).expand(2, 2, 24, 40))
    with pytest.raises(PsparseUsageError):
        spec.mask(40)  # "Spec.mask needs the call's q and k"


# ---------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------

def test_most_specific_line_wins():
    # "the most specific line wins (layers+heads, then heads, then layers, then the default)"
    spec = patterndsl.parse("pattern = all; heads 1: = causal; layers 2 = sink(1)\n"
                            "layers 2 heads 2 = none")
    n = 6
    full = torch.ones(n, n, dtype=torch.bool)
    causal = loops(n, lambda q, k: k <= q)
    sink = loops(n, lambda q, k: k < 1)
    none = torch.zeros(n, n, dtype=torch.bool)
    assert torch.equal(spec.mask(n, num_heads=3, layer=0), torch.stack([full, causal, causal]))
    assert torch.equal(spec.mask(n, num_heads=3, layer=2), torch.stack([sink, causal, none]))


def test_uncovered_head_or_layer_is_a_call_time_error():
    # "A head or layer that no line covers is an error at call time."
    spec = patterndsl.parse("heads 0:2 = causal")
    assert spec.mask(4, num_heads=2).shape == (2, 4, 4)
    with pytest.raises(PsparseUsageError, match="head 2"):
        spec.mask(4, num_heads=3)
    spec = patterndsl.parse("layers 0 = causal")
    with pytest.raises(PsparseUsageError):
        spec.mask(4, layer=1)


@pytest.mark.parametrize("text", [
    "heads 0:4 = causal\nheads 3 = all",                # two lines of a kind overlap
    "layers 2: = causal\nlayers 7:9 = all",
    "layers 0 heads 0 = causal; layers 0:2 heads 0:4 = all",
    "causal\npattern = all",                            # pattern at most once
    "kv = auto\nkv = auto\ncausal",                     # kv at most once
    "budget = uniform; budget = uniform; causal",       # budget at most once
    "let a = all\nlet a = causal\na",                   # a let name is defined once
    "let local = all\ncausal",                          # ... and is never a primitive,
    "let heavy = all\ncausal",                          # a term,
    "let heads = all\ncausal",                          # or a keyword
    "b\nlet b = causal",                                # usable after its line only
])
def test_statement_rules(text):
    with pytest.raises(PsparseError) as e:
        patterndsl.parse(text)
    assert e.value.line is not None and e.value.column is not None


def test_statement_separators_comments_and_continuation():
    # "one per line or separated by `;`; a newline inside parentheses or brackets continues
    # the statement. `#` starts a comment."
    a = patterndsl.parse("let w = local(3)   # a window\n"
                         "pattern = causal & (w\n   | sink(2)) ; heads 0 = global([0,\n 1])\n")
    b = patterndsl.parse("let w = local(3); pattern = causal & (w | sink(2)); "
                         "heads 0 = global([0, 1])")
    assert a == b
    assert torch.equal(a.mask(8, num_heads=2)[1],
                       loops(8, lambda q, k: k <= q and (q - k <= 3 or k < 2)))


def test_budget_decimals():
    # "`beta` and `floor` are decimal numbers (`0.25`)"; counts are integers.
    assert patterndsl.parse("budget = adaptive(floor=0.25)\ncausal").ir.budget.floor == 0.25
    assert patterndsl.parse("budget = pyramid(beta=2.5)\ncausal").ir.budget.beta == 2.5
    with pytest.raises(PsparseError):
        patterndsl.parse("local(0.25)")
    with pytest.raises(PsparseError):
        patterndsl.parse("kv = heavy(2.5)\ncausal")


# ---------------------------------------------------------------------------
# Argument ranges: "Window sizes w, l, r, counts m, p, random's count and seed are integers
# >= 0; b, s and d are integers >= 1; seed < 2^32; flags are true or false."
# ---------------------------------------------------------------------------

ACCEPTED = ["local(0)", "local(0, 0)", "sink(0)", "prefix(0)", "random(0)", "random(1, seed=0)",
            f"random(1, seed={2 ** 32 - 1})", "block(1)", "stride(1)", "dilated(0, 1)",
            "every(1)", "every(3, 2)", "random(1, block=1)", "random(1, causal=false)",
            "blockwise(1, causal)", "rows([::-1])"]
REJECTED = ["local(-1)", "local(0, -1)", "local(-1, 0)", "sink(-1)", "prefix(-1)",
            "random(-1)", "random(1, seed=-1)", f"random(1, seed={2 ** 32})", "block(0)",
            "stride(0)", "dilated(0, 0)", "dilated(-1, 1)", "every(0)", "every(3, 3)",
            "every(3, -1)", "random(1, block=0)", "random(1, causal=1)", "blockwise(0, causal)",
            "rows([::0])", "local(1, 2, 3)", "random(1, seed=1, seed=2)", "local(x)"]


@pytest.mark.parametrize("text", ACCEPTED)
def test_argument_range_edges_accepted(text):
    patterndsl.parse(text)


@pytest.mark.parametrize("text", REJECTED)
def test_argument_range_edges_rejected(text):
    with pytest.raises(PsparseError) as e:
        patterndsl.parse(text)
    err = e.value
    assert err.line == 1 and err.column is not None and err.column > 1  # points inside
    assert "^" in str(err)


# ---------------------------------------------------------------------------
# The document itself
# ---------------------------------------------------------------------------

# Two instantiations of the table's letters: a concrete spec text and its Python value.
BINDINGS = [
    dict(w=2, l=3, r=1, b=4, s=3, d=2, o=1, m=2, p=5,
         I=("[1, 6:9, -2, ::5]", (1, slice(6, 9), -2, slice(None, None, 5))),
         O=("[0:4, -8, 5:-3:-3]", {0, 1, 2, 3, -8, 5, 2, -1})),
    dict(w=0, l=0, r=4, b=1, s=1, d=3, o=0, m=0, p=20,
         I=("[-3:, 2:11:4, 40]", (slice(-3, None), slice(2, 11, 4), 40)),
         O=("[-2, 7]", {-2, 7})),
]
# Rows the table defines by words rather than a formula, checked elsewhere in this file.
WORDED = {"document", "random", "blockwise"}


def primitive_table(text):
    """(forms, condition) for each row of the first table of LANGUAGE.md (the primitives)."""
    start = text.index("| primitive |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        forms = re.findall(r"`([^`]+)`", cells[0])
        rows.append((forms, cells[1]))
    return rows


def condition_to_python(cond):
    """The condition cell as a Python expression over q, k and the table's letters."""
    if cond == "every pair":
        return "True"
    if cond == "no pair":
        return "False"
    cut = cond.rfind("` (")
    if cut > 0 and cond.endswith(")"):      # a closing remark in parentheses
        cond = cond[: cut + 1]
    same = re.fullmatch(r"same as `([^`]+)`", cond)
    if same:
        return ("same", same.group(1))
    expr = cond.replace("`", "")
    expr = re.sub(r"\bmod\b", "%", expr)     # Python's % is the mathematical mod asked for
    return expr


@needs_doc
def test_primitive_table_as_written():
    table = primitive_table(LANGUAGE.read_text())
    by_form, defaults = {}, {}
    for forms, cond in table:
        for form in forms:
            by_form[form] = condition_to_python(cond)
        # "(`o` defaults to 0; ...)": a letter a shorter form leaves out takes its default.
        for letter, value in re.findall(r"`(\w)` defaults to (\d+)", cond):
            defaults[letter] = int(value)
    heads = {re.match(r"\w+", f).group(0) for f in by_form}
    # The table covers every pattern primitive the parser knows (dynamic terms have their own).
    from patterndsl.lower import PATTERN_PRIMITIVES
    assert heads | {"vertical", "slash"} >= set(PATTERN_PRIMITIVES) - {"blocks"}
    checked = 0
    for form, expr in by_form.items():
        if re.match(r"\w+", form).group(0) in WORDED:
            continue
        if isinstance(expr, tuple):                           # "same as cols(I)"
            form_text, expr = form, by_form[expr[1]]
        for bind in BINDINGS:
            n, nq = 13, 9
            text = form
            env = {}
            for name, value in bind.items():
                if name in defaults and not re.search(rf"\b{name}\b", form):
                    env[name] = defaults[name]
                    continue
                if isinstance(value, tuple):
                    spec_text, py = value
                    env[name] = py_set(n, *py) if name == "I" else py
                else:
                    spec_text = str(value)
                    env[name] = value
                text = re.sub(rf"\b{name}\b", spec_text, text)
            want = loops(n, lambda q, k: eval(expr, {"abs": abs}, {**env, "q": q, "k": k}),
                         nq=nq)
            assert torch.equal(mask(text, n, nq=nq), want), (form, text, expr)
            checked += 1
    assert checked >= 2 * 14


def inline_code(text):
    return {s.replace("\\|", "|") for s in re.findall(r"`([^`\n]+)`", text)}


# Every inline span of LANGUAGE.md that is a whole spec on its own, each checked above.
CHECKED_EXAMPLES = {
    "global([-1])", "causal & local(4) | sink(2)", "(causal & local(4)) | sink(2)",
    "all - causal & local(3)", "(all - causal) & local(3)", "all", "none", "causal", "document",
    "blockwise(64, local(1) | global([0, -1]))", "slash([0:4, -8])",
    "random(3, block=1, seed=0)", "random(2, block=1, seed=42)",
    "causal & (vertical(topk=1000) | slash(topk=6000))",
}


@needs_doc
def test_every_whole_spec_in_the_document_is_checked_here():
    parsed = set()
    for span in inline_code(LANGUAGE.read_text()):
        try:
            patterndsl.parse(span)
        except PsparseError:
            continue
        parsed.add(span)
    assert parsed == CHECKED_EXAMPLES
