"""The plan objects a kernel reads: :class:`Plan`, :class:`Part`, :class:`TransposedRuns`.
docs/PLAN.md is their specification (fields, invariants, iteration order)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from .. import ir
from .accounting import allowed_pairs, executed_pairs
from .arith import single_threaded
from .combine import tile_spaces
from .context import Context
from .predicate import evaluate
from .runs import tile_runs
from .transpose import transpose_expr
from .parts import transpose_kind
from .views import Geom, View, ViewKind


@dataclass(frozen=True, eq=False)
class TransposedRuns:
    """Per key tile of ``k_view``: runs of ``q_view`` tiles (for key-major backward loops).
    Same invariants as a part's runs with the roles of the axes exchanged."""

    q_lo: torch.Tensor    # int32 [k_view.num_tiles, S']
    q_hi: torch.Tensor
    q_full: torch.Tensor  # bool

    @property
    def num_runs(self) -> int:
        return self.q_lo.shape[1]


@dataclass(frozen=True, eq=False)
class Part:
    """One pass of the kernel; see docs/PLAN.md ("The executed structure")."""

    predicate: ir.Expr
    view: ViewKind
    q_view: View
    k_view: View
    kv_lo: torch.Tensor   # int32 [q_view.num_tiles, S]
    kv_hi: torch.Tensor   # int32 [q_view.num_tiles, S]
    kv_full: torch.Tensor  # bool  [q_view.num_tiles, S]
    context: Context = field(repr=False)

    @property
    def block_m(self) -> int:
        return self.q_view.block

    @property
    def block_n(self) -> int:
        return self.k_view.block

    @property
    def num_runs(self) -> int:
        return self.kv_lo.shape[1]

    def visited_tiles(self) -> int:
        return int((self.kv_hi.long() - self.kv_lo.long()).sum())

    def full_tiles(self) -> int:
        return int(((self.kv_hi.long() - self.kv_lo.long()) * self.kv_full).sum())

    @cached_property
    def executed_pairs(self) -> int:
        return executed_pairs(self.kv_lo, self.kv_hi, self.q_view.valid_per_tile(),
                              self.k_view.valid_per_tile())

    @cached_property
    @single_threaded
    def allowed_pairs(self) -> int:
        return allowed_pairs(self.predicate, self.context, self.q_view.start, self.q_view.stop)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.kv_lo, self.kv_hi, self.kv_full))

    @single_threaded
    def transpose(self) -> TransposedRuns:
        """The same part indexed by key tile, in closed form (the runs of the transposed
        pattern, rows being keys).  A valid cover with valid full flags; it need not visit
        exactly the forward tiles."""
        n = self.context.n
        g = Geom.make(transpose_kind(self.view), self.k_view, self.q_view, n)
        hull, core = tile_spaces(transpose_expr(self.predicate, n), g, self.context, clip=False)
        lo, hi, full = tile_runs(hull, core, g)
        return TransposedRuns(lo, hi, full)


class Plan:
    """The block plan of one head group's pattern at one length (docs/PLAN.md)."""

    def __init__(self, expr: ir.Expr, n: int, nq: int, q_offset: int, block_m: int, block_n: int,
                 head_dim: int, dtype, parts: tuple, context: Context):
        self.expr = expr
        self.n, self.nq, self.q_offset = n, nq, q_offset
        self.block_m, self.block_n = block_m, block_n
        self.head_dim, self.dtype = head_dim, dtype
        self.parts = parts
        self.context = context

    def __repr__(self) -> str:
        def name(v):
            rows = "" if v.qlo is None and v.qhi is None else f"[{v.qlo}:{v.qhi}]"
            return f"{v.kind}{'' if v.kind == 'id' else (v.s, v.r)}{rows}"
        parts = ", ".join(f"{name(p.view)} {p.block_m}x{p.block_n}" for p in self.parts)
        return (f"Plan(n={self.n}, nq={self.nq}, q_offset={self.q_offset}, tiles={self.block_m}x"
                f"{self.block_n}, parts=[{parts}], work_ratio={self.work_ratio:.3f})")

    @cached_property
    @single_threaded
    def allowed_pairs(self) -> int:
        return allowed_pairs(self.expr, self.context, self.q_offset, self.q_offset + self.nq)

    @cached_property
    def executed_pairs(self) -> int:
        return sum(p.executed_pairs for p in self.parts)

    @property
    def work_ratio(self) -> float:
        a = self.allowed_pairs
        return 1.0 if a == 0 else self.executed_pairs / a

    @property
    def density(self) -> float:
        total = self.nq * self.n
        return 0.0 if total == 0 else self.allowed_pairs / total

    def nbytes(self) -> int:
        """Memory held by the parts' run arrays."""
        return sum(p.nbytes() for p in self.parts)

    def predicate(self, q: torch.Tensor, k: torch.Tensor, expr: ir.Expr | None = None) -> torch.Tensor:
        """The element predicate (absolute positions) of the pattern, or of ``expr``."""
        return evaluate(self.expr if expr is None else expr, q, k, self.context)

    @property
    def mask_mod(self):
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` (``q_idx``: a query row of the call)."""
        expr, off, ctx = self.expr, self.q_offset, self.context
        # FlexAttention traces mask_mod and forbids side effects: one eager evaluation fills
        # the context's lazy caches (index sets, random tables, blockwise contexts) first.
        if self.n > 0:
            probe = torch.zeros((), dtype=torch.int64)
            evaluate(expr, probe, probe, ctx)

        def mask_mod(b, h, q_idx, kv_idx):
            return evaluate(expr, q_idx + off, kv_idx, ctx)
        return mask_mod

    def layout(self, block_m: int | None = None, block_n: int | None = None):
        """Exact empty/partial/full classes of the plain tiling (built when asked, cached)."""
        from .layout import build_layout, tile_sizes
        key = tile_sizes(block_m, block_n, self.block_m, self.block_n)
        cache = self.__dict__.setdefault("_layouts", {})
        if key not in cache:
            cache[key] = single_threaded(build_layout)(self.expr, self.context, self.nq, self.q_offset, *key)
        return cache[key]

    def to_flex_block_mask(self, block_m: int | None = None, block_n: int | None = None):
        """A ``torch.nn.attention.flex_attention.BlockMask`` with the same tiles."""
        from torch.nn.attention.flex_attention import BlockMask
        lay = self.layout(block_m, block_n)

        def four(t):
            return t.reshape(1, 1, *t.shape).contiguous()

        return BlockMask.from_kv_blocks(
            four(lay.kv_num_blocks), four(lay.kv_indices), four(lay.full_kv_num_blocks),
            four(lay.full_kv_indices), BLOCK_SIZE=(lay.block_m, lay.block_n), mask_mod=self.mask_mod,
            seq_lengths=(self.nq, self.n))
