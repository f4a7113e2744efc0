"""Exact pair counts in closed form: patterns as signed sums of conjunctions ("atoms").

An :class:`Atom` is the set of pairs satisfying every one of

* ``q`` in ``[qlo, qhi)``, ``k`` in ``[klo, khi)``, ``d = q - k`` in ``[dlo, dhi)``;
* ``q = qr (mod qm)``, ``k = kr (mod km)``, ``d = dr (mod dm)``;
* every group in ``groups`` (block / document / random / blockwise: the key must lie in a
  run of the query's segment).

Indicator algebra turns any static expression into ``sum c_i * [atom_i]``:
``A & B = AB``, ``A | B = A + B - AB``, ``A - B = A - AB`` (products are intersections of
atoms, which are atoms again: intervals meet, congruences combine by CRT, groups join).

Counting one atom over a rectangle of rows and keys is closed form: with the rows in one
residue class ``q = Q0 + QM*j``, the admissible keys form one residue class ``C0 + C1*j``
modulo ``M = lcm(km, dm)`` inside ``[L(q), R(q)]`` where ``L``, ``R`` are piecewise linear
(at most three pieces), so the count is two :func:`~patterndsl.plan.arith.floor_sum` per
piece.  Groups split the rows at their segment boundaries and the keys into runs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import gcd

import torch

from .. import ir
from .arith import cdiv, crt, fdiv, floor_sum, lcm, pick
from .context import GROUP_TYPES, Context, cap
from .indexsets import resolve_index, resolve_offsets, signed_disjoint

MAX_ATOMS = 4096
MAX_MODULUS = 1 << 22


class TooComplex(Exception):
    """The inclusion-exclusion expansion or its moduli got too large for closed forms."""


@dataclass(frozen=True)
class Atom:
    qlo: int
    qhi: int
    klo: int
    khi: int
    dlo: int
    dhi: int
    qm: int = 1
    qr: int = 0
    km: int = 1
    kr: int = 0
    dm: int = 1
    dr: int = 0
    groups: tuple = ()


def _top(n: int) -> Atom:
    return Atom(0, n, 0, n, -n, n + 1)


def _narrow_mod(lo: int, hi: int, m: int, r: int):
    """A congruence wider than its interval holds for at most one value: make it an interval."""
    if m == 1 or m < hi - lo:
        return lo, hi, m, r % m
    first = lo + (r - lo) % m
    if first >= hi:
        return None
    return first, first + 1, 1, 0


def _normalize(a: Atom) -> Atom | None:
    qlo, qhi, klo, khi = a.qlo, a.qhi, a.klo, a.khi
    # d = q - k is bounded by the q and k ranges
    dlo = max(a.dlo, qlo - khi + 1)
    dhi = min(a.dhi, qhi - klo)
    if qlo >= qhi or klo >= khi or dlo >= dhi:
        return None
    x = _narrow_mod(qlo, qhi, a.qm, a.qr)
    y = _narrow_mod(klo, khi, a.km, a.kr)
    z = _narrow_mod(dlo, dhi, a.dm, a.dr)
    if x is None or y is None or z is None:
        return None
    qlo, qhi, qm, qr = x
    klo, khi, km, kr = y
    dlo, dhi, dm, dr = z
    if (qlo, qhi, klo, khi) != (a.qlo, a.qhi, a.klo, a.khi):
        dlo, dhi = max(dlo, qlo - khi + 1), min(dhi, qhi - klo)
        if dlo >= dhi:
            return None
    # rows need q = kr + dr (mod gcd(km, dm)) for some key to exist
    g = gcd(km, dm)
    if crt(qr, qm, (kr + dr) % g, g) is None:
        return None
    return Atom(qlo, qhi, klo, khi, dlo, dhi, qm, qr, km, kr, dm, dr, a.groups)


def meet(a: Atom, b: Atom) -> Atom | None:
    cq = crt(a.qr, a.qm, b.qr, b.qm)
    ck = crt(a.kr, a.km, b.kr, b.km)
    cd = crt(a.dr, a.dm, b.dr, b.dm)
    if cq is None or ck is None or cd is None:
        return None
    groups = a.groups if a.groups == b.groups else tuple(sorted(set(a.groups) | set(b.groups), key=repr))
    return _normalize(Atom(max(a.qlo, b.qlo), min(a.qhi, b.qhi), max(a.klo, b.klo), min(a.khi, b.khi),
                           max(a.dlo, b.dlo), min(a.dhi, b.dhi), cq[1], cq[0], ck[1], ck[0], cd[1], cd[0],
                           groups))


Sum = dict  # Atom -> int coefficient


def _add(acc: Sum, other: Sum, sign: int = 1) -> Sum:
    out = dict(acc)
    for a, c in other.items():
        v = out.get(a, 0) + sign * c
        if v:
            out[a] = v
        else:
            out.pop(a, None)
    return out


def _mul(x: Sum, y: Sum) -> Sum:
    if len(x) * len(y) > MAX_ATOMS * 4:
        raise TooComplex("inclusion-exclusion expansion too large")
    out: Sum = {}
    for a, ca in x.items():
        for b, cb in y.items():
            m = meet(a, b)
            if m is not None:
                v = out.get(m, 0) + ca * cb
                if v:
                    out[m] = v
                else:
                    out.pop(m)
    if len(out) > MAX_ATOMS:
        raise TooComplex("inclusion-exclusion expansion too large")
    return out


def _single(a: Atom | None) -> Sum:
    return {} if a is None else {a: 1}


def _progs_sum(progs, n: int, axis: str) -> Sum:
    out: Sum = {}
    top = _top(n)
    for sign, (start, stop, step) in signed_disjoint(progs):
        if axis == "q":
            a = replace(top, qlo=start, qhi=stop, qm=step, qr=start % step)
        elif axis == "k":
            a = replace(top, klo=start, khi=stop, km=step, kr=start % step)
        else:
            a = replace(top, dlo=start, dhi=stop, dm=step, dr=start % step)
        a = _normalize(a)
        if a is not None:
            out = _add(out, {a: sign})
    return out


def atoms_of(e: ir.Expr, ctx: Context) -> Sum:
    """The signed atom sum of a static expression at ``ctx.n``."""
    n = ctx.n
    top = _top(n)
    if isinstance(e, ir.Union):
        acc = atoms_of(e.terms[0], ctx)
        for t in e.terms[1:]:
            s = atoms_of(t, ctx)
            acc = _add(_add(acc, s), _mul(acc, s), -1)
        return acc
    if isinstance(e, ir.Intersect):
        acc = atoms_of(e.terms[0], ctx)
        for t in e.terms[1:]:
            if not acc:
                return acc
            acc = _mul(acc, atoms_of(t, ctx))
        return acc
    if isinstance(e, ir.Difference):
        a = atoms_of(e.left, ctx)
        return _add(a, _mul(a, atoms_of(e.right, ctx)), -1) if a else a
    if isinstance(e, ir.All):
        return _single(_normalize(top))
    if isinstance(e, ir.Nothing):
        return {}
    if isinstance(e, ir.Causal):
        return _single(_normalize(replace(top, dlo=0)))
    if isinstance(e, ir.Local):
        return _single(_normalize(replace(top, dlo=-cap(e.right, n), dhi=cap(e.left, n) + 1)))
    if isinstance(e, ir.Stride):
        return _single(_normalize(replace(top, dm=cap(e.step, n) if e.step < n else max(n, 1) * 2, dr=0)))
    if isinstance(e, ir.Dilated):
        w = cap(e.width * e.dilation, n)
        dm = e.dilation if e.dilation < n else max(n, 1) * 2
        return _single(_normalize(replace(top, dlo=-w, dhi=w + 1, dm=dm, dr=0)))
    if isinstance(e, ir.Every):
        if e.step > max(n, 1):
            return _single(_normalize(replace(top, klo=e.offset, khi=min(e.offset + 1, n))))
        return _single(_normalize(replace(top, km=e.step, kr=e.offset)))
    if isinstance(e, ir.Sink):
        return _single(_normalize(replace(top, khi=cap(e.count, n))))
    if isinstance(e, ir.Prefix):
        p = cap(e.length, n)
        return _single(_normalize(replace(top, qhi=p, khi=p)))
    if isinstance(e, ir.Rows):
        return _progs_sum(resolve_index(e.index, n), n, "q")
    if isinstance(e, ir.Cols):
        return _progs_sum(resolve_index(e.index, n), n, "k")
    if isinstance(e, ir.Global):
        progs = resolve_index(e.index, n)
        r, c = _progs_sum(progs, n, "q"), _progs_sum(progs, n, "k")
        return _add(_add(r, c), _mul(r, c), -1)
    if isinstance(e, ir.Slash):
        return _progs_sum(resolve_offsets(e.offsets, -max(n - 1, 0), max(n, 1)), n, "d")
    if isinstance(e, GROUP_TYPES):
        if isinstance(e, ir.Document):
            ctx.require_doc_ids()
        return _single(_normalize(replace(top, groups=(e,))))
    if isinstance(e, ir.DYNAMIC_TYPES):
        from ..errors import PsparseUsageError
        raise PsparseUsageError("data-dependent terms are planned per call (they need q and k)")
    raise TypeError(f"not a pattern expression: {e!r}")


# ---------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------

def _params(a: Atom):
    """Per-atom constants of the closed form (see the module docstring)."""
    g = gcd(a.km, a.dm)
    c = crt(a.qr, a.qm, (a.kr + a.dr) % g, g)
    if c is None:
        return None
    QR, QM = c
    M = lcm(a.km, a.dm)
    if M > MAX_MODULUS or QM > MAX_MODULUS:
        raise TooComplex("congruence moduli too large for the closed form")
    dmg = a.dm // g
    u = pow(a.km // g, -1, dmg) if dmg > 1 else 0
    C1 = (a.km * ((u * (QM // g)) % dmg)) % M if dmg > 1 else 0
    return dict(QR=QR, QM=QM, M=M, g=g, dmg=dmg, u=u, C1=C1, kr=a.kr, km=a.km, dr=a.dr)


def count_basic(qa, qb, ka, kb, dlo, dhi, P) -> torch.Tensor:
    """Pairs with q in [qa, qb) (class QR mod QM), k in [ka, kb), q - k in [dlo, dhi) and the
    atom's congruences ``P`` (tensors of per-element constants, see `_params`)."""
    QR, QM, M, g, dmg, u, C1, kr, km, dr = (P[x] for x in ("QR", "QM", "M", "g", "dmg", "u", "C1", "kr",
                                                            "km", "dr"))
    Q0 = qa + torch.remainder(QR - qa, QM)
    J = pick(Q0 < qb, fdiv(qb - 1 - Q0, QM) + 1, 0)
    t = torch.remainder(fdiv(Q0 - dr - kr, g), dmg)
    C0 = torch.remainder(kr + km * torch.remainder(u * t, dmg), M)
    # L(q) = max(ka, q - dhi + 1) switches to the band at jL; R(q) = min(kb - 1, q - dlo)
    # leaves the band at jR.
    jL = torch.clamp(cdiv(ka + dhi - 1 - Q0, QM), min=0)
    jL = torch.minimum(jL, J)
    jR = torch.clamp(fdiv(kb - 1 + dlo - Q0, QM) + 1, min=0)
    jR = torch.minimum(jR, J)
    cuts = [torch.zeros_like(J), torch.minimum(jL, jR), torch.maximum(jL, jR), J]
    total = torch.zeros_like(J)
    for p in range(3):
        x, y = cuts[p], cuts[p + 1]
        aL = x >= jL   # in this piece, L follows the band
        aR = x < jR    # in this piece, R follows the band
        sL = aL.to(torch.int64)
        sR = aR.to(torch.int64)
        # R - L + 1 = A*j + B over the piece; keep where >= 0
        Lc = pick(aL, Q0 - dhi + 1, ka)
        Rc = pick(aR, Q0 - dlo, kb - 1)
        A = (sR - sL) * QM
        B = Rc - Lc + 1
        x2 = pick(A > 0, torch.maximum(x, cdiv(-B, torch.clamp(A, min=1))), x)
        y2 = pick(A < 0, torch.minimum(y, fdiv(B, torch.clamp(-A, min=1)) + 1), y)
        ok = (A != 0) | (B >= 0)
        cnt = pick(ok, torch.clamp(y2 - x2, min=0), 0)
        x2 = pick(ok, x2, 0)
        # sum_j floor((R_j - C0 - C1 j)/M) - floor((L_j - 1 - C0 - C1 j)/M)
        aRs = sR * QM - C1
        bRs = Rc - C0 + aRs * x2
        aLs = sL * QM - C1
        bLs = Lc - 1 - C0 + aLs * x2
        total = total + floor_sum(cnt, M, aRs, bRs) - floor_sum(cnt, M, aLs, bLs)
    return total


def count_band(qa, qb, ka, kb, dlo, dhi, QM, QR) -> torch.Tensor:
    """`count_basic` without key congruences (M = 1): per piece an arithmetic series."""
    Q0 = qa + torch.remainder(QR - qa, QM)
    J = pick(Q0 < qb, fdiv(qb - 1 - Q0, QM) + 1, 0)
    # Rectangles the band does not cut (every q - k inside it): rows x keys.
    inside = (qa - kb + 1 >= dlo) & (qb - 1 - ka < dhi)
    if bool(inside.all()):
        return J * (kb - ka)
    if bool(inside.any()):
        out = J * (kb - ka)
        cut = (~inside).nonzero().flatten()
        out[cut] = count_band(qa[cut], qb[cut], ka[cut], kb[cut], dlo[cut], dhi[cut], QM[cut], QR[cut])
        return out
    jL = torch.minimum(torch.clamp(cdiv(ka + dhi - 1 - Q0, QM), min=0), J)
    jR = torch.minimum(torch.clamp(fdiv(kb - 1 + dlo - Q0, QM) + 1, min=0), J)
    cuts = [torch.zeros_like(J), torch.minimum(jL, jR), torch.maximum(jL, jR), J]
    total = torch.zeros_like(J)
    for p in range(3):
        x, y = cuts[p], cuts[p + 1]
        aL = x >= jL
        aR = x < jR
        A = (aR.to(torch.int64) - aL.to(torch.int64)) * QM
        B = pick(aR, Q0 - dlo, kb - 1) - pick(aL, Q0 - dhi + 1, ka) + 1
        x2 = pick(A > 0, torch.maximum(x, cdiv(-B, torch.clamp(A, min=1))), x)
        y2 = pick(A < 0, torch.minimum(y, fdiv(B, torch.clamp(-A, min=1)) + 1), y)
        cnt = pick((A != 0) | (B >= 0), torch.clamp(y2 - x2, min=0), 0)
        # sum over j in [x2, x2 + cnt) of A*j + B
        total = total + cnt * B + A * (cnt * x2 + cnt * (cnt - 1) // 2)
    return total


def count_rects(sums: Sum, q0, q1, k0, k1, ctx: Context) -> torch.Tensor:
    """Exact allowed pairs of ``sums`` inside each rectangle ``[q0, q1) x [k0, k1)``
    (int64 tensors of equal length)."""
    q0, q1, k0, k1 = (torch.as_tensor(x, dtype=torch.int64).reshape(-1) for x in (q0, q1, k0, k1))
    R = q0.numel()
    out = torch.zeros(R, dtype=torch.int64)
    batches = []
    # Group splits depend only on the groups and the rectangles: shared by every atom.
    splits: dict = {}
    every = torch.arange(R, dtype=torch.int64)
    for a, coef in sums.items():
        P = _params(a)
        if P is None:
            continue
        if a.groups:
            if a.groups not in splits:
                splits[a.groups] = _split_groups(a.groups, q0, q1, k0, k1, every, ctx)
            qa, qb, ka, kb, rid = splits[a.groups]
            if R == 1 and qa.numel():
                # one rectangle: its pieces run in query order, so the atom's rows are a slice
                i0 = int(torch.searchsorted(qb, torch.tensor([a.qlo]), right=True))
                i1 = int(torch.searchsorted(qa, torch.tensor([a.qhi]), right=False))
                qa, qb, ka, kb, rid = qa[i0:i1], qb[i0:i1], ka[i0:i1], kb[i0:i1], rid[i0:i1]
        else:
            qa, qb, ka, kb, rid = q0, q1, k0, k1, every
        qa = torch.clamp(qa, min=a.qlo)
        qb = torch.clamp(qb, max=a.qhi)
        ka = torch.clamp(ka, min=a.klo)
        kb = torch.clamp(kb, max=a.khi)
        # keep pieces whose rows, keys and band can still meet
        keep = (qa < qb) & (ka < kb) & (qa - kb + 1 < a.dhi) & (qb - 1 - ka >= a.dlo)
        if not bool(keep.all()):
            qa, qb, ka, kb, rid = qa[keep], qb[keep], ka[keep], kb[keep], rid[keep]
        if rid.numel():
            batches.append((rid, qa, qb, ka, kb, a, P, coef))
    if not batches:
        return out
    rid = torch.cat([b[0] for b in batches])
    qa = torch.cat([b[1] for b in batches])
    qb = torch.cat([b[2] for b in batches])
    ka = torch.cat([b[3] for b in batches])
    kb = torch.cat([b[4] for b in batches])

    def per(f):
        return torch.cat([torch.full((b[0].numel(),), f(b), dtype=torch.int64) for b in batches])

    dlo = per(lambda b: b[5].dlo)
    dhi = per(lambda b: b[5].dhi)
    coef = per(lambda b: b[7])
    mods = per(lambda b: b[6]["M"])
    plain = mods == 1
    counts = torch.empty_like(qa)
    if bool(plain.any()):
        sel = plain.nonzero().flatten()
        counts[sel] = count_band(qa[sel], qb[sel], ka[sel], kb[sel], dlo[sel], dhi[sel],
                                 per(lambda b: b[6]["QM"])[sel], per(lambda b: b[6]["QR"])[sel])
    if not bool(plain.all()):
        sel = (~plain).nonzero().flatten()
        P = {key: per(lambda b, key=key: b[6][key])[sel] for key in batches[0][6]}
        counts[sel] = count_basic(qa[sel], qb[sel], ka[sel], kb[sel], dlo[sel], dhi[sel], P)
    return out.index_add_(0, rid, counts * coef)


def _split_groups(groups, qa, qb, ka, kb, rid, ctx: Context):
    """Split each row range at the groups' segment boundaries and each key range into the
    (intersected) runs of the segment: returns flat pieces with the rectangle id."""
    gs = [ctx.group(g) for g in groups]
    bounds = torch.unique(torch.cat([g.seg_starts for g in gs]))
    first = torch.searchsorted(bounds, qa, right=True)   # boundaries strictly inside (qa, qb)
    last = torch.searchsorted(bounds, qb, right=False)
    npieces = torch.clamp(last - first, min=0) + 1
    idx = torch.repeat_interleave(torch.arange(qa.numel(), dtype=torch.int64), npieces)
    off = torch.arange(idx.numel(), dtype=torch.int64) - torch.repeat_interleave(
        torch.cumsum(npieces, 0) - npieces, npieces)
    pstart = pick(off == 0, qa[idx], bounds[torch.clamp(first[idx] + off - 1, max=bounds.numel() - 1)])
    pend_b = bounds[torch.clamp(first[idx] + off, max=bounds.numel() - 1)]
    pend = pick(off == npieces[idx] - 1, qb[idx], pend_b)
    pka, pkb, prid = ka[idx], kb[idx], rid[idx]
    # alternatives: product of the groups' runs
    nalt = torch.ones_like(pstart)
    segs, counts = [], []
    for g in gs:
        s = g.segment_of(pstart)
        c = g.ptr_hi[s] - g.ptr_lo[s]
        segs.append(s)
        counts.append(c)
        nalt = nalt * c
    aidx = torch.repeat_interleave(torch.arange(pstart.numel(), dtype=torch.int64), nalt)
    code = torch.arange(aidx.numel(), dtype=torch.int64) - torch.repeat_interleave(
        torch.cumsum(nalt, 0) - nalt, nalt)
    lo = pka[aidx]
    hi = pkb[aidx]
    for g, s, c in zip(gs, segs, counts):
        cc = c[aidx]
        j = g.ptr_lo[s[aidx]] + torch.remainder(code, torch.clamp(cc, min=1))
        code = fdiv(code, torch.clamp(cc, min=1))
        lo = torch.maximum(lo, g.run_lo[j])
        hi = torch.minimum(hi, g.run_hi[j])
    return pstart[aidx], pend[aidx], lo, hi, prid[aidx]


def count_total(sums: Sum, q0: int, q1: int, ctx: Context) -> int:
    """All allowed pairs with rows in ``[q0, q1)``."""
    t = count_rects(sums, torch.tensor([q0]), torch.tensor([q1]), torch.tensor([0]),
                    torch.tensor([ctx.n]), ctx)
    return int(t.sum())
