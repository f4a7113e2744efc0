"""The attention runtime: ``patterndsl.compile(spec) -> CompiledPattern``.

A :class:`CompiledPattern` is callable as ``attn(q, k, v, ...)``.  A call

1. validates everything it can before any kernel runs (shapes, dtypes, devices, head
   coverage, document ids, lengths) and raises :class:`~patterndsl.errors.PsparseUsageError`;
2. groups the query heads by the spec line that governs them (``heads`` lines) and, when
   ``doc_ids`` differ between batch elements, splits the batch (one plan per document layout);
3. runs every part of each group's block plan on the chosen backend and merges the parts
   row by row through their log-sum-exp (docs/PLAN.md, "How a kernel iterates a plan");
   a line with data-dependent terms adds one table part per term (one launch each over
   the whole batch and the line's heads, :mod:`patterndsl.dynamic.tables`), merged the
   same way, and ``attn.last_work`` reports the pairs the call executed.

Under ``torch.compile`` the work is the torch custom op ``psparse::attention`` (with a
shape-only fake implementation and an autograd formula calling ``psparse::attention_backward``),
so the compiler sees one opaque op and no graph break; eager calls run the same forward and
backward through a ``torch.autograd.Function`` (the custom op's dispatch would import
``torch._dynamo`` on the first call, seconds).  The op finds its pattern through a registry
keyed by a digest of the canonical spec and the compile options.

Backends: ``"torch"`` (:mod:`patterndsl.backends.torch_backend`, any device; the default on
CPU), ``"triton"`` (the generated Triton kernels; the default on CUDA) and ``"interpret"``
(the same kernels under Triton's interpreter, on CPU tensors).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Optional

import torch

from . import ir
from .errors import PsparseUsageError
from .args import checked_int, query_rows
from .spec import Spec, parse

BACKENDS = ("torch", "triton", "interpret")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIM_RANGE = (16, 256)
TILE_OPTIONS = ("block_m", "block_n")
_NEG_INF = float("-inf")

# digest -> CompiledPattern: how the custom op (which only takes tensors, numbers and
# strings) finds the pattern it runs.  Equal digests mean equal behaviour, so any one
# instance per digest serves.
_REGISTRY: dict[str, "CompiledPattern"] = {}
# digest -> the work tally of the latest forward call (CompiledPattern.last_work)
_LAST_WORK: dict = {}


def compile(spec, *, head_dim: int | None = None, dtype: torch.dtype | None = None,
            backend: str | None = None, dynamic: bool = True, num_layers: int | None = None,
            **tile_options) -> "CompiledPattern":
    """Compile ``spec`` (text or a :class:`~patterndsl.spec.Spec`) into a callable attention.

    ``head_dim``/``dtype``, when given, fix what calls must pass (and size the tiles);
    ``backend`` is ``"torch"``, ``"triton"`` or ``"interpret"`` (default: ``"triton"`` for
    CUDA tensors, ``"torch"`` otherwise); ``block_m=``/``block_n=`` force the tile sizes.

    Data-dependent terms (``vertical(topk=..)``, ``slash(topk=..)``, ``blocks(..)``) are
    chosen by each call from its ``q``/``k`` (:mod:`patterndsl.dynamic`).  A line that is
    monotone in them (no dynamic term right of ``-``) runs as its static part (planned once,
    closed-form runs) plus one table part per term, each one launch over every batch element
    and query head, reading per-call tables built on the device
    (:mod:`patterndsl.dynamic.split`, :mod:`patterndsl.dynamic.tables`), per document
    layout for lines with ``document``; other lines are planned per (batch element, query
    head).  ``dynamic=False``
    refuses such specs, for callers that must never plan per call.
    ``num_layers`` is what a ``pyramid`` budget over those terms needs beside ``layer=``."""
    return CompiledPattern(spec, head_dim=head_dim, dtype=dtype, backend=backend,
                           dynamic=dynamic, num_layers=num_layers, **tile_options)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shape(t) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


class CompiledPattern:
    """A spec ready to run as attention.  See :func:`compile`."""

    def __init__(self, spec, *, head_dim=None, dtype=None, backend=None, dynamic=True,
                 num_layers=None, **tile_options):
        if not isinstance(spec, Spec):
            spec = parse(spec)
        self.spec = spec
        if head_dim is not None:
            if not _is_int(head_dim) or not HEAD_DIM_RANGE[0] <= head_dim <= HEAD_DIM_RANGE[1]:
                raise PsparseUsageError(
                    f"head_dim={head_dim!r}: expected an integer from {HEAD_DIM_RANGE[0]} to "
                    f"{HEAD_DIM_RANGE[1]}")
        if dtype is not None and dtype not in DTYPES:
            raise PsparseUsageError(f"dtype={dtype}: expected torch.float16, torch.bfloat16 or "
                                    "torch.float32")
        if backend is not None and backend not in BACKENDS:
            raise PsparseUsageError(f"backend={backend!r}: expected one of "
                                    f"{', '.join(map(repr, BACKENDS))}")
        for name, value in tile_options.items():
            if name not in TILE_OPTIONS:
                raise PsparseUsageError(f"unknown option {name}=: the tile options are "
                                        f"{', '.join(TILE_OPTIONS)}")
            if value is not None and (not _is_int(value) or value < 16 or value & (value - 1)):
                raise PsparseUsageError(f"{name}={value!r}: expected a power of two >= 16")
        if not isinstance(dynamic, bool):
            raise PsparseUsageError(f"dynamic={dynamic!r}: expected True or False")
        if num_layers is not None and (not _is_int(num_layers) or num_layers < 1):
            raise PsparseUsageError(f"num_layers={num_layers!r}: expected an integer >= 1")
        if not dynamic and spec.canonical_ir.rules and \
                all(r.expr.is_dynamic for r in spec.canonical_ir.rules):
            raise PsparseUsageError(_DYNAMIC_MESSAGE)
        self.dynamic = dynamic
        self.num_layers = num_layers
        self.head_dim = head_dim
        self.dtype = dtype
        self.backend = backend
        self.tile_options = {k: v for k, v in tile_options.items() if v is not None}
        key = (spec.canonical(), head_dim, str(dtype), backend, sorted(self.tile_options.items()))
        if dynamic and spec.is_dynamic:  # the flag means nothing to a static pattern
            key += ("dynamic", num_layers)
        text = repr(key)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:32]
        _REGISTRY.setdefault(self.key, self)
        self._groups_cache: dict = {}
        self._splits: dict = {}

    def __repr__(self) -> str:
        return f"CompiledPattern({self.spec.canonical()!r}, backend={self.backend!r})"

    def kv_cache(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, *,
                 num_heads: int | None = None, dtype=None, device="cpu", max_len: int | None = None,
                 rows: int = 1, backend: str | None = None):
        """A decoding KV cache under this spec's ``kv = ...`` policy that stores only the
        retained keys (see :class:`patterndsl.retention.cache.KVCache`); ``num_heads``
        defaults to ``num_kv_heads``, ``dtype`` to this pattern's dtype or float32, the decode
        ``backend`` to this pattern's (else triton on CUDA, torch elsewhere); ``rows``: the
        most query rows one decode call serves."""
        from .retention.cache import KVCache
        return KVCache(self.spec, num_layers, batch, num_kv_heads, head_dim, num_heads=num_heads,
                       dtype=dtype or self.dtype or torch.float32, device=device, max_len=max_len,
                       rows=rows, backend=backend or self.backend)

    # -- the reference and the plan -----------------------------------------------
    def mask(self, n: int, **kwargs):
        """The reference boolean mask (``Spec.mask``)."""
        return self.spec.mask(n, **kwargs)

    def plan(self, n: int, *, head: int = 0, layer: int = 0, **options):
        """The block plan of the pattern of ``head``/``layer`` at length ``n`` (docs/PLAN.md),
        with this pattern's head_dim, dtype and tile options unless given."""
        from .plan import build_plan
        opts = dict(self.tile_options)
        if self.head_dim is not None:
            opts["head_dim"] = self.head_dim
        if self.dtype is not None:
            opts["dtype"] = self.dtype
        opts.update(options)
        return build_plan(self.spec, n, head=head, layer=layer, **opts)

    @property
    def source(self) -> str:
        """The self-contained module this pattern compiles to (what ``psparse compile``
        writes: it imports only torch and triton), from the module cache."""
        from .modcache import module_text
        opts = dict(self.tile_options)
        if self.head_dim is not None:
            opts["head_dim"] = self.head_dim
        if self.dtype is not None:
            opts["dtype"] = self.dtype
        return module_text(self.spec, **opts)

    # -- FlexAttention -------------------------------------------------------------
    def to_mask_mod(self, n: int | None = None, *, nq: int | None = None,
                    q_offset: int | None = None, layer: int = 0, doc_ids=None, device=None):
        """An equivalent FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``.

        With ``n`` (the number of keys), row ``q_idx`` is position ``q_offset + q_idx``
        (default ``q_offset = n - nq``, ``nq = n``).  Without ``n``, ``q_idx`` and ``kv_idx``
        are absolute positions, which is only allowed for patterns whose meaning does not
        depend on ``n`` (no negative indices, ``random`` or ``blockwise``).  ``h`` selects the
        spec's ``heads`` line; ``b`` selects the row of ``doc_ids`` ``[B, n]``.  ``device``: where
        the mask will be evaluated (its tables are moved there; default: the CPU)."""
        from .plan.context import Context
        from .plan.predicate import evaluate
        rules = [r for r in self.spec.canonical_ir.rules
                 if r.layers is None or layer in r.layers]
        rules.sort(key=lambda r: -r.specificity)
        for r in rules:
            if r.expr.is_dynamic:
                raise PsparseUsageError(
                    "a mask_mod cannot hold data-dependent terms (vertical(topk=..), "
                    "slash(topk=..), blocks(..)): they are chosen per call; use "
                    "attn.selection(q, k) or attn.mask(n, q=q, k=k) instead")
        doc = None
        if doc_ids is not None:
            doc = torch.as_tensor(doc_ids).to(torch.int64)
            if doc.dim() not in (1, 2):
                raise PsparseUsageError(f"doc_ids has shape {_shape(doc)}: expected [n] or [B, n]")
            if n is None:
                n = doc.shape[-1]
            elif doc.shape[-1] != n:
                raise PsparseUsageError(f"doc_ids has {doc.shape[-1]} positions but n = {n}")
        if any(r.expr.needs_doc_ids for r in rules) and doc is None:
            raise PsparseUsageError("this spec uses `document`: pass doc_ids to to_mask_mod")
        if n is None:
            for r in rules:
                if _depends_on_n(r.expr):
                    raise PsparseUsageError(
                        "this pattern's meaning depends on the sequence length (negative indices, "
                        "random or blockwise): pass n to to_mask_mod")
            n_ctx, offset = 1 << 40, 0
        else:
            n = checked_int("n", n, 0)
            nq, offset = query_rows(n, nq, q_offset)
            n_ctx = n
        batched_doc = doc is not None and doc.dim() == 2
        if device is not None and doc is not None:
            doc = doc.to(device)
        # FlexAttention traces mask_mod and forbids side effects: every table the predicate
        # reads (random blocks, blockwise inner contexts) is built now, on the mask's device.
        exprs = [r.expr for r in rules]
        base = _MaskContext.prepare(exprs, Context(n_ctx),
                                    doc if doc is not None and not batched_doc else None, device)
        (base.with_doc(doc[0]) if batched_doc else base).warm(exprs, device)

        def mask_mod(b, h, q_idx, kv_idx):
            ctx = base.with_doc(doc[b]) if batched_doc else base
            q = q_idx + offset
            result = None
            covered = None
            for r in rules:
                allowed = evaluate(r.expr, q, kv_idx, ctx)
                if r.heads is None:
                    take = allowed if covered is None else allowed & ~covered
                    result = take if result is None else result | take
                    break  # a line without a head selector covers every head left
                sel = (h >= r.heads.start) & ((h - r.heads.start) % r.heads.step == 0)
                if r.heads.stop is not None:
                    sel = sel & (h < r.heads.stop)
                fresh = sel if covered is None else sel & ~covered
                take = fresh & allowed
                result = take if result is None else result | take
                covered = sel if covered is None else covered | sel
            if result is None:
                return q_idx != q_idx
            return result

        return mask_mod

    # -- the call ------------------------------------------------------------------
    def __call__(self, q, k, v, *, doc_ids=None, kv_lens=None, scale=None, q_offset=None,
                 layer: int = 0, return_lse: bool = False):
        """Attention of ``q [B, Hq, Nq, D]`` over ``k [B, Hkv, Nk, D]``, ``v [B, Hkv, Nk, Dv]``
        under the pattern: output ``[B, Hq, Nq, Dv]`` in the inputs' dtype, and with
        ``return_lse`` also the natural-log log-sum-exp, float32 ``[B, Hq, Nq]``.

        Query head ``h`` reads KV head ``h // (Hq // Hkv)``.  ``doc_ids`` is ``[Nk]`` or
        ``[B, Nk]``; ``kv_lens [B]`` hides keys at or past each batch element's length (the
        pattern itself is still evaluated at ``n = Nk``).  Row ``i`` is position
        ``q_offset + i`` (default ``Nk - Nq``).  ``scale`` defaults to ``D ** -0.5``."""
        scale, q_offset = self._validate(q, k, v, doc_ids, kv_lens, scale, q_offset, layer)
        args = (q, k, v, doc_ids, kv_lens, self.key, scale, q_offset, layer)
        if torch.compiler.is_compiling():
            out, lse = torch.ops.psparse.attention(*args)
        else:
            # Eagerly the same computation runs through an autograd.Function: calling the
            # custom op would import torch._dynamo (seconds) on the first call.
            out, lse = _AttentionFunction.apply(*args)
        return (out, lse) if return_lse else out

    def _validate(self, q, k, v, doc_ids, kv_lens, scale, q_offset, layer):
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise PsparseUsageError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
            if t.dim() != 4:
                raise PsparseUsageError(
                    f"{name} has shape {_shape(t)}: expected 4 dimensions "
                    f"[batch, heads, length, head_dim]")
        B, Hq, Nq, D = q.shape
        if k.shape[0] != B or v.shape[0] != B:
            raise PsparseUsageError(f"batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}")
        Hkv, Nk = k.shape[1], k.shape[2]
        if v.shape[1] != Hkv or v.shape[2] != Nk:
            raise PsparseUsageError(
                f"k {_shape(k)} and v {_shape(v)} must have the same heads and length")
        if k.shape[3] != D:
            raise PsparseUsageError(f"q and k head dims differ: q {_shape(q)}, k {_shape(k)}")
        if Hkv == 0 or Hq % Hkv:
            raise PsparseUsageError(
                f"q has {Hq} heads and k has {Hkv}: the query heads must be a multiple of the "
                "key/value heads (grouped-query attention)")
        if not (q.dtype == k.dtype == v.dtype):
            raise PsparseUsageError(f"dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}")
        if q.dtype not in DTYPES:
            raise PsparseUsageError(
                f"dtype {q.dtype} is not supported: use float16, bfloat16 or float32")
        if self.dtype is not None and q.dtype != self.dtype:
            raise PsparseUsageError(f"this pattern was compiled for {self.dtype}, got {q.dtype}")
        if not (q.device == k.device == v.device):
            raise PsparseUsageError(f"devices differ: q {q.device}, k {k.device}, v {v.device}")
        lo, hi = HEAD_DIM_RANGE
        for name, d in (("head dim", D), ("value head dim", v.shape[3])):
            if not lo <= d <= hi:
                raise PsparseUsageError(f"{name} {d} is outside the supported {lo} to {hi}")
        if self.head_dim is not None and D != self.head_dim:
            raise PsparseUsageError(f"this pattern was compiled for head_dim={self.head_dim}, "
                                    f"got q with head dim {D}")
        if Nq > Nk:
            raise PsparseUsageError(
                f"q has {Nq} rows but k only {Nk} positions: queries must not outnumber keys")
        if q_offset is None:
            q_offset = Nk - Nq
        elif not _is_int(q_offset) or not 0 <= q_offset <= Nk - Nq:
            raise PsparseUsageError(
                f"q_offset={q_offset!r}: expected an integer from 0 to Nk - Nq = {Nk - Nq}")
        if scale is None:
            scale = D ** -0.5
        elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or \
                not math.isfinite(scale):
            raise PsparseUsageError(f"scale={scale!r}: expected a finite number")
        if not _is_int(layer) or layer < 0:
            raise PsparseUsageError(f"layer={layer!r}: expected an integer >= 0")
        backend = self._backend_name(q)
        if backend == "triton" and q.device.type != "cuda":
            raise PsparseUsageError("backend 'triton' needs CUDA tensors; use backend='torch' or "
                                    "'interpret' on the CPU")
        if backend == "interpret" and q.device.type != "cpu":
            raise PsparseUsageError("backend 'interpret' runs Triton's interpreter on CPU tensors")
        groups = self._head_groups(Hq, layer)
        if any(e.needs_doc_ids for e, _ in groups) and doc_ids is None:
            raise PsparseUsageError(
                f"this spec uses `document`: pass doc_ids (shape [{Nk}] or [{B}, {Nk}])")
        if doc_ids is not None:
            if not isinstance(doc_ids, torch.Tensor):
                raise PsparseUsageError("doc_ids must be a torch.Tensor of integers")
            if doc_ids.dtype.is_floating_point or doc_ids.dtype.is_complex or \
                    doc_ids.dtype == torch.bool:
                raise PsparseUsageError(f"doc_ids must hold integers, not {doc_ids.dtype}")
            if tuple(doc_ids.shape) not in ((Nk,), (B, Nk)):
                raise PsparseUsageError(
                    f"doc_ids has shape {_shape(doc_ids)}: expected [{Nk}] or [{B}, {Nk}]")
        if kv_lens is not None:
            if not isinstance(kv_lens, torch.Tensor):
                raise PsparseUsageError("kv_lens must be a torch.Tensor of integers")
            if kv_lens.dtype.is_floating_point or kv_lens.dtype.is_complex or \
                    kv_lens.dtype == torch.bool:
                raise PsparseUsageError(f"kv_lens must hold integers, not {kv_lens.dtype}")
            if tuple(kv_lens.shape) != (B,):
                raise PsparseUsageError(f"kv_lens has shape {_shape(kv_lens)}: expected [{B}]")
        return float(scale), q_offset

    def _backend_name(self, q) -> str:
        if self.backend is not None:
            return self.backend
        return "triton" if q.device.type == "cuda" else "torch"

    def _head_groups(self, Hq: int, layer: int):
        """``[(expr, [heads])]``: the query heads grouped by the line that governs them."""
        key = (Hq, layer)
        if key not in self._groups_cache:
            program = self.spec.canonical_ir
            by_rule: dict[int, tuple[ir.Expr, list[int]]] = {}
            for h in range(Hq):
                rule = program.rule_for(h, layer)
                if rule is None:
                    where = f"head {h}" + (f" of layer {layer}" if program.has_layers else "")
                    raise PsparseUsageError(
                        f"no line of the spec covers {where}; add a default pattern or a line "
                        "that covers it")
                if rule.expr.is_dynamic and not self.dynamic:
                    raise PsparseUsageError(_DYNAMIC_MESSAGE + f" (head {h} uses one)")
                by_rule.setdefault(id(rule), (rule.expr, []))[1].append(h)
            self._groups_cache[key] = list(by_rule.values())
        return self._groups_cache[key]

    # -- what the custom op runs ---------------------------------------------------
    def _backend(self, q):
        name = self._backend_name(q)
        if name == "torch":
            from .backends import torch_backend
            return torch_backend.forward_part, torch_backend.backward_part, True
        try:
            from .codegen import triton_backend
        except ImportError as e:
            raise PsparseUsageError(
                f"backend {name!r} is not available ({e}); use backend='torch'") from None
        import functools
        fwd, bwd = triton_backend.forward_part, triton_backend.backward_part
        if name == "interpret":
            fwd = functools.partial(fwd, interpret=True)
            bwd = functools.partial(bwd, interpret=True)
        import inspect
        takes_dlse = "dlse" in inspect.signature(triton_backend.backward_part).parameters
        return fwd, bwd, takes_dlse

    def selection(self, q, k, *, scale=None, q_offset=None, layer: int = 0):
        """What the data-dependent terms choose for this call: ``{term: Selection}``
        (:func:`patterndsl.dynamic.select`)."""
        from .dynamic import select
        with torch.no_grad():
            return select(self.spec, q, k, scale=scale, q_offset=q_offset, layer=layer,
                          num_layers=self.num_layers)

    def _work(self, q, k, doc_ids, q_offset, layer, scale=None):
        """Yield ``(plan, batch slice, head index tensor, kv index tensor, doc row, tables)``:
        one item per head group and document layout.  ``plan`` may be None (nothing static)
        and ``tables`` (a :class:`~patterndsl.dynamic.tables.CallTables`) holds the table
        parts of a line with data-dependent terms; lines that cannot be split are planned per
        batch element and query head (``tables`` None)."""
        from .plan import build_plan
        B, Hq, Nq, D = q.shape
        Hkv, Nk = k.shape[1], k.shape[2]
        g = Hq // Hkv
        opts = dict(self.tile_options)
        opts["head_dim"] = self.head_dim if self.head_dim is not None else D
        opts["dtype"] = self.dtype if self.dtype is not None else q.dtype
        selections = None
        for expr, heads in self._head_groups(Hq, layer):
            sp = self._split(expr) if expr.is_dynamic else None
            if expr.is_dynamic and selections is None:
                selections = self.selection(q, k, scale=scale, q_offset=q_offset, layer=layer)
            if expr.is_dynamic and sp is None:
                for item in self._dynamic_work(expr, heads, selections, q, k, doc_ids, q_offset, opts):
                    yield (*item, None)
                continue
            hq = torch.tensor(heads, dtype=torch.int64)
            kv_of = hq // g
            kv_set = sorted(set(kv_of.tolist()))
            # Whole KV groups keep grouped-query attention; otherwise one KV head per query head.
            if len(heads) == g * len(kv_set):
                hk = torch.tensor(kv_set, dtype=torch.int64)
            else:
                hk = kv_of
            splits = [(slice(0, B), None)]
            if expr.needs_doc_ids:
                doc = doc_ids.to("cpu", torch.int64)
                if doc.dim() == 1:
                    splits = [(slice(0, B), doc)]
                elif bool((doc == doc[:1]).all()):
                    splits = [(slice(0, B), doc[0])]
                else:
                    splits = [(slice(b, b + 1), doc[b]) for b in range(B)]
            if sp is not None:
                from .dynamic.tables import build_tables
                for bs, doc in splits:
                    plan = None
                    if not isinstance(sp.static, ir.Nothing):
                        plan = build_plan(sp.static, Nk, nq=Nq, q_offset=q_offset, doc_ids=doc,
                                          **opts)
                    sels = selections if bs.stop - bs.start == B else \
                        {t: dataclasses.replace(s, index=s.index[bs], count=s.count[bs])
                         for t, s in selections.items()}
                    tabs = build_tables(sp, sels, heads, bs.stop - bs.start, Nq, Nk, q_offset,
                                        block_m=self.tile_options.get("block_m", 64),
                                        block_n=self.tile_options.get("block_n", 64))
                    yield plan, bs, hq, hk, doc, tabs
                continue
            for bs, doc in splits:
                plan = build_plan(expr, Nk, nq=Nq, q_offset=q_offset, doc_ids=doc, **opts)
                yield plan, bs, hq, hk, doc, None

    def _split(self, expr):
        """The static and table parts of a dynamic line (None: plan per head instead)."""
        if expr not in self._splits:
            from .dynamic.split import split
            self._splits[expr] = split(expr)
        return self._splits[expr]

    def _table_backend(self, q):
        name = self._backend_name(q)
        if name == "torch":
            from .backends import torch_backend
            return torch_backend.forward_table_part, torch_backend.backward_table_part
        from .codegen import triton_backend
        import functools
        interp = name == "interpret"
        return (functools.partial(triton_backend.forward_table_part, interpret=interp),
                functools.partial(triton_backend.backward_table_part, interpret=interp))

    @property
    def last_work(self):
        """The :class:`~patterndsl.dynamic.work.Work` of the latest forward call (executed
        pairs of every part, static and table; launches), read from the device on access."""
        tally = _LAST_WORK.get(self.key)
        return None if tally is None else tally.result()

    def work(self, q, k, *, doc_ids=None, scale=None, q_offset=None, layer: int = 0):
        """Executed and exactly allowed pairs of a call on ``q``/``k`` (a
        :class:`~patterndsl.dynamic.work.Work`; ``allowed_pairs`` of table parts counted
        by their element predicates over the visited tiles, never an ``n x n`` mask)."""
        from .dynamic.work import Tally
        from .plan.context import Context
        v = k
        scale, q_offset = self._validate(q, k, v, doc_ids, None, scale, q_offset, layer)
        tally = Tally()
        with torch.no_grad():
            for plan, bs, hq, hk, doc, tabs in self._work(q, k, doc_ids, q_offset, layer, scale):
                copies = (bs.stop - bs.start) * hq.numel()
                if plan is not None:
                    tally.add_plan(plan, copies, allowed=True)
                if tabs is not None:
                    ctx = self._table_context(plan, k.shape[2], doc)
                    for tp in tabs.parts:
                        tally.add_table(tp, tabs, allowed=True, ctx=ctx)
        return tally.result()

    @staticmethod
    def _dynamic_work(expr, heads, selections, q, k, doc_ids, q_offset, opts):
        """One static plan per (batch element, query head): the line's dynamic terms replaced
        by what that head chose (:func:`patterndsl.dynamic.substitute`)."""
        from .dynamic import substitute
        from .plan import build_plan
        B, Nq, Nk = q.shape[0], q.shape[2], k.shape[2]
        g = q.shape[1] // k.shape[1]
        doc_all = None if doc_ids is None or not expr.needs_doc_ids else doc_ids.to("cpu", torch.int64)
        for b in range(B):
            doc = None if doc_all is None else (doc_all if doc_all.dim() == 1 else doc_all[b])
            for h in heads:
                static = substitute(expr, selections, b, h)
                plan = build_plan(static, Nk, nq=Nq, q_offset=q_offset, doc_ids=doc, **opts)
                yield (plan, slice(b, b + 1), torch.tensor([h], dtype=torch.int64),
                       torch.tensor([h // g], dtype=torch.int64), doc)

    @staticmethod
    def _pick(t, bs, idx, full: int):
        t = t[bs]
        if idx.numel() == full and bool((idx == torch.arange(full)).all()):
            return t
        return t.index_select(1, idx.to(t.device))

    def _check_kv_lens(self, kv_lens, Nk):
        if kv_lens is not None:
            kl = kv_lens.to("cpu")
            if bool(((kl < 0) | (kl > Nk)).any()):
                raise PsparseUsageError(f"kv_lens holds {kl.tolist()}: each must be in [0, {Nk}]")

    def _forward(self, q, k, v, doc_ids, kv_lens, scale, q_offset, layer):
        B, Hq, Nq, _ = q.shape
        Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
        out = torch.zeros((B, Hq, Nq, Dv), dtype=torch.float32, device=q.device)
        lse = torch.full((B, Hq, Nq), _NEG_INF, dtype=torch.float32, device=q.device)
        if Nq == 0 or Nk == 0 or B == 0:
            return out.to(q.dtype), lse
        self._check_kv_lens(kv_lens, Nk)
        fwd, _, _ = self._backend(q)
        from .dynamic.work import Tally
        tally = Tally()
        for plan, bs, hq, hk, doc, tabs in self._work(q, k, doc_ids, q_offset, layer, scale):
            qs, ks, vs = self._pick(q, bs, hq, Hq), self._pick(k, bs, hk, Hkv), self._pick(v, bs, hk, Hkv)
            kl = None if kv_lens is None else kv_lens[bs]
            dd = None if doc is None else doc.to(q.device)
            results = []
            if plan is not None:
                tally.add_plan(plan, (bs.stop - bs.start) * hq.numel())
                results = [fwd(part, plan, qs, ks, vs, scale=scale, kv_lens=kl, doc_ids=dd)
                           for part in plan.parts]
            if tabs is not None:
                tfwd, _ = self._table_backend(q)
                ctx = self._table_context(plan, Nk, doc)
                for tp in tabs.parts:
                    tally.add_table(tp, tabs)
                    results.append(tfwd(tp, tabs, qs, ks, vs, scale=scale, kv_lens=kl, ctx=ctx))
            o, l = _merge(results, qs, vs)
            out[bs].index_copy_(1, hq.to(q.device), o)
            lse[bs].index_copy_(1, hq.to(q.device), l)
        # The custom op runs the registry's instance of this digest: record by digest.
        _LAST_WORK[self.key] = tally
        return out.to(q.dtype), lse

    @staticmethod
    def _table_context(plan, n, doc=None):
        from .plan.context import Context
        return plan.context if plan is not None else Context(n, doc)

    def _backward(self, q, k, v, out, lse, dout, dlse, doc_ids, kv_lens, scale, q_offset, layer):
        B, Hq, Nq, _ = q.shape
        Hkv, Nk = k.shape[1], k.shape[2]
        f32 = dict(dtype=torch.float32, device=q.device)
        dq = torch.zeros(q.shape, **f32)
        dk = torch.zeros(k.shape, **f32)
        dv = torch.zeros(v.shape, **f32)
        if Nq == 0 or Nk == 0 or B == 0:
            return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
        _, bwd, takes_dlse = self._backend(q)
        if dlse is not None and not takes_dlse:
            if bool((dlse != 0).any()):
                raise PsparseUsageError("this backend cannot differentiate through the "
                                        "log-sum-exp; use backend='torch'")
            dlse = None
        for plan, bs, hq, hk, doc, tabs in self._work(q, k, doc_ids, q_offset, layer, scale):
            qs, ks, vs = self._pick(q, bs, hq, Hq), self._pick(k, bs, hk, Hkv), self._pick(v, bs, hk, Hkv)
            os_, ls, ds = self._pick(out, bs, hq, Hq), self._pick(lse, bs, hq, Hq), self._pick(dout, bs, hq, Hq)
            extra = {}
            if dlse is not None:
                extra["dlse"] = self._pick(dlse, bs, hq, Hq)
            kl = None if kv_lens is None else kv_lens[bs]
            dd = None if doc is None else doc.to(q.device)
            grads = []
            for part in (plan.parts if plan is not None else ()):
                grads.append(bwd(part, plan, qs, ks, vs, os_, ls, ds, scale=scale, kv_lens=kl,
                                 doc_ids=dd, **extra))
            if tabs is not None:
                _, tbwd = self._table_backend(q)
                ctx = self._table_context(plan, Nk, doc)
                for tp in tabs.parts:
                    grads.append(tbwd(tp, tabs, qs, ks, vs, os_, ls, ds, scale=scale, kv_lens=kl,
                                      ctx=ctx, **extra))
            gq = gk = gv = None
            for a, b_, c in grads:
                gq = a if gq is None else gq + a
                gk = b_ if gk is None else gk + b_
                gv = c if gv is None else gv + c
            if gq is None:
                continue
            dq[bs].index_add_(1, hq.to(q.device), gq.to(torch.float32))
            dk[bs].index_add_(1, hk.to(q.device), gk.to(torch.float32))
            dv[bs].index_add_(1, hk.to(q.device), gv.to(torch.float32))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


_DYNAMIC_MESSAGE = ("this pattern was compiled with dynamic=False, which refuses data-dependent "
                    "terms (vertical(topk=..), slash(topk=..), blocks(..)); compile it with "
                    "dynamic=True (the default) to choose them from each call's q and k")


def _merge(parts, q, v):
    """Merge per-part ``(out_p, lse_p)`` row by row through the log-sum-exp."""
    B, Hq, Nq = q.shape[0], q.shape[1], q.shape[2]
    if not parts:
        return (torch.zeros((B, Hq, Nq, v.shape[3]), dtype=torch.float32, device=q.device),
                torch.full((B, Hq, Nq), _NEG_INF, dtype=torch.float32, device=q.device))
    if len(parts) == 1:
        return parts[0]
    lse = torch.logsumexp(torch.stack([l for _, l in parts]), 0)
    ref = torch.where(lse == _NEG_INF, torch.zeros_like(lse), lse)
    out = None
    for o, l in parts:
        term = o * torch.exp(l - ref).unsqueeze(-1)
        out = term if out is None else out + term
    return out, lse


class _MaskContext:
    """A predicate context for a traced mask_mod: the random tables moved to the mask's
    device, the document ids of one batch row, and everything else read from a planner
    :class:`~patterndsl.plan.context.Context` whose lazy caches were filled beforehand (so
    tracing only reads them)."""

    def __init__(self, base, doc_ids, tables, inners):
        self._base = base
        self.n = base.n
        self.doc_ids = doc_ids
        self.inner_level = base.inner_level
        self._tables = tables
        self._inners = inners

    @classmethod
    def prepare(cls, exprs, ctx, doc_ids, device):
        tables, nested = {}, {}

        def visit(e):
            if isinstance(e, ir.Random):
                t = ctx.random_table(e)
                tables[(e.count, e.block, e.seed, e.causal)] = t if device is None else t.to(device)
            elif isinstance(e, ir.Blockwise):
                nested.setdefault(e.block, (e, []))[1].append(e.expr)
                return
            for c in e.children():
                visit(c)

        for e in exprs:
            visit(e)
        inners = {b: cls.prepare(body, ctx.inner(node), None, device)
                  for b, (node, body) in nested.items()}
        return cls(ctx, doc_ids, tables, inners)

    def warm(self, exprs, device):
        """Evaluate once eagerly, filling the base contexts' caches (index sets, ...)."""
        from .plan.predicate import evaluate
        probe = torch.zeros((), dtype=torch.int64, device=device)
        for e in exprs:
            evaluate(e, probe, probe, self)

    def __getattr__(self, name):
        return getattr(self._base, name)

    def with_doc(self, doc_row):
        return _MaskContext(self._base, doc_row, self._tables, self._inners)

    def random_table(self, node):
        return self._tables[(node.count, node.block, node.seed, node.causal)]

    def inner(self, node):
        return self._inners[node.block]

    def require_doc_ids(self):
        if self.inner_level:
            raise PsparseUsageError("`document` cannot appear inside blockwise(...)")
        if self.doc_ids is None:
            raise PsparseUsageError("this spec uses `document`: pass doc_ids")
        return self.doc_ids


def _depends_on_n(expr: ir.Expr) -> bool:
    """Whether the pattern's pairs change with ``n`` (beyond clipping to ``[0, n)``)."""
    for node in expr.walk():
        if isinstance(node, (ir.Random, ir.Blockwise)):
            return True
        if isinstance(node, (ir.Rows, ir.Cols, ir.Global)):
            for item in node.index.items:
                if isinstance(item, ir.Slice):
                    if item.step is not None and item.step < 0:
                        return True
                    if (item.start or 0) < 0 or (item.stop is not None and item.stop < 0):
                        return True
                elif item < 0:
                    return True
    return False


# ---------------------------------------------------------------------------
# The custom op
# ---------------------------------------------------------------------------

@torch.library.custom_op("psparse::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  doc_ids: Optional[torch.Tensor], kv_lens: Optional[torch.Tensor], key: str,
                  scale: float, q_offset: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _REGISTRY[key]._forward(q, k, v, doc_ids, kv_lens, scale, q_offset, layer)


@_attention_op.register_fake
def _attention_fake(q, k, v, doc_ids, kv_lens, key, scale, q_offset, layer):
    B, Hq, Nq, _ = q.shape
    return (q.new_empty((B, Hq, Nq, v.shape[3])),
            q.new_empty((B, Hq, Nq), dtype=torch.float32))


@torch.library.custom_op("psparse::attention_backward", mutates_args=())
def _attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                           dlse: Optional[torch.Tensor], doc_ids: Optional[torch.Tensor],
                           kv_lens: Optional[torch.Tensor], key: str, scale: float,
                           q_offset: int, layer: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _REGISTRY[key]._backward(q, k, v, out, lse, dout, dlse, doc_ids, kv_lens, scale,
                                    q_offset, layer)


@_attention_backward_op.register_fake
def _attention_backward_fake(q, k, v, out, lse, dout, dlse, doc_ids, kv_lens, key, scale,
                             q_offset, layer):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _AttentionFunction(torch.autograd.Function):
    """The eager path of ``psparse::attention`` (same forward and backward)."""

    @staticmethod
    def forward(ctx, q, k, v, doc_ids, kv_lens, key, scale, q_offset, layer):
        out, lse = _REGISTRY[key]._forward(q, k, v, doc_ids, kv_lens, scale, q_offset, layer)
        _setup_context(ctx, (q, k, v, doc_ids, kv_lens, key, scale, q_offset, layer), (out, lse))
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, doc_ids, kv_lens = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _REGISTRY[ctx.args[0]]._backward(q, k, v, out, lse, dout, dlse, doc_ids,
                                                      kv_lens, *ctx.args[1:])
        return dq, dk, dv, None, None, None, None, None, None


def _setup_context(ctx, inputs, output):
    q, k, v, doc_ids, kv_lens, key, scale, q_offset, layer = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, doc_ids, kv_lens)
    ctx.args = (key, scale, q_offset, layer)


def _attention_grad(ctx, dout, dlse):
    q, k, v, out, lse, doc_ids, kv_lens = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.psparse.attention_backward(q, k, v, out, lse, dout, dlse, doc_ids,
                                                      kv_lens, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


_attention_op.register_autograd(_attention_grad, setup_context=_setup_context)
