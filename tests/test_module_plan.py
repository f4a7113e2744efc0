"""Self-contained kernel modules (``psparse compile``) against psparse itself.

* their ``plan`` is ``Spec.plan``: same parts, views, runs and full flags, for the examples,
  the canonical set and random static specs, at several geometries, documents and tiles;
* their kernels' generic part predicate (evaluated in its torch spelling) is exactly each
  part's predicate;
* their ``attention`` (Triton's interpreter) matches a dense float64 reference on
  multi-part, residue-view plans: forward, log-sum-exp and gradients;
* the planner inside them is the package's file, verbatim.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from patterndsl import ir
from patterndsl.codegen.emit import bind
from patterndsl.codegen.module import render_module, runtime_source
from patterndsl.codegen.ownerpred import owner_predicate
from patterndsl.plan import build_plan
from patterndsl.plan.predicate import evaluate
from patterndsl.plan.runtime import owner_program
from patterndsl.printer import to_text
from patterndsl.spec import parse
from predicates import torch_function
from strategies import exprs

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5
_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def load(src: str, tmp_path: Path, name: str):
    """Import module text from a file (triton.jit reads kernel sources from files)."""
    path = tmp_path / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"psparse_test_{name}_{abs(hash(src))}", str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def static_patterns():
    """Every static pattern of examples/*.psp and of the canonical set (canonical IR)."""
    out = []
    for f in sorted((ROOT / "examples").glob("*.psp")):
        for rule in parse(f.read_text()).canonical_ir.rules:
            if not rule.expr.is_dynamic:
                out.append(ir.strip_spans(rule.expr))
    for line in (ROOT / "benchmarks" / "canonical_set.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            out.append(ir.strip_spans(parse(line.split("\t", 1)[1]).pattern()))
    seen, unique = set(), []
    for e in out:
        if e not in seen:
            seen.add(e)
            unique.append(e)
    return unique


def multi_head_spec(patterns) -> str:
    """One spec holding each pattern on a head of its own (one module, one render)."""
    return "\n".join(f"heads {i} = {to_text(e)}" for i, e in enumerate(patterns))


def doc_ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (n,), generator=g).sort().values


# (n, nq, q_offset, head_dim, dtype, block_m, block_n)
GEOMETRIES = [
    (300, None, None, 128, torch.bfloat16, None, None),
    (1001, 77, 500, 64, torch.float32, None, None),
    (4097, 1000, None, 128, torch.float16, None, None),
    (129, None, None, 16, torch.float32, 32, 16),
    (37, 5, 3, 256, torch.bfloat16, None, 64),
    (65537, 4096, None, 128, torch.bfloat16, None, None),
]


def assert_same_plan(mod_plan, ref, where):
    assert mod_plan["exact"], where
    assert (mod_plan["block_m"], mod_plan["block_n"]) == (ref.block_m, ref.block_n), where
    assert len(mod_plan["parts"]) == len(ref.parts), (where, [p["view"] for p in mod_plan["parts"]], ref)
    for got, part in zip(mod_plan["parts"], ref.parts):
        v = part.view
        assert got["view"] == (v.kind, v.s, v.r, v.qlo, v.qhi), where
        for name, view in (("q_view", part.q_view), ("k_view", part.k_view)):
            assert got[name] == dict(period=view.period, start=view.start, stop=view.stop,
                                     block=view.block, class_tiles=view.class_tiles), (where, name)
        for x in ("kv_lo", "kv_hi", "kv_full"):
            assert torch.equal(got[x], getattr(part, x)), (where, x)


def compare_plans(mod, patterns, geometries, seed=0):
    for head, expr in enumerate(patterns):
        for i, (n, nq, q_offset, hd, dtype, bm, bn) in enumerate(geometries):
            doc = doc_ids(n, seed + i) if expr.needs_doc_ids else None
            opts = dict(nq=nq, q_offset=q_offset, head_dim=hd, dtype=dtype, block_m=bm, block_n=bn, doc_ids=doc)
            ref = build_plan(expr, n, **opts)
            got = mod.plan(n, head=head, **opts)
            assert_same_plan(got, ref, (to_text(expr), n, nq, q_offset, hd, dtype, bm, bn))


def test_module_plans_are_psparse_plans_for_examples_and_canonical_set(tmp_path):
    patterns = static_patterns()
    assert len(patterns) >= 15
    mod = load(render_module(multi_head_spec(patterns)), tmp_path, "all")
    compare_plans(mod, patterns, GEOMETRIES)
    # the residue views are really there (not everything is one identity part)
    kinds = {p["view"][0] for h in range(len(patterns)) for p in mod.plan(32768, head=h, doc_ids=doc_ids(32768, 1))["parts"]}
    assert {"id", "d", "k"} <= kinds


@settings(max_examples=4, **_SETTINGS)
@given(exprs(dynamic=False, document=True, random=True, max_leaves=6), st.integers(1, 600), st.data())
def test_module_plans_are_psparse_plans_for_random_specs(tmp_path_factory, expr, n, data):
    expr = parse(to_text(expr)).pattern()
    mod = load(render_module(to_text(expr)), tmp_path_factory.mktemp("mod"), "rand")
    nq = data.draw(st.integers(0, n))
    q_offset = data.draw(st.integers(0, n - nq))
    bm = data.draw(st.sampled_from([None, 16, 32]))
    geos = [(n, nq, q_offset, 64, torch.float32, bm, None), (n + 1, None, None, 128, torch.bfloat16, None, None),
            (40000, 3000, 12345, 128, torch.bfloat16, None, None)]
    compare_plans(mod, [expr], geos, seed=n)


# ---------------------------------------------------------------------------
# The generic part predicate (torch spelling of the kernels' lines)
# ---------------------------------------------------------------------------

def _owner_fn(expr):
    return torch_function(owner_predicate(expr, dialect="torch"), "qc, kc, n, PRM, TAB, DOC")


def check_owner(expr, n, doc=None):
    plan = build_plan(expr, n, doc_ids=doc)
    prog = owner_program(expr, n)
    assert prog is not None
    prm, tab = bind(expr, plan.context)
    f = _owner_fn(expr)
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    union = torch.zeros(n, n, dtype=torch.bool)
    for part in plan.parts:
        want = evaluate(part.predicate, q, k, plan.context).expand(n, n)
        got = f(q, k, n, list(prm) + prog.params(part.view), tab.to(torch.int64), doc).expand(n, n)
        assert torch.equal(got, want), (to_text(expr), n, part.view)
        assert not (union & got).any()
        union |= got
    assert torch.equal(union, evaluate(expr, q, k, plan.context).expand(n, n))


@pytest.mark.parametrize("text", [
    "causal & (local(5) | stride(8))", "local(3) | global([0, -1, 5::9])",
    "causal & (block(16) | every(16, 12) | every(16, 13))",
    "(stride(4) | slash([1:40:8, 3])) & (causal | cols([2::5]))", "rows([3::7, 10:12]) - local(2)",
    "(stride(4) & stride(6)) | (every(5, 1) & dilated(3, 5))", "global([-1, 5::30]) | local(3) - document",
])
def test_owner_predicate_is_each_parts_predicate(text):
    expr = parse(text).pattern()
    for n in (1, 37, 150):
        check_owner(expr, n, doc_ids(n, n) if expr.needs_doc_ids else None)


@settings(max_examples=20, **_SETTINGS)
@given(exprs(dynamic=False, document=True, random=True, max_leaves=6), st.integers(1, 200))
def test_owner_predicate_random(expr, n):
    check_owner(expr, n, doc_ids(n, n) if expr.needs_doc_ids else None)


# ---------------------------------------------------------------------------
# Attention through the module's parts (Triton's interpreter)
# ---------------------------------------------------------------------------

def dense(mask, q, k, v, dout, scale):
    """float64 attention over a boolean mask [B or 1, nq, n], GQA by repeating KV heads."""
    g = q.shape[1] // k.shape[1]
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ kk.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(lse == float("-inf"), 0.0, lse).unsqueeze(-1))
    out = p @ vv
    out.backward(dout.double())
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


ATTENTION_CASES = [
    # spec, n, views the plan must hold, batched document ids
    ("causal & stride(8)", 128, {("d", 8, 0, None, None)}, False),
    ("causal & (local(8) | dilated(8, 4))", 128, {("id", 1, 0, None, None), ("d", 4, 0, None, None)}, False),
    ("local(16) | global([0, -1])", 128, {("id", 1, 0, 0, 1), ("id", 1, 0, 127, 128)}, False),
    ("causal & document | sink(2)", 96, {("id", 1, 0, None, None)}, True),
]


@pytest.mark.parametrize("text,n,views,batched", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_module_attention_matches_dense_reference(tmp_path, text, n, views, batched):
    mod = load(render_module(text), tmp_path, "att")
    g = torch.Generator().manual_seed(n)
    B, Hq, Hkv, D = (2 if batched else 1), 2, 1, 16
    q = torch.randn(B, Hq, n, D, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, n, D, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, n, D, generator=g, requires_grad=True)
    dout = torch.randn(B, Hq, n, D, generator=g)
    doc = torch.stack([doc_ids(n, 1), doc_ids(n, 2)]) if batched else None
    rows = [None] if doc is None else list(doc)
    for row in rows:
        p = mod.plan(n, head_dim=D, dtype=torch.float32, doc_ids=row)
        assert views <= {x["view"] for x in p["parts"]}, [x["view"] for x in p["parts"]]
        assert_same_plan(p, build_plan(parse(text).pattern(), n, head_dim=D, dtype=torch.float32, doc_ids=row), text)
    out, lse = mod.attention(q, k, v, doc_ids=doc, return_lse=True)
    out.backward(dout)
    mask = parse(text).mask(n, doc_ids=doc)
    mask = mask if batched else mask.unsqueeze(0)
    want = dense(mask, q, k, v, dout, D ** -0.5)
    assert rel(out, want[0]) < TOL
    fin = torch.isfinite(want[1])
    assert torch.equal(torch.isfinite(lse), fin)
    assert float((lse.detach().double() - want[1])[fin].abs().max()) < TOL * 10
    for name, x, y in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), want[2:]):
        assert rel(x, y) < TOL, name


def test_more_views_than_the_kernels_bitmask_falls_back_to_one_identity_part(tmp_path):
    """Beyond MAX_OWNER_VIEWS views (here 32 stepped row items, each a query residue view of
    its own) the module runs the pattern as one identity part: correct, not psparse's plan."""
    items = ", ".join(f"{r}::{s}" for s in (37, 41, 43, 47) for r in range(8))
    text = f"local(2) | rows([{items}])"
    n = 200
    expr = parse(text).pattern()
    assert owner_program(expr, n) is None and len(build_plan(expr, n).parts) > 30
    mod = load(render_module(text), tmp_path, "fallback")
    p = mod.plan(n, head_dim=16, dtype=torch.float32, block_m=16, block_n=16)
    assert not p["exact"] and [x["view"] for x in p["parts"]] == [("id", 1, 0, None, None)]
    part = p["parts"][0]
    # the kernel predicate (torch spelling) with the fallback's ownership data is the pattern
    plan = build_plan(expr, n)
    prm, tab = bind(expr, plan.context)
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    got = _owner_fn(expr)(q, k, n, list(prm) + list(part["owner"]), tab.to(torch.int64), None).expand(n, n)
    want = parse(text).mask(n)
    assert torch.equal(got, want)
    # its runs visit exactly the 16 x 16 tiles with an allowed pair, full flags truthful
    t = -(-n // 16)
    pad = torch.zeros(t * 16, t * 16, dtype=torch.bool)
    pad[:n, :n] = want
    tiles = pad.reshape(t, 16, t, 16)
    visited = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for lo, hi, full in zip(part["kv_lo"][i].tolist(), part["kv_hi"][i].tolist(), part["kv_full"][i].tolist()):
            visited[i, lo:hi] = True
            if full:
                valid = torch.zeros(t * 16, t * 16, dtype=torch.bool)
                valid[:n, :n] = True
                vt = valid.reshape(t, 16, t, 16)[i, :, lo:hi]
                assert bool(tiles[i, :, lo:hi][vt].all())
    assert torch.equal(visited, tiles.any(3).any(1))


# ---------------------------------------------------------------------------
# The planner text inside modules
# ---------------------------------------------------------------------------

def test_module_holds_the_package_planner_verbatim_and_imports_only_torch_and_triton():
    src = render_module("causal & stride(8) | global([0]) | random(1, block=16) | blockwise(8, local(1))")
    runtime = (ROOT / "patterndsl" / "plan" / "runtime.py").read_text()
    body = runtime.split('"""', 2)[2].strip("\n")
    assert body in src and body in runtime_source()
    tree = ast.parse(src)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= {"torch", "triton", "threading", "functools", "dataclasses", "math", "types",
                        "contextlib"}, imported
    # the module's own definitions never shadow the planner's
    names = [t.id if isinstance(t, ast.Name) else None for node in tree.body if isinstance(node, ast.Assign)
             for t in node.targets] + [node.name for node in tree.body
                                       if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    dup = {x for x in names if x is not None and names.count(x) > 1}
    assert not dup, dup
    # plan programs are constructor calls: class names and integers only
    for line in src.splitlines():
        if line.startswith("_PLAN_"):
            toks = line.split("=", 1)[1].replace("(", " ").replace(")", " ").replace(",", " ").split()
            assert all(t.lstrip("-").isdigit() or t in ("None", "True", "False") or
                       (t.startswith("NODES.") and t[6:].isidentifier()) for t in toks), line


@pytest.mark.parametrize("n", [0, 1, 17])
def test_tiny_lengths(tmp_path, n):
    mod = load(render_module("causal & stride(8) | global([0])"), tmp_path, "tiny")
    ref = build_plan(parse("causal & stride(8) | global([0])").pattern(), n)
    assert_same_plan(mod.plan(n), ref, n)
    assert tuple(mod.mask(n).shape) == (n, n)
