"""Launchers of the generated Triton kernels, one part of a plan at a time.

``forward_part`` and ``backward_part`` run one :class:`Part` (docs/PLAN.md): the query
tiles of its ``q_view`` form the grid's first axis, batch x query head the second; each
program walks its runs ``[kv_lo, kv_hi)`` of ``k_view`` tiles, skipping the element
predicate on full runs.  The caller merges parts (log-sum-exp) and sums gradients.

The backward pass computes dQ query-tile-major (the forward loop; each program owns the
dQ rows of its tile) and dK/dV key-tile-major from ``Part.transpose()`` (each program owns
the rows of one key tile and sums over the query heads of its KV group): no atomics, a
deterministic order, and the same closed-form runs as the forward pass, transposed.  For
parts without ``transpose()``, or on request (``dkv="atomic"``), dK/dV are instead added from
the dQ loop with float32 ``tl.atomic_add`` (correct, in the interpreter too, but with atomic
traffic and a non-deterministic summation order on a GPU).

Kernels are generated per canonical predicate (see :mod:`.render`), written to a cache
directory and imported from there, because ``triton.jit`` reads its function's source from
a real file.  ``interpret=True`` runs the very same kernel functions with Triton's
interpreter, in this process, on CPU or GPU tensors.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

from .. import ir
from ..errors import PsparseUsageError
from ..fileio import write_atomic
from .emit import CAP, bind
from .render import kernel_source

_LOCK = threading.RLock()
_MODULES: dict[str, object] = {}
_INTERPRETED: dict[tuple[str, str], object] = {}
_BOUND: OrderedDict = OrderedDict()
_RUNS: OrderedDict = OrderedDict()
_CACHE_LIMIT = 256


def cache_dir() -> Path:
    """``PSPARSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/psparse`` (``~/.cache/psparse``)."""
    env = os.environ.get("PSPARSE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "psparse"


def _materialise(name: str, src: str) -> Path:
    """The file holding ``src`` in the cache; an entry with other content (corrupted,
    truncated, or written by another version) is rewritten, never trusted."""
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"{name}_{digest}.py"
    try:
        ok = path.read_text(encoding="utf-8") == src
    except (OSError, UnicodeDecodeError):
        ok = False
    if not ok:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, src.encode("utf-8"), 0o644)
    dump = os.environ.get("PSPARSE_DUMP_DIR")
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(dump) / path.name, src.encode("utf-8"), 0o644)
    return path


def load_generated(name: str, src: str, prefix: str = "_psparse_kernels"):
    """The imported module of generated source ``src`` (written to the cache, imported once
    per process: ``triton.jit`` needs a real file to read its functions from)."""
    with _LOCK:
        mod = _MODULES.get(name)
        if mod is None:
            path = _materialise(name, src)
            modname = f"{prefix}_{path.stem}"
            spec = importlib.util.spec_from_file_location(modname, str(path))
            mod = importlib.util.module_from_spec(spec)
            sys.modules[modname] = mod
            spec.loader.exec_module(mod)
            _MODULES[name] = mod
    return mod


def generated_kernel(name: str, mod, which: str, interpret: bool):
    """``{name}_{which}`` of a generated module, as an interpreted function when asked."""
    fn = getattr(mod, f"{name}_{which}")
    if not interpret:
        return fn
    with _LOCK:
        key = (name, which)
        if key not in _INTERPRETED:
            from triton.runtime.interpreter import InterpretedFunction
            # Under TRITON_INTERPRET=1 triton.jit already returned an interpreted function.
            _INTERPRETED[key] = fn if isinstance(fn, InterpretedFunction) else InterpretedFunction(fn.fn)
        return _INTERPRETED[key]


def kernel_module(expr: ir.Expr):
    """The imported module of ``expr``'s kernels (cached in-process)."""
    name, src = kernel_source(ir.strip_spans(expr))
    return name, load_generated(name, src)


# The kernels call these non-builtin helpers of triton.language; Triton's interpreter can
# only run them as interpreted functions, which triton.jit makes of them only when
# TRITON_INTERPRET=1 was set before triton was imported.
_STDLIB = ("max", "sum")


@contextmanager
def _interpreting():
    """Let an interpreted kernel run in a process whose triton is in compiled mode: the
    helpers above are swapped for interpreted wrappers of the same functions for the
    duration of the launch (and restored even if it fails)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    with _LOCK:
        saved = {name: getattr(tl, name) for name in _STDLIB}
        try:
            for name, fn in saved.items():
                if not isinstance(fn, InterpretedFunction):
                    setattr(tl, name, InterpretedFunction(fn.fn))
            yield
        finally:
            for name, fn in saved.items():
                setattr(tl, name, fn)


def _launch(fn, grid, interpret, args, kwargs):
    if interpret:
        with _interpreting():
            fn[grid](*args, **kwargs)
    else:
        tile = kwargs["BLOCK_M"] * max(kwargs["BLOCK_N"], kwargs["BLOCK_DV"])
        fn[grid](*args, num_warps=4 if tile <= 64 * 64 else 8, **kwargs)


def _interpreted(fn, q) -> bool:
    """Whether ``fn`` runs under Triton's interpreter; compiled kernels need CUDA tensors."""
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(fn, InterpretedFunction):
        return True
    if q.device.type != "cuda":
        raise PsparseUsageError(
            f"the compiled Triton kernels need CUDA tensors (got {q.device.type}); "
            "use interpret=True (backend='interpret') or the torch backend on this device")
    return False


def _kernel(expr: ir.Expr, which: str, interpret: bool):
    name, mod = kernel_module(expr)
    return generated_kernel(name, mod, which, interpret)


def _remember(cache: OrderedDict, key, make):
    with _LOCK:
        hit = cache.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], key[1])):
            cache.move_to_end(key)
            return hit[1]
    value = make()
    with _LOCK:
        cache[key] = (key[1], value)
        while len(cache) > _CACHE_LIMIT:
            cache.popitem(last=False)
    return value


def _bound(expr, ctx, device):
    """Parameters and tables of ``expr`` at ``ctx`` on ``device`` (cached per context)."""
    import torch

    def make():
        params, table = bind(expr, ctx)
        prm = torch.tensor(params or [0], dtype=torch.int32)
        return prm.to(device), table.to(device)
    return _remember(_BOUND, (expr, (ctx,), str(device)), make)


def _runs(part, device):
    import torch

    def make():
        lo = part.kv_lo.to(device=device, dtype=torch.int32).contiguous()
        hi = part.kv_hi.to(device=device, dtype=torch.int32).contiguous()
        full = part.kv_full.to(device=device, dtype=torch.int32).contiguous()
        has_partial = bool(((part.kv_full == 0) & (part.kv_hi > part.kv_lo)).any())
        return lo, hi, full, has_partial
    return _remember(_RUNS, (id(part), (part.kv_lo, part.kv_hi, part.kv_full), str(device)), make)


def _pow2(x: int) -> int:
    return max(16, 1 << (max(x, 1) - 1).bit_length())


def _check(part, plan, q, k, v, kv_lens, doc_ids):
    import torch
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise PsparseUsageError("q, k and v must be 4-D: [batch, heads, length, head_dim]")
    B, Hq, Nq, D = q.shape
    Bk, Hkv, Nk, Dk = k.shape
    if k.shape[:3] != v.shape[:3] or Bk != B or Dk != D:
        raise PsparseUsageError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise PsparseUsageError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if not (q.device == k.device == v.device):
        raise PsparseUsageError(f"q, k, v must be on one device (got {q.device}, {k.device}, {v.device})")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise PsparseUsageError("q, k, v must share one dtype: float16, bfloat16 or float32")
    if not 1 <= D <= 256 or not 1 <= v.shape[-1] <= 256:
        raise PsparseUsageError("head dims up to 256 are supported")
    if Nq != plan.nq or Nk < plan.n:
        raise PsparseUsageError(f"the plan is for {plan.nq} queries over {plan.n} keys; got {Nq} and {Nk}")
    if plan.n > CAP:
        raise PsparseUsageError(f"sequences longer than {CAP} positions are not supported")
    if kv_lens is not None and tuple(kv_lens.shape) != (B,):
        raise PsparseUsageError(f"kv_lens must have shape [{B}]")
    if part.predicate.needs_doc_ids:
        if doc_ids is None:
            raise PsparseUsageError("this pattern uses `document`: pass doc_ids")
        if doc_ids.dim() not in (1, 2) or doc_ids.shape[-1] < plan.n or (doc_ids.dim() == 2 and doc_ids.shape[0] not in (1, B)):
            raise PsparseUsageError(f"doc_ids must have shape [n] or [batch, n] (n = {plan.n})")


def _common(part, plan, q, k, v, kv_lens, doc_ids):
    import torch
    device = q.device
    if doc_ids is None and part.predicate.needs_doc_ids:
        doc_ids = plan.context.doc_ids
    _check(part, plan, q, k, v, kv_lens, doc_ids)
    prm, tab = _bound(part.predicate, plan.context, device)
    dummy = prm
    if doc_ids is not None and part.predicate.needs_doc_ids:
        doc = doc_ids.to(device)
        doc_sb = doc.stride(0) if doc.dim() == 2 and doc.shape[0] > 1 else 0
        doc_sn = doc.stride(-1)
    else:
        doc, doc_sb, doc_sn = dummy, 0, 0
    kvl = kv_lens.to(device=device, dtype=torch.int32) if kv_lens is not None else dummy
    lo, hi, full, has_partial = _runs(part, device)
    qv, kv = part.q_view, part.k_view
    views = (qv.period, qv.start, qv.stop, qv.class_tiles, kv.period, kv.start, kv.stop, kv.class_tiles)
    return dict(prm=prm, tab=tab, doc=doc, doc_sb=doc_sb, doc_sn=doc_sn, kvl=kvl, lo=lo, hi=hi,
                full=full, has_partial=has_partial, views=views, S=int(part.kv_lo.shape[1]))


def _prec(q, interpret: bool) -> dict:
    """Dot precision flags.  float32 stays float32 (IEEE, no TF32) so results match a
    float64 reference tightly; 16-bit inputs use the native tensor-core dot.  Triton's
    interpreter multiplies bfloat16 blocks wrongly (numpy has no bfloat16), so there the
    tiles are widened to float32 after loading."""
    import torch
    upcast = interpret and q.dtype == torch.bfloat16
    prec = "ieee" if q.dtype == torch.float32 or upcast else "tf32"
    return dict(DOT_PREC=prec, UPCAST=upcast)


def forward_part(part, plan, q, k, v, *, scale, kv_lens=None, doc_ids=None, interpret=False):
    """``(out_p, lse_p)`` of one part: float32 ``[B, Hq, Nq, Dv]`` and ``[B, Hq, Nq]``;
    rows with no allowed key in this part get 0 and ``-inf``."""
    import torch
    c = _common(part, plan, q, k, v, kv_lens, doc_ids)
    B, Hq, Nq, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    out = torch.zeros((B, Hq, Nq, Dv), dtype=torch.float32, device=q.device)
    lse = torch.full((B, Hq, Nq), float("-inf"), dtype=torch.float32, device=q.device)
    grid = (part.q_view.num_tiles, B * Hq)
    if grid[0] == 0 or grid[1] == 0 or c["S"] == 0:
        return out, lse
    fn = _kernel(part.predicate, "fwd", interpret)
    interpret = _interpreted(fn, q)
    _launch(fn, grid, interpret, (
        q, k, v, out, lse, c["prm"], c["tab"], c["doc"], c["kvl"], c["lo"], c["hi"], c["full"],
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(), c["doc_sb"], c["doc_sn"],
        Hq, Hq // Hkv, D, Dv, plan.q_offset, *c["views"],
        float(scale) * 1.4426950408889634,
    ), dict(
        S=c["S"], BLOCK_M=part.q_view.block, BLOCK_N=part.k_view.block,
        BLOCK_D=_pow2(D), BLOCK_DV=_pow2(Dv),
        HAS_KV_LENS=kv_lens is not None, HAS_PARTIAL=c["has_partial"], **_prec(q, interpret),
    ))
    return out, lse


def _transposed(part, device):
    """The part's runs indexed by key tile (``Part.transpose()``), on ``device``."""
    import torch

    def make():
        tr = part.transpose()
        lo = tr.q_lo.to(device=device, dtype=torch.int32).contiguous()
        hi = tr.q_hi.to(device=device, dtype=torch.int32).contiguous()
        full = tr.q_full.to(device=device, dtype=torch.int32).contiguous()
        has_partial = bool(((tr.q_full == 0) & (tr.q_hi > tr.q_lo)).any())
        return lo, hi, full, has_partial
    return _remember(_RUNS, (("transposed", id(part)), (part.kv_lo, part.kv_hi, part.kv_full), str(device)), make)


def backward_part(part, plan, q, k, v, out, lse, dout, *, scale, kv_lens=None, doc_ids=None,
                  dlse=None, interpret=False, dkv=None):
    """``(dq, dk, dv)`` float32 contributions of one part, given the final (merged) ``out``
    and natural-log ``lse``; rows with ``lse = -inf`` get zero gradient.  ``dlse``, the
    gradient of the loss with respect to ``lse`` (``[B, Hq, Nq]``), adds ``P * dlse`` to
    ``dS`` (``d lse / d s = P``).

    ``dkv`` picks how dK/dV are computed: ``"key-major"`` (a second kernel over the key tiles
    of the part's transposed runs, each program owning its rows: no atomics, deterministic;
    the default when the part has ``transpose()``) or ``"atomic"`` (float32 atomic adds from
    the query-tile-major dQ loop)."""
    import torch
    c = _common(part, plan, q, k, v, kv_lens, doc_ids)
    B, Hq, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    if tuple(dout.shape) != (B, Hq, Nq, Dv) or tuple(out.shape) != (B, Hq, Nq, Dv) or tuple(lse.shape) != (B, Hq, Nq):
        raise PsparseUsageError("out, lse and dout must match the forward shapes")
    if dkv is None:
        dkv = "key-major" if hasattr(part, "transpose") else "atomic"
    if dkv not in ("key-major", "atomic"):
        raise PsparseUsageError(f"dkv={dkv!r}: expected 'key-major' or 'atomic'")
    dq = torch.zeros((B, Hq, Nq, D), dtype=torch.float32, device=q.device)
    dk = torch.zeros((B, Hkv, Nk, D), dtype=torch.float32, device=q.device)
    dv = torch.zeros((B, Hkv, Nk, Dv), dtype=torch.float32, device=q.device)
    grid = (part.q_view.num_tiles, B * Hq)
    if grid[0] == 0 or grid[1] == 0 or c["S"] == 0:
        return dq, dk, dv
    lse32, delta, do = _backward_inputs(q, out, lse, dout, dlse)
    fn = _kernel(part.predicate, "bwd", interpret)
    interpret = _interpreted(fn, q)
    common = dict(BLOCK_M=part.q_view.block, BLOCK_N=part.k_view.block, BLOCK_D=_pow2(D),
                  BLOCK_DV=_pow2(Dv), HAS_KV_LENS=kv_lens is not None, **_prec(q, interpret))
    _launch(fn, grid, interpret, (
        q, k, v, do, lse32, delta, dq, dk, dv, c["prm"], c["tab"], c["doc"], c["kvl"],
        c["lo"], c["hi"], c["full"],
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *lse32.stride(),
        *dq.stride(), *dk.stride(), *dv.stride(), c["doc_sb"], c["doc_sn"],
        Hq, Hq // Hkv, D, Dv, plan.q_offset, *c["views"],
        float(scale) * 1.4426950408889634, float(scale),
    ), dict(S=c["S"], HAS_PARTIAL=c["has_partial"], ATOMIC_DKV=dkv == "atomic", **common))
    if dkv == "atomic":
        return dq, dk, dv
    lo, hi, full, has_partial = _transposed(part, q.device)
    grid = (part.k_view.num_tiles, B * Hkv)
    if grid[0] == 0 or lo.shape[1] == 0:
        return dq, dk, dv
    _launch(_kernel(part.predicate, "bwd_dkv", interpret), grid, interpret, (
        q, k, v, do, lse32, delta, dk, dv, c["prm"], c["tab"], c["doc"], c["kvl"], lo, hi, full,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *lse32.stride(),
        *dk.stride(), *dv.stride(), c["doc_sb"], c["doc_sn"],
        Hkv, Hq // Hkv, D, Dv, plan.q_offset, *c["views"],
        float(scale) * 1.4426950408889634, float(scale),
    ), dict(S=int(lo.shape[1]), HAS_PARTIAL=has_partial, **common))
    return dq, dk, dv


# ---------------------------------------------------------------------------
# Table parts of lines with data-dependent terms (patterndsl.dynamic.tables)
# ---------------------------------------------------------------------------

def table_kernel_module(expr: ir.Expr):
    """The imported module of a table part's kernels (cached in-process)."""
    from .render import table_kernel_source
    name, src = table_kernel_source(ir.strip_spans(expr))
    return name, load_generated(name, src)


def _table_kernel(expr, which, interpret):
    name, mod = table_kernel_module(expr)
    return generated_kernel(name, mod, which, interpret)


def _backward_inputs(q, out, lse, dout, dlse):
    """What every backward kernel reads besides q, k, v: the float32 row log-sum-exp, the
    row terms ``delta = rowsum(dO * O) - dLSE`` and dO in the inputs' dtype."""
    import torch
    lse32 = lse.to(torch.float32).contiguous()
    delta = (dout.to(torch.float32) * out.to(torch.float32)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(torch.float32)
    do = dout if dout.dtype == q.dtype else dout.to(q.dtype)
    return lse32, delta.contiguous(), do


def _table_common(tp, tabs, q, k, v, kv_lens, ctx):
    import torch
    from .emit import bind_dynamic
    B, G, Nq, D = q.shape
    Gk, Nk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    if Nk > CAP:
        raise PsparseUsageError(f"sequences longer than {CAP} positions are not supported")
    dev = q.device
    params, table = bind_dynamic(tp.kernel_predicate, ctx, tabs)
    prm = torch.tensor(params or [0], dtype=torch.int32, device=dev)
    kvl = kv_lens.to(device=dev, dtype=torch.int32) if kv_lens is not None else prm
    # Document ids as the static kernels read them; a dummy pointer when the part's
    # predicate has no `document` (the template then emits no read).
    doc, doc_strides = prm, (0, 0)
    if tp.kernel_predicate.needs_doc_ids:
        ids = getattr(ctx, "doc_ids", None)
        if ids is None:
            raise PsparseUsageError("this pattern uses `document`: pass doc_ids")
        if ids.dim() not in (1, 2) or ids.shape[-1] < Nk or (ids.dim() == 2 and ids.shape[0] not in (1, B)):
            raise PsparseUsageError(f"doc_ids must have shape [n] or [batch, n] (n = {Nk})")
        doc = ids.to(dev)
        doc_strides = (doc.stride(0) if doc.dim() == 2 and doc.shape[0] > 1 else 0, doc.stride(-1))
    args = (prm, table.to(dev), tabs.dyn, tabs.blk, kvl, tp.list, tp.lo, tp.hi, doc)
    geometry = (tabs.dyn.stride(0), tabs.blk.stride(0), tp.list.stride(0), tp.num_tiles,
                G, G // Gk, D, Dv, tabs.q_offset, Nq, Nk, max(tp.bsize, 1), tp.sub_tiles,
                tp.first_block, -(-tp.bsize // tp.block_n) if tp.mode == 2 else 1)
    consts = dict(MODE=tp.mode, BLOCK_M=tp.block_m, BLOCK_N=tp.block_n, BLOCK_D=_pow2(D),
                  BLOCK_DV=_pow2(Dv), HAS_KV_LENS=kv_lens is not None)
    return args, doc_strides, geometry, consts


def forward_table_part(tp, tabs, q, k, v, *, scale, kv_lens=None, ctx=None, interpret=False):
    """``(out_p, lse_p)`` of one table part: ONE launch over (query tiles, B x G)."""
    import torch
    B, G, Nq, D = q.shape
    Dv = v.shape[-1]
    out = torch.zeros((B, G, Nq, Dv), dtype=torch.float32, device=q.device)
    lse = torch.full((B, G, Nq), float("-inf"), dtype=torch.float32, device=q.device)
    grid = (tp.num_tiles, B * G)
    if grid[0] == 0 or grid[1] == 0:
        return out, lse
    fn = _table_kernel(tp.kernel_predicate, "tfwd", interpret)
    interpret = _interpreted(fn, q)
    args, doc_strides, geometry, consts = _table_common(tp, tabs, q, k, v, kv_lens, ctx)
    _launch(fn, grid, interpret, (
        q, k, v, out, lse, *args,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(), *doc_strides,
        *geometry, float(scale) * 1.4426950408889634,
    ), dict(**consts, **_prec(q, interpret)))
    return out, lse


def backward_table_part(tp, tabs, q, k, v, out, lse, dout, *, scale, kv_lens=None, ctx=None,
                        dlse=None, interpret=False):
    """``(dq, dk, dv)`` float32 of one table part (dK/dV by float32 atomics): one launch."""
    import torch
    B, G, Nq, D = q.shape
    Gk, Nk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    dq = torch.zeros((B, G, Nq, D), dtype=torch.float32, device=q.device)
    dk = torch.zeros((B, Gk, Nk, D), dtype=torch.float32, device=q.device)
    dv = torch.zeros((B, Gk, Nk, Dv), dtype=torch.float32, device=q.device)
    grid = (tp.num_tiles, B * G)
    if grid[0] == 0 or grid[1] == 0:
        return dq, dk, dv
    lse32, delta, do = _backward_inputs(q, out, lse, dout, dlse)
    fn = _table_kernel(tp.kernel_predicate, "tbwd", interpret)
    interpret = _interpreted(fn, q)
    args, doc_strides, geometry, consts = _table_common(tp, tabs, q, k, v, kv_lens, ctx)
    _launch(fn, grid, interpret, (
        q, k, v, do, lse32, delta, dq, dk, dv, *args,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *lse32.stride(),
        *dq.stride(), *dk.stride(), *dv.stride(), *doc_strides,
        *geometry, float(scale) * 1.4426950408889634, float(scale),
    ), dict(**consts, **_prec(q, interpret)))
    return dq, dk, dv
