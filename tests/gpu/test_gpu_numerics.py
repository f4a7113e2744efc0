"""Numerics of the compiled Triton kernels on a CUDA GPU (skipped without one).

The "triton" backend against a dense float64 softmax under ``Spec.mask``, forward (output,
log-sum-exp) and backward (dQ, dK, dV): the planner's canonical set in bfloat16 at n = 1024
and n = 4096 + 17, a few patterns in float16 and in float32 (float32 on the GPU must use IEEE
dots, not TF32), and grouped-query attention, ``kv_lens`` (with rows left with no key),
per-batch ``doc_ids``, fewer queries than keys, an odd head dim and non-contiguous inputs.

The reference is computed from the same (rounded) inputs, so the tolerance only covers what
the kernels round: 16-bit inputs round P and dS to 16 bits before their dots.  Relative
error: max |got - ref| / max(max |ref|, 1).  Sized to run in well under two minutes on an
H100, most of it Triton compiling the kernels (each predicate, dtype and head dim once).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import patterndsl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CANONICAL = [line.split("\t")[1] for line in
             (Path(__file__).resolve().parents[2] / "benchmarks" / "canonical_set.tsv")
             .read_text().splitlines() if line and not line.startswith("#")]
ODD_N = 4096 + 17
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-5}

_COMPILED: dict[str, object] = {}


@pytest.fixture(autouse=True)
def ieee_reference():
    """No TF32 anywhere in this process while a test runs (the reference is float64, and
    nothing else may silently drop float32 precision)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compiled(text: str):
    if text not in _COMPILED:
        _COMPILED[text] = patterndsl.compile(text, backend="triton")
    return _COMPILED[text]


def documents(n: int, count: int, seed: int) -> torch.Tensor:
    """Document ids of ``count`` documents of random lengths, in order."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randperm(n - 1, generator=g)[:count - 1] + 1).values
    d = torch.zeros(n, dtype=torch.int64)
    d[cuts] = 1
    return torch.cumsum(d, 0)


def reference(q, k, v, dout, mask):
    """Float64 softmax attention under ``mask`` ``[B or 1, 1, nq, n]``: out, natural-log
    lse (-inf on rows with no key) and the gradients of ``(out * dout).sum()``; rows with
    no key give 0 and zero gradients."""
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    kr, vr = kd.repeat_interleave(g, 1), vd.repeat_interleave(g, 1)
    s = (qd @ kr.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~mask, float("-inf"))
    empty = ~mask.any(-1, keepdim=True)
    lse = torch.logsumexp(s.masked_fill(empty, 0.0), -1, keepdim=True)
    out = torch.exp(s - lse) @ vr
    (out * dout.double()).sum().backward()
    lse = lse.squeeze(-1).masked_fill(empty.squeeze(-1), float("-inf"))
    return dict(out=out.detach(), lse=lse.detach(), dq=qd.grad, dk=kd.grad, dv=vd.grad)


def rel(got, ref) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    assert not bool(torch.isnan(got).any()), "NaN in the kernel's result"
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(got), inf), "rows with no allowed key differ"
    if bool(inf.all()):
        return 0.0
    diff = (got[~inf] - ref[~inf]).abs().max()
    return float(diff / ref[~inf].abs().max().clamp(min=1.0))


def run_case(text, n, dtype, *, B=1, Hq=2, Hkv=2, D=64, Dv=None, nq=None, doc=None,
             kv_lens=None, transposed=False, seed=0):
    spec = patterndsl.parse(text)
    nq = n if nq is None else nq
    Dv = D if Dv is None else Dv
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(seed)

    def rand(b, h, length, d):
        if transposed:  # [B, N, H, D] storage seen as [B, H, N, D]: not contiguous
            return torch.randn(b, length, h, d, generator=g, device=dev).to(dtype).transpose(1, 2)
        return torch.randn(b, h, length, d, generator=g, device=dev).to(dtype)

    q, k, v = rand(B, Hq, nq, D), rand(B, Hkv, n, D), rand(B, Hkv, n, Dv)
    dout = torch.randn(B, Hq, nq, Dv, generator=g, device=dev).to(dtype)
    if spec.needs_doc_ids and doc is None:
        doc = documents(n, 16, seed)
    mask = spec.mask(n, nq=nq, doc_ids=doc).to(dev)
    mask = mask.unsqueeze(1) if mask.dim() == 3 else mask[None, None]
    if kv_lens is not None:
        mask = mask & (torch.arange(n, device=dev)[None, :] < kv_lens.to(dev)[:, None])[:, None, None, :]
    ref = reference(q, k, v, dout, mask)

    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    out, lse = compiled(text)(qg, kg, vg, doc_ids=None if doc is None else doc.to(dev),
                              kv_lens=None if kv_lens is None else kv_lens.to(dev),
                              return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert out.shape == (B, Hq, nq, Dv) and lse.shape == (B, Hq, nq)
    out.backward(dout)
    got = dict(out=out, lse=lse, dq=qg.grad, dk=kg.grad, dv=vg.grad)
    tol = TOLERANCE[dtype]
    errors = {name: rel(got[name], ref[name]) for name in got}
    assert all(e <= tol for e in errors.values()), (text, n, dtype, errors)
    return ref


@pytest.mark.parametrize("n", [1024, ODD_N])
@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_bf16(text, n):
    run_case(text, n, torch.bfloat16)


@pytest.mark.parametrize("text", ["causal", "causal & (sink(4) | local(1024))",
                                  "local(256) | global([0])"])
def test_fp16(text):
    run_case(text, 1024, torch.float16)


@pytest.mark.parametrize("text", ["causal & local(1024)", "causal & stride(128)"])
def test_fp32_is_ieee(text):
    run_case(text, ODD_N, torch.float32)


def test_grouped_query_heads_non_contiguous():
    run_case("causal & (sink(4) | local(1024))", ODD_N, torch.bfloat16, B=2, Hq=4, Hkv=1,
             transposed=True)


def test_kv_lens_with_empty_rows():
    # Batch element 2 keeps 17 keys: under a window of 1024 its later rows see none.
    lens = torch.tensor([ODD_N, 3000, 17])
    ref = run_case("causal & local(1024)", ODD_N, torch.bfloat16, B=3, kv_lens=lens)
    assert bool(torch.isinf(ref["lse"][2]).any()), "the case was meant to have empty rows"


def test_per_batch_documents():
    doc = torch.stack([documents(1024, 5, 1), documents(1024, 9, 2)])
    run_case("causal & document", 1024, torch.bfloat16, B=2, doc=doc)


def test_fewer_queries_than_keys_and_odd_head_dim():
    run_case("causal & (sink(4) | local(1024))", ODD_N, torch.bfloat16, nq=17, D=80, Dv=48)
