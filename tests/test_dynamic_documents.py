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

from dense_attention import assert_matches_dense, count_calls, inputs

pytest.importorskip("triton")

TOL = 1e-5


def _count(monkeypatch):
    from patterndsl import plan as plan_pkg
    return count_calls(monkeypatch, table=(triton_backend, "forward_table_part"),
                       plans=(plan_pkg, "build_plan"))


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
    q, k, v = (x.requires_grad_() for x in inputs(B, Hq, Hkv, n, nq, D, seed=11))
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
    assert_matches_dense(out, lse, (q, k, v), mask, sc, TOL)


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
    q, k, v = inputs(1, 1, 1, 32, 32, 16, seed=3)
    with pytest.raises(patterndsl.errors.PsparseUsageError, match="doc_ids"):
        attn(q, k, v)
