"""The compiled table-part kernels of dynamic lines on a CUDA GPU (skipped without one).

One mixed static + dynamic spec (vertical, slash: gathered columns and diagonal windows)
and one block top-k spec, float32 (IEEE dots) and bfloat16, at an odd length with fewer
queries than keys and grouped-query heads: output, log-sum-exp and gradients against a dense
float64 softmax under ``Spec.mask(n, q=, k=)``.  Relative error: max |got - ref| /
max(max |ref|, 1), the tolerances of test_gpu_numerics.py.  Four table kernels compile.
"""
from __future__ import annotations

import pytest
import torch

import patterndsl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOLERANCE = {torch.bfloat16: 3e-2, torch.float32: 1e-5}
SPECS = ["causal & (sink(4) | local(64) | vertical(topk=96) | slash(topk=48))",
         "causal & (local(32) | blocks(topk=4, block=64))"]


@pytest.fixture(autouse=True)
def ieee_reference():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel(got, ref):
    got, ref = got.detach(), ref.detach()
    return float((got.double() - ref).abs().max() / max(float(ref.abs().max()), 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("text", SPECS)
def test_table_kernels_match_dense(text, dtype):
    n, nq, D = 1024 + 17, 700, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 4, nq, D, device="cuda", generator=g).to(dtype).requires_grad_()
    k = torch.randn(2, 2, n, D, device="cuda", generator=g).to(dtype).requires_grad_()
    v = torch.randn(2, 2, n, D, device="cuda", generator=g).to(dtype).requires_grad_()
    attn = patterndsl.compile(text, backend="triton")
    out, lse = attn(q, k, v, return_lse=True)
    assert attn.last_work.table_executed > 0
    mask = attn.mask(n, q=q.detach(), k=k.detach())
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    s = (qd @ kd.repeat_interleave(2, 1).transpose(-1, -2)) * D ** -0.5
    s = s.masked_fill(~mask, float("-inf"))
    ref = torch.softmax(s, -1).nan_to_num(0.0) @ vd.repeat_interleave(2, 1)
    ref_lse = torch.logsumexp(s, -1)
    grad = torch.randn_like(ref)
    (out.double() * grad).sum().backward()
    (ref * grad).sum().backward()
    tol = TOLERANCE[dtype]
    assert rel(out, ref) < tol
    fin = torch.isfinite(ref_lse)
    assert rel(lse[fin].detach(), ref_lse[fin].detach()) < tol
    for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert rel(got, want) < tol
