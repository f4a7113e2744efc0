"""Decoding over a retention cache: memory and per-step time against a full cache.

    python benchmarks/decode.py             # 32K context, torch backend (prints a table)
    python benchmarks/decode.py --quick     # 4K context, few steps, plus a tiny interpreter run
    python benchmarks/decode.py --context 65536 --steps 50 --device cuda --backend triton

Specs (one layer, batch 1, ``q [1, 8, 1, 64]``, ``k, v [1, 2, ., 64]`` float32: grouped-query,
four query heads per KV head):

- StreamingLLM-like: ``causal & (sink(4) | local(1024))`` with ``kv = auto`` (keeps 1029 keys);
- H2O-like: ``causal`` with ``kv = sink(4) + recent(252) + heavy(768)`` (1024 keys plus one
  slot for the step before it is decided); the prompt's queries are passed to the prefill
  update so heavy scores include them, as H2O does;
- each against a full cache of the same pattern (no ``kv`` line: every key kept, the storage
  growing in chunks).

The cache is filled with a prompt of ``context`` random tokens; each timed step appends one
key and value (``update``) and decodes one query (``decode``, which for heavy also
accumulates the fused probabilities and evicts).  Reported: the storage the cache holds for
keys, values and positions (and heavy's scores), the prefill update's time (for heavy it
includes the prompt's attention column sums, computed on the pattern's block plan over the
visited tiles only: half the square for ``causal``), and the median wall time of a
step over ``steps`` steps after two warm-up steps.  On a busy CPU pass ``--threads 1``: the
per-step tensors are small, and intra-op threads mostly contend.  Nothing is written to
RESULTS.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

SPECS = {
    "StreamingLLM (auto)": ("causal & (sink(4) | local(1024))", "kv = auto"),
    "H2O (sink+recent+heavy)": ("causal", "kv = sink(4) + recent(252) + heavy(768)"),
}


def _nbytes(cache) -> int:
    total = 0
    for layer in range(cache.num_layers):
        for t in (cache._k[layer], cache._v[layer], cache._pos[layer], cache._acc[layer],
                  cache._snapped[layer]):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def run(pattern: str, kv: str | None, *, context: int, steps: int, backend: str, device: str,
        heads=(8, 2), d: int = 64, seed: int = 0) -> dict:
    import torch

    from patterndsl.retention.cache import KVCache
    from patterndsl.spec import parse

    hq, hkv = heads
    text = pattern + ("\n" + kv if kv else "")
    g = torch.Generator().manual_seed(seed)
    total = context + steps + 2
    k = torch.randn(1, hkv, total, d, generator=g).to(device)
    v = torch.randn(1, hkv, total, d, generator=g).to(device)
    q = torch.randn(1, hq, total, d, generator=g).to(device)
    cache = KVCache(parse(text), 1, 1, hkv, d, num_heads=hq, device=device, backend=backend,
                    max_len=total)
    t0 = time.perf_counter()
    extra = {"q": q[:, :, :context]} if cache.heavy else {}
    cache.update(0, k[:, :, :context], v[:, :, :context], **extra)
    prefill = time.perf_counter() - t0
    times = []
    for i in range(context, total):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        cache.update(0, k[:, :, i:i + 1], v[:, :, i:i + 1])
        cache.decode(0, q[:, :, i:i + 1])
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return dict(held=max(cache.held(0)), capacity=cache.capacity, bytes=_nbytes(cache),
                step_ms=1e3 * statistics.median(times[2:]), prefill_s=prefill,
                bounded=cache.bounded)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4K context, 8 steps, and a tiny interpreter run")
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--backend", default=None, help="torch (default on CPU), triton, interpret")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    context = args.context or (4096 if args.quick else 32768)
    steps = args.steps or (8 if args.quick else 30)
    backend = args.backend or ("triton" if args.device == "cuda" else "torch")
    print(f"# decode at {context} context, {steps} steps, backend {backend} on {args.device} "
          f"({platform.machine()}, {torch.get_num_threads()} threads)")
    print("| spec | cache | slots | MiB | prefill s | ms/step | vs full |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (pattern, kv) in SPECS.items():
        full = run(pattern, None, context=context, steps=steps, backend=backend, device=args.device)
        kept = run(pattern, kv, context=context, steps=steps, backend=backend, device=args.device)
        for label, r in (("full", full), (kv, kept)):
            ratio = "" if r is full else f"{full['step_ms'] / r['step_ms']:.1f}x faster, " \
                f"{full['bytes'] / r['bytes']:.0f}x smaller"
            print(f"| {name} | {label} | {r['held']} held / {r['capacity']} | "
                  f"{r['bytes'] / 2**20:.2f} | {r['prefill_s']:.1f} | {r['step_ms']:.2f} | {ratio} |")
    if args.quick and args.device == "cpu":
        # The generated Triton kernel under the interpreter: tiny sizes only (it is slow).
        r = run("causal & (sink(4) | local(60))", "kv = auto", context=256, steps=4,
                backend="interpret", device="cpu", heads=(4, 2), d=16)
        print(f"| interpreter, tiny | kv = auto | {r['held']} held / {r['capacity']} | "
              f"{r['bytes'] / 2**20:.3f} | {r['prefill_s']:.1f} | {r['step_ms']:.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
