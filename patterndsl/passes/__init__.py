"""Optimisation passes: pure rewrites that keep a spec's meaning exactly.

Each pass lives in its own module and maps an expression to an equal-meaning
expression (LANGUAGE.md semantics for every n, dynamic and n-dependent terms
included).  :func:`canonicalize` applies their node rules bottom-up, bringing each
node to a fixed point once its operands are; the result is a fixed point of every
pass, so canonicalising it again returns it unchanged.
"""
from __future__ import annotations

import gc
import sys
from dataclasses import replace

from .. import ir, printer
from ._walk import forget_nodes, map_operands
from .flatten import flatten
from .identities import simplify_identities
from .merge import merge
from .sort import sort_terms
from .subsume import subset, subsume

__all__ = ["PIPELINE", "canonicalize", "canonicalize_expr", "flatten", "simplify_identities",
           "merge", "subsume", "subset", "sort_terms"]

#: The passes, each a whole-tree rewrite ``Expr -> Expr`` that can also run on its own.
PIPELINE = (flatten, simplify_identities, merge, subsume, sort_terms)


#: The order canonicalize tries the passes' node rules on one node.  Subsume comes before
#: flatten: while a union operand is still one term, a term inside it (``a - b`` or
#: ``a & b`` next to ``a``) is dropped, which after splicing would need the union of the
#: other terms to see; the flattened node then goes round again.  Sort is last, so the
#: order a node settles in is the canonical one.  Each entry: the node rule and the node
#: types it never rewrites (those are not visited).
NODE_RULES = tuple((sys.modules[p.__module__].RULE, sys.modules[p.__module__].KEEP)
                   for p in (simplify_identities, merge, subsume, flatten, sort_terms))


def canonicalize_expr(e: ir.Expr, memo: dict | None = None) -> ir.Expr:
    """The canonical form of one expression.

    ``memo`` (id(node) -> (node, canonical form)) lets several calls share the work on
    sub-patterns they have in common; :func:`canonicalize` passes one for all lines of a
    program.  Without it, the call uses its own and forgets every node it remembered when
    it returns."""
    if memo is not None:
        return _canonical(e, memo)
    try:
        with printer.remembering_texts():  # the sort keys print every term
            return _canonical(e, {})
    finally:
        forget_nodes()


def _canonical(e: ir.Expr, memo: dict) -> ir.Expr:
    """Bottom-up to a fixed point at each node: operands first, then the node rules on
    the node until none rewrites it.

    Each pass's rule only needs its operands rewritten by that pass; here they are fixed
    points of all of them.  Running whole-tree passes in rounds until a round changed
    nothing (as this did before) walked every changed line again: on a file of hundreds
    of lines that second round cost a third of the time.  A rule that hands back a new
    node may have built new operands (a merged window, the union of what subsume kept),
    so its result goes through the same procedure; operands that are already canonical
    are found in ``memo``."""
    hit = memo.get(id(e))
    if hit is not None:
        return hit[1]
    node = map_operands(e, lambda c: _canonical(c, memo), memo)
    out = node
    for rule, keep in NODE_RULES:
        if type(out) not in keep:
            out = rule(out)
    if out is not node:
        out = _canonical(out, memo)
    # Holding the nodes keeps their ids from being reused while the memo lives; a
    # canonical node is its own canonical form.
    memo[id(e)] = (e, out)
    if out is not e:
        memo[id(out)] = (out, out)
    return out


def _selector_key(sel: ir.Selector | None):
    if sel is None:
        return ()
    return (sel.start, sel.stop is None, sel.stop or 0, sel.step)


def _rule_key(r: ir.Rule):
    # By where the selectors start (layers, then heads); the rest of them only breaks ties.
    starts = tuple(s.start for s in (r.layers, r.heads) if s is not None)
    return (r.specificity, starts, _selector_key(r.layers), _selector_key(r.heads))


def canonicalize(program: ir.Program) -> ir.Program:
    """Every rule's expression canonicalised, and the rules in a fixed order: the default,
    then ``layers``, ``heads`` and ``layers heads`` lines, each by selector.  Retention and
    budget are kept as written (the order of score terms is part of their meaning)."""
    # The passes allocate many nodes and make no reference cycles; a collection in the
    # middle would only rescan every live node of the program and of the memos.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with printer.remembering_texts():  # the sort keys print every term
            return _canonicalize(program)
    finally:
        forget_nodes()
        if was_enabled:
            gc.enable()


def _canonicalize(program: ir.Program) -> ir.Program:
    memo: dict = {}
    done: dict[int, tuple[ir.Expr, ir.Expr]] = {}  # id(line expression) -> (it, canonical)
    rules = []
    for r in program.rules:
        # Lines often hold the same let-bound object whole (``heads 0:4 = g``).
        hit = done.get(id(r.expr))
        if hit is None:
            hit = done[id(r.expr)] = (r.expr, _canonical(r.expr, memo))
        rules.append(ir.Rule(hit[1], r.layers, r.heads, span=r.span))
    return replace(program, rules=tuple(sorted(rules, key=_rule_key)))
