"""Block-layout benchmark: psparse plans vs FlexAttention block masks on the canonical set.

    python benchmarks/layout.py            # everything (FlexAttention at 64K takes minutes)
    python benchmarks/layout.py --quick    # skip create_block_mask at 64K
    python benchmarks/layout.py --no-flex  # skip create_block_mask entirely

Columns:
  density    allowed pairs / (n * n) at n = 32768
  psparse    the plan's work ratio (executed / allowed pairs) at n = 32768, head_dim 128
  flex128    work ratio of a 128x128 plain tiling of the same mask (what FlexAttention's
             BlockMask computes: every non-empty tile whole), from the exact layout
  plan 16K / plan 64K           psparse plan build + exact allowed-pair count (cold cache)
  flex 16K / flex 64K           create_block_mask(..., _compile=True) on the CPU
  plan 1M / plan 1M (cpu)       spec.plan(n) at n = 1,048,576: wall clock and process CPU time
                                (a busy machine inflates CPU time less than wall time)
  count 1M (cpu)                the exact allowed-pair count (plan.allowed_pairs, lazy) at 1M
  peak 1M                       peak extra resident memory of both (VmHWM after resetting it,
                                minus VmRSS before), in a fresh subprocess per spec

    python benchmarks/layout.py --module   # plan time of a generated module vs Spec.plan

With --module: per spec, ``Spec.plan(n)`` and the ``plan(n)`` of the module ``psparse
compile`` writes (same planner, inlined), both cold at n = 1M, and whether the parts agree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def _canonical_targets() -> dict[str, float]:
    """The canonical set (spec -> work-ratio target), from canonical_set.tsv beside this file."""
    rows = (line.split("\t") for line in
            (Path(__file__).with_name("canonical_set.tsv")).read_text().splitlines()
            if line and not line.startswith("#"))
    return {spec: float(target) for target, spec in rows}


CANONICAL_TARGETS = _canonical_targets()
CANONICAL = list(CANONICAL_TARGETS)


def doc_ids(n: int, docs: int = 16, seed: int = 0):
    """``docs`` documents of random lengths (fixed seed), as run-contiguous ids."""
    import torch
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randperm(n - 1, generator=g)[: docs - 1] + 1).values
    d = torch.zeros(n, dtype=torch.int64)
    d[cuts] = 1
    return torch.cumsum(d, 0)


def _plan(spec, n, **kw):
    if "document" in spec.source:
        kw["doc_ids"] = doc_ids(n)
    return spec.plan(n, **kw)


def plan_time(text: str, n: int) -> float:
    import patterndsl
    from patterndsl.plan import clear_cache
    spec = patterndsl.parse(text)
    _plan(spec, 1024).allowed_pairs      # warm the code paths, not the cache for n
    clear_cache()
    t = time.perf_counter()
    p = _plan(spec, n)
    p.allowed_pairs
    return time.perf_counter() - t


def flex_time(text: str, n: int) -> float:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask
    import patterndsl
    spec = patterndsl.parse(text)
    mod = _plan(spec, n).mask_mod      # the pattern's own mask_mod (same predicate)
    # A fresh compilation per call: a recompile for a new length can fall back to eager
    # vmap, which materialises n x n int64 intermediates (34 GB at 64K).
    torch._dynamo.reset()
    t = time.perf_counter()
    create_block_mask(mod, None, None, n, n, device="cpu", BLOCK_SIZE=128, _compile=True)
    return time.perf_counter() - t


def _child_1m(text: str, n: int) -> dict:
    """Runs in a fresh process: plan time and peak extra memory at n."""
    import torch
    import patterndsl
    spec = patterndsl.parse(text)
    _plan(spec, 4096).allowed_pairs
    from patterndsl.plan import clear_cache
    clear_cache()
    docs = doc_ids(n) if "document" in text else None

    def status_kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0
    # ru_maxrss survives fork+exec (it would report the parent's size); the per-mm high-water
    # mark VmHWM does not, and writing 5 to clear_refs resets it to the current RSS.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = status_kb("VmRSS")
    t, c = time.perf_counter(), time.process_time()
    p = spec.plan(n, doc_ids=docs) if docs is not None else spec.plan(n)
    build, build_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    allowed = p.allowed_pairs
    count, count_cpu = time.perf_counter() - t, time.process_time() - c
    peak = status_kb("VmHWM")
    return {"build_s": build, "allowed_s": count, "build_cpu_s": build_cpu, "allowed_cpu_s": count_cpu,
            "cpu_s": build_cpu + count_cpu,
            "peak_mb": max(peak - base, 0) / 1024,
            "plan_mb": p.nbytes() / 2**20, "ratio": p.work_ratio, "allowed": allowed,
            "threads": torch.get_num_threads()}


def one_million(text: str, n: int = 1 << 20) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r});"
            f"import layout; print(json.dumps(layout._child_1m({text!r}, {n})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def module_plan_times(text: str, n: int) -> dict:
    """Cold ``Spec.plan(n)`` and generated-module ``plan(n)`` (seconds), and their agreement."""
    import importlib.util
    import tempfile
    import torch
    import patterndsl
    from patterndsl.codegen.module import render_module
    from patterndsl.plan import clear_cache
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "psparse_bench_module.py"
        path.write_text(render_module(text))
        loader = importlib.util.spec_from_file_location("psparse_bench_module", str(path))
        mod = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(mod)
    docs = doc_ids(n) if "document" in text else None
    small = doc_ids(4096) if docs is not None else None
    mod.plan(4096, doc_ids=small)              # warm the code paths, not the cache for n
    spec = patterndsl.parse(text)
    spec.plan(4096, doc_ids=small)
    clear_cache()
    t = time.perf_counter()
    ref = spec.plan(n, doc_ids=docs)
    t_spec = time.perf_counter() - t
    t = time.perf_counter()
    got = mod.plan(n, doc_ids=docs)
    t_mod = time.perf_counter() - t
    same = len(got["parts"]) == len(ref.parts) and all(
        torch.equal(a[x], getattr(b, x)) for a, b in zip(got["parts"], ref.parts)
        for x in ("kv_lo", "kv_hi", "kv_full"))
    return dict(spec_s=t_spec, module_s=t_mod, same=same, parts=len(ref.parts))


def module_main(specs, n: int) -> int:
    import torch
    print(f"# plan time at n = {n}: Spec.plan vs a generated module's plan, {platform.machine()} "
          f"{os.cpu_count()}-core CPU, torch {torch.__version__}")
    print("| spec | parts | Spec.plan | module plan | same plan |")
    print("|---|---|---|---|---|")
    bad = []
    for text in specs:
        r = module_plan_times(text, n)
        bad += [] if r["same"] else [text]
        print(f"| `{text}` | {r['parts']} | {r['spec_s'] * 1e3:.1f} ms | {r['module_s'] * 1e3:.1f} ms | "
              f"{'yes' if r['same'] else 'NO'} |", flush=True)
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip create_block_mask at 64K")
    ap.add_argument("--no-flex", action="store_true", help="skip create_block_mask timings")
    ap.add_argument("--no-1m", action="store_true", help="skip the n = 1M plan measurements")
    ap.add_argument("--n", type=int, default=32768, help="length of the work-ratio columns")
    ap.add_argument("--only", help="run only specs containing this text")
    ap.add_argument("--module", action="store_true",
                    help="only compare plan times of Spec.plan and a generated module at n = 1M")
    args = ap.parse_args(argv)
    import torch
    import patterndsl

    specs = [s for s in CANONICAL if not args.only or args.only in s]
    if args.module:
        return module_main(specs, 1 << 20)
    print(f"# psparse block layouts, {platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    head = ("| spec | density | psparse | flex128 | plan 16K | plan 64K | flex 16K | flex 64K | "
            "plan 1M | plan 1M (cpu) | count 1M (cpu) | peak 1M |")
    print(head)
    print("|" + "---|" * 12)
    failures = []
    for text in specs:
        spec = patterndsl.parse(text)
        p = _plan(spec, args.n)
        flex_ratio = p.layout(128, 128).executed_pairs / max(p.allowed_pairs, 1)
        t16 = plan_time(text, 16384)
        t64 = plan_time(text, 65536)
        f16 = f64 = None
        if not args.no_flex:
            f16 = flex_time(text, 16384)
            if not args.quick:
                f64 = flex_time(text, 65536)
        m = None if args.no_1m else one_million(text)
        target = CANONICAL_TARGETS[text]
        if p.work_ratio > target:
            failures.append(text)

        def ms(x):
            return "-" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.1f} s")
        peak = "-" if m is None else f"{m['peak_mb']:.0f} MB"
        t1m = None if m is None else m["build_s"]
        c1m = None if m is None else m["build_cpu_s"]
        a1m = None if m is None else m["allowed_cpu_s"]
        print(f"| `{text}` | {p.density:.4f} | {p.work_ratio:.3f} | {flex_ratio:.2f} | {ms(t16)} | {ms(t64)} | "
              f"{ms(f16)} | {ms(f64)} | {ms(t1m)} | {ms(c1m)} | {ms(a1m)} | {peak} |", flush=True)
    if failures:
        print(f"\nwork ratio above target for: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
