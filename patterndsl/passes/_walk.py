"""The traversal the passes share: rebuild an expression bottom-up.

A pass is a node-level rule (``Expr -> Expr``) that may assume its operands are
already rewritten; :func:`bottom_up` applies it from the leaves to the root and
keeps every unchanged subtree as the same object, so a pass that rewrites nothing
returns its input (and canonicalize can stop on ``is``).  :func:`map_operands` is the
operand step both it and canonicalize use.

A rule is a pure function of the subtree it is given, so its result for one node
object can be reused wherever that object occurs again.  Lowering substitutes a
``let`` name by the very object it was bound to, so in a spec file the same
sub-pattern object sits under many lines (and, for ``let b = a | a``, twice under one
node); :func:`bottom_up` visits each such object once per memo.  Memos are keyed by
object identity, not by equality, so a reused result carries the spans of the very
node it was computed from.
"""
from __future__ import annotations

from typing import Callable

from .. import ir

Rule = Callable[[ir.Expr], ir.Expr]


def bottom_up(e: ir.Expr, rule: Rule, memo: dict | None = None,
              keep: frozenset = frozenset()) -> ir.Expr:
    """``rule`` applied from the leaves of ``e`` up.  ``memo`` (id(node) -> (node, result))
    may be shared between calls that use the same ``rule``, e.g. over every line of a
    program; without one, reuse is limited to the objects shared inside ``e``.  ``keep``
    names leaf types that ``rule`` always returns unchanged, so they are not visited."""
    if type(e) in keep:
        return e
    return _bottom_up(e, rule, {} if memo is None else memo, keep)


def map_operands(e: ir.Expr, visit, memo: dict, keep: frozenset = frozenset()) -> ir.Expr:
    """``e`` with each operand whose type is not in ``keep`` replaced by its entry in
    ``memo`` (id(node) -> (node, result)) or else by ``visit(operand)``; ``e`` itself when
    no operand changed.  The one place that knows which IR nodes have operands."""
    t = type(e)
    if t is ir.Union or t is ir.Intersect:
        terms = []
        changed = False
        for c in e.terms:
            if type(c) not in keep:
                h = memo.get(id(c))
                out = h[1] if h is not None else visit(c)
                if out is not c:
                    changed = True
                    c = out
            terms.append(c)
        if changed:
            return t(tuple(terms), span=e.span)  # what replace() builds, minus its overhead
    elif t is ir.Difference:
        left, right = e.left, e.right
        if type(left) not in keep:
            h = memo.get(id(left))
            left = h[1] if h is not None else visit(left)
        if type(right) not in keep:
            h = memo.get(id(right))
            right = h[1] if h is not None else visit(right)
        if left is not e.left or right is not e.right:
            return ir.Difference(left, right, span=e.span)
    elif t is ir.Blockwise:
        inner = e.expr
        if type(inner) not in keep:
            h = memo.get(id(inner))
            inner = h[1] if h is not None else visit(inner)
        if inner is not e.expr:
            return ir.Blockwise(e.block, inner, span=e.span)
    return e


def _bottom_up(e: ir.Expr, rule: Rule, memo: dict, keep: frozenset) -> ir.Expr:
    hit = memo.get(id(e))
    if hit is not None:
        return hit[1]
    node = map_operands(e, lambda c: _bottom_up(c, rule, memo, keep), memo, keep)
    out = rule(node)
    # Holding ``e`` keeps its id from being reused by another object while the memo lives.
    memo[id(e)] = (e, out)
    return out


#: Expression types without operands: a pass may pass some of them as ``keep``.
LEAF_TYPES = frozenset(set(ir.PRIMITIVE_TYPES) - {ir.Blockwise}) | frozenset(ir.DYNAMIC_TYPES)


#: Every memo keyed by node identity; :func:`forget_nodes` empties them all.
_NODE_MEMOS: list[dict] = []


def node_memo() -> dict:
    """A new memo keyed by ``id(node)`` (entries hold their nodes, so ids stay unique) that
    :func:`forget_nodes` empties."""
    memo: dict = {}
    _NODE_MEMOS.append(memo)
    return memo


def forget_nodes() -> None:
    """Drop every remembered node: :func:`patterndsl.passes.canonicalize` calls this when it
    is done, so nothing it looked at stays alive after it returns."""
    for memo in _NODE_MEMOS:
        memo.clear()


def memo_by_node(fn):
    """Remember ``fn(node)`` per node object (bounded): callers ask about the same node
    many times, e.g. a sort key per comparison or a description per pair of terms."""
    cache = node_memo()

    def wrapper(node):
        hit = cache.get(id(node))
        if hit is not None and hit[0] is node:
            return hit[1]
        if len(cache) > _MEMO_LIMIT:
            cache.clear()
        out = fn(node)
        cache[id(node)] = (node, out)  # holding the node keeps its id from being reused
        return out
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    wrapper.cache = cache
    return wrapper


#: Entries a node memo holds before it starts over (it keeps its nodes alive meanwhile).
_MEMO_LIMIT = 65536


def nary(cls, terms) -> ir.Expr:
    """``cls(terms)`` with the degenerate sizes spelled as what they mean: no terms is the
    operator's identity, one term is that term."""
    terms = tuple(terms)
    if not terms:
        return ir.Nothing() if cls is ir.Union else ir.All()
    if len(terms) == 1:
        return terms[0]
    return cls(terms)
