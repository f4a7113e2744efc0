"""Hypothesis strategies for random, valid psparse IR.

Everything generated here is something ``lower`` could have built from valid text:
arguments within LANGUAGE.md's ranges with defaults filled in, non-empty index and
offset sets (negative indices, open and stepped slices included), ``blockwise`` bodies
without ``document`` or dynamic terms, n-ary chains of at least two terms (nested
chains included, as ``(a | b) | c`` lowers), non-overlapping ``heads``/``layers``
lines, retention without a score term beside ``auto``, and budgets.

Import as ``from strategies import exprs`` (tests/conftest.py puts this folder on
``sys.path``) or ``from tests.strategies import exprs``.
"""
from __future__ import annotations

from functools import lru_cache

from hypothesis import strategies as st

from patterndsl import ir

__all__ = ["index_items", "index_sets", "offset_sets", "static_leaves", "exprs", "static_exprs",
           "selectors", "retentions", "budgets", "programs"]

_SMALL = st.integers(0, 12)
_POSITIVE = st.integers(1, 12)


# ---------------------------------------------------------------------------
# Index and offset sets
# ---------------------------------------------------------------------------

def _opt(s):
    return st.one_of(st.none(), s)


_STEPS = st.one_of(st.none(), st.integers(1, 5), st.integers(-5, -1))

index_slices = st.builds(ir.Slice, _opt(st.integers(-45, 45)), _opt(st.integers(-45, 45)), _STEPS)
index_items = st.one_of(st.integers(-45, 45), index_slices)
index_sets = st.lists(index_items, min_size=1, max_size=4).map(lambda xs: ir.IndexSet(tuple(xs)))

offset_slices = st.builds(ir.Slice, st.integers(-45, 45), st.integers(-45, 45), _STEPS)
offset_sets = st.lists(st.one_of(st.integers(-45, 45), offset_slices), min_size=1,
                       max_size=4).map(lambda xs: ir.IndexSet(tuple(xs)))


# ---------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------

@st.composite
def _every(draw):
    step = draw(st.integers(1, 8))
    return ir.Every(step, draw(st.integers(0, step - 1)))


_randoms = st.builds(ir.Random, st.integers(0, 4), block=st.integers(1, 8),
                     seed=st.one_of(st.integers(0, 50), st.just(2**32 - 1)), causal=st.booleans())


@lru_cache(maxsize=None)
def static_leaves(random: bool = True):
    """Primitives whose mask needs no call data (no document, no dynamic term)."""
    leaves = [
        st.just(ir.All()), st.just(ir.Nothing()), st.just(ir.Causal()),
        st.builds(ir.Local, _SMALL, _SMALL),
        st.builds(lambda w: ir.Local(w, w), _SMALL),
        st.builds(ir.Block, _POSITIVE),
        st.builds(ir.Stride, st.integers(1, 8)),
        st.builds(ir.Dilated, st.integers(0, 6), st.integers(1, 5)),
        _every(),
        st.builds(ir.Rows, index_sets),
        st.builds(ir.Cols, index_sets),
        st.builds(ir.Global, index_sets),
        st.builds(ir.Sink, _SMALL),
        st.builds(ir.Slash, offset_sets),
        st.builds(ir.Prefix, _SMALL),
    ]
    if random:
        leaves.append(_randoms)
    return st.one_of(*leaves)


_dynamic_leaves = st.one_of(
    st.builds(ir.TopVertical, st.integers(1, 16), last=st.integers(1, 128)),
    st.builds(lambda t, by: ir.TopVertical(t, by=by), st.integers(1, 16),
              st.sampled_from(["norm", "lownorm"])),
    st.builds(ir.TopSlash, st.integers(1, 16), last=st.integers(1, 128)),
    st.builds(ir.TopBlocks, st.integers(1, 16), block=st.integers(1, 128)),
)


@lru_cache(maxsize=None)  # building a recursive strategy is slow; draws from one are not
def exprs(*, dynamic: bool = True, document: bool = True, random: bool = True,
          blockwise_depth: int = 2, max_leaves: int = 10):
    """Random pattern expressions.  ``dynamic``/``document``/``random`` allow those terms;
    ``blockwise_depth`` bounds how deeply blockwise may nest."""
    leaf_options = [static_leaves(random)]
    if document:
        leaf_options.append(st.just(ir.Document()))
    if dynamic:
        leaf_options.append(_dynamic_leaves)
    if blockwise_depth > 0:
        body = exprs(dynamic=False, document=False, random=random,
                     blockwise_depth=blockwise_depth - 1, max_leaves=max(2, max_leaves // 2))
        leaf_options.append(st.builds(ir.Blockwise, st.integers(1, 6), body))
    leaves = st.one_of(*leaf_options)

    def extend(children):
        chains = st.lists(children, min_size=2, max_size=4).map(tuple)
        return st.one_of(
            chains.map(ir.Union),
            chains.map(ir.Intersect),
            st.builds(ir.Difference, children, children),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


def static_exprs(*, document: bool = False, random: bool = True, max_leaves: int = 10):
    """Expressions whose mask needs no q/k data (document only when asked)."""
    return exprs(dynamic=False, document=document, random=random, max_leaves=max_leaves)


# ---------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------

# Selectors stay below 60 with steps up to 4, so two of them that share a number share
# one below 60 + lcm(steps) < 200.
_SELECTOR_HORIZON = range(200)

selectors = st.one_of(
    st.builds(lambda i: ir.Selector(i, i + 1, 1), st.integers(0, 40)),
    st.builds(lambda a, d, c: ir.Selector(a, a + d, c), st.integers(0, 40), st.integers(2, 19),
              st.integers(1, 4)),
    st.builds(lambda a, c: ir.Selector(a, None, c), st.integers(0, 40), st.integers(1, 4)),
)


def _overlap(a: ir.Selector, b: ir.Selector) -> bool:
    return any(x in a and x in b for x in _SELECTOR_HORIZON)


@st.composite
def _disjoint(draw, pairs: bool = False, max_size: int = 2):
    """Selectors (or (layers, heads) pairs) no two of which cover a common head/layer."""
    cand = st.tuples(selectors, selectors) if pairs else selectors
    kept: list = []
    for c in draw(st.lists(cand, max_size=max_size)):
        if pairs:
            clash = any(_overlap(c[0], k[0]) and _overlap(c[1], k[1]) for k in kept)
        else:
            clash = any(_overlap(c, k) for k in kept)
        if not clash:
            kept.append(c)
    return kept


_kv_position = [st.just(ir.KvAuto()), st.builds(ir.KvSink, _SMALL), st.builds(ir.KvRecent, _SMALL)]
_kv_score = [
    st.builds(ir.KvHeavy, _SMALL),
    st.builds(ir.KvSnap, _SMALL, window=st.integers(1, 64),
              pool=st.integers(0, 5).map(lambda i: 2 * i + 1)),
    st.builds(ir.KvNorm, _SMALL, low=st.booleans()),
]


@st.composite
def retentions(draw):
    """At most one term of each kind, in any order; never a score term beside ``auto``."""
    terms = draw(st.lists(st.one_of(*_kv_position, *_kv_score), min_size=1, max_size=5,
                          unique_by=type))
    if any(isinstance(t, ir.KvAuto) for t in terms):
        terms = [t for t in terms if not isinstance(t, ir.SCORE_KV_TYPES)]
    return ir.Retention(tuple(terms))


budgets = st.one_of(
    st.just(ir.Uniform()),
    st.builds(ir.Pyramid, st.one_of(st.floats(1.0, 1000.0), st.sampled_from([1.0, 20.0, 2.5]))),
    st.builds(ir.Adaptive, st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.2, 1.0, 1e-5]))),
)


@st.composite
def programs(draw, expr_strategy=None):
    """Valid programs: an optional default line, non-overlapping heads / layers /
    layers+heads lines in any order, optional kv and budget; at least one line."""
    e = exprs(max_leaves=6) if expr_strategy is None else expr_strategy
    rules = []
    if draw(st.booleans()):
        rules.append(ir.Rule(draw(e)))
    for sel in draw(_disjoint()):
        rules.append(ir.Rule(draw(e), heads=sel))
    for sel in draw(_disjoint()):
        rules.append(ir.Rule(draw(e), layers=sel))
    for lay, head in draw(_disjoint(pairs=True)):
        rules.append(ir.Rule(draw(e), layers=lay, heads=head))
    if not rules:
        rules.append(ir.Rule(draw(e)))
    rules = draw(st.permutations(rules))
    kv = draw(st.one_of(st.none(), retentions()))
    budget = draw(st.one_of(st.none(), budgets))
    return ir.Program(tuple(rules), kv=kv, budget=budget)
