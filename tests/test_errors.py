"""Every error the front end reports: its class, line and column, the caret under the
offending text, the message, what was expected (in the user's words) and any hint.

Each case lists: text, error class, line, column, caret width, a piece of the message,
a piece of the "expected ..." line and a piece of the hint (None: not checked)."""
from __future__ import annotations

import re

import pytest

import patterndsl
from patterndsl.errors import (PsparseError, PsparseSemanticError, PsparseSyntaxError,
                               PsparseUsageError)
from patterndsl.lower import MAX_DEPTH, lower
from patterndsl.parser import MAX_NESTING, grammar_text, parse_tree

SYN, SEM = PsparseSyntaxError, PsparseSemanticError


def front(text: str):
    return lower(parse_tree(text), text)


def check(text, cls, line, col, width, message, expected=None, hint=None):
    with pytest.raises(PsparseError) as info:
        front(text)
    e = info.value
    assert type(e) is cls, (type(e), str(e))
    assert (e.line, e.column) == (line, col), str(e)
    assert message in e.message, str(e)
    rendered = str(e).split("\n")
    assert rendered[0] == f"line {line}, column {col}: {e.message}"
    # The quoted line: lines split at "\n" only (as positions count them), tabs as one space,
    # anything unprintable (a NUL, say) as one "?".
    source_line = text.split("\n")[line - 1].removesuffix("\r").expandtabs(1)
    source_line = "".join(c if c.isprintable() else "?" for c in source_line)
    if len(source_line) < 100:
        assert rendered[1] == "    " + source_line
        assert rendered[2] == "    " + " " * (col - 1) + "^" * width, "\n".join(rendered)
    else:  # a long line is clipped around the caret, which still sits under the same text
        caret = rendered[2].index("^")
        assert rendered[2] == " " * caret + "^" * width
        assert rendered[1][caret:caret + width] == source_line[col - 1:col - 1 + width]
    if expected is not None:
        assert rendered[3].startswith("expected "), str(e)
        assert expected in rendered[3], str(e)
    if hint is not None:
        assert hint in (e.hint or ""), str(e)
    return e


# ---------------------------------------------------------------------------
# Syntax errors
# ---------------------------------------------------------------------------

SYNTAX = [
    ("local(4", 1, 6, 1, "'(' was never closed", "',' or ')'", None),
    ("rows([1, 2", 1, 6, 1, "'[' was never closed", "':', ',' or ']'", None),
    ("causal & (local(4) | sink(2)", 1, 10, 1, "'(' was never closed", "')'", None),
    ("causal local(4)", 1, 8, 5, "unexpected name 'local'",
     "an operator ('|', '&' or '-'), '(' or the end of the statement", None),
    ("local 4", 1, 7, 1, "unexpected number 4", "an operator", None),
    ("@", 1, 1, 1, "unexpected character '@'", "a pattern such as local(128)", None),
    ("causal & local(4) $", 1, 19, 1, "unexpected character '$'", "the end of the statement", None),
    ("causal &", 1, 9, 1, "unexpected end of input", "a pattern such as local(128)", None),
    ("causal &\nlocal(3)", 1, 9, 1, "unexpected end of line", "a pattern such as local(128)", None),
    ("causal | | all", 1, 10, 1, "unexpected '|'", "a pattern such as local(128)", None),
    ("& causal", 1, 1, 1, "unexpected '&'", "a pattern such as local(128) or a statement", None),
    ("local(4))", 1, 9, 1, "unexpected ')'", "the end of the statement", None),
    ("causal\n  )", 2, 3, 1, "unexpected ')'", "a pattern such as local(128)", None),
    ("local(4 5)", 1, 9, 1, "unexpected number 5", "',' or ')'", None),
    ("local(4,,)", 1, 9, 1, "unexpected ','", "an argument (a number, an index set", None),
    ("local(-x)", 1, 7, 1, "unexpected '-'", "an argument", None),
    ("random(3, block=)", 1, 17, 1, "unexpected ')'", "a value (a number", None),
    ("causal-1", 1, 8, 1, "unexpected number 1", "a pattern such as local(128)", None),
    ("rows([1 2])", 1, 9, 1, "unexpected number 2", "':', ',' or ']'", None),
    ("rows([0.5])", 1, 7, 3, "unexpected number 0.5", "an index such as 5 or a slice such as 0:64",
     None),
    ("rows([1:2:3:4])", 1, 12, 1, "unexpected ':'", "',' or ']'", None),
    ("local(1.5.5)", 1, 10, 1, "unexpected character '.'", "',' or ')'", None),
    ("local(1__0)", 1, 7, 4, "malformed number '1__0'", "single '_' between them", None),
    ("local(10_)", 1, 7, 3, "malformed number '10_'", "single '_' between them", None),
    ("budget = pyramid(beta=1__0.5)\ncausal", 1, 23, 6, "malformed number '1__0.5'", "0.25", None),
    ("heads = causal", 1, 7, 1, "unexpected '='", "a number or range such as 0:8", None),
    ("heads 0:4 causal", 1, 11, 6, "unexpected name 'causal'", "'=' or ':'", None),
    ("layers 0:4 causal", 1, 12, 6, "unexpected name 'causal'", "'heads', '=' or ':'", None),
    ("layers 0 heads = all", 1, 16, 1, "unexpected '='", "a number or range such as 0:8", None),
    ("heads 1.5 = all", 1, 7, 3, "unexpected number 1.5", "a number or range", None),
    ("let = causal", 1, 5, 1, "unexpected '='", "a name for the sub-pattern", None),
    ("let 5 = causal", 1, 5, 1, "unexpected number 5", "a name for the sub-pattern", None),
    ("let w local(4)", 1, 7, 5, "unexpected name 'local'", "'='", None),
    ("kv = ", 1, 5, 1, "unexpected end of input",
     "a retention term such as recent(1024), sink(4) or auto", None),
    ("kv = sink(4) +", 1, 15, 1, "unexpected end of input", "a retention term", None),
    ("kv = sink(4) | recent(8)", 1, 14, 1, "unexpected '|'", "'+' or the end of the statement", None),
    ("budget = 3", 1, 10, 1, "unexpected number 3",
     "a budget: uniform, pyramid(beta=20) or adaptive(floor=0.2)", None),
    ("budget = uniform + pyramid", 1, 18, 1, "unexpected '+'", "the end of the statement", None),
    ("x = causal", 1, 3, 1, "unexpected '='", "the end of the statement",
     "to name a sub-pattern, write 'let x = ...'"),
    ("patern = causal", 1, 8, 1, "unexpected '='", None, "did you mean 'pattern'?"),
    # a misspelt keyword is noticed at the token after it, whatever that token is
    ("heds 0 = causal", 1, 6, 1, "unexpected number 0", None, "did you mean 'heads'?"),
    ("causal\nlyers 0:4 = local(2)", 2, 7, 1, "unexpected number 0", None,
     "did you mean 'layers'?"),
    ("Heads 0 = causal", 1, 7, 1, "unexpected number 0", None, "did you mean 'heads'?"),
    ("budget = adaptive(floor=.5)\ncausal", 1, 25, 1, "unexpected character '.'", "a value",
     "a decimal needs a digit before its point, such as 0.5"),
    ("pattern causal", 1, 9, 6, "unexpected name 'causal'", "'='", None),
    ("local(4,\n  5\ncausal", 3, 1, 6, "unexpected name 'causal'", "',' or ')'",
     "the '(' at line 1, column 6 is still open"),
    ("causal\x00", 1, 7, 1, "unexpected character '\\x00'", "an operator", None),
    ("é", 1, 1, 1, "unexpected character 'é'", "a pattern such as local(128)", None),
    ("'causal'", 1, 1, 1, "unexpected character \"'\"", "a pattern", None),
    ("causal\n\n   local(4) %", 3, 13, 1, "unexpected character '%'", "an operator", None),
    ("\tcausal |", 1, 10, 1, "unexpected end of input", "a pattern", None),
]


@pytest.mark.parametrize("case", SYNTAX, ids=[repr(c[0]) for c in SYNTAX])
def test_syntax_error(case):
    text, line, col, width, message, expected, hint = case
    e = check(text, SYN, line, col, width, message, expected, hint)
    if expected is None:
        return
    assert e.expected


def test_expected_sets_never_show_terminal_names():
    terminals = set(re.findall(r"^\s*([A-Z_][A-Z_0-9]*)(?:\.\d+)?\s*:", grammar_text(), re.M))
    assert {"NAME", "INT", "RPAR", "_NL", "_EQ", "COLON"} <= terminals
    for case in SYNTAX:
        with pytest.raises(PsparseSyntaxError) as info:
            front(case[0])
        words = set(re.findall(r"[A-Za-z_$][A-Za-z0-9_]*", (info.value.expected or "")
                               + " " + info.value.message + " " + (info.value.hint or "")))
        assert not words & (terminals | {"$END"}), (case[0], str(info.value))
        assert "__ANON" not in str(info.value)


def test_empty_spec():
    for text in ("", "   ", "\n\n", "# just a comment", "# a\n\n# b\n", ";", " ; ;\n"):
        with pytest.raises(PsparseSyntaxError) as info:
            front(text)
        e = info.value
        assert e.message == "empty spec"
        assert e.expected == "a pattern such as local(128)"
        assert (e.line, e.column) == (1, 1)


def test_nesting_limit_points_at_the_first_bracket_too_many():
    deep = "(" * 10_000 + "causal" + ")" * 10_000
    with pytest.raises(PsparseSyntaxError) as info:
        front(deep)
    e = info.value
    assert (e.line, e.column) == (1, MAX_NESTING + 1)
    assert "nest too deeply" in e.message and str(MAX_NESTING) in e.message
    assert "let" in e.hint
    # Exactly at the limit is fine.
    ok = "(" * MAX_NESTING + "causal" + ")" * MAX_NESTING
    assert front(ok).rules[0].expr == patterndsl.ir.Causal()
    # Calls and index sets count too, across continuation lines.
    calls = "blockwise(2,\n" * (MAX_NESTING - 2) + "rows([0])" + ")" * (MAX_NESTING - 2)
    assert front(calls).rules[0].expr.block == 2
    calls = "blockwise(2,\n" * (MAX_NESTING - 1) + "rows([0])" + ")" * (MAX_NESTING - 1)
    with pytest.raises(PsparseSyntaxError, match="nest too deeply") as info:
        front(calls)
    assert (info.value.line, info.value.column) == (MAX_NESTING, 6)


def test_non_text_is_a_usage_error():
    with pytest.raises(PsparseUsageError):
        parse_tree(b"causal")
    with pytest.raises(PsparseUsageError):
        parse_tree(None)


def test_undecodable_bytes_through_parse():
    with pytest.raises(PsparseSyntaxError, match="not valid UTF-8"):
        patterndsl.parse(b"causal \xff")


# ---------------------------------------------------------------------------
# Semantic errors: arguments
# ---------------------------------------------------------------------------

ARGUMENTS = [
    ("stride(0)", 1, 8, 1, "stride must be >= 1, got 0", None, None),
    ("block(0)", 1, 7, 1, "block must be >= 1, got 0", None, None),
    ("sink(-1)", 1, 6, 2, "sink must be >= 0, got -1", None, None),
    ("prefix(-3)", 1, 8, 2, "prefix must be >= 0, got -3", None, None),
    ("local(-1)", 1, 7, 2, "local's window w must be >= 0, got -1", None, None),
    ("local(2, -1)", 1, 10, 2, "local's r must be >= 0", None, None),
    ("local(1.5)", 1, 7, 3, "local's window w must be an integer, got 1.5", None, None),
    ("local([1])", 1, 7, 3, "must be an integer, got [1]", None, None),
    ("local(causal)", 1, 7, 6, "must be an integer, got causal", None, None),
    ("local(99999999999999999999)", 1, 7, 20, "is out of range", "below 2**63", None),
    ("local(9223372036854775808)", 1, 7, 19, "is out of range", "below 2**63", None),
    ("dilated(2, 0)", 1, 12, 1, "dilated's d must be >= 1", None, None),
    ("dilated(-2, 1)", 1, 9, 2, "dilated's w must be >= 0", None, None),
    ("every(0)", 1, 7, 1, "every's s must be >= 1", None, None),
    ("every(4, 4)", 1, 10, 1, "every's offset o must be < s (4), got 4", None, None),
    ("every(4, -1)", 1, 10, 2, "every's offset o must be >= 0", None, None),
    ("random(-1)", 1, 8, 2, "random's r must be >= 0", None, None),
    ("random(1, block=0)", 1, 17, 1, "random's block must be >= 1", None, None),
    ("random(1, seed=-1)", 1, 16, 2, "random's seed must be >= 0", None, None),
    ("random(1, seed=4294967296)", 1, 16, 10, "random's seed must be < 2**32", None, None),
    ("random(1, causal=1)", 1, 18, 1, "random's causal must be true or false, got 1", None, None),
    ("random(1, causal=yes)", 1, 18, 3, "must be true or false, got yes", None, None),
    ("random(1, 64, 0, maybe)", 1, 18, 5, "must be true or false", None, None),
    ("rows(5)", 1, 6, 1, "rows' argument must be a bracketed set", None, None),
    ("cols(causal)", 1, 6, 6, "cols' argument must be a bracketed set", None, None),
    ("rows([::0])", 1, 9, 1, "a slice step cannot be 0", None, None),
    ("cols([1:2:0])", 1, 11, 1, "a slice step cannot be 0", None, None),
    ("global([99999999999999999999])", 1, 9, 20, "out of range", None, None),
    ("slash([0:])", 1, 8, 2, "an offset slice needs both ends", "0:64", "infinite"),
    ("slash([:4])", 1, 8, 2, "an offset slice needs both ends", None, None),
    ("slash([::2])", 1, 8, 3, "an offset slice needs both ends", None, None),
    ("slash([0:4:0])", 1, 12, 1, "a slice step cannot be 0", None, None),
    ("vertical(5)", 1, 10, 1, "must be a bracketed set or topk=", "vertical([...])",
     "vertical(topk=5); for the fixed position write vertical([5])"),
    ("slash(6000)", 1, 7, 4, "must be a bracketed set or topk=", "slash([...])", "slash(topk=6000)"),
    ("vertical()", 1, 1, 10, "vertical needs 1 argument", "vertical([...])", None),
    ("vertical([1], topk=2)", 1, 10, 3, "either a bracketed set or topk=..., not both", None, None),
    ("vertical(last=3)", 1, 1, 16, "vertical needs topk=", None, None),
    ("vertical(topk=-1)", 1, 15, 2, "vertical's topk must be >= 0", None, None),
    ("vertical(topk=3, last=0)", 1, 23, 1, "vertical's last must be >= 1", None, None),
    ("vertical(topk=3, by=attn)", 1, 21, 4, "vertical's by must be norm or lownorm", "by=norm", None),
    ("vertical(topk=3, by=norm, last=4)", 1, 27, 6, "both last= and by=", None, None),
    ("vertical(topk=3, last=4, by=norm)", 1, 26, 7, "both last= and by=", None, None),
    ("slash(topk=3, by=norm)", 1, 15, 2, "slash has no argument named 'by'", "topk=, last=", None),
    ("slash(last=3)", 1, 1, 13, "slash needs topk=", None, None),
    ("blocks(topk=2, block=0)", 1, 22, 1, "blocks' block must be >= 1", None, None),
    ("blocks()", 1, 1, 8, "blocks needs at least 1 argument", "blocks(topk=t, block=64)", None),
    ("blockwise(0, causal)", 1, 11, 1, "blockwise's b must be >= 1", None, None),
    ("blockwise(4)", 1, 1, 12, "blockwise needs 2 arguments", "blockwise(b, EXPR)", None),
    ("blockwise(4, 5)", 1, 14, 1, "expected a pattern, got the number 5", None, None),
    ("blockwise(4, [1])", 1, 14, 3, "an index set is not a pattern", None, None),
    ("blockwise(4, document)", 1, 14, 8, "document cannot be used inside blockwise", None, None),
    ("blockwise(4, causal & vertical(topk=3))", 1, 23, 8,
     "the dynamic term vertical cannot be used inside blockwise", None, None),
    ("blockwise(4, slash(topk=3))", 1, 14, 5, "dynamic term slash", None, None),
    ("blockwise(4, blocks(2))", 1, 14, 6, "dynamic term blocks", None, None),
    ("blockwise(2, blockwise(4, document))", 1, 27, 8, "document cannot be used", None, None),
    ("let d = document & causal\nblockwise(4, d)", 2, 14, 1,
     "'d' contains document, which cannot be used inside blockwise", None, None),
    ("let v = vertical(topk=3)\nlet u = v | causal\nblockwise(4, u)", 3, 14, 1,
     "'u' contains a dynamic term", None, None),
    # binding
    ("random(3, 64, block=1)", 1, 15, 7, "random's block is given twice (already as the 2nd argument)",
     "random(r, block=64, seed=0, causal=false)", None),
    ("random(3, block=1, block=2)", 1, 20, 7, "random's block is given twice (already by name)",
     None, None),
    ("random(3, blk=1)", 1, 11, 3, "random has no argument named 'blk'", "one of block=, seed=, causal=",
     "did you mean 'block'?"),
    ("random(3, block=2, 5)", 1, 20, 1, "a positional argument cannot follow a named one", None, None),
    ("random(1, 2, 3, true, 5)", 1, 23, 1, "random takes at most 4 arguments", None, None),
    ("local(1, 2, 3)", 1, 13, 1, "local takes at most 2 arguments", "local(w) or local(l, r)", None),
    ("local()", 1, 1, 7, "local needs at least 1 argument", "local(w) or local(l, r)", None),
    ("dilated(3)", 1, 1, 10, "dilated needs 2 arguments", "dilated(w, d)", None),
    ("local(w=3)", 1, 7, 1, "local takes no named arguments", "local(w) or local(l, r)", None),
    ("every(4, o=1)", 1, 10, 1, "every's o is given by position, not by name", None, None),
    # names
    ("locl(3)", 1, 1, 4, "unknown primitive 'locl'", "a primitive such as local(128)",
     "did you mean 'local'?"),
    ("frobnicate(3)", 1, 1, 10, "unknown primitive 'frobnicate'", None, None),
    ("casual", 1, 1, 6, "unknown name 'casual'", "a let name", "did you mean 'causal'?"),
    ("CAUSAL", 1, 1, 6, "unknown name 'CAUSAL'", "a let name", "did you mean 'causal'?"),
    ("LOCAL(3)", 1, 1, 5, "unknown primitive 'LOCAL'", None,
     "did you mean 'local'? (names are case-sensitive)"),
    ("causal | frob", 1, 10, 4, "unknown name 'frob'", None, None),
    ("causal()", 1, 1, 8, "'causal' takes no arguments", "'causal' on its own", None),
    ("all(3)", 1, 1, 6, "'all' takes no arguments", None, None),
    ("local", 1, 1, 5, "'local' needs arguments", "local(w) or local(l, r)", None),
    ("causal & random", 1, 10, 6, "'random' needs arguments", "random(r, block=64", None),
    ("auto", 1, 1, 4, "'auto' is a retention term (for 'kv = ...'), not a pattern", None, None),
    ("heavy(3) | causal", 1, 1, 5, "'heavy' is a retention term", None, None),
    ("pyramid", 1, 1, 7, "'pyramid' is a budget (for 'budget = ...'), not a pattern", None, None),
    ("let w = local(2)\nw(3)", 2, 1, 4, "'w' is a let name, not a primitive", "without arguments",
     None),
    ("w\nlet w = causal", 1, 1, 1, "unknown name 'w'", None,
     "'w' is defined on line 2; a let name can only be used after its line"),
    ("let x = x | causal\nx", 1, 9, 1, "unknown name 'x'", None, "a let cannot refer to itself"),
]


@pytest.mark.parametrize("case", ARGUMENTS, ids=[repr(c[0]) for c in ARGUMENTS])
def test_argument_error(case):
    text, line, col, width, message, expected, hint = case
    check(text, SEM, line, col, width, message, expected, hint)


# ---------------------------------------------------------------------------
# Semantic errors: statements
# ---------------------------------------------------------------------------

STATEMENTS = [
    ("let causal = all\ncausal", 1, 5, 6, "'causal' is a primitive and cannot be a let name",
     "another name", None),
    ("let heads = all\ncausal", 1, 5, 5, "'heads' is a keyword", None, None),
    ("let true = all\ncausal", 1, 5, 4, "'true' is a keyword", None, None),
    ("let lownorm = all\ncausal", 1, 5, 7, "'lownorm' is a keyword", None, None),
    ("let recent = all\ncausal", 1, 5, 6, "'recent' is a retention term", None, None),
    ("let pyramid = all\ncausal", 1, 5, 7, "'pyramid' is a budget", None, None),
    ("let blocks = all\ncausal", 1, 5, 6, "'blocks' is a primitive", None, None),
    ("let a = all\nlet a = none\na", 2, 5, 1, "'a' is already defined on line 1", None,
     "defined once"),
    ("causal\npattern = all", 2, 1, 13, "a second default pattern (the first is on line 1)", None,
     "heads H = ..."),
    ("pattern = all\n\nall", 3, 1, 3, "a second default pattern (the first is on line 1)", None, None),
    ("causal\nkv = auto\nkv = recent(4)", 3, 1, 14, "a second kv line (the first is on line 2)", None,
     "'+'"),
    ("causal\nbudget = uniform\nbudget = pyramid", 3, 1, 16,
     "a second budget line (the first is on line 2)", None, None),
    ("kv = auto", 1, 1, 9, "the spec has no pattern", "a pattern line", None),
    ("let w = causal\nbudget = uniform", 1, 1, 14, "the spec has no pattern", None, None),
    # retention
    ("causal\nkv = auto + heavy(3)", 2, 13, 8, "heavy cannot be combined with auto", None,
     "auto already keeps every key"),
    ("causal\nkv = snap(4) + sink(2) + auto", 2, 6, 7, "snap cannot be combined with auto", None, None),
    ("causal\nkv = norm(4, low=true) + auto", 2, 6, 17, "norm cannot be combined with auto", None, None),
    ("causal\nkv = snap(3, pool=4)", 2, 19, 1, "snap's pool must be odd, got 4", None, "centred"),
    ("causal\nkv = snap(3, pool=0)", 2, 19, 1, "snap's pool must be >= 1", None, None),
    ("causal\nkv = snap(3, window=0)", 2, 21, 1, "snap's window must be >= 1", None, None),
    ("causal\nkv = snap(3, size=1)", 2, 14, 4, "snap has no argument named 'size'", "window=, pool=",
     None),
    ("causal\nkv = heavy(-1)", 2, 12, 2, "heavy's h must be >= 0", None, None),
    ("causal\nkv = recent(1.5)", 2, 13, 3, "recent's w must be an integer", None, None),
    ("causal\nkv = sink(4, 5)", 2, 14, 1, "sink takes at most 1 argument", "sink(m)", None),
    ("causal\nkv = norm(3, low=2)", 2, 18, 1, "norm's low must be true or false", None, None),
    ("causal\nkv = auto()", 2, 6, 6, "'auto' takes no arguments", None, None),
    ("causal\nkv = sink", 2, 6, 4, "'sink' needs arguments", "sink(m)", None),
    ("causal\nkv = local(3)", 2, 6, 5, "'local' is a pattern, not a retention term",
     "auto, sink(m), recent(w), heavy(h), snap(h) or norm(h)", None),
    ("let w = causal\nw\nkv = w", 3, 6, 1, "'w' is a pattern, not a retention term", None, None),
    ("causal\nkv = hevy(3)", 2, 6, 4, "unknown retention term 'hevy'", None, "did you mean 'heavy'?"),
    ("causal\nkv = bogus", 2, 6, 5, "unknown retention term 'bogus'", None, None),
    # budgets
    ("causal\nbudget = pyramid(beta=0.5)", 2, 23, 3, "pyramid's beta must be >= 1, got 0.5", None,
     None),
    ("causal\nbudget = adaptive(floor=1.5)", 2, 25, 3, "adaptive's floor must be between 0 and 1",
     None, None),
    ("causal\nbudget = adaptive(floor=-0.1)", 2, 25, 4, "adaptive's floor must be between 0 and 1",
     None, None),
    ("causal\nbudget = pyramid(beta=[1])", 2, 23, 3, "pyramid's beta must be a number", None, None),
    ("causal\nbudget = pyramid(gamma=2)", 2, 18, 5, "pyramid has no argument named 'gamma'", "beta=",
     None),
    ("causal\nbudget = uniform()", 2, 10, 9, "'uniform' takes no arguments", None, None),
    ("causal\nbudget = pyramd", 2, 10, 6, "unknown budget 'pyramd'", "uniform, pyramid(beta=20)",
     "did you mean 'pyramid'?"),
    ("causal\nbudget = adaptiv(floor=0.1)", 2, 10, 7, "unknown budget 'adaptiv'", None,
     "did you mean 'adaptive'?"),
    # selectors
    ("heads 4:2 = all", 1, 7, 3, "the head range 4:2 is empty", None, None),
    ("layers 3:3 = all", 1, 8, 3, "the layer range 3:3 is empty", None, None),
    ("heads 0::0 = all", 1, 10, 1, "a head step must be >= 1, got 0", None, None),
    ("heads -1 = all", 1, 7, 2, "a head number must be >= 0, got -1", None, None),
    ("layers 0 heads 2:-1 = all", 1, 18, 2, "a head number must be >= 0", None, None),
    ("layers 99999999999999999999 = all", 1, 8, 20, "out of range", None, None),
    # overlaps
    ("heads 0:4 = causal\nheads 3 = all", 2, 7, 1,
     "this heads line overlaps the one on line 1 (both cover head 3)", None, None),
    ("heads 0::2 = all\nheads 1::2 = none\nheads 5:8:3 = all", 3, 7, 5,
     "overlaps the one on line 2 (both cover head 5)", None, None),
    ("heads 0::6 = all\nheads 4::10 = none", 2, 7, 5, "overlaps the one on line 1 (both cover head 24)",
     None, None),
    ("heads 3: = all\nheads :4 = none", 2, 7, 2, "overlaps the one on line 1 (both cover head 3)",
     None, None),
    ("heads 0:2 = all\nheads 5:6 = all\nheads 5 = all\nheads 1 = all", 3, 7, 1,
     "overlaps the one on line 2 (both cover head 5)", None, None),
    ("layers 0:2 = all\ncausal\nlayers 1: = none", 3, 8, 2,
     "this layers line overlaps the one on line 1 (both cover layer 1)", None, None),
    ("layers 0 heads 1:3 = all\nlayers 0:2 heads 2 = none", 2, 8, 11,
     "overlaps the one on line 1 (both cover layer 0, head 2)", None, None),
    ("layers 0: heads 0::2 = all\nlayers 7 heads 4:20:7 = none", 2, 8, 14,
     "(both cover layer 7, head 4)", None, None),
    # size limits
    ("all" + " - causal" * (MAX_DEPTH + 5), 1, 4 + 9 * (MAX_DEPTH - 1) + 3, 6,
     f"nests too deeply (more than {MAX_DEPTH} levels)", None, "let"),
    ("let a0 = causal\n" + "\n".join(f"let a{i + 1} = a{i} | a{i}" for i in range(25)) + "\na25",
     20, 11, 9, "expands to more than 1,000,000 pattern nodes", None, "copies"),
]


@pytest.mark.parametrize("case", STATEMENTS, ids=[repr(c[0][:60]) for c in STATEMENTS])
def test_statement_error(case):
    text, line, col, width, message, expected, hint = case
    check(text, SEM, line, col, width, message, expected, hint)


def test_errors_from_the_public_parse():
    """patterndsl.parse reports the same errors as the front end it runs."""
    with pytest.raises(PsparseSemanticError, match="stride must be >= 1") as info:
        patterndsl.parse("causal & stride(0)")
    assert (info.value.line, info.value.column) == (1, 17)
    with pytest.raises(PsparseSyntaxError, match="was never closed"):
        patterndsl.parse(b"local(4")


def test_long_line_is_clipped_around_the_caret():
    text = "causal | " * 20_000 + "bogus | causal"
    with pytest.raises(PsparseSemanticError) as info:
        front(text)
    e = info.value
    assert e.column == 9 * 20_000 + 1
    rendered = str(e).split("\n")
    assert len(rendered[1]) < 200
    caret = rendered[2].index("^")
    assert rendered[1][caret:caret + 5] == "bogus"


@pytest.mark.parametrize("sep", ["\r", "\x0c", "\x0b", "\x1c", "\x85", "\u2028", "\u2029"])
def test_quoted_line_is_the_line_the_position_counts_in(sep):
    # Positions count lines by "\n" alone, so the quoted line must too: characters that
    # str.splitlines() would also break at stay on the line, shown as one visible column each
    # (a raw carriage return would send the terminal's cursor back over the quote).
    text = f"causal{sep} & locl(2)\nlocal(1)"
    with pytest.raises(PsparseError) as info:
        patterndsl.parse(text)
    e = info.value
    quoted, carets = str(e).split("\n")[1:3]
    assert e.line == 1
    assert quoted.startswith("    causal") and quoted.endswith("& locl(2)")
    assert quoted.isprintable()
    caret = carets.index("^")
    if e.column > 7:  # the error is past the odd character: the caret still finds its text
        assert quoted[caret:caret + 4] == "locl"
    else:             # the odd character itself is the error
        assert caret == len("    causal")


def test_crlf_lines_quote_without_the_carriage_return():
    text = "causal\r\nlocal(1) locl(2)\r\n"
    with pytest.raises(PsparseError) as info:
        patterndsl.parse(text)
    quoted, carets = str(info.value).split("\n")[1:3]
    assert info.value.line == 2
    assert quoted == "    local(1) locl(2)"
    assert quoted[carets.index("^"):].startswith("locl")
