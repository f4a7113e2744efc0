"""Data-dependent terms: the estimation (patterndsl.dynamic.select), its static substitution,
and compiled attention running them (``compile(..., dynamic=True)``).

The choices are checked three ways: against sets read back from the reference mask
(``Spec.mask(n, q=, k=)``), against a brute-force float64 ranking written here from
LANGUAGE.md alone, and by the masks of the substituted static expressions.  Inputs are
Gaussian with a fixed seed and the test asserts that the scores around each cut are well
separated, so a last-bit difference between the chunked and the dense softmax cannot flip a
choice.  Attention outputs and gradients are compared with dense float64 attention under the
reference mask (relative error < 1e-5 in float32).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import patterndsl
from patterndsl import ir
from patterndsl.dynamic import select, substitute
from patterndsl.errors import PsparseUsageError
from patterndsl.reference import expr_mask

from dense_attention import dense, inputs, rel

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("small_dynamic_chunks")


def brute_attention(q, k, last, offset, scale):
    """``A [B, Hq, L, n]`` float64 and the positions of its rows."""
    nq, n = q.shape[2], k.shape[2]
    rows = min(last, nq)
    kk = k.double().repeat_interleave(q.shape[1] // k.shape[1], 1)
    logits = scale * q[:, :, nq - rows:].double() @ kk.transpose(-1, -2)
    pos = torch.arange(offset + nq - rows, offset + nq)
    logits = logits.masked_fill(torch.arange(n).view(1, -1) > pos.view(-1, 1), float("-inf"))
    return torch.softmax(logits, -1), pos


def rank(scores, count):
    """Best ``count`` indices (largest first, ties to the smaller index) and the gap between
    the last taken and the first left (inf when everything is taken)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    taken = sorted(order[:count])
    gap = scores[order[count - 1]] - scores[order[count]] if 0 < count < len(order) else float("inf")
    return taken, gap


def brute_choice(term, q, k, b, h, offset, scale):
    """(chosen items, separation) for one head under a uniform budget."""
    n = k.shape[2]
    if isinstance(term, ir.TopVertical) and term.by != "attn":
        norms = k[b, h // (q.shape[1] // k.shape[1])].double().norm(dim=-1).tolist()
        return rank(norms if term.by == "norm" else [-x for x in norms], term.topk)
    A, pos = brute_attention(q, k, term.last, offset, scale)
    if isinstance(term, ir.TopVertical):
        return rank(A[b, h].sum(0).tolist(), term.topk)
    diag = [0.0] * n
    for r, p in enumerate(pos.tolist()):
        for key in range(p + 1):
            diag[p - key] += float(A[b, h, r, key])
    return rank(diag, term.topk)


@pytest.mark.parametrize("text", [
    "vertical(topk=5)", "vertical(topk=4, last=7)", "slash(topk=3)", "slash(topk=6, last=9)",
    "vertical(topk=3, by=norm)", "vertical(topk=2, by=lownorm)",
])
@pytest.mark.parametrize("n,nq", [(80, 80), (61, 23)])
def test_selection_matches_brute_force(text, n, nq):
    q, k, _ = inputs(n=n, nq=nq)
    spec = patterndsl.parse(text)
    (term,) = [nd for nd in spec.canonical_ir.rules[0].expr.walk() if isinstance(nd, ir.DYNAMIC_TYPES)]
    sels = select(spec, q, k)
    sel = sels[term]
    assert sel.heads == (0, 1, 2, 3)
    for b in range(2):
        for h in range(4):
            want, gap = brute_choice(term, q, k, b, h, n - nq, 16 ** -0.5)
            assert gap > 1e-5, "inputs not separated enough for an exact comparison"
            assert sel.chosen(b, h) == want
            assert int(sel.count[b, h]) == len(want)
            # ascending, padded with -1 after count
            row = sel.index[b, h].tolist()
            assert row[:len(want)] == want and all(x == -1 for x in row[len(want):])


# ---------------------------------------------------------------------------
# Against the reference mask
# ---------------------------------------------------------------------------

def sets_from_mask(kind, mask, n, nq, offset, block=0):
    """The chosen items of a spec that is one dynamic term alone, read from its mask [nq, n]."""
    if kind == "vertical":  # every row holds exactly the chosen columns
        return mask[0].nonzero().flatten().tolist()
    if kind == "slash":     # the last row (position n - 1) shows offset o at key n - 1 - o
        assert offset + nq == n
        return sorted(n - 1 - j for j in mask[-1].nonzero().flatten().tolist())
    rows = {}
    for r in range(nq):
        qb = (offset + r) // block
        rows.setdefault(qb, sorted({j // block for j in mask[r].nonzero().flatten().tolist()}))
    return [rows[i] for i in sorted(rows)]


@pytest.mark.parametrize("text,kind", [
    ("vertical(topk=6)", "vertical"), ("slash(topk=4)", "slash"),
    ("vertical(topk=3, by=norm)", "vertical"), ("blocks(topk=2, block=8)", "blocks"),
    ("blocks(3, 7)", "blocks"), ("blocks(topk=40, block=16)", "blocks"),
    ("vertical(topk=500)", "vertical"),
    ("budget = adaptive(floor=0.25); vertical(topk=5)", "vertical"),
    ("budget = adaptive; slash(topk=3)", "slash"),
    ("budget = adaptive(floor=0.5); blocks(topk=2, block=8)", "blocks"),
    ("budget = pyramid(beta=4); vertical(topk=6)", "vertical"),
    ("budget = pyramid(beta=2.5); blocks(topk=3, block=8)", "blocks"),
])
@pytest.mark.parametrize("n,nq", [(75, 75), (70, 33)])
def test_selection_matches_reference_mask(text, kind, n, nq):
    q, k, _ = inputs(n=n, nq=nq, seed=1)
    spec = patterndsl.parse(text)
    ref = spec.mask(n, q=q, k=k, layer=1, num_layers=3)
    sels = select(spec, q, k, layer=1, num_layers=3)
    (sel,) = sels.values()
    assert sel.kind == kind
    for b in range(2):
        for h in range(4):
            want = sets_from_mask(kind, ref[b, h], n, nq, n - nq, sel.block)
            if kind == "blocks":
                got = [sel.chosen(b, h, r) for r in range(sel.index.shape[2])]
                assert sel.first_block == (n - nq) // sel.block
            else:
                got = sel.chosen(b, h)
            assert got == want


def test_adaptive_moves_counts_between_heads():
    # A head whose queries all point at one key spends little; another one gains.
    q, k, _ = inputs(n=64, seed=3)
    spec = patterndsl.parse("budget = adaptive(floor=0.2); vertical(topk=10)")
    sel = select(spec, q, k)[spec.canonical_ir.rules[0].expr]
    counts = sel.count.tolist()
    for b in range(2):
        assert sum(counts[b]) == 40          # h * H shared within a batch element
        assert min(counts[b]) >= 2           # round(0.2 * 10) first
    assert any(len(set(c)) > 1 for c in counts)   # not simply uniform


def test_heads_lines_pool_adaptive_per_line():
    text = ("budget = adaptive; heads 0:2 = causal & vertical(topk=3)\n"
            "heads 2:4 = causal & (vertical(topk=3) | slash(topk=2))")
    spec = patterndsl.parse(text)
    q, k, _ = inputs(n=50, seed=4)
    sels = select(spec, q, k)
    ref = spec.mask(50, q=q, k=k)
    vert = sels[ir.TopVertical(3)]
    assert vert.heads == (0, 1, 2, 3)
    assert sels[ir.TopSlash(2)].heads == (2, 3)
    for b in range(2):
        assert int(vert.count[b, :2].sum()) == 6 and int(vert.count[b, 2:].sum()) == 6
        for h in range(4):
            static = substitute(spec.pattern(h), sels, b, h)
            assert torch.equal(expr_mask(static, 50), ref[b, h])


# ---------------------------------------------------------------------------
# Substitution: the static expression's mask is the reference mask
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "causal & (vertical(topk=4) | slash(topk=3))",
    "causal & (sink(2) | local(8) | vertical(topk=8) | slash(topk=4))",
    "causal - vertical(topk=3, last=5)",
    "local(5) & slash(topk=2) | causal & blocks(topk=1, block=8)",
    "budget = adaptive; blocks(topk=2, block=5) - slash(topk=1) | vertical(topk=2, by=lownorm)",
    "causal & slash(topk=100)",
])
@pytest.mark.parametrize("nq", [66, 30, 1])
def test_substitution_equals_reference(text, nq):
    n = 66
    spec = patterndsl.parse(text)
    q, k, _ = inputs(n=n, nq=nq, seed=2)
    ref = spec.mask(n, q=q, k=k)
    sels = select(spec, q, k)
    for b in range(2):
        for h in range(4):
            static = substitute(spec.pattern(h), sels, b, h)
            assert not static.is_dynamic
            assert torch.equal(expr_mask(static, n, nq=nq), ref[b, h])


def test_explicit_q_offset_and_scale():
    n, nq, off = 60, 20, 15
    spec = patterndsl.parse("causal & (vertical(topk=3) | slash(topk=2) | blocks(topk=1, block=8))")
    q, k, _ = inputs(n=n, nq=nq, seed=5)
    ref = spec.mask(n, q=q, k=k, q_offset=off, scale=0.7)
    sels = select(spec, q, k, q_offset=off, scale=0.7)
    for b in range(2):
        for h in range(4):
            static = substitute(spec.pattern(h), sels, b, h)
            assert torch.equal(expr_mask(static, n, nq=nq, q_offset=off), ref[b, h])


def test_no_host_reads():
    # Under FakeTensorMode any .item() or branch on a tensor value raises, so this proves
    # the estimation sizes everything from shapes and spec numbers (GPU-ready).
    from torch._subclasses.fake_tensor import FakeTensorMode
    spec = patterndsl.parse("budget = adaptive; causal & (vertical(topk=4) | slash(topk=3) | "
                            "blocks(topk=2, block=8) | vertical(topk=2, by=norm))")
    with FakeTensorMode():
        q, k = torch.randn(2, 4, 50, 16), torch.randn(2, 2, 64, 16)
        sels = select(spec, q, k)
    assert {s.kind for s in sels.values()} == {"vertical", "slash", "blocks"}
    assert sels[ir.TopBlocks(2, 8)].index.shape == (2, 4, 7, 8)   # topk * heads, 7 query blocks


def test_usage_errors():
    q, k, _ = inputs(n=20)
    with pytest.raises(PsparseUsageError, match="num_layers"):
        select("budget = pyramid; vertical(topk=2)", q, k, layer=0)
    with pytest.raises(PsparseUsageError, match="multiple"):
        select("vertical(topk=2)", q[:, :3], k)
    with pytest.raises(PsparseUsageError, match="covers head"):
        select("heads 0:2 = vertical(topk=2)", q, k)


# ---------------------------------------------------------------------------
# Memory stays linear in n
# ---------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    sys.path.insert(0, {root!r})
    from patterndsl.dynamic import select
    torch.manual_seed(0)
    n, D = 65536, 16
    q = torch.randn(1, 1, n, D); k = torch.randn(1, 1, n, D)
    for text in ("causal & (vertical(topk=64) | slash(topk=64))", "vertical(topk=8, by=norm)",
                 "blocks(topk=4, block=64)"):
        select(text, q[:, :, :64], k)          # warm-up: first-call allocations
        break
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for text in ("causal & (vertical(topk=64) | slash(topk=64))", "vertical(topk=8, by=norm)",
                 "blocks(topk=4, block=64)"):
        sels = select(text, q, k)
        assert all(int(s.count.min()) > 0 for s in sels.values())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)
""")


def test_estimation_memory_is_linear():
    n = 65536
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(root=str(ROOT))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    peak_growth = int(out.stdout.split()[-1])
    # n * n * 4 bytes would be 16 GiB; inputs are 4 MiB each; allow a generous 128 MiB.
    assert peak_growth < 128 << 20 < n * n * 4 // 64


# ---------------------------------------------------------------------------
# Compiled attention with dynamic=True, against dense attention under the reference mask
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "causal & (vertical(topk=4) | slash(topk=3))",
    "causal & (sink(2) | local(8) | vertical(topk=8) | slash(topk=4))",
    "vertical(topk=2, by=norm)",
    "causal & blocks(topk=2, block=16)",
    "budget = adaptive; causal & (vertical(topk=4) | slash(topk=3))",
])
def test_attention_matches_dense(text):
    n, nq, D = 70, 50, 16
    attn = patterndsl.compile(text, dynamic=True, block_m=16, block_n=16)
    q, k, v = (x.requires_grad_() for x in inputs(n=n, nq=nq, D=D, seed=7))
    out, lse = attn(q, k, v, return_lse=True)
    mask = attn.mask(n, q=q.detach(), k=k.detach(), layer=0)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, _ = dense(qd, kd, vd, mask, D ** -0.5)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.double())
    assert rel(out, ref) < TOL
    for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert rel(got, want) < TOL
    # the selection the call used is the one attn.selection reports
    sels = attn.selection(q.detach(), k.detach())
    assert set(sels) == {nd for nd in attn.spec.pattern(0).walk() if isinstance(nd, ir.DYNAMIC_TYPES)}


def test_attention_mixed_static_and_dynamic_heads():
    text = "heads 0:2 = causal & local(4)\nheads 2:4 = causal & (sink(1) | slash(topk=2))"
    attn = patterndsl.compile(text, dynamic=True, block_m=16, block_n=16)
    q, k, v = inputs(n=40, D=16, seed=8)
    out = attn(q, k, v)
    mask = attn.mask(40, q=q, k=k)
    assert rel(out, dense(q.double(), k.double(), v.double(), mask, 0.25)[0]) < TOL


def test_dynamic_can_be_refused():
    with pytest.raises(PsparseUsageError, match="dynamic=False"):
        patterndsl.compile("causal & vertical(topk=4)", dynamic=False)
    with pytest.raises(PsparseUsageError, match="dynamic="):
        patterndsl.compile("causal & vertical(topk=4)", dynamic="yes")
    # the flag does not change what a static spec is
    assert patterndsl.compile("causal").key == patterndsl.compile("causal", dynamic=False).key
