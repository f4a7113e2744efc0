"""One head's dynamic choice as a static expression the planner can run.

For batch element ``b`` and query head ``h`` each dynamic node is replaced by a static node
with exactly the same pairs at this call's ``n``:

* ``vertical(topk=..)`` (any ``by``) -> ``cols(I)`` with ``I`` the chosen key positions;
* ``slash(topk=..)`` -> ``slash(O)`` with ``O`` the chosen offsets (all ``>= 0``);
* ``blocks(topk=t, block=b)`` -> ``blockwise(b, rows(R1) & cols(C1) | rows(R2) & cols(C2) ...)``:
  blockwise evaluates its body on block numbers with ``ceil(n / b)`` as ``n`` and the same
  ``min(b, n)`` division as ``blocks``, so ``(q // b, k // b)`` is allowed exactly when key
  block ``k // b`` was chosen for query block ``q // b``.  Query blocks with equal key-block
  sets share one term, so the body has at most one term per query block of the call.

Consecutive numbers are written as slices, which keeps the index sets (and the planner's
work) proportional to the number of runs rather than of positions.  Reading the chosen items
is a host read: this path plans per (batch element, head) and is correct, not fast.
"""
from __future__ import annotations

from .. import ir
from .estimate import Selection


def _runs(values: list[int]) -> ir.IndexSet:
    """Sorted distinct non-negative ints as an index/offset set, runs of 2+ as slices."""
    items: list[ir.Item] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j > i:
            items.append(ir.Slice(values[i], values[j] + 1, None))
        else:
            items.append(values[i])
        i = j + 1
    return ir.IndexSet(tuple(items))


def _static(sel: Selection, b: int, h: int) -> ir.Expr:
    if sel.kind in ("vertical", "slash"):
        chosen = sel.chosen(b, h)
        if not chosen:
            return ir.Nothing()
        return ir.Cols(_runs(chosen)) if sel.kind == "vertical" else ir.Slash(_runs(chosen))
    by_set: dict[tuple[int, ...], list[int]] = {}
    for row in range(sel.index.shape[2]):
        chosen = tuple(sel.chosen(b, h, row))
        if chosen:
            by_set.setdefault(chosen, []).append(sel.first_block + row)
    if not by_set:
        return ir.Nothing()
    terms = tuple(ir.Intersect((ir.Rows(_runs(qblocks)), ir.Cols(_runs(list(kblocks)))))
                  for kblocks, qblocks in by_set.items())
    body = terms[0] if len(terms) == 1 else ir.Union(terms)
    return ir.Blockwise(sel.term.block, body)


def substitute(expr: ir.Expr, selections: dict[ir.Expr, Selection], b: int, h: int) -> ir.Expr:
    """``expr`` with every dynamic node replaced by what batch element ``b``, query head ``h``
    chose (``selections`` from :func:`~patterndsl.dynamic.select` for this call)."""
    memo: dict[int, ir.Expr] = {}

    def go(e: ir.Expr) -> ir.Expr:
        if id(e) in memo:
            return memo[id(e)]
        if isinstance(e, ir.DYNAMIC_TYPES):
            sel = selections.get(e)
            if sel is None or h not in sel.heads:
                raise KeyError(f"no selection of {e!r} for head {h}")
            out = _static(sel, b, h)
        elif isinstance(e, (ir.Union, ir.Intersect)):
            out = type(e)(tuple(go(t) for t in e.terms))
        elif isinstance(e, ir.Difference):
            out = ir.Difference(go(e.left), go(e.right))
        else:
            # Static leaves (blockwise never holds dynamic terms) stay as they are.
            out = e
        memo[id(e)] = out
        return out

    return go(expr)
