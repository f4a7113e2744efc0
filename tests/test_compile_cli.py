"""psparse compile / check / dump --stage plan|kernel|module, and the compiled-module cache.

Reference masks here are written with plain loops from LANGUAGE.md's definitions; the
reference attention is a dense float64 softmax written in this file."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from patterndsl import cli, modcache
from patterndsl.codegen import module as codegen_module

ROOT = Path(__file__).resolve().parents[1]
SPEC = "causal & (sink(2) | local(5))"


def allowed(q: int, k: int) -> bool:
    """SPEC by its definition: causal, and a sink key or within 5 positions."""
    return k <= q and (k < 2 or abs(q - k) <= 5)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PSPARSE_CACHE_DIR", str(root))
    monkeypatch.delenv("PSPARSE_DUMP_DIR", raising=False)
    return root / "modules"


def main(capsys, *args):
    try:
        rc = cli.main(list(args))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def env_for(cache_root: Path) -> dict:
    env = dict(os.environ)
    env.pop("PSPARSE_TRACEBACK", None)
    env["PSPARSE_CACHE_DIR"] = str(cache_root)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def renders(monkeypatch):
    """Counts calls of the module renderer (the cache must not call it on a hit)."""
    calls = []
    real = codegen_module.render_module

    def counting(spec, **options):
        calls.append(spec)
        return real(spec, **options)
    monkeypatch.setattr(codegen_module, "render_module", counting)
    return calls


# ---------------------------------------------------------------------------
# the self-contained module
# ---------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import importlib.util, os, sys
    sys.modules["patterndsl"] = None          # `import patterndsl` raises ImportError
    # the checkout itself leaves the path (not what lies below it: CI's venv may live there)
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != {root!r}]
    try:
        import patterndsl
        raise SystemExit("patterndsl was importable")
    except ImportError:
        pass
    import torch
    spec = importlib.util.spec_from_file_location("compiled_spec", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 2, 40, 16, generator=g, dtype=torch.float64).float().requires_grad_(True)
    k = torch.randn(1, 1, 40, 16, generator=g, dtype=torch.float64).float().requires_grad_(True)
    v = torch.randn(1, 1, 40, 16, generator=g, dtype=torch.float64).float().requires_grad_(True)
    dout = torch.randn(1, 2, 40, 16, generator=g, dtype=torch.float64).float()
    out, lse = mod.attention(q, k, v, return_lse=True)
    out.backward(dout)
    torch.save(dict(spec=mod.SPEC, mask=mod.mask(40), q=q.detach(), k=k.detach(),
                    v=v.detach(), dout=dout, out=out.detach(), lse=lse.detach(), dq=q.grad,
                    dk=k.grad, dv=v.grad, modules=sorted(m for m, x in sys.modules.items()
                                                         if m.startswith("patterndsl")
                                                         and x is not None)),
               sys.argv[2])
""")


def dense_reference(q, k, v, dout, mask):
    """Float64 softmax attention written out directly (GQA by repeating KV heads)."""
    q, k, v, dout = (t.double().detach() for t in (q, k, v, dout))
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
    g = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ kr.transpose(-1, -2)) / q.shape[-1] ** 0.5
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1)
    out = p @ vr
    lse = torch.logsumexp(s, -1)
    (out * dout).sum().backward()
    return dict(out=out.detach(), lse=lse.detach(), dq=q.grad, dk=k.grad, dv=v.grad)


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1.0))


def test_module_runs_where_patterndsl_cannot_be_imported(tmp_path, capsys):
    path = tmp_path / "attn_module.py"
    rc, out, err = main(capsys, "compile", SPEC, "-o", str(path))
    assert rc == 0, err
    assert out == f"wrote {path} ({path.stat().st_size:,} bytes)\n"
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT)))
    result = tmp_path / "result.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run([sys.executable, "-I", str(worker), str(path), str(result)],
                       capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    got = torch.load(result)
    assert got["modules"] == []
    assert got["spec"] == "causal & (local(5) | sink(2))"
    expected = torch.tensor([[allowed(q, k) for k in range(40)] for q in range(40)])
    assert torch.equal(got["mask"], expected)
    ref = dense_reference(got["q"], got["k"], got["v"], got["dout"], expected)
    for name in ("out", "lse", "dq", "dk", "dv"):
        assert rel(got[name], ref[name]) < 1e-5, name


# ---------------------------------------------------------------------------
# determinism and the cache
# ---------------------------------------------------------------------------

def test_same_spec_same_bytes_in_processes_at_once(tmp_path, cache):
    """Two processes compile the same spec at the same moment into one cache: both succeed
    with identical, valid modules, one cache entry results, and a render in this process
    without the cache gives the same bytes."""
    env = env_for(cache.parent)
    outs = [tmp_path / f"m{i}.py" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "patterndsl", "compile", SPEC, "-o", str(o)],
                              env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for o in outs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a, b = (o.read_bytes() for o in outs)
    assert a == b
    compile(a, "m0.py", "exec")
    assert modcache.module_text(SPEC, use_cache=False).encode() == a
    entries = list(cache.glob("*.py"))
    assert len(entries) == 1
    assert modcache.read_entry(entries[0]).encode() == a


def test_a_writer_holding_the_lock_is_waited_for(tmp_path, cache):
    """A process that finds no entry waits for the lock, then takes the entry the lock's
    holder wrote instead of rendering its own."""
    # The key as a fresh process computes it (this process may have hashed the compiler's
    # sources before they were last edited).
    modcache.compiler_digest.cache_clear()
    path = modcache.entry_path(SPEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = "# written by the lock holder\n" + modcache.module_text(SPEC, use_cache=False)
    out = tmp_path / "m.py"
    with modcache.file_lock(path.with_suffix(".lock")):
        p = subprocess.Popen([sys.executable, "-m", "patterndsl", "compile", SPEC, "-o", str(out)],
                             env=env_for(cache.parent), cwd=str(ROOT),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        assert p.poll() is None, "the compile did not wait for the lock"
        assert not out.exists()
        modcache.write_atomic(path, modcache._encode(marker))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert out.read_text() == marker


@pytest.mark.parametrize("flock", [True, False])
def test_file_lock_excludes_threads_and_processes(tmp_path, monkeypatch, flock):
    """The lock keeps a second holder out until the first leaves, with flock and with the
    exclusive-create fallback used where there is no fcntl."""
    import threading
    if not flock:
        monkeypatch.setitem(sys.modules, "fcntl", None)
    path = tmp_path / "x.lock"
    events = []

    def second():
        with modcache.file_lock(path):
            events.append("second in")

    with modcache.file_lock(path):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        events.append("first out")
    t.join(10)
    assert events == ["first out", "second in"]


def test_fallback_lock_left_by_a_dead_process_is_taken(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)
    path = tmp_path / "x.lock"
    stale = tmp_path / "x.lock.excl"
    stale.write_text("")
    old = time.time() - 10 * modcache._STALE_LOCK_S
    os.utime(stale, (old, old))
    t0 = time.monotonic()
    with modcache.file_lock(path):
        assert stale.exists()
    assert not stale.exists() and time.monotonic() - t0 < 5


def test_cache_hit_does_not_render(tmp_path, capsys, renders):
    first = modcache.module_text(SPEC)
    assert len(renders) == 1
    assert modcache.module_text(SPEC) == first
    # The same canonical spec written differently is the same entry.
    assert modcache.module_text("(local(5) | sink(2)) & causal") == first
    assert len(renders) == 1
    for i in range(2):
        rc, _, err = main(capsys, "compile", SPEC, "-o", str(tmp_path / f"m{i}.py"))
        assert rc == 0, err
    assert len(renders) == 1
    assert (tmp_path / "m1.py").read_text() == first
    # Other options are another entry; --no-cache renders without reading it.
    modcache.module_text(SPEC, head_dim=64, dtype="bf16")
    assert len(renders) == 2
    rc, _, err = main(capsys, "compile", SPEC, "-o", str(tmp_path / "m2.py"), "--no-cache")
    assert rc == 0 and len(renders) == 3


def test_key_covers_spec_options_compiler_and_triton(monkeypatch):
    base = modcache.cache_key("causal", {})
    assert modcache.cache_key("causal", {}) == base
    assert modcache.cache_key("causal & local(2)", {}) != base
    assert modcache.cache_key("causal", {"head_dim": 64}) != base
    assert (modcache.normalize_options(dtype="bf16")
            == modcache.normalize_options(dtype=torch.bfloat16) == {"dtype": "bfloat16"})
    monkeypatch.setattr(modcache, "compiler_digest", lambda: "another compiler")
    assert modcache.cache_key("causal", {}) != base
    monkeypatch.undo()
    monkeypatch.setattr(modcache, "triton_version", lambda: "0.0")
    assert modcache.cache_key("causal", {}) != base
    monkeypatch.undo()
    monkeypatch.setattr(modcache, "__version__", "9.9.9")
    assert modcache.cache_key("causal", {}) != base


def test_compiler_digest_reads_templates_grammar_and_sources():
    # Computed afresh (not the per-process value) to see which files it reads.
    modcache.compiler_digest.cache_clear()
    seen = []
    real = Path.read_bytes

    def spy(self):
        seen.append(self.as_posix())
        return real(self)
    try:
        Path.read_bytes = spy
        modcache.compiler_digest()
    finally:
        Path.read_bytes = real
    assert any(p.endswith("templates/forward.py.jinja") for p in seen)
    assert any(p.endswith("templates/module.py.jinja") for p in seen)
    assert any(p.endswith(".lark") for p in seen)
    assert any(p.endswith("patterndsl/codegen/emit.py") for p in seen)
    assert any(p.endswith("patterndsl/plan/builder.py") for p in seen)


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "empty", "hostile"])
def test_damaged_entry_is_rebuilt_never_trusted(damage, renders):
    good = modcache.module_text(SPEC)
    path = modcache.entry_path(SPEC)
    data = path.read_bytes()
    if damage == "truncate":
        bad = data[: len(data) // 2]
    elif damage == "flip":
        i = len(data) - 100
        bad = data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1:]
    elif damage == "header":
        bad = b"# something else\n" + data.partition(b"\n")[2]
    elif damage == "empty":
        bad = b""
    else:  # right length, wrong digest: code that must never be handed out or run
        head, _, body = data.partition(b"\n")
        evil = b"raise SystemExit('executed a corrupted cache entry')\n"
        bad = head + b"\n" + evil + body[len(evil):]
    path.write_bytes(bad)
    assert modcache.module_text(SPEC) == good
    assert len(renders) == 2
    assert path.read_bytes() == data  # rebuilt in place


def test_unwritable_cache_still_compiles(tmp_path, monkeypatch, renders):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("PSPARSE_CACHE_DIR", str(blocker))
    assert modcache.module_text(SPEC) == modcache.module_text(SPEC, use_cache=False)


def test_dump_dir_keeps_every_compiled_module(tmp_path, monkeypatch):
    dump = tmp_path / "dumps"
    monkeypatch.setenv("PSPARSE_DUMP_DIR", str(dump))
    a = modcache.module_text(SPEC)
    b = modcache.module_text("causal & local(3)")
    texts = sorted(p.read_text() for p in dump.glob("psparse_module_*.py"))
    assert texts == sorted([a, b])


# ---------------------------------------------------------------------------
# psparse compile: output file handling
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("local(", "line 1, column"),
    ("vertical(topk=4) | causal", "not supported yet"),
])
def test_compile_error_leaves_output_untouched(tmp_path, capsys, spec, message):
    out = tmp_path / "m.py"
    out.write_text("old contents\n")
    rc, stdout, err = main(capsys, "compile", spec, "-o", str(out))
    assert rc == 1
    assert err.startswith("psparse: error: ") and message in err and "Traceback" not in err
    assert out.read_text() == "old contents\n"
    assert stdout == ""


def test_failed_write_leaves_output_untouched(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.py"
    out.write_text("old contents\n")

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(modcache.os, "fsync", full)
    rc, stdout, err = main(capsys, "compile", SPEC, "-o", str(out))
    assert rc == 1
    assert err == f"psparse: error: cannot write {out}: No space left on device\n"
    assert out.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "m.py"]  # no temp file left


@pytest.mark.parametrize("where", ["missing_folder", "folder", "file_as_folder"])
def test_unwritable_output_path(tmp_path, capsys, where):
    (tmp_path / "plain").write_text("x")
    target = {"missing_folder": tmp_path / "nope" / "m.py", "folder": tmp_path,
              "file_as_folder": tmp_path / "plain" / "m.py"}[where]
    rc, _, err = main(capsys, "compile", SPEC, "-o", str(target))
    assert rc == 1 and err.startswith("psparse: error: ") and str(target) in err
    assert (tmp_path / "plain").read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_folder(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "m.py"
    out.write_text("old\n")
    folder.chmod(0o500)
    try:
        rc, _, err = main(capsys, "compile", SPEC, "-o", str(out))
    finally:
        folder.chmod(0o700)
    assert rc == 1 and "cannot write" in err
    assert out.read_text() == "old\n"


def test_compile_keeps_the_mode_of_an_existing_file(tmp_path, capsys):
    out = tmp_path / "m.py"
    out.write_text("old\n")
    out.chmod(0o640)
    rc, _, err = main(capsys, "compile", SPEC, "-o", str(out))
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o640
    assert out.read_text() == modcache.module_text(SPEC)


def test_compile_to_stdout_and_dump_module_agree(tmp_path, capsys):
    rc, a, _ = main(capsys, "compile", SPEC, "-o", "-")
    rc2, b, _ = main(capsys, "dump", SPEC, "--stage", "module")
    assert rc == rc2 == 0
    assert a == b == modcache.module_text(SPEC)


@pytest.mark.parametrize("args", [["--head-dim", "8"], ["--head-dim", "512"],
                                  ["--block-m", "48"], ["--block-n", "8"], ["--dtype", "int8"]])
def test_compile_option_errors_are_usage_errors(tmp_path, capsys, args):
    rc, _, err = main(capsys, "compile", SPEC, "-o", str(tmp_path / "m.py"), *args)
    assert rc == 2 and "psparse compile: error:" in err
    assert not (tmp_path / "m.py").exists()


# ---------------------------------------------------------------------------
# psparse dump --stage plan | kernel
# ---------------------------------------------------------------------------

def brute_tiles(n: int, b: int) -> list[str]:
    """The plain b x b tiling of SPEC drawn as dump draws it: # full, . empty, + partial."""
    rows = []
    for tq in range(-(-n // b)):
        line = ""
        for tk in range(-(-n // b)):
            cells = [allowed(q, k) for q in range(tq * b, min(n, tq * b + b))
                     for k in range(tk * b, min(n, tk * b + b))]
            line += "#" if all(cells) else "." if not any(cells) else "+"
        rows.append("  " + line)
    return rows


def test_dump_plan(capsys):
    n, b = 64, 16
    rc, out, err = main(capsys, "dump", SPEC, "--stage", "plan", "-n", str(n),
                        "--block-m", str(b), "--block-n", str(b), "--dtype", "fp32",
                        "--head-dim", "64")
    assert rc == 0, err
    lines = out.splitlines()
    allowed_pairs = sum(allowed(q, k) for q in range(n) for k in range(n))
    assert lines[0] == "pattern     causal & (local(5) | sink(2))"
    assert lines[1] == f"geometry    n = {n}, query rows 0-{n - 1} (nq = {n})"
    assert lines[2] == f"tiles       {b} x {b} plain tiling, chosen for head_dim 64, float32"
    assert lines[3].startswith(f"pairs       {allowed_pairs:,} allowed of {n * n:,} ")
    computed = int(lines[3].split("; ")[1].split()[0].replace(",", ""))
    ratio = float(lines[4].split()[2])
    assert ratio == pytest.approx(computed / allowed_pairs, abs=1e-3)
    assert computed >= allowed_pairs
    num_parts = int(lines[5].split()[1])
    assert num_parts >= 1 and sum(line.startswith("part ") for line in lines) == num_parts
    part_pairs = [line.split()[1] for line in lines if line.startswith("  pairs ")]
    assert sum(int(p.replace(",", "")) for p in part_pairs) == allowed_pairs
    grid_at = next(i for i, line in enumerate(lines) if line.startswith("layout of the plain"))
    assert lines[grid_at] == (f"layout of the plain {b} x {b} tiling (4 x 4 tiles; "
                              "one character per one tile):")
    assert lines[grid_at + 1:grid_at + 5] == brute_tiles(n, b)


def test_dump_plan_draws_long_sequences_small(capsys):
    rc, out, err = main(capsys, "dump", "causal", "--stage", "plan", "-n", "65536",
                        "--block-m", "64", "--block-n", "64")
    assert rc == 0, err
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("layout of the plain"))
    assert "one character per 32 x 16 tiles" in lines[at]
    grid = lines[at + 1:at + 33]
    assert all(len(row) == 2 + 64 for row in grid)
    # causal in 32 x 16 groups of tiles: blocks wholly below the diagonal are full
    assert grid[31] == "  " + "#" * 62 + "++"
    assert grid[0] == "  ++" + "." * 62


def test_dump_kernel(capsys):
    rc, out, err = main(capsys, "dump", SPEC, "--stage", "kernel", "-n", "256")
    assert rc == 0, err
    assert out.startswith("# psparse dump --stage kernel: part 0 of ")
    compile(out, "kernel.py", "exec")
    for name in ("_fwd(", "_bwd(", "_bwd_dkv("):
        assert name in out
    assert "@triton.jit" in out


@pytest.mark.parametrize("args, message", [
    (["vertical(topk=3)", "--stage", "plan"], "not supported yet"),
    (["document & causal", "--stage", "plan"], "--doc-ids"),
    (["causal", "--stage", "kernel", "--part", "5"], "--part 5: the plan has 1 part"),
    (["heads 0:2 = causal\nheads 2:4 = local(1)", "--stage", "plan"], "--head"),
    (["causal", "--stage", "plan", "-n", "8", "--doc-ids", "0,0,1"], "-n gives 8"),
])
def test_dump_stage_errors(capsys, args, message):
    rc, out, err = main(capsys, "dump", *args)
    assert rc == 1 and err.startswith("psparse: error: ") and message in err, err


def test_dump_plan_with_documents_and_heads(capsys):
    rc, out, err = main(capsys, "dump", "heads 0:2 = causal\nheads 2:4 = document",
                        "--stage", "plan", "--head", "3", "--doc-ids", "0,0,0,1,1,1,1,2")
    assert rc == 0, err
    assert out.splitlines()[0] == "pattern     document"
    # three documents of 3, 4 and 1 positions
    assert out.splitlines()[3].startswith(f"pairs       {9 + 16 + 1} allowed of 64 ")


# ---------------------------------------------------------------------------
# psparse check
# ---------------------------------------------------------------------------

def table(out: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("out", "lse", "dq", "dk", "dv"):
            rows[parts[0]] = (float(parts[1]), float(parts[2]))
    return rows


@pytest.mark.parametrize("args", [
    [SPEC, "-n", "48", "--heads", "2", "--kv-heads", "1", "--backend", "interpret"],
    ["document & causal", "-n", "40", "--backend", "torch", "--batch", "2"],
    ["heads 0:2 = causal & local(3)\nheads 2:4 = global([1])", "-n", "24", "--nq", "20",
     "--backend", "torch"],
])
def test_check_passes(capsys, args):
    rc, out, err = main(capsys, "check", *args)
    assert rc == 0, err
    rows = table(out)
    assert set(rows) == {"out", "lse", "dq", "dk", "dv"}
    assert all(0 < r <= 1e-5 for _, r in rows.values()), rows
    assert "work ratio" in out and out.endswith("ok: every relative error is within 1e-05\n")


def test_check_reports_the_plans_work_ratio(capsys):
    rc, out, err = main(capsys, "check", "causal", "-n", "64", "--backend", "torch",
                        "--block-m", "16", "--block-n", "16")
    assert rc == 0, err
    # causal, 16 x 16 tiles at n = 64: 10 tiles of 256 pairs for 64 * 65 / 2 allowed pairs
    line = next(line for line in out.splitlines() if line.startswith("plan "))
    assert line == (f"plan    work ratio {10 * 256 / 2080:.3f} (2,560 pairs computed for "
                    "2,080 allowed, 1 part)")


def _perturb(monkeypatch, module, which, index, amount):
    real = getattr(module, which)

    def wrong(*a, **kw):
        res = list(real(*a, **kw))
        res[index] = res[index] + amount
        return tuple(res)
    monkeypatch.setattr(module, which, wrong)


def test_check_fails_on_a_wrong_interpreted_kernel(capsys, monkeypatch):
    from patterndsl.codegen import triton_backend
    _perturb(monkeypatch, triton_backend, "forward_part", 0, 1e-3)
    rc, out, err = main(capsys, "check", SPEC, "-n", "32", "--backend", "interpret")
    assert rc == 1
    assert err.startswith("psparse: error: the compiled kernels (interpret) disagree with the "
                          "dense reference: relative error above 1e-05 in out (")
    assert table(out)["out"][1] > 1e-4


def test_check_fails_on_a_wrong_gradient(capsys, monkeypatch):
    from patterndsl.backends import torch_backend
    _perturb(monkeypatch, torch_backend, "backward_part", 1, 1e-2)
    rc, out, err = main(capsys, "check", SPEC, "-n", "32", "--backend", "torch")
    assert rc == 1
    assert "in dk (" in err and "out (" not in err and "dq (" not in err
    rows = table(out)
    assert rows["out"][1] < 1e-5 and rows["dk"][1] > 1e-3


@pytest.mark.parametrize("args, rc, message", [
    (["vertical(topk=2)"], 1, "not supported yet"),
    (["causal", "--backend", "triton"], 1, "needs a CUDA GPU"),
    (["causal", "--heads", "3", "--kv-heads", "2"], 2, "not a multiple"),
    (["causal", "-n", "4", "--nq", "5"], 2, "more query rows"),
])
def test_check_refuses(capsys, args, rc, message):
    if "triton" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    got, out, err = main(capsys, "check", *args)
    assert got == rc and message in err and "Traceback" not in err


def test_compile_options_are_compiled_into_the_module(tmp_path, capsys):
    import importlib.util
    path = tmp_path / "fixed.py"
    rc, _, err = main(capsys, "compile", "causal & local(40)", "-o", str(path), "--head-dim", "32",
                      "--dtype", "fp32", "--block-m", "16", "--block-n", "32")
    assert rc == 0, err
    loaded = importlib.util.spec_from_file_location("fixed_module", str(path))
    mod = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(mod)
    assert (mod.HEAD_DIM, mod.DTYPE, mod.BLOCK_M, mod.BLOCK_N) == (32, torch.float32, 16, 32)
    p = mod.plan(100)
    assert (p["block_m"], p["block_n"]) == (16, 32)
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="compiled for head_dim 32, not 16"):
        mod.attention(q, q, q)
    q = torch.randn(1, 1, 8, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match="compiled for torch.float32"):
        mod.attention(q, q, q)
    # without options nothing is fixed, and the text differs only in those constants
    free = modcache.module_text("causal & local(40)")
    assert "HEAD_DIM = None" in free and "BLOCK_M = None" in free
    assert free != path.read_text()
