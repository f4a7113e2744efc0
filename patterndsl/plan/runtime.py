"""The plan runtime: psparse's planner as pure torch functions over a small node algebra.

This file is the single source of the closed-form planner (docs/PLAN.md, sections 1, 4 and
5).  It imports only torch, math and the standard library, so that two consumers share it:

* the package (``patterndsl.plan``): ``build_plan`` runs :func:`plan_parts` on the canonical
  ``ir.Expr`` and wraps the result in :class:`~patterndsl.plan.model.Plan`;
* the self-contained kernel modules (``psparse compile``): the renderer inlines this file's
  text verbatim and adds each pattern's *plan program*, the expression spelled with the
  node classes below (only class names and validated integers), so a module computes the
  very same parts, views and runs as ``Spec.plan`` without importing psparse.

Nodes are dispatched by class name (``_k``) and read by field name, so the package's
``ir`` classes and the frozen dataclasses of ``NODES`` below are interchangeable; the one place that
builds new nodes (splitting a pattern into parts) takes the namespace to build them from.
:func:`owner_program` describes, per length, which part owns each allowed pair: the data
a module's generic per-pattern kernels need to evaluate any part's predicate.
"""
import functools
from dataclasses import dataclass, field, make_dataclass, replace
from functools import lru_cache
from math import gcd
from types import SimpleNamespace

import torch

try:
    from ..errors import PsparseUsageError as UsageError
except ImportError:   # inlined into a generated module: psparse is not importable there
    class UsageError(ValueError):
        """A pattern used wrongly at call time (missing doc_ids, bad index sets...)."""


def _k(node) -> str:
    return type(node).__name__


# ---------------------------------------------------------------------------
# Nodes (the package passes its own ``ir`` classes, which have the same names and fields)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Expr:
    """Base of the nodes below; ``_kids`` names the fields holding sub-expressions."""

    _kids = ()

    def children(self) -> tuple:
        out: list = []
        for name in self._kids:
            x = getattr(self, name)
            out.extend(x if isinstance(x, tuple) else (x,))
        return tuple(out)

    def walk(self):
        yield self
        for c in self.children():
            yield from c.walk()

    @property
    def needs_doc_ids(self) -> bool:
        return any(_k(x) == "Document" for x in self.walk())


# name, fields (all required: a plan program spells every field), sub-expression fields
_NODE_TABLE = (
    ("All", (), ()), ("Nothing", (), ()), ("Causal", (), ()), ("Document", (), ()),
    ("Local", ("left", "right"), ()), ("Block", ("size",), ()), ("Stride", ("step",), ()),
    ("Dilated", ("width", "dilation"), ()), ("Every", ("step", "offset"), ()),
    ("Rows", ("index",), ()), ("Cols", ("index",), ()), ("Global", ("index",), ()),
    ("Sink", ("count",), ()), ("Slash", ("offsets",), ()), ("Prefix", ("length",), ()),
    ("Random", ("count", "block", "seed", "causal"), ()), ("Blockwise", ("block", "expr"), ("expr",)),
    ("Union", ("terms",), ("terms",)), ("Intersect", ("terms",), ("terms",)),
    ("Difference", ("left", "right"), ("left", "right")),
)


def _nodes():
    ns = {name: make_dataclass(name, [(f, object) for f in fields], bases=(Expr,), frozen=True,
                               namespace={"_kids": kids})
          for name, fields, kids in _NODE_TABLE}
    ns["Slice"] = make_dataclass("Slice", [("start", object), ("stop", object), ("step", object)], frozen=True)
    ns["IndexSet"] = make_dataclass("IndexSet", [("items", object)], frozen=True)
    return SimpleNamespace(**ns)


# The node classes of generated modules (plan programs are spelled ``NODES.Causal()`` ...).
NODES = _nodes()


# ---------------------------------------------------------------------------
# Integer helpers
# ---------------------------------------------------------------------------

# Unbounded interval ends.  Far above any position (n < 2**40 is enforced by the builder)
# and far below int64 overflow even after a few additions.
INF = 1 << 50


def lcm(a: int, b: int) -> int:
    return a // gcd(a, b) * b


def crt(r1: int, m1: int, r2: int, m2: int):
    """The class ``x = r (mod m)`` with ``x = r1 (mod m1)`` and ``x = r2 (mod m2)``, or None."""
    g = gcd(m1, m2)
    if (r2 - r1) % g:
        return None
    m = m1 // g * m2
    # x = r1 + m1 * t with m1 * t = r2 - r1 (mod m2)  ->  t = (r2 - r1)/g * inv(m1/g) mod m2/g
    mg = m2 // g
    t = ((r2 - r1) // g) * pow(m1 // g, -1, mg) % mg if mg > 1 else 0
    return (r1 + m1 * t) % m, m


def _pow2_shift(a, b) -> int | None:
    """The shift that divides the integer tensor ``a`` by the int ``b``, when ``b`` is a
    power of two (tile sizes usually are): a shift is much cheaper than torch.div."""
    if type(b) is int and b > 0 and b & (b - 1) == 0 and isinstance(a, torch.Tensor) \
            and not a.is_floating_point() and a.dtype != torch.bool:
        return b.bit_length() - 1
    return None


def fdiv(a, b):
    """Floor division for tensors (and ints)."""
    s = _pow2_shift(a, b)
    if s is not None:
        return a >> s  # arithmetic shift: floor division, negative values included
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.div(a, b, rounding_mode="floor")
    return a // b


def cdiv(a, b):
    """Ceiling division for tensors (and ints)."""
    s = _pow2_shift(a, b)
    if s is not None:
        return (a + (b - 1)) >> s
    return -fdiv(-a, b)


def pow2_floor(x: int) -> int:
    """The largest power of two <= x (x >= 1)."""
    return 1 << (max(int(x), 1).bit_length() - 1)


def largest_pow2_divisor(x: int) -> int:
    return x & -x


def single_threaded(fn):
    """Run ``fn`` with one intra-op thread, restoring the caller's setting.

    Plans work on arrays of about n / block entries: far too small for a thread pool to
    pay, and on a busy machine the pool's synchronisation costs ten times the work."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        if before == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapper


def pick(cond: torch.Tensor, a, b) -> torch.Tensor:
    """``torch.where(cond, a, b)`` for integer operands (tensors or ints).

    A plan is usually built once per length, on a cold heap: there, a selection by
    arithmetic (``b + (a - b) * cond``) is slower than torch.where, its temporaries costing
    more in page faults than its faster loops save."""
    return torch.where(cond, a, b)


def cap(x: int, n: int) -> int:
    """Window-like arguments may be huge; every position and |q - k| is below n, so capping
    at max(n, 1) keeps the meaning and keeps values inside int64."""
    return min(x, max(n, 1))


# ---------------------------------------------------------------------------
# Index sets (``rows``/``cols``/``global``) and offset sets (``slash``) as progressions
# ``(start, stop, step)``, ascending, ``stop == last + 1``
# ---------------------------------------------------------------------------

Prog = tuple  # (start, stop, step)


def _prog(r: range) -> Prog | None:
    """``range`` -> ascending canonical progression, or None when empty."""
    if len(r) == 0:
        return None
    first, last = (r[0], r[-1]) if r.step > 0 else (r[-1], r[0])
    step = abs(r.step) if len(r) > 1 else 1
    return (first, last + 1, step)


def _clip(p: Prog, lo: int, hi: int) -> Prog | None:
    """Elements of ``p`` in ``[lo, hi)``."""
    start, stop, step = p
    if start < lo:
        start += -(-(lo - start) // step) * step
    stop = min(stop, hi)
    if start >= stop:
        return None
    last = start + (stop - 1 - start) // step * step
    return (start, last + 1, step if last > start else 1)


@lru_cache(maxsize=1024)
def resolve_index(index, n: int) -> tuple[Prog, ...]:
    """The positions an index set selects at length ``n`` (LANGUAGE.md: Python slice rules;
    a negative integer ``i`` is ``n + i``; out-of-range integers select nothing)."""
    out = []
    for item in index.items:
        if _k(item) == "Slice":
            if item.step == 0:
                raise UsageError("a slice step of 0 selects nothing meaningful; use a step >= 1 or <= -1")
            p = _prog(range(n)[slice(item.start, item.stop, item.step)])
        else:
            i = item + n if item < 0 else item
            p = (i, i + 1, 1) if 0 <= i < n else None
        if p is not None:
            out.append(p)
    return tuple(out)


@lru_cache(maxsize=1024)
def resolve_offsets(offsets, lo: int, hi: int) -> tuple[Prog, ...]:
    """The literal offsets of ``slash(O)`` inside ``[lo, hi)`` (never resolved against n)."""
    out = []
    for item in offsets.items:
        if _k(item) == "Slice":
            if item.start is None or item.stop is None:
                raise UsageError("a slash offset slice needs both ends (a:b or a:b:c)")
            if item.step == 0:
                raise UsageError("a slice step of 0 selects nothing meaningful")
            p = _prog(range(item.start, item.stop, item.step or 1))
        else:
            p = (item, item + 1, 1)
        if p is not None:
            p = _clip(p, lo, hi)
        if p is not None:
            out.append(p)
    return tuple(out)


# ---------------------------------------------------------------------------
# Views: residue-class layouts of one axis (docs/PLAN.md, "Views")
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    period: int
    start: int
    stop: int
    block: int
    class_tiles: int

    @staticmethod
    def make(period: int, start: int, stop: int, block: int) -> "View":
        longest = -(-(stop - start) // period) if stop > start else 0
        return View(period, start, stop, block, -(-longest // block))

    @property
    def num_tiles(self) -> int:
        return self.period * self.class_tiles

    @property
    def num_slots(self) -> int:
        return self.num_tiles * self.block

    @property
    def class_slots(self) -> int:
        return self.class_tiles * self.block

    def first(self, c):
        """First position of residue class ``c`` (int or tensor)."""
        return self.start + (c - self.start) % self.period

    def count(self, c):
        """Positions in class ``c`` (int or tensor)."""
        f = self.first(c)
        if isinstance(f, torch.Tensor):
            return torch.clamp(cdiv(self.stop - f, self.period), min=0)
        return max(0, -(-(self.stop - f) // self.period))

    def tile_class(self, t):
        return t // self.class_tiles if self.class_tiles else t * 0

    def positions(self) -> torch.Tensor:
        """int64 ``[num_slots]``: the position of every slot, ``-1`` for padding."""
        v = torch.arange(self.num_slots, dtype=torch.int64)
        return self._pos(v)

    def tile_positions(self, tile) -> torch.Tensor:
        """int64 ``[block]`` (or ``[len(tile), block]`` for a tensor of tiles)."""
        t = torch.as_tensor(tile, dtype=torch.int64)
        v = t.unsqueeze(-1) * self.block + torch.arange(self.block, dtype=torch.int64)
        return self._pos(v)

    def _pos(self, v: torch.Tensor) -> torch.Tensor:
        if self.class_slots == 0:
            return torch.full_like(v, -1)
        c = v // self.class_slots
        t = v % self.class_slots
        ok = (t < self.count(c)) & (c < self.period)
        return torch.where(ok, self.first(c) + self.period * t, torch.full_like(v, -1))

    def valid_per_tile(self) -> torch.Tensor:
        """int64 ``[num_tiles]``: valid (non-padding) slots of each tile."""
        t = torch.arange(self.num_tiles, dtype=torch.int64)
        c = self.tile_class(t)
        u = t - c * self.class_tiles
        return torch.clamp(self.count(c) - u * self.block, min=0, max=self.block)

    def slot_of(self, pos: torch.Tensor) -> torch.Tensor:
        """The slot holding each position (positions must lie in ``[start, stop)``)."""
        c = torch.remainder(pos, self.period)
        return c * self.class_slots + (pos - self.first(c)) // self.period


@dataclass(frozen=True)
class ViewKind:
    """Which pair of views a part uses and how key classes pair with query classes.

    ``kind``: ``"id"`` (both identity), ``"d"`` (both residue ``s``, key class = query class
    minus ``r``: parts under ``(q - k) mod s == r``), ``"k"`` (keys residue ``s``, only key
    class ``r``), ``"q"`` (queries residue ``s``; keys identity).  ``qlo``/``qhi``, when
    set, restrict the query view to the positions ``[qlo, qhi)`` (parts under a row set, such
    as the rows of a ``global`` token)."""

    kind: str
    s: int = 1
    r: int = 0
    qlo: int | None = None
    qhi: int | None = None

    def rows(self, q0: int, q1: int) -> tuple[int, int]:
        a = q0 if self.qlo is None else min(max(q0, self.qlo), q1)
        b = q1 if self.qhi is None else max(min(q1, self.qhi), a)
        return a, b

    def views(self, q0: int, q1: int, n: int, bm: int, bn: int) -> tuple[View, View]:
        sq = self.s if self.kind in ("d", "q") else 1
        sk = self.s if self.kind in ("d", "k") else 1
        a, b = self.rows(q0, q1)
        return View.make(sq, a, b, bm), View.make(sk, 0, n, bn)

    def key_class(self, qclass: torch.Tensor) -> torch.Tensor:
        if self.kind == "d":
            return torch.remainder(qclass - self.r, self.s)
        if self.kind == "k":
            return torch.full_like(qclass, self.r)
        return torch.zeros_like(qclass)

    def order(self):
        restricted = self.qlo is not None or self.qhi is not None
        return (restricted, {"id": 0, "d": 1, "k": 2, "q": 3}[self.kind], self.s, self.r,
                -1 if self.qlo is None else self.qlo, -1 if self.qhi is None else self.qhi)


IDENTITY = ViewKind("id")


@dataclass
class Geom:
    """Per query tile of a part's q_view: its rows and the key class it pairs with.
    Rows of tile ``t`` are ``qf + sq * a`` for ``a`` in ``[a0, a1]``; keys of the paired
    class are ``kf + sk * b`` for ``b`` in ``[0, kcount)``."""

    n: int
    qv: View
    kv: View
    sq: int
    sk: int
    qf: torch.Tensor
    a0: torch.Tensor
    a1: torch.Tensor
    kf: torch.Tensor
    kcount: torch.Tensor
    kclass: torch.Tensor

    @staticmethod
    def make(kind: ViewKind, qv: View, kv: View, n: int) -> "Geom":
        t = torch.arange(qv.num_tiles, dtype=torch.int64)
        c = qv.tile_class(t)
        u = t - c * qv.class_tiles
        qf = qv.first(c)
        a0 = u * qv.block
        a1 = torch.minimum(qv.count(c), a0 + qv.block) - 1
        ck = kind.key_class(c)
        return Geom(n, qv, kv, qv.period, kv.period, qf, a0, a1, kv.first(ck), kv.count(ck), ck)

    @property
    def T(self) -> int:
        return self.qf.numel()

    @property
    def qmin(self):
        return self.qf + self.sq * self.a0

    @property
    def qmax(self):
        return self.qf + self.sq * self.a1

    @property
    def valid(self):
        return self.a1 >= self.a0


# ---------------------------------------------------------------------------
# Interval sets, one per query tile, as [T, K] tensors (lo <= x < hi; normalised: sorted,
# disjoint, non-adjacent, padding (INF, INF) last).  Intersections, complements and clips
# keep the order of what survives, so they only compact; unions and re-roundings sort.
# ---------------------------------------------------------------------------

Iv = tuple  # (lo [T, K], hi [T, K])


def iv_full(T: int) -> Iv:
    return (torch.full((T, 1), -INF, dtype=torch.int64), torch.full((T, 1), INF, dtype=torch.int64))


def iv_empty(T: int) -> Iv:
    return (torch.full((T, 1), INF, dtype=torch.int64), torch.full((T, 1), INF, dtype=torch.int64))


def iv_is_empty(a: Iv) -> bool:
    return a[0].shape[1] == 1 and bool((a[0] == INF).all())


def iv_is_full(a: Iv) -> bool:
    return a[0].shape[1] == 1 and bool((a[0] == -INF).all() and (a[1] == INF).all())


def iv_pad(a: Iv, K: int) -> Iv:
    lo, hi = a
    if lo.shape[1] >= K:
        return a
    extra = torch.full((lo.shape[0], K - lo.shape[1]), INF, dtype=torch.int64)
    return torch.cat([lo, extra], 1), torch.cat([hi, extra], 1)


def iv_choose(cond: torch.Tensor, a: Iv, b: Iv) -> Iv:
    """Per tile: ``a`` where ``cond`` else ``b`` (both normalised, so the result is)."""
    K = max(a[0].shape[1], b[0].shape[1])
    a, b = iv_pad(a, K), iv_pad(b, K)
    c = cond.unsqueeze(1)
    return pick(c, a[0], b[0]), pick(c, a[1], b[1])


def iv_single(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    lo = torch.clamp(lo.reshape(-1, 1), -INF, INF)
    hi = torch.clamp(hi.reshape(-1, 1), -INF, INF)
    bad = hi <= lo
    return pick(bad, INF, lo), pick(bad, INF, hi)


def _empty_like(lo: torch.Tensor, inf: int) -> Iv:
    e = torch.full((lo.shape[0], 1), inf, dtype=lo.dtype)
    return e, e.clone()


def iv_compact(lo: torch.Tensor, hi: torch.Tensor, inf: int = INF) -> Iv:
    """Normalise a set that is sorted and disjoint except for empty entries anywhere.
    ``inf``: the unbounded end (INF; a smaller one for int32 tile numbers)."""
    T, K = lo.shape
    lo = torch.clamp(lo, -inf, inf)
    hi = torch.clamp(hi, -inf, inf)
    bad = hi <= lo
    if K == 1:
        return pick(bad, inf, lo), pick(bad, inf, hi)
    good = ~bad
    if T == 0:
        return _empty_like(lo, inf)
    if bool(good.all()):
        return lo, hi
    slot = torch.cumsum(good, 1) - 1
    K2 = int(slot[:, -1].max()) + 1 if T else 0
    if K2 == 0:
        return _empty_like(lo, inf)
    slot = pick(good, slot, K2)   # dump column
    nlo = torch.full((T, K2 + 1), inf, dtype=lo.dtype).scatter_(1, slot, lo)
    nhi = torch.full((T, K2 + 1), inf, dtype=lo.dtype).scatter_(1, slot, hi)
    return nlo[:, :K2], nhi[:, :K2]


def iv_norm(lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    """Normalise any set of intervals (sort, then merge overlapping or touching ones)."""
    T, K = lo.shape
    if K <= 1:
        return iv_compact(lo, hi) if K else iv_empty(T)
    bad = hi <= lo
    order = torch.argsort(pick(bad, INF + 1, lo), dim=1)
    return iv_merge_sorted(torch.gather(lo, 1, order), torch.gather(hi, 1, order))


def iv_merge_sorted(lo: torch.Tensor, hi: torch.Tensor, inf: int = INF) -> Iv:
    """Normalise a set whose non-empty entries are already ordered by ``lo`` (empties may
    sit anywhere): e.g. a normalised set rounded outwards.  ``inf`` as in `iv_compact`."""
    T, K = lo.shape
    if K == 1:
        return iv_compact(lo, hi, inf)
    lo = torch.clamp(lo, -inf, inf)
    hi = torch.clamp(hi, -inf, inf)
    real = hi > lo
    if T == 0:
        return _empty_like(lo, inf)
    # Rows that are normalised already (every entry real and past the previous one's end,
    # as most rows of a group's runs are) stay as they are; only the others are merged.
    ok = real.all(1) & (lo[:, 1:] > hi[:, :-1]).all(1)
    if bool(ok.all()):
        return lo, hi
    if 4 * int(ok.sum()) >= T:
        bad = (~ok).nonzero().flatten()
        mlo, mhi = _merge_rows(lo[bad], hi[bad], real[bad], inf)
        lo[bad, :mlo.shape[1]] = mlo
        hi[bad, :mhi.shape[1]] = mhi
        lo[bad, mlo.shape[1]:] = inf
        hi[bad, mhi.shape[1]:] = inf
        return lo, hi
    return _merge_rows(lo, hi, real, inf)


def _merge_rows(lo: torch.Tensor, hi: torch.Tensor, real: torch.Tensor, inf: int) -> Iv:
    T, K = lo.shape
    h = pick(real, hi, -inf - 1)
    reach = torch.cummax(h, dim=1).values
    start = torch.empty((T, K), dtype=torch.bool)
    start[:, :1] = real[:, :1]
    start[:, 1:] = real[:, 1:] & (lo[:, 1:] > reach[:, :-1])
    gid = torch.cumsum(start, 1) - 1
    K2 = int(gid[:, -1].max()) + 1 if T else 0
    if K2 == 0:
        return _empty_like(lo, inf)
    slot = pick(start, gid, K2)
    mslot = pick(real, gid, K2)
    nlo = torch.full((T, K2 + 1), inf, dtype=lo.dtype).scatter_(1, slot, lo)
    nhi = torch.full((T, K2 + 1), -inf, dtype=lo.dtype).scatter_reduce(1, mslot, h, reduce="amax")
    nlo, nhi = nlo[:, :K2], nhi[:, :K2]
    return nlo, pick(nlo < inf, nhi, inf)


def _count_before(x: torch.Tensor, y: torch.Tensor, right: bool) -> torch.Tensor:
    """``torch.searchsorted(x, y, right=right)`` for rows ``x`` sorted ascending: per entry
    of ``y``, how many entries of its row of ``x`` lie below it (or at it, ``right``).
    Against a few columns, whole-tensor comparisons beat torch's per-row binary search."""
    if x.shape[1] > 4:
        return torch.searchsorted(x.contiguous(), y.contiguous(), right=right)
    # One comparison buffer and a byte counter: a fresh temporary per column would cost
    # more in page faults than the comparisons themselves.
    acc = torch.zeros(y.shape, dtype=torch.uint8)
    hit = torch.empty(y.shape, dtype=torch.bool)
    cmp = torch.le if right else torch.lt
    for j in range(x.shape[1]):
        acc += cmp(x[:, j:j + 1], y, out=hit).view(torch.uint8)
    return acc.to(torch.int64)


def iv_interleave(a: Iv, b: Iv, extra=None, inf: int = INF):
    """The entries of two normalised sets in position order, without a row-wise sort
    (torch sorts short rows slowly): each entry's rank is its index plus the number of the
    other set's entries before it.  ``extra``: per-set tensors ``(xa, xb)`` carried along.
    ``inf`` as in `iv_compact`."""
    T, Ka = a[0].shape
    Kb = b[0].shape[1]
    K = Ka + Kb
    ra = torch.arange(Ka) + _count_before(b[0], a[0], right=False)
    rb = torch.arange(Kb) + _count_before(a[0], b[0], right=True)
    ra = pick(a[0] < inf, ra, K)
    rb = pick(b[0] < inf, rb, K)

    def put(x, y, fill):
        out = torch.full((T, K + 1), fill, dtype=x.dtype)
        return out.scatter_(1, ra, x).scatter_(1, rb, y)[:, :K]
    lo = put(a[0], b[0], inf)
    hi = put(a[1], b[1], inf)
    if extra is None:
        return lo, hi
    return lo, hi, put(extra[0], extra[1], False)


def iv_union(a: Iv, b: Iv) -> Iv:
    if iv_is_empty(a) or iv_is_full(b):
        return b
    if iv_is_empty(b) or iv_is_full(a):
        return a
    if a[0].shape[1] == 1 and b[0].shape[1] == 1:
        return iv__union11(a, b)
    return iv_merge_sorted(*iv_interleave(a, b))


def iv__union11(a: Iv, b: Iv) -> Iv:
    first = a[0] <= b[0]
    x_lo = torch.minimum(a[0], b[0])
    x_hi = pick(first, a[1], b[1])
    y_lo = torch.maximum(a[0], b[0])
    y_hi = pick(first, b[1], a[1])
    touch = (y_lo <= x_hi) & (y_lo < INF)
    x_hi = pick(touch, torch.maximum(x_hi, y_hi), x_hi)
    y_lo = pick(touch, INF, y_lo)
    y_hi = pick(touch, INF, y_hi)
    if not bool((y_lo < INF).any()):
        return x_lo, x_hi
    return torch.cat([x_lo, y_lo], 1), torch.cat([x_hi, y_hi], 1)


def iv_intersect(a: Iv, b: Iv) -> Iv:
    if iv_is_empty(a) or iv_is_full(b):
        return a
    if iv_is_empty(b) or iv_is_full(a):
        return b
    T = a[0].shape[0]
    K = a[0].shape[1] * b[0].shape[1]
    # (i, j) order of two sorted disjoint lists is sorted by position: compacting suffices
    lo = torch.maximum(a[0].unsqueeze(2), b[0].unsqueeze(1)).reshape(T, K)
    hi = torch.minimum(a[1].unsqueeze(2), b[1].unsqueeze(1)).reshape(T, K)
    return iv_compact(lo, hi)


def iv_complement(a: Iv) -> Iv:
    lo, hi = a
    T = lo.shape[0]
    clo = torch.cat([torch.full((T, 1), -INF, dtype=torch.int64), hi], 1)
    chi = torch.cat([lo, torch.full((T, 1), INF, dtype=torch.int64)], 1)
    return iv_compact(clo, chi)


def iv_difference(a: Iv, b: Iv) -> Iv:
    if iv_is_empty(a) or iv_is_empty(b):
        return a
    return iv_intersect(a, iv_complement(b))


def iv_clip(a: Iv, lo: torch.Tensor, hi: torch.Tensor) -> Iv:
    return iv_compact(torch.maximum(a[0], lo.unsqueeze(1)), torch.minimum(a[1], hi.unsqueeze(1)))


# ---------------------------------------------------------------------------
# Random key blocks (LANGUAGE.md, ``random``): R(i) drawn from a splitmix64 stream that
# depends only on (seed, i) and the candidate count.  Vectorised over query blocks with
# int64 tensors holding the bit patterns of uint64 values: addition, multiplication and xor
# wrap alike for signed and unsigned words; right shifts and ``mod`` need the corrections
# below.  The package and generated modules both draw with these functions.
# ---------------------------------------------------------------------------

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def splitmix64(x: int) -> int:
    """One splitmix64 step on a Python int, mod 2**64 (the scalar definition)."""
    x = (x + _GOLDEN) & MASK64
    y = ((x ^ (x >> 30)) * _MUL1) & MASK64
    y = ((y ^ (y >> 27)) * _MUL2) & MASK64
    return y ^ (y >> 31)


def signed64(u: int) -> int:
    """The int64 whose bit pattern is the uint64 ``u``."""
    u &= MASK64
    return u - (1 << 64) if u >= 1 << 63 else u


def _lshr(x: torch.Tensor, s: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; clearing the sign-extended bits makes it logical.
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64_tensor(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 on an int64 tensor of uint64 bit patterns (wrapping arithmetic)."""
    x = x + signed64(_GOLDEN)
    y = (x ^ _lshr(x, 30)) * signed64(_MUL1)
    y = (y ^ _lshr(y, 27)) * signed64(_MUL2)
    return y ^ _lshr(y, 31)


def wrap64(c: torch.Tensor) -> torch.Tensor:
    """``2**64 mod c``, built from 2**62 so every intermediate stays below 2**63."""
    return torch.remainder(torch.remainder(torch.full_like(c, 1 << 62), c) * 4, c)


def umod64(x: torch.Tensor, c: torch.Tensor, wrap: torch.Tensor | None = None) -> torch.Tensor:
    """``u mod c`` for the uint64 ``u`` stored in the int64 ``x`` (``1 <= c < 2**61``);
    ``wrap`` is :func:`wrap64` of ``c`` when the caller has it."""
    if wrap is None:
        wrap = wrap64(c)
    r = torch.remainder(x, c)  # = (u - 2**64 * [x < 0]) mod c
    return torch.where(x < 0, torch.remainder(r + wrap, c), r)


def _sort_rows(key: torch.Tensor) -> torch.Tensor:
    """Rows sorted ascending.  Rows are short: an odd-even transposition network over the
    columns beats torch's row-wise sort up to a few columns."""
    r = key.shape[1]
    if r > 8:
        return torch.sort(key, dim=1).values
    cols = list(key.unbind(1))
    for rnd in range(r):
        for i in range(rnd % 2, r - 1, 2):
            a, b = cols[i], cols[i + 1]
            cols[i], cols[i + 1] = torch.minimum(a, b), torch.maximum(a, b)
    return torch.stack(cols, 1) if cols else key


# Rows whose first draws repeat, up to this many, are finished one by one in Python.
SCALAR_ROWS = 256


def random_table(count: int, block: int, seed: int, causal: bool, n: int) -> torch.Tensor:
    """``R(i)`` for every query block ``i``: int64 ``[ceil(n/block), r]`` with
    ``r = min(count, nb)``, each row ascending and padded with ``-1`` (causal rows that have
    fewer than ``r`` candidates).  O(nb * r) memory, unlike a dense ``[nb, nb]`` table."""
    nb = -(-n // block) if n > 0 else 0
    r = min(count, nb)
    table = torch.full((nb, r), -1, dtype=torch.int64)
    if nb == 0 or r == 0:
        return table
    rows = torch.arange(nb, dtype=torch.int64)
    cand = rows + 1 if causal else torch.full((nb,), nb, dtype=torch.int64)
    target = torch.clamp(cand, max=r)
    # A row wanting every candidate holds all of them whatever order the stream visits them.
    full = target == cand
    if bool(full.any()):
        cols = torch.arange(r, dtype=torch.int64)
        table[full] = torch.where(cols < cand[full].unsqueeze(1), cols, torch.full_like(cols, -1))
    base = splitmix64_tensor(torch.tensor(signed64(splitmix64(seed & MASK64)), dtype=torch.int64) ^ rows)
    active = torch.nonzero(~full).flatten()
    wrap = wrap64(cand)
    if active.numel() and r <= 8:
        # The usual case, r much smaller than the candidates: the stream's first r values are
        # distinct, so they are R(i).  Only rows with a repeat among them go on below.
        v = umod64(splitmix64_tensor(base[active].unsqueeze(1) + torch.arange(r)),
                   cand[active].unsqueeze(1), wrap[active].unsqueeze(1))
        dup = torch.zeros(active.shape, dtype=torch.bool)
        for i in range(r):
            for j in range(i + 1, r):
                dup |= v[:, i] == v[:, j]
        table[active[~dup]] = v[~dup]
        active = active[dup]
        if active.numel() <= SCALAR_ROWS:
            # Few rows left: the scalar definition costs less than the vector passes below.
            h0 = splitmix64(seed & MASK64)
            for i in active.tolist():
                c = i + 1 if causal else nb
                h = splitmix64(h0 ^ i)
                got: list = []
                j = 0
                while len(got) < r:
                    x = splitmix64((h + j) & MASK64) % c
                    j += 1
                    if x not in got:
                        got.append(x)
                table[i] = torch.tensor(got, dtype=torch.int64)
            active = active[:0]
    held = torch.zeros(nb, dtype=torch.int64)
    j = 0
    # Draws are made a few stream positions at a time for all still-active rows, then taken
    # one stream position after another: a row takes a draw when it does not hold it yet and
    # still needs one (stream order, exactly as the definition).
    width = r + 2
    while active.numel():
        c = cand[active].unsqueeze(1)
        v = umod64(splitmix64_tensor(base[active].unsqueeze(1) + torch.arange(j, j + width)), c,
                   wrap[active].unsqueeze(1))
        got = table[active]
        h = held[active]
        need = target[active]
        for col in range(width):
            x = v[:, col]
            new = ~(got == x.unsqueeze(1)).any(1) & (h < need)
            idx = new.nonzero().flatten()
            got[idx, h[idx]] = x[idx]
            h = h + new
        table[active] = got
        held[active] = h
        active = active[h < need]
        j += width
    # Ascending rows, padding (-1) last.
    big = 1 << 62
    key = _sort_rows(pick(table < 0, big, table))
    return pick(key == big, -1, key)


# ---------------------------------------------------------------------------
# Groups: block / document / random / blockwise as segments of the query axis with
# key runs each (read by the key spaces here and by the package's atom counts)
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Group:
    """Segments of the query axis, each with disjoint key runs.

    Segment ``s`` covers queries ``[seg_starts[s], seg_starts[s+1])`` (the last one up to
    ``n``) and allows keys in ``[run_lo[j], run_hi[j])`` for ``ptr_lo[s] <= j < ptr_hi[s]``.
    ``seg_len > 0`` says the segments all start at multiples of it (``seg_starts[s] ==
    s * seg_len``), so a query's segment is a division rather than a search."""

    n: int
    seg_starts: torch.Tensor   # int64 [S], seg_starts[0] == 0
    ptr_lo: torch.Tensor       # int64 [S]
    ptr_hi: torch.Tensor       # int64 [S]
    run_lo: torch.Tensor       # int64 [R]
    run_hi: torch.Tensor       # int64 [R]
    seg_len: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_segments(self) -> int:
        return int(self.seg_starts.numel())

    @property
    def max_runs(self) -> int:
        if "max_runs" not in self._cache:
            c = self.ptr_hi - self.ptr_lo
            self._cache["max_runs"] = int(c.max()) if c.numel() else 0
        return self._cache["max_runs"]

    def segment_of(self, q: torch.Tensor) -> torch.Tensor:
        if self.seg_len:
            return torch.clamp(fdiv(q, self.seg_len), -1, self.num_segments - 1)
        return torch.searchsorted(self.seg_starts, q, right=True) - 1

    def runs_of(self, seg: torch.Tensor, width: int | None = None):
        """``(lo, hi)`` of shape ``[*seg.shape, width]``: the runs of each segment, empty
        (``lo == hi == 0``) past its count."""
        width = self.max_runs if width is None else width
        j = self.ptr_lo[seg].unsqueeze(-1) + torch.arange(width, dtype=torch.int64)
        ok = j < self.ptr_hi[seg].unsqueeze(-1)
        j = pick(ok, j, 0)
        if self.run_lo.numel() == 0:
            z = torch.zeros(j.shape, dtype=torch.int64)
            return z, z
        return pick(ok, self.run_lo[j], 0), pick(ok, self.run_hi[j], 0)

    def _sparse(self, which: str):
        """Sparse tables (range min of run starts / range max of run ends per segment)."""
        if which not in self._cache:
            lo, hi = self.runs_of(torch.arange(self.num_segments))
            has = hi > lo
            big = 1 << 60
            if which == "min":
                base = torch.where(has, lo, torch.full_like(lo, big)).amin(1) if lo.shape[1] else \
                    torch.full((self.num_segments,), big, dtype=torch.int64)
                op = torch.minimum
            else:
                base = torch.where(has, hi, torch.full_like(hi, -big)).amax(1) if hi.shape[1] else \
                    torch.full((self.num_segments,), -big, dtype=torch.int64)
                op = torch.maximum
            levels = [base]
            step = 1
            while 2 * step <= base.numel():
                prev = levels[-1]
                levels.append(op(prev[:-step], prev[step:]))
                step *= 2
            self._cache[which] = levels
        return self._cache[which]

    def range_hull(self, s0: torch.Tensor, s1: torch.Tensor):
        """Per pair of segments ``s0 <= s1``: (smallest run start, largest run end) over the
        segments ``s0 .. s1`` (``lo > hi`` when they hold no run)."""
        mins, maxs = self._sparse("min"), self._sparse("max")
        length = (s1 - s0 + 1).clamp(min=1)
        lev = torch.floor(torch.log2(length.to(torch.float64))).to(torch.int64)
        # float log2 can be off by one at exact powers of two; fix it with integer checks
        lev = torch.where((1 << (lev + 1)) <= length, lev + 1, lev)
        lev = torch.where((1 << lev) > length, lev - 1, lev)
        lo = torch.empty_like(s0)
        hi = torch.empty_like(s0)
        for k in range(len(mins)):
            sel = lev == k
            if bool(sel.any()):
                a, b = s0[sel], s1[sel] - (1 << k) + 1
                lo[sel] = torch.minimum(mins[k][a], mins[k][b])
                hi[sel] = torch.maximum(maxs[k][a], maxs[k][b])
        return lo, hi


def block_group(b: int, n: int) -> Group:
    starts = torch.arange(0, max(n, 1), b, dtype=torch.int64)
    idx = torch.arange(starts.numel(), dtype=torch.int64)
    return Group(n, starts, idx, idx + 1, starts, torch.clamp(starts + b, max=n), seg_len=b)


def random_group(count: int, block: int, seed: int, causal: bool, n: int, table: torch.Tensor) -> Group:
    nb, r = table.shape
    b = block
    starts = torch.arange(nb, dtype=torch.int64) * b if nb else torch.zeros(1, dtype=torch.int64)
    if nb == 0:
        z = torch.zeros(1, dtype=torch.int64)
        return Group(n, starts, z, z, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                     seg_len=b)
    held = (table >= 0).sum(1)
    ptr_lo = torch.arange(nb, dtype=torch.int64) * r
    flat = table.reshape(-1)
    lo = torch.where(flat >= 0, flat * b, torch.zeros_like(flat))
    hi = torch.where(flat >= 0, torch.clamp(flat * b + b, max=n), torch.zeros_like(flat))
    return Group(n, starts, ptr_lo, ptr_lo + held, lo, hi, seg_len=b)


def transposed_random_group(b: int, n: int, table: torch.Tensor) -> Group:
    """Random blocks read by columns: segment ``j`` (key block) holds the query blocks
    ``i`` with ``j`` in ``R(i)``, as runs of positions."""
    nb, r = table.shape
    if nb == 0 or r == 0:
        starts = torch.arange(max(nb, 1), dtype=torch.int64) * b
        z = torch.zeros(starts.numel(), dtype=torch.int64)
        e = torch.zeros(0, dtype=torch.int64)
        return Group(n, starts, z, z, e, e, seg_len=b)
    i = torch.arange(nb, dtype=torch.int64).unsqueeze(1).expand(nb, r).reshape(-1)
    j = table.reshape(-1)
    keep = j >= 0
    i, j = i[keep], j[keep]
    order = torch.argsort(j * nb + i)
    i, j = i[order], j[order]
    counts = torch.bincount(j, minlength=nb)
    ptr_hi = torch.cumsum(counts, 0)
    return Group(n, torch.arange(nb, dtype=torch.int64) * b, ptr_hi - counts, ptr_hi, i * b,
                 torch.clamp(i * b + b, max=n), seg_len=b)


def document_runs(doc_ids: torch.Tensor):
    """(starts, ends, ids) of the maximal runs of equal document ids (one O(n) pass)."""
    n = doc_ids.numel()
    if n == 0:
        e = torch.zeros(0, dtype=torch.int64)
        return e, e, e
    ids, counts = torch.unique_consecutive(doc_ids, return_counts=True)
    ends = torch.cumsum(counts, 0)
    return ends - counts, ends, ids


def document_group(doc_ids: torch.Tensor, runs=None) -> Group:
    """Segments are the runs of equal ids; a segment's key runs are every run with its id
    (a document may be split into several runs; usually there is one)."""
    n = doc_ids.numel()
    if n == 0:
        z = torch.zeros(1, dtype=torch.int64)
        e = torch.zeros(0, dtype=torch.int64)
        return Group(0, z, z, z, e, e)
    starts, ends, ids = document_runs(doc_ids) if runs is None else runs
    order = torch.sort(ids, stable=True).indices
    sorted_ids = ids[order]
    ptr_lo = torch.searchsorted(sorted_ids, ids, right=False)
    ptr_hi = torch.searchsorted(sorted_ids, ids, right=True)
    return Group(n, starts, ptr_lo, ptr_hi, starts[order], ends[order])


def runs_group(b: int, n: int, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, nrows: int) -> Group:
    """A group with segments of ``b`` queries and key runs given in block units as flat,
    row-sorted, disjoint ``[lo, hi)`` lists (expanded here to positions)."""
    starts = torch.arange(nrows, dtype=torch.int64) * b if nrows else torch.zeros(1, dtype=torch.int64)
    counts = torch.bincount(rows, minlength=max(nrows, 1))[: max(nrows, 1)]
    ptr_hi = torch.cumsum(counts, 0)
    ptr_lo = ptr_hi - counts
    return Group(n, starts, ptr_lo, ptr_hi, lo * b, torch.clamp(hi * b, max=n), seg_len=b)


def merge_runs(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Union of flat intervals grouped by row: returns row-sorted disjoint (rows, lo, hi)."""
    keep = hi > lo
    rows, lo, hi = rows[keep], lo[keep], hi[keep]
    if rows.numel() == 0:
        return rows, lo, hi
    span = int(hi.max()) + 1
    order = torch.argsort(rows * span + lo)
    rows, lo, hi = rows[order], lo[order], hi[order]
    # running maximum of hi within each row (rows are sorted, so a key offset by the row
    # keeps earlier rows below), to find where a new merged run starts
    key = rows * span + hi
    reach_key = torch.cummax(key, 0).values
    reach = reach_key - rows * span
    prev_reach = torch.cat([torch.tensor([-1], dtype=torch.int64), reach[:-1]])
    prev_row = torch.cat([torch.tensor([-1], dtype=torch.int64), rows[:-1]])
    start = (rows != prev_row) | (lo > prev_reach)
    gid = torch.cumsum(start.to(torch.int64), 0) - 1
    ng = int(gid[-1]) + 1
    g_rows = rows[start]
    g_lo = lo[start]
    g_hi = torch.full((ng,), -1, dtype=torch.int64).scatter_reduce(0, gid, hi, reduce="amax")
    return g_rows, g_lo, g_hi


# ---------------------------------------------------------------------------
# The element predicate (docs/PLAN.md, "Element predicates")
# ---------------------------------------------------------------------------

def _member(x: torch.Tensor, progs) -> torch.Tensor:
    out = torch.zeros_like(x, dtype=torch.bool)
    for start, stop, step in progs:
        m = (x >= start) & (x < stop)
        if step > 1:
            m = m & (torch.remainder(x - start, step) == 0)
        out = out | m
    return out


def evaluate(e: Expr, q: torch.Tensor, k: torch.Tensor, ctx: "Context") -> torch.Tensor:
    n = ctx.n
    if _k(e) == "Union":
        out = evaluate(e.terms[0], q, k, ctx)
        for t in e.terms[1:]:
            out = out | evaluate(t, q, k, ctx)
        return out
    if _k(e) == "Intersect":
        out = evaluate(e.terms[0], q, k, ctx)
        for t in e.terms[1:]:
            out = out & evaluate(t, q, k, ctx)
        return out
    if _k(e) == "Difference":
        return evaluate(e.left, q, k, ctx) & ~evaluate(e.right, q, k, ctx)
    if _k(e) == "All":
        return (q - k) == (q - k)
    if _k(e) == "Nothing":
        return (q - k) != (q - k)
    if _k(e) == "Causal":
        return k <= q
    if _k(e) == "Local":
        return (k >= q - cap(e.left, n)) & (k <= q + cap(e.right, n))
    if _k(e) == "Block":
        b = cap(e.size, n)
        return fdiv(q, b) == fdiv(k, b)
    if _k(e) == "Stride":
        # |q - k| < n: for s >= n, "(q - k) mod s == 0" is q == k, the same as mod n.
        return torch.remainder(q - k, cap(e.step, n)) == 0
    if _k(e) == "Dilated":
        d = q - k
        return (d.abs() <= cap(e.width * e.dilation, n)) & (torch.remainder(d, cap(e.dilation, n)) == 0)
    if _k(e) == "Every":
        if e.step > max(n, 1):
            return k == e.offset
        return torch.remainder(k, e.step) == e.offset
    if _k(e) == "Rows":
        return _member(q, ctx.index_set(e.index)) & (k == k)
    if _k(e) == "Cols":
        return _member(k, ctx.index_set(e.index)) & (q == q)
    if _k(e) == "Global":
        progs = ctx.index_set(e.index)
        return _member(q, progs) | _member(k, progs)
    if _k(e) == "Sink":
        return (k < cap(e.count, n)) & (q == q)
    if _k(e) == "Prefix":
        p = cap(e.length, n)
        return (q < p) & (k < p)
    if _k(e) == "Slash":
        return _member(q - k, ctx.offset_set(e.offsets))
    if _k(e) == "Document":
        doc = ctx.require_doc_ids()
        return doc[q] == doc[k]
    if _k(e) == "Random":
        table = ctx.random_table(e)
        if table.shape[1] == 0:
            return (q - k) != (q - k)
        b = cap(e.block, n)
        return (table[fdiv(q, b)] == fdiv(k, b).unsqueeze(-1)).any(-1)
    if _k(e) == "Blockwise":
        b = cap(e.block, n)
        return evaluate(e.expr, fdiv(q, b), fdiv(k, b), ctx.inner(e))
    if _k(e) == "Swapped":
        return evaluate(e.expr, k, q, ctx)
    if _k(e) in DYNAMIC_NAMES:
        raise UsageError("data-dependent terms are planned per call (they need q and k)")
    raise TypeError(f"not a pattern expression: {e!r}")


def tile_mask(e: Expr, q_pos: torch.Tensor, k_pos: torch.Tensor, ctx: "Context") -> torch.Tensor:
    """``[..., len(q_pos), len(k_pos)]`` mask of one or a batch of tiles; padding (-1)
    positions are never allowed."""
    q = q_pos.unsqueeze(-1)
    k = k_pos.unsqueeze(-2)
    qs = torch.clamp(q, min=0)
    ks = torch.clamp(k, min=0)
    return evaluate(e, qs, ks, ctx) & (q >= 0) & (k >= 0)


# ---------------------------------------------------------------------------
# What a plan reads beyond the expression
# ---------------------------------------------------------------------------

class Context:
    """Per-(n, doc_ids) tables, built lazily and cached. Read by `evaluate`, the atom counts
    and the per-tile key spaces."""

    def __init__(self, n: int, doc_ids: torch.Tensor | None = None, *, inner: bool = False,
                 doc_runs=None):
        self.n = n
        self.doc_ids = doc_ids
        self._doc_runs = doc_runs
        self.inner_level = inner
        self._random: dict = {}
        self._groups: dict = {}
        self._inner: dict = {}
        self._sets: dict = {}

    # -- tables a kernel reads ------------------------------------------------
    def random_table(self, node) -> torch.Tensor:
        """int64 ``[ceil(n/b), r]``: ``R(i)`` ascending, ``-1`` padded."""
        key = (node.count, node.block, node.seed, node.causal)
        if key not in self._random:
            self._random[key] = random_table(node.count, node.block, node.seed, node.causal, self.n)
        return self._random[key]

    def inner(self, node) -> "Context":
        """The context ``blockwise(b, E)`` evaluates ``E`` in: ``n' = ceil(n / b)``."""
        if node.block not in self._inner:
            self._inner[node.block] = type(self)(-(-self.n // node.block), None, inner=True)
        return self._inner[node.block]

    def index_set(self, index) -> tuple:
        """``resolve_index(index, n)``, cached here (a plain dict, so tracing a mask_mod under
        torch.compile sees a constant)."""
        key = ("i", index)
        if key not in self._sets:
            self._sets[key] = resolve_index(index, self.n)
        return self._sets[key]

    def offset_set(self, offsets) -> tuple:
        """``resolve_offsets`` over every difference ``q - k`` a length-n call has."""
        key = ("o", offsets)
        if key not in self._sets:
            self._sets[key] = resolve_offsets(offsets, -max(self.n - 1, 0), max(self.n, 1))
        return self._sets[key]

    def require_doc_ids(self) -> torch.Tensor:
        if self.inner_level:
            raise UsageError("`document` cannot appear inside blockwise(...)")
        if self.doc_ids is None:
            raise UsageError("this spec uses `document`: pass doc_ids (shape [n])")
        return self.doc_ids

    # -- groups (segment -> key runs) ---------------------------------------------
    def group(self, node: Expr) -> Group:
        key = node
        if key in self._groups:
            return self._groups[key]
        n = self.n
        if _k(node) == "Block":
            g = block_group(cap(node.size, n), n)
        elif _k(node) == "Random":
            t = self.random_table(node)
            g = random_group(node.count, cap(node.block, n), node.seed, node.causal, n, t)
        elif _k(node) == "Document":
            g = document_group(self.require_doc_ids(), self._doc_runs)
        elif _k(node) == "Blockwise":
            g = blockwise_group(node, self)
        elif _k(node) == "Swapped" and _k(node.expr) == "Random":
            r = node.expr
            g = transposed_random_group(cap(r.block, n), n, self.random_table(r))
        else:
            raise TypeError(f"not a group primitive: {node!r}")
        self._groups[key] = g
        return g


GROUP_NAMES = ("Block", "Random", "Document", "Blockwise", "Swapped")
DYNAMIC_NAMES = ("TopVertical", "TopSlash", "TopBlocks")


# ---------------------------------------------------------------------------
# Per-tile key spaces of the primitives: hull (a superset of the keys the tile's rows may
# attend) and core (keys every row attends), in class-local key indices
# ---------------------------------------------------------------------------

GROUP_GATHER_LIMIT = 64


def _kconv(g: Geom, x: torch.Tensor, y: torch.Tensor):
    """Key positions ``[x, y)`` -> class-local indices ``[b0, b1)`` of the tile's key class."""
    kf = g.kf.unsqueeze(-1) if x.dim() > 1 else g.kf
    if g.sk == 1:
        return x - kf, y - kf
    return cdiv(x - kf, g.sk), cdiv(y - kf, g.sk)


def _both(s):
    return s, s


def k_interval(g: Geom, x: int, y: int):
    b0, b1 = _kconv(g, torch.full((g.T,), x, dtype=torch.int64), torch.full((g.T,), y, dtype=torch.int64))
    return _both(iv_single(b0, b1))


def q_rows(g: Geom, x: int, y: int, m: int = 1):
    """Rows in the progression ``x, x+m, ... < y``: (all rows, no row) per tile."""
    amin = torch.maximum(g.a0, cdiv(x - g.qf, g.sq))
    amax = torch.minimum(g.a1, cdiv(y - g.qf, g.sq) - 1)
    none_iv = amin > amax
    all_iv = (g.qmin >= x) & (g.qmax < y)
    if m == 1:
        return all_iv, none_iv
    one = g.a0 == g.a1
    if g.sq % m == 0:
        hit = (g.qf - x) % m == 0
        return all_iv & hit, none_iv | ~hit
    if g.sq == 1:
        # contiguous rows: count the progression's members among them
        lo = torch.maximum(g.qmin, torch.full_like(g.qmin, x))
        hi = torch.minimum(g.qmax, torch.full_like(g.qmax, y - 1))
        members = torch.clamp(fdiv(hi - x, m) - cdiv(lo - x, m) + 1, min=0)
        members = pick(hi >= lo, members, 0)
        return all_iv & one & (members > 0), none_iv | (members == 0)
    hit1 = (g.qmin - x) % m == 0
    return all_iv & one & hit1, none_iv | (one & ~hit1)


def _rowsel(g: Geom, all_rows: torch.Tensor, no_rows: torch.Tensor):
    return (iv_choose(no_rows, iv_empty(g.T), iv_full(g.T)),
            iv_choose(all_rows, iv_full(g.T), iv_empty(g.T)))


def q_interval(g: Geom, x: int, y: int, m: int = 1):
    return _rowsel(g, *q_rows(g, x, y, m))


def band(g: Geom, dlo: int, dhi: int):
    """``dlo <= q - k <= dhi`` (either end may be +-INF)."""
    hull = _kconv(g, g.qmin - dhi, g.qmax - dlo + 1)
    core = _kconv(g, g.qmax - dhi, g.qmin - dlo + 1)
    return iv_single(*hull), iv_single(*core)


def bands(g: Geom, ivs):
    """The union of the bands ``lo <= q - k <= hi`` for sorted, disjoint ``(lo, hi)``
    (`diagonals`' form) in one pass.  Per tile each band is one key interval, and a higher
    band lies at lower keys, so the reversed list is already in key order: one merge
    instead of a union per band."""
    if len(ivs) <= 1:
        return band(g, *ivs[0]) if ivs else _both(iv_empty(g.T))
    qmin, qmax = g.qmin.unsqueeze(1), g.qmax.unsqueeze(1)

    def keys(sel, a_end, b_end):
        dlo = torch.tensor([a for a, _ in reversed(sel)], dtype=torch.int64)
        dhi = torch.tensor([b for _, b in reversed(sel)], dtype=torch.int64)
        return iv_merge_sorted(*_kconv(g, a_end - dhi, b_end - dlo + 1))
    # A band narrower than a tile's rows has no key every row attends: leave it out of the
    # core (thin diagonals are most of what comes here).
    rows = int((g.qmax - g.qmin).clamp(min=0).min()) if g.T else 0
    thick = [(a, b) for a, b in ivs if b - a >= rows]
    core = keys(thick, qmax, qmin) if thick else iv_empty(g.T)
    return keys(ivs, qmin, qmax), core


def k_cong(g: Geom, m: int, r: int):
    T = g.T
    if m == 1:
        return _both(iv_full(T))
    if g.sk % m == 0:
        return _both(iv_choose((g.kf - r) % m == 0, iv_full(T), iv_empty(T)))
    ok = (r - g.kf) % gcd(g.sk, m) == 0
    return iv_choose(ok, iv_full(T), iv_empty(T)), iv_empty(T)


def d_cong(g: Geom, m: int, r: int):
    T = g.T
    if m == 1:
        return _both(iv_full(T))
    if g.sk % m == 0 and g.sq % m == 0:
        return _both(iv_choose((g.qf - g.kf - r) % m == 0, iv_full(T), iv_empty(T)))
    if g.sk % m == 0:
        one = g.a0 == g.a1
        hit = (g.qmin - g.kf - r) % m == 0
        return (iv_choose(one & ~hit, iv_empty(T), iv_full(T)),
                iv_choose(one & hit, iv_full(T), iv_empty(T)))
    return iv_full(T), iv_empty(T)


def meet(a, b):
    return iv_intersect(a[0], b[0]), iv_intersect(a[1], b[1])


def join(a, b):
    return iv_union(a[0], b[0]), iv_union(a[1], b[1])


def _progs_union(parts):
    out = None
    for p in parts:
        out = p if out is None else join(out, p)
    return out


def index_rows(g: Geom, progs):
    if not progs:
        return _both(iv_empty(g.T))
    out = [q_interval(g, a, b, s) for a, b, s in progs if s > 1]
    plain = [(a, b) for a, b, s in progs if s == 1]
    if plain:
        # all contiguous items at once (a long list of global tokens is many of them): a
        # tile's rows are all in the set when one item holds them all, none when no item
        # holds one (as the union of the items one by one)
        x = torch.tensor([a for a, _ in plain], dtype=torch.int64)
        y = torch.tensor([b for _, b in plain], dtype=torch.int64)
        qf, a0, a1 = g.qf.unsqueeze(1), g.a0.unsqueeze(1), g.a1.unsqueeze(1)
        amin = torch.maximum(a0, cdiv(x - qf, g.sq))
        amax = torch.minimum(a1, cdiv(y - qf, g.sq) - 1)
        some = (amin <= amax).any(1)
        every = ((g.qmin.unsqueeze(1) >= x) & (g.qmax.unsqueeze(1) < y)).any(1)
        out.append(_rowsel(g, every, ~some))
    return _progs_union(out)


# A key progression with at most this many members is spelled out member by member (exact),
# rather than as an interval under a congruence the view may not absorb.
EXPAND_KEYS = 32


def k_prog(g: Geom, a: int, b: int, s: int):
    """Keys ``a, a+s, ... < b``."""
    count = -(-(b - a) // s) if b > a else 0
    if s > 1 and count <= EXPAND_KEYS and g.sk % s:
        keys = torch.arange(a, b, s, dtype=torch.int64)
        lo, hi = _kconv(g, keys.expand(g.T, -1), keys.expand(g.T, -1) + 1)
        return _both(iv_merge_sorted(lo, hi))
    return meet(k_interval(g, a, b), k_cong(g, s, a % s))


def index_cols(g: Geom, progs):
    if not progs:
        return _both(iv_empty(g.T))
    out = [k_prog(g, a, b, s) for a, b, s in progs if s > 1]
    plain = sorted((a, b) for a, b, s in progs if s == 1)
    if plain:
        # all contiguous items at once, in key order (class-local conversion keeps it)
        x = torch.tensor([a for a, _ in plain], dtype=torch.int64).expand(g.T, -1)
        y = torch.tensor([b for _, b in plain], dtype=torch.int64).expand(g.T, -1)
        out.append(_both(iv_merge_sorted(*_kconv(g, x, y))))
    return _progs_union(out)


def group(g: Geom, grp) -> tuple:
    """A block / document / random / blockwise group: the runs of the segments the tile's
    rows fall in (exact when they all fall in one segment)."""
    T = g.T
    qmin = pick(g.valid, g.qmin, 0)
    qmax = pick(g.valid, g.qmax, 0)
    s0 = grp.segment_of(qmin)
    s1 = grp.segment_of(qmax)
    same = s0 == s1
    R = grp.max_runs
    if R == 0:
        return _both(iv_empty(T))
    lo, hi = grp.runs_of(s0, R)
    b0, b1 = _kconv(g, lo, hi)
    b1 = pick(hi > lo, b1, b0)
    exact = iv_merge_sorted(b0, b1)   # a segment's runs are stored in position order
    if bool(same.all()):
        return exact, exact
    span = int((s1 - s0).max()) + 1
    if span * R <= GROUP_GATHER_LIMIT:
        segs = s0.unsqueeze(1) + torch.arange(span, dtype=torch.int64)
        inside = segs <= s1.unsqueeze(1)
        segs = torch.clamp(segs, max=grp.num_segments - 1)
        lo, hi = grp.runs_of(segs, R)                      # [T, span, R]
        keep = inside.unsqueeze(2) & (hi > lo)
        lo = pick(keep, lo, 0).reshape(T, span * R)
        hi = pick(keep, hi, 0).reshape(T, span * R)
        b0, b1 = _kconv(g, lo, hi)
        b1 = pick(hi > lo, b1, b0)
        multi = iv_norm(b0, b1)
    else:
        lo, hi = grp.range_hull(s0, s1)
        b0, b1 = _kconv(g, lo, hi)
        multi = iv_single(b0, pick(hi > lo, b1, b0))
    return iv_choose(same, exact, multi), iv_choose(same, exact, iv_empty(T))


def primitive(e: Expr, g: Geom, ctx: Context):
    n = ctx.n
    T = g.T
    if _k(e) == "All":
        return _both(iv_full(T))
    if _k(e) == "Nothing":
        return _both(iv_empty(T))
    if _k(e) == "Causal":
        return band(g, 0, INF)
    if _k(e) == "Local":
        return band(g, -cap(e.right, n), cap(e.left, n))
    if _k(e) in ("Stride", "Dilated", "Slash"):
        d = diagonals(e, n)
        if d is not None:
            return bands(g, d)
    if _k(e) == "Stride":
        return d_cong(g, e.step, 0)
    if _k(e) == "Dilated":
        w = cap(e.width * e.dilation, n)
        return meet(band(g, -w, w), d_cong(g, e.dilation, 0))
    if _k(e) == "Every":
        if e.step > max(n, 1):
            return k_interval(g, e.offset, e.offset + 1)
        return k_prog(g, e.offset, max(n, e.offset), e.step)
    if _k(e) == "Sink":
        return k_interval(g, 0, cap(e.count, n))
    if _k(e) == "Prefix":
        p = cap(e.length, n)
        return meet(q_interval(g, 0, p), k_interval(g, 0, p))
    if _k(e) == "Rows":
        return index_rows(g, resolve_index(e.index, n))
    if _k(e) == "Cols":
        return index_cols(g, resolve_index(e.index, n))
    if _k(e) == "Global":
        progs = resolve_index(e.index, n)
        return join(index_rows(g, progs), index_cols(g, progs))
    if _k(e) == "Slash":
        progs = resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1))
        if not progs:
            return _both(iv_empty(T))
        return _progs_union([meet(band(g, a, b - 1), d_cong(g, s, a % s)) for a, b, s in progs])
    if _k(e) in GROUP_NAMES:
        return group(g, ctx.group(e))
    raise TypeError(f"not a primitive: {e!r}")


# ---------------------------------------------------------------------------
# Operators on key spaces; pure band algebra where it applies
# ---------------------------------------------------------------------------

def _norm(ivs):
    out = []
    for a, b in sorted(ivs):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _inter(x, y):
    return _norm([(max(a, c), min(b, d)) for a, b in x for c, d in y if max(a, c) <= min(b, d)])


def _minus(x, y):
    out = x
    for c, d in y:
        nxt = []
        for a, b in out:
            if d < a or c > b:
                nxt.append((a, b))
                continue
            if a < c:
                nxt.append((a, c - 1))
            if d < b:
                nxt.append((d + 1, b))
        out = nxt
    return _norm(out)


def diagonals(e: Expr, n: int):
    """The set of differences ``q - k`` of an expression made only of diagonal bands
    (``all``, ``causal``, ``local``, contiguous ``slash`` offsets and their operators), as
    sorted inclusive intervals; None for anything else.  Band algebra is exact where the
    hull/core rules are not: ``causal - local(100)`` is the band ``q - k >= 101``."""
    big = max(n, 1)
    if _k(e) == "All" or (_k(e) == "Stride" and e.step == 1):
        return [(-big, big)]
    if _k(e) == "Nothing":
        return []
    if _k(e) == "Causal":
        return [(0, big)]
    if _k(e) == "Local":
        return [(-min(e.right, big), min(e.left, big))]
    if _k(e) == "Dilated" and e.dilation == 1:
        w = min(e.width, big)
        return [(-w, w)]
    # A period too long for a residue view allows only a few diagonals (fewer than
    # 2 * MIN_CLASS + 1 inside |q - k| < n): listed, each is a band of width 1.
    if _k(e) == "Stride" and few_diagonals(e.step, n):
        m = (big - 1) // e.step
        return [(i * e.step, i * e.step) for i in range(-m, m + 1)]
    if _k(e) == "Dilated" and few_diagonals(e.dilation, n):
        m = min(e.width, (big - 1) // e.dilation)
        return [(i * e.dilation, i * e.dilation) for i in range(-m, m + 1)]
    if _k(e) == "Slash":
        progs = ctx_offsets(e, n)
        if all(s == 1 or few_diagonals(s, n) for _, _, s in progs):
            return _norm([(x, x) for a, b, s in progs if s > 1 for x in range(a, b, s)]
                         + [(a, b - 1) for a, b, s in progs if s == 1])
        return None
    if _k(e) in ("Union", "Intersect", "Difference"):
        kids = [diagonals(c, n) for c in e.children()]
        if any(k is None for k in kids):
            return None
        if _k(e) == "Union":
            return _norm([iv_ for k in kids for iv_ in k])
        if _k(e) == "Intersect":
            out = kids[0]
            for k in kids[1:]:
                out = _inter(out, k)
            return out
        return _minus(kids[0], kids[1])
    return None


def ctx_offsets(e, n: int):
    return resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1))


def spaces_of(e: Expr, g: Geom, ctx: Context):
    """``(hull, core)`` interval sets ``[T, K]`` in class-local key indices."""
    if _k(e) in ("Union", "Intersect", "Difference"):
        d = diagonals(e, ctx.n)
        if d is not None:
            return bands(g, d)
    if _k(e) == "Union":
        out = spaces_of(e.terms[0], g, ctx)
        for t in e.terms[1:]:
            out = join(out, spaces_of(t, g, ctx))
        return out
    if _k(e) == "Intersect":
        out = spaces_of(e.terms[0], g, ctx)
        for t in e.terms[1:]:
            out = meet(out, spaces_of(t, g, ctx))
        return out
    if _k(e) == "Difference":
        a = spaces_of(e.left, g, ctx)
        b = spaces_of(e.right, g, ctx)
        return iv_difference(a[0], b[1]), iv_difference(a[1], b[0])
    return primitive(e, g, ctx)


def tile_spaces(e: Expr, g: Geom, ctx: Context, clip: bool = True):
    """Spaces clipped to the key class and emptied for query tiles without valid rows
    (``clip=False`` leaves both to the caller: `runs.tile_runs` does them elementwise)."""
    if not clip and _k(e) == "Union" and diagonals(e, ctx.n) is None:
        # The caller (tile_runs) merges after rounding anyway: at the top, a union's terms
        # go to it as lists of sets, which it puts in position order once in tile numbers.
        terms = [spaces_of(t, g, ctx) for t in e.terms]
        return [h for h, _ in terms], [c for _, c in terms]
    hull, core = spaces_of(e, g, ctx)
    if not clip:
        return hull, core
    zero = g.kcount * 0
    hull = iv_clip(hull, zero, g.kcount)
    core = iv_clip(core, zero, g.kcount)
    if not bool(g.valid.all()):
        hull = iv_choose(g.valid, hull, iv_empty(g.T))
        core = iv_choose(g.valid, core, iv_empty(g.T))
    return hull, core


# ---------------------------------------------------------------------------
# Key spaces -> runs of key tiles, flagged full or partial
# ---------------------------------------------------------------------------

# Query tiles per slice of `tile_runs`: its temporaries are a few times [rows, runs] words,
# so slices keep them in cache and let the heap reuse one slice's memory for the next.
RUN_ROWS = 8192


def tile_runs(hull, core, g: Geom):
    """``(kv_lo, kv_hi, kv_full)``: int32, int32, bool ``[T, S]`` in k_view tile numbers.

    ``hull`` and ``core`` are interval sets or lists of them (a union's terms, as
    `tile_spaces` gives them), each normalised or at least sorted by start (they may
    overlap; empty entries anywhere), unclipped: this clips, rounds and merges them."""
    T = g.T
    hull = hull if isinstance(hull, list) else [hull]
    core = core if isinstance(core, list) else [core]
    if T <= RUN_ROWS:
        return _tile_runs(hull, core, g.valid, g.kcount, g.kclass, g.kv)
    outs = []
    for t0 in range(0, T, RUN_ROWS):
        r = slice(t0, t0 + RUN_ROWS)
        outs.append(_tile_runs([(h[0][r], h[1][r]) for h in hull], [(c[0][r], c[1][r]) for c in core],
                               g.valid[r], g.kcount[r], g.kclass[r], g.kv))
    S = max(o[0].shape[1] for o in outs)
    return tuple(torch.cat([torch.nn.functional.pad(o[i], (0, S - o[i].shape[1])) for o in outs])
                 for i in range(3))


def _tile_runs(hull, core, valid, kcount, kclass, kv: View):
    bn = kv.block
    ct = kv.class_tiles
    T = valid.shape[0]
    # Once clipped to the key class, everything is a tile number: int32 halves the memory
    # traffic of every pass (kv_lo/kv_hi are int32 anyway).
    if kv.num_slots < (1 << 30):
        dt, inf = torch.int32, 1 << 30
    else:
        dt, inf = torch.int64, INF
    top = kv.class_slots
    rows = valid.unsqueeze(1)
    kc = kcount.unsqueeze(1)

    def outward(lo, hi):
        # Clip to the key class (and to tiles with rows), round outwards; entries that are
        # not real become empty (hi == lo), which the merge drops.  Rounding keeps the order.
        lo = torch.clamp(lo, 0, top)
        hi = torch.minimum(torch.clamp(hi, 0, top), kc)
        real = (lo < hi) & rows
        a = fdiv(lo.to(dt), bn)
        return a, pick(real, cdiv(hi.to(dt), bn), a)

    def inward(lo, hi):
        lo = torch.clamp(lo, 0, top)
        hi = torch.minimum(torch.clamp(hi, 0, top), kc)
        real = (lo < hi) & rows
        # the class's last tile may be short: it is full when the core reaches the class end
        hi = pick(hi >= kc, ct * bn, hi)
        c = cdiv(lo.to(dt), bn)
        return c, pick(real, fdiv(hi.to(dt), bn), c)

    def merged(sets, rnd):
        lo, hi = rnd(*sets[0])
        for x in sets[1:]:
            lo, hi = iv_interleave((lo, hi), rnd(*x), inf=inf)
        return _merge_rows(lo, hi, hi > lo, inf) if lo.shape[1] > 1 else iv_compact(lo, hi, inf)
    h = merged(hull, outward)
    f = merged(core, inward)
    base = (kclass * ct).to(dt).unsqueeze(1)
    if h[0].shape == f[0].shape and torch.equal(h[0], f[0]) and torch.equal(h[1], f[1]):
        # Every visited tile is full (an exact group on tiles aligned with its blocks, as
        # blockwise(b, stride(s)) with its n'/s runs per row): the hull's runs are the runs.
        used = h[1] > h[0]
        return (pick(used, h[0] + base, 0).to(torch.int32), pick(used, h[1] + base, 0).to(torch.int32),
                used)
    # Sweep the boundaries in position order: +1/-1 at hull ends, +2/-2 at full ends (full
    # tiles lie inside the hull), so the running level is 0 outside, 1 on partial and 3 on
    # full tiles.  Each set's ends are already sorted (lo0 < hi0 < lo1 ...), so the two
    # sequences merge by rank, without a row-wise sort.  Hull intervals never touch, nor do
    # full ones: consecutive pieces of positive length always differ in kind, so each is a
    # maximal run.
    hp = torch.stack([h[0], h[1]], 2).reshape(T, 2 * h[0].shape[1])
    fp = torch.stack([f[0], f[1]], 2).reshape(T, 2 * f[0].shape[1])
    KH, KF = hp.shape[1], fp.shape[1]
    E = KH + KF
    rh = torch.arange(KH) + _count_before(fp, hp, right=False)
    rf = torch.arange(KF) + _count_before(hp, fp, right=True)
    th = torch.tensor([1, -1], dtype=dt).repeat(KH // 2) * (hp < inf)
    tf = torch.tensor([2, -2], dtype=dt).repeat(KF // 2) * (fp < inf)
    pts = torch.empty((T, E), dtype=dt).scatter_(1, rh, hp).scatter_(1, rf, fp)
    tag = torch.empty((T, E), dtype=dt).scatter_(1, rh, th).scatter_(1, rf, tf)
    level = torch.cumsum(tag, 1, dtype=dt)
    # piece i is [pts[i], nxt[i]); the last one is empty
    nxt = torch.empty((T, E), dtype=dt)
    nxt[:, :-1] = pts[:, 1:]
    nxt[:, -1:] = pts[:, -1:]
    run = (nxt > pts) & (level > 0)
    # left-align the runs, carrying their kind
    slot = torch.cumsum(run, 1) - 1
    S = int(slot[:, -1].max()) + 1 if T else 0
    slot = pick(run, slot, S)
    lo = torch.zeros((T, S + 1), dtype=dt).scatter_(1, slot, pts)[:, :S]
    hi = torch.zeros((T, S + 1), dtype=dt).scatter_(1, slot, nxt)[:, :S]
    full = torch.zeros((T, S + 1), dtype=torch.bool).scatter_(1, slot, level > 1)[:, :S]
    used = hi > lo
    full = full & used
    lo = pick(used, lo + base, 0)
    hi = pick(used, hi + base, 0)
    return lo.to(torch.int32), hi.to(torch.int32), full


# ---------------------------------------------------------------------------
# blockwise(b, E) as a group: E planned at block scale, undecided blocks evaluated
# ---------------------------------------------------------------------------

_CHUNK = 1 << 22


def _expand(s):
    """Flat (row, value) pairs of every integer inside the interval sets."""
    lo, hi = s
    real = lo < INF
    length = torch.where(real, hi - lo, torch.zeros_like(lo)).reshape(-1)
    rows = torch.arange(lo.shape[0]).unsqueeze(1).expand_as(lo).reshape(-1)
    idx = torch.repeat_interleave(torch.arange(length.numel()), length)
    off = torch.arange(idx.numel()) - torch.repeat_interleave(torch.cumsum(length, 0) - length, length)
    return rows[idx], lo.reshape(-1)[idx] + off


def blockwise_group(node, ctx: Context) -> Group:
    """``blockwise(b, E)``: per query block, the runs of key blocks ``E`` allows at block
    scale (``n' = ceil(n / b)``).  ``E`` is planned like a pattern, split into parts with
    one-block tiles in the views `split` gives them: a congruence (``stride(4)``) is then
    a residue view's whole class, listed block by block, rather than a hull searched by
    evaluating ``E`` on every pair in it (which cost O(n'^2)).  Only pairs a part's closed
    forms leave undecided are evaluated.  Cost: O(runs + undecided pairs)."""
    inner = ctx.inner(node)
    n2 = inner.n
    b = cap(node.block, ctx.n)
    got = []
    for kind, pred in disjoint_parts(node.expr, n2, NODES):
        qv, kv = kind.views(0, n2, n2, 1, 1)
        g = Geom.make(kind, qv, kv, n2)
        hull, core = tile_spaces(pred, g, inner)
        # tiles (one query block each) in block order, so every piece below is row-sorted
        order = torch.argsort(pick(g.valid, g.qmin, INF))
        order = order[: int(g.valid.sum())]
        row, kf = g.qmin[order], g.kf[order]
        core = (core[0][order], core[1][order])
        undecided = iv_difference((hull[0][order], hull[1][order]), core)
        if g.sk == 1:
            real = core[0] < INF
            rr = torch.arange(row.numel()).unsqueeze(1).expand_as(core[0])[real]
            got.append((row[rr], kf[rr] + core[0][real], kf[rr] + core[1][real], True))
        else:
            # class-local index j is key block kf + sk * j: one run per block
            t, j = _expand(core)
            k = kf[t] + g.sk * j
            got.append((row[t], k, k + 1, True))
        t, j = _expand(undecided)
        for s0 in range(0, t.numel(), _CHUNK):
            tt, jj = t[s0:s0 + _CHUNK], j[s0:s0 + _CHUNK]
            q, k = row[tt], kf[tt] + g.sk * jj
            ok = evaluate(pred, q, k, inner)
            got.append((q[ok], k[ok], k[ok] + 1, False))
    got = [x for x in got if x[0].numel()]
    if len(got) == 1 and got[0][3]:
        # one core: already row-sorted with ascending, disjoint, non-touching runs (the
        # sets are normalised; single blocks of a residue class are sk > 1 apart)
        rows, lo, hi, _ = got[0]
    else:
        e = torch.zeros(0, dtype=torch.int64)
        rows, lo, hi = merge_runs(*(torch.cat([x[i] for x in got]) if got else e for i in range(3)))
    return runs_group(b, ctx.n, rows, lo, hi, n2)


# ---------------------------------------------------------------------------
# Splitting a pattern into disjoint parts by preferred view (docs/PLAN.md, section 4)
# ---------------------------------------------------------------------------

# A residue view needs classes long enough to fill a minimal tile.
MIN_CLASS = 16
# Row sets at most this long run as parts of their own (a global token's row, say).
SHORT_ROWS = 32


def _fits(s: int, n: int) -> bool:
    """A diagonal residue view needs classes long enough to fill a minimal tile (its query
    tiles would otherwise hold a few rows each)."""
    return 1 < s and s * MIN_CLASS <= n


def few_diagonals(s: int, n: int) -> bool:
    """A congruence on ``q - k`` with a period too long for a diagonal residue view: its
    few diagonals (at most ``2 * MIN_CLASS + 1``) are planned as bands of width 1."""
    return s > 1 and not _fits(s, n)


def _fits_axis(s: int, n: int) -> bool:
    """Key (or query) residue views only permute one axis: any period below n pays, since the
    other axis keeps full tiles and the permuted one needs a single tile per class."""
    return 1 < s < n


def _combine(a: ViewKind, b: ViewKind, n: int):
    """The view for ``A & B``; None when their constraints cannot hold together."""
    lo = max((x for x in (a.qlo, b.qlo) if x is not None), default=None)
    hi = min((x for x in (a.qhi, b.qhi) if x is not None), default=None)
    if lo is not None and hi is not None and lo >= hi:
        return None
    v = _combine_kind(a, b, n)
    return None if v is None else replace(v, qlo=lo, qhi=hi)


def _combine_kind(a: ViewKind, b: ViewKind, n: int):
    if a.kind == "id":
        return b
    if b.kind == "id":
        return a
    if a.kind == b.kind:
        c = crt(a.r, a.s, b.r, b.s)
        if c is None:
            return None
        r, m = c
        if (_fits if a.kind == "d" else _fits_axis)(m, n):
            return ViewKind(a.kind, m, r)
        return a if a.s >= b.s else b
    rank = {"d": 0, "k": 1, "q": 2}
    return a if rank[a.kind] < rank[b.kind] else b


# Single positions of an index set in arithmetic progression, at least this many, are
# planned as that progression, so a residue view gathers them: 40 global tokens 37 apart are
# one key tile per query tile (a "k" view), not 23 key tiles holding 2 of them each.
COALESCE = 3


def coalesce(progs) -> list:
    """Per progression of an index set (None for an empty item), the one it is planned as:
    single positions that form an arithmetic progression of ``COALESCE`` or more members
    (greedily, in increasing order) become that progression; everything else stays.
    `split` and the ownership slots both go through it, so they agree on each item's view."""
    xs = sorted({p[0] for p in progs if p is not None and p[1] - p[0] == 1})
    run: dict = {}
    i = 0
    while i + COALESCE <= len(xs):
        d = xs[i + 1] - xs[i]
        j = i + 1
        while j + 1 < len(xs) and xs[j + 1] - xs[j] == d:
            j += 1
        if j - i + 1 < COALESCE:
            i += 1
            continue
        for x in xs[i:j + 1]:
            run[x] = (xs[i], xs[j] + 1, d)
        i = j + 1
    return [run.get(p[0], p) if p is not None and p[1] - p[0] == 1 else p for p in progs]


def _planned_index(index, n: int) -> list:
    """The distinct progressions `split` plans an index set as."""
    return list(dict.fromkeys(coalesce(list(resolve_index(index, n)))))


def _row_groups(progs, n: int, N):
    """Rows of an index set by view: short runs of rows get a query view of their own (a
    kernel then runs those rows alone, not whole query tiles of them); stepped items a
    residue view; long runs stay in the identity view."""
    out: dict = {}
    plain = sorted((a, b) for a, b, s in progs if s == 1)
    merged: list[list[int]] = []
    for a, b in plain:
        if merged and a - merged[-1][1] <= MIN_CLASS:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in merged:
        items = [p for p in progs if p[2] == 1 and a <= p[0] and p[1] <= b]
        v = ViewKind("id", qlo=a, qhi=b) if b - a <= SHORT_ROWS else IDENTITY
        out.setdefault(v, []).extend(items)
    for p in progs:
        if p[2] > 1:
            v = ViewKind("q", p[2], p[0] % p[2], p[0], p[1]) if _fits_axis(p[2], n) else IDENTITY
            out.setdefault(v, []).append(p)
    return {v: N.Rows(_items(ps, N)) for v, ps in out.items()}


def _items(progs, N):
    return N.IndexSet(tuple(N.Slice(a, b, s) for a, b, s in progs))


def _by_step(progs, n: int, kind: str, make, N):
    out: dict = {}
    for p in progs:
        start, stop, step = p
        fits = _fits(step, n) if kind == "d" else _fits_axis(step, n)
        v = ViewKind(kind, step, start % step) if step > 1 and fits else IDENTITY
        out.setdefault(v, []).append(p)
    return {v: make(_items(ps, N)) for v, ps in out.items()}


def _union(a, b, N):
    return b if a is None else N.Union((a, b))


def _merge(into: dict, other: dict, N) -> dict:
    out = dict(into)
    for v, e in other.items():
        out[v] = _union(out.get(v), e, N)
    return out


def split(e, n: int, N) -> dict:
    """``{ViewKind: Expr}``: pieces whose union is ``e``, keyed by preferred view."""
    out = _split(e, n, N)
    if len(out) == 1:
        return {next(iter(out)): e}  # keep the written expression when nothing moves
    return out


def _split(e, n: int, N) -> dict:
    if _k(e) == "Stride":
        return {ViewKind("d", e.step, 0) if _fits(e.step, n) else IDENTITY: e}
    if _k(e) == "Dilated":
        return {ViewKind("d", e.dilation, 0) if _fits(e.dilation, n) else IDENTITY: e}
    if _k(e) == "Every":
        return {ViewKind("k", e.step, e.offset) if _fits_axis(e.step, n) else IDENTITY: e}
    if _k(e) == "Slash":
        return _by_step(resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1)), n, "d", N.Slash, N) or {IDENTITY: e}
    if _k(e) == "Cols":
        return _by_step(_planned_index(e.index, n), n, "k", N.Cols, N) or {IDENTITY: e}
    if _k(e) == "Rows":
        return _row_groups(_planned_index(e.index, n), n, N) or {IDENTITY: e}
    if _k(e) == "Global":
        progs = _planned_index(e.index, n)
        rows = _row_groups(progs, n, N)
        if list(rows) == [IDENTITY] and all(s == 1 or not _fits_axis(s, n) for _, _, s in progs):
            return {IDENTITY: e}
        return _merge(rows, _by_step(progs, n, "k", N.Cols, N), N)
    if _k(e) == "Union":
        out: dict = {}
        for t in e.terms:
            out = _merge(out, split(t, n, N), N)
        return out
    if _k(e) == "Intersect":
        acc = split(e.terms[0], n, N)
        for t in e.terms[1:]:
            nxt: dict = {}
            for v2, e2 in split(t, n, N).items():
                for v1, e1 in acc.items():
                    v = _combine(v1, v2, n)
                    if v is not None:
                        nxt[v] = _union(nxt.get(v), N.Intersect((e1, e2)), N)
            acc = nxt
        return acc or {IDENTITY: N.Nothing()}
    if _k(e) == "Difference":
        return {v: N.Difference(x, e.right) for v, x in split(e.left, n, N).items()}
    return {IDENTITY: e}


def disjoint_parts(e, n: int, N) -> list:
    """``[(view, predicate)]``: disjoint, their union is ``e``."""
    pieces = sorted(split(e, n, N).items(), key=lambda kv: kv[0].order())
    out = []
    for i, (v, x) in enumerate(pieces):
        # A piece under a row restriction holds pairs of those rows only, so earlier pieces
        # on disjoint rows cannot meet it: leaving them out keeps each of many short row
        # parts (a long global list) small, instead of minus everything before it.
        seen = None
        for w, y in pieces[:i]:
            if _rows_meet(v, w):
                seen = _union(seen, y, N)
        out.append((v, x if seen is None else N.Difference(x, seen)))
    return out


def _rows_meet(a: ViewKind, b: ViewKind) -> bool:
    lo = max(-INF if a.qlo is None else a.qlo, -INF if b.qlo is None else b.qlo)
    hi = min(INF if a.qhi is None else a.qhi, INF if b.qhi is None else b.qhi)
    return lo < hi


def transpose_kind(v: ViewKind) -> ViewKind:
    """The view of the transposed problem (rows are keys, columns are queries)."""
    if v.kind == "d":
        return ViewKind("d", v.s, (-v.r) % v.s)
    if v.kind == "k":
        return ViewKind("q", v.s, v.r)
    if v.kind == "q":
        return ViewKind("k", v.s, v.r)
    return IDENTITY


def extent(e, sk: int, n: int):
    """How many key-class diagonals a row of ``e`` may span (int), None when unbounded,
    "cols" when ``e`` is made of row/column/group pieces that tiles align with anyway."""
    def band(w):
        return max(1, -(-w // sk))
    if _k(e) == "Local":
        return band(min(e.left, n) + min(e.right, n) + 1)
    if _k(e) in ("Stride", "Dilated"):
        s = e.step if _k(e) == "Stride" else e.dilation
        if few_diagonals(s, n) or s >= n:
            return 1   # a few diagonals of width 1 (only q == k when s >= n)
        if _k(e) == "Dilated":
            return band(2 * min(e.width * e.dilation, n) + 1)
    if _k(e) == "Slash":
        progs = resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1))
        if not progs:
            return "cols"
        # items are bands of their own (a union takes the widest); a stepped item whose
        # period is too long for a residue view is a few diagonals of width 1
        return max(band(1 if few_diagonals(s, n) else b - a) for a, b, s in progs)
    if _k(e) in ("All", "Causal", "Stride"):
        return None
    if _k(e) == "Intersect":
        xs = [extent(t, sk, n) for t in e.terms]
        bounded = [x for x in xs if isinstance(x, int)]
        if bounded:
            return min(bounded)
        return None if any(x is None for x in xs) else "cols"
    if _k(e) == "Union":
        xs = [extent(t, sk, n) for t in e.terms]
        if any(x is None for x in xs):
            return None
        bounded = [x for x in xs if isinstance(x, int)]
        return max(bounded) if bounded else "cols"
    if _k(e) == "Difference":
        return extent(e.left, sk, n)
    return "cols"


# ---------------------------------------------------------------------------
# The tile choice rule (docs/PLAN.md, section 5)
# ---------------------------------------------------------------------------

MIN_TILE = 16


def base_tiles(head_dim: int, dtype) -> tuple[int, int]:
    wide = torch.empty((), dtype=dtype).element_size() >= 4 if dtype is not None else False
    if head_dim <= 64:
        bm, bn = 128, 128
    elif head_dim <= 128:
        bm, bn = 128, 64
    elif head_dim <= 256:
        bm, bn = 64, 64
    else:
        bm, bn = 64, 32
    if wide:
        bn = max(MIN_TILE, bn // 2)
        if head_dim > 64:
            bm = 64
    return bm, bn


def granule(e: Expr) -> int | None:
    """The alignment cap from block-structured terms (None: no constraint)."""
    caps = []
    for x in _walk_outer(e):
        b = None
        if _k(x) == "Block":
            b = x.size
        elif _k(x) == "Random":
            b = x.block
        elif _k(x) == "Blockwise":
            b = x.block
        if b is not None:
            g = largest_pow2_divisor(b)
            if g >= MIN_TILE:
                caps.append(g)
    return min(caps) if caps else None


def _walk_outer(e: Expr):
    """Nodes of ``e`` without descending into blockwise bodies (those are in block units)."""
    yield e
    if _k(e) == "Blockwise":
        return
    for c in e.children():
        yield from _walk_outer(c)


def _pow2_ceil(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def choose(e: Expr, kind: ViewKind, n: int, nq: int, head_dim: int, dtype) -> tuple[int, int]:
    """``nq``: the query rows the part's view holds."""
    bm, bn = base_tiles(head_dim, dtype)
    caps_m, caps_n = [], []
    g = granule(e)
    if g is not None:
        caps_m.append(g)
        caps_n.append(g)
    sk = kind.s if kind.kind in ("d", "k") else 1
    w = extent(e, sk, n)
    if isinstance(w, int):
        c = pow2_floor(max(w // 4, 1))
        caps_m.append(c)
        caps_n.append(c)
    if kind.kind in ("d", "q"):
        caps_m.append(pow2_floor(max(-(-n // kind.s) // 4, 1)))
    if kind.kind in ("d", "k"):
        caps_n.append(pow2_floor(max(-(-n // kind.s) // 4, 1)))
    caps_m.append(_pow2_ceil(max(nq, 1)))
    caps_n.append(_pow2_ceil(max(n, 1)))
    bm = max(MIN_TILE, min([bm] + caps_m))
    bn = max(MIN_TILE, min([bn] + caps_n))
    return bm, bn


# ---------------------------------------------------------------------------
# Plans: the parts of one call
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PartRuns:
    """One part as the planner computes it (docs/PLAN.md, "The executed structure")."""

    view: ViewKind
    predicate: object
    q_view: View
    k_view: View
    kv_lo: torch.Tensor   # int32 [q_view.num_tiles, S]
    kv_hi: torch.Tensor
    kv_full: torch.Tensor  # bool


def plan_parts(expr, n: int, nq: int, q_offset: int, head_dim: int, dtype, block_m, block_n,
               ctx: Context, N=NODES):
    """``(parts, (block_m, block_n))`` of ``expr`` for one call: the non-empty disjoint parts
    in order, and the plain tiling.  Arguments are validated by the caller; ``N`` is the
    node namespace the part predicates are built from."""
    parts = []
    plain = None
    for kind, pred in disjoint_parts(expr, n, N):
        a, b = kind.rows(q_offset, q_offset + nq)
        bm, bn = choose(pred, kind, n, b - a, head_dim, dtype)
        bm, bn = block_m or bm, block_n or bn
        qv, kv = kind.views(q_offset, q_offset + nq, n, bm, bn)
        g = Geom.make(kind, qv, kv, n)
        hull, core = tile_spaces(pred, g, ctx, clip=False)
        lo, hi, full = tile_runs(hull, core, g)
        if kind == IDENTITY:
            plain = (bm, bn)
        if bool((hi > lo).any()):
            parts.append(PartRuns(kind, pred, qv, kv, lo, hi, full))
    if plain is None:
        plain = choose(expr, IDENTITY, n, nq, head_dim, dtype)
    return tuple(parts), (block_m or plain[0], block_n or plain[1])


# ---------------------------------------------------------------------------
# Ownership: which part a pair belongs to, from per-leaf views
# ---------------------------------------------------------------------------
#
# ``split`` assigns every leaf (and every item of an index or offset set) a view; a pair
# lies in the piece of view v when some leaf items it satisfies combine to v through the
# expression (union: either; intersection: ``_combine`` of both sides' views, None when
# incompatible, which only happens when no pair satisfies both; difference: the left side's
# views when the right side does not hold).  A pair's *view set* W is therefore computed
# bottom-up from the pair alone, it is non-empty exactly when the pattern allows the pair,
# and the part owning the pair is the first view of W in part order.  A kernel evaluates W
# as a bitmask (bit i: the i-th view in order; bit 0 is the identity view) from:
#   slots: one view per taggable leaf slot, in walk order (see `owner_slots`),
#   table: the bit of _combine(view i, view j), row-major [V, V], 0 when incompatible.
# Part i's predicate is then "bit i of W set, no lower bit set".

MAX_OWNER_VIEWS = 30   # bitmasks live in int32


def _row_views(progs, n: int):
    """The view ``_row_groups`` gives each row progression (None for an empty item)."""
    plain = sorted((a, b) for a, b, s in (p for p in progs if p is not None) if s == 1)
    merged: list = []
    for a, b in plain:
        if merged and a - merged[-1][1] <= MIN_CLASS:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out = []
    for p in progs:
        if p is None:
            out.append(IDENTITY)
        elif p[2] > 1:
            out.append(ViewKind("q", p[2], p[0] % p[2], p[0], p[1]) if _fits_axis(p[2], n) else IDENTITY)
        else:
            a, b = next((a, b) for a, b in merged if a <= p[0] and p[1] <= b)
            out.append(ViewKind("id", qlo=a, qhi=b) if b - a <= SHORT_ROWS else IDENTITY)
    return out


def _step_views(progs, n: int, kind: str):
    out = []
    for p in progs:
        fits = p is not None and p[2] > 1 and (_fits(p[2], n) if kind == "d" else _fits_axis(p[2], n))
        out.append(ViewKind(kind, p[2], p[0] % p[2]) if fits else IDENTITY)
    return out


def _item_progs(index, n: int, offsets: bool):
    """Per item, the progression it is planned as (None when empty), as `split` plans it."""
    out = []
    for item in index.items:
        one = NODES.IndexSet((item,))
        got = resolve_offsets(one, -max(n - 1, 0), max(n, 1)) if offsets else resolve_index(one, n)
        out.append(got[0] if got else None)
    return out if offsets else coalesce(out)


def leaf_slots(e, n: int):
    """The views of one leaf's slots (None: not a taggable leaf, its pairs are identity)."""
    kind = _k(e)
    if kind == "Stride":
        return [ViewKind("d", e.step, 0) if _fits(e.step, n) else IDENTITY]
    if kind == "Dilated":
        return [ViewKind("d", e.dilation, 0) if _fits(e.dilation, n) else IDENTITY]
    if kind == "Every":
        return [ViewKind("k", e.step, e.offset) if _fits_axis(e.step, n) else IDENTITY]
    if kind == "Slash":
        return _step_views(_item_progs(e.offsets, n, True), n, "d")
    if kind == "Cols":
        return _step_views(_item_progs(e.index, n, False), n, "k")
    if kind == "Rows":
        return _row_views(_item_progs(e.index, n, False), n)
    if kind == "Global":
        progs = _item_progs(e.index, n, False)
        rows, cols = _row_views(progs, n), _step_views(progs, n, "k")
        return [v for pair in zip(rows, cols) for v in pair]   # row slot, then column slot
    return None


def owner_slots(e, n: int) -> list:
    """Every taggable leaf's slot views in walk order (terms in order, a difference's left
    side first, blockwise bodies not entered)."""
    out: list = []

    def walk(x):
        if _k(x) in ("Union", "Intersect", "Difference"):
            for c in x.children():
                walk(c)
            return
        got = leaf_slots(x, n)
        if got is not None:
            out.extend(got)
    walk(e)
    return out


def _possible(e, n: int, seen: set) -> frozenset:
    kind = _k(e)
    if kind == "Union":
        out = frozenset().union(*(_possible(t, n, seen) for t in e.terms))
    elif kind == "Intersect":
        out = _possible(e.terms[0], n, seen)
        for t in e.terms[1:]:
            other = _possible(t, n, seen)
            out = frozenset(v for a in out for b in other for v in (_combine(a, b, n),) if v is not None)
    elif kind == "Difference":
        out = _possible(e.left, n, seen)
        _possible(e.right, n, seen)
    else:
        got = leaf_slots(e, n)
        out = frozenset([IDENTITY] if got is None else got)
    seen |= out
    return out


@dataclass(frozen=True)
class OwnerProgram:
    """Per length: the views in part order, the slot views (as bits) and the combine table."""

    views: tuple
    slot_bits: tuple
    table: tuple

    def bit(self, view) -> int:
        return 1 << self.views.index(view)

    def params(self, view) -> list:
        """The integers a generic kernel reads after the pattern's own parameters: slot bits,
        the part's bit and the mask of the bits below it, V, then the combine table."""
        b = self.bit(view)
        return list(self.slot_bits) + [b, b - 1, len(self.views)] + list(self.table)


def owner_program(e, n: int):
    """The :class:`OwnerProgram` of ``e`` at length ``n``; None beyond ``MAX_OWNER_VIEWS``
    views (the caller then needs another way to evaluate part predicates)."""
    seen: set = {IDENTITY}
    _possible(e, n, seen)
    views = tuple(sorted(seen, key=ViewKind.order))
    if len(views) > MAX_OWNER_VIEWS:
        return None
    index = {v: i for i, v in enumerate(views)}
    slots = tuple(1 << index[v] for v in owner_slots(e, n))
    table = []
    for a in views:
        for b in views:
            c = _combine(a, b, n)
            table.append(1 << index[c] if c in index else 0)
    return OwnerProgram(views, slots, tuple(table))
