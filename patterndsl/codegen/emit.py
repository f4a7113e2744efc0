"""IR -> Triton source for the element predicate of a partial tile.

The emitted text depends only on the *structure* of the expression: every value that
depends on the call's ``n`` (resolved index sets and offsets, random tables) is read at
run time from two small int32 tensors, ``PRM`` (scalars, loaded once per program into
``_prm{i}``) and ``TAB`` (the random tables, packed), so one compiled kernel serves every
length.  :func:`bind` walks the expression in exactly the same order as :func:`emit` and
produces those values for a given :class:`~patterndsl.plan.context.Context`.

What reaches the text: IR-derived names, validated Python ints (capped, see ``CAP``) and
fixed operator spellings.  Never spec text.

Conventions of the emitted code: the query positions are an int32 tensor ``[BLOCK_M, 1]``
and the key positions ``[1, BLOCK_N]``, clamped to valid positions (padding slots are
masked by the caller); the result is a boolean tensor that broadcasts to the tile.
Triton's ``%`` and ``//`` truncate (C semantics), so the emitted formulas only divide
non-negative numbers or compare a remainder with zero, which both conventions agree on.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..errors import PsparseUsageError

# Positions and |q - k| stay below n <= CAP (the launcher checks it), so any window, size
# or step at or above CAP behaves exactly like CAP, and CAP + position still fits int32.
CAP = 1 << 30


@dataclass(frozen=True)
class Predicate:
    """The emitted predicate: ``setup`` runs once per program (parameter loads), ``body``
    once per partial tile; ``result`` names the boolean tensor ``body`` leaves behind.

    ``recipes`` says how a self-contained module computes the parameters at run time: one
    Python expression per ``_prm{i}`` over the helpers of templates/module.py.jinja and
    ``_tabs``/``_offs`` (the random tables, built from ``tables``: one
    ``(count, block, seed, causal, n-expression)`` per ``random`` node, in order)."""

    setup: tuple[str, ...]
    body: tuple[str, ...]
    result: str
    num_params: int
    uses_doc: bool
    uses_table: bool
    recipes: tuple[str, ...] = ()
    tables: tuple[tuple, ...] = ()


def _c(x: int) -> int:
    """A validated argument as a literal: a plain int, capped (see CAP)."""
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise TypeError(f"expected a validated non-negative int, got {x!r}")
    return min(x, CAP)


class _Walker:
    """One pass over the expression.  With ``ctx`` None only the text is produced;
    with a context the parameter values and tables are produced too (same order)."""

    def __init__(self, ctx=None, dialect: str = "triton"):
        self.ctx = ctx
        self.dialect = dialect
        self.recipes: list[str] = []
        self.table_recipes: list[tuple] = []
        self.body: list[str] = []
        self.num_params = 0
        self.params: list[int] = []
        self.tables: list = []        # (offset, tensor) of the packed random tables
        self.table_size = 0
        self.uses_doc = False
        self.uses_table = False
        self._tmp = 0

    # -- helpers ----------------------------------------------------------------
    def tmp(self) -> str:
        self._tmp += 1
        return f"_e{self._tmp}"

    def let(self, text: str) -> str:
        name = self.tmp()
        self.body.append(f"{name} = {text}")
        return name

    def param(self, value_fn, recipe: str) -> str:
        i = self.num_params
        self.num_params += 1
        self.recipes.append(recipe)
        if self.ctx is not None:
            v = int(value_fn())
            if not -(1 << 31) <= v < (1 << 31):
                raise PsparseUsageError("a resolved index or offset does not fit in int32")
            self.params.append(v)
        return f"_prm{i}"

    def progressions(self, index: ir.IndexSet, kind: str, ctx, nexpr: str) -> list[tuple[str, str, str]]:
        """One progression slot (start, stop, step) per item of ``index``, as parameter
        names; an item that selects nothing at this ``n`` is the empty progression (0, 0, 1).
        ``kind`` is "index" (resolved against n) or "offset" (literal slash offsets)."""
        from ..plan.indexsets import resolve_index, resolve_offsets
        out = []
        for item in index.items:
            prog = (0, 0, 1)
            if self.ctx is not None:
                one = ir.IndexSet((item,))
                got = (resolve_index(one, ctx.n) if kind == "index"
                       else resolve_offsets(one, -max(ctx.n - 1, 0), max(ctx.n, 1)))
                prog = got[0] if got else prog
            lit = _item_literal(item)
            out.append(tuple(self.param(lambda j=j, prog=prog: prog[j], f"_{kind}_prog({nexpr}, {lit})[{j}]")
                             for j in range(3)))
        return out

    def member(self, x: str, progs) -> str:
        if not progs:
            return self.let(f"{x} < -1")
        terms = [f"(({x} >= {s}) & ({x} < {e}) & ((({x} - {s}) % {t}) == 0))" for s, e, t in progs]
        return self.let(" | ".join(terms))

    def load(self, base: str, offset: str) -> str:
        """``base[offset]``: a pointer load in Triton, indexing in torch."""
        if self.dialect == "torch":
            return f"{base}[{offset}]"
        return f"tl.load({base} + {offset})"

    # -- the walk -----------------------------------------------------------------
    def node(self, e: ir.Expr, q: str, k: str, ctx, nexpr: str = "n") -> str:
        if isinstance(e, (ir.Union, ir.Intersect)):
            op = " | " if isinstance(e, ir.Union) else " & "
            parts = [self.node(t, q, k, ctx, nexpr) for t in e.terms]
            return self.let(op.join(f"({p})" for p in parts))
        if isinstance(e, ir.Difference):
            a = self.node(e.left, q, k, ctx, nexpr)
            b = self.node(e.right, q, k, ctx, nexpr)
            return self.let(f"({a}) & ({b} == 0)")
        if isinstance(e, ir.All):
            return self.let(f"({q} >= 0) & ({k} >= 0)")
        if isinstance(e, ir.Nothing):
            return self.let(f"({q} < 0) & ({k} < 0)")
        if isinstance(e, ir.Causal):
            return self.let(f"{k} <= {q}")
        if isinstance(e, ir.Local):
            return self.let(f"({k} >= {q} - {_c(e.left)}) & ({k} <= {q} + {_c(e.right)})")
        if isinstance(e, ir.Block):
            b = _c(e.size)
            return self.let(f"({q} // {b}) == ({k} // {b})")
        if isinstance(e, ir.Stride):
            return self.let(f"(({q} - {k}) % {_c(e.step)}) == 0")
        if isinstance(e, ir.Dilated):
            d = self.let(f"{q} - {k}")
            wd = min(e.width * e.dilation, CAP)
            return self.let(f"({d} <= {wd}) & ({d} >= -{wd}) & (({d} % {_c(e.dilation)}) == 0)")
        if isinstance(e, ir.Every):
            if e.step >= CAP:
                return self.let(f"({k} == {_c(e.offset)}) & ({q} >= 0)")
            return self.let(f"(({k} % {_c(e.step)}) == {_c(e.offset)}) & ({q} >= 0)")
        if isinstance(e, (ir.Rows, ir.Cols, ir.Global)):
            progs = self.progressions(e.index, "index", ctx, nexpr)
            if isinstance(e, ir.Rows):
                return self.let(f"({self.member(q, progs)}) & ({k} >= 0)")
            if isinstance(e, ir.Cols):
                return self.let(f"({self.member(k, progs)}) & ({q} >= 0)")
            return self.let(f"({self.member(q, progs)}) | ({self.member(k, progs)})")
        if isinstance(e, ir.Sink):
            return self.let(f"({k} < {_c(e.count)}) & ({q} >= 0)")
        if isinstance(e, ir.Prefix):
            p = _c(e.length)
            return self.let(f"({q} < {p}) & ({k} < {p})")
        if isinstance(e, ir.Slash):
            progs = self.progressions(e.offsets, "offset", ctx, nexpr)
            d = self.let(f"{q} - {k}")
            return self.member(d, progs)
        if isinstance(e, ir.Document):
            if ctx is not None and getattr(ctx, "inner_level", False):
                raise PsparseUsageError("`document` cannot appear inside blockwise(...)")
            self.uses_doc = True
            if self.dialect == "torch":
                dq = self.let(f"DOC[{q}]")
                dk = self.let(f"DOC[{k}]")
            else:
                dq = self.let(f"tl.load(DOC + doc_base + {q}.to(tl.int64) * doc_sn)")
                dk = self.let(f"tl.load(DOC + doc_base + {k}.to(tl.int64) * doc_sn)")
            return self.let(f"{dq} == {dk}")
        if isinstance(e, ir.Random):
            self.uses_table = True
            t_index = len(self.table_recipes)
            self.table_recipes.append((e.count, e.block, e.seed, bool(e.causal), nexpr))
            table = None
            if self.ctx is not None:
                table = ctx.random_table(e)
                offset = self.table_size
                self.tables.append((offset, table))
                self.table_size += int(table.numel())
            off = self.param(lambda: offset, f"_offs[{t_index}]")
            width = self.param(lambda: table.shape[1], f"_tabs[{t_index}].shape[1]")
            b = _c(e.block)
            qb = self.let(f"{q} // {b}")
            kb = self.let(f"{k} // {b}")
            hit = self.let(f"({qb} < 0) & ({kb} < 0)")
            j = self.tmp()
            self.body.append(f"for {j} in range(0, {width}):")
            self.body.append(f"    {hit} = {hit} | ({self.load('TAB', f'{off} + {qb} * {width} + {j}')} == {kb})")
            return hit
        if isinstance(e, ir.Blockwise):
            b = _c(e.block)
            qb = self.let(f"{q} // {b}")
            kb = self.let(f"{k} // {b}")
            inner = ctx.inner(e) if ctx is not None else None
            # the inner n is ceil(n / b), with the block as written (as Context.inner)
            return self.node(e.expr, qb, kb, inner, f"-(-({nexpr}) // {e.block})")
        if isinstance(e, ir.DYNAMIC_TYPES):
            raise PsparseUsageError("data-dependent terms are planned per call (they need q and k)")
        raise TypeError(f"not a pattern expression: {e!r}")


def _item_literal(item) -> str:
    """An index item as a Python literal: an int, or a (start, stop, step) tuple."""
    def lit(x):
        if x is None:
            return "None"
        if not isinstance(x, int) or isinstance(x, bool):
            raise TypeError(f"expected a validated int, got {x!r}")
        return str(int(x))
    if isinstance(item, ir.Slice):
        return f"({lit(item.start)}, {lit(item.stop)}, {lit(item.step)})"
    return lit(item)


def emit(expr: ir.Expr, q: str = "qc", k: str = "kc", dialect: str = "triton") -> Predicate:
    """The predicate of ``expr`` over the position tensors named ``q`` and ``k``, as Triton
    code or (``dialect="torch"``) as torch code over int64 tensors, ``PRM`` a list of ints,
    ``TAB`` and ``DOC`` 1-D tensors."""
    w = _Walker(dialect=dialect)
    result = w.node(expr, q, k, None)
    setup = tuple(f"_prm{i} = {w.load('PRM', str(i))}" for i in range(w.num_params))
    return Predicate(setup, tuple(w.body), result, w.num_params, w.uses_doc, w.uses_table,
                     tuple(w.recipes), tuple(w.table_recipes))


def bind(expr: ir.Expr, ctx):
    """``(params, table)`` for ``expr`` at ``ctx``: a list of ints (one per ``_prm``) and
    an int32 tensor holding the packed random tables (at least one element)."""
    import torch
    w = _Walker(ctx)
    w.node(expr, "qc", "kc", ctx)
    table = torch.full((max(w.table_size, 1),), -1, dtype=torch.int32)
    for offset, t in w.tables:
        table[offset:offset + t.numel()] = t.reshape(-1).to(torch.int32)
    return w.params, table



# ---------------------------------------------------------------------------
# Dynamic atoms (table parts of lines with data-dependent terms)
# ---------------------------------------------------------------------------

class _DynWalker(_Walker):
    """:class:`_Walker` that also emits the dynamic atoms as reads of a call's tables
    (:class:`patterndsl.dynamic.tables.CallTables`): ``vertical``/``slash`` test one byte
    of their bitmap in the ``DYN`` row ``dyn_row``, ``blocks`` compares the key block with
    the ``W`` listed blocks of the query's block in the ``BLK`` row ``blk_row``.  Table
    offsets, widths and ``n`` are ``_prm`` parameters, so the text depends on the
    structure only."""

    def __init__(self, ctx=None, tabs=None):
        super().__init__(ctx)
        self.tabs = tabs

    def node(self, e, q, k, ctx, nexpr="n"):
        if not isinstance(e, ir.DYNAMIC_TYPES):
            return super().node(e, q, k, ctx, nexpr)
        tabs = self.tabs
        if isinstance(e, ir.TopBlocks):
            lay = (lambda j: tabs.blk_layout[e][j]) if tabs is not None else None
            off = self.param(lambda: lay(0), "")
            width = self.param(lambda: lay(1), "")
            first = self.param(lambda: lay(2), "")
            last_row = self.param(lambda: max(lay(4) - 1, 0), "")
            b = self.param(lambda: lay(3), "")
            qb = self.let(f"{q} // {b}")
            kb = self.let(f"{k} // {b}")
            row = self.let(f"tl.minimum(tl.maximum({qb} - {first}, 0), {last_row})")
            hit = self.let(f"({qb} < 0) & ({kb} < 0)")
            j = self.tmp()
            self.body.append(f"for {j} in range(0, {width}):")
            self.body.append(f"    {hit} = {hit} | (tl.load(BLK + blk_row + {off} + {row} * {width} + {j}) == {kb})")
            return hit
        off = self.param(lambda: tabs.layout[e], "")
        if isinstance(e, ir.TopVertical):
            return self.let(f"(tl.load(DYN + dyn_row + {off} + {k}) != 0) & ({q} >= 0)")
        n = self.param(lambda: tabs.n, "")
        d = self.let(f"{q} - {k}")
        ok = self.let(f"({d} >= 0) & ({d} < {n})")
        return self.let(f"{ok} & (tl.load(DYN + dyn_row + {off} + tl.where({ok}, {d}, 0)) != 0)")


def emit_dynamic(expr: ir.Expr, q: str = "qc", k: str = "kc") -> Predicate:
    """Like :func:`emit` for an expression that may hold dynamic terms (Triton only)."""
    w = _DynWalker()
    result = w.node(expr, q, k, None)
    setup = tuple(f"_prm{i} = {w.load('PRM', str(i))}" for i in range(w.num_params))
    return Predicate(setup, tuple(w.body), result, w.num_params, w.uses_doc, w.uses_table)


def bind_dynamic(expr: ir.Expr, ctx, tabs):
    """``(params, table)`` of :func:`emit_dynamic`'s predicate for a call's tables."""
    import torch
    w = _DynWalker(ctx, tabs)
    w.node(expr, "qc", "kc", ctx)
    table = torch.full((max(w.table_size, 1),), -1, dtype=torch.int32)
    for offset, t in w.tables:
        table[offset:offset + t.numel()] = t.reshape(-1).to(torch.int32)
    return w.params, table
