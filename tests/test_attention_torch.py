"""The torch backend and the attention runtime against a dense float64 reference.

The reference is written here from LANGUAGE.md's meaning alone: softmax over the keys that
``Spec.mask`` allows (and below ``kv_lens``), rows with no allowed key giving output 0,
log-sum-exp -inf and zero gradients.  Errors are relative (max-norm) and must stay below
1e-5 in float32.  FlexAttention (eager, on CPU) with ``attn.to_mask_mod()`` is a second,
independent implementation.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patterndsl
from patterndsl import ir
from patterndsl.attention import _merge
from patterndsl.backends import torch_backend

from _bruteplan import brute_plan
from strategies import static_exprs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOL = 1e-5


# ---------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------

def dense(q, k, v, mask, scale, kv_lens=None):
    """float64 ``(out, lse)``; ``mask`` broadcasts to ``[B, Hq, Nq, Nk]``."""
    g = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(g, 1)
    vv = v.double().repeat_interleave(g, 1)
    mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if kv_lens is not None:
        keys = torch.arange(k.shape[2])
        mask = mask & (keys < kv_lens.view(-1, 1, 1, 1))
    s = (q.double() @ kk.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    return p @ vv, lse


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1.0)) if b.numel() else 0.0


def check_lse(lse, ref):
    assert lse.dtype == torch.float32
    assert torch.equal(torch.isinf(lse), torch.isinf(ref)), "empty rows differ"
    assert bool((lse[torch.isinf(lse)] < 0).all())
    fin = ~torch.isinf(ref)
    assert rel(lse[fin], ref[fin]) < TOL


def run_case(attn, *, B=2, Hq=4, Hkv=2, n=77, nq=None, D=16, Dv=None, layer=0, doc=None,
             kv_lens=None, q_offset=None, scale=None, grads=True, seed=0):
    """Run ``attn`` and the reference on random inputs; assert forward, lse and grads."""
    nq = n if nq is None else nq
    Dv = D if Dv is None else Dv
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, nq, D, generator=gen, requires_grad=True)
    k = torch.randn(B, Hkv, n, D, generator=gen, requires_grad=True)
    v = torch.randn(B, Hkv, n, Dv, generator=gen, requires_grad=True)
    out, lse = attn(q, k, v, doc_ids=doc, kv_lens=kv_lens, scale=scale, q_offset=q_offset,
                    layer=layer, return_lse=True)
    assert out.shape == (B, Hq, nq, Dv) and out.dtype == q.dtype
    assert lse.shape == (B, Hq, nq)
    mask = attn.mask(n, nq=nq, q_offset=q_offset, num_heads=Hq, layer=layer, doc_ids=doc)
    if mask.dim() == 3:
        mask = mask.unsqueeze(0)
    sc = D ** -0.5 if scale is None else scale
    ro, rl = dense(q, k, v, mask, sc, kv_lens)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert rel(out, ro) < TOL
    check_lse(lse, rl)
    if grads:
        dout = torch.randn(out.shape, generator=gen)
        got = torch.autograd.grad((out * dout).sum(), (q, k, v))
        want = torch.autograd.grad((ro * dout.double()).sum(), (q, k, v))
        for name, a, b in zip("qkv", got, want):
            assert not torch.isnan(a).any(), name
            assert rel(a, b) < TOL, f"d{name}: {rel(a, b)}"
    return out, lse, mask


# ---------------------------------------------------------------------------
# The backend alone, on brute-force plans (independent of the planner)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,period,waste", [
    ("causal & local(5) | global([0])", 1, False),
    ("local(3, 7) | stride(3)", 3, True),
    ("causal & (local(4) | dilated(5, 3))", 3, False),
    ("blockwise(4, local(1)) | sink(3)", 1, True),
    ("none", 1, False),
])
def test_backend_on_brute_force_plans(text, period, waste):
    spec = patterndsl.parse(text)
    n, nq, scale = 45, 31, 0.3
    plan = brute_plan(spec.pattern(), n, nq, bm=16, bn=16, period=period, waste=waste)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, nq, 16, generator=gen, requires_grad=True)
    k = torch.randn(2, 2, n, 16, generator=gen, requires_grad=True)
    v = torch.randn(2, 2, n, 24, generator=gen, requires_grad=True)
    # a small chunk budget also exercises key segments merged by online softmax
    for budget in (torch_backend.CHUNK_BYTES, 16 * 16 * 4 * 4 * 2 * 3):
        parts = [torch_backend.forward_part(p, plan, q, k, v, scale=scale, chunk_bytes=budget)
                 for p in plan.parts]
        out, lse = _merge(parts, q, v)
        ro, rl = dense(q, k, v, spec.mask(n, nq=nq), scale)
        assert rel(out, ro) < TOL
        check_lse(lse, rl)
        dout = torch.randn(out.shape, generator=gen)
        want = torch.autograd.grad((ro * dout.double()).sum(), (q, k, v))
        got = [0, 0, 0]
        for p in plan.parts:
            for i, gpart in enumerate(torch_backend.backward_part(
                    p, plan, q.detach(), k.detach(), v.detach(), out, lse, dout, scale=scale,
                    chunk_bytes=budget)):
                got[i] = got[i] + gpart
        for a, b in zip(got, want):
            assert rel(a, b) < TOL


# ---------------------------------------------------------------------------
# Every example spec and the planner's canonical set, scaled down
# ---------------------------------------------------------------------------

def _static_examples():
    out = []
    for path in sorted(EXAMPLES.glob("*.psp")):
        spec = patterndsl.parse(path.read_text())
        if all(r.expr.is_dynamic for r in spec.canonical_ir.rules):
            continue
        out.append(path.name)
    return out


@pytest.mark.parametrize("name", _static_examples())
def test_examples(name):
    attn = patterndsl.compile((EXAMPLES / name).read_text(), block_m=32, block_n=16)
    n, nq = 203, 170
    doc = None
    if attn.spec.needs_doc_ids:
        doc = torch.tensor([0] * 60 + [1] * 3 + [2] * 90 + [3] * 50)
    # mixed_heads.psp: heads 0:4 are static (heads 4:8 are data-dependent, see the API tests)
    run_case(attn, n=n, nq=nq, doc=doc, Hq=4, Hkv=2, D=24, Dv=16)


CANONICAL = [
    "causal",
    "causal & local(16)",
    "local(8) | global([0])",
    "causal & (sink(4) | local(16))",
    "causal & stride(8)",
    "causal & (local(8) | stride(8))",
    "causal & dilated(8, 4)",
    "local(12) | global([0:4]) | random(2, block=16, seed=0)",
    "causal & document",
    "causal & block(32) | sink(4)",
    "blockwise(16, local(1) | global([0, -1])) | random(2, block=16)",
    "causal & (cols([0:8]) | slash([0:16]))",
    "causal & every(8, 3) | local(2)",
    "rows([::7]) | causal & local(4)",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_set(text):
    attn = patterndsl.compile(text)   # the planner's own tile choice (residue views included)
    doc = torch.tensor([0] * 50 + [1] * 40 + [2] * 41) if "document" in text else None
    run_case(attn, n=131, nq=100, doc=doc, B=1, Hq=2, Hkv=1)


# ---------------------------------------------------------------------------
# Random static specs
# ---------------------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(expr=static_exprs(random=True, max_leaves=6), n=st.integers(1, 70), data=st.data())
def test_random_static_specs(expr, n, data):
    from patterndsl.printer import to_text
    nq = data.draw(st.integers(1, n))
    q_offset = data.draw(st.one_of(st.none(), st.integers(0, n - nq)))
    tiles = data.draw(st.sampled_from([{}, dict(block_m=16, block_n=16), dict(block_m=32, block_n=16)]))
    heads = data.draw(st.sampled_from([(2, 1), (4, 2), (3, 3)]))
    lens = data.draw(st.one_of(st.none(), st.integers(0, n)))
    kv_lens = None if lens is None else torch.tensor([lens])
    attn = patterndsl.compile(to_text(ir.Program((ir.Rule(expr),))), **tiles)
    run_case(attn, B=1, Hq=heads[0], Hkv=heads[1], n=n, nq=nq, q_offset=q_offset, kv_lens=kv_lens)


# ---------------------------------------------------------------------------
# Call features
# ---------------------------------------------------------------------------

def test_gqa_odd_lengths_kv_lens():
    attn = patterndsl.compile("causal & local(7) | global([0, -1])", block_m=16, block_n=32)
    kv_lens = torch.tensor([97, 40, 0])
    out, lse, _ = run_case(attn, B=3, Hq=6, Hkv=2, n=97, nq=61, D=20, Dv=36, kv_lens=kv_lens)
    assert bool((out[2] == 0).all()) and bool(torch.isinf(lse[2]).all())


def test_empty_rows_have_zero_output_and_gradient():
    attn = patterndsl.compile("causal & cols([50:]) | rows([0]) & none")
    q = torch.randn(1, 2, 80, 16, requires_grad=True)
    k = torch.randn(1, 2, 80, 16, requires_grad=True)
    v = torch.randn(1, 2, 80, 16, requires_grad=True)
    out, lse = attn(q, k, v, return_lse=True)
    assert bool((out[:, :, :50] == 0).all())
    assert bool(torch.isneginf(lse[:, :, :50]).all()) and bool(torch.isfinite(lse[:, :, 50:]).all())
    (out.sum() + lse[:, :, 50:].sum()).backward()
    assert bool((q.grad[:, :, :50] == 0).all()) and bool((k.grad[:, :, :50] == 0).all())
    assert not any(torch.isnan(t.grad).any() for t in (q, k, v))
    run_case(attn, B=1, Hq=2, Hkv=2, n=80)


def test_lse_gradient():
    attn = patterndsl.compile("causal & local(9) | sink(2)", block_m=16, block_n=16)
    q = torch.randn(1, 2, 40, 16, dtype=torch.float64).float().requires_grad_()
    k = torch.randn(1, 1, 40, 16).requires_grad_()
    v = torch.randn(1, 1, 40, 16).requires_grad_()
    out, lse = attn(q, k, v, return_lse=True)
    w = torch.randn(lse.shape)
    got = torch.autograd.grad((lse * w).sum() + out.sum(), (q, k, v))
    ro, rl = dense(q, k, v, attn.mask(40).unsqueeze(0).unsqueeze(0), 0.25)
    want = torch.autograd.grad((rl * w.double()).sum() + ro.sum(), (q, k, v))
    for a, b in zip(got, want):
        assert rel(a, b) < TOL


def test_per_head_and_layer_specs():
    text = ("heads 0:3 = causal & local(4)\nheads 3:5 = all - causal\nheads 5: = block(8)\n"
            "layers 1 heads 0 = none\nlayers 1 = causal")
    attn = patterndsl.compile(text, block_m=16, block_n=16)
    # heads 0:3 span KV groups unevenly (Hq / Hkv = 2): one KV head per query head there
    run_case(attn, B=2, Hq=6, Hkv=3, n=50, nq=41)
    out, lse, mask = run_case(attn, B=1, Hq=6, Hkv=3, n=50, layer=1)
    assert bool(torch.isinf(lse[0, 0]).all()) and not bool(mask[0, 0].any())


def test_doc_ids_shared_and_per_batch():
    attn = patterndsl.compile("causal & document | sink(1)", block_m=16, block_n=16)
    n = 45
    shared = torch.tensor([0] * 20 + [1] * 25)
    run_case(attn, B=2, n=n, nq=40, doc=shared)
    same_rows = shared.expand(2, n).clone()
    run_case(attn, B=2, n=n, nq=40, doc=same_rows)
    per_batch = torch.stack([shared, torch.tensor([3] * 5 + [4] * 30 + [3] * 10)])
    run_case(attn, B=2, n=n, nq=40, doc=per_batch)


def test_q_offset_and_scale():
    attn = patterndsl.compile("causal & local(6) | global([-1])", block_m=16, block_n=16)
    run_case(attn, B=1, n=60, nq=20, q_offset=7, scale=0.9)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision(dtype, tol):
    attn = patterndsl.compile("causal & (local(8) | stride(8))")
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 70, 32, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    out, lse = attn(q, k, v, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ro, rl = dense(q.detach(), k.detach(), v.detach(), attn.mask(70)[None, None], 32 ** -0.5)
    assert rel(out, ro) < tol
    assert rel(lse, rl) < 1e-5
    out.float().sum().backward()
    assert q.grad.dtype == dtype and not torch.isnan(q.grad.float()).any()


@pytest.mark.parametrize("D", [16, 24, 100, 256])
def test_head_dims(D):
    attn = patterndsl.compile("causal & local(10)")
    run_case(attn, B=1, Hq=2, Hkv=1, n=33, D=D, Dv=16 if D > 100 else D, grads=D <= 100)


def test_non_contiguous_inputs():
    attn = patterndsl.compile("local(5) | global([0])", block_m=16, block_n=16)
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 50, 4, 16, generator=gen).transpose(1, 2)          # [B, H, N, D] view
    kv = torch.randn(2, 2, 60, 48, generator=gen)
    k, v = kv[..., :16], kv[..., 16:40]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out, lse = attn(q, k, v, return_lse=True)
    ro, rl = dense(q, k, v, attn.mask(60, nq=50)[None, None], 0.25)
    assert rel(out, ro) < TOL
    check_lse(lse, rl)
    out2 = attn(q.contiguous(), k.contiguous(), v.contiguous())
    assert torch.equal(out, out2)


# ---------------------------------------------------------------------------
# FlexAttention with attn.to_mask_mod() (eager flex_attention runs on CPU)
# ---------------------------------------------------------------------------

FLEX_CASES = [
    ("causal & local(5) | global([0])", None),
    ("causal & (local(8) | stride(8))", None),
    ("blockwise(4, local(1) | global([0, -1])) | random(2, block=4, seed=1)", None),
    ("heads 0:2 = causal\nheads 2: = local(3) | every(5, 2)", None),
    ("causal & document", "batch"),
    ("causal & cols([30:]) | slash([-3])", None),
]


@pytest.mark.parametrize("text,doc", FLEX_CASES)
def test_against_flex_attention(text, doc):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    attn = patterndsl.compile(text, block_m=16, block_n=16)
    B, Hq, Hkv, n, nq, D = 2, 4, 2, 67, 50, 16
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(B, Hq, nq, D, generator=gen)
    k = torch.randn(B, Hkv, n, D, generator=gen)
    v = torch.randn(B, Hkv, n, D, generator=gen)
    doc_ids = None
    if doc:
        doc_ids = torch.stack([torch.tensor([0] * 30 + [1] * 37), torch.tensor([5] * 10 + [6] * 57)])
    mask_mod = attn.to_mask_mod(n, nq=nq, doc_ids=doc_ids)
    block_mask = create_block_mask(mask_mod, B, Hq, nq, n, device="cpu", BLOCK_SIZE=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fo, fl = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True, return_lse=True)
    out, lse = attn(q, k, v, doc_ids=doc_ids, return_lse=True)
    has = attn.mask(n, nq=nq, num_heads=Hq, doc_ids=doc_ids).expand(B, Hq, nq, n).any(-1)
    assert rel(out[has], fo[has]) < TOL
    assert rel(lse[has], fl[has]) < TOL
    assert bool((out[~has] == 0).all()) and bool(torch.isneginf(lse[~has]).all())


# ---------------------------------------------------------------------------
# The custom op under torch.compile
# ---------------------------------------------------------------------------

def test_custom_op_under_torch_compile():
    attn = patterndsl.compile("causal & local(6) | sink(2)", block_m=16, block_n=16)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 16)

        def forward(self, x):
            q = self.proj(x)
            return attn(q, x[:, :1], x[:, :1]).sum(1)

    model = Tiny()
    x = torch.randn(1, 2, 30, 16, requires_grad=True)
    want = model(x)
    gw = torch.autograd.grad(want.sum(), (x, model.proj.weight))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    gg = torch.autograd.grad(got.sum(), (x, model.proj.weight))
    assert torch.allclose(got, want, atol=1e-6)
    for a, b in zip(gg, gw):
        assert torch.allclose(a, b, atol=1e-5)


def test_custom_op_opcheck():
    attn = patterndsl.compile("causal & local(3)", block_m=16, block_n=16)
    q = torch.randn(1, 2, 20, 16, requires_grad=True)
    k = torch.randn(1, 1, 20, 16, requires_grad=True)
    v = torch.randn(1, 1, 20, 16, requires_grad=True)
    torch.library.opcheck(torch.ops.psparse.attention.default,
                          (q, k, v, None, None, attn.key, 0.25, 0, 0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
