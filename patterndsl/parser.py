"""Spec text -> lark parse tree.

The grammar (``grammar/psparse.lark``) is LALR(1).  One parser is built per process,
lazily, and its tables are cached on disk (``$PSPARSE_CACHE_DIR``, else
``$XDG_CACHE_HOME/psparse`` or ``~/.cache/psparse``) so a cold start does not pay for
the LALR construction; a cache that cannot be read or written is simply not used.
Tokens come from a tokenizer built from the grammar's own terminals (see
:class:`_Front`).  Every failure is reported as a :class:`PsparseSyntaxError` that
points at the offending token and says what could have come there in the user's words;
lark's terminal names never reach the user.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import gc
import hashlib
import os
import re
import sys
import threading
from pathlib import Path

import lark
from lark.exceptions import LarkError, UnexpectedToken
from lark.lexer import PatternStr
from lark.parse_tree_builder import ExpandSingleChild
from lark.parsers.lalr_analysis import Shift
from lark.tree import Meta

from .errors import PsparseSyntaxError, PsparseUsageError, Span
from .resources import resource_dir

__all__ = ["parse_tree", "PositionedTree", "MAX_NESTING", "grammar_text", "gc_paused", "clip",
           "error_span"]

#: Deepest allowed nesting of parentheses and brackets.  Lowering and every later pass
#: recurse over the expression tree, so the depth is bounded here, at the first bracket
#: too many, rather than by a RecursionError somewhere downstream.
MAX_NESTING = 100

_OPEN = {"_LPAR": ")", "LSQB": "]"}
_CLOSE = {"RPAR", "RSQB"}
# Python's rule for digit separators: single underscores between digits.  The grammar
# lexes numbers loosely so that `1__0` is reported as one malformed number.
_NUMBER_RULES = {
    "INT": re.compile(r"-?[0-9]+(?:_[0-9]+)*\Z"),
    "DECIMAL": re.compile(r"-?[0-9]+(?:_[0-9]+)*\.[0-9]+(?:_[0-9]+)*\Z"),
}


class PositionedTree(lark.Tree):
    """A lark Tree whose ``meta`` (line, column, end_line, end_column, start_pos, end_pos)
    is worked out on first use from its first and last tokens.

    lark's ``propagate_positions`` computes a Meta on every reduction and doubles the
    parse time; the grammar keeps each node's delimiting tokens (keywords, ')', brackets)
    in the tree instead, so the same positions can be found here, lazily, for the few
    nodes anyone asks about."""

    @property
    def meta(self):
        m = self._meta
        if m is None:
            m = self._meta = Meta()
            first = _edge_token(self, 0)
            last = _edge_token(self, -1)
            if first is not None and last is not None:
                m.line, m.column, m.start_pos = first.line, first.column, first.start_pos
                m.end_line, m.end_column, m.end_pos = last.end_line, last.end_column, last.end_pos
                m.empty = False
        return m


def _edge_token(tree, side: int):
    node = tree
    while isinstance(node, lark.Tree):
        if not node.children:
            return None
        node = node.children[side]
    return node if isinstance(node, lark.Token) else None


class _LexProblem(Exception):
    """A problem found while reading tokens; parse_tree turns it into a PsparseSyntaxError."""

    def __init__(self, message, token, expected=None, hint=None):
        super().__init__(message)
        self.message = message
        self.token = token
        self.expected = expected
        self.hint = hint


class _BadCharacter(Exception):
    def __init__(self, pos, line, column):
        super().__init__(pos)
        self.pos, self.line, self.column = pos, line, column


# ---------------------------------------------------------------------------
# Building the parser (once per process, tables cached on disk)
# ---------------------------------------------------------------------------

class _Front:
    """The lark LALR parser plus the tokenizer derived from the same grammar.

    Tokens are read here rather than by lark's contextual lexer (a third of the parse
    time went to its per-token bookkeeping and a postlexer on top of it).  The tokenizer
    is one regular expression built from the grammar's own terminal definitions, so the
    grammar stays the single source of truth.  What the contextual lexer did is done
    explicitly: a word becomes a keyword only where the parser state accepts that keyword,
    and a '-' glued to digits is a minus sign where a number cannot come.  Newlines inside
    brackets are dropped (continuation lines), the bracket depth is bounded, and numbers
    are checked for Python's digit-separator rule."""

    def __init__(self, parser: lark.Lark):
        self.lark = parser
        conf = parser.lexer_conf
        terminals = list(conf.terminals)
        by_name = {t.name: t for t in terminals}
        name_re = re.compile(by_name["NAME"].pattern.to_regexp() + r"\Z")
        # String terminals that NAME also matches are keywords: lexed as NAME, then
        # promoted where the parser accepts them (lark's contextual lexer does the same).
        self.keywords = {t.pattern.value: t.name for t in terminals
                         if isinstance(t.pattern, PatternStr) and name_re.match(t.pattern.value)}
        ordered = sorted((t for t in terminals if t.name not in self.keywords.values()),
                         key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value),
                                        t.name))
        self.ignore = frozenset(conf.ignore)
        self._table = None  # see _tables
        alternatives = "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in ordered)
        # Ignored text (spaces, comments) is skipped inside the same match as the token
        # after it: a third of a spec's matches were spaces, each a trip round the loop.
        ignored = "|".join(by_name[name].pattern.to_regexp() for name in sorted(self.ignore))
        # Atomic, so that a comment is never cut short to let a token start inside it
        # (Python 3.10's re has no atomic groups: a look-ahead and back-reference do the same).
        try:
            skip = f"(?>(?:{ignored})*)"
            self.skip = re.compile(skip)
        except re.error:
            skip = f"(?:(?=(?P<_skipped>{ignored}))(?P=_skipped))*"
            self.skip = re.compile(skip)
        self.master = re.compile(f"{skip}(?:{alternatives})")

    def parse(self, text: str):
        """The tree of ``text``.  Tokens are read and fed to lark's LALR tables in one loop:
        it does what lark's ``ParserState.feed_token`` does per token (shift, or reduce
        through the same tree-building callbacks), without a generator, a method call and
        a keyword-argument Token constructor per token; on a large spec those were most of
        the parse time.  ``state`` is lark's own parser state object throughout, so an
        error carries exactly what lark's driver would have left in it."""
        state = self.lark.parse_interactive().parser_state
        stack: list = []  # open brackets
        try:
            return self._drive(text, state, stack)
        except UnexpectedToken as e:
            e.open_brackets = stack
            e.parser_state = state
            raise
        except _BadCharacter as e:
            e.open_brackets = stack
            e.parser_state = state
            raise

    def _tables(self, conf):
        """lark's LALR table recoded for the loop in :meth:`_drive`: per state, each
        terminal's action as an int (shift to that state) or a tuple ``(size, rule name,
        tree callback, unit)`` (reduce), and each rule name's goto state.  Built once per
        process, on the first parse."""
        if self._table is None:
            table, goto = {}, {}
            infos: dict = {}
            for st, row in conf.states.items():
                acts, gos = {}, {}
                for sym, (action, arg) in row.items():
                    if action is Shift:
                        if sym.isupper() or sym == "$END":
                            acts[sym] = arg
                        else:
                            gos[sym] = arg
                    else:
                        info = infos.get(id(arg))
                        if info is None:
                            size = len(arg.expansion)
                            cb = conf.callbacks[arg] if conf.callbacks else None
                            # A one-symbol rule whose tree callback hands back its only
                            # child (lark's ExpandSingleChild, e.g. ``atom -> call``) leaves
                            # the value stack as it is; about half of all reductions are
                            # of this kind.
                            unit = size == 1 and type(cb) is ExpandSingleChild
                            info = infos[id(arg)] = (size, arg.origin.name, cb, unit)
                        acts[sym] = info
                table[st], goto[st] = acts, gos
            self._table = (table, goto)
        return self._table

    def _drive(self, text: str, state, stack: list):
        conf = state.parse_conf
        table, goto = self._tables(conf)
        end_state = conf.end_state
        # Terminal callbacks (lark's lexer_callbacks) are not used by this grammar.
        assert not any(isinstance(k, str) for k in conf.callbacks)
        state_stack = state.state_stack
        value_stack = state.value_stack
        top = state_stack[-1]

        match = self.master.match
        skip = self.skip.match
        keywords = self.keywords
        ignore = self.ignore
        new_str = str.__new__
        Token = lark.Token
        pos, line, line_start, n = 0, 1, 0, len(text)
        last = None
        while True:
            # -- the next token (None at the end of the text) -------------------------
            tok = None
            while pos < n:
                m = match(text, pos)
                if m is None:
                    pos = skip(text, pos).end()  # only ignored text left, or a bad character
                    if pos < n:
                        raise _BadCharacter(pos, line, pos - line_start + 1)
                    break
                kind = m.lastgroup
                pos, end = m.span(kind)
                if kind in ignore:
                    pos = end
                    continue
                if kind == "_NL":
                    if stack:
                        line += 1
                        line_start = pos = end
                        continue
                    value = "\n"
                    col = pos - line_start + 1
                    tok = new_str(Token, value)
                    tok.type, tok.start_pos, tok.value, tok.line = kind, pos, value, line
                    tok.column, tok.end_line, tok.end_column, tok.end_pos = col, line, col + 1, end
                    line += 1
                    line_start = pos = end
                    break
                value = m.group(kind)
                col = pos - line_start + 1
                if kind == "NAME":
                    kw = keywords.get(value)
                    if kw is not None and kw in table[top]:
                        kind = kw
                elif kind == "INT":
                    if value[0] == "-":
                        row = table[top]
                        if "INT" not in row and "_MINUS" in row:
                            # `x-1`: where no number may come, the '-' is the operator.
                            kind, value, end = "_MINUS", "-", pos + 1
                tok = new_str(Token, value)
                tok.type, tok.start_pos, tok.value, tok.line = kind, pos, value, line
                tok.column, tok.end_line, tok.end_column, tok.end_pos = (
                    col, line, col + len(value), end)
                if kind in _NUMBER_RULES and "_" in value \
                        and not _NUMBER_RULES[kind].match(value):
                    raise _LexProblem(f"malformed number '{clip(value)}'", tok,
                                      expected="digits with single '_' between them, such as "
                                               + ("131_072" if kind == "INT" else "0.25"))
                if kind in _OPEN:
                    if len(stack) >= MAX_NESTING:
                        raise _LexProblem(
                            f"brackets nest too deeply (more than {MAX_NESTING} levels)", tok,
                            hint="name an inner part with 'let' to flatten the expression")
                    stack.append(tok)
                elif kind in _CLOSE:
                    if stack:
                        stack.pop()
                pos = end
                break
            is_end = tok is None
            if is_end:
                tok = Token.new_borrow_pos("$END", "", last) if last is not None \
                    else Token("$END", "", 0, 1, 1, 1, 1, 0)
            kind = tok.type

            # -- feed it: reduce as long as the table says so, then shift ---------------
            while True:
                try:
                    act = table[top][kind]
                except KeyError:
                    expected = {s for s in conf.states[top].keys() if s.isupper()}
                    raise UnexpectedToken(tok, expected, state=state,
                                          interactive_parser=None) from None
                if act.__class__ is int:  # shift
                    # (lark asserts this on every shift; the end token is never shifted.)
                    assert not is_end
                    state_stack.append(act)
                    top = act
                    value_stack.append(tok)
                    break
                size, origin, cb, unit = act
                if unit:
                    # the single child stays where it is on the value stack, as the value
                    top = goto[state_stack[-2]][origin]
                    state_stack[-1] = top
                    if is_end and top == end_state:
                        return value_stack[-1]
                    continue
                if size:
                    children = value_stack[-size:]
                    del state_stack[-size:]
                    del value_stack[-size:]
                else:
                    children = []
                value = cb(children) if cb is not None else children
                top = goto[state_stack[-1]][origin]
                state_stack.append(top)
                value_stack.append(value)
                if is_end and top == end_state:
                    return value
            last = tok


_lock = threading.Lock()
_front: _Front | None = None
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


def _build() -> _Front:
    grammar = grammar_text()
    options = dict(parser="lalr", lexer="contextual", propagate_positions=False,
                   maybe_placeholders=False, tree_class=PositionedTree)
    cache = _cache_file(grammar)
    if cache is not None:
        try:
            return _Front(lark.Lark(grammar, cache=cache, **options))
        except Exception:
            # lark tolerates unreadable/unwritable cache files itself; anything else that
            # goes wrong with the cache must not stop parsing, so build without it.
            pass
    return _Front(lark.Lark(grammar, **options))


def _get_front() -> _Front:
    global _front
    if _front is None:
        with _lock:
            if _front is None:
                _front = _build()
    return _front


# ---------------------------------------------------------------------------
# Errors in the user's words
# ---------------------------------------------------------------------------

_PATTERN = "a pattern such as local(128)"
_PUNCT = {
    "_EQ": "'='", "_COMMA": "','", "COLON": "':'", "_LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "_PLUS": "'+'",
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
        # Plain lists are enough: probing never looks at the values (no callbacks run).
        probe = type(state)(conf, state.lexer, list(state.state_stack), list(state.value_stack))
        try:
            probe.feed_token(lark.Token(term, ""), is_end=(term == "$END"))
        except (UnexpectedToken, AssertionError, KeyError):
            continue
        found.add(term)
    return found


def _previous(state, back: int) -> str | None:
    """The type of the token ``back`` places before the error (1: just before), if a token."""
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
    if {"INT", "DECIMAL", "LSQB"} <= exp:
        # The start of a call argument or of a named argument's value.
        if _previous(state, 1) == "_EQ":
            phrases.append("a value (a number, an index set such as [0:64], true/false "
                           "or a pattern)")
        else:
            phrases.append("an argument (a number, an index set such as [0:64], or a pattern)")
        exp -= {"INT", "DECIMAL", "LSQB", "NAME", "_LPAR"}
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
        if "COLON" in exp and "RSQB" in exp:
            phrases.append("an index such as 5 or a slice such as 0:64")
            exp.discard("COLON")
        elif "COLON" in exp and not exp & {"_EQ", "_COMMA", "RSQB", "HEADS"}:
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
    for term in ("_LPAR", "_EQ", "COLON", "_PLUS", "_COMMA", "RPAR", "RSQB", "LSQB"):
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


def clip(text: str, limit: int = 40) -> str:
    """Quote at most ``limit`` characters of user text in a message (a spec may hold a
    million-character word)."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


#: Widest caret an error draws; a longer offending text is underlined from its start.
CARET_LIMIT = 120


def error_span(span: Span | None) -> Span | None:
    """``span`` with a one-line extent wider than CARET_LIMIT cut down, so that a message
    about a huge token or statement stays a few lines long."""
    if span is None or span.end_line != span.line \
            or span.end_column - span.column <= CARET_LIMIT:
        return span
    return Span(span.line, span.column, span.line, span.column + CARET_LIMIT, span.start_pos,
                span.start_pos + CARET_LIMIT)


def _found(tok) -> str:
    ty = tok.type
    if ty == "$END":
        return "end of input"
    if ty == "_NL":
        return "end of line"
    if ty == "NAME":
        return f"name '{clip(tok)}'"
    if ty in ("INT", "DECIMAL"):
        return f"number {clip(tok)}"
    if ty in _KEYWORDS:
        return f"'{tok}'"
    return _show_char(str(tok)) if len(str(tok)) == 1 else f"'{clip(tok)}'"


def _token_span(tok) -> Span:
    line = tok.line or 1
    col = tok.column or 1
    end_line = getattr(tok, "end_line", None) or line
    end_col = getattr(tok, "end_column", None) or col + max(1, len(tok))
    start = tok.start_pos or 0
    end = getattr(tok, "end_pos", None) or start + len(tok)
    return error_span(Span(line, col, end_line, end_col, start, end))


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
    """A statement that starts with a name and goes wrong at the next token: a misspelt
    keyword (`heds 0 = ...`, `paternn = ...`), or `name = ...` without `let`."""
    if _previous(state, 1) != "NAME" or _previous(state, 2) not in (None, "_NL", "_SEMI"):
        return None
    name = str(state.value_stack[-1])
    close = difflib.get_close_matches(name.lower(), _KEYWORD_WORDS, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if tok.type == "_EQ":
        return f"to name a sub-pattern, write 'let {clip(name)} = ...'"
    return None


def _translate(e: Exception, text: str) -> PsparseSyntaxError:
    if isinstance(e, _LexProblem):
        return PsparseSyntaxError(e.message, source=text, span=_token_span(e.token),
                                  expected=e.expected, hint=e.hint)
    stack = list(getattr(e, "open_brackets", ()))
    state = getattr(e, "parser_state", None)
    expected = describe_expected(_accepts(state), state) if state is not None else None
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
        hint = _open_hint(stack, span.line, span.start_pos)
        if hint is None and state is not None:
            hint = _statement_hint(tok, state)
        return PsparseSyntaxError(f"unexpected {_found(tok)}", source=text, span=span,
                                  expected=expected, hint=hint)
    if isinstance(e, _BadCharacter):
        ch = text[e.pos]
        span = Span(e.line, e.column, e.line, e.column + 1, e.pos, e.pos + 1)
        hint = _open_hint(stack, e.line, e.pos)
        if hint is None and ch == "." and text[e.pos + 1:e.pos + 2].isdigit():
            hint = "a decimal needs a digit before its point, such as 0.5"
        return PsparseSyntaxError(f"unexpected character {_show_char(ch)}", source=text,
                                  span=span, expected=expected, hint=hint)
    # Any other lark error would be a bug in the grammar tables, but the user still gets
    # a PsparseError rather than a traceback.
    return PsparseSyntaxError(f"the spec could not be parsed ({type(e).__name__})",
                              source=text, expected=_PATTERN)


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building a tree.

    Parsing allocates many small objects that all stay alive (tokens, tree nodes), which
    makes every collection rescan them all: on a large spec that cost half the parse time
    and grew faster than the input.  Trees and tokens hold no reference cycles, so nothing
    waits long for the collector; the previous setting is restored afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_tree(text: str) -> lark.Tree:
    """Parse spec text into a lark tree: every token has its position and every node's
    ``meta`` gives its extent (see :class:`PositionedTree`).

    Raises :class:`PsparseSyntaxError` for anything that is not well formed, including
    text with no statement at all."""
    if not isinstance(text, str):
        raise PsparseUsageError(f"a spec is text, not {type(text).__name__}")
    front = _get_front()
    try:
        with gc_paused():
            tree = front.parse(text)
    except (_LexProblem, _BadCharacter, LarkError) as e:
        raise _translate(e, text) from None
    if not tree.children:
        raise PsparseSyntaxError("empty spec", source=text, span=Span(1, 1, 1, 2, 0, 1),
                                 expected=_PATTERN)
    return tree
