"""The "torch" backend: one part of a block plan, executed tile by tile with PyTorch ops.

It walks exactly the structure docs/PLAN.md describes (query tiles of ``part.q_view``, runs
``[kv_lo, kv_hi)`` of ``part.k_view`` tiles, ``kv_full`` runs without the element predicate),
but batches the Python work.  The runs of a query tile are concatenated into one block of key
tiles (key order does not matter to a softmax), the runs that need the predicate first; query
tiles with the same numbers of partial and full key tiles form a group, and a group is
processed in chunks of many query tiles at once: one gather of their queries and keys, one
batched matmul over (batch, KV head, tile) with the query heads of a KV head folded into the
rows (grouped-query attention without copying K or V per query head), the predicate evaluated
only on the partial columns.  Each tile is visited by one chunk, so no softmax state needs
merging, except when a single tile's keys exceed the budget: they are cut into segments
merged by online softmax.  Memory is bounded by the chunk budget (``chunk_bytes``) plus
per-row state the size of the output: never an ``n x n`` tensor.  Everything is float32.
"""
from __future__ import annotations

import torch

from ..plan.predicate import tile_mask

# Budget (bytes) for the score-sized float32 temporaries of one chunk: the forward pass holds
# two of them, the backward pass four, so a chunk's scores get a half or a quarter of it.
# Large enough that a chunk covers many query tiles: every torch op has a fixed cost (large
# with several threads on a busy machine), and fewer, bigger ops amortise it.
CHUNK_BYTES = 64 << 20

_NEG_INF = float("-inf")


def _jobs(part):
    """Group the query tiles of ``part`` by how many key tiles they visit.

    Yields ``(tiles, ktiles, partial)``: ``tiles`` int64 ``[G]``, ``ktiles`` int64 ``[G, W]``
    the key tiles each visits (its runs concatenated, the runs that need the predicate
    first), ``partial`` the number of leading key tiles that need it.  Key order does not
    matter to a softmax, so a tile's runs become one block of keys."""
    lo = part.kv_lo.to(torch.int64).cpu()
    hi = part.kv_hi.to(torch.int64).cpu()
    full = part.kv_full.cpu().to(torch.bool)
    ln = (hi - lo).clamp(min=0)
    order = torch.argsort(full.to(torch.int64), dim=1, stable=True)
    lo, ln, full = lo.gather(1, order), ln.gather(1, order), full.gather(1, order)
    n_part = (ln * ~full).sum(1)
    n_full = (ln * full).sum(1)
    width = n_part + n_full
    key = n_part * (int(width.max()) + 1 if width.numel() else 1) + n_full
    for kv in torch.unique(key[width > 0]).tolist():
        tiles = torch.nonzero(key == kv).flatten()
        W = int(width[tiles[0]])
        cum = torch.cumsum(ln[tiles], 1)
        j = torch.arange(W, dtype=torch.int64).expand(tiles.numel(), W).contiguous()
        run = torch.searchsorted(cum, j, right=True)
        first = (cum - ln[tiles]).gather(1, run)
        ktiles = lo[tiles].gather(1, run) + (j - first)
        yield tiles, ktiles, int(n_part[tiles[0]])


class _Walk:
    """What every chunk of one part needs: positions, layouts of q/k/v, the masks' inputs."""

    def __init__(self, part, plan, q, k, kv_lens, chunk_bytes):
        self.part, self.plan = part, plan
        self.B, self.Hq, self.Nq, self.D = q.shape
        self.Hkv, self.Nk = k.shape[1], k.shape[2]
        self.g = self.Hq // self.Hkv
        self.bm, self.bn = part.block_m, part.block_n
        self.device = q.device
        self.q_offset = plan.q_offset
        qpos = part.q_view.positions().to(torch.int64)
        self.num_q_tiles = qpos.numel() // self.bm
        self.qpos = qpos.view(self.num_q_tiles, self.bm)  # cpu
        self.kpos = part.k_view.positions().to(torch.int64)  # cpu, [k tiles * bn]
        self.kv_lens = None if kv_lens is None else kv_lens.to(self.device, torch.int64)
        self.chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes

    def chunks(self, factor: int):
        """Yield ``(tiles, ktiles, partial, fresh)``: at most ``chunk_bytes / factor`` bytes of
        float32 scores each; a tile whose keys alone exceed that is cut into key segments
        (``fresh`` is False for the later ones: they merge into the earlier result)."""
        bn = self.bn
        per_key_tile = max(1, self.B * self.Hq * self.bm * bn * 4 * factor)
        for tiles, ktiles, partial in _jobs(self.part):
            W = ktiles.shape[1]
            seg = min(W, max(1, self.chunk_bytes // per_key_tile))
            step = max(1, self.chunk_bytes // (per_key_tile * seg))
            for c in range(0, tiles.numel(), step):
                for s0 in range(0, W, seg):
                    s1 = min(W, s0 + seg)
                    yield (tiles[c:c + step], ktiles[c:c + step, s0:s1],
                           max(0, min(s1, partial) - s0), s0 == 0)

    def rows_of(self, tiles):
        """(query positions [G, bm] on cpu, row-and-head indices [G*bm*g] into the
        ``[Nq * g]`` axis of :func:`_layout_q`'s layout; padding clamped to row 0)."""
        qp = self.qpos[tiles]
        rows = (qp - self.q_offset).clamp(min=0).reshape(-1)
        grow = (rows.unsqueeze(1) * self.g + torch.arange(self.g)).reshape(-1)
        return qp, grow.to(self.device)

    def keys_of(self, ktiles):
        """(key positions [G, W*bn] on cpu, key indices [G*W*bn] on the device)."""
        slots = (ktiles.unsqueeze(-1) * self.bn + torch.arange(self.bn)).reshape(ktiles.shape[0], -1)
        kp = self.kpos[slots]
        return kp, kp.clamp(min=0).reshape(-1).to(self.device)

    def apply_mask(self, s, qp, kp, partial):
        """Set disallowed scores of ``s`` ``[B, Hkv, G, bm*g, W*bn]`` to -inf: the predicate
        on the first ``partial`` key tiles, padding keys and ``kv_lens`` everywhere.  Padding
        query slots are left alone (their rows are never written; the backward pass zeroes
        them through the log-sum-exp)."""
        G, width = kp.shape
        s6 = s.view(self.B, self.Hkv, G, self.bm, self.g, width)
        wp = partial * self.bn
        if wp:
            m = tile_mask(self.part.predicate, qp.clamp(min=0), kp[:, :wp], self.plan.context)
            s6[..., :wp].masked_fill_(~m.to(self.device)[None, None, :, :, None, :], _NEG_INF)
        if wp < width:
            rest = kp[:, wp:]
            if bool((rest < 0).any()):
                s6[..., wp:].masked_fill_((rest < 0).to(self.device)[None, None, :, None, None, :],
                                          _NEG_INF)
        if self.kv_lens is not None:
            kd = kp.to(self.device)
            beyond = kd.unsqueeze(0) >= self.kv_lens.view(-1, 1, 1)          # [B, G, W*bn]
            s6.masked_fill_(beyond[:, None, :, None, None, :], _NEG_INF)


def _layout_q(x, Hkv):
    """``[B, Hq, N, E]`` -> ``[B, Hkv, N, g, E]`` float32 contiguous (query heads of a KV head
    side by side, so a gather of rows keeps them together)."""
    B, Hq, N, E = x.shape
    g = Hq // Hkv
    return x.to(torch.float32).reshape(B, Hkv, g, N, E).permute(0, 1, 3, 2, 4).contiguous()


def _unlayout_q(x, Hq):
    """Inverse of :func:`_layout_q`: ``[B, Hkv, N, g, E]`` -> ``[B, Hq, N, E]``."""
    B, Hkv, N, g, E = x.shape
    return x.permute(0, 1, 3, 2, 4).reshape(B, Hq, N, E)


def _gather(w, qf, kf, grow, kidx, G, width):
    """The chunk's queries ``[B, Hkv, G, bm*g, D]`` and keys ``[B, Hkv, G, W*bn, D]``."""
    qc = qf.index_select(2, grow).view(w.B, w.Hkv, G, w.bm * w.g, w.D)
    kc = kf.index_select(2, kidx).view(w.B, w.Hkv, G, width, w.D)
    return qc, kc


def _chunk_scores(w, qf, kf, tiles, ktiles, partial):
    """The masked scores ``[B, Hkv, G, bm*g, width]`` of a chunk of query tiles, with its
    query and key positions and the rows and keys they were gathered from."""
    qp, grow = w.rows_of(tiles)
    kp, kidx = w.keys_of(ktiles)
    qc, kc = _gather(w, qf, kf, grow, kidx, tiles.numel(), kp.shape[1])
    s = torch.matmul(qc, kc.transpose(-1, -2))
    del qc, kc
    w.apply_mask(s, qp, kp, partial)
    return s, qp, kp, grow, kidx


def forward_part(part, plan, q, k, v, *, scale, kv_lens=None, doc_ids=None,
                 chunk_bytes=None):
    """Attention restricted to ``part``: ``(out_p, lse_p)``, float32 ``[B, Hq, Nq, Dv]`` and
    ``[B, Hq, Nq]`` (natural log; ``-inf`` and output 0 for rows with no allowed key in the
    part).  Query heads ``h`` read KV head ``h // (Hq // Hkv)``.

    The element predicate reads documents from ``plan.context`` (the plan was built for them);
    ``doc_ids`` is accepted for parity with the kernel launchers, which need them on the device.
    """
    del doc_ids
    w = _Walk(part, plan, q, k, kv_lens, chunk_bytes)
    B, Hkv, g, bm, Dv = w.B, w.Hkv, w.g, w.bm, v.shape[3]
    T = w.num_q_tiles
    # The scale is folded into the queries once instead of into every score.
    qf = (_layout_q(q, Hkv) * scale).view(B, Hkv, w.Nq * g, w.D)
    kf = k.to(torch.float32)
    vf = v.to(torch.float32)
    dev = q.device
    M = torch.full((B, Hkv, T, bm * g), _NEG_INF, dtype=torch.float32, device=dev)
    L = torch.zeros((B, Hkv, T, bm * g), dtype=torch.float32, device=dev)
    A = torch.zeros((B, Hkv, T, bm * g, Dv), dtype=torch.float32, device=dev)
    for tiles, ktiles, partial, fresh in w.chunks(factor=2):
        s, qp, kp, grow, kidx = _chunk_scores(w, qf, kf, tiles, ktiles, partial)
        G, width = tiles.numel(), kp.shape[1]
        m = s.amax(-1)                                             # [B, Hkv, G, bm*g]
        m_safe = torch.where(m == _NEG_INF, torch.zeros_like(m), m)
        s.sub_(m_safe.unsqueeze(-1)).exp_()
        l_c = s.sum(-1)
        vc = vf.index_select(2, kidx).view(B, Hkv, G, width, Dv)
        a_c = torch.matmul(s, vc)                                  # [B, Hkv, G, bm*g, Dv]
        del s, vc
        td = tiles.to(dev)
        if fresh:
            # rows with nothing allowed keep m = -inf and l = 0
            M.index_copy_(2, td, m)
            L.index_copy_(2, td, l_c)
            A.index_copy_(2, td, a_c)
            continue
        m_old = M.index_select(2, td)
        m_new = torch.maximum(m_old, m)
        ref = torch.where(m_new == _NEG_INF, torch.zeros_like(m_new), m_new)
        # exp(-inf - ref) = 0 for a side that has seen nothing yet, so empty rows stay 0.
        f_old = torch.exp(m_old - ref)
        f_new = torch.exp(m - ref)
        M.index_copy_(2, td, m_new)
        L.index_copy_(2, td, L.index_select(2, td) * f_old + l_c * f_new)
        A.index_copy_(2, td, A.index_select(2, td) * f_old.unsqueeze(-1) + a_c * f_new.unsqueeze(-1))
    has = L > 0
    lse_slots = torch.where(has, M + torch.log(torch.where(has, L, torch.ones_like(L))),
                            torch.full_like(M, _NEG_INF))
    out_slots = A.div_(torch.where(has, L, torch.ones_like(L)).unsqueeze(-1))
    # slots -> rows: [B, Hkv, T, bm, g] -> [B, Hq, T*bm]
    lse_slots = lse_slots.view(B, Hkv, T, bm, g).permute(0, 1, 4, 2, 3).reshape(B, w.Hq, T * bm)
    out_slots = out_slots.view(B, Hkv, T, bm, g, Dv).permute(0, 1, 4, 2, 3, 5).reshape(
        B, w.Hq, T * bm, Dv)
    qpos = w.qpos.reshape(-1)
    valid = torch.nonzero(qpos >= 0).flatten()
    rows = (qpos[valid] - w.q_offset).to(dev)
    valid = valid.to(dev)
    out_p = torch.zeros((B, w.Hq, w.Nq, Dv), dtype=torch.float32, device=dev)
    lse_p = torch.full((B, w.Hq, w.Nq), _NEG_INF, dtype=torch.float32, device=dev)
    out_p.index_copy_(2, rows, out_slots.index_select(2, valid))
    lse_p.index_copy_(2, rows, lse_slots.index_select(2, valid))
    return out_p, lse_p


def backward_part(part, plan, q, k, v, out, lse, dout, *, scale, kv_lens=None, doc_ids=None,
                  dlse=None, chunk_bytes=None):
    """Gradients of the whole attention restricted to the pairs of ``part``: float32
    ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v``.  ``out`` and ``lse`` are the FINAL merged
    output and log-sum-exp (over every part), so ``P = exp(scale * s - lse)`` are the true
    probabilities and summing the parts' gradients gives the full gradient.  ``dlse`` is the
    gradient of a loss with respect to ``lse`` (it adds ``P * dlse`` to ``dS``)."""
    del doc_ids
    w = _Walk(part, plan, q, k, kv_lens, chunk_bytes)
    B, Hkv, g, bm, D, Dv = w.B, w.Hkv, w.g, w.bm, w.D, v.shape[3]
    dev = q.device
    qf = (_layout_q(q, Hkv) * scale).view(B, Hkv, w.Nq * g, D)
    dof = _layout_q(dout, Hkv).view(B, Hkv, w.Nq * g, Dv)
    delta = (dout.to(torch.float32) * out.to(torch.float32)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(torch.float32)
    lse = lse.to(torch.float32)
    # Rows without any allowed key: P must be 0, so use +inf in place of -inf.
    lse_eff = torch.where(lse == _NEG_INF, torch.full_like(lse, float("inf")), lse)
    lse_eff = _layout_q(lse_eff.unsqueeze(-1), Hkv).view(B, Hkv, w.Nq * g)
    delta = _layout_q(delta.unsqueeze(-1), Hkv).view(B, Hkv, w.Nq * g)
    kf = k.to(torch.float32)
    vf = v.to(torch.float32)
    dq = torch.zeros((B, Hkv, w.Nq * g, D), dtype=torch.float32, device=dev)
    dk = torch.zeros((B, Hkv, w.Nk, D), dtype=torch.float32, device=dev)
    dv = torch.zeros((B, Hkv, w.Nk, Dv), dtype=torch.float32, device=dev)
    inf = float("inf")
    for tiles, ktiles, partial, _ in w.chunks(factor=4):
        G = tiles.numel()
        qp, grow = w.rows_of(tiles)
        kp, kidx = w.keys_of(ktiles)
        width = kp.shape[1]
        qc, kc = _gather(w, qf, kf, grow, kidx, G, width)
        s = torch.matmul(qc, kc.transpose(-1, -2))
        w.apply_mask(s, qp, kp, partial)
        lrow = lse_eff.index_select(2, grow).view(B, Hkv, G, bm, g)
        pad = (qp < 0).to(dev)[None, None, :, :, None]
        lrow = lrow.masked_fill(pad, inf).view(B, Hkv, G, bm * g)
        p = s.sub_(lrow.unsqueeze(-1)).exp_()                     # [B, Hkv, G, bm*g, width]
        doc = dof.index_select(2, grow).view(B, Hkv, G, bm * g, Dv)
        vc = vf.index_select(2, kidx).view(B, Hkv, G, width, Dv)
        dv_c = torch.matmul(p.transpose(-1, -2), doc)            # [B, Hkv, G, width, Dv]
        dp = torch.matmul(doc, vc.transpose(-1, -2))
        del vc, doc
        dp.sub_(delta.index_select(2, grow).view(B, Hkv, G, bm * g).unsqueeze(-1))
        ds = dp.mul_(p)
        del p
        dq_c = torch.matmul(ds, kc)                               # [B, Hkv, G, bm*g, D]
        dk_c = torch.matmul(ds.transpose(-1, -2), qc)             # [B, Hkv, G, width, D]
        del ds
        dq.index_add_(2, grow, dq_c.view(B, Hkv, G * bm * g, D))
        dk.index_add_(2, kidx, dk_c.view(B, Hkv, G * width, D))
        dv.index_add_(2, kidx, dv_c.view(B, Hkv, G * width, Dv))
    # dS carried no scale: dq = scale * dS K; dk = dS^T (scale * Q) is already scaled.
    dq = _unlayout_q(dq.mul_(scale).view(B, Hkv, w.Nq, g, D), w.Hq)
    return dq, dk, dv


# ---------------------------------------------------------------------------
# Table parts of dynamic lines (patterndsl.dynamic.tables)
# ---------------------------------------------------------------------------

def _slot_factor(tp) -> int:
    """Key slots per listed item: a column, a diagonal window, or a block's windows."""
    if tp.mode == 0:
        return 1
    if tp.mode == 1:
        return tp.block_n
    return -(-tp.bsize // tp.block_n) * tp.block_n


def _table_slots(tp, q_offset, nq, n, t0=0, t1=None, with_items=False):
    """For query tiles ``[t0, t1)`` of a table part, per table row the visited key
    positions: ``(qpos [T, bm], kpos [BH, T, W])`` int64 with ``-1`` for padding (rows past
    a tile's end, key slots past its list, keys outside ``[0, n)`` and outside a block's
    own keys); ``W`` is the widest tile of the range."""
    dev = tp.lo.device
    t1 = tp.num_tiles if t1 is None else t1
    first, end = tp.tile_rows(q_offset, nq)
    first, end = first[t0:t1], end[t0:t1]
    ar_m = torch.arange(tp.block_m, device=dev)
    qpos = first.view(-1, 1) + ar_m
    qpos = torch.where(qpos < end.view(-1, 1), qpos, -1)
    lo, hi = tp.lo[:, t0:t1].long(), tp.hi[:, t0:t1].long()
    cnt = (hi - lo).clamp(min=0)
    BH, T = lo.shape
    width = int(cnt.max()) if cnt.numel() else 0
    lst = tp.list.long()
    if width == 0:
        none = torch.full((BH, T, 0), -1, dtype=torch.int64, device=dev)
        return (qpos, none, none) if with_items else (qpos, none)
    j = torch.arange(width, device=dev)
    take = j.view(1, 1, -1) < cnt.unsqueeze(-1)                        # [BH, T, width]
    at = (lo.unsqueeze(-1) + j).clamp(max=max(lst.shape[1] - 1, 0))
    items = torch.gather(lst, 1, at.view(BH, -1)).view(BH, T, width)
    if tp.mode == 0:
        kpos = torch.where(take, items, -1)
        return (qpos, kpos, items) if with_items else (qpos, kpos)
    if tp.mode == 1:
        ar_n = torch.arange(tp.block_n, device=dev)
        start = first.view(1, -1, 1) + tp.block_m - (items + 1) * tp.block_n
        kpos = start.unsqueeze(-1) + ar_n                              # [BH, T, width, bn]
        ok = take.unsqueeze(-1) & (kpos >= 0) & (kpos < n)
        kpos = torch.where(ok, kpos, -1).view(BH, T, -1)
        return (qpos, kpos, items) if with_items else (qpos, kpos)
    ar = torch.arange(_slot_factor(tp), device=dev)
    kpos = items.unsqueeze(-1) * tp.bsize + ar                         # [BH, T, width, nwb*bn]
    ok = take.unsqueeze(-1) & (ar < tp.bsize) & (kpos < n)
    kpos = torch.where(ok, kpos, -1).view(BH, T, -1)
    return (qpos, kpos, items) if with_items else (qpos, kpos)


def _table_chunks(tp, per_slot: int, budget: int):
    """Ranges ``[t0, t1)`` of consecutive query tiles whose ``tiles x widest tile``
    slots fit ``budget`` bytes at ``per_slot`` bytes each (one tile at least).  Widths
    grow along a causal pattern, so consecutive tiles keep the padding small."""
    cnt = (tp.hi.long() - tp.lo.long()).clamp(min=0)
    widths = (cnt.amax(0) if cnt.shape[0] else torch.zeros(tp.num_tiles, dtype=torch.int64))
    widths = (widths * _slot_factor(tp)).cpu().tolist()
    t0, widest = 0, 0
    for t, w in enumerate(widths):
        wider = max(widest, w)
        if t > t0 and wider * (t + 1 - t0) * per_slot > budget:
            yield t0, t
            t0, wider = t, w
        widest = wider
    if t0 < len(widths):
        yield t0, len(widths)


def _window_predicate(tp, tabs, ctx, qp, kc, bh, items):
    """Mode 1's element predicate ``[BH, T', bm, W]`` on the slots of windows ``items``
    ``[BH, T', width]``.  Slot ``(i, j)`` of window ``w`` has the offset
    ``q - k = w * bn - bm + 1 + (i - j + bn - 1)`` whatever the tile, so the parts of the
    predicate that depend on the offset alone (the slash bits, causal, a local band) are
    read once per window and offset ``[BH, T', width, bm + bn - 1]`` and spread to the
    slots by one constant index; the rest is evaluated per element."""
    from ..dynamic.predicate import evaluate_windows
    bm, bn = tp.block_m, tp.block_n
    BH, T, width = items.shape
    dev = items.device
    # offsets in decreasing order: entry r is i - j + bn - 1 = L - 1 - r, so the slots of
    # row i are the bn consecutive entries from bm - 1 - i (an unfold, then one flip)
    span = torch.arange(bm + bn - 2, -1, -1, device=dev)
    d = items.clamp(min=0).unsqueeze(-1) * bn + (1 - bm) + span       # [BH, T', width, L]

    def expand(x):
        x = x.expand(BH, T, width, x.shape[-1]).unfold(-1, bn, 1)      # [BH, T', width, bm, bn]
        return x.permute(0, 1, 3, 2, 4).flip(2).reshape(BH, T, bm, width * bn)
    return evaluate_windows(tp.kernel_predicate, qp.clamp(min=0)[None, :, :, None],
                            kc[:, :, None, :], bh.view(-1, 1, 1, 1), ctx, tabs, d, expand)


def _table_allowed(tp, tabs, ctx, qp, kp, bh, items=None):
    """bool ``[BH, T', bm, W]``: the part's pairs among a chunk's slots.  Most slots are
    decided for a whole tile (inside a band, on a chosen column, outside a sink, ...):
    the element predicate runs only on the undecided ones, gathered."""
    from ..dynamic.predicate import evaluate, tile_bounds
    T = qp.shape[0]
    kc = kp.clamp(min=0)
    if tp.mode == 1:
        # Diagonal windows: a tile's rows cross every offset of a window, so nearly every
        # slot is undecided; one broadcast evaluation is cheaper than bounds plus a gather.
        allowed = (qp >= 0)[None, :, :, None] & (kp >= 0)[:, :, None, :]
        if items is None:
            return allowed & evaluate(tp.kernel_predicate, qp.clamp(min=0)[None, :, :, None],
                                      kc[:, :, None, :], bh.view(-1, 1, 1, 1), ctx, tabs)
        return allowed & _window_predicate(tp, tabs, ctx, qp, kc, bh, items)
    qlo = qp[:, :1].clamp(min=0).view(1, T, 1)
    qhi = qp.amax(1).clamp(min=0).view(1, T, 1)
    bhs = bh.view(-1, 1, 1)
    sure, never = tile_bounds(tp.kernel_predicate, qlo, qhi, kc, bhs, ctx, tabs)
    live = kp >= 0
    allowed = (qp >= 0)[None, :, :, None] & (live & sure)[:, :, None, :]
    undecided = live & ~sure & ~never
    if int(undecided.sum()) * 4 > int(live.sum()):
        # mostly undecided: the broadcast evaluation costs less than a gather
        return allowed | ((qp >= 0)[None, :, :, None] & undecided[:, :, None, :] &
                          evaluate(tp.kernel_predicate, qp.clamp(min=0)[None, :, :, None],
                                   kc[:, :, None, :], bh.view(-1, 1, 1, 1), ctx, tabs))
    ib, it, iw = torch.nonzero(undecided, as_tuple=True)
    if ib.numel():
        qs = qp[it]                                                       # [M, bm]
        got = evaluate(tp.kernel_predicate, qs.clamp(min=0), kc[ib, it, iw].unsqueeze(-1),
                       ib.unsqueeze(-1), ctx, tabs)
        allowed[ib, it, :, iw] = got & (qs >= 0)
    return allowed


class _TableWalk:
    """The chunks (query tiles) of one table part with their gathered rows and keys."""

    def __init__(self, tp, tabs, q, k, kv_lens, ctx, chunk_bytes, factor):
        from ..dynamic.predicate import evaluate
        self.tp, self.tabs, self.ctx, self.evaluate = tp, tabs, ctx, evaluate
        B, G, Nq, D = q.shape
        Gk, Nk = k.shape[1], k.shape[2]
        self.B, self.G, self.Gk, self.g = B, G, Gk, G // Gk
        self.Nq, self.Nk, self.D = Nq, Nk, D
        self.BH = B * G
        self.dev = q.device
        self.q_offset = tabs.q_offset
        bh = torch.arange(self.BH, device=self.dev)
        self.bh = bh
        # each table row's KV row in k viewed as [B * Gk, Nk, ...]
        self.kvrow = torch.div(bh, G, rounding_mode="floor") * Gk + \
            torch.div(bh % G, self.g, rounding_mode="floor")
        self.kv_lens = None if kv_lens is None else \
            kv_lens.to(self.dev, torch.int64).repeat_interleave(G)     # [BH]
        self.budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        self.per_slot = max(1, self.BH * tp.block_m * 4 * factor)

    def chunks(self):
        """``(qpos [T', bm], kpos [BH, T', W], items [BH, T', width])`` per chunk of query
        tiles (none empty)."""
        for t0, t1 in _table_chunks(self.tp, self.per_slot, self.budget):
            qpos, kpos, items = _table_slots(self.tp, self.q_offset, self.Nq, self.Nk, t0, t1,
                                             with_items=True)
            if kpos.shape[2]:
                yield qpos, kpos, items

    def gather(self, qp, kp, items, qf, kf):
        """(rows [T', bm] (clamped), keys [BH, T', W] (clamped), allowed [BH, T', bm, W],
        q tile [BH, T', bm, D], k tile [BH, T', W, D])."""
        rows = (qp - self.q_offset).clamp(min=0)
        kc = kp.clamp(min=0)
        allowed = _table_allowed(self.tp, self.tabs, self.ctx, qp, kp, self.bh, items)
        if self.kv_lens is not None:
            allowed = allowed & (kp < self.kv_lens.view(-1, 1, 1))[:, :, None, :]
        qc = qf[self.bh.view(-1, 1, 1), rows.unsqueeze(0)]                # [BH, T', bm, D]
        kt = kf[self.kvrow.view(-1, 1, 1), kc]                            # [BH, T', W, D]
        return rows, kc, allowed, qc, kt


def forward_table_part(tp, tabs, q, k, v, *, scale, kv_lens=None, ctx=None, chunk_bytes=None):
    """``(out_p, lse_p)`` of one table part, float32 ``[B, G, Nq, Dv]`` / ``[B, G, Nq]``
    (``q`` holds the line's ``G`` query heads, ``k``/``v`` their KV heads)."""
    w = _TableWalk(tp, tabs, q, k, kv_lens, ctx, chunk_bytes, 2)
    B, G, Nq, D = q.shape
    Dv = v.shape[3]
    qf = q.to(torch.float32).reshape(w.BH, Nq, D) * scale
    kf = k.to(torch.float32).reshape(B * w.Gk, w.Nk, D)
    vf = v.to(torch.float32).reshape(B * w.Gk, w.Nk, Dv)
    out = torch.zeros((w.BH, Nq + 1, Dv), dtype=torch.float32, device=w.dev)
    lse = torch.full((w.BH, Nq + 1), _NEG_INF, dtype=torch.float32, device=w.dev)
    for qp, kp, items in w.chunks():
        rows, kc, allowed, qc, kt = w.gather(qp, kp, items, qf, kf)
        s = torch.matmul(qc, kt.transpose(-1, -2)).masked_fill_(~allowed, _NEG_INF)
        m = s.amax(-1)
        m_safe = torch.where(m == _NEG_INF, torch.zeros_like(m), m)
        p = s.sub_(m_safe.unsqueeze(-1)).exp_()
        l = p.sum(-1)
        o = torch.matmul(p, vf[w.kvrow.view(-1, 1, 1), kc])             # [BH, T', bm, Dv]
        has = l > 0
        o = o / torch.where(has, l, torch.ones_like(l)).unsqueeze(-1)
        lrow = torch.where(has, m_safe + torch.log(torch.where(has, l, torch.ones_like(l))),
                           torch.full_like(l, _NEG_INF))
        dest = torch.where(qp >= 0, rows, Nq).reshape(-1)             # padding -> spare row
        out.scatter_(1, dest.view(1, -1, 1).expand(w.BH, -1, Dv), o.reshape(w.BH, -1, Dv))
        lse.scatter_(1, dest.view(1, -1).expand(w.BH, -1), lrow.reshape(w.BH, -1))
    return (out[:, :Nq].reshape(B, G, Nq, Dv), lse[:, :Nq].reshape(B, G, Nq))


def backward_table_part(tp, tabs, q, k, v, out, lse, dout, *, scale, kv_lens=None, ctx=None,
                        dlse=None, chunk_bytes=None):
    """Float32 ``(dq, dk, dv)`` of one table part given the final merged ``out``/``lse``."""
    w = _TableWalk(tp, tabs, q, k, kv_lens, ctx, chunk_bytes, 4)
    B, G, Nq, D = q.shape
    Dv = v.shape[3]
    Nk = w.Nk
    qf = q.to(torch.float32).reshape(w.BH, Nq, D) * scale
    kf = k.to(torch.float32).reshape(B * w.Gk, Nk, D)
    vf = v.to(torch.float32).reshape(B * w.Gk, Nk, Dv)
    dof = dout.to(torch.float32).reshape(w.BH, Nq, Dv)
    delta = (dout.to(torch.float32) * out.to(torch.float32)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(torch.float32)
    delta = delta.reshape(w.BH, Nq)
    lse = lse.to(torch.float32).reshape(w.BH, Nq)
    lse_eff = torch.where(lse == _NEG_INF, torch.full_like(lse, float("inf")), lse)
    dq = torch.zeros((w.BH, Nq + 1, D), dtype=torch.float32, device=w.dev)
    dk = torch.zeros((B * w.Gk * Nk, D), dtype=torch.float32, device=w.dev)
    dv = torch.zeros((B * w.Gk * Nk, Dv), dtype=torch.float32, device=w.dev)
    bhv = w.bh.view(-1, 1, 1)
    for qp, kp, items in w.chunks():
        rows, kc, allowed, qc, kt = w.gather(qp, kp, items, qf, kf)
        s = torch.matmul(qc, kt.transpose(-1, -2))
        p = torch.exp(s - lse_eff[bhv, rows.unsqueeze(0)].unsqueeze(-1)).masked_fill_(~allowed, 0.0)
        do = dof[bhv, rows.unsqueeze(0)]                                  # [BH, T', bm, Dv]
        vt = vf[w.kvrow.view(-1, 1, 1), kc]
        dv_c = torch.matmul(p.transpose(-1, -2), do)                      # [BH, T', W, Dv]
        dp = torch.matmul(do, vt.transpose(-1, -2))
        ds = p * (dp - delta[bhv, rows.unsqueeze(0)].unsqueeze(-1))
        dq_c = torch.matmul(ds, kt)
        dk_c = torch.matmul(ds.transpose(-1, -2), qc)
        dest = torch.where(qp >= 0, rows, Nq).reshape(-1)
        dq.index_add_(1, dest, dq_c.reshape(w.BH, -1, D))
        flat = (w.kvrow.view(-1, 1, 1) * Nk + kc).reshape(-1)
        dk.index_add_(0, flat, dk_c.reshape(-1, D))
        dv.index_add_(0, flat, dv_c.reshape(-1, Dv))
    dq = dq[:, :Nq].mul_(scale).reshape(B, G, Nq, D)
    return dq, dk.view(B, w.Gk, Nk, D), dv.view(B, w.Gk, Nk, Dv)


def count_table_part(tp, tabs, ctx, chunk_bytes=None):
    """int64 scalar tensor: the pairs one table part allows (over every table row), by its
    element predicate on the visited slots, a chunk of query tiles at a time."""
    from ..dynamic.predicate import evaluate
    BH = tp.lo.shape[0]
    total = torch.zeros((), dtype=torch.int64, device=tp.lo.device)
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    bh = torch.arange(BH, device=tp.lo.device).view(-1, 1, 1, 1)
    for t0, t1 in _table_chunks(tp, max(1, BH * tp.block_m * 8), budget):
        qp, kp, items = _table_slots(tp, tabs.q_offset, tabs.nq, tabs.n, t0, t1, with_items=True)
        ok = (qp >= 0)[None, :, :, None] & (kp >= 0)[:, :, None, :]
        if tp.mode == 1:
            ok = ok & _window_predicate(tp, tabs, ctx, qp, kp.clamp(min=0), bh, items)
        else:
            ok = ok & evaluate(tp.kernel_predicate, qp.clamp(min=0)[None, :, :, None],
                               kp.clamp(min=0)[:, :, None, :], bh, ctx, tabs)
        total += ok.sum()
    return total


def column_probs_part(part, plan, q, k, lse, *, scale, kv_lens=None, chunk_bytes=None):
    """Column sums of the attention probabilities on the pairs of ``part``: float32
    ``[B, Hkv, Nk]``, each key's probability summed over the query rows and over the query
    heads of its KV head.  ``lse`` ``[B, Hq, Nq]`` is the FINAL log-sum-exp (over every part,
    as :func:`forward_part` returns per part), so the parts' sums add up to the whole
    pattern's.  Walks the same chunks as :func:`forward_part`: never an ``n x n`` tensor."""
    w = _Walk(part, plan, q, k, kv_lens, chunk_bytes)
    B, Hkv, g, bm = w.B, w.Hkv, w.g, w.bm
    dev = q.device
    qf = (_layout_q(q, Hkv) * scale).view(B, Hkv, w.Nq * g, w.D)
    kf = k.to(torch.float32)
    lse = lse.to(torch.float32)
    # Rows without any allowed key give nothing: +inf in place of -inf makes their P zero.
    lse_eff = torch.where(lse == _NEG_INF, torch.full_like(lse, float("inf")), lse)
    lse_eff = _layout_q(lse_eff.unsqueeze(-1), Hkv).view(B, Hkv, w.Nq * g)
    cols = torch.zeros((B, Hkv, w.Nk), dtype=torch.float32, device=dev)
    for tiles, ktiles, partial, _ in w.chunks(factor=2):
        s, qp, kp, grow, kidx = _chunk_scores(w, qf, kf, tiles, ktiles, partial)
        G, width = tiles.numel(), kp.shape[1]
        lrow = lse_eff.index_select(2, grow).view(B, Hkv, G, bm, g)
        # padding query slots were clamped to row 0: they must not count
        lrow = lrow.masked_fill((qp < 0).to(dev)[None, None, :, :, None], float("inf"))
        p = s.sub_(lrow.view(B, Hkv, G, bm * g).unsqueeze(-1)).exp_()
        cols.index_add_(2, kidx, p.sum(3).view(B, Hkv, G * width))
        del s, p
    return cols
