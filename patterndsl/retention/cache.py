"""A KV cache that frees memory: per layer and KV head it stores only the retained keys and
values, with their original positions, and decodes over them.

Storage per layer is ``k``/``v`` ``[batch, kv_heads, capacity, head_dim]`` and positions
``[batch, kv_heads, capacity]`` (``-1`` marks a free slot): each batch element and KV head
keeps its own keys (score terms differ between them), shared by the KV head's query heads.
When every KV head's policy has a bound the capacity is that bound (plus the slack below),
allocated once and never grown; otherwise it grows in chunks up to ``max_len``.

Positions are per batch element: ``update(..., valid=)`` marks padding tokens, which are
never stored, never attended and not counted, so a left-padded element's first real token is
its position 0 and each element has its own logical length ``n`` (``lengths(layer)``).

Protocol: ``update(layer, k, v)`` appends a prefill chunk or a decode step and evicts what the
policy does not keep; ``decode(layer, q)`` attends the last ``r`` positions of each element
(``r <= rows``, the constructor's lookback: eviction keeps what any query from ``n - rows``
on may attend) over the retained keys, applying the pattern at their original positions.
All ``r`` rows of a call are resolved against the element's ``n`` (LANGUAGE.md "Positions"),
while ``auto`` resolves each future query against its own ``q + 1``; so with ``r > 1`` decoding
is lossless for patterns whose verdict does not depend on ``n`` (no negative indices,
``random`` or ``blockwise``), and with ``r = 1`` for every static pattern.

Score terms that need attention: ``heavy`` accumulates the probability each stored key gets
from ``decode`` (fused in the decode kernel) and from the queries passed as
``update(..., q=)``, and is decided after each of those steps; an ``update`` without ``q``
only appends (storage has ``rows`` slots of slack for that), so a decode step is
``update`` then ``decode``.  ``snap`` is decided when the prompt ends, which is the first
``update`` of a layer: it needs that update's ``q`` (the prompt's queries).  An ``adaptive``
budget fixes each KV head's counts then too.
"""
from __future__ import annotations

import torch

from .. import ir
from ..args import checked_int
from ..budgets import adaptive_split
from ..errors import PsparseUsageError
from .attend import BACKENDS, attend, head_groups
from .policy import best, head_policies
from .prompt import prompt_column_probs

__all__ = ["KVCache"]

_CHUNK = 256
# Elements of the score tile the torch backend builds per row block of a prompt.
_TORCH_TILE = 1 << 24


def _program(spec) -> ir.Program:
    if isinstance(spec, ir.Program):
        return spec
    if isinstance(spec, str):
        from ..spec import parse
        spec = parse(spec)
    return spec.canonical_ir


class KVCache:
    """Retained keys and values of every layer (see the module docstring).

    ``bounded``: every KV head's policy has a bound, and storage was allocated at it;
    ``capacity``: the slots per (layer, KV head) allocated now, the largest over layers;
    ``lengths(layer)``: each element's logical length ``n`` (positions so far, evicted
    ones included, padding not); ``backend``: where ``decode`` runs ("torch",
    "interpret" or "triton"; default "triton" on CUDA, else "torch")."""

    def __init__(self, spec, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, *,
                 num_heads: int | None = None, dtype=torch.float32, device="cpu",
                 max_len: int | None = None, chunk: int = _CHUNK, rows: int = 1,
                 backend: str | None = None):
        self.program = _program(spec)
        self.num_layers = checked_int("num_layers", num_layers, 1)
        self.batch = checked_int("batch", batch, 1)
        self.num_kv_heads = checked_int("num_kv_heads", num_kv_heads, 1)
        self.head_dim = checked_int("head_dim", head_dim, 1)
        self.num_heads = self.num_kv_heads if num_heads is None else checked_int("num_heads", num_heads, 1)
        self.max_len = None if max_len is None else checked_int("max_len", max_len, 1)
        self.chunk = checked_int("chunk", chunk, 1)
        self.rows = checked_int("rows", rows, 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise PsparseUsageError(f"dtype must be a floating torch dtype, not {dtype!r}")
        self.dtype = dtype
        self.device = torch.device(device)
        if backend is None:
            backend = "triton" if self.device.type == "cuda" else "torch"
        if backend not in BACKENDS:
            raise PsparseUsageError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.group = self.num_heads // self.num_kv_heads
        self.policies = [head_policies(self.program, self.num_heads, self.num_kv_heads, layer,
                                       self.num_layers)
                         for layer in range(self.num_layers)]
        self.groups = [head_groups(self.program, layer, self.num_heads)
                       for layer in range(self.num_layers)]
        self.keep_all = all(p.keep_all for ps in self.policies for p in ps)
        self.heavy = any(p.heavy for ps in self.policies for p in ps)
        self.snap = any(any(t.kind == "snap" for t in p.terms) for ps in self.policies for p in ps)
        bounds = [None if p.bound is None else p.bound + self._slack(p)
                  for ps in self.policies for p in ps]
        self.bounded = all(b is not None for b in bounds)
        if self.bounded:
            cap = max(max(bounds), 1)
            if self.max_len is not None:
                cap = min(cap, self.max_len)
        else:
            cap = min(self.chunk, self.max_len or self.chunk)
        self._cap = [cap] * self.num_layers
        B, H = self.batch, self.num_kv_heads
        shape = (B, H, cap, self.head_dim)
        dev = self.device
        self._k = [torch.zeros(shape, dtype=dtype, device=dev) for _ in range(num_layers)]
        self._v = [torch.zeros(shape, dtype=dtype, device=dev) for _ in range(num_layers)]
        self._pos = [torch.full((B, H, cap), -1, dtype=torch.int64, device=dev)
                     for _ in range(num_layers)]
        # heavy: accumulated attention probability per slot (float64: sums of many small terms)
        self._acc = [torch.zeros((B, H, cap), dtype=torch.float64, device=dev) if self.heavy else None
                     for _ in range(num_layers)]
        # snap: the slots its once-made selection keeps
        self._snapped = [torch.zeros((B, H, cap), dtype=torch.bool, device=dev) if self.snap else None
                         for _ in range(num_layers)]
        self._held = [[[0] * H for _ in range(B)] for _ in range(num_layers)]
        self._n = [[0] * B for _ in range(num_layers)]
        self._started = [False] * self.num_layers
        self._counts = [[[tuple(t.count for t in self.policies[layer][h].terms) for h in range(H)]
                         for _ in range(B)] for layer in range(num_layers)]

    def _slack(self, policy) -> int:
        """Slots beyond the policy's bound: the lookback of ``rows`` queries, and for heavy
        the keys an update appends before the step's attention decides."""
        return (self.rows - 1) + (self.rows if policy.heavy else 0)

    # -- what it holds -------------------------------------------------------
    @property
    def capacity(self) -> int:
        return max(self._cap)

    @property
    def why(self) -> str:
        """Why the cache grows ('' when bounded)."""
        return next((p.why for ps in self.policies for p in ps if p.bound is None), "")

    def length(self, layer: int) -> int:
        """The logical length ``n`` of ``layer``, shared by every batch element (see
        ``lengths`` when padding made them differ)."""
        ns = self._n[self._layer(layer)]
        if len(set(ns)) != 1:
            raise PsparseUsageError(f"the batch elements have different lengths {ns}: use lengths(layer)")
        return ns[0]

    def lengths(self, layer: int) -> torch.Tensor:
        """int64 ``[batch]``: each element's logical length (padding not counted)."""
        return torch.tensor(self._n[self._layer(layer)], dtype=torch.int64)

    def held(self, layer: int) -> list[int]:
        """Keys stored now for each KV head of ``layer`` (the most over batch elements)."""
        held = self._held[self._layer(layer)]
        return [max(held[b][h] for b in range(self.batch)) for h in range(self.num_kv_heads)]

    def positions(self, layer: int, kv_head: int, batch: int = 0) -> torch.Tensor:
        """The original positions of the keys stored for ``kv_head`` of ``layer`` and batch
        element ``batch``, ascending."""
        layer = self._layer(layer)
        return self._pos[layer][batch, kv_head, : self._held[layer][batch][kv_head]].clone()

    def scores(self, layer: int, kv_head: int, batch: int = 0) -> torch.Tensor:
        """``heavy``'s accumulated attention probability of each stored key (as ``positions``)."""
        layer = self._layer(layer)
        if self._acc[layer] is None:
            raise PsparseUsageError("this cache's policy has no heavy(...) term")
        return self._acc[layer][batch, kv_head, : self._held[layer][batch][kv_head]].clone()

    def counts(self, layer: int, kv_head: int, batch: int = 0) -> tuple:
        """The score terms' counts of one KV head (an adaptive budget sets them at the prompt)."""
        return self._counts[self._layer(layer)][batch][kv_head]

    def _layer(self, layer) -> int:
        layer = checked_int("layer", layer, 0)
        if layer >= self.num_layers:
            raise PsparseUsageError(f"layer={layer} is outside num_layers={self.num_layers}")
        return layer

    # -- checks ----------------------------------------------------------------
    def _check_kv(self, name, x, length=None):
        if not isinstance(x, torch.Tensor):
            raise PsparseUsageError(f"{name} must be a tensor, not {type(x).__name__}")
        want = (self.batch, self.num_kv_heads, length if length is not None else x.shape[2]
                if x.dim() == 4 else -1, self.head_dim)
        if x.dim() != 4 or tuple(x.shape) != want or x.shape[2] < 1:
            raise PsparseUsageError(
                f"{name} must be [batch={self.batch}, kv_heads={self.num_kv_heads}, new positions >= 1, "
                f"head_dim={self.head_dim}]; got {list(x.shape)}")
        self._check_place(name, x)

    def _check_place(self, name, x):
        if x.dtype != self.dtype:
            raise PsparseUsageError(f"{name} has dtype {x.dtype} but the cache holds {self.dtype}")
        if x.device != self.device:
            raise PsparseUsageError(f"{name} is on {x.device} but the cache is on {self.device}")

    def _check_q(self, q, rows_ok):
        if not isinstance(q, torch.Tensor) or q.dim() != 4 or q.shape[0] != self.batch or \
                q.shape[1] != self.num_heads or q.shape[3] != self.head_dim or not rows_ok(q.shape[2]):
            got = list(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            return got
        self._check_place("q", q)
        return None

    # -- updates ---------------------------------------------------------------
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, valid=None, q=None,
               scale: float | None = None) -> None:
        """Append ``k``/``v`` ``[batch, kv_heads, t, head_dim]`` (a prefill chunk or a decode
        step) and evict what the policy does not keep.  ``valid`` (bool ``[batch, t]``):
        False marks padding, never stored nor counted.  ``q`` (``[batch, heads, t, head_dim]``,
        the chunk's queries) feeds ``heavy`` and ``snap``.  Any error leaves the cache
        unchanged."""
        layer = self._layer(layer)
        self._check_kv("k", k)
        t = k.shape[2]
        self._check_kv("v", v, t)
        if valid is not None:
            if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or \
                    tuple(valid.shape) != (self.batch, t):
                got = (f"{valid.dtype} {list(valid.shape)}" if isinstance(valid, torch.Tensor)
                       else type(valid).__name__)
                raise PsparseUsageError(f"valid must be a bool tensor [batch={self.batch}, t={t}]; got {got}")
            if valid.device != self.device:
                raise PsparseUsageError(f"valid is on {valid.device} but the cache is on {self.device}")
        if q is not None:
            got = self._check_q(q, lambda r: r == t)
            if got is not None:
                raise PsparseUsageError(
                    f"q must be [batch={self.batch}, heads={self.num_heads}, t={t}, "
                    f"head_dim={self.head_dim}] (the chunk's queries); got {got}")
        first = not self._started[layer]
        policies = self.policies[layer]
        if first and q is None and any(any(t_.kind == "snap" for t_ in p.terms) for p in policies):
            raise PsparseUsageError(
                "kv = ... uses snap, decided when the prompt ends: pass the prompt's queries "
                "to its update, update(layer, k, v, q=...)")
        B, H = self.batch, self.num_kv_heads
        vmask = torch.ones((B, t), dtype=torch.bool) if valid is None else valid.cpu()
        ns_old = self._n[layer]
        counts = [int(vmask[b].sum()) for b in range(B)]
        ns = [ns_old[b] + counts[b] for b in range(B)]
        # new positions per token, -1 for padding
        new_pos = torch.full((B, t), -1, dtype=torch.int64)
        for b in range(B):
            new_pos[b, vmask[b]] = torch.arange(ns_old[b], ns[b])
        new_pos = new_pos.to(self.device)
        held = self._held[layer]
        if q is None and not first and self._append_fast(layer, k, v, vmask, ns):
            return
        deciding = q is not None
        probs = probs_win = None
        hmax = max(max(r) for r in held)
        if q is not None and any(p.needs_attention for p in policies):
            kt = torch.cat([self._k[layer][:, :, :hmax], k], dim=2)
            vt = torch.cat([self._v[layer][:, :, :hmax], v], dim=2)
            pt = torch.cat([self._pos[layer][:, :, :hmax], new_pos[:, None].expand(B, H, t)], dim=2)
            scale_ = self.head_dim ** -0.5 if scale is None else float(scale)
            qpos = new_pos
            if any(p.heavy for p in policies):
                # a whole prompt into an empty cache: on the plan (the interpreter backend
                # keeps exercising the kernel; unplannable patterns get attend's error)
                if hmax == 0 and self.backend != "interpret" and not any(
                        e.needs_doc_ids or e.is_dynamic for e, _ in self.groups[layer]):
                    probs = self._prompt_probs_tiled(layer, k, q, vmask, scale_)
                else:
                    probs = self._prompt_probs(layer, kt, vt, pt, q, qpos, ns, scale_)
            if first and self.snap:
                probs_win = {}
                for w in sorted({t_.window for p in policies for t_ in p.terms if t_.kind == "snap"}):
                    lim = torch.tensor([n - w for n in ns], device=self.device)[:, None]
                    qw = torch.where(qpos >= lim, qpos, torch.full_like(qpos, -1))
                    probs_win[w] = self._prompt_probs(layer, kt, vt, pt, q, qw, ns, scale_)
        plans = []
        need = 0
        new_counts = [[list(c) for c in r] for r in self._counts[layer]]
        for b in range(B):
            idx_new = vmask[b].nonzero().flatten().to(self.device)
            tmp = []
            for h in range(H):
                c = held[b][h]
                P = torch.cat([self._pos[layer][b, h, :c], new_pos[b, idx_new]])
                state = dict(pos=P, old=c, idx_new=idx_new)
                if self.heavy:
                    acc = torch.cat([self._acc[layer][b, h, :c],
                                     torch.zeros(idx_new.numel(), dtype=torch.float64, device=self.device)])
                    if probs is not None:
                        sel = torch.cat([torch.arange(c, device=self.device), hmax + idx_new])
                        acc = acc + probs[b, h, sel].double()
                    state["acc"] = acc
                if self.snap:
                    flag = torch.cat([self._snapped[layer][b, h, :c],
                                      torch.full((idx_new.numel(),), not first, dtype=torch.bool,
                                                 device=self.device)])
                    state["snap"] = flag
                    if probs_win is not None:
                        sel = torch.cat([torch.arange(c, device=self.device), hmax + idx_new])
                        state["win"] = {w: pw[b, h, sel] for w, pw in probs_win.items()}
                if any(t_.kind == "norm" for t_ in policies[h].terms):
                    keys = torch.cat([self._k[layer][b, h, :c], k[b, h, idx_new]]).float()
                    state["norm"] = torch.linalg.vector_norm(keys, dim=-1)
                tmp.append(state)
            kept = self._decide(policies, tmp, ns[b], deciding=deciding, prompt_end=first,
                                counts=new_counts[b])
            for h in range(H):
                plans.append((b, h, tmp[h], kept[h]))
                need = max(need, int(kept[h].sum()))
        self._fit(layer, need, ns, pending=any(p.heavy for p in policies) and not deciding)
        self._write(layer, plans, k, v)
        self._n[layer] = ns
        self._started[layer] = True
        self._counts[layer] = [[tuple(c) for c in r] for r in new_counts]

    def _prompt_probs_tiled(self, layer, k, q, vmask, scale):
        """``_prompt_probs`` for a whole prompt into an empty cache, on the pattern's block
        plan (:mod:`.prompt`): only visited tiles, never ``t x t``.  A padded element is
        taken alone, its real tokens being positions ``0..n-1``."""
        B, t = vmask.shape
        groups = self.groups[layer]
        if bool(vmask.all()):
            return prompt_column_probs(groups, q, k, scale=scale)
        total = torch.zeros((B, self.num_kv_heads, t), dtype=torch.float32, device=self.device)
        for b in range(B):
            idx = vmask[b].nonzero().flatten().to(self.device)
            if idx.numel():
                total[b:b + 1, :, idx] = prompt_column_probs(
                    groups, q[b:b + 1, :, idx], k[b:b + 1, :, idx], scale=scale)
        return total

    def _prompt_probs(self, layer, kt, vt, pt, q, qpos, ns, scale):
        """Attention probability per temporary slot summed over the chunk's query rows
        ``qpos`` (-1: not counted), computed in row blocks."""
        t = q.shape[2]
        C = kt.shape[2]
        if self.backend == "torch":
            block = max(1, _TORCH_TILE // max(1, self.group * C))
        else:
            block = max(1, 64 // self.group)
        total = torch.zeros((self.batch, self.num_kv_heads, C), dtype=torch.float32, device=self.device)
        for i in range(0, t, block):
            qp = qpos[:, i:i + block]
            if not bool((qp >= 0).any()):
                continue
            _, p = attend(self.groups[layer], kt, vt, pt, q[:, :, i:i + block], qp, ns,
                          scale=scale, with_probs=True, backend=self.backend)
            total += p
        return total

    def _base(self, policy, P, n):
        """Position terms' verdict, with the lookback of ``rows`` queries."""
        ne = n - self.rows + 1
        if ne < 1:
            return torch.ones_like(P, dtype=torch.bool)
        return policy.keep(P, ne) | (P >= ne)

    def _decide(self, policies, tmp, n, *, deciding, prompt_end, counts):
        """bool per slot of each KV head's candidates (``tmp[h]["pos"]``, ascending): the
        position terms, then each score term in order among what is left."""
        H = len(policies)
        kept = [self._base(policies[h], tmp[h]["pos"], n) for h in range(H)]
        terms = policies[0].terms
        floor = policies[0].adaptive
        for j, term in enumerate(terms):
            cands = [~kept[h] for h in range(H)]
            if term.kind == "snap":
                if prompt_end:
                    picks = self._snap_pick(term, tmp, cands, n, floor, counts, j)
                else:
                    picks = [cands[h] & tmp[h]["snap"] for h in range(H)]
            elif term.kind == "heavy" and not deciding:
                # decided after the step's attention (decode, or an update with q)
                picks = cands
            else:
                score = [tmp[h]["acc"] if term.kind == "heavy" else
                         (-tmp[h]["norm"] if term.low else tmp[h]["norm"]) for h in range(H)]
                if prompt_end and floor is not None:
                    self._adapt(term, score, cands, floor, counts, j)
                picks = [best(score[h], cands[h], counts[h][j]) for h in range(H)]
            kept = [kept[h] | picks[h] for h in range(H)]
        return kept

    @staticmethod
    def _adapt(term, score, cands, floor, counts, j):
        """Each head's count under ``adaptive(floor)``, from the prompt's scores."""
        H = len(score)
        lens = {s.numel() for s in score}
        if len(lens) != 1:
            raise AssertionError("adaptive counts need the prompt's slots aligned across heads")
        s = torch.stack([x.double() for x in score])
        valid = torch.stack(cands)
        got = adaptive_split(s, term.count, floor, valid)
        for h in range(H):
            counts[h][j] = int(got[h].sum())

    def _snap_pick(self, term, tmp, cands, n, floor, counts, j):
        """SnapKV at the prompt's end: its last ``window`` keys, plus the best others by the
        window queries' attention, max-pooled over ``pool`` neighbouring keys."""
        import torch.nn.functional as F
        H = len(tmp)
        pooled, pools, wins = [], [], []
        for h in range(H):
            P = tmp[h]["pos"]
            win = P >= n - term.window
            raw = tmp[h]["win"][term.window].double()
            # pool over the keys in position order (padding never stored, so they are adjacent)
            x = F.max_pool1d(raw[None, None], term.pool, stride=1, padding=term.pool // 2)[0, 0] \
                if raw.numel() else raw
            pooled.append(x)
            wins.append(win)
            pools.append(cands[h] & ~win)
        if floor is not None:
            self._adapt(term, pooled, pools, floor, counts, j)
        picks = []
        for h in range(H):
            pick = best(pooled[h], pools[h], counts[h][j]) | (wins[h] & cands[h])
            tmp[h]["snap"] = tmp[h]["snap"] | pick | wins[h]
            picks.append(pick)
        return picks

    def _fit(self, layer, need, ns, *, pending=False):
        """Make room for ``need`` slots per KV head, or refuse (nothing changed yet)."""
        cap = self._cap[layer]
        if need <= cap:
            return
        if pending and self.bounded:
            raise PsparseUsageError(
                f"layer {layer} would hold {need} keys per KV head, past its {cap} slots: heavy(...) "
                "is decided after each step's attention, so follow each update of at most "
                f"rows={self.rows} tokens with decode(...), or pass the chunk's queries as q=")
        if self.max_len is not None and need > self.max_len:
            raise PsparseUsageError(
                f"layer {layer} would hold {need} keys per KV head at n = {max(ns)}, past "
                f"max_len={self.max_len} ({self.why or 'the bound exceeds max_len'}); "
                "pass a larger max_len")
        if self.bounded:
            raise AssertionError("a bounded policy kept more keys than its bound")
        grown = -(-need // self.chunk) * self.chunk
        if self.max_len is not None:
            grown = min(grown, self.max_len)
        self._grow(layer, grown)

    def _write(self, layer, plans, k, v):
        """Store each (element, KV head)'s kept slots, old ones first, in position order.

        Batched over the plans: the old slots are compacted by one gather per tensor (skipped
        when nothing old is evicted), the new ones written by one indexed store."""
        kk, vv, pos = self._k[layer], self._v[layer], self._pos[layer]
        acc, snap = self._acc[layer], self._snapped[layer]
        held = self._held[layer]
        dev = self.device
        B, H = self.batch, self.num_kv_heads
        c = max(state["old"] for _, _, state, _ in plans)
        keep_old = torch.zeros((B, H, c), dtype=torch.bool, device=dev)
        acc_old = torch.zeros((B, H, c), dtype=torch.float64, device=dev) if acc is not None else None
        snap_old = torch.zeros((B, H, c), dtype=torch.bool, device=dev) if snap is not None else None
        nb, src, npos, nacc, nsnap = [], [], [], [], []
        for b, h, state, keep in plans:
            co = state["old"]
            keep_old[b, h, :co] = keep[:co]
            if acc is not None:
                acc_old[b, h, :co] = state["acc"][:co]
            if snap is not None:
                snap_old[b, h, :co] = state["snap"][:co]
            keep_new = keep[co:]
            idx = state["idx_new"][keep_new]
            e = idx.numel()
            if e:
                nb.append((b, h, e))
                src.append(idx)
                npos.append(state["pos"][co:][keep_new])
                if acc is not None:
                    nacc.append(state["acc"][co:][keep_new])
                if snap is not None:
                    nsnap.append(state["snap"][co:][keep_new])
        m = self._compact(layer, keep_old, acc_old, snap_old)
        ml = m.tolist()
        if nb:
            bi = torch.cat([torch.full((e,), b, dtype=torch.int64) for b, _, e in nb]).to(dev)
            hi = torch.cat([torch.full((e,), h, dtype=torch.int64) for _, h, e in nb]).to(dev)
            di = torch.cat([torch.arange(ml[b][h], ml[b][h] + e) for b, h, e in nb]).to(dev)
            si = torch.cat(src)
            kk[bi, hi, di] = k[bi, hi, si]
            vv[bi, hi, di] = v[bi, hi, si]
            pos[bi, hi, di] = torch.cat(npos)
            if acc is not None:
                acc[bi, hi, di] = torch.cat(nacc)
            if snap is not None:
                snap[bi, hi, di] = torch.cat(nsnap)
        added = {(b, h): e for b, h, e in nb}
        for b, h, _, _ in plans:
            held[b][h] = ml[b][h] + added.get((b, h), 0)

    def _simple(self, policies) -> bool:
        """Score terms (if any) all ``heavy`` with fixed counts: the step's bookkeeping can be
        batched over elements and KV heads."""
        return all(p.adaptive is None and all(t.kind == "heavy" for t in p.terms) for p in policies)

    def _append_fast(self, layer, k, v, vmask, ns) -> bool:
        """``update`` without queries, batched over elements and KV heads, where they are in
        step (no padding in the chunk, equal lengths and held counts): the position terms
        decide, heavy waits for the step's attention.  False: take the general path (nothing
        changed)."""
        policies = self.policies[layer]
        held = self._held[layer]
        B, H = self.batch, self.num_kv_heads
        t = k.shape[2]
        c = held[0][0]
        if not self._simple(policies) or len(set(ns)) != 1 or \
                any(x != c for r in held for x in r) or not bool(vmask.all()):
            return False
        n = ns[0]
        dev = self.device
        newp = torch.arange(n - t, n, device=dev)
        P = torch.cat([self._pos[layer][:, :, :c], newp.expand(B, H, t)], dim=2)
        keep = torch.ones((B, H, c + t), dtype=torch.bool, device=dev)
        for h, pol in enumerate(policies):
            if not pol.terms:
                keep[:, h] = self._base(pol, P[:, h], n)
        if not bool(keep[..., c:].all()):
            return False
        need = int(keep.sum(-1).max())
        self._fit(layer, need, ns, pending=any(p.heavy for p in policies))
        m = self._compact(layer, keep[..., :c], None if self._acc[layer] is None
                          else self._acc[layer][:, :, :c].clone(), None)
        if not bool((m == m[0, 0]).all()):
            raise AssertionError("elements in step kept different counts")
        m0 = int(m[0, 0])
        self._k[layer][:, :, m0:m0 + t] = k
        self._v[layer][:, :, m0:m0 + t] = v
        self._pos[layer][:, :, m0:m0 + t] = newp
        if self._acc[layer] is not None:
            self._acc[layer][:, :, m0:m0 + t] = 0
        self._held[layer] = [[m0 + t] * H for _ in range(B)]
        self._n[layer] = list(ns)
        return True

    def _settle_fast(self, layer) -> bool:
        """``_settle`` batched over elements and KV heads (see ``_simple``): position terms,
        then each heavy term's best among the rest, ties evicting the earliest."""
        policies = self.policies[layer]
        if not self._simple(policies) or self._snapped[layer] is not None:
            return False
        ns = self._n[layer]
        if len(set(ns)) != 1:
            return False
        n = ns[0]
        B, H = self.batch, self.num_kv_heads
        c = max(max(r) for r in self._held[layer])
        P = self._pos[layer][:, :, :c]
        present = P >= 0
        kept = torch.stack([self._base(policies[h], P[:, h], n) for h in range(H)], dim=1) & present
        acc = self._acc[layer][:, :, :c]
        counts = torch.tensor([[list(self._counts[layer][b][h]) for h in range(H)] for b in range(B)],
                              dtype=torch.int64, device=self.device)          # [B, H, terms]
        for j in range(counts.shape[2]):
            cand = present & ~kept
            # later slots first, then a stable sort by score: ties keep the later slot
            score = torch.where(cand, acc, torch.full_like(acc, float("-inf"))).flip(-1)
            order = torch.sort(score, dim=-1, descending=True, stable=True).indices
            take = (torch.arange(c, device=self.device) < counts[:, :, j, None]) & cand.flip(-1).gather(2, order)
            pick = torch.zeros_like(cand)
            pick.scatter_(2, c - 1 - order, take)
            kept = kept | pick
        m = self._compact(layer, kept, acc.clone(), None)
        self._held[layer] = m.tolist()
        return True

    def _compact(self, layer, keep_old, acc_old, snap_old):
        """Move each (element, KV head)'s kept old slots ``keep_old [B, H, c]`` to the front in
        their order, with their scores ``acc_old`` and snap flags ``snap_old``; the freed
        slots cleared.  Returns the kept counts ``[B, H]``."""
        kk, vv, pos = self._k[layer], self._v[layer], self._pos[layer]
        acc, snap = self._acc[layer], self._snapped[layer]
        dev = self.device
        B, H, c = keep_old.shape
        m = keep_old.sum(-1)                                               # [B, H]
        live = torch.arange(c, device=dev) < m[..., None]                 # [B, H, c]
        if c:
            if not bool(keep_old.eq(pos[:, :, :c] >= 0).all()):
                # kept first, each side in its order: a stable sort of "evicted"
                order = torch.argsort((~keep_old).to(torch.int8), dim=-1, stable=True)
                # row copies by advanced indexing (a gather over head_dim is elementwise)
                ib = torch.arange(B, device=dev)[:, None, None]
                ih = torch.arange(H, device=dev)[None, :, None]
                kk[:, :, :c] = kk[ib, ih, order]
                vv[:, :, :c] = vv[ib, ih, order]
                pos[:, :, :c] = torch.where(live, pos[:, :, :c].gather(2, order), -1)
                if acc is not None:
                    acc_old = acc_old.gather(2, order)
                if snap is not None:
                    snap_old = snap_old.gather(2, order)
            if acc is not None:
                acc[:, :, :c] = torch.where(live, acc_old, 0.0)
            if snap is not None:
                snap[:, :, :c] = snap_old & live
        return m

    def _grow(self, layer: int, cap: int) -> None:
        old = self._cap[layer]
        pad = cap - old
        B, H = self.batch, self.num_kv_heads
        shape = (B, H, pad, self.head_dim)
        self._k[layer] = torch.cat([self._k[layer], self._k[layer].new_zeros(shape)], dim=2)
        self._v[layer] = torch.cat([self._v[layer], self._v[layer].new_zeros(shape)], dim=2)
        self._pos[layer] = torch.cat([self._pos[layer], self._pos[layer].new_full((B, H, pad), -1)], dim=2)
        if self._acc[layer] is not None:
            self._acc[layer] = torch.cat([self._acc[layer], self._acc[layer].new_zeros((B, H, pad))], dim=2)
        if self._snapped[layer] is not None:
            self._snapped[layer] = torch.cat(
                [self._snapped[layer], self._snapped[layer].new_zeros((B, H, pad))], dim=2)
        self._cap[layer] = cap

    # -- decoding --------------------------------------------------------------
    def decode(self, layer: int, q: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """Attention of the last ``r`` positions of each element: ``q [batch, num_heads, r,
        head_dim]`` -> ``[batch, num_heads, r, head_dim]`` over the retained keys, allowed
        where the query head's pattern allows (the key at its original position, the
        pattern resolved against the element's ``n``).  A row with no allowed key (or before
        the element's first position) gets 0.  Under ``heavy`` the step's probabilities
        are accumulated and the policy decided."""
        layer = self._layer(layer)
        if not self._started[layer] or not any(self._n[layer]):
            raise PsparseUsageError("decode before prefill: call update(layer, k, v) first")
        limit = None if self.keep_all else self.rows
        got = self._check_q(q, lambda r: r >= 1 and (limit is None or r <= limit))
        if got is not None:
            rows = "1" if limit == 1 else f"1..{limit}" if limit else ">= 1"
            raise PsparseUsageError(
                f"q must be [batch={self.batch}, heads={self.num_heads}, rows {rows}, "
                f"head_dim={self.head_dim}] (one decode query at n - 1 when rows=1; a cache "
                f"built with rows=r serves r); got {got}")
        scale = self.head_dim ** -0.5 if scale is None else float(scale)
        ns = self._n[layer]
        r = q.shape[2]
        qpos = torch.tensor([[n - r + i for i in range(r)] for n in ns], dtype=torch.int64)
        qpos = qpos.clamp(min=-1).to(self.device)
        c = max(max(x) for x in self._held[layer])
        heavy = self._acc[layer] is not None
        if c == 0:
            return torch.zeros_like(q)
        out, probs = attend(self.groups[layer], self._k[layer][:, :, :c], self._v[layer][:, :, :c],
                            self._pos[layer][:, :, :c], q, qpos, ns, scale=scale,
                            with_probs=heavy, backend=self.backend)
        if heavy:
            self._settle(layer, probs)
        return out.to(q.dtype)

    def _settle(self, layer, probs):
        """heavy after a decode step: add its probabilities, keep the policy's choice."""
        acc = self._acc[layer]
        c = probs.shape[2]
        acc[:, :, :c] += probs.double()
        if self._settle_fast(layer):
            return
        policies = self.policies[layer]
        plans = []
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        for b in range(self.batch):
            tmp = []
            for h in range(self.num_kv_heads):
                ch = self._held[layer][b][h]
                state = dict(pos=self._pos[layer][b, h, :ch], old=ch, idx_new=empty,
                             acc=acc[b, h, :ch])
                if self._snapped[layer] is not None:
                    state["snap"] = self._snapped[layer][b, h, :ch]
                if any(t_.kind == "norm" for t_ in policies[h].terms):
                    state["norm"] = torch.linalg.vector_norm(self._k[layer][b, h, :ch].float(), dim=-1)
                tmp.append(state)
            kept = self._decide(policies, tmp, self._n[layer][b], deciding=True, prompt_end=False,
                                counts=self._counts[layer][b])
            plans.extend((b, h, dict(tmp[h], acc=tmp[h]["acc"].clone(),
                                     **({"snap": tmp[h]["snap"].clone()} if "snap" in tmp[h] else {})),
                          kept[h]) for h in range(self.num_kv_heads))
        self._write(layer, plans, None, None)
