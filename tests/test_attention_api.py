"""The Python API around compiled attention: lazy import, options, validation before any
launch, backend dispatch, and the mask / plan / mask_mod / source companions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import patterndsl
from patterndsl import PsparseUsageError
from patterndsl.attention import CompiledPattern

ROOT = Path(__file__).resolve().parents[1]


def qkv(B=1, Hq=2, Hkv=1, nq=20, n=20, D=16, Dv=None, dtype=torch.float32):
    Dv = D if Dv is None else Dv
    return (torch.randn(B, Hq, nq, D, dtype=dtype), torch.randn(B, Hkv, n, D, dtype=dtype),
            torch.randn(B, Hkv, n, Dv, dtype=dtype))


def test_import_patterndsl_stays_free_of_torch():
    code = ("import sys, patterndsl\n"
            "assert 'torch' not in sys.modules\n"
            "from patterndsl import *\n"
            "assert 'torch' not in sys.modules\n"
            "assert callable(patterndsl.compile)\n"
            "assert 'torch' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_compile_accepts_text_and_spec():
    a = patterndsl.compile("causal & local(4)")
    b = patterndsl.compile(patterndsl.parse("local(4) & causal"))
    assert isinstance(a, CompiledPattern) and isinstance(b, CompiledPattern)
    q, k, v = qkv()
    assert torch.equal(a(q, k, v), b(q, k, v))
    assert "causal" in repr(a)


@pytest.mark.parametrize("kwargs,message", [
    (dict(backend="cuda"), "backend="),
    (dict(head_dim=8), "head_dim=8"),
    (dict(head_dim=300), "head_dim=300"),
    (dict(dtype=torch.int32), "dtype="),
    (dict(block_m=48), "power of two"),
    (dict(block_q=64), "unknown option block_q"),
])
def test_compile_options_are_checked(kwargs, message):
    with pytest.raises(PsparseUsageError, match=message):
        patterndsl.compile("causal", **kwargs)


def test_dynamic_terms_are_refused_only_when_asked():
    with pytest.raises(PsparseUsageError, match="dynamic=False"):
        patterndsl.compile("causal & vertical(topk=4)", dynamic=False)
    # a per-head spec compiles; with dynamic=False, heads that use a dynamic line are refused
    attn = patterndsl.compile((ROOT / "examples" / "mixed_heads.psp").read_text(), dynamic=False)
    q, k, v = qkv(Hq=4, Hkv=4, n=30, nq=30)
    attn(q, k, v, layer=5)
    q, k, v = qkv(Hq=8, Hkv=8, n=30, nq=30)
    with pytest.raises(PsparseUsageError, match="dynamic=False.*head 4"):
        attn(q, k, v, layer=5)
    # by default the same heads run, choosing their terms from q and k
    attn = patterndsl.compile((ROOT / "examples" / "mixed_heads.psp").read_text(), num_layers=32)
    out = attn(q, k, v, layer=5)
    assert out.shape == q.shape and torch.isfinite(out).all()


def _call(attn, **over):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v)
    args.update(over)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    return attn(q, k, v, **args)


@pytest.mark.parametrize("over,message", [
    (dict(q=torch.randn(2, 20, 16)), r"q has shape \[2, 20, 16\]: expected 4 dimensions"),
    (dict(k=[1, 2]), "k must be a torch.Tensor"),
    (dict(k=torch.randn(2, 1, 20, 16)), "batch sizes differ"),
    (dict(v=torch.randn(1, 1, 21, 16)), "same heads and length"),
    (dict(k=torch.randn(1, 1, 20, 32)), "head dims differ"),
    (dict(k=torch.randn(1, 3, 20, 16), v=torch.randn(1, 3, 20, 16)), "multiple of the key/value heads"),
    (dict(v=torch.randn(1, 1, 20, 16, dtype=torch.float64)), "dtypes differ"),
    (dict(q=torch.randn(1, 2, 20, 16, dtype=torch.float64), k=torch.randn(1, 1, 20, 16, dtype=torch.float64),
          v=torch.randn(1, 1, 20, 16, dtype=torch.float64)), "not supported"),
    (dict(q=torch.randn(1, 2, 20, 8), k=torch.randn(1, 1, 20, 8)), "head dim 8 is outside"),
    (dict(v=torch.randn(1, 1, 20, 300)), "value head dim 300"),
    (dict(q=torch.randn(1, 2, 21, 16)), "queries must not outnumber keys"),
    (dict(q_offset=5), "q_offset=5"),
    (dict(q_offset=-1), "q_offset=-1"),
    (dict(scale=float("nan")), "scale="),
    (dict(layer=-1), "layer=-1"),
    (dict(kv_lens=torch.tensor([3.0])), "kv_lens must hold integers"),
    (dict(kv_lens=torch.tensor([3, 4])), r"kv_lens has shape \[2\]"),
    (dict(kv_lens=torch.tensor([21])), r"each must be in \[0, 20\]"),
    (dict(doc_ids=torch.zeros(19, dtype=torch.int64)), r"doc_ids has shape \[19\]"),
])
def test_call_validation(over, message):
    attn = patterndsl.compile("causal & local(4)")
    with pytest.raises(PsparseUsageError, match=message):
        _call(attn, **over)


def test_device_mismatch_is_reported():
    attn = patterndsl.compile("causal")
    q, k, v = qkv()
    with pytest.raises(PsparseUsageError, match="devices differ"):
        attn(q, k.to("meta"), v)


def test_compiled_head_dim_and_dtype_are_enforced():
    q, k, v = qkv(D=32)
    with pytest.raises(PsparseUsageError, match="head_dim=64"):
        patterndsl.compile("causal", head_dim=64)(q, k, v)
    with pytest.raises(PsparseUsageError, match="compiled for torch.float16"):
        patterndsl.compile("causal", dtype=torch.float16)(q, k, v)
    assert patterndsl.compile("causal", head_dim=32, dtype=torch.float32)(q, k, v).shape == q.shape


def test_missing_doc_ids_and_uncovered_heads():
    q, k, v = qkv(Hq=4, Hkv=2)
    with pytest.raises(PsparseUsageError, match="uses `document`: pass doc_ids"):
        patterndsl.compile("causal & document")(q, k, v)
    with pytest.raises(PsparseUsageError, match="covers head 2"):
        patterndsl.compile("heads 0:2 = causal")(q, k, v)
    with pytest.raises(PsparseUsageError, match="covers head 0 of layer 3"):
        patterndsl.compile("layers 0:2 = causal")(q, k, v, layer=3)


def test_backend_dispatch():
    q, k, v = qkv()
    with pytest.raises(PsparseUsageError, match="needs CUDA tensors"):
        patterndsl.compile("causal", backend="triton")(q, k, v)
    a = patterndsl.compile("causal & local(3)")
    assert a._backend_name(q) == "torch"
    assert a._backend_name(torch.empty(0, device="meta")) == "torch"
    b = patterndsl.compile("causal & local(3)", backend="torch")
    assert torch.equal(a(q, k, v), b(q, k, v))


def test_interpret_backend_matches_torch():
    pytest.importorskip("triton")
    pytest.importorskip("patterndsl.codegen.triton_backend")
    text = "causal & local(5) | global([0])"
    q, k, v = qkv(B=1, Hq=2, Hkv=1, nq=24, n=32)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    got, glse = patterndsl.compile(text, backend="interpret")(q, k, v, return_lse=True)
    want, wlse = patterndsl.compile(text, backend="torch")(q, k, v, return_lse=True)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(glse, wlse, atol=1e-5)
    g1 = torch.autograd.grad(got.sum(), (q, k, v))
    g2 = torch.autograd.grad(want.sum(), (q, k, v))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5)


def test_empty_lengths():
    attn = patterndsl.compile("causal")
    q, k, v = qkv(nq=0, n=0)
    out, lse = attn(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 0, 16) and lse.shape == (1, 2, 0)
    q, k, v = qkv(nq=0, n=5)
    assert attn(q, k, v).shape == (1, 2, 0, 16)


def test_mask_and_plan():
    attn = patterndsl.compile("heads 0 = causal & local(8)\nheads 1: = causal", block_m=16, block_n=16)
    spec = attn.spec
    assert torch.equal(attn.mask(40, num_heads=2), spec.mask(40, num_heads=2))
    plan = attn.plan(40, head=0)
    assert plan.block_m == 16 and plan.block_n == 16
    assert plan.allowed_pairs == int(spec.mask(40, num_heads=2)[0].sum())
    assert attn.plan(40, head=1).allowed_pairs == 40 * 41 // 2


def test_to_mask_mod():
    attn = patterndsl.compile("heads 0 = causal & local(3)\nheads 1: = global([2]) | block(4)")
    n, nq = 20, 12
    mm = attn.to_mask_mod(n, nq=nq)
    qi, ki = torch.arange(nq)[:, None], torch.arange(n)[None]
    got = torch.stack([mm(torch.tensor(0), torch.tensor(h), qi, ki) for h in range(3)])
    assert torch.equal(got, attn.mask(n, nq=nq, num_heads=3))
    # without n, positions are absolute; n-dependent patterns need n
    free = patterndsl.compile("causal & local(3)").to_mask_mod()
    assert torch.equal(free(0, 0, qi, ki), patterndsl.parse("causal & local(3)").mask(20)[:12])
    with pytest.raises(PsparseUsageError, match="pass n"):
        patterndsl.compile("global([-1])").to_mask_mod()
    with pytest.raises(PsparseUsageError, match="doc_ids"):
        patterndsl.compile("causal & document").to_mask_mod(10)


def test_source_is_the_self_contained_module():
    from patterndsl.modcache import module_text
    attn = patterndsl.compile("causal & local(4)")
    src = attn.source
    compile(src, "<psparse>", "exec")
    assert "import patterndsl" not in src and "from patterndsl" not in src
    assert "def attention(" in src and repr("causal & local(4)") in src
    assert src == module_text("local(4) & causal")
    assert attn.source == patterndsl.compile("local(4) & causal").source
