"""IR -> spec text.

The printed text re-parses to an equal IR (``lower(parse_tree(to_text(p))) == p``), so
it is both what users read (``Spec.canonical()``, ``psparse show``) and a faithful
serialisation.  Two things make that exact:

* arguments equal to the default that lowering fills in are left out, and the ones that
  LANGUAGE.md names (``block=``, ``seed=``, ``topk=`` ...) are always written by name;
* parentheses appear exactly where re-parsing would otherwise build another tree: the
  grammar turns a chain ``a | b | c`` into one n-ary node, so a ``Union`` directly inside
  a ``Union`` (which the flatten pass removes, but a parse of ``(a | b) | c`` has) must
  keep its parentheses.
"""
from __future__ import annotations

import contextlib
import threading
from decimal import Decimal
import math

from . import ir

__all__ = ["to_text", "expr_text", "index_text"]


def to_text(node) -> str:
    """Spec text for a Program, any Expr, Retention, KvTerm, Budget, IndexSet, Slice or Selector."""
    if isinstance(node, ir.Program):
        return _program(node)
    if isinstance(node, ir.Expr):
        return expr_text(node)
    if isinstance(node, ir.Retention):
        return _retention(node)
    if isinstance(node, ir.KvTerm):
        return _kv_term(node)
    if isinstance(node, ir.Budget):
        return _budget(node)
    if isinstance(node, ir.IndexSet):
        return index_text(node)
    if isinstance(node, ir.Slice):
        return _slice(node)
    if isinstance(node, ir.Selector):
        return _selector(node)
    if isinstance(node, ir.Rule):
        return _rule(node)
    raise TypeError(f"to_text: cannot print {type(node).__name__}")


# ---------------------------------------------------------------------------
# Numbers, index sets and selectors
# ---------------------------------------------------------------------------

def _int(v: int) -> str:
    return str(int(v))


def _bool(v: bool) -> str:
    return "true" if v else "false"


def _decimal(x: float) -> str:
    """A float as a plain decimal that reads back as the same float.

    ``repr`` gives the shortest digits that round-trip, but it switches to exponent form
    (``1e-05``) which the grammar has no token for; Decimal re-spells the same digits
    positionally, so the value is unchanged."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"cannot print the non-finite number {x!r} as spec text")
    s = format(Decimal(repr(x)), "f")
    if "." not in s:
        s += ".0"
    return s


def _slice(s: ir.Slice) -> str:
    start = "" if s.start is None else _int(s.start)
    stop = "" if s.stop is None else _int(s.stop)
    text = f"{start}:{stop}"
    if s.step is not None:
        text += f":{_int(s.step)}"
    return text


def _item(item) -> str:
    return _slice(item) if isinstance(item, ir.Slice) else _int(item)


def index_text(index: ir.IndexSet) -> str:
    """``[0, 100:200, -1]``."""
    return "[" + ", ".join(_item(i) for i in index.items) + "]"


def _selector(sel: ir.Selector) -> str:
    if sel.stop is not None and sel.step == 1 and sel.stop == sel.start + 1:
        return _int(sel.start)
    stop = "" if sel.stop is None else _int(sel.stop)
    text = f"{_int(sel.start)}:{stop}"
    if sel.step != 1:
        text += f":{_int(sel.step)}"
    return text


# ---------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------

def _needs_parens(parent: ir.Expr, child: ir.Expr, *, right: bool = False) -> bool:
    """Whether ``child`` printed bare as an operand of ``parent`` would re-parse differently.

    Precedence loosest first is ``|``, ``&``, ``-``; a chain of the same n-ary operator is
    one node, so a same-operator child needs parentheses to stay nested; ``-`` is binary and
    left-associative, so only its right operand needs them for another ``-``."""
    if isinstance(parent, ir.Union):
        return isinstance(child, ir.Union)
    if isinstance(parent, ir.Intersect):
        return isinstance(child, (ir.Union, ir.Intersect))
    if isinstance(parent, ir.Difference):
        if right:
            return isinstance(child, (ir.Union, ir.Intersect, ir.Difference))
        return isinstance(child, (ir.Union, ir.Intersect))
    return False


def _operand(parent: ir.Expr, child: ir.Expr, *, right: bool = False) -> str:
    text = expr_text(child)
    return f"({text})" if _needs_parens(parent, child, right=right) else text


def _call(name: str, *args: str) -> str:
    return f"{name}({', '.join(args)})"


# id(node) -> (node, text), filled only inside remembering_texts().  The sort pass keys
# every term by its text, and a chain's text contains each of its terms' texts, so without
# this a deep term is printed again for every chain it is a part of.  Holding the node keeps
# its id from being reused.  Bounded in entries and in the length of a remembered text, so
# the texts of every level of a huge nested expression are never all held at once.
_text_memo: dict = {}
_TEXT_MEMO_LIMIT = 65536
_TEXT_MEMO_WIDTH = 4096
_remembering = 0  # how many remembering_texts() blocks are open
_remember_lock = threading.Lock()


@contextlib.contextmanager
def remembering_texts():
    """Remember each node's text while the block runs; forget them all when the last open
    block ends (the canonicalize pipeline runs inside one)."""
    global _remembering
    with _remember_lock:
        _remembering += 1
    try:
        yield
    finally:
        with _remember_lock:
            _remembering -= 1
            if not _remembering:
                _text_memo.clear()


def expr_text(e: ir.Expr) -> str:
    """Spec text of one pattern expression."""
    if not _remembering:
        return _expr_text(e)
    hit = _text_memo.get(id(e))
    if hit is not None and hit[0] is e:
        return hit[1]
    if len(_text_memo) > _TEXT_MEMO_LIMIT:
        _text_memo.clear()
    text = _expr_text(e)
    if len(text) <= _TEXT_MEMO_WIDTH:
        _text_memo[id(e)] = (e, text)
    return text


def _expr_text(e: ir.Expr) -> str:
    if isinstance(e, ir.Union) or isinstance(e, ir.Intersect):
        op = " | " if isinstance(e, ir.Union) else " & "
        if not e.terms:
            # Not something lowering builds; print the identity of the operator so the
            # text still means the same thing.
            return "none" if isinstance(e, ir.Union) else "all"
        if len(e.terms) == 1:
            return expr_text(e.terms[0])
        return op.join(_operand(e, t) for t in e.terms)
    if isinstance(e, ir.Difference):
        return f"{_operand(e, e.left)} - {_operand(e, e.right, right=True)}"
    printer = _PRIMITIVES.get(type(e))
    if printer is None:
        raise TypeError(f"to_text: unknown expression node {type(e).__name__}")
    return printer(e)


def _local(e: ir.Local) -> str:
    if e.left == e.right:
        return _call("local", _int(e.left))
    return _call("local", _int(e.left), _int(e.right))


def _every(e: ir.Every) -> str:
    if e.offset == 0:
        return _call("every", _int(e.step))
    return _call("every", _int(e.step), _int(e.offset))


_RANDOM_DEFAULTS = ir.Random(0)


def _random(e: ir.Random) -> str:
    args = [_int(e.count)]
    if e.block != _RANDOM_DEFAULTS.block:
        args.append(f"block={_int(e.block)}")
    if e.seed != _RANDOM_DEFAULTS.seed:
        args.append(f"seed={_int(e.seed)}")
    if e.causal != _RANDOM_DEFAULTS.causal:
        args.append(f"causal={_bool(e.causal)}")
    return _call("random", *args)


_TOPV_DEFAULTS = ir.TopVertical(0)
_TOPS_DEFAULTS = ir.TopSlash(0)
_TOPB_DEFAULTS = ir.TopBlocks(0)


def _top_vertical(e: ir.TopVertical) -> str:
    args = [f"topk={_int(e.topk)}"]
    if e.last != _TOPV_DEFAULTS.last:
        args.append(f"last={_int(e.last)}")
    if e.by != _TOPV_DEFAULTS.by:
        args.append(f"by={e.by}")
    return _call("vertical", *args)


def _top_slash(e: ir.TopSlash) -> str:
    args = [f"topk={_int(e.topk)}"]
    if e.last != _TOPS_DEFAULTS.last:
        args.append(f"last={_int(e.last)}")
    return _call("slash", *args)


def _top_blocks(e: ir.TopBlocks) -> str:
    args = [f"topk={_int(e.topk)}"]
    if e.block != _TOPB_DEFAULTS.block:
        args.append(f"block={_int(e.block)}")
    return _call("blocks", *args)


_PRIMITIVES = {
    ir.All: lambda e: "all",
    ir.Nothing: lambda e: "none",
    ir.Causal: lambda e: "causal",
    ir.Document: lambda e: "document",
    ir.Local: _local,
    ir.Block: lambda e: _call("block", _int(e.size)),
    ir.Stride: lambda e: _call("stride", _int(e.step)),
    ir.Dilated: lambda e: _call("dilated", _int(e.width), _int(e.dilation)),
    ir.Every: _every,
    ir.Rows: lambda e: _call("rows", index_text(e.index)),
    ir.Cols: lambda e: _call("cols", index_text(e.index)),
    ir.Global: lambda e: _call("global", index_text(e.index)),
    ir.Sink: lambda e: _call("sink", _int(e.count)),
    ir.Slash: lambda e: _call("slash", index_text(e.offsets)),
    ir.Prefix: lambda e: _call("prefix", _int(e.length)),
    ir.Random: _random,
    ir.Blockwise: lambda e: _call("blockwise", _int(e.block), expr_text(e.expr)),
    ir.TopVertical: _top_vertical,
    ir.TopSlash: _top_slash,
    ir.TopBlocks: _top_blocks,
}


# ---------------------------------------------------------------------------
# Retention, budgets, programs
# ---------------------------------------------------------------------------

_SNAP_DEFAULTS = ir.KvSnap(0)


def _kv_term(t: ir.KvTerm) -> str:
    if isinstance(t, ir.KvAuto):
        return "auto"
    if isinstance(t, ir.KvSink):
        return _call("sink", _int(t.count))
    if isinstance(t, ir.KvRecent):
        return _call("recent", _int(t.count))
    if isinstance(t, ir.KvHeavy):
        return _call("heavy", _int(t.count))
    if isinstance(t, ir.KvSnap):
        args = [_int(t.count)]
        if t.window != _SNAP_DEFAULTS.window:
            args.append(f"window={_int(t.window)}")
        if t.pool != _SNAP_DEFAULTS.pool:
            args.append(f"pool={_int(t.pool)}")
        return _call("snap", *args)
    if isinstance(t, ir.KvNorm):
        if t.low:
            return _call("norm", _int(t.count), "low=true")
        return _call("norm", _int(t.count))
    raise TypeError(f"to_text: unknown retention term {type(t).__name__}")


def _retention(r: ir.Retention) -> str:
    return " + ".join(_kv_term(t) for t in r.terms)


def _budget(b: ir.Budget) -> str:
    # The decimal is always written out: a bare `pyramid` would hide the number the
    # budget actually uses, and `beta=20.0` reads unambiguously as the default.
    if isinstance(b, ir.Uniform):
        return "uniform"
    if isinstance(b, ir.Pyramid):
        return _call("pyramid", f"beta={_decimal(b.beta)}")
    if isinstance(b, ir.Adaptive):
        return _call("adaptive", f"floor={_decimal(b.floor)}")
    raise TypeError(f"to_text: unknown budget {type(b).__name__}")


def _rule(r: ir.Rule) -> str:
    body = expr_text(r.expr)
    if r.layers is not None and r.heads is not None:
        return f"layers {_selector(r.layers)} heads {_selector(r.heads)} = {body}"
    if r.layers is not None:
        return f"layers {_selector(r.layers)} = {body}"
    if r.heads is not None:
        return f"heads {_selector(r.heads)} = {body}"
    return f"pattern = {body}"


def _program(p: ir.Program) -> str:
    if len(p.rules) == 1 and p.rules[0].specificity == 0 and p.kv is None and p.budget is None:
        return expr_text(p.rules[0].expr)
    lines = [_rule(r) for r in p.rules]
    if p.kv is not None:
        lines.append(f"kv = {_retention(p.kv)}")
    if p.budget is not None:
        lines.append(f"budget = {_budget(p.budget)}")
    return "\n".join(lines)
