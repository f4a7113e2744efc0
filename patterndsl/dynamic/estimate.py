"""What the dynamic terms choose, computed from a call's ``q`` and ``k``.

The meaning is reference.py's (LANGUAGE.md, "Dynamic terms"); this module computes the same
choice without ever forming an ``n x n`` (or ``n x n / b^2``-sized per tile) intermediate:

* ``vertical``/``slash`` read ``A``, the causal softmax of the last ``last`` query rows. It is
  ``last x n``, and even that is never held whole: pass 1 walks the keys in chunks keeping an
  online row maximum and exponent sum, pass 2 recomputes each chunk's probabilities and adds
  them into the column sums and (scatter-add by ``q_i - k``) the diagonal sums.  Work and
  memory are linear in ``n``; keys after the last row's position carry no probability, so the
  walk stops there.
* ``vertical(by=norm)``: one L2 norm per key.
* ``blocks``: per query block ``i`` the scores ``mean(Q_i) . mean(K_j)`` for ``j <= i``,
  a tile of query blocks at a time, each tile reduced to its chosen blocks before the next.

Nothing reads a tensor value on the host (no ``.item()``, no branching on data): every size
comes from shapes and spec numbers, so the same code can run on a GPU without synchronising.
Scores are ranked by budgets.py's ``top_mask``/``adaptive_split``, the very functions the
reference uses, so ties (smaller position, offset, block, then head) and the ``topk`` above
the candidate count behave identically.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ir
from ..budgets import adaptive_split, layer_count, top_mask
from ..errors import PsparseUsageError
from ..args import checked_int, query_rows

__all__ = ["Selection", "select", "KEY_CHUNK"]

# Keys per chunk of the last-rows attention (pass memory is B * G * last * KEY_CHUNK floats).
KEY_CHUNK = 4096
# Scores per tile of query blocks and (B * G) heads for `blocks`.
BLOCK_TILE_SCORES = 1 << 20


@dataclass(frozen=True, eq=False)
class Selection:
    """What one dynamic term chose, for every batch element and query head of a call.

    ``index`` holds the chosen items in ascending order, padded with ``-1`` after ``count``:
    key positions for ``vertical`` (``kind == "vertical"``), offsets ``q - k >= 0`` for
    ``slash``, and for ``blocks`` one row per query block of the call (``first_block`` is the
    absolute block number of row 0) listing key block numbers.

    =========  =========================  ====================
    kind       index                      count
    =========  =========================  ====================
    vertical   int64 [B, Hq, W]           int64 [B, Hq]
    slash      int64 [B, Hq, W]           int64 [B, Hq]
    blocks     int64 [B, Hq, nqb, W]      int64 [B, Hq, nqb]
    =========  =========================  ====================

    ``heads`` are the query heads whose spec line holds the term; the other heads' rows are
    empty (count 0).  ``block`` is the block size ``blocks`` divides positions by (0 else)."""

    term: ir.Expr
    kind: str
    index: torch.Tensor
    count: torch.Tensor
    heads: tuple[int, ...]
    block: int = 0
    first_block: int = 0

    def chosen(self, b: int, h: int, row: int | None = None) -> list[int]:
        """The chosen items of batch element ``b``, query head ``h`` (and query-block row
        ``row`` for ``blocks``) as Python ints: a host read, meant for inspection/planning."""
        idx = self.index[b, h] if row is None else self.index[b, h, row]
        return [int(x) for x in idx.tolist() if x >= 0]


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

def _program(spec_or_expr, budget):
    from ..spec import Spec, parse
    if isinstance(spec_or_expr, str):
        spec_or_expr = parse(spec_or_expr)
    if isinstance(spec_or_expr, Spec):
        return spec_or_expr.canonical_ir
    if isinstance(spec_or_expr, ir.Program):
        return spec_or_expr
    if isinstance(spec_or_expr, ir.Expr):
        return ir.Program((ir.Rule(spec_or_expr),), budget=budget)
    raise PsparseUsageError(f"expected a spec, its text, an ir.Program or an ir.Expr, not "
                            f"{type(spec_or_expr).__name__}")


def select(spec_or_expr, q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None,
           q_offset: int | None = None, layer: int | None = 0, num_layers: int | None = None,
           budget: ir.Budget | None = None) -> dict[ir.Expr, Selection]:
    """``{term: Selection}`` for every dynamic term of the lines that govern ``q``'s heads.

    ``q [B, Hq, nq, D]``, ``k [B, Hkv, n, D]`` (query head ``h`` reads KV head
    ``h // (Hq // Hkv)``); row ``i`` is position ``q_offset + i`` (default ``n - nq``);
    ``scale`` defaults to ``D ** -0.5``.  ``budget`` applies only when an ``ir.Expr`` is
    given (a spec carries its own).  Equal terms on different lines share one entry, each
    head holding what its own line chose."""
    program = _program(spec_or_expr, budget)
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)) or q.dim() != 4 \
            or k.dim() != 4:
        raise PsparseUsageError("q must be [batch, heads, nq, head_dim] and k "
                                "[batch, kv_heads, n, head_dim] tensors")
    B, Hq, nq, D = q.shape
    Hkv, n = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise PsparseUsageError(f"q {list(q.shape)} and k {list(k.shape)} must agree on batch "
                                "and head_dim")
    if Hkv == 0 or Hq % Hkv:
        raise PsparseUsageError(f"the {Hq} query heads must be a multiple of the {Hkv} KV heads")
    if nq > n:
        raise PsparseUsageError(f"q holds {nq} rows but k only {n} positions")
    nq, offset = query_rows(n, nq, q_offset)
    if layer is not None:
        layer = checked_int("layer", layer, 0)
    scale = D ** -0.5 if scale is None else float(scale)
    g = Hq // Hkv

    groups: dict[int, tuple[ir.Rule, list[int]]] = {}
    for h in range(Hq):
        rule = program.rule_for(h, layer)
        if rule is None:
            raise PsparseUsageError(f"no line of the spec covers head {h}"
                                    + (f" of layer {layer}" if layer is not None else ""))
        groups.setdefault(id(rule), (rule, []))[1].append(h)

    parts: dict[ir.Expr, list[tuple[list[int], torch.Tensor, torch.Tensor, int, int]]] = {}
    for rule, heads in groups.values():
        terms = _terms(rule.expr)
        if not terms:
            continue
        est = _Estimator(q, k, heads, g, offset, scale, program.budget, layer, num_layers)
        for term in terms:
            parts.setdefault(term, []).append((heads, *est.run(term)))
    return {term: _assemble(term, p, B, Hq) for term, p in parts.items()}


def _terms(expr: ir.Expr) -> list[ir.Expr]:
    """The distinct dynamic nodes of ``expr``, in walk order."""
    seen: dict[ir.Expr, None] = {}
    for node in expr.walk():
        if isinstance(node, ir.DYNAMIC_TYPES):
            seen.setdefault(node, None)
    return list(seen)


def _kind(term) -> str:
    return {ir.TopVertical: "vertical", ir.TopSlash: "slash", ir.TopBlocks: "blocks"}[type(term)]


def _assemble(term, parts, B, Hq) -> Selection:
    """One Selection over all query heads from the per-line pieces (heads disjoint)."""
    width = max(p[1].shape[-1] for p in parts)
    lead = parts[0][1].shape[2:-1]  # () or (nqb,)
    device = parts[0][1].device
    index = torch.full((B, Hq, *lead, width), -1, dtype=torch.int64, device=device)
    count = torch.zeros((B, Hq, *lead), dtype=torch.int64, device=device)
    all_heads: list[int] = []
    for heads, idx, cnt, _, _ in parts:
        hs = torch.tensor(heads, dtype=torch.int64, device=device)
        index.index_copy_(1, hs, torch.nn.functional.pad(idx, (0, width - idx.shape[-1]), value=-1))
        count.index_copy_(1, hs, cnt)
        all_heads += heads
    _, _, _, block, first = parts[0]
    return Selection(term, _kind(term), index, count, tuple(sorted(all_heads)), block, first)


# ---------------------------------------------------------------------------
# Scores and choices for one line's query heads
# ---------------------------------------------------------------------------

def _pack(chosen: torch.Tensor, width: int):
    """``(index, count)``: the True positions of ``chosen [..., C]`` ascending, padded with
    -1 to ``width`` (a bound known from the spec, so no host read sizes anything)."""
    C = chosen.shape[-1]
    width = min(width, C)
    pos = torch.arange(C, device=chosen.device)
    key = torch.where(chosen, pos, C)
    idx = torch.topk(key, width, dim=-1, largest=False, sorted=True).values
    idx = torch.where(idx == C, -1, idx)
    return idx, chosen.sum(dim=-1)


class _Estimator:
    """The dynamic terms of one spec line for its query heads ``heads`` (``G`` of them)."""

    def __init__(self, q, k, heads, g, offset, scale, budget, layer, num_layers):
        dev = q.device
        self.heads = torch.tensor(heads, dtype=torch.int64, device=dev)
        self.kv = torch.div(self.heads, g, rounding_mode="floor")  # each query head's KV head
        self.G = len(heads)
        self.q, self.k = q, k
        self.nq, self.n = q.shape[2], k.shape[2]
        self.offset, self.scale = offset, scale
        self.budget, self.layer, self.num_layers = budget, layer, num_layers
        self._attn: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def run(self, term):
        """``(index, count, block, first_block)`` for ``term`` over this line's heads."""
        topk = layer_count(term.topk, self.budget, self.layer, self.num_layers)
        # Under adaptive one head may take up to the whole pooled budget.
        width = topk * self.G if isinstance(self.budget, ir.Adaptive) else topk
        if isinstance(term, ir.TopBlocks):
            return self._blocks(term, topk, width)
        if isinstance(term, ir.TopVertical) and term.by != "attn":
            # Norms per KV head first: copying k per query head would double its memory.
            norms = torch.linalg.vector_norm(self.k, dim=-1, dtype=torch.float32)
            norms = norms.index_select(1, self.kv)                         # [B, G, n]
            scores = norms if term.by == "norm" else -norms
        else:
            cols, diags = self._attention_sums(term.last)
            scores = cols if isinstance(term, ir.TopVertical) else diags
        return (*_pack(self._choose(scores, topk), width), 0, 0)

    def _choose(self, scores, topk, valid=None):
        if isinstance(self.budget, ir.Adaptive):
            return adaptive_split(scores, topk, self.budget.floor, valid)
        return top_mask(scores, topk, valid)

    # -- vertical / slash ------------------------------------------------------
    def _attention_sums(self, last: int):
        """Column sums and diagonal sums (offset ``o`` = ``q_i - k``) of ``A``, each
        ``float32 [B, G, n]``, for the last ``last`` rows."""
        if last in self._attn:
            return self._attn[last]
        B, G, n = self.q.shape[0], self.G, self.n
        rows = min(last, self.nq)
        dev = self.q.device
        q_last = self.q[:, :, self.nq - rows:, :].index_select(1, self.heads).float()  # [B,G,L,D]
        q_last = q_last * self.scale
        top = self.offset + self.nq                     # keys at or past `top` get nothing
        pos = torch.arange(top - rows, top, device=dev).view(rows, 1)
        cols = torch.zeros((B, G, n), dtype=torch.float32, device=dev)
        diags = torch.zeros((B, G, n + 1), dtype=torch.float32, device=dev)
        if rows and n:
            chunks = [(c0, min(c0 + KEY_CHUNK, top)) for c0 in range(0, top, KEY_CHUNK)]
            m = torch.full((B, G, rows, 1), float("-inf"), device=dev)
            s = torch.zeros((B, G, rows, 1), device=dev)
            # Pass 1: the row maxima and exponent sums, online.  Key 0 is in every row's
            # range and in the first chunk, so `m` is finite after it (no -inf - -inf).
            for c0, c1 in chunks:
                logits = self._logits(q_last, pos, c0, c1)
                new = torch.maximum(m, logits.amax(dim=-1, keepdim=True))
                s = s * torch.exp(m - new) + torch.exp(logits - new).sum(dim=-1, keepdim=True)
                m = new
            # Pass 2: the probabilities chunk by chunk, summed by column and by diagonal.
            for c0, c1 in chunks:
                p = torch.exp(self._logits(q_last, pos, c0, c1) - m) / s  # [B, G, L, c]
                cols[:, :, c0:c1] = p.sum(dim=2)
                off = pos - torch.arange(c0, c1, device=dev).view(1, -1)  # [L, c]
                if c1 > top - rows + 1:
                    # Keys above a row have probability 0; the spare slot n takes them.
                    off = torch.where(off >= 0, off, n)
                off = off.expand(B, G, rows, c1 - c0)
                diags.scatter_add_(2, off.reshape(B, G, -1), p.reshape(B, G, -1))
        self._attn[last] = (cols, diags[..., :n])
        return self._attn[last]

    def _logits(self, q_last, pos, c0, c1):
        kc = self.k[:, :, c0:c1, :].index_select(1, self.kv).float()     # [B, G, c, D]
        logits = torch.matmul(q_last, kc.transpose(-2, -1))              # [B, G, L, c]
        if c1 - 1 <= self.offset + self.nq - pos.shape[0]:
            return logits  # every key of the chunk is at or before the first row: no mask
        keys = torch.arange(c0, c1, device=logits.device).view(1, -1)
        return logits.masked_fill(keys > pos, float("-inf"))

    # -- blocks ----------------------------------------------------------------
    def _blocks(self, term: ir.TopBlocks, topk: int, width: int):
        n, nq, off = self.n, self.nq, self.offset
        B, G, D = self.q.shape[0], self.G, self.q.shape[3]
        dev = self.q.device
        b = min(term.block, max(n, 1))
        nb = -(-n // term.block)
        first = off // b
        nqb = (off + nq - 1) // b - first + 1 if nq else 0
        width = min(width, nb)
        if nqb == 0 or nb == 0:
            empty = torch.zeros((B, G, nqb, 0), dtype=torch.int64, device=dev)
            return empty, torch.zeros((B, G, nqb), dtype=torch.int64, device=dev), b, first
        # Means over the rows present in each block; the counts are closed-form in the shapes.
        # Block sums over every query head, then the line's heads: the sums are small, a copy
        # of q restricted to the heads would not be.
        qblock = torch.div(torch.arange(off, off + nq, device=dev), b, rounding_mode="floor") - first
        q_mean = torch.zeros((B, self.q.shape[1], nqb, D), dtype=torch.float32, device=dev)
        q_mean.index_add_(2, qblock, self.q.float())
        q_mean = q_mean.index_select(1, self.heads)
        lo = torch.arange(first, first + nqb, device=dev) * b
        q_cnt = torch.minimum(lo + b, torch.tensor(off + nq, device=dev)) - torch.maximum(
            lo, torch.tensor(off, device=dev))
        q_mean = q_mean / q_cnt.view(-1, 1).float()
        kblock = torch.div(torch.arange(n, device=dev), b, rounding_mode="floor")
        k_mean = torch.zeros((B, self.k.shape[1], nb, D), dtype=torch.float32, device=dev)
        k_mean.index_add_(2, kblock, self.k.float())
        klo = torch.arange(nb, device=dev) * b
        k_cnt = torch.minimum(klo + b, torch.tensor(n, device=dev)) - klo
        k_mean = (k_mean / k_cnt.view(-1, 1).float()).index_select(1, self.kv)  # [B, G, nb, D]
        index = torch.empty((B, G, nqb, width), dtype=torch.int64, device=dev)
        count = torch.empty((B, G, nqb), dtype=torch.int64, device=dev)
        tile = max(1, BLOCK_TILE_SCORES // max(1, B * G * nb))
        kpos = torch.arange(nb, device=dev)
        for t0 in range(0, nqb, tile):
            t1 = min(t0 + tile, nqb)
            scores = torch.matmul(q_mean[:, :, t0:t1], k_mean.transpose(-2, -1))  # [B,G,T,nb]
            valid = kpos.view(1, -1) <= torch.arange(first + t0, first + t1, device=dev).view(-1, 1)
            # Heads next to the candidates: an adaptive budget pools heads per query block.
            chosen = self._choose(scores.transpose(1, 2), topk, valid.unsqueeze(1)).transpose(1, 2)
            idx, cnt = _pack(chosen, width)
            index[:, :, t0:t1] = idx
            count[:, :, t0:t1] = cnt
        return index, count, b, first
