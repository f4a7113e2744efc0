"""Dynamic-term estimation cost: time and peak memory of ``patterndsl.dynamic.select``.

    python benchmarks/dynamic.py               # CPU table over n, updates RESULTS.md
    python benchmarks/dynamic.py --no-write    # measure and print only
    python benchmarks/dynamic.py --sizes 8192 32768
    python benchmarks/dynamic.py --prefill     # end-to-end prefill on CPU (prints only)

For each n and each term family, a fresh interpreter builds ``q, k [1, 1, n, 64]`` float32,
runs the selection once as a warm-up on a short prefix, resets the kernel's resident-memory
high-water mark (``/proc/self/clear_refs``), times one full selection and reports the peak
resident memory above the RSS it had once the inputs existed.  ``vertical``/``slash``/norms
should grow linearly in n (the last-rows attention is ``last x n``, walked in key chunks);
``blocks`` scores ``(n / b)^2 / 2`` block pairs, so its time grows with the square of n / b
while its memory stays at one tile of query blocks plus the ``[n / b, topk]`` table (so by
default it stops at 128K: ``--blocks-max-n`` raises that).

``--prefill`` times one end-to-end forward call (selection, tables, kernels, merge) of
``compile(spec)`` on the torch backend with ``q [1, 2, n, 64]``, ``k, v [1, 1, n, 64]`` float32
(grouped-query: one KV head; local structure and a few sink keys, see ``_prefill_inputs``),
against the same call forced onto the per-(batch, head) substitution path, and against
``scaled_dot_product_attention`` given the selected mask as a dense boolean ``[n, n]``
(``attn.mask(n, q=, k=)``; building it is timed separately).  Each in a fresh process; the
table is printed, RESULTS.md is left alone.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HEADING = "## Dynamic estimation (CPU)"
SIZES = (8192, 32768, 131072, 1048576)
TERMS = {
    "vertical-slash": "causal & (vertical(topk=1000) | slash(topk=6000))",
    "norm": "vertical(topk=512, by=norm)",
    "blocks": "causal & blocks(topk=16, block=64)",
}


def _child(text: str, n: int, d: int) -> dict:
    import time

    import torch
    from patterndsl.dynamic import select

    def status_kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, n, d, generator=g)
    k = torch.randn(1, 1, n, d, generator=g)
    select(text, q[:, :, :256], k[:, :, :256])      # parse, imports, first-call allocations
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                             # VmHWM := current RSS
    except OSError:
        pass
    base = status_kb("VmRSS")
    t, c = time.perf_counter(), time.process_time()
    sels = select(text, q, k)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = status_kb("VmHWM")
    return {"wall_s": wall, "cpu_s": cpu, "peak_mb": max(peak - base, 0) / 1024,
            "chosen": sum(int(s.count.sum()) for s in sels.values()),
            "threads": torch.get_num_threads()}


PREFILL = {
    "sink+local+vertical+slash": "causal & (sink(4) | local(256) | vertical(topk=512) | slash(topk=256))",
    "vertical-slash": "causal & (vertical(topk=1000) | slash(topk=6000))",
    "blocks": "causal & (local(512) | blocks(topk=16, block=64))",
}


def _prefill_inputs(n: int, d: int):
    """Inputs with the structure the dynamic terms are for: keys follow an AR(1) process
    (neighbouring keys alike, so each query attends mostly to recent keys: diagonals near
    0), queries are their key plus noise, and 8 keys share a strong direction every query
    also holds (attention sinks: columns).  Plain Gaussian inputs spread the chosen
    diagonals uniformly, which no tiling serves well."""
    import torch
    g = torch.Generator().manual_seed(0)
    rho = 0.97
    eps = torch.randn(n, d, generator=g)
    k = torch.empty(n, d)
    k[0] = eps[0]
    for i in range(1, n):
        k[i] = rho * k[i - 1] + (1 - rho * rho) ** 0.5 * eps[i]
    sink_dir = torch.randn(d, generator=g)
    sinks = torch.randperm(n, generator=g)[:8]
    k[sinks] += 2.0 * sink_dir
    q = torch.stack([k + 0.5 * torch.randn(n, d, generator=g) + 0.5 * sink_dir
                     for _ in range(2)])
    v = torch.randn(1, 1, n, d, generator=g)
    return (2.0 * q).unsqueeze(0), (2.0 * k).view(1, 1, n, d), v


def _prefill_child(text: str, n: int, d: int, which: str) -> dict:
    import time

    import torch
    import patterndsl

    q, k, v = _prefill_inputs(n, d)
    attn = patterndsl.compile(text)
    row = {"threads": torch.get_num_threads()}
    with torch.no_grad():
        if which == "sdpa":
            t = time.perf_counter()
            mask = attn.mask(n, q=q, k=k)
            row["mask_s"] = time.perf_counter() - t
            kk, vv = k.expand(1, 2, n, d), v.expand(1, 2, n, d)
            t = time.perf_counter()
            torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
            row["wall_s"] = time.perf_counter() - t
            row["density"] = float(mask.float().mean())
            return row
        if which == "substitute":
            attn._split = lambda expr: None          # the per-(batch, head) planning path
        attn(q[:, :, :256], k[:, :, :256], v[:, :, :256])   # imports, first-call allocations
        t = time.perf_counter()
        attn(q, k, v)
        row["wall_s"] = time.perf_counter() - t
        w = attn.last_work
        row["executed"] = w.executed_pairs
        row["launches"] = w.launches
    return row


def prefill(sizes, names, old_max_n: int, d: int = 64) -> list[dict]:
    rows = []
    for name in names:
        for n in sizes:
            row = {"term": name, "n": n}
            for which in ("tables", "substitute", "sdpa"):
                if which == "substitute" and n > old_max_n:
                    continue
                code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); "
                        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import dynamic; "
                        f"print(json.dumps(dynamic._prefill_child({PREFILL[name]!r}, {n}, {d}, "
                        f"{which!r})))")
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True)
                got = json.loads(out.stdout.strip().splitlines()[-1])
                row[which] = got
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def prefill_table(rows: list[dict]) -> str:
    lines = ["| pattern | n | density | tables (new) | substitution (old) | SDPA + dense mask "
             "| building that mask | launches new / old |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        old = r.get("substitute")
        lines.append(
            f"| {r['term']} | {r['n']:,} | {r['sdpa']['density']:.3f} | "
            f"{r['tables']['wall_s']:.2f} s | "
            f"{(str(round(old['wall_s'], 2)) + ' s') if old else 'not run'} | "
            f"{r['sdpa']['wall_s']:.2f} s | {r['sdpa']['mask_s']:.2f} s | "
            f"{r['tables']['launches']} / {old['launches'] if old else '-'} |")
    return "\n".join(lines)


def measure(name: str, n: int, d: int = 64) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); "
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import dynamic; "
            f"print(json.dumps(dynamic._child({TERMS[name]!r}, {n}, {d})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(term=name, n=n, inputs_mb=2 * n * d * 4 / 2**20)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| term | n | time | CPU time | time / n (ns) | peak extra memory | q + k size | "
             "n x n x 4 bytes |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['term']} | {r['n']:,} | {r['wall_s']:.3f} s | {r['cpu_s']:.3f} s | "
                     f"{r['wall_s'] / r['n'] * 1e9:.0f} | {r['peak_mb']:.0f} MB | "
                     f"{r['inputs_mb']:.0f} MB | {r['n'] * r['n'] * 4 / 2**30:,.1f} GiB |")
    return "\n".join(lines)


def write(rows: list[dict]) -> None:
    import torch
    load = os.getloadavg()[0]
    body = (f"{HEADING}\n\n"
            f"Measured {datetime.date.today().isoformat()} on {os.cpu_count()}-core "
            f"{platform.machine()} CPU, no GPU, torch {torch.__version__}, "
            f"{rows[0]['threads']} torch threads, by `python benchmarks/dynamic.py`.\n"
            "One `select(spec, q, k)` call (q, k `[1, 1, n, 64]` float32, last = 64) in a fresh "
            "process after a short warm-up; peak = resident high-water mark above the RSS once "
            "the inputs exist. Terms: " + "; ".join(f"{k} = `{v}`" for k, v in TERMS.items())
            + ".\n"
            f"Load average when measured: {load:.1f} on {os.cpu_count()} cores.\n\n"
            + table(rows) + "\n\n"
            "vertical-slash and norm grow linearly in n (time per position roughly flat, memory "
            "a small multiple of the inputs, never near n x n); blocks scores (n / 64)^2 / 2 "
            "block pairs, so its time grows quadratically in n / 64 by design, in tiles of "
            "bounded memory.\n")
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if HEADING in old:
        head, rest = old.split(HEADING, 1)
        nxt = rest.find("\n## ")
        new = head + body + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(new)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--terms", nargs="+", default=list(TERMS), choices=list(TERMS))
    ap.add_argument("--blocks-max-n", type=int, default=131072,
                    help="largest n for blocks (its scores grow as (n / b)^2; 1M takes minutes)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--prefill", action="store_true",
                    help="end-to-end prefill: tables vs substitution vs SDPA (prints only)")
    ap.add_argument("--old-max-n", type=int, default=16384,
                    help="largest n for the substitution path in --prefill")
    args = ap.parse_args(argv)
    if args.prefill:
        sizes = args.sizes if args.sizes != list(SIZES) else [4096, 16384]
        rows = prefill(sizes, list(PREFILL), args.old_max_n)
        print(prefill_table(rows))
        return
    rows = []
    for name in args.terms:
        for n in args.sizes:
            if name == "blocks" and n > args.blocks_max_n:
                continue
            row = measure(name, n)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(table(rows))
    if not args.no_write:
        write(rows)


if __name__ == "__main__":
    main()
