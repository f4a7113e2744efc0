"""Closed-form key spaces of each primitive, per query tile of a view.

For a query tile (rows ``qf + sq*a``, ``a0 <= a <= a1``) and the key class it pairs with
(keys ``kf + sk*b``), a primitive yields two interval sets in class-local key indices ``b``:

* the **hull**: a superset of the keys any row of the tile may attend;
* the **core**: keys that every row of the tile attends.

Bands, key intervals and groups are exact (hull and core are the true union and
intersection over the rows).  Row predicates are all/none/some per tile.  A congruence the
view absorbs (its modulus divides the view period) is all-or-nothing per class; one it does
not gives hull = everything and core = nothing: correct, only less tight.
"""
from __future__ import annotations

from math import gcd

import torch

from .. import ir
from .arith import INF, cdiv, fdiv, pick
from .context import GROUP_TYPES, Context, cap
from .indexsets import resolve_index, resolve_offsets
from . import intervals as iv
from .views import Geom

GROUP_GATHER_LIMIT = 64


def _kconv(g: Geom, x: torch.Tensor, y: torch.Tensor):
    """Key positions ``[x, y)`` -> class-local indices ``[b0, b1)`` of the tile's key class."""
    kf = g.kf.unsqueeze(-1) if x.dim() > 1 else g.kf
    return cdiv(x - kf, g.sk), cdiv(y - kf, g.sk)


def _both(s):
    return s, s


def k_interval(g: Geom, x: int, y: int):
    b0, b1 = _kconv(g, torch.full((g.T,), x, dtype=torch.int64), torch.full((g.T,), y, dtype=torch.int64))
    return _both(iv.single(b0, b1))


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
    return (iv.choose(no_rows, iv.empty(g.T), iv.full(g.T)),
            iv.choose(all_rows, iv.full(g.T), iv.empty(g.T)))


def q_interval(g: Geom, x: int, y: int, m: int = 1):
    return _rowsel(g, *q_rows(g, x, y, m))


def band(g: Geom, dlo: int, dhi: int):
    """``dlo <= q - k <= dhi`` (either end may be +-INF)."""
    hull = _kconv(g, g.qmin - dhi, g.qmax - dlo + 1)
    core = _kconv(g, g.qmax - dhi, g.qmin - dlo + 1)
    return iv.single(*hull), iv.single(*core)


def k_cong(g: Geom, m: int, r: int):
    T = g.T
    if m == 1:
        return _both(iv.full(T))
    if g.sk % m == 0:
        return _both(iv.choose((g.kf - r) % m == 0, iv.full(T), iv.empty(T)))
    ok = (r - g.kf) % gcd(g.sk, m) == 0
    return iv.choose(ok, iv.full(T), iv.empty(T)), iv.empty(T)


def d_cong(g: Geom, m: int, r: int):
    T = g.T
    if m == 1:
        return _both(iv.full(T))
    if g.sk % m == 0 and g.sq % m == 0:
        return _both(iv.choose((g.qf - g.kf - r) % m == 0, iv.full(T), iv.empty(T)))
    if g.sk % m == 0:
        one = g.a0 == g.a1
        hit = (g.qmin - g.kf - r) % m == 0
        return (iv.choose(one & ~hit, iv.empty(T), iv.full(T)),
                iv.choose(one & hit, iv.full(T), iv.empty(T)))
    return iv.full(T), iv.empty(T)


def meet(a, b):
    return iv.intersect(a[0], b[0]), iv.intersect(a[1], b[1])


def join(a, b):
    return iv.union(a[0], b[0]), iv.union(a[1], b[1])


def _progs_union(parts):
    out = None
    for p in parts:
        out = p if out is None else join(out, p)
    return out


def index_rows(g: Geom, progs):
    if not progs:
        return _both(iv.empty(g.T))
    return _progs_union([q_interval(g, a, b, s) for a, b, s in progs])


# A key progression with at most this many members is spelled out member by member (exact),
# rather than as an interval under a congruence the view may not absorb.
EXPAND_KEYS = 32


def k_prog(g: Geom, a: int, b: int, s: int):
    """Keys ``a, a+s, ... < b``."""
    count = -(-(b - a) // s) if b > a else 0
    if s > 1 and count <= EXPAND_KEYS and g.sk % s:
        keys = torch.arange(a, b, s, dtype=torch.int64)
        lo, hi = _kconv(g, keys.expand(g.T, -1), keys.expand(g.T, -1) + 1)
        return _both(iv.merge_sorted(lo, hi))
    return meet(k_interval(g, a, b), k_cong(g, s, a % s))


def index_cols(g: Geom, progs):
    if not progs:
        return _both(iv.empty(g.T))
    return _progs_union([k_prog(g, a, b, s) for a, b, s in progs])


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
        return _both(iv.empty(T))
    lo, hi = grp.runs_of(s0, R)
    b0, b1 = _kconv(g, lo, hi)
    b1 = pick(hi > lo, b1, b0)
    exact = iv.merge_sorted(b0, b1)   # a segment's runs are stored in position order
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
        multi = iv.norm(b0, b1)
    else:
        lo, hi = grp.range_hull(s0, s1)
        b0, b1 = _kconv(g, lo, hi)
        multi = iv.single(b0, pick(hi > lo, b1, b0))
    return iv.choose(same, exact, multi), iv.choose(same, exact, iv.empty(T))


def primitive(e: ir.Expr, g: Geom, ctx: Context):
    n = ctx.n
    T = g.T
    if isinstance(e, ir.All):
        return _both(iv.full(T))
    if isinstance(e, ir.Nothing):
        return _both(iv.empty(T))
    if isinstance(e, ir.Causal):
        return band(g, 0, INF)
    if isinstance(e, ir.Local):
        return band(g, -cap(e.right, n), cap(e.left, n))
    if isinstance(e, ir.Stride):
        if e.step >= max(n, 1):
            return band(g, 0, 0)
        return d_cong(g, e.step, 0)
    if isinstance(e, ir.Dilated):
        w = cap(e.width * e.dilation, n)
        if e.dilation >= max(n, 1):
            return band(g, 0, 0)
        return meet(band(g, -w, w), d_cong(g, e.dilation, 0))
    if isinstance(e, ir.Every):
        if e.step > max(n, 1):
            return k_interval(g, e.offset, e.offset + 1)
        return k_prog(g, e.offset, max(n, e.offset), e.step)
    if isinstance(e, ir.Sink):
        return k_interval(g, 0, cap(e.count, n))
    if isinstance(e, ir.Prefix):
        p = cap(e.length, n)
        return meet(q_interval(g, 0, p), k_interval(g, 0, p))
    if isinstance(e, ir.Rows):
        return index_rows(g, resolve_index(e.index, n))
    if isinstance(e, ir.Cols):
        return index_cols(g, resolve_index(e.index, n))
    if isinstance(e, ir.Global):
        progs = resolve_index(e.index, n)
        return join(index_rows(g, progs), index_cols(g, progs))
    if isinstance(e, ir.Slash):
        progs = resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1))
        if not progs:
            return _both(iv.empty(T))
        return _progs_union([meet(band(g, a, b - 1), d_cong(g, s, a % s)) for a, b, s in progs])
    if isinstance(e, GROUP_TYPES):
        return group(g, ctx.group(e))
    raise TypeError(f"not a primitive: {e!r}")
