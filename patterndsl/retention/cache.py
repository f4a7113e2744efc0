"""A KV cache that frees memory: per layer and KV head it stores only the retained keys and
values, with their original positions, and decodes over them.

Storage per layer is ``k``/``v`` ``[batch, kv_heads, capacity, head_dim]`` and positions
``[batch, kv_heads, capacity]`` (``-1`` marks a free slot): each batch element and KV head
keeps its own keys (``norm`` scores differ between them), shared by the KV head's query heads.
When every KV head's policy has a bound the capacity is that bound, allocated once and
never grown; otherwise it grows in chunks up to ``max_len``.

Protocol: ``update(layer, k, v)`` appends a prefill chunk or one decode step and evicts what
the policy does not keep (under ``auto``: what no query from ``n - 1`` on may attend); ``decode(layer, q)`` then attends the query at
``n - 1`` over the retained keys, applying the pattern at their original positions.  Queries
earlier than ``n - 1`` (a multi-row chunk) are not served from the cache: their keys may
already be evicted, so the caller runs the sparse kernel on the chunk itself.
"""
from __future__ import annotations


import torch

from .. import ir
from ..errors import PsparseUsageError
from ..args import checked_int
from ..plan.context import Context
from ..plan.predicate import evaluate
from .policy import head_policies, pick_scores

__all__ = ["KVCache"]

_CHUNK = 256


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
    ``length(layer)``: the logical length ``n`` (positions so far, evicted ones included)."""

    def __init__(self, spec, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, *,
                 num_heads: int | None = None, dtype=torch.float32, device="cpu",
                 max_len: int | None = None, chunk: int = _CHUNK):
        self.program = _program(spec)
        self.num_layers = checked_int("num_layers", num_layers, 1)
        self.batch = checked_int("batch", batch, 1)
        self.num_kv_heads = checked_int("num_kv_heads", num_kv_heads, 1)
        self.head_dim = checked_int("head_dim", head_dim, 1)
        self.num_heads = self.num_kv_heads if num_heads is None else checked_int("num_heads", num_heads, 1)
        self.max_len = None if max_len is None else checked_int("max_len", max_len, 1)
        self.chunk = checked_int("chunk", chunk, 1)
        self.dtype = dtype
        self.device = torch.device(device)
        self.group = self.num_heads // self.num_kv_heads
        self.policies = [head_policies(self.program, self.num_heads, self.num_kv_heads, layer,
                                       self.num_layers)
                         for layer in range(self.num_layers)]
        bounds = [p.bound for ps in self.policies for p in ps]
        self.bounded = all(b is not None for b in bounds)
        if self.bounded:
            cap = max(max(bounds), 1)
            if self.max_len is not None:
                cap = min(cap, self.max_len)
        else:
            cap = min(self.chunk, self.max_len or self.chunk)
        self._cap = [cap] * self.num_layers
        shape = (self.batch, self.num_kv_heads, cap, self.head_dim)
        self._k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self._v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self._pos = [torch.full((self.batch, self.num_kv_heads, cap), -1, dtype=torch.int64,
                                device=self.device) for _ in range(num_layers)]
        self._held = [[[0] * self.num_kv_heads for _ in range(self.batch)] for _ in range(num_layers)]
        self._n = [0] * self.num_layers

    # -- what it holds -------------------------------------------------------
    @property
    def capacity(self) -> int:
        return max(self._cap)

    @property
    def why(self) -> str:
        """Why the cache grows ('' when bounded)."""
        return next((p.why for ps in self.policies for p in ps if p.bound is None), "")

    def length(self, layer: int) -> int:
        return self._n[self._layer(layer)]

    def held(self, layer: int) -> list[int]:
        """Keys stored now for each KV head of ``layer`` (the most over batch elements)."""
        held = self._held[self._layer(layer)]
        return [max(held[b][h] for b in range(self.batch)) for h in range(self.num_kv_heads)]

    def positions(self, layer: int, kv_head: int, batch: int = 0) -> torch.Tensor:
        """The original positions of the keys stored for ``kv_head`` of ``layer`` and batch
        element ``batch``, ascending."""
        layer = self._layer(layer)
        return self._pos[layer][batch, kv_head, : self._held[layer][batch][kv_head]].clone()

    def _layer(self, layer) -> int:
        layer = checked_int("layer", layer, 0)
        if layer >= self.num_layers:
            raise PsparseUsageError(f"layer={layer} is outside num_layers={self.num_layers}")
        return layer

    # -- updates ---------------------------------------------------------------
    def _check_kv(self, name, x, length=None):
        if not isinstance(x, torch.Tensor):
            raise PsparseUsageError(f"{name} must be a tensor, not {type(x).__name__}")
        want = (self.batch, self.num_kv_heads, length if length is not None else x.shape[2]
                if x.dim() == 4 else -1, self.head_dim)
        if x.dim() != 4 or tuple(x.shape) != want or x.shape[2] < 1:
            raise PsparseUsageError(
                f"{name} must be [batch={self.batch}, kv_heads={self.num_kv_heads}, new positions >= 1, "
                f"head_dim={self.head_dim}]; got {list(x.shape)}")
        if x.dtype != self.dtype:
            raise PsparseUsageError(f"{name} has dtype {x.dtype} but the cache holds {self.dtype}")
        if x.device != self.device:
            raise PsparseUsageError(f"{name} is on {x.device} but the cache is on {self.device}")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append ``k``/``v`` ``[batch, kv_heads, T, head_dim]`` (a prefill chunk or a decode
        step, positions ``n .. n + T - 1``) and evict what no query from ``n + T - 1`` on may
        attend.  Any error leaves the cache unchanged."""
        layer = self._layer(layer)
        self._check_kv("k", k)
        self._check_kv("v", v, k.shape[2])
        n_old, t = self._n[layer], k.shape[2]
        n = n_old + t
        pos, held, kk = self._pos[layer], self._held[layer], self._k[layer]
        new_pos = torch.arange(n_old, n, device=self.device)
        plans, need = [], 0
        for h, policy in enumerate(self.policies[layer]):
            shared = None
            for b in range(self.batch):
                old = pos[b, h, : held[b][h]]
                if policy.scores or shared is None or held[b][h] != shared[2]:
                    keep_old = policy.keep(old, n)
                    keep_new = policy.keep(new_pos, n)
                    if policy.scores:
                        keep_old, keep_new = self._pick(policy, old, kk[b, h, : held[b][h]],
                                                        keep_old, keep_new, new_pos, k[b, h])
                    else:
                        shared = (keep_old, keep_new, held[b][h])
                else:
                    # Position policies decide from positions alone: equal for every element.
                    keep_old, keep_new = shared[0], shared[1]
                plans.append((b, h, keep_old, keep_new))
                need = max(need, int(keep_old.sum()) + int(keep_new.sum()))
        cap = self._cap[layer]
        if need > cap:
            if self.bounded and (self.max_len is None or cap < self.max_len):
                raise AssertionError("a bounded policy kept more keys than its bound")
            grown = -(-need // self.chunk) * self.chunk
            if self.max_len is not None:
                if need > self.max_len:
                    raise PsparseUsageError(
                        f"layer {layer} would hold {need} keys per KV head at n = {n}, past "
                        f"max_len={self.max_len} ({self.why}); pass a larger max_len")
                grown = min(grown, self.max_len)
            self._grow(layer, grown)
        kk, vv, pos = self._k[layer], self._v[layer], self._pos[layer]
        for b, h, keep_old, keep_new in plans:
            c = held[b][h]
            if not bool(keep_old.all()):
                idx = keep_old.nonzero().flatten()
                m = idx.numel()
                kk[b, h, :m] = kk[b, h, idx]
                vv[b, h, :m] = vv[b, h, idx]
                pos[b, h, :m] = pos[b, h, idx]
                pos[b, h, m:c] = -1
                c = m
            idx = keep_new.nonzero().flatten()
            m = idx.numel()
            if m:
                kk[b, h, c: c + m] = k[b, h, idx]
                vv[b, h, c: c + m] = v[b, h, idx]
                pos[b, h, c: c + m] = new_pos[idx]
            held[b][h] = c + m
        self._n[layer] = n

    @staticmethod
    def _pick(policy, old_pos, old_k, keep_old, keep_new, new_pos, new_k):
        """Position-kept masks extended by the score terms' picks among the rest."""
        cand_old, cand_new = ~keep_old, ~keep_new
        positions = torch.cat([old_pos[cand_old], new_pos[cand_new]])
        keys = torch.cat([old_k[cand_old], new_k[cand_new]]).float()
        taken = pick_scores(policy.scores, positions, torch.linalg.vector_norm(keys, dim=-1))
        m = int(cand_old.sum())
        keep_old, keep_new = keep_old.clone(), keep_new.clone()
        keep_old[cand_old] = taken[:m]
        keep_new[cand_new] = taken[m:]
        return keep_old, keep_new

    def _grow(self, layer: int, cap: int) -> None:
        old = self._cap[layer]
        pad = cap - old
        shape = (self.batch, self.num_kv_heads, pad, self.head_dim)
        self._k[layer] = torch.cat([self._k[layer], self._k[layer].new_zeros(shape)], dim=2)
        self._v[layer] = torch.cat([self._v[layer], self._v[layer].new_zeros(shape)], dim=2)
        self._pos[layer] = torch.cat(
            [self._pos[layer], self._pos[layer].new_full((self.batch, self.num_kv_heads, pad), -1)],
            dim=2)
        self._cap[layer] = cap

    # -- decoding --------------------------------------------------------------
    def decode(self, layer: int, q: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """Attention of the decode query at ``n - 1``: ``q [batch, num_heads, 1, head_dim]`` ->
        ``[batch, num_heads, 1, head_dim]`` over the retained keys, allowed where the query
        head's pattern allows (query ``n - 1``, key at its original position) at this ``n``.
        A query with no allowed key gets 0."""
        layer = self._layer(layer)
        n = self._n[layer]
        if n == 0:
            raise PsparseUsageError("decode before prefill: call update(layer, k, v) first")
        if not isinstance(q, torch.Tensor) or q.dim() != 4 or tuple(q.shape) != (
                self.batch, self.num_heads, 1, self.head_dim):
            got = list(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            raise PsparseUsageError(
                f"q must be [batch={self.batch}, heads={self.num_heads}, 1, head_dim={self.head_dim}] "
                f"(one decode query at n - 1); got {got}")
        if q.dtype != self.dtype or q.device != self.device:
            raise PsparseUsageError(
                f"q is {q.dtype} on {q.device} but the cache holds {self.dtype} on {self.device}")
        scale = self.head_dim ** -0.5 if scale is None else float(scale)
        out = torch.zeros_like(q)
        ctx = Context(n)
        qpos = torch.tensor([n - 1], device=self.device)
        for h in range(self.num_kv_heads):
            c = max(self._held[layer][b][h] for b in range(self.batch))
            if c == 0:
                continue
            keys = self._k[layer][:, h, :c].float()                      # [B, c, D]
            vals = self._v[layer][:, h, :c].float()
            pos = self._pos[layer][:, h, :c]                              # [B, c], -1 free
            heads = list(range(h * self.group, (h + 1) * self.group))
            present = pos >= 0
            safe = pos.clamp(min=0)
            allowed = torch.stack([evaluate(self._expr(hq, layer), qpos, safe, ctx) & present
                                   for hq in heads], dim=1)               # [B, G, c]
            qh = q[:, heads, 0].float()                                   # [B, G, D]
            logits = scale * torch.einsum("bgd,bcd->bgc", qh, keys)
            logits = logits.masked_fill(~allowed, float("-inf"))
            top = logits.amax(dim=-1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            p = torch.exp(logits - top)
            denom = p.sum(dim=-1, keepdim=True)
            p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
            out[:, heads, 0] = torch.einsum("bgc,bcd->bgd", p, vals).to(q.dtype)
        return out

    def _expr(self, head: int, layer: int) -> ir.Expr:
        rule = self.program.rule_for(head if self.program.has_heads else None, layer)
        e = rule.expr
        if e.needs_doc_ids or e.is_dynamic:
            raise PsparseUsageError(
                "decoding over the cache supports static patterns: this one uses "
                + ("`document`" if e.needs_doc_ids else "data-dependent terms"))
        return e

