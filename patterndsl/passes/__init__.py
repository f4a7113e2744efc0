"""Optimisation passes: pure rewrites that keep a spec's meaning exactly.

Each pass lives in its own module and maps an expression to an equal-meaning
expression (LANGUAGE.md semantics for every n, dynamic and n-dependent terms
included).  :func:`canonicalize` runs them in a loop until nothing changes, which
makes the result a fixed point: canonicalising it again returns it unchanged.
"""
from __future__ import annotations

from dataclasses import replace

from .. import ir
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


def canonicalize_expr(e: ir.Expr) -> ir.Expr:
    """The canonical form of one expression."""
    while True:
        out = e
        for p in PIPELINE:
            out = p(out)
        # Every pass either shrinks the tree, merges terms, or reorders into the one
        # sorted order, so this loop ends after a few rounds.
        if out == e:
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
    rules = tuple(sorted((replace(r, expr=canonicalize_expr(r.expr)) for r in program.rules),
                         key=_rule_key))
    return replace(program, rules=rules)
