"""The psparse command: exit codes, messages, spec sources, and what show/dump print.

Most cases call ``cli.main`` in this process (fast); the ones about the real process (the
entry point, stdin, encodings, a closed pipe, never a traceback) run ``python -m patterndsl``.
Expected masks are written out by hand or computed with plain loops from LANGUAGE.md."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import patterndsl
from patterndsl import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*args, input=None, env=None, cwd=ROOT):
    full_env = dict(os.environ)
    full_env.pop("PSPARSE_TRACEBACK", None)
    # Run this checkout's package even from another directory, installed or not.
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "patterndsl", *args], input=input,
                          capture_output=True, text=True, cwd=cwd, env=full_env, timeout=120)


def main(capsys, *args):
    """(exit status, stdout, stderr) of cli.main in this process; usage errors included."""
    try:
        rc = cli.main(list(args))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def grid_rows(out: str) -> dict[int, str]:
    """Query position -> its row of marks, read back from a drawn grid."""
    rows = {}
    for line in out.splitlines():
        head = line.split()
        if head and head[0].isdigit() and line.rstrip()[-1:] in "■·#.█▒+":
            marks = [c for c in line.split("  ")[-1].split(" ") if c]
            rows[int(head[0])] = "".join(marks)
    return rows


# ---------------------------------------------------------------------------
# the process: entry point, version, help, usage errors
# ---------------------------------------------------------------------------

def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"psparse {patterndsl.__version__}"
    r = run("--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout and "psparse show" in r.stdout and "psparse dump" in r.stdout


def test_import_is_light():
    # `psparse --version` and `dump` must not pay for torch.
    code = "import sys, patterndsl.cli; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("args, message", [
    ((), "required"),
    (("frobnicate",), "invalid choice"),
    (("show", "local(2)"), "give the sequence length"),
    (("show", "local(2)", "-n", "0"), "n must be >= 1"),
    (("show", "local(2)", "-n", "x"), "n must be an integer"),
    (("show", "local(2)", "-n", "3", "--tokens", "a b"), "--tokens gives 2 positions but -n gives 3"),
    (("show", "local(2)", "-n", "3", "--nq", "4"), "--nq 4 is more query rows"),
    (("show", "local(2)", "-n", "3", "--doc-ids", "0,x"), "document ids are integers"),
    (("show", "local(2)", "-n", "3", "--bogus"), "unrecognized arguments"),
    (("dump", "local(2)", "--stage", "nope"), "invalid choice"),
    (("show", "local(2)", "-n", "100000", "--block", "1"), "use a larger --block"),
    (("show", "local(2)", "-n", "1000000"), "draw fewer query rows with --nq"),
])
def test_usage_errors_exit_2(capsys, args, message):
    rc, out, err = main(capsys, *args)
    assert rc == 2
    assert message in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------
# spec errors: exit 1, the message points at the line and column
# ---------------------------------------------------------------------------

def test_bad_spec_names_line_column_and_caret(capsys):
    rc, out, err = main(capsys, "show", "causal & locl(3)", "-n", "4")
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("psparse: error: line 1, column 10: ")
    assert "locl" in lines[0]
    src = next(i for i, ln in enumerate(lines) if ln.strip() == "causal & locl(3)")
    caret_line = lines[src + 1]
    # The caret sits under the 'l' of 'locl'.
    assert caret_line.index("^") == lines[src].index("locl")
    assert "did you mean 'local'" in err


def test_error_in_a_file_names_the_file_and_line(tmp_path, capsys):
    spec = tmp_path / "bad.psp"
    spec.write_text("# a comment\nlet w = local(4)\npattern = w | stride(0)\n")
    rc, out, err = main(capsys, "dump", str(spec), "--stage", "canonical")
    assert rc == 1
    assert err.startswith(f"psparse: error: {spec}: line 3, column ")
    assert "stride" in err and ">= 1" in err
    assert "pattern = w | stride(0)" in err and "^" in err


def test_missing_psp_file_is_a_clear_error(capsys, tmp_path):
    rc, out, err = main(capsys, "show", str(tmp_path / "nothere.psp"), "-n", "3")
    assert rc == 1
    assert err.strip() == f"psparse: error: no such spec file: {tmp_path / 'nothere.psp'}"


def test_path_like_spec_that_is_not_a_file_gets_a_note(capsys, tmp_path):
    missing = str(tmp_path / "myspec.txt")
    rc, out, err = main(capsys, "dump", missing)
    assert rc == 1
    assert err.rstrip().endswith(f"(read as spec text: there is no file named {missing!r})")
    rc, out, err = main(capsys, "dump", "local(2")
    assert rc == 1 and "no file named" not in err


def test_non_utf8_file(tmp_path, capsys):
    spec = tmp_path / "latin1.psp"
    spec.write_bytes(b"local(2) # caf\xe9\n")
    rc, out, err = main(capsys, "dump", str(spec))
    assert rc == 1 and "not UTF-8" in err


@pytest.mark.parametrize("args, message", [
    (("show", "examples/mixed_heads.psp", "-n", "8"), "pick a query head with --head"),
    (("show", "examples/mixed_heads.psp", "-n", "8", "--head", "1"), "pick a layer with --layer"),
    (("show", "examples/mixed_heads.psp", "-n", "8", "--head", "5", "--layer", "3"),
     "dynamic terms"),
    (("show", "heads 0:2 = causal", "-n", "8", "--head", "3"), "no line of the spec covers head 3"),
    (("show", "causal & document", "-n", "8"), "--doc-ids"),
    (("show", "kv = sink(4) + recent(8)", "-n", "8"), "no pattern"),
])
def test_spec_cannot_be_drawn_as_asked(capsys, args, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, err = main(capsys, *args)
    assert rc == 1, err
    assert err.startswith("psparse: error: ") and message in err


def test_internal_error_exit_70_without_traceback(capsys, monkeypatch):
    def boom(source):
        raise RuntimeError("something\nunexpected")
    monkeypatch.setitem(cli.DUMP_STAGES, "canonical", ("broken", boom))
    rc, out, err = main(capsys, "dump", "local(2)", "--stage", "canonical")
    assert rc == 70
    assert err.startswith("psparse: internal error: RuntimeError: something unexpected\n")
    assert "please report" in err.lower() and "Traceback" not in err


GARBAGE = ["", "(", ")", "local(", "local(2,", "local(-1)", "[0:3]", "causal &", "& causal",
           "local(2) local(3)", "heads = causal", "layers 1:0 = causal", "let causal = all",
           "kv = heavy(2) + auto", "budget = pyramid(beta=0)", "random(2, seed=-1)", "\x00",
           "local(1e3)", "slash([1:])", "every(4, 4)", "é", "local(2)\n)", "(" * 5000]


@pytest.mark.parametrize("text", GARBAGE)
def test_malformed_specs_never_crash(capsys, text):
    for stage in cli.DUMP_STAGES:
        rc, out, err = main(capsys, "dump", text, "--stage", stage)
        assert rc in (0, 1), (stage, err)
        assert "Traceback" not in err and "internal error" not in err
        if rc == 1:
            assert err.startswith("psparse: error: ")


ALPHABET = "local(2)|&-[]:,=#;\n causlbk0123456789_.-heads layers let kv budget pattern é\x00"


def test_random_text_never_crashes(capsys):
    from hypothesis import HealthCheck, given, settings, strategies as st

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(alphabet=ALPHABET, max_size=60) | st.text(max_size=30))
    def check(text):
        for stage in cli.DUMP_STAGES:
            # "--" so that a text starting with "-" is the SPEC, not an option.
            rc, out, err = main(capsys, "dump", "--stage", stage, "--", text)
            assert rc in (0, 1), (text, stage, err)
            assert "Traceback" not in err and "internal error" not in err

    check()


def test_no_traceback_in_a_real_process():
    r = run("show", "local(2) |", "-n", "4")
    assert r.returncode == 1
    assert r.stderr.startswith("psparse: error: line 1, column ")
    assert "Traceback" not in r.stderr and r.stdout == ""


def stdin_main(capsys, monkeypatch, data: bytes, *args):
    """cli.main reading ``data`` as its standard input (bytes, as a pipe delivers them)."""
    import io
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return main(capsys, *args)


PIECES = [b"local(", b"2", b")", b"|", b"&", b"-", b"[", b"]", b":", b",", b"=", b"#", b";",
          b"\n", b" ", b"causal", b"heads", b"layers", b"let", b"kv", b"budget", b"pattern",
          b"random(", b"blockwise(", b"seed=", b"1_0", b"0.5", b"\xff", b"\xc3\xa9", b"\x00",
          b"\r", b"\t", b"sink(", b"topk=", b"vertical(", b"slash(", b"document", b"true",
          b"-1", b"(", b"9" * 30, b"\xef\xbb\xbf", b"\xe2\x80\xa8"]


def test_random_bytes_on_stdin_never_crash(capsys, monkeypatch):
    # `psparse dump -` fed a few hundred byte strings, random and spec-like, through every
    # front-end stage: exit 0 or 1, and an error is one psparse message, never a traceback.
    import random
    rng = random.Random(2026)
    stages = list(cli.DUMP_STAGES)
    for i in range(300):
        if i % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        else:
            data = b"".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 20)))
        stage = stages[i % len(stages)]
        rc, out, err = stdin_main(capsys, monkeypatch, data, "dump", "-", "--stage", stage)
        assert rc in (0, 1), (data, stage, err)
        assert "Traceback" not in err and "internal error" not in err, (data, err)
        assert (rc == 0) == (err == ""), (data, err)
        if rc == 1:
            assert err.startswith("psparse: error: ") and out == ""


def test_deep_nesting_and_a_megabyte_through_the_cli(capsys, monkeypatch, tmp_path):
    deep = ("(" * 10_000 + "causal" + ")" * 10_000).encode()
    rc, out, err = stdin_main(capsys, monkeypatch, deep, "dump", "-")
    assert rc == 1 and out == ""
    assert err.startswith("psparse: error: <stdin>: line 1, column 101: brackets nest too deeply")
    assert len(err) < 1000  # the quoted line is clipped around the caret

    garbage = ("causal " + "x" * 1_000_000).encode()
    rc, out, err = stdin_main(capsys, monkeypatch, garbage, "show", "-", "-n", "4")
    assert rc == 1 and out == "" and len(err) < 1000
    assert err.startswith("psparse: error: <stdin>: line 1, column 8: ")

    # A megabyte of one union, from a file: every term but the widest window is subsumed.
    terms = 1_000_000 // len("local(1) | ") + 1
    big = tmp_path / "big.psp"
    big.write_text(" | ".join(f"local({i % 7})" for i in range(terms)) + "\n")
    assert big.stat().st_size > 1_000_000
    rc, out, err = main(capsys, "dump", str(big))
    assert (rc, out, err) == (0, "local(6)\n", "")


# ---------------------------------------------------------------------------
# where the spec comes from
# ---------------------------------------------------------------------------

def test_spec_from_stdin_file_and_literal_agree(tmp_path):
    spec = "causal & local(1)\n"
    f = tmp_path / "w.psp"
    f.write_text(spec)
    a = run("show", "-", "-n", "4", input=spec)
    b = run("show", str(f), "-n", "4", cwd=tmp_path)
    c = run("show", spec.strip(), "-n", "4")
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + b.stderr + c.stderr
    assert a.stdout == b.stdout == c.stdout
    assert grid_rows(a.stdout) == {0: "■···", 1: "■■··", 2: "·■■·", 3: "··■■"}


def test_file_without_psp_suffix_is_read(tmp_path, capsys):
    f = tmp_path / "pattern.txt"
    f.write_text("local(2) | local(5)\n")
    rc, out, err = main(capsys, "dump", str(f))
    assert rc == 0 and out == "local(5)\n"


def test_stdin_errors_say_stdin(capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"causal\nlocal(x)\n")))
    rc, out, err = main(capsys, "dump", "-")
    assert rc == 1 and err.startswith("psparse: error: <stdin>: line 2, column ")


# ---------------------------------------------------------------------------
# dump
# ---------------------------------------------------------------------------

def test_dump_stages(capsys):
    spec = "local(2) | local(5) | (causal & local(3, 1))"
    rc, tree, _ = main(capsys, "dump", spec, "--stage", "tree")
    assert rc == 0
    assert tree.count("\n") >= 5 and "5" in tree and "3" in tree

    rc, ir_text, _ = main(capsys, "dump", spec, "--stage", "ir")
    assert rc == 0
    assert "Program(" in ir_text and "Local(left=2, right=2)" in ir_text
    assert "Local(left=3, right=1)" in ir_text and "span" not in ir_text
    # The dump is the repr of the IR, laid out over lines: it evaluates back to the IR.
    from patterndsl import ir
    assert eval(ir_text, vars(ir)) == patterndsl.parse(spec).ir

    rc, canon, _ = main(capsys, "dump", spec, "--stage", "canonical")
    assert rc == 0
    assert canon == patterndsl.parse(spec).canonical() + "\n"
    assert "local(2)" not in canon  # subsumed by local(5)
    # The canonical text means the same as the spec and is a fixed point.
    assert patterndsl.parse(canon) == patterndsl.parse(spec)


def test_dump_defaults_to_canonical(capsys):
    assert main(capsys, "dump", "all & local(3)")[1] == "local(3)\n"


def test_format_ir_breaks_long_nodes_only():
    from patterndsl import ir
    short = ir.Local(1, 1)
    assert cli.format_ir(short) == "Local(left=1, right=1)"
    long = ir.Union(tuple(ir.Local(i, i) for i in range(10)))
    text = cli.format_ir(long)
    assert text.splitlines()[0] == "Union("
    assert all(len(line) <= 88 for line in text.splitlines())
    assert eval(text, vars(ir)) == long


# ---------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------

def test_show_small_grid_by_hand(capsys):
    rc, out, err = main(capsys, "show", "local(1) | sink(1)", "-n", "5")
    assert rc == 0, err
    assert grid_rows(out) == {
        0: "■■···",
        1: "■■■··",
        2: "■■■■·",
        3: "■·■■■",
        4: "■··■■",
    }
    assert "n = 5" in out and "16 of 25 pairs allowed" in out


def test_show_nq_draws_the_last_rows(capsys):
    rc, out, _ = main(capsys, "show", "causal & local(1)", "-n", "6", "--nq", "2", "--ascii")
    assert rc == 0
    assert grid_rows(out) == {4: "...##.", 5: "....##"}
    assert "queries 4-5" in out


def test_show_heads_and_layers(capsys):
    spec = "pattern = local(0)\nheads 1 = causal\nlayers 2 heads 1 = all"
    rc, out, _ = main(capsys, "show", spec, "-n", "3", "--head", "1", "--layer", "0")
    assert grid_rows(out) == {0: "■··", 1: "■■·", 2: "■■■"}
    rc, out, _ = main(capsys, "show", spec, "-n", "3", "--head", "0", "--layer", "2")
    assert grid_rows(out) == {0: "■··", 1: "·■·", 2: "··■"}
    rc, out, err = main(capsys, "show", spec, "-n", "3", "--head", "1", "--layer", "2")
    assert rc == 0, err
    assert grid_rows(out) == {0: "■■■", 1: "■■■", 2: "■■■"}
    assert "layer 2, head 1" in out


def test_show_documents(capsys):
    rc, out, _ = main(capsys, "show", "causal & document", "--doc-ids", "0,0,1,1,1")
    assert rc == 0
    assert grid_rows(out) == {0: "■····", 1: "■■···", 2: "··■··", 3: "··■■·", 4: "··■■■"}
    assert "doc  0 0 1 1 1" in out


def test_show_blocks_for_long_sequences(capsys):
    # causal at n = 200 is drawn in blocks of 4 (50 columns): diagonal blocks are partial,
    # those below the diagonal full, those above empty.
    rc, out, err = main(capsys, "show", "causal", "-n", "200", "--ascii")
    assert rc == 0, err
    assert "each cell is 4 x 4 positions" in out
    rows = grid_rows(out)
    assert sorted(rows) == list(range(50))
    for i, row in rows.items():
        assert row == "#" * i + "+" + "." * (49 - i)
    assert "20,100 of 40,000 pairs allowed" in out


def test_show_explicit_block_with_ragged_end(capsys):
    rc, out, err = main(capsys, "show", "local(1)", "-n", "10", "--block", "4", "--ascii")
    assert rc == 0, err
    # Blocks 0-3, 4-7, 8-9: local(1) reaches one pair into each neighbouring block; the last block (2 x 2) is full.
    assert grid_rows(out) == {0: "++.", 1: "+++", 2: ".+#"}
    assert "the last key block holds 2" in out


def test_show_falls_back_to_ascii_when_the_terminal_cannot_encode():
    r = run("show", "local(1)", "-n", "3", env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0, r.stderr
    assert grid_rows(r.stdout) == {0: "##.", 1: "###", 2: ".##"}


def test_show_png(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    png = tmp_path / "m.png"
    rc, out, err = main(capsys, "show", "causal", "-n", "4", "--png", str(png))
    assert rc == 0, err
    assert f"wrote {png}" in out
    img = Image.open(png)
    assert img.format == "PNG" and img.width > 4 * 16

    big = tmp_path / "big.png"
    rc, out, err = main(capsys, "show", "causal", "-n", "100", "--png", str(big))
    assert rc == 0, err
    img = Image.open(big).convert("RGB")
    # One picture pixel group per position (100 <= 1024), scaled up: bottom-left is ink,
    # top-right is paper.
    from patterndsl.show import INK, PAPER
    assert img.getpixel((1, img.height - 2)) == INK
    assert img.getpixel((img.width - 2, 1)) == PAPER


def test_show_png_unwritable_path(tmp_path, capsys):
    pytest.importorskip("PIL")
    target = tmp_path / "no" / "such" / "folder" / "m.png"
    rc, out, err = main(capsys, "show", "causal", "-n", "4", "--png", str(target))
    assert rc == 1
    assert err.startswith(f"psparse: error: cannot write {target}: ")


def test_show_png_without_pillow(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now fails
    for n in ("4", "100"):
        png = tmp_path / f"m{n}.png"
        rc, out, err = main(capsys, "show", "causal", "-n", n, "--png", str(png))
        assert rc == 1
        assert err.strip() == "psparse: error: writing PNG needs Pillow: pip install 'psparse[image]'"
        assert not png.exists()


def test_closed_pipe_is_quiet():
    # `psparse show ... | head -1`: the reader leaves early; no traceback, no error.
    cmd = f"{sys.executable} -m patterndsl show causal -n 3000 | head -1"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.strip() == "causal"
    assert r.stderr == ""


# ---------------------------------------------------------------------------
# README: every `$ psparse ...` example prints what the README shows
# ---------------------------------------------------------------------------

def readme_sessions():
    import re
    import shlex
    text = (ROOT / "README.md").read_text()
    sessions = []
    for block in re.findall(r"```\n(\$ psparse .*?)```", text, flags=re.S):
        command, _, output = block.partition("\n")
        sessions.append((shlex.split(command[2:])[1:], output))
    return sessions


def test_readme_has_examples():
    assert len(readme_sessions()) >= 8


@pytest.mark.parametrize("argv, expected", readme_sessions(), ids=lambda v: " ".join(v)[:40]
                         if isinstance(v, list) else "")
def test_readme_example_output(argv, expected, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, err = main(capsys, *argv)
    assert out + err == expected
    assert rc == (1 if err else 0)
