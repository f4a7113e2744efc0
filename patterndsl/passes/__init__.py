"""Optimisation passes: pure rewrites that keep a spec's meaning exactly.

Each pass lives in its own module and maps an expression to an equal-meaning
expression (LANGUAGE.md semantics for every n, dynamic and n-dependent terms
included).  :func:`canonicalize` runs them in a loop until nothing changes, which
makes the result a fixed point: canonicalising it again returns it unchanged.
"""
from __future__ import annotations

import gc
from dataclasses import replace

from .. import ir, printer
from ._walk import forget_nodes
from .flatten import flatten
from .identities import simplify_identities
from .merge import merge
from .sort import sort_terms
from .subsume import subset, subsume

__all__ = ["PIPELINE", "canonicalize", "canonicalize_expr", "flatten", "simplify_identities",
           "merge", "subsume", "subset", "sort_terms"]

# Flatten first so every later pass sees whole chains; sort last so the order the
# loop compares (and the order subsume visits terms in) is the canonical one.
PIPELINE = (flatten, simplify_identities, merge, subsume, sort_terms)


def canonicalize_expr(e: ir.Expr, memos: list[dict] | None = None) -> ir.Expr:
    """The canonical form of one expression.

    ``memos`` (one dict per pass of :data:`PIPELINE`, see :func:`._walk.bottom_up`) lets
    several calls share the work on sub-patterns they have in common; :func:`canonicalize`
    passes one set for all lines of a program.  Without it, the call uses its own and
    forgets every node it remembered when it returns."""
    if memos is not None:
        return _fixed_point(e, memos)
    try:
        with printer.remembering_texts():  # the sort keys print every term
            return _fixed_point(e, [{} for _ in PIPELINE])
    finally:
        forget_nodes()


def _fixed_point(e: ir.Expr, memos: list[dict]) -> ir.Expr:
    while True:
        out = e
        for p, memo in zip(PIPELINE, memos):
            out = p(out, memo)
        # Every pass either shrinks the tree, merges terms, or reorders into the one
        # sorted order, so this loop ends after a few rounds.  A round that changed
        # nothing hands back the very same object, which spares the deep comparison.
        if out is e or out == e:
            return out
        e = out


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
    memos = [{} for _ in PIPELINE]
    done: dict[int, tuple[ir.Expr, ir.Expr]] = {}  # id(line expression) -> (it, canonical)
    rules = []
    for r in program.rules:
        # Lines often hold the same let-bound object whole (``heads 0:4 = g``).
        hit = done.get(id(r.expr))
        if hit is None:
            hit = done[id(r.expr)] = (r.expr, _fixed_point(r.expr, memos))
        rules.append(ir.Rule(hit[1], r.layers, r.heads, span=r.span))
    return replace(program, rules=tuple(sorted(rules, key=_rule_key)))
