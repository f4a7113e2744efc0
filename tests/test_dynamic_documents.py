"""Monotone dynamic lines with ``document`` on the generated table kernels (interpret
backend): the table kernels read document ids like the static kernels, so such lines run
their static part and table parts once per document layout (no per-head plans), and match
dense float64 attention under ``Spec.mask(..., q=, k=, doc_ids=)``: outputs, log-sum-exp and
gradients, for ``doc_ids`` of shape ``[Nk]`` and ``[B, Nk]``."""
from __future__ import annotations

import pytest
import torch

import patterndsl
from patterndsl.codegen import triton_backend
from patterndsl.codegen.render import table_kernel_source
from patterndsl.dynamic.split import split

pytest.importorskip("triton")

TOL = 1e-5


def _inputs(B, Hq, Hkv, n, nq, D, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, nq, D, generator=g) * 1.5
    k = torch.randn(B, Hkv, n, D, generator=g) * 1.5
    v = torch.randn(B, Hkv, n, D, generator=g)
    return q, k, v


def _dense(q, k, v, mask, scale):
    g = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (scale * q @ kk.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ vv, torch.logsumexp(s, -1)


def _rel(a, b):
    a, b = a.detach().double(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _count(monkeypatch):
    from patterndsl import plan as plan_pkg
    calls = {"plans": 0, "table": 0}
    for mod, name, key in ((triton_backend, "forward_table_part", "table"),
                           (plan_pkg, "build_plan", "plans")):
        real = getattr(mod, name)

        def wrapped(*a, _real=real, _key=key, **kw):
            calls[_key] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(mod, name, wrapped)
    return calls


CASES = [
    # doc ids [Nk], one layout; a query window at an offset (nq < n)
    ("document & causal & (local(3) | vertical(topk=3) | slash(topk=2))", 56, 40,
     [0] * 17 + [1] * 25 + [2] * 14, 2, 1),
    # doc ids [B, Nk] differing per batch element: one layout each
    ("document & causal & (sink(1) | blocks(topk=1, block=16))", 48, 48,
     [[0] * 20 + [1] * 28, [0] * 9 + [1] * 30 + [2] * 9], 1, 2),
]


@pytest.mark.parametrize("text,n,nq,bounds,parts,layouts", CASES)
def test_document_lines_take_the_table_path_on_the_kernels(monkeypatch, text, n, nq, bounds,
                                                           parts, layouts):
    calls = _count(monkeypatch)
    attn = patterndsl.compile(text, backend="interpret", block_m=16, block_n=16)
    assert split(attn.spec.pattern(0)) is not None
    B, Hq, Hkv, D = 2, 2, 1, 16
    q, k, v = (x.requires_grad_() for x in _inputs(B, Hq, Hkv, n, nq, D, seed=11))
    doc = torch.tensor(bounds)
    out, lse = attn(q, k, v, doc_ids=doc, return_lse=True)
    # one plan (static part) and one launch per table part per document layout: never
    # one plan per (batch element, head)
    assert calls["plans"] == layouts
    assert calls["table"] == parts * layouts
    sc = D ** -0.5
    mask = attn.mask(n, q=q.detach(), k=k.detach(), doc_ids=doc, scale=sc)
    mask = mask if mask.dim() == 4 else mask.expand(B, *mask.shape[-3:])
    assert mask.shape == (B, Hq, nq, n)
    # the documents really cut pairs the rest of the line would allow
    no_doc = patterndsl.compile(text.replace("document & ", "", 1)).mask(
        n, q=q.detach(), k=k.detach(), scale=sc)
    assert bool((no_doc & ~mask).any())
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, ref_lse = _dense(qd, kd, vd, mask, sc)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (ref * grad.double()).sum().backward()
    assert _rel(out, ref) < TOL
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert float((lse.detach()[finite].double() - ref_lse.detach()[finite]).abs().max()) < TOL * 10
    for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert _rel(got, want) < TOL


def test_table_kernels_read_document_ids_only_when_used():
    with_doc = split(patterndsl.compile("document & causal & (local(2) | vertical(topk=2))")
                     .spec.pattern(0))
    without = split(patterndsl.compile("causal & (local(2) | vertical(topk=2))").spec.pattern(0))
    for sp, uses in ((with_doc, True), (without, False)):
        for part in sp.parts:
            for expr in (part.predicate, part.visit):
                _, src = table_kernel_source(expr)
                assert ("tl.load(DOC" in src) == uses
                assert ("doc_base = bq * doc_sb" in src) == uses


def test_missing_doc_ids_is_a_usage_error():
    attn = patterndsl.compile("document & causal & (local(2) | vertical(topk=2))",
                              backend="interpret", block_m=16, block_n=16)
    q, k, v = _inputs(1, 1, 1, 32, 32, 16, seed=3)
    with pytest.raises(patterndsl.errors.PsparseUsageError, match="doc_ids"):
        attn(q, k, v)
