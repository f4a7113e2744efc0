"""Merge terms of one kind into a single term where the result is exactly equal.

In a union:
  ``local(a, b) | local(c, d) = local(max(a, c), max(b, d))``: both bands contain
  offset 0, so their union is again one band;
  ``sink(a) | sink(b) = sink(max)``, ``prefix`` likewise (nested sets);
  ``cols(I) | cols(J) = cols(I + J)``, likewise ``rows``, ``global`` and ``slash``:
  an index or offset set is the union of its items, so concatenating the items
  is the union, with no need to resolve anything against n;
  ``block(a) | block(b) = block(b)`` when ``a`` divides ``b`` (every a-block lies
  inside one b-block);
  ``blockwise(b, A) | blockwise(b, B) = blockwise(b, A | B)`` (same block map).
In an intersection: ``local`` takes the minima, ``sink`` and ``prefix`` the
minimum, ``stride(a) & stride(b) = stride(lcm(a, b))``, ``block(a) & block(b) =
block(a)`` when ``a`` divides ``b``, and blockwise terms of one block size
combine inside.  ``blockwise(b, A) - blockwise(b, B) = blockwise(b, A - B)``.
``rows(I) & rows(J)`` is NOT merged: that would be an intersection of sets.

Every index and offset set is also put in a canonical order with duplicates
dropped (``cols([5, 0, 5])`` is ``cols([0, 5])``); a step of 1 is written as no
step, and a slash item that names no offset goes.  Index items are never
resolved against n.
"""
from __future__ import annotations

from dataclasses import replace
from math import gcd

from .. import ir
from ._walk import LEAF_TYPES, bottom_up, nary


# ---------------------------------------------------------------------------
# Index and offset sets
# ---------------------------------------------------------------------------

def _opt_key(v):
    # None sorts first, then non-negative values ascending, then negative ones ascending.
    if v is None:
        return (0, 0)
    return (1, v) if v >= 0 else (2, v)


def index_item_key(item):
    """Canonical order of index-set items: those anchored at the start (non-negative, or
    a slice from the start) before those anchored at the end (negative), then by position."""
    if isinstance(item, ir.Slice):
        anchor = item.start if item.start is not None else 0
        region = 0 if anchor >= 0 else 1
        return (region, anchor, 1, _opt_key(item.start), _opt_key(item.stop), _opt_key(item.step))
    return (0 if item >= 0 else 1, item, 0)


def offset_item_key(item):
    """Offsets are literal numbers, so they simply sort by value, then by extent."""
    if isinstance(item, ir.Slice):
        return (item.start, 1, item.stop, 1 if item.step is None else item.step)
    return (item, 0)


def _plain_step(item):
    if isinstance(item, ir.Slice) and item.step == 1:
        return ir.Slice(item.start, item.stop, None, span=item.span)
    return item


def _in_range(x: int, s: ir.Slice) -> bool:
    return x in range(s.start, s.stop, 1 if s.step is None else s.step)


def _sorted_unique(items, key) -> tuple:
    out: list = []
    for it in sorted(items, key=key):
        # Equal items have equal keys, so after sorting a duplicate sits next to its twin.
        if not out or out[-1] != it:
            out.append(it)
    return tuple(out)


def normalize_index(index: ir.IndexSet) -> ir.IndexSet:
    items = _sorted_unique((_plain_step(i) for i in index.items), index_item_key)
    return index if items == index.items else ir.IndexSet(items, span=index.span)


# Above this many (integer, slice) pairs an offset set keeps integers that a slice repeats.
_PAIR_LIMIT = 65536


def normalize_offsets(offsets: ir.IndexSet) -> ir.IndexSet:
    items = [i for i in (_plain_step(x) for x in offsets.items)
             if not isinstance(i, ir.Slice) or len(range(i.start, i.stop, i.step or 1))]
    items = _sorted_unique(items, offset_item_key)
    slices = [i for i in items if isinstance(i, ir.Slice)]
    if slices and len(slices) * (len(items) - len(slices)) <= _PAIR_LIMIT:
        # Offsets are literal, so an integer that one of the slices already names adds nothing.
        items = tuple(i for i in items
                      if isinstance(i, ir.Slice) or not any(_in_range(i, s) for s in slices))
    return offsets if items == offsets.items else ir.IndexSet(items, span=offsets.span)


def _normalize_sets(e: ir.Expr) -> ir.Expr:
    if isinstance(e, (ir.Rows, ir.Cols, ir.Global)):
        index = normalize_index(e.index)
        return e if index is e.index else replace(e, index=index)
    if isinstance(e, ir.Slash):
        offsets = normalize_offsets(e.offsets)
        return e if offsets is e.offsets else replace(e, offsets=offsets)
    return e


# ---------------------------------------------------------------------------
# Chains
# ---------------------------------------------------------------------------

def _lcm(a: int, b: int) -> int:
    return a * b // gcd(a, b)


def _combine(kind, group, is_union: bool):
    """One term equal to the union (or intersection) of ``group``, all of type ``kind``;
    None when this kind has no exact single-term form for it."""
    pick = max if is_union else min
    first = group[0]
    if kind is ir.Local:
        return ir.Local(pick(t.left for t in group), pick(t.right for t in group), span=first.span)
    if kind is ir.Sink:
        return ir.Sink(pick(t.count for t in group), span=first.span)
    if kind is ir.Prefix:
        return ir.Prefix(pick(t.length for t in group), span=first.span)
    if is_union and kind in (ir.Rows, ir.Cols, ir.Global):
        items = tuple(i for t in group for i in t.index.items)
        return kind(normalize_index(ir.IndexSet(items, span=first.index.span)), span=first.span)
    if is_union and kind is ir.Slash:
        items = tuple(i for t in group for i in t.offsets.items)
        return ir.Slash(normalize_offsets(ir.IndexSet(items, span=first.offsets.span)),
                        span=first.span)
    if not is_union and kind is ir.Stride:
        step = 1
        for t in group:
            step = _lcm(step, t.step)
        return ir.Stride(step, span=first.span)
    return None


def _merge_blocks(blocks: list, is_union: bool) -> list:
    """Drop each block size that another one makes redundant: in a union the one that
    divides a larger size, in an intersection the one that a smaller size divides."""
    sizes = sorted({b.size for b in blocks})
    if len(sizes) > _PAIR_LIMIT ** 0.5:
        return _sorted_unique(blocks, lambda b: b.size)
    keep = set()
    for s in sizes:
        others = [o for o in sizes if o != s]
        if is_union and any(o % s == 0 for o in others):
            continue
        if not is_union and any(s % o == 0 for o in others):
            continue
        keep.add(s)
    out, seen = [], set()
    for b in blocks:
        if b.size in keep and b.size not in seen:
            out.append(b)
            seen.add(b.size)
    return out


_MERGEABLE = (ir.Local, ir.Sink, ir.Prefix, ir.Rows, ir.Cols, ir.Global, ir.Slash, ir.Stride)


def _merge_chain(e: ir.Expr) -> ir.Expr:
    is_union = isinstance(e, ir.Union)
    cls = type(e)
    groups: dict = {}  # kind -> positions in e.terms
    for i, t in enumerate(e.terms):
        if isinstance(t, _MERGEABLE):
            groups.setdefault(type(t), []).append(i)
        elif isinstance(t, ir.Block):
            groups.setdefault(ir.Block, []).append(i)
        elif isinstance(t, ir.Blockwise):
            groups.setdefault((ir.Blockwise, t.block), []).append(i)

    replacement: dict[int, list] = {}  # position of a group's first term -> what stands there
    dropped: set[int] = set()
    for kind, positions in groups.items():
        if len(positions) < 2:
            continue
        group = [e.terms[i] for i in positions]
        if kind is ir.Block:
            kept = _merge_blocks(group, is_union)
            if len(kept) == len(group):
                continue
            replacement[positions[0]] = kept
        elif isinstance(kind, tuple):
            inner = cls(tuple(t.expr for t in group))
            replacement[positions[0]] = [ir.Blockwise(kind[1], inner, span=group[0].span)]
        else:
            merged = _combine(kind, group, is_union)
            if merged is None:
                continue
            replacement[positions[0]] = [merged]
        dropped.update(positions[1:])
    if not replacement:
        return e
    terms: list = []
    for i, t in enumerate(e.terms):
        if i in replacement:
            terms.extend(replacement[i])
        elif i not in dropped:
            terms.append(t)
    out = nary(cls, terms)
    return replace(out, span=e.span) if isinstance(out, cls) else out


def _merge_node(e: ir.Expr) -> ir.Expr:
    t = type(e)
    if t is ir.Union or t is ir.Intersect:
        return _merge_chain(e)
    if (isinstance(e, ir.Difference) and isinstance(e.left, ir.Blockwise)
            and isinstance(e.right, ir.Blockwise) and e.left.block == e.right.block):
        return ir.Blockwise(e.left.block, ir.Difference(e.left.expr, e.right.expr), span=e.span)
    return _normalize_sets(e)


# The rule rewrites operators and index/offset sets only.
_KEEP = LEAF_TYPES - {ir.Rows, ir.Cols, ir.Global, ir.Slash}


def merge(e: ir.Expr, memo: dict | None = None) -> ir.Expr:
    return bottom_up(e, _merge_node, memo, _KEEP)


#: The node-level rule and what it never rewrites, for drivers that walk the tree.
RULE = _merge_node
KEEP = _KEEP
