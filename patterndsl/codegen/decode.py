"""The decode kernel of a retention cache: render (templates/decode.py.jinja) and launch.

One call attends ``r`` new query rows per batch element against the keys a cache stores,
``k``/``v`` ``[B, Hkv, C, D]`` with original positions ``pos [B, Hkv, C]`` (``-1``: a free
slot).  The grid is (batch x KV head, key splits): a program loads every query row of the
KV head's query heads (no KV head is repeated) and walks its split's key tiles, applying the
element predicate to the original positions; a second small kernel merges the splits
(log-sum-exp) and, fused, turns the stored scores into each key's attention probability
summed over the KV head's rows, which ``heavy`` accumulates.

Each batch element has its own ``n`` (padding), so the predicate's parameters and random
tables are bound per element and stacked (``PRM [B, P]``, ``TAB [B, T]``).  Query heads of one
KV head with different patterns are served by one split launch per pattern, each writing only
its heads' rows (``HSEL``); the merge runs once.
"""
from __future__ import annotations

from functools import lru_cache

from .. import ir
from ..errors import PsparseUsageError
from .emit import bind, emit
from .render import canonical_text, environment, kernel_name

__all__ = ["decode_source", "decode_attend"]

BLOCK_N = 32
# Keys per split: enough tiles that a program amortises its query load, few enough that a
# long cache spreads over many programs.
_TILES_PER_SPLIT = 4


@lru_cache(maxsize=256)
def decode_source(expr: ir.Expr) -> tuple[str, str]:
    """``(name, source)`` of the module holding ``{name}_split`` and ``{name}_combine``."""
    pred = emit(expr)
    name = kernel_name(pred) + "_decode"
    src = environment().get_template("decode.py.jinja").render(
        name=name, pred=pred, canonical_repr=repr(canonical_text(expr)))
    return name, src


def _module(expr: ir.Expr):
    from .triton_backend import load_generated
    name, src = decode_source(ir.strip_spans(expr))
    return name, load_generated(name, src, "_psparse_decode")


def _kernel(expr: ir.Expr, which: str, interpret: bool):
    from .triton_backend import generated_kernel
    name, mod = _module(expr)
    return generated_kernel(name, mod, which, interpret)


def _launch(fn, grid, interpret, args, kwargs):
    if interpret:
        from .triton_backend import _interpreting
        with _interpreting():
            fn[grid](*args, **kwargs)
    else:
        fn[grid](*args, num_warps=4, **kwargs)


def _pow2(x: int) -> int:
    return max(16, 1 << (max(x, 1) - 1).bit_length())


def _bound_params(expr, contexts, device):
    """``PRM [B, P]`` and ``TAB [B, T]`` (int32): each element's parameters at its own n."""
    import torch
    bound = [bind(expr, ctx) for ctx in contexts]
    width = max(1, max(len(p) for p, _ in bound))
    twidth = max(t.numel() for _, t in bound)
    prm = torch.zeros((len(bound), width), dtype=torch.int32)
    tab = torch.full((len(bound), twidth), -1, dtype=torch.int32)
    for b, (p, t) in enumerate(bound):
        if p:
            prm[b, : len(p)] = torch.tensor(p, dtype=torch.int32)
        tab[b, : t.numel()] = t
    return prm.to(device), tab.to(device)


def decode_attend(groups, k, v, pos, q, qpos, contexts, *, scale: float, with_probs: bool,
                  interpret: bool):
    """``(out [B, Hq, r, Dv], probs [B, Hkv, C] or None)``, float32.

    ``groups``: ``[(expr, heads), ...]``, the query heads each static expression serves
    (together every head once); ``qpos [B, r]`` int64, ``-1`` for a row that is not a query
    (output 0, no probability); ``contexts``: one ``Context`` per batch element."""
    import torch
    B, Hq, R, D = q.shape
    Hkv, C, Dv = k.shape[1], k.shape[2], v.shape[-1]
    group = Hq // Hkv
    rows = group * R
    if rows > 256:
        raise PsparseUsageError(f"the decode kernel serves at most 256 query rows per KV head; "
                                f"got {group} heads x {R} rows")
    if C >= (1 << 30):
        raise PsparseUsageError("caches of 2^30 slots or more are not supported")
    device = q.device
    block_m, block_d, block_dv = _pow2(rows), _pow2(D), _pow2(Dv)
    n_tiles = max(1, -(-C // BLOCK_N))
    tiles = _TILES_PER_SPLIT
    nsplit = -(-n_tiles // tiles)
    upcast = interpret and q.dtype == torch.bfloat16
    prec = "ieee" if q.dtype == torch.float32 or upcast else "tf32"
    f32 = dict(dtype=torch.float32, device=device)
    mp = torch.empty((B, Hkv, nsplit, block_m), **f32)
    lp = torch.empty((B, Hkv, nsplit, block_m), **f32)
    acc = torch.empty((B, Hkv, nsplit, block_m, block_dv), **f32)
    scores = torch.empty((B, Hkv, block_m, C if with_probs else 1), **f32)
    out = torch.zeros((B, Hq, R, Dv), **f32)
    probs = torch.zeros((B, Hkv, C if with_probs else 1), **f32)
    qpos32 = qpos.to(device=device, dtype=torch.int32).contiguous()
    interpret_fn = None
    for expr, heads in groups:
        hsel = torch.zeros(Hq, dtype=torch.int32)
        hsel[list(heads)] = 1
        prm, tab = _bound_params(expr, contexts, device)
        fn = _kernel(expr, "split", interpret)
        interpret_fn = interpret_fn or expr
        _launch(fn, (B * Hkv, nsplit), interpret, (
            q, k, v, pos, qpos32, hsel.to(device), prm, tab, scores, mp, lp, acc,
            *q.stride(), *k.stride(), *v.stride(), *pos.stride(), *qpos32.stride(),
            prm.stride(0), tab.stride(0), *scores.stride(), *mp.stride()[:3], block_dv,
            Hkv, group, R, C, D, Dv, tiles, float(scale) * 1.4426950408889634,
        ), dict(BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_D=block_d, BLOCK_DV=block_dv,
                DOT_PREC=prec, UPCAST=upcast, WITH_PROBS=with_probs))
    fn = _kernel(interpret_fn, "combine", interpret)
    _launch(fn, (B * Hkv, nsplit), interpret, (
        mp, lp, acc, scores, out, probs,
        *scores.stride(), *mp.stride()[:3], block_dv, *out.stride(), *probs.stride(),
        Hkv, group, R, C, Dv, nsplit, tiles,
    ), dict(BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_DV=block_dv, WITH_PROBS=with_probs))
    return out, (probs if with_probs else None)
