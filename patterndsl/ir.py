"""The typed intermediate representation of a spec.

Every node is a frozen dataclass.  Source spans ride along for error messages
but never take part in equality or hashing, so two IRs that mean the same text
compare equal wherever they came from.  Field values are already validated
Python ints, bools, floats and strings: nothing downstream re-reads spec text.

Expression nodes follow LANGUAGE.md's primitive table one to one, with these
normalisations done at lowering time (they are spellings, not optimisations):

* ``local(w)`` is ``Local(w, w)``;
* ``vertical(I)`` is ``Cols(I)``;
* ``let`` names are substituted, so the IR never holds a reference;
* a chain ``a | b | c`` (or ``&``) is one n-ary node; parenthesised nesting
  stays nested until the flatten pass.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Iterator, Union as _U

from .errors import Span


def _span():
    return field(default=None, compare=False, repr=False, hash=False, kw_only=True)


# ---------------------------------------------------------------------------
# Index and offset sets
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Slice:
    """``start:stop:step``. In an index set each part may be None (Python slice rules,
    resolved against n).  In an offset set ``start`` and ``stop`` are required."""

    start: int | None
    stop: int | None
    step: int | None = None
    span: Span | None = _span()


Item = _U[int, Slice]


@dataclass(frozen=True)
class IndexSet:
    """A bracketed set: the union of its items (ints and slices)."""

    items: tuple[Item, ...]
    span: Span | None = _span()


# ---------------------------------------------------------------------------
# Pattern expressions
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Expr:
    """Base of every pattern expression."""

    def children(self) -> tuple["Expr", ...]:
        return ()

    def walk(self) -> Iterator["Expr"]:
        yield self
        for c in self.children():
            yield from c.walk()

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(n, DYNAMIC_TYPES) for n in self.walk())

    @property
    def needs_doc_ids(self) -> bool:
        return any(isinstance(n, Document) for n in self.walk())


@dataclass(frozen=True)
class All(Expr):
    span: Span | None = _span()


@dataclass(frozen=True)
class Nothing(Expr):
    """``none``."""
    span: Span | None = _span()


@dataclass(frozen=True)
class Causal(Expr):
    span: Span | None = _span()


@dataclass(frozen=True)
class Local(Expr):
    """``q - left <= k <= q + right``."""
    left: int
    right: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Block(Expr):
    size: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Stride(Expr):
    step: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Dilated(Expr):
    width: int
    dilation: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Every(Expr):
    step: int
    offset: int = 0
    span: Span | None = _span()


@dataclass(frozen=True)
class Rows(Expr):
    index: IndexSet
    span: Span | None = _span()


@dataclass(frozen=True)
class Cols(Expr):
    index: IndexSet
    span: Span | None = _span()


@dataclass(frozen=True)
class Global(Expr):
    index: IndexSet
    span: Span | None = _span()


@dataclass(frozen=True)
class Sink(Expr):
    count: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Slash(Expr):
    offsets: IndexSet  # literal offsets, never resolved against n
    span: Span | None = _span()


@dataclass(frozen=True)
class Prefix(Expr):
    length: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Document(Expr):
    span: Span | None = _span()


@dataclass(frozen=True)
class Random(Expr):
    count: int
    block: int = 64
    seed: int = 0
    causal: bool = False
    span: Span | None = _span()


@dataclass(frozen=True)
class Blockwise(Expr):
    block: int
    expr: Expr
    span: Span | None = _span()

    def children(self):
        return (self.expr,)


# --- dynamic terms ---------------------------------------------------------

@dataclass(frozen=True)
class TopVertical(Expr):
    """``vertical(topk=v, last=64)`` (by="attn") or ``vertical(topk=v, by=norm|lownorm)``."""
    topk: int
    last: int = 64
    by: str = "attn"
    span: Span | None = _span()


@dataclass(frozen=True)
class TopSlash(Expr):
    topk: int
    last: int = 64
    span: Span | None = _span()


@dataclass(frozen=True)
class TopBlocks(Expr):
    topk: int
    block: int = 64
    span: Span | None = _span()


DYNAMIC_TYPES = (TopVertical, TopSlash, TopBlocks)


# --- operators -------------------------------------------------------------

@dataclass(frozen=True)
class Union(Expr):
    terms: tuple[Expr, ...]
    span: Span | None = _span()

    def children(self):
        return self.terms


@dataclass(frozen=True)
class Intersect(Expr):
    terms: tuple[Expr, ...]
    span: Span | None = _span()

    def children(self):
        return self.terms


@dataclass(frozen=True)
class Difference(Expr):
    left: Expr
    right: Expr
    span: Span | None = _span()

    def children(self):
        return (self.left, self.right)


PRIMITIVE_TYPES = (All, Nothing, Causal, Local, Block, Stride, Dilated, Every, Rows, Cols,
                   Global, Sink, Slash, Prefix, Document, Random, Blockwise)


# ---------------------------------------------------------------------------
# Retention and budgets
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KvTerm:
    pass


@dataclass(frozen=True)
class KvAuto(KvTerm):
    span: Span | None = _span()


@dataclass(frozen=True)
class KvSink(KvTerm):
    count: int
    span: Span | None = _span()


@dataclass(frozen=True)
class KvRecent(KvTerm):
    count: int
    span: Span | None = _span()


@dataclass(frozen=True)
class KvHeavy(KvTerm):
    count: int
    span: Span | None = _span()


@dataclass(frozen=True)
class KvSnap(KvTerm):
    count: int
    window: int = 32
    pool: int = 7
    span: Span | None = _span()


@dataclass(frozen=True)
class KvNorm(KvTerm):
    count: int
    low: bool = False
    span: Span | None = _span()


SCORE_KV_TYPES = (KvHeavy, KvSnap, KvNorm)


@dataclass(frozen=True)
class Retention:
    terms: tuple[KvTerm, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Budget:
    pass


@dataclass(frozen=True)
class Uniform(Budget):
    span: Span | None = _span()


@dataclass(frozen=True)
class Pyramid(Budget):
    beta: float = 20.0
    span: Span | None = _span()


@dataclass(frozen=True)
class Adaptive(Budget):
    floor: float = 0.2
    span: Span | None = _span()


# ---------------------------------------------------------------------------
# Statements and the whole program
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Selector:
    """The head or layer numbers ``start, start+step, ...`` below ``stop`` (None: unbounded).
    A single integer ``i`` is ``Selector(i, i + 1, 1)``."""

    start: int
    stop: int | None
    step: int = 1
    span: Span | None = _span()

    def __contains__(self, x: int) -> bool:
        return x >= self.start and (self.stop is None or x < self.stop) and (x - self.start) % self.step == 0

    def is_empty(self) -> bool:
        return self.stop is not None and self.stop <= self.start


@dataclass(frozen=True)
class Rule:
    """One pattern statement: the default (both selectors None), ``heads``, ``layers``, or both."""

    expr: Expr
    layers: Selector | None = None
    heads: Selector | None = None
    span: Span | None = _span()

    @property
    def specificity(self) -> int:
        """Higher wins: layers+heads (3), heads (2), layers (1), default (0)."""
        if self.layers is not None and self.heads is not None:
            return 3
        if self.heads is not None:
            return 2
        if self.layers is not None:
            return 1
        return 0


@dataclass(frozen=True)
class Program:
    rules: tuple[Rule, ...]
    kv: Retention | None = None
    budget: Budget | None = None

    @property
    def default(self) -> Rule | None:
        for r in self.rules:
            if r.specificity == 0:
                return r
        return None

    @property
    def has_heads(self) -> bool:
        return any(r.heads is not None for r in self.rules)

    @property
    def has_layers(self) -> bool:
        return any(r.layers is not None for r in self.rules)

    def rule_for(self, head: int | None = None, layer: int | None = None) -> Rule | None:
        """The most specific rule covering (layer, head); None when no line covers it.
        ``None`` for head/layer means "not given": lines that need it are skipped."""
        best = None
        for r in self.rules:
            if r.heads is not None and (head is None or head not in r.heads):
                continue
            if r.layers is not None and (layer is None or layer not in r.layers):
                continue
            if best is None or r.specificity > best.specificity:
                best = r
        return best


def _fast_inits(classes) -> None:
    """Give each class an ``__init__`` with the dataclass's own signature that fills the
    instance dict directly.

    A frozen dataclass's generated ``__init__`` stores every field through
    ``object.__setattr__`` (one call per field); lowering and the passes build thousands of
    nodes per spec file, and that was a fifth of lowering's time.  The stored attributes
    are exactly the same, and the classes stay frozen dataclasses (assignment still raises,
    ``replace`` and ``fields`` work as before).  One ``exec`` builds them all, so importing
    the module costs little more."""
    src: list[str] = []
    defaults: dict = {"__builtins__": __builtins__}
    for cls in classes:
        params, kw_only, body = [], [], []
        for f in fields(cls):
            p = f.name
            if f.default is not MISSING:
                dname = f"_{cls.__name__}_{f.name}"
                defaults[dname] = f.default
                p = f"{f.name}={dname}"
            (kw_only if f.kw_only else params).append(p)
            body.append(f"    d[{f.name!r}] = {f.name}")
        sig = ", ".join(["self", *params, *(["*", *kw_only] if kw_only else [])])
        src.append(f"def {cls.__name__}__init__({sig}):\n    d = self.__dict__\n" + "\n".join(body))
    exec("\n".join(src), defaults)
    for cls in classes:
        fn = defaults[f"{cls.__name__}__init__"]
        fn.__qualname__ = f"{cls.__qualname__}.__init__"
        fn.__module__ = cls.__module__
        cls.__init__ = fn


_fast_inits([c for c in (Slice, IndexSet, *PRIMITIVE_TYPES, *DYNAMIC_TYPES, Union, Intersect,
                         Difference, KvAuto, KvSink, KvRecent, KvHeavy, KvSnap, KvNorm, Retention,
                         Uniform, Pyramid, Adaptive, Selector, Rule, Program)])


def strip_spans(node):
    """A copy of ``node`` with every span removed (for printing reprs and hashing caches)."""
    if isinstance(node, tuple):
        return tuple(strip_spans(x) for x in node)
    if not hasattr(node, "__dataclass_fields__"):
        return node
    changes = {}
    for f in fields(node):
        v = getattr(node, f.name)
        if f.name == "span":
            if v is not None:
                changes["span"] = None
        elif isinstance(v, tuple) or hasattr(v, "__dataclass_fields__"):
            nv = strip_spans(v)
            if nv is not v:
                changes[f.name] = nv
    return replace(node, **changes) if changes else node
