"""The generated Triton kernels, run by Triton's interpreter on CPU, against a dense float64
reference (forward, log-sum-exp and gradients; relative error < 1e-5 in float32).

Plans come from ``tests/_brute_plan.py`` (runs found by brute force over dense masks, with
chosen views and part splits), so the kernels are checked independently of the planner's
closed forms, and from ``patterndsl.plan.build_plan`` when the planner is present."""
from __future__ import annotations


import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from patterndsl.plan import build_plan  # noqa: E402
from patterndsl import ir  # noqa: E402
from patterndsl.spec import parse  # noqa: E402
from patterndsl.reference import expr_mask  # noqa: E402
from patterndsl.codegen.triton_backend import backward_part, forward_part  # noqa: E402

import _brute_plan as bp  # noqa: E402

TOL = 1e-5


def run_plan(plan, q, k, v, dout, *, scale, kv_lens=None, doc_ids=None, dlse=None, dkv=None):
    """Forward over every part, merged by log-sum-exp; backward of every part with the
    merged out/lse, summed."""
    outs, lses = [], []
    for part in plan.parts:
        o, l = forward_part(part, plan, q, k, v, scale=scale, kv_lens=kv_lens, doc_ids=doc_ids,
                            interpret=True)
        assert o.dtype == torch.float32 and l.dtype == torch.float32
        outs.append(o)
        lses.append(l)
    if not plan.parts:  # `none`: nothing to run
        outs.append(torch.zeros(q.shape[:3] + v.shape[3:], dtype=torch.float32))
        lses.append(torch.full(q.shape[:3], float("-inf")))
    L = torch.stack(lses)
    lse = torch.logsumexp(L, 0)
    w = torch.where(torch.isinf(lse), torch.zeros_like(L), torch.exp(L - lse))
    out = (w.unsqueeze(-1) * torch.stack(outs)).sum(0)
    dq = torch.zeros(q.shape, dtype=torch.float32)
    dk = torch.zeros(k.shape, dtype=torch.float32)
    dv = torch.zeros(v.shape, dtype=torch.float32)
    for part in plan.parts:
        a, b, c = backward_part(part, plan, q, k, v, out, lse, dout, scale=scale, kv_lens=kv_lens,
                                doc_ids=doc_ids, dlse=dlse, interpret=True, dkv=dkv)
        dq += a
        dk += b
        dv += c
    return out, lse, dq, dk, dv


def reference(mask, q, k, v, dout, *, scale, kv_lens=None, dlse=None):
    """Dense float64 attention by autograd. ``mask`` is [nq, n], [B, nq, n] or [B, Hq, nq, n]."""
    B, Hq, nq, _ = q.shape
    Hkv, n = k.shape[1], k.shape[2]
    g = Hq // Hkv
    m = mask.to(torch.bool)
    m = (m if m.dim() == 4 else m.reshape(-1, 1, nq, n)).expand(B, Hq, nq, n)
    if kv_lens is not None:
        m = m & (torch.arange(n)[None, :] < kv_lens[:, None]).reshape(B, 1, 1, n)
    qq = q.double().requires_grad_()
    kk = k.double().requires_grad_()
    vv = v.double().requires_grad_()
    ke = kk.repeat_interleave(g, 1)
    ve = vv.repeat_interleave(g, 1)
    s = (qq @ ke.transpose(-1, -2)) * scale
    sm = s.masked_fill(~m, float("-inf"))
    lse = torch.logsumexp(sm.detach(), -1)
    shift = torch.where(torch.isinf(lse), torch.zeros_like(lse), sm.detach().amax(-1))
    e = torch.where(m, torch.exp(s - shift.unsqueeze(-1)), torch.zeros_like(s))
    den = e.sum(-1, keepdim=True)
    safe = torch.where(den > 0, den, torch.ones_like(den))
    out = (e @ ve) / safe
    loss = (out * dout.double()).sum()
    if dlse is not None:
        lse_d = torch.where(den.squeeze(-1) > 0, shift + torch.log(safe.squeeze(-1)), torch.zeros_like(shift))
        loss = loss + (lse_d * dlse.double()).sum()
    loss.backward()
    return out.detach(), lse, qq.grad, kk.grad, vv.grad


def rel(a, b):
    a, b = a.double(), b.double()
    both_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    assert torch.equal(torch.isinf(a), torch.isinf(b)), "infinite entries differ"
    assert not torch.isnan(a).any(), "NaN in kernel result"
    d = torch.where(both_inf, torch.zeros_like(a), a - b).abs().max().item() if a.numel() else 0.0
    scale = torch.where(both_inf, torch.zeros_like(b), b).abs().max().item() if b.numel() else 0.0
    # relative to the result's magnitude, floored: a gradient that is 0 up to rounding
    # (one allowed key: out = v, so dq = 0) has no meaningful relative error
    return d / max(scale, 1e-3) if d else 0.0


def check(expr, plan, *, B=1, Hq=1, Hkv=1, D=16, Dv=None, kv_lens=None, doc_ids=None, seed=0,
          layout="contiguous", dkv=None):
    Dv = Dv or D
    n, nq = plan.n, plan.nq
    g = torch.Generator().manual_seed(seed)
    if layout == "bnhd":  # a [B, N, H, D] buffer seen as [B, H, N, D]: non-contiguous strides
        q = torch.randn(B, nq, Hq, D, generator=g).transpose(1, 2)
        k = torch.randn(B, n, Hkv, D, generator=g).transpose(1, 2)
        v = torch.randn(B, n, Hkv, Dv, generator=g).transpose(1, 2)
    else:
        q = torch.randn(B, Hq, nq, D, generator=g)
        k = torch.randn(B, Hkv, n, D, generator=g)
        v = torch.randn(B, Hkv, n, Dv, generator=g)
    dout = torch.randn(B, Hq, nq, Dv, generator=g)
    scale = D ** -0.5
    got = run_plan(plan, q, k, v, dout, scale=scale, kv_lens=kv_lens, doc_ids=doc_ids, dkv=dkv)
    mask = expr_mask(expr, n, nq=nq, q_offset=plan.q_offset, doc_ids=doc_ids)
    want = reference(mask, q, k, v, dout, scale=scale, kv_lens=kv_lens)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        assert a.shape == b.shape, name
        err = rel(a, b)
        assert err < TOL, f"{name}: relative error {err:.3g}"
    return got, want


def E(text):
    return parse(text).pattern()


# (spec, n, nq, parts as (predicate or None for the whole pattern, q_period, k_period, bm, bn), options)
SINGLE = [
    ("causal", 96, None, (1, 1, 64, 32), {}),
    ("causal & local(16)", 100, None, (1, 1, 32, 32), dict(Hq=2, Hkv=1, dkv="atomic")),
    ("local(8) | global([0])", 77, None, (1, 1, 32, 16), dict(D=24)),
    ("causal & (sink(4) | local(16))", 96, 40, (1, 1, 16, 32), {}),
    ("causal & stride(8)", 128, None, (8, 8, 16, 16), dict(dkv="atomic")),
    ("causal & dilated(8, 4)", 120, None, (4, 4, 16, 16), dict(D=24, Dv=16)),
    ("local(12) | global([0:4]) | random(2, block=16, seed=0)", 112, None, (1, 1, 64, 64), {}),
    ("causal & block(32) | sink(4)", 128, None, (1, 1, 64, 32), dict(B=2)),
    ("rows([0:3])", 64, None, (1, 1, 32, 32), {}),
    ("every(4, 1)", 72, None, (1, 4, 32, 16), dict(dkv="atomic")),
    ("rows([::3]) & causal", 90, None, (3, 1, 16, 32), {}),
    ("slash([0, 5, -3, 10:40:7])", 80, None, (1, 1, 32, 32), {}),
    ("prefix(20) | causal & local(2, 5)", 70, None, (1, 1, 32, 32), dict(layout="bnhd", Hq=2, Hkv=2)),
    ("blockwise(16, local(1) | global([0, -1]))", 112, None, (1, 1, 32, 32), {}),
    ("all - causal & local(3)", 50, None, (1, 1, 32, 32), {}),
    ("none", 40, None, (1, 1, 32, 32), {}),
    ("cols([1, -2, 10:20]) | every(1000000000000, 3)", 60, 20, (1, 1, 32, 32), {}),
    ("local(1000000000000000, 0)", 48, None, (1, 1, 16, 16), {}),
    ("blockwise(16, random(1, block=2, seed=3, causal=true)) & causal", 96, None, (1, 1, 32, 32), {}),
]


@pytest.mark.parametrize("spec,n,nq,view,opts", SINGLE, ids=[c[0] for c in SINGLE])
def test_single_part(spec, n, nq, view, opts):
    e = E(spec)
    plan = bp.build([(e,) + view], n, nq=nq)
    check(e, plan, **opts)


# Two parts with different views: P1 = E & X on one view, P2 = E - X on another.
SPLITS = [
    ("causal & (local(8) | stride(8))", "local(8)", (1, 1, 32, 32), (8, 8, 16, 16), 128, {}),
    ("causal & stride(8)", "local(20)", (1, 1, 32, 32), (4, 4, 16, 16), 64, dict(Hq=2, Hkv=1)),
    ("local(12) | global([0:4]) | random(2, block=16, seed=0)", "local(12)", (1, 1, 32, 32),
     (1, 1, 64, 64), 96, dict(D=64)),
]


@pytest.mark.parametrize("spec,split,view1,view2,n,opts", SPLITS, ids=[c[0] for c in SPLITS])
def test_two_parts(spec, split, view1, view2, n, opts):
    e, x = E(spec), E(split)
    plan = bp.build([(ir.Intersect((e, x)),) + view1, (ir.Difference(e, x),) + view2], n)
    check(e, plan, **opts)


def test_document_batched_doc_ids_and_kv_lens():
    e = E("causal & document")
    n = 80
    doc = torch.tensor([[0] * 30 + [1] * 25 + [2] * 25, [0] * 10 + [1] * 70])
    plan = bp.build([(e, 1, 1, 32, 16)], n, doc_ids=doc)
    check(e, plan, B=2, doc_ids=doc, kv_lens=torch.tensor([80, 47]))
    check(e, plan, B=2, doc_ids=doc, kv_lens=torch.tensor([80, 47]), dkv="atomic")


def test_lse_gradient():
    e = E("causal & local(10) | rows([0:2])")
    n = 48
    plan = bp.build([(e, 1, 1, 16, 16)], n, nq=40)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 40, 16, generator=g), torch.randn(1, 1, n, 16, generator=g),
               torch.randn(1, 1, n, 16, generator=g))
    dout, dlse = torch.randn(1, 1, 40, 16, generator=g), torch.randn(1, 1, 40, generator=g)
    got = run_plan(plan, q, k, v, dout, scale=0.25, dlse=dlse)
    want = reference(expr_mask(e, n, nq=40), q, k, v, dout, scale=0.25, dlse=dlse)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        assert rel(a, b) < TOL, name


def test_kv_lens_and_explicit_offset():
    e = E("causal & local(24)")
    n, nq = 90, 30
    plan = bp.build([(e, 1, 1, 16, 32)], n, nq=nq, q_offset=17)
    check(e, plan, B=2, kv_lens=torch.tensor([90, 40]))


def test_empty_rows_give_zero_output_minus_inf_lse_and_zero_gradients():
    e = E("rows([0:3])")
    plan = bp.build([(e, 1, 1, 32, 32)], 64)
    (out, lse, dq, dk, dv), _ = check(e, plan)
    assert torch.isinf(lse[..., 3:]).all() and (lse[..., 3:] < 0).all()
    assert (out[..., 3:, :] == 0).all() and (dq[..., 3:, :] == 0).all()
    assert torch.isfinite(lse[..., :3]).all()


def test_rows_not_in_a_part_are_left_empty():
    # A part's q_view only covers some queries (rows [0, 3) through a query-residue view
    # of period 1 but start at q_offset): other rows of that part stay 0 / -inf.
    e = E("causal")
    plan = bp.build([(ir.Intersect((e, E("local(4)"))), 1, 1, 16, 16), (ir.Difference(e, E("local(4)")), 1, 1, 32, 32)], 48)
    q = torch.randn(1, 1, 48, 16)
    k = torch.randn(1, 1, 48, 16)
    o, l = forward_part(plan.parts[1], plan, q, k, k, scale=0.25, interpret=True)
    assert torch.isinf(l[0, 0, :5]).all() and (o[0, 0, :5] == 0).all()
    assert torch.isfinite(l[0, 0, 5:]).all()


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("bfloat16", 1e-5)])
def test_half_precision_inputs(dtype, tol):
    # Reference on the rounded inputs.  float16 tiles go through a float16 P @ V as on a
    # GPU (error ~ 2^-11); the interpreter widens bfloat16 tiles to float32.
    dt = getattr(torch, dtype)
    e = E("causal & local(20) | sink(3)")
    n, D, Dv = 70, 40, 24
    plan = bp.build([(e, 1, 1, 32, 32)], n)
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 2, n, D, generator=g).to(dt), torch.randn(1, 1, n, D, generator=g).to(dt))
    v, dout = torch.randn(1, 1, n, Dv, generator=g).to(dt), torch.randn(1, 2, n, Dv, generator=g).to(dt)
    got = run_plan(plan, q, k, v, dout, scale=D ** -0.5)
    want = reference(expr_mask(e, n), q.float(), k.float(), v.float(), dout.float(), scale=D ** -0.5)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        assert rel(a, b) < tol, name


# the planner's own tile choice for the residue patterns; forced 32/64 tiles elsewhere so
# that the interpreter visits few tiles
BIG = dict(block_m=64, block_n=32)
CANONICAL = [
    ("causal", BIG),
    ("causal & local(16)", dict(block_m=32, block_n=32)),
    ("local(8) | global([0])", BIG),
    ("causal & (sink(4) | local(16))", BIG),
    ("causal & stride(8)", {}),
    ("causal & (local(8) | stride(8))", {}),
    ("causal & dilated(8, 4)", {}),
    ("local(12) | global([0:4]) | random(2, block=16, seed=0)", BIG),
    ("causal & document", BIG),
    ("causal & block(32) | sink(4)", BIG),
]


@pytest.mark.parametrize("spec,opts", CANONICAL, ids=[c[0] for c in CANONICAL])
def test_planner_plans(spec, opts):
    n, nq = 128, 100
    doc = torch.tensor([0] * 50 + [1] * 40 + [2] * 38) if "document" in spec else None
    s = parse(spec)
    plan = build_plan(s, n, nq=nq, head_dim=16, dtype=torch.float32, doc_ids=doc, **opts)
    check(s.pattern(), plan, doc_ids=doc)


def test_source_is_deterministic_and_free_of_spec_text():
    from patterndsl.codegen.render import kernel_source
    text = "causal & (local(8) | stride(8)) | global([0, -1]) | random(2, block=16)"
    a = kernel_source(E(text))
    kernel_source.cache_clear()
    b = kernel_source(E("causal&(local(8)|stride(8))|global([0,-1])|random(2,block=16)"))
    assert a == b
    body = a[1].split("\n", 1)[1]  # the first line is a comment with the canonical text
    assert "global" not in body and "random" not in body and "stride" not in body
    compile(a[1], "<generated>", "exec")


MODULE_SPEC = """
heads 0:2 = causal & local(5) | global([0, -1]) | random(1, block=8, seed=7)
heads 2: = causal & document
layers 1 heads 0 = slash([0, 3:9:2, -2]) | blockwise(8, local(1) | rows([-1]))
"""


def test_self_contained_module(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    from patterndsl.codegen.module import render_module

    src = render_module(MODULE_SPEC)
    assert src == render_module(parse(MODULE_SPEC))  # byte-identical
    body = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("#"))
    assert "patterndsl" not in body.replace("psparse", "")
    path = tmp_path / "generated.py"
    path.write_text(src)
    doc = [0] * 20 + [1] * 17 + [2] * 13
    mask_cases = [dict(n=50, head=0), dict(n=37, nq=20, head=1), dict(n=50, head=3, doc=doc),
                  dict(n=45, layer=1), dict(n=9, layer=1, head=0)]
    att = dict(seed=3, B=1, Hq=4, Hkv=2, n=50, nq=50, D=16, doc=doc)
    out = tmp_path / "results.pt"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_module_worker.py")), str(path),
                           str(out), json.dumps(mask_cases), json.dumps(att)],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(out)
    s = parse(MODULE_SPEC)
    assert res["spec"] == s.canonical()
    for case, got, p in zip(mask_cases, res["masks"], res["plans"]):
        doc_t = torch.tensor(case["doc"]) if "doc" in case else None
        want = s.mask(case["n"], nq=case.get("nq"), num_heads=case.get("head", 0) + 1,
                      layer=case.get("layer", 0), doc_ids=doc_t)[case.get("head", 0)]
        assert torch.equal(got, want), case
        # the module's plan is psparse's: same parts, views and runs
        ref = s.plan(case["n"], nq=case.get("nq"), head=case.get("head", 0), layer=case.get("layer", 0),
                     doc_ids=doc_t, block_m=16, block_n=16)
        assert p["exact"] and len(p["parts"]) == len(ref.parts), case
        for got_part, part in zip(p["parts"], ref.parts):
            v = part.view
            assert got_part["view"] == (v.kind, v.s, v.r, v.qlo, v.qhi), case
            for x in ("kv_lo", "kv_hi", "kv_full"):
                assert torch.equal(got_part[x], getattr(part, x)), (case, x)
    a = res["attention"]
    mask = s.mask(50, num_heads=4, doc_ids=torch.tensor(doc))
    want = reference(mask.unsqueeze(0), a["q"], a["k"], a["v"], a["dout"], scale=16 ** -0.5)
    for name, x, y in zip(("out", "lse", "dq", "dk", "dv"), (a["out"], a["lse"], a["dq"], a["dk"], a["dv"]), want):
        assert rel(x, y) < TOL, name


def test_kernel_cache_rewrites_corrupted_entries_and_dumps(tmp_path, monkeypatch):
    from patterndsl.codegen import triton_backend as tb
    from patterndsl.codegen.render import kernel_source
    monkeypatch.setenv("PSPARSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PSPARSE_DUMP_DIR", str(tmp_path / "dump"))
    name, src = kernel_source(E("causal & local(7) | global([3])"))
    path = tb._materialise(name, src)
    assert path.parent.parent == tmp_path / "cache" and path.read_text() == src
    assert (tmp_path / "dump" / path.name).read_text() == src
    path.write_text(src[: len(src) // 2])  # a truncated entry is never trusted
    assert tb._materialise(name, src) == path and path.read_text() == src
    path.write_bytes(b"\xff\xfe garbage")
    tb._materialise(name, src)
    assert path.read_text() == src
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_kernels_compile_ahead_of_time_for_sm90():
    """The compiled path has rules the interpreter does not check (fixed loop-carried
    types, constexpr branches): compile the three kernels for an H100 target without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.errors import CompilationError
    from patterndsl.codegen.triton_backend import kernel_module

    name, mod = kernel_module(E("causal & local(16) | global([0, -1]) | random(2, block=16) - document"
                                " | blockwise(16, slash([0, 3:9:2])) & every(3, 1)"))
    base = dict(S=2, BLOCK_M=64, BLOCK_N=32, BLOCK_D=32, BLOCK_DV=32, HAS_KV_LENS=True,
                HAS_PARTIAL=True, DOT_PREC="tf32", UPCAST=False)
    for which, extra in (("fwd", {}), ("bwd", dict(ATOMIC_DKV=True)), ("bwd_dkv", {})):
        constexprs = dict(base, **extra)
        fn = getattr(mod, f"{name}_{which}")
        sig = {}
        for arg in fn.arg_names:
            if arg in constexprs:
                sig[arg] = "constexpr"
            elif arg in ("Q", "K", "V", "DO"):
                sig[arg] = "*fp16"
            elif arg in ("OUT", "LSE", "DELTA", "DQP", "DKP", "DVP"):
                sig[arg] = "*fp32"
            elif arg == "DOC":
                sig[arg] = "*i64"
            elif arg in ("PRM", "TAB", "KVLEN", "KV_LO", "KV_HI", "KV_FULL", "Q_LO", "Q_HI", "Q_FULL"):
                sig[arg] = "*i32"
            else:
                sig[arg] = "fp32" if arg.endswith("scale") else "i32"
        try:
            triton.compile(ASTSource(fn, sig, constexprs), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=4))
        except CompilationError:
            raise
        except Exception as e:  # no CUDA toolchain in this triton build: nothing to check
            pytest.skip(f"cannot compile for CUDA here: {type(e).__name__}: {e}")


# ---------------------------------------------------------------------------
# Random expressions (hypothesis): the emitted formulas, the module binders, the kernels
# ---------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from predicates import torch_function  # noqa: E402
from strategies import exprs  # noqa: E402

_EXPRS = exprs(dynamic=False, document=True, random=True, max_leaves=6)
_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _torch_predicate(expr):
    """The torch-dialect predicate of ``expr`` as a function (same formulas as the kernels)."""
    from patterndsl.codegen.emit import emit
    return torch_function(emit(expr, dialect="torch"), "qc, kc, PRM, TAB, DOC")


@settings(max_examples=150, **_SETTINGS)
@given(_EXPRS, st.integers(1, 70), st.data())
def test_emitted_predicate_matches_reference(expr, n, data):
    from patterndsl.codegen.emit import bind
    from patterndsl.plan.context import Context
    nq = data.draw(st.integers(1, n))
    q_offset = data.draw(st.integers(0, n - nq))
    doc = torch.tensor(sorted(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))))
    ctx = Context(n, doc)
    prm, tab = bind(expr, ctx)
    q = torch.arange(q_offset, q_offset + nq)[:, None]
    k = torch.arange(n)[None, :]
    got = _torch_predicate(expr)(q, k, prm, tab.to(torch.int64), doc).expand(nq, n)
    want = expr_mask(expr, n, nq=nq, q_offset=q_offset, doc_ids=doc)
    assert torch.equal(got, want)


@settings(max_examples=25, **_SETTINGS)
@given(exprs(dynamic=False, document=False, random=True, max_leaves=5), st.integers(1, 60))
def test_module_masks_match_reference(tmp_path_factory, expr, n):
    import importlib.util
    from patterndsl.codegen.module import render_module
    from patterndsl.printer import to_text
    src = render_module(to_text(expr))
    path = tmp_path_factory.mktemp("mod") / "m.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"psparse_test_mod_{abs(hash(src))}", str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    canonical = parse(to_text(expr)).pattern()
    assert torch.equal(mod.mask(n), expr_mask(canonical, n))


@settings(max_examples=5, **_SETTINGS)
@given(exprs(dynamic=False, document=False, random=True, max_leaves=5), st.integers(20, 70),
       st.sampled_from([(1, 1), (2, 2), (1, 3), (3, 1)]), st.sampled_from([16, 32]))
def test_random_expressions_in_the_interpreter(expr, n, periods, block):
    plan = bp.build([(expr, periods[0], periods[1], block, 16)], n, nq=n - n // 5)
    check(expr, plan, Hq=2, Hkv=1)


def test_launcher_errors_before_any_launch():
    from patterndsl.errors import PsparseUsageError
    e = E("causal & document")
    plan = bp.build([(e, 1, 1, 16, 16)], 32, doc_ids=torch.zeros(32, dtype=torch.long))
    part = plan.parts[0]
    q = torch.randn(1, 2, 32, 16)
    k = torch.randn(1, 1, 32, 16)
    bad = [
        dict(q=q, k=k, v=torch.randn(1, 1, 31, 16)),                       # v length
        dict(q=q, k=torch.randn(1, 3, 32, 16), v=torch.randn(1, 3, 32, 16)),  # 2 heads over 3
        dict(q=q.double(), k=k.double(), v=k.double()),                    # dtype
        dict(q=q[:, :, :20], k=k, v=k),                                    # not the plan's nq
        dict(q=q, k=k, v=k, kv_lens=torch.tensor([3, 4])),                 # kv_lens shape
        dict(q=q, k=k, v=k, doc_ids=torch.zeros(2, 3, 32, dtype=torch.long)),
    ]
    for kw in bad:
        args = {x: kw.pop(x) for x in ("q", "k", "v")}
        with pytest.raises(PsparseUsageError):
            forward_part(part, plan, args["q"], args["k"], args["v"], scale=0.25, interpret=True, **kw)
    import os
    if os.environ.get("TRITON_INTERPRET", "0") != "1":  # else triton.jit itself interprets
        with pytest.raises(PsparseUsageError, match="CUDA"):
            forward_part(part, plan, q, k, k, scale=0.25, interpret=False)


def test_module_text_is_identical_across_processes():
    import os
    import subprocess
    import sys
    from pathlib import Path
    from patterndsl.codegen.module import render_module
    code = ("import sys; from patterndsl.codegen.module import render_module; "
            "sys.stdout.write(render_module(sys.argv[1]))")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, MODULE_SPEC], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == render_module(MODULE_SPEC)


@pytest.mark.parametrize("spec,n,nq", [
    ("causal & (local(8) | stride(8)) | sink(2)", 7, 3),
    ("every(3, 1) | rows([::2])", 33, 1),
    ("causal & dilated(4, 3)", 20, 20),
    ("none", 9, 4),
    ("all", 2, 1),
])
def test_planner_plans_at_tiny_lengths(spec, n, nq):
    s = parse(spec)
    check(s.pattern(), build_plan(s, n, nq=nq, head_dim=16, dtype=torch.float32), Hq=2, Hkv=1)
