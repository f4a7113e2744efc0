"""Lark parse tree -> :class:`ir.Program`.

The grammar only knows the shape of a spec (calls, names, numbers, brackets, statements);
everything about meaning is decided here: which names exist, each primitive's arguments
(positional order, names, defaults, ranges), ``let`` scoping and substitution, and the
statement rules (one default pattern, no overlapping ``heads``/``layers`` lines, ...).
Every problem is a :class:`PsparseSemanticError` whose span is the offending argument,
name or statement, so the caret lands where the fix is.

Size limits keep every later stage safe: an expression may nest at most
:data:`MAX_DEPTH` operators deep (the passes and the printer recurse over it), and a
program may expand to at most :data:`MAX_NODES` expression nodes once ``let`` names are
substituted (a chain of ``let a2 = a1 | a1`` lines doubles the size on every line).
"""
from __future__ import annotations

import difflib
from math import gcd, isfinite

from lark import Token, Tree

from . import ir
from .errors import PsparseSemanticError, Span
from .parser import clip, error_span, gc_paused

__all__ = ["lower", "MAX_DEPTH", "MAX_NODES", "RESERVED_NAMES", "PATTERN_PRIMITIVES",
           "RETENTION_TERMS", "BUDGET_NAMES"]

#: Deepest operator nesting of one expression, counting every Union/Intersect/
#: Difference/Blockwise level (a chain ``a - b - c`` is two levels: difference is binary).
MAX_DEPTH = 100
#: Most expression nodes a whole program may expand to after substituting ``let`` names.
MAX_NODES = 1_000_000
# Every integer fits a signed 64-bit word, which is what plans and kernels store.
_INT_LIMIT = 2 ** 63
_SEED_LIMIT = 2 ** 32

_NULLARY = ("all", "none", "causal", "document")
_USAGE = {
    "local": "local(w) or local(l, r)",
    "block": "block(b)",
    "stride": "stride(s)",
    "dilated": "dilated(w, d)",
    "every": "every(s) or every(s, o)",
    "rows": "rows([...])",
    "cols": "cols([...])",
    "vertical": "vertical([...]), vertical(topk=v, last=64) or vertical(topk=v, by=norm)",
    "global": "global([...])",
    "sink": "sink(m)",
    "slash": "slash([...]) or slash(topk=s, last=64)",
    "prefix": "prefix(p)",
    "random": "random(r, block=64, seed=0, causal=false)",
    "blockwise": "blockwise(b, EXPR)",
    "blocks": "blocks(topk=t, block=64)",
}
PATTERN_PRIMITIVES = frozenset(_NULLARY) | frozenset(_USAGE)

_KV_USAGE = {
    "auto": "auto",
    "sink": "sink(m)",
    "recent": "recent(w)",
    "heavy": "heavy(h)",
    "snap": "snap(h, window=32, pool=7)",
    "norm": "norm(h) or norm(h, low=true)",
}
RETENTION_TERMS = frozenset(_KV_USAGE)
_BUDGET_USAGE = {"uniform": "uniform", "pyramid": "pyramid(beta=20)",
                 "adaptive": "adaptive(floor=0.2)"}
BUDGET_NAMES = frozenset(_BUDGET_USAGE)
_KEYWORDS = frozenset({"pattern", "heads", "layers", "let", "kv", "budget", "true", "false",
                       "norm", "lownorm"})
#: Names a ``let`` may not take: every primitive, term, budget and keyword.
RESERVED_NAMES = PATTERN_PRIMITIVES | RETENTION_TERMS | BUDGET_NAMES | _KEYWORDS

_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}


def lower(tree: Tree, text: str) -> ir.Program:
    """Lower a tree from :func:`patterndsl.parser.parse_tree` to an :class:`ir.Program`.

    ``text`` is the source the tree was parsed from (for the caret in errors)."""
    with gc_paused():
        return _Lowerer(text).program(tree)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def _fast_span_maker():
    """``Span(line, column, end_line, end_column, start_pos, end_pos)``, built by filling the
    instance dict: a frozen dataclass's own ``__init__`` stores each field through
    ``object.__setattr__``, and lowering makes a span for every node.  Falls back to the
    constructor if Span's layout is not the plain one this relies on."""
    from dataclasses import fields
    names = ("line", "column", "end_line", "end_column", "start_pos", "end_pos")
    if hasattr(Span, "__slots__") or tuple(f.name for f in fields(Span)) != names \
            or hasattr(Span, "__post_init__"):
        return Span
    new = object.__new__

    def make(line, column, end_line, end_column, start_pos, end_pos):
        s = new(Span)
        d = s.__dict__
        d["line"] = line
        d["column"] = column
        d["end_line"] = end_line
        d["end_column"] = end_column
        d["start_pos"] = start_pos
        d["end_pos"] = end_pos
        return s
    return make


_make_span = _fast_span_maker()


def _span(node) -> Span | None:
    if isinstance(node, Token):
        if node.line is None:
            return None
        return _make_span(node.line, node.column, node.end_line, node.end_column,
                          node.start_pos, node.end_pos)
    # A node's extent is that of its first and last tokens (the grammar keeps the
    # delimiting ones); reading them directly skips building a lark Meta per node.
    first = node
    while isinstance(first, Tree):
        if not first.children:
            return None
        first = first.children[0]
    last = node
    while isinstance(last, Tree):
        last = last.children[-1]
    if not isinstance(first, Token) or not isinstance(last, Token) or first.line is None:
        return None
    return _make_span(first.line, first.column, last.end_line, last.end_column, first.start_pos,
                      last.end_pos)


def _join_spans(a: Span | None, b: Span | None) -> Span | None:
    if a is None or b is None:
        return a or b
    return _make_span(a.line, a.column, b.end_line, b.end_column, a.start_pos, b.end_pos)


def _suggest(name: str, candidates) -> str | None:
    if name.lower() != name and name.lower() in candidates:
        return f"did you mean '{name.lower()}'? (names are case-sensitive)"
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


_STATEMENT_KEYWORDS = frozenset({"PATTERN", "HEADS", "LAYERS", "LET", "KV", "BUDGET"})


def _parts_of(stmt: Tree) -> list:
    """A statement's children without its keyword tokens (kept in the tree for positions)."""
    return [c for c in stmt.children
            if not (isinstance(c, Token) and c.type in _STATEMENT_KEYWORDS)]


def _call_args(call: Tree) -> list:
    """A call's arguments: its children are NAME, then `args` when there are any, then ')'."""
    second = call.children[1]
    return second.children if isinstance(second, Tree) else []


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _ordinal(i: int) -> str:
    return _ORDINAL.get(i, f"{i}th")


class _Info:
    """What lowering learned about an expression without walking it again: its depth,
    its node count with lets expanded, and whether it holds document / dynamic terms
    (the token that introduced them, for blockwise's error)."""

    __slots__ = ("depth", "size", "doc", "dyn")

    def __init__(self, depth=1, size=1, doc=None, dyn=None):
        self.depth = depth
        self.size = size
        self.doc = doc
        self.dyn = dyn


class _Let:
    __slots__ = ("expr", "info", "line")

    def __init__(self, expr, info, line):
        self.expr = expr
        self.info = info
        self.line = line


# ---------------------------------------------------------------------------
# The lowerer
# ---------------------------------------------------------------------------

class _Lowerer:
    def __init__(self, text: str):
        self.text = text
        self.lets: dict[str, _Let] = {}
        self.let_lines: dict[str, int] = {}  # every let in the file, for "defined later" hints
        self.nodes = 0

    # -- errors ---------------------------------------------------------------
    def error(self, message, node=None, *, span=None, expected=None, hint=None):
        return PsparseSemanticError(message, source=self.text,
                                    span=error_span(span if span is not None else _span(node)),
                                    expected=expected, hint=hint)

    def snippet(self, node) -> str:
        sp = _span(node)
        if sp is None:
            return str(node)
        s = " ".join(self.text[sp.start_pos:sp.end_pos].split())
        return s if len(s) <= 40 else s[:37] + "..."

    # -- the program ----------------------------------------------------------
    def program(self, tree: Tree) -> ir.Program:
        stmts = [c for c in tree.children if isinstance(c, Tree)]
        if not stmts:
            raise self.error("empty spec", span=Span(1, 1, 1, 2, 0, 1),
                             expected="a pattern such as local(128)")
        for st in stmts:
            if st.data == "let_stmt":
                name = str(_parts_of(st)[0])
                self.let_lines.setdefault(name, st.meta.line)

        rules: list[ir.Rule] = []
        default_line = None
        kv = budget = None
        kv_line = budget_line = None
        selector_lines: dict[str, list] = {"heads": [], "layers": [], "layers heads": []}

        for st in stmts:
            kind = st.data
            line = st.meta.line
            parts = _parts_of(st)
            if kind in ("default_stmt", "pattern_stmt"):
                if default_line is not None:
                    raise self.error(
                        f"a second default pattern (the first is on line {default_line})", st,
                        hint="a spec has one default pattern; use 'heads H = ...' or "
                             "'layers L = ...' lines for other patterns")
                default_line = line
                rules.append(ir.Rule(self.rule_expr(parts[-1]), span=_span(st)))
            elif kind == "heads_stmt":
                heads = self.selector(parts[0], "head")
                expr = self.rule_expr(parts[1])
                selector_lines["heads"].append((heads, None, line, parts[0]))
                rules.append(ir.Rule(expr, heads=heads, span=_span(st)))
            elif kind == "layers_stmt":
                layers = self.selector(parts[0], "layer")
                expr = self.rule_expr(parts[1])
                selector_lines["layers"].append((layers, None, line, parts[0]))
                rules.append(ir.Rule(expr, layers=layers, span=_span(st)))
            elif kind == "layers_heads_stmt":
                layers = self.selector(parts[0], "layer")
                heads = self.selector(parts[1], "head")
                expr = self.rule_expr(parts[2])
                both = _join_spans(_span(parts[0]), _span(parts[1]))
                selector_lines["layers heads"].append((layers, heads, line, both))
                rules.append(ir.Rule(expr, layers=layers, heads=heads, span=_span(st)))
            elif kind == "let_stmt":
                self.let(st)
            elif kind == "kv_stmt":
                if kv_line is not None:
                    raise self.error(f"a second kv line (the first is on line {kv_line})", st,
                                     hint="join the terms of one policy with '+'")
                kv_line = line
                kv = self.retention(parts[0])
            elif kind == "budget_stmt":
                if budget_line is not None:
                    raise self.error(f"a second budget line (the first is on line {budget_line})",
                                     st)
                budget_line = line
                budget = self.budget(parts[0])
            else:  # the grammar has no other statement; a tree from elsewhere is a bug
                raise self.error(f"unknown statement '{kind}'", st)

        if not rules:
            raise self.error("the spec has no pattern", stmts[0],
                             expected="a pattern line such as causal & local(128)",
                             hint="kv, budget and let lines need a pattern to go with")
        for kind, entries in selector_lines.items():
            self.check_overlaps(kind, entries)
        return ir.Program(rules=tuple(rules), kv=kv, budget=budget)

    def rule_expr(self, node) -> ir.Expr:
        """A pattern statement's expression, counted against the program's node budget."""
        expr, info = self.expr(node, None)
        self.nodes += info.size
        if self.nodes > MAX_NODES:
            raise self.error(f"the spec expands to more than {MAX_NODES:,} pattern nodes", node,
                             hint="each use of a let name copies its whole pattern")
        return expr

    # -- let ------------------------------------------------------------------
    def let(self, st: Tree):
        name_tok, body = _parts_of(st)
        name = str(name_tok)
        if name in RESERVED_NAMES:
            what = ("a primitive" if name in PATTERN_PRIMITIVES
                    else "a retention term" if name in RETENTION_TERMS
                    else "a budget" if name in BUDGET_NAMES else "a keyword")
            raise self.error(f"'{name}' is {what} and cannot be a let name", name_tok,
                             expected="another name")
        if name in self.lets:
            raise self.error(f"'{clip(name)}' is already defined on line {self.lets[name].line}",
                             name_tok, hint="a let name is defined once")
        expr, info = self.expr(body, None)
        self.lets[name] = _Let(expr, info, st.meta.line)

    # -- expressions ----------------------------------------------------------
    def expr(self, node, blockwise: Token | None) -> tuple[ir.Expr, _Info]:
        """Lower one pattern expression.  ``blockwise`` is the name token of the innermost
        enclosing blockwise call, where document and dynamic terms are not allowed."""
        if isinstance(node, Token):
            if node.type == "NAME":
                return self.name(node, blockwise)
            raise self.error(f"expected a pattern, got {self.snippet(node)}", node,
                             expected="a pattern such as local(128)")
        data = node.data
        if data == "call":
            return self.call(node, blockwise)
        if data == "group":  # parentheses: the group is its expression (its ')' is kept)
            return self.expr(node.children[0], blockwise)
        if data in ("or_expr", "and_expr"):
            terms = []
            depth = size = 0
            doc = dyn = None
            for child in node.children:
                e, inf = self.expr(child, blockwise)
                terms.append(e)
                depth = max(depth, inf.depth)
                size += inf.size
                doc = doc or inf.doc
                dyn = dyn or inf.dyn
            cls = ir.Union if data == "or_expr" else ir.Intersect
            info = _Info(depth + 1, size + 1, doc, dyn)
            self.check_depth(info, node)
            return cls(tuple(terms), span=_span(node)), info
        if data == "diff_expr":
            children = node.children
            left, info = self.expr(children[0], blockwise)
            first_span = _span(children[0])
            for child in children[1:]:
                right, rinf = self.expr(child, blockwise)
                span = _join_spans(first_span, _span(child))
                left = ir.Difference(left, right, span=span)
                info = _Info(max(info.depth, rinf.depth) + 1, info.size + rinf.size + 1,
                             info.doc or rinf.doc, info.dyn or rinf.dyn)
                self.check_depth(info, child)
            return left, info
        if data in ("index_set",):
            raise self.error("an index set is not a pattern", node,
                             expected="a pattern such as rows([0, 5]) or cols([0:64])")
        raise self.error(f"expected a pattern, got {self.snippet(node)}", node,
                         expected="a pattern such as local(128)")

    def check_depth(self, info: _Info, node):
        if info.depth > MAX_DEPTH:
            raise self.error(f"the expression nests too deeply (more than {MAX_DEPTH} levels)",
                             node, hint="name parts of it with 'let' and combine them in a "
                                        "flat chain such as a | b | c")
        if info.size > MAX_NODES:
            raise self.error(f"the expression expands to more than {MAX_NODES:,} pattern nodes",
                             node, hint="each use of a let name copies its whole pattern")

    def name(self, tok: Token, blockwise) -> tuple[ir.Expr, _Info]:
        name = str(tok)
        span = _span(tok)
        if name in _NULLARY:
            if name == "document":
                if blockwise is not None:
                    raise self.error("document cannot be used inside blockwise", tok,
                                     hint="document ids are per position, not per block; "
                                          "intersect with document outside the blockwise")
                return ir.Document(span=span), _Info(doc=tok)
            node = {"all": ir.All, "none": ir.Nothing, "causal": ir.Causal}[name](span=span)
            return node, _Info()
        let = self.lets.get(name)
        if let is not None:
            if blockwise is not None and (let.info.doc or let.info.dyn):
                bad = "document" if let.info.doc else "a dynamic term"
                raise self.error(f"'{clip(name)}' contains {bad}, which cannot be used inside "
                                 "blockwise", tok)
            return let.expr, let.info
        if name in _USAGE:
            raise self.error(f"'{name}' needs arguments", tok, expected=_USAGE[name])
        if name in RETENTION_TERMS or name in BUDGET_NAMES:
            where = "a retention term (for 'kv = ...')" if name in RETENTION_TERMS \
                else "a budget (for 'budget = ...')"
            raise self.error(f"'{name}' is {where}, not a pattern", tok,
                             expected="a pattern such as local(128)")
        later = self.let_lines.get(name)
        if later is not None:
            if later == tok.line:
                hint = "a let cannot refer to itself"
            else:
                hint = (f"'{clip(name)}' is defined on line {later}; a let name can only be used "
                        "after its line")
            raise self.error(f"unknown name '{clip(name)}'", tok, hint=hint)
        hint = _suggest(name, set(_NULLARY) | set(self.lets) | set(_USAGE))
        raise self.error(f"unknown name '{clip(name)}'", tok,
                         expected="a pattern such as causal, local(128) or a let name",
                         hint=hint)

    def call(self, node: Tree, blockwise) -> tuple[ir.Expr, _Info]:
        name_tok = node.children[0]
        name = str(name_tok)
        builder = getattr(self, "p_" + name, None) if name in _USAGE else None
        if builder is None:
            if name in _NULLARY:
                raise self.error(f"'{name}' takes no arguments", node,
                                 expected=f"'{name}' on its own")
            if name in self.lets:
                raise self.error(f"'{clip(name)}' is a let name, not a primitive", node,
                                 expected=f"'{clip(name)}' on its own, without arguments")
            if name in RETENTION_TERMS:
                raise self.error(f"'{name}' is a retention term (for 'kv = ...'), not a pattern",
                                 name_tok, expected="a pattern such as local(128)")
            if name in BUDGET_NAMES:
                raise self.error(f"'{name}' is a budget (for 'budget = ...'), not a pattern",
                                 name_tok, expected="a pattern such as local(128)")
            raise self.error(f"unknown primitive '{clip(name)}'", name_tok,
                             expected="a primitive such as local(128) or causal",
                             hint=_suggest(name, PATTERN_PRIMITIVES))
        return builder(node, name_tok, blockwise)

    # -- argument binding -----------------------------------------------------
    def bind(self, node: Tree, what: str, usage: str, positional: tuple[str, ...],
             named: tuple[str, ...] = (), required: int = 1):
        """Match a call's arguments to parameter names.

        ``positional`` are the parameters in positional order, ``named`` those that may
        also be given as ``name=value``.  Returns {name: value node} and {name: the
        argument node} (for pointing at a whole ``name=value``)."""
        values: dict[str, object] = {}
        where: dict[str, tuple[object, int | None]] = {}  # the argument and its position
        args = _call_args(node)
        seen_named = False
        for i, arg in enumerate(args):
            if isinstance(arg, Tree) and arg.data == "named_arg":
                seen_named = True
                key_tok, value = arg.children
                key = str(key_tok)
                if key not in named:
                    if key in positional:
                        raise self.error(f"{what}'s {key} is given by position, not by name",
                                         key_tok, expected=usage)
                    if named:
                        listed = ", ".join(k + "=" for k in named)
                        raise self.error(f"{what} has no argument named '{clip(key)}'", key_tok,
                                         expected=f"one of {listed}", hint=_suggest(key, named))
                    raise self.error(f"{what} takes no named arguments", key_tok, expected=usage)
                if key in values:
                    pos = where[key][1]
                    how = "by name" if pos is None else f"as the {_ordinal(pos + 1)} argument"
                    raise self.error(f"{what}'s {key} is given twice (already {how})", arg,
                                     expected=usage)
                values[key] = value
                where[key] = (arg, None)
            else:
                if seen_named:
                    raise self.error("a positional argument cannot follow a named one", arg,
                                     expected=usage)
                if i >= len(positional):
                    most = len(positional)
                    raise self.error(
                        f"{what} takes at most {most} argument{'s' if most != 1 else ''}", arg,
                        expected=usage)
                values[positional[i]] = arg
                where[positional[i]] = (arg, i)
        if any(p not in values for p in positional[:required]):
            need = f"{required} argument{'s' if required != 1 else ''}"
            if required < len(positional):
                need = "at least " + need
            raise self.error(f"{what} needs {need}", node, expected=usage)
        return values, {k: w[0] for k, w in where.items()}

    # -- values ---------------------------------------------------------------
    def int_value(self, node, label: str, lo: int | None = None, hi: int | None = None) -> int:
        if not isinstance(node, Token) or node.type != "INT":
            raise self.error(f"{label} must be an integer, got {self.snippet(node)}", node)
        digits = node.replace("_", "").lstrip("-")
        v = int(node.replace("_", "")) if len(digits) <= 20 else None
        if v is None or not -_INT_LIMIT < v < _INT_LIMIT:
            raise self.error(f"{label} is out of range", node, expected="a number below 2**63")
        if lo is not None and v < lo:
            raise self.error(f"{label} must be >= {lo}, got {v}", node)
        if hi is not None and v >= hi:
            raise self.error(f"{label} must be < {self.limit_text(hi)}, got {v}", node)
        return v

    @staticmethod
    def limit_text(hi: int) -> str:
        return "2**32" if hi == _SEED_LIMIT else str(hi)

    def number_value(self, node, label: str) -> float:
        if not isinstance(node, Token) or node.type not in ("INT", "DECIMAL"):
            raise self.error(f"{label} must be a number such as 0.25, got {self.snippet(node)}",
                             node)
        text = node.replace("_", "")
        v = float(text) if len(text) <= 400 else float("inf")
        if not isfinite(v) or abs(v) >= _INT_LIMIT:
            raise self.error(f"{label} is out of range", node)
        return v

    def flag_value(self, node, label: str) -> bool:
        if isinstance(node, Token) and node.type == "NAME" and str(node) in ("true", "false"):
            return str(node) == "true"
        raise self.error(f"{label} must be true or false, got {self.snippet(node)}", node)

    def index_value(self, node, label: str, offsets: bool = False) -> ir.IndexSet:
        if not isinstance(node, Tree) or node.data != "index_set":
            example = "[0, 4:8, -8]" if offsets else "[0, 64:128, -1]"
            raise self.error(f"{label} must be a bracketed set such as {example}, "
                             f"got {self.snippet(node)}", node)
        items = []
        for item in node.children:
            if isinstance(item, Token) and item.type in ("LSQB", "RSQB"):
                continue
            if isinstance(item, Token):
                items.append(self.int_value(item, "an index" if not offsets else "an offset"))
            else:
                items.append(self.slice_value(item, offsets))
        return ir.IndexSet(tuple(items), span=_span(node))

    def _parts(self, node: Tree) -> list[list[Token]]:
        """A slice's or selector's tokens split at its colons: [[start], [stop], [step]]."""
        parts: list[list[Token]] = [[]]
        for tok in node.children:
            if tok.type == "COLON":
                parts.append([])
            else:
                parts[-1].append(tok)
        return parts

    def slice_value(self, node: Tree, offsets: bool) -> ir.Slice:
        parts = self._parts(node)
        what = "an offset slice" if offsets else "a slice"
        nums = [self.int_value(p[0], f"{what}'s {name}") if p else None
                for p, name in zip(parts, ("start", "stop", "step"))]
        while len(nums) < 3:
            nums.append(None)
        start, stop, step = nums
        if step == 0:
            raise self.error("a slice step cannot be 0", parts[2][0])
        if offsets and (start is None or stop is None):
            raise self.error("an offset slice needs both ends", node,
                             expected="a slice such as 0:64 or -8:0",
                             hint="offsets are q - k, not resolved against n, so an open end "
                                  "would be infinite")
        return ir.Slice(start, stop, step, span=_span(node))

    def pattern_value(self, node, blockwise) -> tuple[ir.Expr, _Info]:
        if isinstance(node, Token) and node.type in ("INT", "DECIMAL"):
            raise self.error(f"expected a pattern, got the number {clip(node)}", node,
                             expected="a pattern such as local(1)")
        return self.expr(node, blockwise)

    # -- selectors --------------------------------------------------------------
    def selector(self, node: Tree, what: str) -> ir.Selector:
        parts = self._parts(node)
        nums = [self.int_value(p[0], f"a {what} number", lo=0) if p else None for p in parts]
        span = _span(node)
        if len(parts) == 1:
            return ir.Selector(nums[0], nums[0] + 1, 1, span=span)
        while len(nums) < 3:
            nums.append(None)
        start, stop, step = nums
        start = 0 if start is None else start
        if step is None:
            step = 1
        elif step < 1:
            raise self.error(f"a {what} step must be >= 1, got {step}", parts[2][0])
        if stop is not None and stop <= start:
            raise self.error(f"the {what} range {start}:{stop} is empty", node,
                             hint=f"a range a:b selects {what}s a, a+1, ..., b-1")
        return ir.Selector(start, stop, step, span=span)

    def check_overlaps(self, kind: str, entries):
        """No two lines of one kind may share a (layer, head).  A sweep over the selectors
        sorted by start compares only lines whose ranges meet, so thousands of disjoint
        single-head lines stay fast; the error names the earliest line (in file order) that
        overlaps an earlier one."""
        if len(entries) < 2:
            return
        order = sorted(range(len(entries)), key=lambda i: (entries[i][0].start, i))
        active: list[int] = []
        best = None  # (later index, earlier index, common element)
        for i in order:
            if best is not None and i >= best[0]:
                continue  # cannot be part of an earlier-reported pair
            sel = entries[i][0]
            active = [j for j in active
                      if entries[j][0].stop is None or entries[j][0].stop > sel.start]
            for j in active:
                a, b = (j, i) if j < i else (i, j)
                if best is not None and b > best[0]:
                    continue
                common = _common(entries[j][0], sel)
                if common is None:
                    continue
                if entries[i][1] is not None:
                    other = _common(entries[j][1], entries[i][1])
                    if other is None:
                        continue
                    common = (common, other)
                if best is None or (b, a) < best[:2]:
                    best = (b, a, common)
            active.append(i)
        if best is None:
            return
        later, earlier, common = best
        if kind == "layers heads":
            cover = f"layer {common[0]}, head {common[1]}"
        else:
            cover = f"{kind[:-1]} {common}"
        node = entries[later][3]
        span = node if isinstance(node, Span) else _span(node)
        raise self.error(f"this {kind} line overlaps the one on line {entries[earlier][2]} "
                         f"(both cover {cover})", span=span,
                         hint="each head or layer may be named by one line of a kind")

    # -- retention --------------------------------------------------------------
    def retention(self, node: Tree) -> ir.Retention:
        terms: list[ir.KvTerm] = []
        auto = score = None
        for t in node.children:
            term = self.kv_term(t)
            if isinstance(term, ir.KvAuto):
                auto = auto or t
            elif isinstance(term, ir.SCORE_KV_TYPES):
                score = score or t
            if auto is not None and score is not None:
                name = str(score.children[0])
                raise self.error(f"{name} cannot be combined with auto", score,
                                 hint="auto already keeps every key the pattern allows, so a "
                                      "score term would have nothing to choose")
            terms.append(term)
        return ir.Retention(tuple(terms), span=_span(node))

    def kv_term(self, node) -> ir.KvTerm:
        if isinstance(node, Token):
            name = str(node)
            if name == "auto":
                return ir.KvAuto(span=_span(node))
            if name in RETENTION_TERMS:
                raise self.error(f"'{name}' needs arguments", node, expected=_KV_USAGE[name])
            raise self.unknown_term(name, node)
        name_tok = node.children[0]
        name = str(name_tok)
        span = _span(node)
        usage = _KV_USAGE.get(name)
        if name == "auto":
            raise self.error("'auto' takes no arguments", node, expected="'auto' on its own")
        if name in ("sink", "recent", "heavy"):
            v, _ = self.bind(node, name, usage, ("n",))
            label = {"sink": "sink's m", "recent": "recent's w", "heavy": "heavy's h"}[name]
            count = self.int_value(v["n"], label, lo=0)
            cls = {"sink": ir.KvSink, "recent": ir.KvRecent, "heavy": ir.KvHeavy}[name]
            return cls(count, span=span)
        if name == "snap":
            v, _ = self.bind(node, name, usage, ("h", "window", "pool"), ("window", "pool"))
            h = self.int_value(v["h"], "snap's h", lo=0)
            window = self.int_value(v["window"], "snap's window", lo=1) if "window" in v else 32
            pool = 7
            if "pool" in v:
                pool = self.int_value(v["pool"], "snap's pool", lo=1)
                if pool % 2 == 0:
                    raise self.error(f"snap's pool must be odd, got {pool}", v["pool"],
                                     hint="the max-pool window is centred on each key")
            return ir.KvSnap(h, window, pool, span=span)
        if name == "norm":
            v, _ = self.bind(node, name, usage, ("h", "low"), ("low",))
            h = self.int_value(v["h"], "norm's h", lo=0)
            low = self.flag_value(v["low"], "norm's low") if "low" in v else False
            return ir.KvNorm(h, low, span=span)
        raise self.unknown_term(name, name_tok)

    def unknown_term(self, name: str, node):
        if name in PATTERN_PRIMITIVES or name in self.lets:
            return self.error(f"'{clip(name)}' is a pattern, not a retention term", node,
                              expected="auto, sink(m), recent(w), heavy(h), snap(h) or norm(h)")
        return self.error(f"unknown retention term '{clip(name)}'", node,
                          expected="auto, sink(m), recent(w), heavy(h), snap(h) or norm(h)",
                          hint=_suggest(name, RETENTION_TERMS))

    # -- budgets ----------------------------------------------------------------
    def budget(self, node) -> ir.Budget:
        expected = "uniform, pyramid(beta=20) or adaptive(floor=0.2)"
        if isinstance(node, Token):
            name = str(node)
            span = _span(node)
            if name == "uniform":
                return ir.Uniform(span=span)
            if name == "pyramid":
                return ir.Pyramid(span=span)
            if name == "adaptive":
                return ir.Adaptive(span=span)
            raise self.error(f"unknown budget '{clip(name)}'", node, expected=expected,
                             hint=_suggest(name, BUDGET_NAMES))
        name_tok = node.children[0]
        name = str(name_tok)
        span = _span(node)
        if name == "uniform":
            raise self.error("'uniform' takes no arguments", node, expected="'uniform' on its own")
        if name == "pyramid":
            v, _ = self.bind(node, name, _BUDGET_USAGE[name], ("beta",), ("beta",), required=0)
            beta = 20.0
            if "beta" in v:
                beta = self.number_value(v["beta"], "pyramid's beta")
                if beta < 1:
                    raise self.error(f"pyramid's beta must be >= 1, got {clip(v['beta'])}",
                                     v["beta"])
            return ir.Pyramid(beta, span=span)
        if name == "adaptive":
            v, _ = self.bind(node, name, _BUDGET_USAGE[name], ("floor",), ("floor",), required=0)
            floor = 0.2
            if "floor" in v:
                floor = self.number_value(v["floor"], "adaptive's floor")
                if not 0 <= floor <= 1:
                    raise self.error("adaptive's floor must be between 0 and 1, got "
                                     f"{clip(v['floor'])}",
                                     v["floor"])
            return ir.Adaptive(floor, span=span)
        raise self.error(f"unknown budget '{clip(name)}'", name_tok, expected=expected,
                         hint=_suggest(name, BUDGET_NAMES))

    # -- pattern primitives (p_<name>) --------------------------------------------
    def p_local(self, node, tok, blockwise):
        v, _ = self.bind(node, "local", _USAGE["local"], ("l", "r"))
        span = _span(node)
        if "r" not in v:
            w = self.int_value(v["l"], "local's window w", lo=0)
            return ir.Local(w, w, span=span), _Info()
        left = self.int_value(v["l"], "local's l", lo=0)
        right = self.int_value(v["r"], "local's r", lo=0)
        return ir.Local(left, right, span=span), _Info()

    def _one_int(self, node, name, cls, lo):
        v, _ = self.bind(node, name, _USAGE[name], ("x",))
        return cls(self.int_value(v["x"], name, lo=lo), span=_span(node)), _Info()

    def p_block(self, node, tok, blockwise):
        return self._one_int(node, "block", ir.Block, 1)

    def p_stride(self, node, tok, blockwise):
        return self._one_int(node, "stride", ir.Stride, 1)

    def p_sink(self, node, tok, blockwise):
        return self._one_int(node, "sink", ir.Sink, 0)

    def p_prefix(self, node, tok, blockwise):
        return self._one_int(node, "prefix", ir.Prefix, 0)

    def p_dilated(self, node, tok, blockwise):
        v, _ = self.bind(node, "dilated", _USAGE["dilated"], ("w", "d"), required=2)
        w = self.int_value(v["w"], "dilated's w", lo=0)
        d = self.int_value(v["d"], "dilated's d", lo=1)
        return ir.Dilated(w, d, span=_span(node)), _Info()

    def p_every(self, node, tok, blockwise):
        v, _ = self.bind(node, "every", _USAGE["every"], ("s", "o"))
        s = self.int_value(v["s"], "every's s", lo=1)
        o = 0
        if "o" in v:
            o = self.int_value(v["o"], "every's offset o", lo=0)
            if o >= s:
                raise self.error(f"every's offset o must be < s ({s}), got {o}", v["o"])
        return ir.Every(s, o, span=_span(node)), _Info()

    def _one_index(self, node, name, cls):
        v, _ = self.bind(node, name, _USAGE[name], ("I",))
        index = self.index_value(v["I"], f"{_possessive(name)} argument")
        return cls(index, span=_span(node)), _Info()

    def p_rows(self, node, tok, blockwise):
        return self._one_index(node, "rows", ir.Rows)

    def p_cols(self, node, tok, blockwise):
        return self._one_index(node, "cols", ir.Cols)

    def p_global(self, node, tok, blockwise):
        return self._one_index(node, "global", ir.Global)

    def _is_dynamic_call(self, node) -> bool:
        args = _call_args(node)
        return any(isinstance(a, Tree) and a.data == "named_arg" for a in args)

    def _static_or_hint(self, node, name, dynamic_example):
        args = _call_args(node)
        if args and isinstance(args[0], Token) and args[0].type == "INT":
            raise self.error(f"{name}'s argument must be a bracketed set or topk=...", args[0],
                             expected=_USAGE[name],
                             hint="for the dynamic term write "
                                  f"{dynamic_example.format(clip(args[0]))}; "
                                  f"for the fixed position write {name}([{clip(args[0])}])")

    def p_vertical(self, node, tok, blockwise):
        span = _span(node)
        if not self._is_dynamic_call(node):
            self._static_or_hint(node, "vertical", "vertical(topk={})")
            v, _ = self.bind(node, "vertical", _USAGE["vertical"], ("I",))
            return ir.Cols(self.index_value(v["I"], "vertical's argument"), span=span), _Info()
        self.no_dynamic_inside(blockwise, tok)
        self.not_both(node, "vertical")
        v, where = self.bind(node, "vertical", _USAGE["vertical"], (), ("topk", "last", "by"),
                             required=0)
        if "topk" not in v:
            raise self.error("vertical needs topk=", node, expected=_USAGE["vertical"])
        topk = self.int_value(v["topk"], "vertical's topk", lo=0)
        last = 64
        by = "attn"
        if "by" in v:
            b = v["by"]
            if not (isinstance(b, Token) and b.type == "NAME" and str(b) in ("norm", "lownorm")):
                raise self.error(f"vertical's by must be norm or lownorm, got {self.snippet(b)}",
                                 b, expected="by=norm or by=lownorm")
            by = str(b)
            if "last" in v:
                later = max(where["last"], where["by"], key=lambda a: a.meta.start_pos)
                raise self.error("vertical cannot take both last= and by=", later,
                                 hint="last= sets how many query rows score the keys by "
                                      "attention; by= ranks keys by their norm instead")
        if "last" in v:
            last = self.int_value(v["last"], "vertical's last", lo=1)
        return ir.TopVertical(topk, last, by, span=span), _Info(dyn=tok)

    def p_slash(self, node, tok, blockwise):
        span = _span(node)
        if not self._is_dynamic_call(node):
            self._static_or_hint(node, "slash", "slash(topk={})")
            v, _ = self.bind(node, "slash", _USAGE["slash"], ("O",))
            offsets = self.index_value(v["O"], "slash's argument", offsets=True)
            return ir.Slash(offsets, span=span), _Info()
        self.no_dynamic_inside(blockwise, tok)
        self.not_both(node, "slash")
        v, _ = self.bind(node, "slash", _USAGE["slash"], (), ("topk", "last"), required=0)
        if "topk" not in v:
            raise self.error("slash needs topk=", node, expected=_USAGE["slash"])
        topk = self.int_value(v["topk"], "slash's topk", lo=0)
        last = self.int_value(v["last"], "slash's last", lo=1) if "last" in v else 64
        return ir.TopSlash(topk, last, span=span), _Info(dyn=tok)

    def p_blocks(self, node, tok, blockwise):
        self.no_dynamic_inside(blockwise, tok)
        v, _ = self.bind(node, "blocks", _USAGE["blocks"], ("topk", "block"), ("topk", "block"))
        topk = self.int_value(v["topk"], "blocks' topk", lo=0)
        block = self.int_value(v["block"], "blocks' block", lo=1) if "block" in v else 64
        return ir.TopBlocks(topk, block, span=_span(node)), _Info(dyn=tok)

    def not_both(self, node, name):
        args = _call_args(node)
        if not (isinstance(args[0], Tree) and args[0].data == "named_arg"):
            raise self.error(f"{name} takes either a bracketed set or topk=..., not both",
                             args[0], expected=_USAGE[name])

    def no_dynamic_inside(self, blockwise, tok):
        if blockwise is not None:
            raise self.error(f"the dynamic term {tok} cannot be used inside blockwise", tok,
                             hint="dynamic terms pick positions from the data, not blocks; "
                                  "combine them with the blockwise outside it")

    def p_random(self, node, tok, blockwise):
        v, _ = self.bind(node, "random", _USAGE["random"], ("r", "block", "seed", "causal"),
                         ("block", "seed", "causal"))
        r = self.int_value(v["r"], "random's r", lo=0)
        block = self.int_value(v["block"], "random's block", lo=1) if "block" in v else 64
        seed = self.int_value(v["seed"], "random's seed", lo=0, hi=_SEED_LIMIT) \
            if "seed" in v else 0
        causal = self.flag_value(v["causal"], "random's causal") if "causal" in v else False
        return ir.Random(r, block, seed, causal, span=_span(node)), _Info()

    def p_blockwise(self, node, tok, blockwise):
        v, _ = self.bind(node, "blockwise", _USAGE["blockwise"], ("b", "EXPR"), required=2)
        b = self.int_value(v["b"], "blockwise's b", lo=1)
        inner, info = self.pattern_value(v["EXPR"], tok)
        info = _Info(info.depth + 1, info.size + 1, info.doc, info.dyn)
        self.check_depth(info, node)
        return ir.Blockwise(b, inner, span=_span(node)), info


def _common(a: ir.Selector, b: ir.Selector) -> int | None:
    """The smallest number both selectors cover, or None: the two arithmetic progressions
    meet where x = a.start (mod a.step) and x = b.start (mod b.step) (Chinese remainder
    theorem), then the first such x at or above both starts must lie below both stops."""
    g = gcd(a.step, b.step)
    diff = b.start - a.start
    if diff % g:
        return None
    m = b.step // g
    # a.start + a.step * t hits b's residues when (a.step / g) * t = diff / g (mod m).
    t = (diff // g) * pow(a.step // g, -1, m) % m if m > 1 else 0
    lcm = a.step // g * b.step
    x0 = a.start + a.step * t
    lo = max(a.start, b.start)
    x = lo + (x0 - lo) % lcm
    for stop in (a.stop, b.stop):
        if stop is not None and x >= stop:
            return None
    return x
