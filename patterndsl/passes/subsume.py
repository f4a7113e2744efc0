"""Drop terms that other terms already cover, using a conservative subset oracle.

In a union a term contained in another term adds nothing; in an intersection a
term that contains another one removes nothing.  ``A - B`` is empty when
``A ⊆ B``; ``(A - B) - C`` is ``A - B`` when ``C ⊆ B``; and a union term of
``A`` that lies inside ``B`` contributes nothing to ``A - B``.

:func:`subset` answers True only when ``a ⊆ b`` holds for every n and every
(q, k) (query positions are not assumed to be below n), and False whenever it
cannot prove that.  It reasons with three exact descriptions:

* offset sets: ``local``, ``causal``, ``stride``, ``dilated``, ``slash`` (and
  ``all``/``none``) allow ``(q, k)`` by ``q - k`` alone, each as a finite union of
  arithmetic progressions;
* position sets: ``cols``, ``sink`` and ``every`` allow by ``k`` alone, ``rows`` by
  ``q`` alone, ``global`` by either; an index set is described item by item as a
  progression of absolute positions or a run counted back from n, so items are
  compared without ever being resolved against one n;
* the block structure of ``block``, ``prefix`` and ``blockwise``.
Dynamic terms and ``document`` are only ever compared for equality.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .. import ir
from ._walk import LEAF_TYPES, _MEMO_LIMIT, bottom_up, memo_by_node, nary, node_memo
from .merge import index_item_key, offset_item_key
from .sort import term_key

# Bounds that keep the pass fast on pathological input (a megabyte one-liner): beyond
# them the oracle answers False and the pass keeps terms, which is always safe.
_PAIRWISE_LIMIT = 64  # terms of one chain (or items of one set) compared pairwise
_SET_LIMIT = 256  # items of an index or offset set that get described at all
_WORK_LIMIT = 4096  # pairs of progressions (or of position items) compared per question


# ---------------------------------------------------------------------------
# Arithmetic progressions {x : lo <= x <= hi, x = res (mod mod)}; None bounds are open
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _AP:
    lo: int | None
    hi: int | None
    mod: int = 1
    res: int = 0


def _ap(lo, hi, mod=1, res=0) -> _AP | None:
    """The progression with its bounds moved onto elements; None when it is empty."""
    res %= mod
    if lo is not None:
        lo += (res - lo) % mod
    if hi is not None:
        hi -= (hi - res) % mod
    if lo is not None and hi is not None:
        if lo > hi:
            return None
        if lo == hi:
            return _AP(lo, hi, 1, 0)
    return _AP(lo, hi, mod, res)


def _range_ap(start: int, stop: int, step: int) -> _AP | None:
    r = range(start, stop, step)
    if not len(r):
        return None
    first, last = r[0], r[-1]
    return _ap(min(first, last), max(first, last), abs(step), first)


def _contains(b: _AP, x: int) -> bool:
    return ((b.lo is None or x >= b.lo) and (b.hi is None or x <= b.hi)
            and x % b.mod == b.res)


def _ap_in_ap(a: _AP, b: _AP) -> bool:
    if b.lo is not None and (a.lo is None or a.lo < b.lo):
        return False
    if b.hi is not None and (a.hi is None or a.hi > b.hi):
        return False
    if a.lo is not None and a.lo == a.hi:
        return a.lo % b.mod == b.res
    return a.mod % b.mod == 0 and a.res % b.mod == b.res


def _covered_by_runs(lo: int, hi: int, b_list) -> bool:
    """Every integer in [lo, hi] lies in one of the step-1 progressions (runs) of b_list."""
    runs = sorted(((b.lo, b.hi) for b in b_list if b.mod == 1),
                  key=lambda r: (r[0] is not None, r[0] or 0))
    reached = lo - 1  # everything in [lo, reached] is covered
    for start, stop in runs:
        if start is not None and start > reached + 1:
            break
        if stop is None or stop >= hi:
            return True
        reached = max(reached, stop)
    return False


# Elements of a progression that may be checked one by one when no single progression of
# the other side holds it, e.g. slash([0, 2, 4]) inside slash([0]) | slash([2:5]).
_ENUMERATE_LIMIT = 256


def _aps_subset(a_list, b_list) -> bool:
    if len(a_list) * len(b_list) > _WORK_LIMIT:
        return False
    for a in a_list:
        if any(_ap_in_ap(a, b) for b in b_list):
            continue
        if a.lo is None or a.hi is None:
            return False
        if a.mod == 1 and _covered_by_runs(a.lo, a.hi, b_list):
            continue
        if ((a.hi - a.lo) // a.mod + 1) * len(b_list) > _ENUMERATE_LIMIT:
            return False
        if not all(any(_contains(b, x) for b in b_list) for x in range(a.lo, a.hi + 1, a.mod)):
            return False
    return True


# ---------------------------------------------------------------------------
# Offset sets (q - k)
# ---------------------------------------------------------------------------

def _offset_ap(item) -> _AP | None:
    if isinstance(item, ir.Slice):
        return _range_ap(item.start, item.stop, 1 if item.step is None else item.step)
    return _AP(item, item)


@memo_by_node
def _offset_items(index: ir.IndexSet):
    if len(index.items) > _SET_LIMIT:
        return None
    return [ap for ap in map(_offset_ap, index.items) if ap is not None]


@memo_by_node
def _offsets(e: ir.Expr):
    """The offsets ``q - k`` that ``e`` allows, as progressions, when ``e`` depends on them alone."""
    if isinstance(e, ir.All):
        return [_AP(None, None)]
    if isinstance(e, ir.Nothing):
        return []
    if isinstance(e, ir.Causal):
        return [_AP(0, None)]
    if isinstance(e, ir.Local):
        return [_AP(-e.right, e.left)]
    if isinstance(e, ir.Stride):
        return [_ap(None, None, e.step, 0)]
    if isinstance(e, ir.Dilated):
        reach = e.width * e.dilation
        return [_ap(-reach, reach, e.dilation, 0)]
    if isinstance(e, ir.Slash):
        return _offset_items(e.offsets)  # None for a set too large to describe
    return None


_DIAGONAL = [_AP(0, 0)]


def _is_diagonal(e: ir.Expr) -> bool:
    """``e`` allows only pairs with q == k."""
    offs = _offsets(e)
    return offs is not None and _aps_subset(offs, _DIAGONAL)


def _has_diagonal(e: ir.Expr) -> bool:
    """``e`` allows every pair with q == k."""
    if isinstance(e, (ir.Block, ir.Document)):
        return True
    if isinstance(e, ir.Blockwise):
        return _has_diagonal(e.expr)
    offs = _offsets(e)
    if offs is not None:
        return _aps_subset(_DIAGONAL, offs)
    if isinstance(e, ir.Intersect):
        return all(_has_diagonal(t) for t in e.terms)
    if isinstance(e, ir.Union):
        return any(_has_diagonal(t) for t in e.terms)
    return False


def _band(reach: int):
    """Every offset in [-reach, reach] (none when reach < 0)."""
    return [_AP(-reach, reach)] if reach >= 0 else []


# ---------------------------------------------------------------------------
# Position sets: what an index set (or sink / every) selects among 0 .. n-1
# ---------------------------------------------------------------------------
# Each item is described as one of
#   ("abs", ap)      the positions of ap that are below n;
#   ("rel", ap)      the positions n + t for t in ap (t < 0) that are >= 0;
#   ("raw", item)    anything else, only comparable by equality;
# an item that selects nothing for every n has no description.

def _item_desc(item):
    if not isinstance(item, ir.Slice):
        if item >= 0:
            return ("abs", _AP(item, item))
        return ("rel", _AP(item, item))
    a, b, c = item.start, item.stop, 1 if item.step is None else item.step
    if c < 0:
        return ("raw", item)
    if a is None or a >= 0:
        a = 0 if a is None else a
        if b is None:
            return ("abs", _ap(a, None, c, a))
        if b >= 0:
            ap = _ap(a, b - 1, c, a)
            return None if ap is None else ("abs", ap)
        return ("raw", item)
    # A start counted from the end is clamped to 0 when n is small, which shifts the
    # progression for steps above 1; with step 1 the run is just cut short.
    if c != 1:
        return ("raw", item)
    if b is None:
        return ("rel", _AP(a, -1))
    if b < 0:
        ap = _ap(a, b - 1)
        return None if ap is None else ("rel", ap)
    return ("raw", item)


@memo_by_node
def _index_desc(index: ir.IndexSet):
    """None for a set too large to describe."""
    if len(index.items) > _SET_LIMIT:
        return None
    return [d for d in (_item_desc(i) for i in index.items) if d is not None]


def _position_subset(a_desc, b_desc) -> bool:
    """Every position selected by a_desc is selected by b_desc, for every n."""
    if a_desc is None or b_desc is None or len(a_desc) * len(b_desc) > _WORK_LIMIT:
        return False
    b_abs = [d[1] for d in b_desc if d[0] == "abs"]
    b_rel = [d[1] for d in b_desc if d[0] == "rel"]
    b_raw = [d[1] for d in b_desc if d[0] == "raw"]
    # [0:], [:], [0::1] select every position below n.
    full = any(ap.lo is not None and ap.lo <= 0 and ap.hi is None and ap.mod == 1 for ap in b_abs)
    if full:
        return True
    for kind, what in a_desc:
        if kind == "abs":
            ok = _aps_subset([what], b_abs)
        elif kind == "rel":
            ok = _aps_subset([what], b_rel)
        else:
            ok = what in b_raw
        if not ok:
            return False
    return True


@memo_by_node
def _key_positions(e: ir.Expr):
    """The keys ``e`` allows when it depends on ``k`` alone (sink, every, cols)."""
    if isinstance(e, ir.Cols):
        return _index_desc(e.index)
    if isinstance(e, ir.Sink):
        return [] if e.count == 0 else [("abs", _AP(0, e.count - 1))]
    if isinstance(e, ir.Every):
        return [("abs", _ap(0, None, e.step, e.offset))]
    return None


@memo_by_node
def _describe(e: ir.Expr):
    """``(_offsets(e), _key_positions(e), _is_diagonal(e))``: one look-up per primitive for
    what the oracle asks about it first."""
    offs = _offsets(e)
    return offs, _key_positions(e), offs is not None and _is_diagonal(e)


# ---------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------

_subset_memo: dict = node_memo()  # (id(a), id(b)) -> (a, b, answer)


_OPERATORS = frozenset({ir.Union, ir.Intersect, ir.Difference})


def subset(a: ir.Expr, b: ir.Expr) -> bool:
    """True only if every (q, k) that ``a`` allows, ``b`` allows, for every n."""
    if type(a) not in _OPERATORS:
        return _subset(a, b)  # a primitive: cheaper to answer than to look up
    # Remembered per pair of node objects: a chain's terms are compared pairwise, a
    # difference asks about its left terms again, and the next round of the pipeline asks
    # about the same term objects in their sorted order.
    key = (id(a), id(b))
    hit = _subset_memo.get(key)
    if hit is not None and hit[0] is a and hit[1] is b:
        return hit[2]
    if len(_subset_memo) > _MEMO_LIMIT:
        _subset_memo.clear()
    out = _subset(a, b)
    _subset_memo[key] = (a, b, out)  # holding a and b keeps their ids from being reused
    return out


def _subset(a: ir.Expr, b: ir.Expr) -> bool:
    ta, tb = type(a), type(b)
    # Nodes of different types are never equal, which spares the dataclass comparison.
    if a is b or ta is ir.Nothing or tb is ir.All or (ta is tb and a == b):
        return True
    # Operators first: these reduce to questions about their operands.
    if ta is ir.Union:
        for t in a.terms:
            if not subset(t, b):
                return False
        return True
    if tb is ir.Intersect:
        for t in b.terms:
            if not subset(a, t):
                return False
        return True
    if ta is ir.Intersect:
        for t in a.terms:
            if subset(t, b):
                return True
    elif ta is ir.Difference and subset(a.left, b):
        return True
    if tb is ir.Union:
        for t in b.terms:
            if subset(a, t):
                return True
    if ta is ir.Intersect or ta is ir.Difference or tb is ir.Union or tb is ir.Difference:
        return False
    return _primitive_subset(a, b)


def _primitive_subset(a: ir.Expr, b: ir.Expr) -> bool:
    a_offs, a_keys, a_diagonal = _describe(a)
    b_offs, b_keys, _ = _describe(b)
    if a_offs is not None and b_offs is not None:
        return _aps_subset(a_offs, b_offs)
    if a_offs is not None and a_diagonal and _has_diagonal(b):
        return True

    if a_keys is not None:
        if b_keys is None and isinstance(b, ir.Global):
            b_keys = _index_desc(b.index)
        return b_keys is not None and _position_subset(a_keys, b_keys)
    if isinstance(a, (ir.Rows, ir.Global)):
        return (isinstance(b, (ir.Rows, ir.Global)) if isinstance(a, ir.Rows)
                else isinstance(b, ir.Global)) and _position_subset(
                    _index_desc(a.index), _index_desc(b.index))

    if isinstance(a, ir.Prefix):
        # q < p and k < p: inside sink(p), inside block 0 of any block size >= p, and
        # inside the band of offsets -(p-1) .. p-1.
        p = a.length
        if isinstance(b, ir.Prefix):
            return p <= b.length
        if isinstance(b, ir.Block):
            return p <= b.size
        if b_offs is not None:
            return _aps_subset(_band(p - 1), b_offs)
        return subset(ir.Sink(p), b)

    if isinstance(a, ir.Block):
        if isinstance(b, ir.Block):
            return b.size % a.size == 0
        if isinstance(b, ir.Blockwise):
            return b.block % a.size == 0 and _has_diagonal(b.expr)
        if b_offs is not None:
            return _aps_subset(_band(a.size - 1), b_offs)
        return False

    if isinstance(a, ir.Blockwise):
        if isinstance(b, ir.Blockwise) and a.block == b.block:
            return subset(a.expr, b.expr)
        if isinstance(b, ir.Block) and b.size % a.block == 0:
            return subset(a.expr, ir.Local(0, 0))
        return False

    if isinstance(a, ir.Random) and isinstance(b, ir.Random):
        # R(i) is drawn by one fixed sequence that stops after min(r, cand) blocks, so a
        # smaller count with everything else equal picks a prefix of the same draws.
        return (a.block, a.seed, a.causal) == (b.block, b.seed, b.causal) and a.count <= b.count
    return False


# ---------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------

def _reduce(terms, covered, key=term_key) -> list:
    """Keep a set of terms none of which ``covered(t, other)`` by another kept one.

    Terms are visited in canonical order and a kept term is only ever replaced by one
    that covers it, so every dropped term is covered by some term that stays, even when
    the oracle proves two equal terms contain each other, or proves a cycle only one way."""
    if len(terms) > _PAIRWISE_LIMIT:
        return list(terms)
    kept: list[int] = []
    keys = [key(t) for t in terms]
    for i in sorted(range(len(terms)), key=keys.__getitem__):
        t = terms[i]
        for j in kept:
            if covered(t, terms[j]):
                break
        else:
            kept = [j for j in kept if not covered(terms[j], t)]
            kept.append(i)
    kept.sort()
    return [terms[i] for i in kept]


def _reduce_items(e: ir.Expr) -> ir.Expr:
    """Drop items of an index or offset set that other items of the same set already
    select (``[0, 5, 0:64]`` is ``[0:64]``), and items that select nothing for every n."""
    index = e.offsets if isinstance(e, ir.Slash) else e.index
    if len(index.items) > _PAIRWISE_LIMIT:
        return e
    if isinstance(e, ir.Slash):
        descs = [[] if ap is None else [ap] for ap in map(_offset_ap, index.items)]
        covered = lambda x, y: _aps_subset(descs[x], descs[y])  # noqa: E731
        key = offset_item_key
    else:
        descs = [[] if d is None else [d] for d in map(_item_desc, index.items)]
        covered = lambda x, y: _position_subset(descs[x], descs[y])  # noqa: E731
        key = index_item_key
    live = [i for i, d in enumerate(descs) if d]
    kept = _reduce(live, covered, key=lambda i: key(index.items[i]))
    if len(kept) == len(index.items):
        return e
    items = ir.IndexSet(tuple(index.items[i] for i in kept), span=index.span)
    return replace(e, offsets=items) if isinstance(e, ir.Slash) else replace(e, index=items)


def _subsume_node(e: ir.Expr) -> ir.Expr:
    t = type(e)
    if t is ir.Union:
        terms = _reduce(e.terms, subset)
    elif t is ir.Rows or t is ir.Cols or t is ir.Global or t is ir.Slash:
        return _reduce_items(e)
    elif isinstance(e, ir.Intersect):
        terms = _reduce(e.terms, lambda t, k: subset(k, t))
    elif isinstance(e, ir.Difference):
        left, right = e.left, e.right
        if subset(left, right):
            return ir.Nothing(span=e.span)
        if isinstance(left, ir.Difference) and subset(right, left.right):
            return left
        if isinstance(left, ir.Union):
            rest = [t for t in left.terms if not subset(t, right)]
            if len(rest) < len(left.terms):
                return ir.Difference(nary(ir.Union, rest), right, span=e.span)
        return e
    else:
        return e
    if len(terms) == len(e.terms):
        return e
    out = nary(type(e), terms)
    return replace(out, span=e.span) if isinstance(out, type(e)) else out


# The rule rewrites chains, differences and index/offset sets only.
_KEEP = LEAF_TYPES - {ir.Rows, ir.Cols, ir.Global, ir.Slash}


def subsume(e: ir.Expr, memo: dict | None = None) -> ir.Expr:
    return bottom_up(e, _subsume_node, memo, _KEEP)


#: The node-level rule and what it never rewrites, for drivers that walk the tree.
RULE = _subsume_node
KEEP = _KEEP
