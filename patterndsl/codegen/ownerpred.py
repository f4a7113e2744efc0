"""The generic part predicate of a self-contained module's kernels.

psparse's own launcher compiles one kernel per part predicate (``E_i - (E_1 | ...)``), whose
shape depends on ``n`` (which terms get residue views, how index items group).  A generated
module cannot compile new kernels, so it carries one kernel pair per *pattern* whose
partial-tile predicate evaluates, for each pair, the bitmask ``W`` of the views whose piece
holds the pair (``patterndsl.plan.runtime``, "Ownership"), and keeps the pairs whose first
view is the launched part's: exactly that part's predicate, at any ``n``.

The text depends only on the pattern's structure.  Leaf parameters (index progressions,
random-table offsets) are the ones :mod:`.emit` produces, in the same order; the ownership
data follows them in ``PRM`` (``OwnerProgram.params``): one view bit per leaf slot (in
``owner_slots`` order), the part's bit and the mask of the bits below it, the number of
views ``V`` and the ``[V, V]`` table of combined view bits.
"""
from __future__ import annotations

from .. import ir
from .emit import Predicate, _Walker

_SLOTTED = (ir.Stride, ir.Dilated, ir.Every, ir.Slash, ir.Cols, ir.Rows, ir.Global)


class _OwnerWalker(_Walker):
    """Walks like :class:`.emit._Walker` (same leaf parameters, same order) but produces
    view bitmasks (int32) instead of booleans for the operators and slotted leaves."""

    def __init__(self, dialect: str):
        super().__init__(dialect=dialect)
        self.slots: list[str] = []   # per slot: the name of its bit (bound in setup)

    def slot(self) -> str:
        name = f"_own{len(self.slots)}"
        self.slots.append(name)
        return name

    def where(self, cond: str, a: str, b: str) -> str:
        fn = "tl.where" if self.dialect == "triton" else "torch.where"
        return self.let(f"{fn}({cond}, {a}, {b})")

    def bits(self, pairs) -> str:
        """OR of ``where(member, bit, 0)`` over ``(member, bit)`` pairs."""
        terms = [self.where(m, b, "0") for m, b in pairs]
        if not terms:
            return self.let("(qc - qc) + (kc - kc)")
        return self.let(" | ".join(terms)) if len(terms) > 1 else terms[0]

    def item_members(self, x: str, progs) -> list[str]:
        return [self.let(f"({x} >= {s}) & ({x} < {e}) & ((({x} - {s}) % {t}) == 0)") for s, e, t in progs]

    def owner(self, e: ir.Expr) -> str:
        if isinstance(e, ir.Union):
            parts = [self.owner(t) for t in e.terms]
            return self.let(" | ".join(f"({p})" for p in parts))
        if isinstance(e, ir.Intersect):
            acc, plain = self.owner(e.terms[0]), not _slotted(e.terms[0])
            for t in e.terms[1:]:
                w, wplain = self.owner(t), not _slotted(t)
                # a side without slots holds only the identity view, and combining the
                # identity with any view gives that view: no table walk needed
                if plain and wplain:
                    acc = self.let(f"{acc} & {w}")
                elif plain:
                    acc = self.where(f"{acc} != 0", w, "0")
                elif wplain:
                    acc = self.where(f"{w} != 0", acc, "0")
                else:
                    acc = self.combine(acc, w)
                plain = plain and wplain
            return acc
        if isinstance(e, ir.Difference):
            a = self.owner(e.left)
            b = self.owner(e.right)
            return self.where(f"{b} != 0", "0", a)
        if isinstance(e, (ir.Stride, ir.Dilated, ir.Every)):
            return self.where(self.node(e, "qc", "kc", None), self.slot(), "0")
        if isinstance(e, ir.Slash):
            progs = self.progressions(e.offsets, "offset", None, "n")
            d = self.let("qc - kc")
            return self.bits([(m, self.slot()) for m in self.item_members(d, progs)])
        if isinstance(e, (ir.Rows, ir.Cols)):
            progs = self.progressions(e.index, "index", None, "n")
            x = "qc" if isinstance(e, ir.Rows) else "kc"
            return self.bits([(m, self.slot()) for m in self.item_members(x, progs)])
        if isinstance(e, ir.Global):
            progs = self.progressions(e.index, "index", None, "n")
            pairs = []
            for mq, mk in zip(self.item_members("qc", progs), self.item_members("kc", progs)):
                pairs += [(mq, self.slot()), (mk, self.slot())]
            return self.bits(pairs)
        # every other leaf (blockwise bodies included) belongs to the identity view, bit 0
        return self.where(self.node(e, "qc", "kc", None), "1", "0")

    def combine(self, a: str, b: str) -> str:
        """The bits of ``_combine(view i, view j)`` over the set bits i of a and j of b."""
        out = self.let(f"({a} & 0) | ({b} & 0)")
        i, j = self.tmp(), self.tmp()
        hit = f"((({a} >> {i}) & ({b} >> {j})) & 1) != 0"
        entry = self.load("PRM", f"_ownT + {i} * _ownV + {j}")
        fn = "tl.where" if self.dialect == "triton" else "torch.where"
        self.body.append(f"for {i} in range(0, _ownV):")
        self.body.append(f"    for {j} in range(0, _ownV):")
        self.body.append(f"        {out} = {out} | {fn}({hit}, {entry}, 0)")
        return out


def _slotted(e: ir.Expr) -> bool:
    """Whether ``e`` has a leaf with view slots (outside blockwise bodies)."""
    if isinstance(e, _SLOTTED):
        return True
    if isinstance(e, (ir.Union, ir.Intersect, ir.Difference)):
        return any(_slotted(c) for c in e.children())
    return False


def owner_predicate(expr: ir.Expr, dialect: str = "triton") -> Predicate:
    """The generic part predicate of ``expr`` (see the module docstring).  Its ``recipes``
    cover the leaf parameters only; the caller appends ``OwnerProgram.params(view)``."""
    w = _OwnerWalker(dialect)
    mask = w.owner(expr)
    result = w.let(f"(({mask} & _ownbit) != 0) & (({mask} & _ownlow) == 0)")
    base = w.num_params
    setup = [f"_prm{i} = {w.load('PRM', str(i))}" for i in range(base)]
    setup += [f"{name} = {w.load('PRM', str(base + i))}" for i, name in enumerate(w.slots)]
    s = base + len(w.slots)
    setup += [f"_ownbit = {w.load('PRM', str(s))}", f"_ownlow = {w.load('PRM', str(s + 1))}",
              f"_ownV = {w.load('PRM', str(s + 2))}", f"_ownT = {s + 3}"]
    return Predicate(tuple(setup), tuple(w.body), result, w.num_params, w.uses_doc, w.uses_table,
                     tuple(w.recipes), tuple(w.table_recipes))


def slot_count(pred: Predicate) -> int:
    return sum(1 for line in pred.setup if line.startswith("_own") and line[4].isdigit())
