"""The reference meaning of a spec: boolean masks, exactly as LANGUAGE.md defines them.

Every later stage (plans, kernels, retention) is tested against these masks, so the
code here favours being obviously right over being fast, while staying vectorised:
each expression node becomes a bool tensor that broadcasts to ``[B, H, nq, n]``,
built from the query positions ``Q [1, 1, nq, 1]`` and key positions ``K [1, 1, 1, n]``.
The evaluator is generic over those position tensors and over ``n``, so ``blockwise``
is the same evaluator run on block numbers with ``ceil(n / b)`` as its ``n``.

Readings where LANGUAGE.md leaves a choice (also in docs/ARCHITECTURE.md):
* an explicit ``q_offset`` puts row ``i`` at ``q_offset + i``; every row must lie in ``[0, n)``;
* under ``adaptive``, a dynamic term's budget is shared by the query heads whose line holds
  that term (all query heads of the call when the spec has no ``heads`` lines);
* ``blocks``: the query means use every row of the call (not only the last ``last``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ir
from .budgets import adaptive_split, layer_count, top_mask
from .errors import PsparseUsageError
from .args import checked_int, query_rows
from .randomblocks import random_blocks

__all__ = ["program_mask", "expr_mask", "index_table", "offset_values"]


# ---------------------------------------------------------------------------
# Index and offset sets
# ---------------------------------------------------------------------------

def _slice_range(item: ir.Slice, n: int) -> range:
    if item.step == 0:
        raise PsparseUsageError("a slice step of 0 selects nothing meaningful; use a step >= 1 or <= -1")
    return range(n)[slice(item.start, item.stop, item.step)]


def index_table(index: ir.IndexSet, n: int, device=None) -> torch.Tensor:
    """``bool [n]``: the positions an index set ``I`` selects at length ``n``."""
    table = torch.zeros(n, dtype=torch.bool, device=device)
    for item in index.items:
        if isinstance(item, ir.Slice):
            r = _slice_range(item, n)
            if len(r):
                table[torch.arange(r.start, r.stop, r.step, device=device)] = True
        else:
            i = item + n if item < 0 else item
            if 0 <= i < n:
                table[i] = True
    return table


def _clip_range(r: range, lo: int, hi: int) -> range:
    """The elements of ``r`` inside ``[lo, hi]``, as a range with the same step."""
    if r.step > 0:
        first = r.start if r.start >= lo else r.start + -(-(lo - r.start) // r.step) * r.step
        return range(first, min(r.stop, hi + 1), r.step)
    down = -r.step
    first = r.start if r.start <= hi else r.start - -(-(r.start - hi) // down) * down
    return range(first, max(r.stop, lo - 1), r.step)


def offset_values(offsets: ir.IndexSet, lo: int, hi: int) -> list[range]:
    """The literal offsets of a ``slash(O)`` that fall in ``[lo, hi]``, as ranges
    (offsets are never resolved against ``n``; far-away ones are simply dropped)."""
    out = []
    for item in offsets.items:
        if isinstance(item, ir.Slice):
            if item.start is None or item.stop is None:
                raise PsparseUsageError("a slash offset slice needs both ends (a:b or a:b:c)")
            if item.step == 0:
                raise PsparseUsageError("a slice step of 0 selects nothing meaningful")
            r = _clip_range(range(item.start, item.stop, item.step or 1), lo, hi)
        else:
            r = range(item, item + 1) if lo <= item <= hi else range(0)
        if len(r):
            out.append(r)
    return out


# ---------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------

@dataclass
class _Data:
    """What dynamic terms read: the call's q and k for one group of query heads."""

    q: torch.Tensor          # [B, G, nq, D] float32, the group's query heads
    k: torch.Tensor          # [B, G, n, D] float32, each query head's KV head
    scale: float
    budget: ir.Budget | None
    layer: int | None
    num_layers: int | None


_DIFF_ONLY = (ir.All, ir.Nothing, ir.Causal, ir.Local, ir.Stride, ir.Dilated, ir.Slash)


def _diff_only(e: ir.Expr) -> bool:
    """Whether ``e`` depends on ``q - k`` alone (so one value per diagonal decides it)."""
    if isinstance(e, (ir.Union, ir.Intersect, ir.Difference)):
        return all(_diff_only(c) for c in e.children())
    return isinstance(e, _DIFF_ONLY)


def _toeplitz(diag: torch.Tensor, nq: int, n: int) -> torch.Tensor:
    """``[..., 1?, nq, n]`` from per-diagonal values ``diag [..., nq + n - 1]`` where entry ``m``
    is the value at ``q - k = q0 - (n - 1) + m`` (row ``r`` sits at ``q0 + r``)."""
    # Row r, column j reads entry r - j + n - 1: a window of the reversed vector that
    # slides by one per row, so a strided view plus one flip lays it out.
    rev = diag.flip(-1)  # contiguous; rev[m] is entry nq + n - 2 - m
    lead = rev.shape[:-1]
    view = rev.as_strided((*lead, nq, n), (*rev.stride()[:-1], 1, 1))
    out = view.flip(-2)
    return out.view(1, 1, nq, n) if not lead else out


def _spread(table: torch.Tensor, b: int, q0: int, nq: int, n: int) -> torch.Tensor:
    """Positions from blocks: ``table [..., R, C]`` holds query blocks ``q0 // b`` onwards
    and key blocks ``0 ..``, a size-1 dimension broadcasting; the result is ``[..., nq, n]``
    for rows ``q0 .. q0 + nq - 1`` and keys ``0 .. n - 1`` (sizes 1 kept).  Rows and keys are
    contiguous, so each block repeats ``b`` times in place: an expand and one copy per
    dimension, instead of a gather through an index for every one of the ``nq * n`` pairs."""
    *lead, rows, cols = table.shape
    if rows > 1:
        skip = q0 - (q0 // b) * b
        table = table.unsqueeze(-2).expand(*lead, rows, b, cols).reshape(*lead, rows * b, cols)
        table = table[..., skip: skip + nq, :]
    if cols > 1:
        rows = table.shape[-2]
        table = table.unsqueeze(-1).expand(*lead, rows, cols, b).reshape(*lead, rows, cols * b)
        table = table[..., :n]
    return table


class _Eval:
    """Evaluates expressions for query rows at positions ``q0 .. q0 + nq - 1`` and keys
    ``0 .. n - 1`` of a sequence of length ``n``.  ``Q [1,1,nq,1]`` and ``K [1,1,1,n]``
    hold those positions; every node maps to a bool tensor broadcasting to ``[B,H,nq,n]``."""

    def __init__(self, q0: int, nq: int, n: int, device, *, doc=None, data=None, inner=False,
                 diagonals=False):
        self.q0, self.nq, self.n = q0, nq, n
        self.doc = doc          # [Bd, n] or None
        self.data = data        # _Data or None
        self.inner = inner      # inside blockwise: document and dynamic terms are not allowed
        # With diagonals=True, Q holds every q - k the grid has and K is 0: only nodes
        # that depend on q - k alone may be evaluated that way.
        self.diagonals = diagonals
        if diagonals:
            self.Q = torch.arange(q0 - (n - 1), q0 + nq, device=device).view(1, 1, -1, 1)
            self.K = torch.zeros((1, 1, 1, 1), dtype=torch.int64, device=device)
        else:
            self.Q = torch.arange(q0, q0 + nq, device=device).view(1, 1, nq, 1)
            self.K = torch.arange(n, device=device).view(1, 1, 1, n)
        self._attn = {}

    def __call__(self, e: ir.Expr) -> torch.Tensor:
        if (not self.diagonals and self.nq and self.n and not isinstance(e, (ir.All, ir.Nothing))
                and _diff_only(e)):
            # One value per diagonal, laid out as a Toeplitz matrix: much cheaper than
            # forming q - k for every pair.
            diag = _Eval(self.q0, self.nq, self.n, self.Q.device, inner=self.inner, diagonals=True)
            values = diag._node(e).expand(1, 1, self.nq + self.n - 1, 1)
            return _toeplitz(values.flatten(), self.nq, self.n)
        return self._node(e)

    def _node(self, e: ir.Expr) -> torch.Tensor:
        Q, K, n = self.Q, self.K, self.n
        # Window-like arguments may be arbitrarily large integers; every |q - k| and
        # every position is below n, so capping them at n (>= 1) keeps the meaning
        # and keeps the values inside int64.
        cap = max(n, 1)
        if isinstance(e, ir.All):
            return torch.ones((1, 1, 1, 1), dtype=torch.bool, device=Q.device)
        if isinstance(e, ir.Nothing):
            return torch.zeros((1, 1, 1, 1), dtype=torch.bool, device=Q.device)
        if isinstance(e, ir.Causal):
            return K <= Q
        if isinstance(e, ir.Local):
            return (K >= Q - min(e.left, cap)) & (K <= Q + min(e.right, cap))
        if isinstance(e, ir.Block):
            b = min(e.size, cap)
            return torch.div(Q, b, rounding_mode="floor") == torch.div(K, b, rounding_mode="floor")
        if isinstance(e, ir.Stride):
            # For |x| < n <= s, x mod s == 0 iff x == 0 iff x mod n == 0.
            return torch.remainder(Q - K, min(e.step, cap)) == 0
        if isinstance(e, ir.Dilated):
            d = min(e.dilation, cap)
            diff = Q - K
            return (diff.abs() <= min(e.width * e.dilation, cap)) & (torch.remainder(diff, d) == 0)
        if isinstance(e, ir.Every):
            if e.step > cap:  # k < n < s, so k mod s is k itself
                return K == e.offset
            return torch.remainder(K, e.step) == e.offset
        if isinstance(e, ir.Rows):
            return index_table(e.index, n, Q.device)[Q]
        if isinstance(e, ir.Cols):
            return index_table(e.index, n, Q.device)[K]
        if isinstance(e, ir.Global):
            t = index_table(e.index, n, Q.device)
            return t[Q] | t[K]
        if isinstance(e, ir.Sink):
            return K < min(e.count, cap)
        if isinstance(e, ir.Prefix):
            p = min(e.length, cap)
            return (Q < p) & (K < p)
        if isinstance(e, ir.Slash):
            span = cap - 1  # every q - k lies in [-(n-1), n-1]
            table = torch.zeros(2 * span + 1, dtype=torch.bool, device=Q.device)
            for r in offset_values(e.offsets, -span, span):
                table[torch.arange(r.start + span, r.stop + span, r.step, device=Q.device)] = True
            return table[Q - K + span]
        if isinstance(e, ir.Random):
            table = random_blocks(e.count, e.block, e.seed, e.causal, n).to(Q.device)
            b = min(e.block, cap)
            if not self.nq:
                return torch.zeros((1, 1, 0, n), dtype=torch.bool, device=Q.device)
            first = self.q0 // b
            last = (self.q0 + self.nq - 1) // b
            return _spread(table[first: last + 1].view(1, 1, last + 1 - first, -1),
                           b, self.q0, self.nq, n)
        if isinstance(e, ir.Blockwise):
            return self._blockwise(e)
        if isinstance(e, ir.Document):
            return self._document(e)
        if isinstance(e, ir.DYNAMIC_TYPES):
            return self._dynamic(e)
        if isinstance(e, ir.Union):
            out = self(e.terms[0])
            for t in e.terms[1:]:
                out = out | self(t)
            return out
        if isinstance(e, ir.Intersect):
            out = self(e.terms[0])
            for t in e.terms[1:]:
                out = out & self(t)
            return out
        if isinstance(e, ir.Difference):
            return self(e.left) & ~self(e.right)
        raise TypeError(f"not a pattern expression: {e!r}")

    # -- composite terms ----------------------------------------------------
    def _blockwise(self, e: ir.Blockwise) -> torch.Tensor:
        # Rows and keys are contiguous position ranges, so their blocks are too: the inner
        # pattern runs once per (query block, key block) and is spread back to positions,
        # keeping any broadcast (size-1) dimension as is.
        b = min(e.block, max(self.n, 1))
        qb = torch.div(self.Q.flatten(), b, rounding_mode="floor")
        first = self.q0 // b
        inner = _Eval(first, int(qb[-1]) - first + 1 if self.nq else 0, -(-self.n // e.block),
                      self.Q.device, inner=True)
        out = inner(e.expr)
        if not self.nq:
            return torch.zeros((*out.shape[:-2], 0, self.n), dtype=torch.bool, device=out.device)
        return _spread(out, b, self.q0, self.nq, self.n)

    def _document(self, e) -> torch.Tensor:
        if self.inner:
            raise PsparseUsageError("`document` cannot appear inside blockwise(...)")
        if self.doc is None:
            raise PsparseUsageError("this spec uses `document`: pass doc_ids")
        d = self.doc  # [Bd, n]
        dq = d[:, self.Q.flatten()].view(d.shape[0], 1, -1, 1)
        dk = d[:, self.K.flatten()].view(d.shape[0], 1, 1, -1)
        return dq == dk

    # -- dynamic terms --------------------------------------------------------
    def _dynamic(self, e) -> torch.Tensor:
        if self.inner:
            raise PsparseUsageError("data-dependent terms cannot appear inside blockwise(...)")
        data = self.data
        if data is None:
            raise PsparseUsageError("this spec has data-dependent terms: pass q and k")
        topk = layer_count(e.topk, data.budget, data.layer, data.num_layers)
        if isinstance(e, ir.TopBlocks):
            return self._top_blocks(e, topk)
        if isinstance(e, ir.TopVertical):
            if e.by == "attn":
                scores = self._attention(e.last).sum(dim=2)              # [B, G, n]
            elif e.by in ("norm", "lownorm"):
                norms = torch.linalg.vector_norm(data.k, dim=-1)         # [B, G, n]
                scores = norms if e.by == "norm" else -norms
            else:
                raise TypeError(f"unknown vertical ordering {e.by!r}")
            return self._select(scores, topk).unsqueeze(2)               # [B, G, 1, n]
        # TopSlash: scores[o] = sum over the last rows i of A[i, q_i - o], o in [0, n).
        attn = self._attention(e.last)                                   # [B, G, L, n]
        last_q = self.Q.flatten()[-attn.shape[2]:] if attn.shape[2] else self.Q.flatten()[:0]
        keys = torch.arange(self.n, device=attn.device)
        off = last_q.unsqueeze(1) - keys.unsqueeze(0)                    # [L, n]
        # Keys above a row carry probability 0; route them to a spare slot n anyway so
        # no term lands on a real offset.
        off = torch.where(off >= 0, off, self.n).expand_as(attn)
        scores = torch.zeros((*attn.shape[:2], self.n + 1), dtype=attn.dtype, device=attn.device)
        scores.scatter_add_(2, off.reshape(*attn.shape[:2], -1), attn.reshape(*attn.shape[:2], -1))
        chosen = self._select(scores[..., : self.n], topk)               # [B, G, n] offsets
        # Per diagonal d = q - k from q0 - (n - 1) upwards: chosen offset d, never d < 0.
        before = self.n - 1 - self.q0
        diag = torch.zeros((*chosen.shape[:2], self.nq + self.n - 1), dtype=torch.bool,
                           device=chosen.device)
        if self.nq:
            diag[..., max(before, 0):] = chosen[..., max(-before, 0): self.q0 + self.nq]
        return _toeplitz(diag, self.nq, self.n)

    def _attention(self, last: int) -> torch.Tensor:
        """``A`` of LANGUAGE.md: ``[B, G, L, n]`` causal softmax of the call's last ``last`` rows."""
        if last not in self._attn:
            data = self.data
            nq = data.q.shape[2]
            rows = min(last, nq)
            q_last = data.q[:, :, nq - rows:, :]
            logits = data.scale * torch.matmul(q_last, data.k.transpose(-2, -1))
            pos = self.Q.flatten()[nq - rows:].view(-1, 1)
            keys = torch.arange(self.n, device=logits.device).view(1, -1)
            logits = logits.masked_fill(keys > pos, float("-inf"))
            self._attn[last] = torch.softmax(logits, dim=-1)
        return self._attn[last]

    def _select(self, scores, topk: int, valid=None):
        """The ``topk`` best entries of ``scores [B, G, C]`` per head, reshaped by the budget."""
        budget = self.data.budget
        if isinstance(budget, ir.Adaptive):
            return adaptive_split(scores, topk, budget.floor, valid)
        return top_mask(scores, topk, valid)

    def _top_blocks(self, e: ir.TopBlocks, topk: int) -> torch.Tensor:
        data = self.data
        b = min(e.block, max(self.n, 1))
        nb = -(-self.n // e.block)
        B, G, nq, D = data.q.shape
        qb = torch.div(self.Q.flatten(), b, rounding_mode="floor")
        first = int(qb[0]) if nq else 0
        nqb = int(qb[-1]) - first + 1 if nq else 0
        q_sum = torch.zeros((B, G, nqb, D), dtype=data.q.dtype, device=data.q.device)
        q_sum.index_add_(2, qb - first, data.q)
        q_cnt = torch.bincount(qb - first, minlength=nqb).to(data.q.dtype)
        kb = torch.div(torch.arange(self.n, device=data.k.device), b, rounding_mode="floor")
        k_sum = torch.zeros((B, G, nb, D), dtype=data.k.dtype, device=data.k.device)
        k_sum.index_add_(2, kb, data.k)
        k_cnt = torch.bincount(kb, minlength=nb).to(data.k.dtype)
        q_mean = q_sum / q_cnt.view(-1, 1)
        k_mean = k_sum / k_cnt.view(-1, 1)
        scores = torch.matmul(q_mean, k_mean.transpose(-2, -1))         # [B, G, nqb, nb]
        valid = (torch.arange(nb, device=scores.device).view(1, -1)
                 <= torch.arange(first, first + nqb, device=scores.device).view(-1, 1))
        # Heads go next to the candidates so an adaptive budget pools them per query block.
        chosen = self._select(scores.transpose(1, 2), topk, valid.unsqueeze(1)).transpose(1, 2)
        kbk = torch.div(self.K, b, rounding_mode="floor")[0, 0]          # [1, n]
        return chosen[:, :, (qb - first).view(-1, 1), kbk]


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------

def _as_doc(doc_ids, n: int, device):
    """``(doc [Bd, n], batched)``: the document ids with a batch dimension always present."""
    if doc_ids is None:
        return None, False
    d = torch.as_tensor(doc_ids, device=device)
    if d.dim() not in (1, 2) or d.shape[-1] != n:
        raise PsparseUsageError(
            f"doc_ids must have shape [n] or [batch, n] with n = {n}; got {list(d.shape)}")
    return (d, True) if d.dim() == 2 else (d.unsqueeze(0), False)


def _check_qk(q, k, n: int, nq: int | None):
    if q is None or k is None:
        raise PsparseUsageError("pass both q and k (or neither)")
    if q.dim() != 4 or k.dim() != 4:
        raise PsparseUsageError(
            f"q must be [batch, heads, nq, head_dim] and k [batch, kv_heads, n, head_dim]; "
            f"got q {list(q.shape)}, k {list(k.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise PsparseUsageError(
            f"q and k must agree on batch and head_dim; got q {list(q.shape)}, k {list(k.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise PsparseUsageError(
            f"the {q.shape[1]} query heads must be a multiple of the {k.shape[1]} KV heads")
    if k.shape[2] != n:
        raise PsparseUsageError(f"k holds {k.shape[2]} keys but n = {n}")
    if nq is not None and q.shape[2] != nq:
        raise PsparseUsageError(f"q holds {q.shape[2]} query rows but nq = {nq}")


def _uncovered(program: ir.Program, head, layer) -> PsparseUsageError:
    if program.has_layers and layer is None and head is None:
        return PsparseUsageError("this spec has 'layers' lines and no default pattern: pass layer=")
    where = " ".join(w for w in (f"layer {layer}" if layer is not None else "",
                                 f"head {head}" if head is not None else "") if w)
    hint = " (pass layer= to use its 'layers' lines)" if program.has_layers and layer is None else ""
    return PsparseUsageError(
        f"no line of the spec covers {where or 'the default pattern'}{hint}; "
        "add a default pattern or a line that covers it")


def program_mask(program: ir.Program, n: int, *, nq: int | None = None, q_offset: int | None = None,
                 num_heads: int | None = None, layer: int | None = None, doc_ids=None,
                 q=None, k=None, scale: float | None = None,
                 num_layers: int | None = None) -> torch.Tensor:
    """The boolean mask of ``program`` (see ``Spec.mask``).

    Shape ``[nq, n]``; ``[num_heads, nq, n]`` when ``num_heads`` is given; with a leading
    batch dimension when ``doc_ids`` is ``[batch, n]`` or ``q``/``k`` are given, in which
    case the result is ``[batch, Hq, nq, n]`` (``q [B, Hq, nq, D]``, ``k [B, Hkv, n, D]``).
    Row ``i`` is query position ``i + n - nq`` (bottom-right), or ``i + q_offset``."""
    n = checked_int("n", n, 0)
    if q is not None or k is not None:
        _check_qk(q, k, n, nq)
        nq = q.shape[2]
        if num_heads is not None and num_heads != q.shape[1]:
            raise PsparseUsageError(f"num_heads={num_heads} but q has {q.shape[1]} query heads")
        num_heads = q.shape[1]
    nq, offset = query_rows(n, nq, q_offset)
    if num_heads is not None:
        num_heads = checked_int("num_heads", num_heads, 1)
    if layer is not None:
        layer = checked_int("layer", layer, 0)
    if num_layers is not None:
        num_layers = checked_int("num_layers", num_layers, 1)
        if layer is not None and layer >= num_layers:
            raise PsparseUsageError(f"layer={layer} is outside num_layers={num_layers}")

    device = q.device if q is not None else (doc_ids.device if isinstance(doc_ids, torch.Tensor)
                                             else torch.device("cpu"))
    doc, doc_batched = _as_doc(doc_ids, n, device)
    batched = q is not None or doc_batched
    batch = q.shape[0] if q is not None else (doc.shape[0] if doc is not None else 1)
    if doc_batched and doc.shape[0] != batch:
        raise PsparseUsageError(f"doc_ids has batch {doc.shape[0]} but q has batch {batch}")

    # Which rule governs each query head (one group per rule, evaluated once).
    if num_heads is None:
        if program.has_heads:
            raise PsparseUsageError("this spec has 'heads' lines: pass num_heads= (or q and k)")
        rule = program.rule_for(None, layer)
        if rule is None:
            raise _uncovered(program, None, layer)
        groups = [(rule, [0])]
    else:
        by_rule: dict[int, tuple[ir.Rule, list[int]]] = {}
        for h in range(num_heads):
            rule = program.rule_for(h, layer)
            if rule is None:
                raise _uncovered(program, h, layer)
            by_rule.setdefault(id(rule), (rule, []))[1].append(h)
        groups = list(by_rule.values())

    for rule, _ in groups:
        if rule.expr.needs_doc_ids and doc is None:
            raise PsparseUsageError("this spec uses `document`: pass doc_ids")
        if rule.expr.is_dynamic and q is None:
            raise PsparseUsageError("this spec has data-dependent terms: pass q and k")

    heads = 1 if num_heads is None else num_heads
    shape = (batch, heads, nq, n)
    out = None
    if q is not None:
        qf, kf = q.float(), k.float()
        group_size = q.shape[1] // k.shape[1]
        scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    for rule, hs in groups:
        data = None
        if rule.expr.is_dynamic:
            idx = torch.tensor(hs, device=device)
            kv = torch.div(idx, group_size, rounding_mode="floor")  # each query head's KV head
            data = _Data(qf.index_select(1, idx), kf.index_select(1, kv), scale, program.budget,
                         layer, num_layers)
        m = _Eval(offset, nq, n, device, doc=doc, data=data)(rule.expr)
        if len(groups) == 1 and m.shape == shape and m.is_contiguous():
            # One rule for every head and already full size (a dynamic or document mask):
            # the evaluator's result is a fresh tensor, so a second full-size copy is waste.
            out = m
            break
        if out is None:
            out = torch.empty(shape, dtype=torch.bool, device=device)
        contiguous = hs == list(range(hs[0], hs[-1] + 1))
        out[:, slice(hs[0], hs[-1] + 1) if contiguous else hs] = m.expand(batch, len(hs), nq, n)
    if num_heads is None:
        out = out[:, 0]
    return out if batched else out[0]


def expr_mask(expr: ir.Expr, n: int, *, nq: int | None = None, q_offset: int | None = None,
              num_heads: int | None = None, doc_ids=None, q=None, k=None, scale: float | None = None,
              budget: ir.Budget | None = None, layer: int | None = None,
              num_layers: int | None = None) -> torch.Tensor:
    """The mask of one expression: ``program_mask`` of a spec whose only line is ``expr``."""
    program = ir.Program((ir.Rule(expr),), budget=budget)
    return program_mask(program, n, nq=nq, q_offset=q_offset, num_heads=num_heads, layer=layer,
                        doc_ids=doc_ids, q=q, k=k, scale=scale, num_layers=num_layers)
