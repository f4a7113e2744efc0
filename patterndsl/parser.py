"""Spec text -> lark parse tree.

The grammar (``grammar/psparse.lark``) is LALR(1) with lark's contextual lexer.  One
parser is built per process, lazily, and its tables are cached on disk so a cold
``psparse`` start does not pay for the LALR construction.  Every lark exception is
translated here into a :class:`PsparseSyntaxError` that points at the offending
token and says what could have come there in the user's words; lark's own terminal
names never reach the user.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import os
import re
import sys
import threading
from pathlib import Path

import lark
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedToken
from lark.lark import PostLex

from .errors import PsparseSyntaxError, PsparseUsageError, Span
from .resources import resource_dir

__all__ = ["parse_tree", "MAX_NESTING", "grammar_text"]

#: Deepest allowed nesting of parentheses and brackets.  Lowering and every later pass
#: recurse over the expression tree, so the depth is bounded here, at the first bracket
#: too many, rather than by a RecursionError somewhere downstream.
MAX_NESTING = 100

_OPEN = {"_LPAR": ")", "_LSQB": "]"}
_CLOSE = {"_RPAR", "_RSQB"}
# Python's rule for digit separators: single underscores between digits.
_GOOD_INT = re.compile(r"-?[0-9]+(?:_[0-9]+)*\Z")
_GOOD_DECIMAL = re.compile(r"-?[0-9]+(?:_[0-9]+)*\.[0-9]+(?:_[0-9]+)*\Z")


class _LexProblem(Exception):
    """Raised from inside the token stream; parse_tree turns it into a PsparseSyntaxError
    (the postlexer does not have the source text that the error needs for its caret)."""

    def __init__(self, message, token, expected=None, hint=None):
        super().__init__(message)
        self.message = message
        self.token = token
        self.expected = expected
        self.hint = hint


class _Postlexer(PostLex):
    """Drops newlines inside brackets, bounds the nesting depth and checks number spelling.

    The bracket stack of the parse in progress is kept per thread so that an error can say
    which bracket is still open; the postlexer object itself is shared by every parse."""

    always_accept = ("_NL",)

    def __init__(self):
        self._local = threading.local()

    @property
    def open_brackets(self):
        return getattr(self._local, "stack", [])

    def process(self, stream):
        stack = []
        self._local.stack = stack
        for tok in stream:
            ty = tok.type
            if ty == "_NL":
                if stack:
                    continue
            elif ty in _OPEN:
                if len(stack) >= MAX_NESTING:
                    raise _LexProblem(
                        f"brackets nest too deeply (more than {MAX_NESTING} levels)", tok,
                        hint="name an inner part with 'let' to flatten the expression")
                stack.append(tok)
            elif ty in _CLOSE:
                if stack:
                    stack.pop()
            elif ty == "INT":
                if "_" in tok and not _GOOD_INT.match(tok):
                    raise _LexProblem(f"malformed number '{tok}'", tok,
                                      expected="digits with single '_' between them, such as 131_072")
            elif ty == "DECIMAL":
                if "_" in tok and not _GOOD_DECIMAL.match(tok):
                    raise _LexProblem(f"malformed number '{tok}'", tok,
                                      expected="digits with single '_' between them, such as 0.25")
            yield tok


# ---------------------------------------------------------------------------
# Building the parser (once per process, tables cached on disk)
# ---------------------------------------------------------------------------

_lock = threading.Lock()
_parser: lark.Lark | None = None
_postlexer: _Postlexer | None = None
_grammar: str | None = None


def grammar_text() -> str:
    global _grammar
    if _grammar is None:
        _grammar = (resource_dir("grammar") / "psparse.lark").read_text(encoding="utf-8")
    return _grammar


def _cache_file(grammar: str) -> str | None:
    """A writable cache path keyed by grammar, lark and Python version, or None.

    lark also checks a hash stored inside the file, so a stale file is rebuilt, never
    trusted; keying the file name as well lets several versions coexist without
    overwriting each other's tables."""
    try:
        base = os.environ.get("PSPARSE_CACHE_DIR")
        if base:
            folder = Path(base)
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            folder = (Path(xdg) if xdg else Path.home() / ".cache") / "psparse"
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.R_OK):
            return None
        key = hashlib.sha256(grammar.encode("utf-8")).hexdigest()[:16]
        py = f"{sys.version_info[0]}{sys.version_info[1]}"
        return str(folder / f"grammar-{key}-lark{lark.__version__}-py{py}.cache")
    except Exception:  # no home, read-only file system...: parse without a cache
        return None


def _build() -> tuple[lark.Lark, _Postlexer]:
    grammar = grammar_text()
    post = _Postlexer()
    options = dict(parser="lalr", lexer="contextual", propagate_positions=True,
                   maybe_placeholders=False, postlex=post)
    cache = _cache_file(grammar)
    if cache is not None:
        try:
            return lark.Lark(grammar, cache=cache, **options), post
        except Exception:
            # lark tolerates unreadable/unwritable cache files itself; anything else that
            # goes wrong with the cache must not stop parsing, so build without it.
            pass
    return lark.Lark(grammar, **options), post


def _get_parser() -> tuple[lark.Lark, _Postlexer]:
    global _parser, _postlexer
    if _parser is None:
        with _lock:
            if _parser is None:
                _parser, _postlexer = _build()
    return _parser, _postlexer


# ---------------------------------------------------------------------------
# Errors in the user's words
# ---------------------------------------------------------------------------

_PATTERN = "a pattern such as local(128)"
_PUNCT = {
    "_EQ": "'='", "_COMMA": "','", "COLON": "':'", "_LPAR": "'('", "_RPAR": "')'",
    "_LSQB": "'['", "_RSQB": "']'", "_PLUS": "'+'",
}
_KEYWORDS = ("PATTERN", "HEADS", "LAYERS", "LET", "KV", "BUDGET")
_KEYWORD_WORDS = ("pattern", "heads", "layers", "let", "kv", "budget")


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _accepts(state) -> set[str]:
    """The terminals that would really move the parser on from ``state``.

    LALR merges states that share a core, so the table row lists lookaheads that only
    some of the merged contexts allow (a ')' after a top-level name, say).  Feeding each
    candidate to a throw-away copy of the parser runs the pending reductions against the
    actual stack and keeps only the terminals that end in a shift."""
    conf = copy.copy(state.parse_conf)
    conf.callbacks = {}  # no tree building while probing
    found = set()
    for term in state.parse_conf.states[state.position]:
        if not (term.isupper() or term == "$END"):
            continue  # a rule name (goto entry), not a terminal
        probe = state.copy(deepcopy_values=False)
        probe.parse_conf = conf
        try:
            probe.feed_token(lark.Token(term, ""), is_end=(term == "$END"))
        except (UnexpectedToken, AssertionError, KeyError):
            continue
        found.add(term)
    return found


def _previous(state, back: int) -> str | None:
    """The type of the token ``back`` places before the error (1 = just before), if it is a token."""
    stack = getattr(state, "value_stack", None) or []
    if len(stack) < back:
        return None
    return getattr(stack[-back], "type", None)


def _name_phrase(state) -> str:
    """What a NAME would have been at this point: the parser state is the same for a let
    name, a retention term and a budget as for a pattern, so look at what came before."""
    prev = _previous(state, 1)
    if prev == "LET":
        return "a name for the sub-pattern"
    if prev == "_PLUS" or (prev == "_EQ" and _previous(state, 2) == "KV"):
        return "a retention term such as recent(1024), sink(4) or auto"
    if prev == "_EQ" and _previous(state, 2) == "BUDGET":
        return "a budget: uniform, pyramid(beta=20) or adaptive(floor=0.2)"
    return _PATTERN


def describe_expected(expected, state=None) -> str:
    """Terminal names the parser would accept -> a phrase such as "',' or ')'"."""
    exp = set(expected)
    phrases: list[str] = []
    at_statement_start = "LET" in exp
    if {"INT", "DECIMAL", "_LSQB"} <= exp:
        # The start of a call argument or of a named argument's value.
        if _previous(state, 1) == "_EQ":
            phrases.append("a value (a number, an index set such as [0:64], true/false or a pattern)")
        else:
            phrases.append("an argument (a number, an index set such as [0:64], or a pattern)")
        exp -= {"INT", "DECIMAL", "_LSQB", "NAME", "_LPAR"}
    if "NAME" in exp:
        # NAME and '(' are expected together only where a pattern (or a term) starts, and
        # there a '(' opens a group, which the phrase already covers.
        phrases.append(_name_phrase(state))
        exp -= {"NAME", "_LPAR"}
    if at_statement_start:
        phrases.append("a statement (let, heads, layers, pattern =, kv = or budget =)")
        exp -= set(_KEYWORDS)
        exp -= {"_NL", "_SEMI", "$END"}  # an empty statement is allowed but never what is meant
    elif "HEADS" in exp:
        phrases.append("'heads'")
        exp.discard("HEADS")
    if "INT" in exp:
        if "COLON" in exp and "_RSQB" in exp:
            phrases.append("an index such as 5 or a slice such as 0:64")
            exp.discard("COLON")
        elif "COLON" in exp and not exp & {"_EQ", "_COMMA", "_RSQB", "HEADS"}:
            phrases.append("a number or range such as 0:8")
            exp.discard("COLON")
        else:
            phrases.append("an integer")
        exp.discard("INT")
    if "DECIMAL" in exp:
        phrases.append("a number")
        exp.discard("DECIMAL")
    ops = [o for o in ("_VBAR", "_AMP", "_MINUS") if o in exp]
    if ops:
        phrases.append("an operator ('|', '&' or '-')" if len(ops) == 3
                       else _join(["'" + {"_VBAR": "|", "_AMP": "&", "_MINUS": "-"}[o] + "'"
                                   for o in ops]))
        exp -= set(ops)
    for term in ("_LPAR", "_EQ", "COLON", "_PLUS", "_COMMA", "_RPAR", "_RSQB", "_LSQB"):
        if term in exp:
            phrases.append(_PUNCT[term])
            exp.discard(term)
    if exp & {"_NL", "_SEMI", "$END"}:
        phrases.append("the end of the statement")
    # Any other terminal would be one this table does not know: say nothing rather than
    # show a raw terminal name.
    return _join(phrases) if phrases else "something else"


def _show_char(ch: str) -> str:
    if ch.isprintable() and ch not in "'\\":
        return f"'{ch}'"
    return repr(ch)


def _found(tok) -> str:
    ty = tok.type
    if ty == "$END":
        return "end of input"
    if ty == "_NL":
        return "end of line"
    if ty == "NAME":
        return f"name '{tok}'"
    if ty in ("INT", "DECIMAL"):
        return f"number {tok}"
    if ty in _KEYWORDS:
        return f"'{tok}'"
    return _show_char(str(tok)) if len(str(tok)) == 1 else f"'{tok}'"


def _token_span(tok) -> Span:
    line = tok.line or 1
    col = tok.column or 1
    end_line = getattr(tok, "end_line", None) or line
    end_col = getattr(tok, "end_column", None) or col + max(1, len(tok))
    start = tok.start_pos or 0
    end = getattr(tok, "end_pos", None) or start + len(tok)
    return Span(line, col, end_line, end_col, start, end)


def _end_span(text: str, tok) -> Span:
    """Just after the last token (lark's end token borrows the last token's position)."""
    if tok is None or tok.line is None or getattr(tok, "end_line", None) is None:
        lines = text.split("\n")
        line, col = len(lines), len(lines[-1]) + 1
        return Span(line, col, line, col + 1, len(text), len(text))
    pos = tok.end_pos if tok.end_pos is not None else len(text)
    return Span(tok.end_line, tok.end_column, tok.end_line, tok.end_column + 1, pos, pos)


def _open_hint(stack, line: int, before_pos: int) -> str | None:
    """Name the innermost bracket still open if it began on an earlier line: that is
    usually why a later line was read as a continuation."""
    still_open = [t for t in stack if t.start_pos < before_pos]
    if not still_open:
        return None
    t = still_open[-1]
    if t.line >= line:
        return None
    return (f"the '{t}' at line {t.line}, column {t.column} is still open, so the lines "
            f"after it are read as one statement")


def _statement_hint(tok, state) -> str | None:
    """`name = ...` at the start of a statement: a misspelt keyword, or a missing `let`."""
    if tok.type != "_EQ" or _previous(state, 1) != "NAME":
        return None
    if _previous(state, 2) not in (None, "_NL", "_SEMI"):
        return None
    name = str(state.value_stack[-1])
    close = difflib.get_close_matches(name, _KEYWORD_WORDS, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"to name a sub-pattern, write 'let {name} = ...'"


def _parser_state(e):
    if getattr(e, "interactive_parser", None) is not None:
        return e.interactive_parser.parser_state
    state = getattr(e, "state", None)
    return state if hasattr(state, "parse_conf") else None


def _translate(e: Exception, text: str, post: _Postlexer) -> PsparseSyntaxError:
    if isinstance(e, _LexProblem):
        return PsparseSyntaxError(e.message, source=text, span=_token_span(e.token),
                                  expected=e.expected, hint=e.hint)
    stack = list(post.open_brackets)
    state = _parser_state(e)
    if state is not None:
        expected = describe_expected(_accepts(state), state)
    else:
        expected = None
    if isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            if stack:
                opener = stack[-1]
                return PsparseSyntaxError(f"'{opener}' was never closed", source=text,
                                          span=_token_span(opener), expected=expected)
            return PsparseSyntaxError("unexpected end of input", source=text,
                                      span=_end_span(text, tok), expected=expected)
        span = _token_span(tok)
        if tok.type == "_NL":
            span = Span(span.line, span.column, span.line, span.column + 1, span.start_pos,
                        span.start_pos + 1)
        hint = _open_hint(stack, span.line, span.start_pos)
        if hint is None and state is not None:
            hint = _statement_hint(tok, state)
        return PsparseSyntaxError(f"unexpected {_found(tok)}", source=text, span=span,
                                  expected=expected, hint=hint)
    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else ""
        span = Span(e.line, e.column, e.line, e.column + 1, pos, pos + 1)
        return PsparseSyntaxError(f"unexpected character {_show_char(ch)}", source=text,
                                  span=span, expected=expected,
                                  hint=_open_hint(stack, e.line, pos))
    line = getattr(e, "line", None)
    col = getattr(e, "column", None)
    span = None
    if isinstance(line, int) and isinstance(col, int):
        pos = getattr(e, "pos_in_stream", 0) or 0
        span = Span(line, col, line, col + 1, pos, pos + 1)
    return PsparseSyntaxError("the spec could not be parsed here", source=text, span=span,
                              expected=expected or _PATTERN)


def parse_tree(text: str) -> lark.Tree:
    """Parse spec text into a lark tree (positions kept on every node and token).

    Raises :class:`PsparseSyntaxError` for anything that is not well formed, including
    text with no statement at all."""
    if not isinstance(text, str):
        raise PsparseUsageError(f"a spec is text, not {type(text).__name__}")
    parser, post = _get_parser()
    try:
        tree = parser.parse(text)
    except (_LexProblem, LarkError) as e:
        raise _translate(e, text, post) from None
    if not tree.children:
        raise PsparseSyntaxError("empty spec", source=text, span=Span(1, 1, 1, 2, 0, 1),
                                 expected=_PATTERN)
    return tree
