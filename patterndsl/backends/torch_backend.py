"""The "torch" backend: one part of a block plan, executed tile by tile with PyTorch ops.

It walks exactly the structure docs/PLAN.md describes (query tiles of ``part.q_view``, runs
``[kv_lo, kv_hi)`` of ``part.k_view`` tiles, ``kv_full`` runs without the element predicate),
but batches the Python work: the (query tile, run) pairs of a part are grouped by run index,
run length and fullness, and each group is processed in chunks of many query tiles at once.
A chunk gathers the queries of its tiles and the keys of their runs (a run is a contiguous
range of key slots) and does one batched matmul over (batch, KV head, tile), with the query
heads of a KV head folded into the rows (grouped-query attention without copying K or V per
query head).  Memory is bounded by the chunk (``chunk_bytes``) plus per-row state of the size
of the output: never an ``n x n`` tensor.

Chunks of one group hold each query tile at most once, so the online-softmax state of a tile
is merged with plain indexing.  Everything is computed in float32.
"""
from __future__ import annotations

import torch

from ..plan.predicate import tile_mask

# Budget (bytes) for one chunk's float32 score tensor.  The forward pass holds about two
# tensors of this size, the backward pass about four.
CHUNK_BYTES = 32 << 20

_NEG_INF = float("-inf")


def _groups(part):
    """``[(s, length, full, tiles)]``: for each run index ``s``, the query tiles whose run
    ``s`` is non-empty, split by the run's length (in key tiles) and fullness."""
    lo = part.kv_lo.to(torch.int64).cpu()
    hi = part.kv_hi.to(torch.int64).cpu()
    full = part.kv_full.cpu()
    out = []
    for s in range(lo.shape[1]):
        length = hi[:, s] - lo[:, s]
        key = length * 2 + full[:, s].to(torch.int64)
        nonempty = length > 0
        if not bool(nonempty.any()):
            continue
        for kv in torch.unique(key[nonempty]).tolist():
            tiles = torch.nonzero(key == kv).flatten()
            out.append((s, kv // 2, bool(kv % 2), tiles))
    return out, lo


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
        self.groups, self.lo = _groups(part)
        self.chunk_bytes = chunk_bytes

    def chunks(self, per_score_row: int):
        """Yield ``(length, full, tiles, starts)`` chunks whose score tensor fits the budget."""
        for s, length, full, tiles in self.groups:
            width = length * self.bn
            per_tile = max(1, self.B * self.Hq * self.bm * width * 4 * per_score_row)
            step = max(1, self.chunk_bytes // per_tile)
            for c in range(0, tiles.numel(), step):
                t = tiles[c:c + step]
                yield length, full, t, self.lo[t, s]

    def rows_of(self, tiles):
        """(query positions [G, bm] on cpu, output rows [G*bm] on the device, -1 padding kept
        in positions and clamped to row 0 in rows)."""
        qp = self.qpos[tiles]
        rows = (qp - self.q_offset).clamp(min=0).reshape(-1).to(self.device)
        return qp, rows

    def keys_of(self, starts, length):
        """(key positions [G, L*bn] on cpu, key indices [G*L*bn] on the device)."""
        width = length * self.bn
        slots = starts.unsqueeze(1) * self.bn + torch.arange(width, dtype=torch.int64)
        kp = self.kpos[slots]
        return kp, kp.clamp(min=0).reshape(-1).to(self.device)

    def mask(self, qp, kp, full):
        """Boolean ``[B or 1, 1, G, bm, 1, L*bn]`` of allowed pairs, or None when all are.

        Padding query slots are left unmasked (their rows are never written; the backward pass
        zeroes them through the log-sum-exp)."""
        m = None
        if not full:
            m = tile_mask(self.part.predicate, qp.clamp(min=0), kp, self.plan.context)
        elif bool((kp < 0).any()):
            m = (kp >= 0).unsqueeze(1).expand(kp.shape[0], qp.shape[1], kp.shape[1])
        if m is not None:
            m = m.to(self.device)[None, None, :, :, None, :]
        if self.kv_lens is not None:
            kd = kp.to(self.device)
            lens = (kd.unsqueeze(0) < self.kv_lens.view(-1, 1, 1))[:, None, :, None, None, :]
            m = lens if m is None else (m & lens)
        return m


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


def _scores(w, qf, kf, rows, kidx, G, width, scale):
    """``scale * Q K^T`` for a chunk: ``[B, Hkv, G, bm*g, L*bn]`` and the gathered blocks."""
    B, Hkv = w.B, w.Hkv
    qc = qf.index_select(2, rows).view(B, Hkv, G, w.bm * w.g, w.D)
    kc = kf.index_select(2, kidx).view(B, Hkv, G, width, w.D)
    s = torch.matmul(qc, kc.transpose(-1, -2))
    s.mul_(scale)
    return qc, kc, s


def _apply_mask(w, s, m, G, width):
    if m is not None:
        s.view(w.B, w.Hkv, G, w.bm, w.g, width).masked_fill_(~m, _NEG_INF)


def forward_part(part, plan, q, k, v, *, scale, kv_lens=None, doc_ids=None,
                 chunk_bytes=CHUNK_BYTES):
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
    qf = _layout_q(q, Hkv)                     # [B, Hkv, Nq, g, D]
    qf = qf.view(B, Hkv, w.Nq * g, w.D) if w.Nq else qf.view(B, Hkv, 0, w.D)
    kf = k.to(torch.float32)
    vf = v.to(torch.float32)
    dev = q.device
    M = torch.full((B, Hkv, T, bm * g), _NEG_INF, dtype=torch.float32, device=dev)
    L = torch.zeros((B, Hkv, T, bm * g), dtype=torch.float32, device=dev)
    A = torch.zeros((B, Hkv, T, bm * g, Dv), dtype=torch.float32, device=dev)
    for length, full, tiles, starts in w.chunks(per_score_row=2):
        G, width = tiles.numel(), length * w.bn
        qp, rows = w.rows_of(tiles)
        kp, kidx = w.keys_of(starts, length)
        # rows index [B, Hkv, Nq*g, D]: expand each row into its g query heads
        grow = (rows.unsqueeze(1) * g + torch.arange(g, device=dev)).reshape(-1)
        _, _, s = _scores(w, qf, kf, grow, kidx, G, width, scale)
        _apply_mask(w, s, w.mask(qp, kp, full), G, width)
        m = s.amax(-1)                                          # [B, Hkv, G, bm*g]
        m_safe = torch.where(m == _NEG_INF, torch.zeros_like(m), m)
        s.sub_(m_safe.unsqueeze(-1)).exp_()
        l_c = s.sum(-1)
        vc = vf.index_select(2, kidx).view(B, Hkv, G, width, Dv)
        a_c = torch.matmul(s, vc)                               # [B, Hkv, G, bm*g, Dv]
        del s
        td = tiles.to(dev)
        m_old = M.index_select(2, td)
        m_new = torch.maximum(m_old, m)
        ref = torch.where(m_new == _NEG_INF, torch.zeros_like(m_new), m_new)
        # exp(-inf - ref) = 0 for a side that has seen nothing yet, so empty rows stay 0.
        f_old = torch.exp(m_old - ref)
        f_new = torch.exp(m - ref)
        M[:, :, td] = m_new
        L[:, :, td] = L.index_select(2, td) * f_old + l_c * f_new
        A[:, :, td] = A.index_select(2, td) * f_old.unsqueeze(-1) + a_c * f_new.unsqueeze(-1)
    has = L > 0
    lse_slots = torch.where(has, M + torch.log(torch.where(has, L, torch.ones_like(L))),
                            torch.full_like(M, _NEG_INF))
    out_slots = A / torch.where(has, L, torch.ones_like(L)).unsqueeze(-1)
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
    out_p[:, :, rows] = out_slots[:, :, valid]
    lse_p[:, :, rows] = lse_slots[:, :, valid]
    return out_p, lse_p


def backward_part(part, plan, q, k, v, out, lse, dout, *, scale, kv_lens=None, doc_ids=None,
                  dlse=None, chunk_bytes=CHUNK_BYTES):
    """Gradients of the whole attention restricted to the pairs of ``part``: float32
    ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v``.  ``out`` and ``lse`` are the FINAL merged
    output and log-sum-exp (over every part), so ``P = exp(scale * s - lse)`` are the true
    probabilities and summing the parts' gradients gives the full gradient.  ``dlse`` is the
    gradient of a loss with respect to ``lse`` (it adds ``P * dlse`` to ``dS``)."""
    del doc_ids
    w = _Walk(part, plan, q, k, kv_lens, chunk_bytes)
    B, Hkv, g, bm, D, Dv = w.B, w.Hkv, w.g, w.bm, w.D, v.shape[3]
    dev = q.device
    qf = _layout_q(q, Hkv).view(B, Hkv, w.Nq * g, D)
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
    for length, full, tiles, starts in w.chunks(per_score_row=4):
        G, width = tiles.numel(), length * w.bn
        qp, rows = w.rows_of(tiles)
        kp, kidx = w.keys_of(starts, length)
        grow = (rows.unsqueeze(1) * g + torch.arange(g, device=dev)).reshape(-1)
        qc, kc, s = _scores(w, qf, kf, grow, kidx, G, width, scale)
        _apply_mask(w, s, w.mask(qp, kp, full), G, width)
        lrow = lse_eff.index_select(2, grow).view(B, Hkv, G, bm, g)
        pad = (qp < 0).to(dev)[None, None, :, :, None]
        lrow = lrow.masked_fill(pad, inf).view(B, Hkv, G, bm * g)
        p = s.sub_(lrow.unsqueeze(-1)).exp_()                     # [B, Hkv, G, bm*g, width]
        doc = dof.index_select(2, grow).view(B, Hkv, G, bm * g, Dv)
        vc = vf.index_select(2, kidx).view(B, Hkv, G, width, Dv)
        dv_c = torch.matmul(p.transpose(-1, -2), doc)            # [B, Hkv, G, width, Dv]
        dp = torch.matmul(doc, vc.transpose(-1, -2))
        dp.sub_(delta.index_select(2, grow).view(B, Hkv, G, bm * g).unsqueeze(-1))
        ds = dp.mul_(p)
        del p
        ds.mul_(scale)
        dq_c = torch.matmul(ds, kc)                               # [B, Hkv, G, bm*g, D]
        dk_c = torch.matmul(ds.transpose(-1, -2), qc)             # [B, Hkv, G, width, D]
        del ds
        dq.index_add_(2, grow, dq_c.view(B, Hkv, G * bm * g, D))
        dk.index_add_(2, kidx, dk_c.view(B, Hkv, G * width, D))
        dv.index_add_(2, kidx, dv_c.view(B, Hkv, G * width, Dv))
    dq = _unlayout_q(dq.view(B, Hkv, w.Nq, g, D), w.Hq)
    return dq, dk, dv
