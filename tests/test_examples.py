"""The files in examples/: every one parses, and each means what its comment says.

The two quick-brown-fox examples are checked against grids typed out by hand here, the way
a person would draw them on paper; the others against the papers' definitions, written
directly as index arithmetic (not through the reference)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import patterndsl
from patterndsl import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FOX = "The quick brown fox jumps over the lazy dog"

EXPECTED_FILES = {
    "longformer.psp", "bigbird.psp", "sparse_transformer_strided.psp",
    "sparse_transformer_fixed.psp", "streamingllm.psp", "sliding_window.psp", "dilated.psp",
    "vertical_slash_static.psp", "prefix_lm.psp", "packed_documents.psp", "mixed_heads.psp",
    "quick_brown_fox_local.psp", "quick_brown_fox_global.psp",
}


def load(name):
    return patterndsl.parse((EXAMPLES / name).read_text())


def qk(n):
    return torch.arange(n)[:, None], torch.arange(n)[None, :]


def test_every_example_is_there():
    assert EXPECTED_FILES <= {p.name for p in EXAMPLES.glob("*.psp")}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.psp")), ids=lambda p: p.name)
def test_example_parses_and_round_trips(path):
    text = path.read_text()
    assert text.lstrip().startswith("#"), "every example explains itself in a comment"
    spec = patterndsl.parse(text)
    again = patterndsl.parse(spec.canonical())
    assert again == spec
    assert again.canonical() == spec.canonical()


# ---------------------------------------------------------------------------
# The nine-token sentence, drawn by hand
# ---------------------------------------------------------------------------

FOX_HEADER = """\
         T q b f j o t l d
         h u r o u v h a o
         e i o x m e e z g
           c w   p r   y
           k n   s
    q\\k  0 1 2 3 4 5 6 7 8
"""

# local(2): each word sees the two words on either side of it.
FOX_LOCAL = FOX_HEADER + """\
0 The    ■ ■ ■ · · · · · ·
1 quick  ■ ■ ■ ■ · · · · ·
2 brown  ■ ■ ■ ■ ■ · · · ·
3 fox    · ■ ■ ■ ■ ■ · · ·
4 jumps  · · ■ ■ ■ ■ ■ · ·
5 over   · · · ■ ■ ■ ■ ■ ·
6 the    · · · · ■ ■ ■ ■ ■
7 lazy   · · · · · ■ ■ ■ ■
8 dog    · · · · · · ■ ■ ■
"""

# local(2) | global([0]): the same band, plus "The" seeing and seen by every word.
FOX_GLOBAL = FOX_HEADER + """\
0 The    ■ ■ ■ ■ ■ ■ ■ ■ ■
1 quick  ■ ■ ■ ■ · · · · ·
2 brown  ■ ■ ■ ■ ■ · · · ·
3 fox    ■ ■ ■ ■ ■ ■ · · ·
4 jumps  ■ · ■ ■ ■ ■ ■ · ·
5 over   ■ · · ■ ■ ■ ■ ■ ·
6 the    ■ · · · ■ ■ ■ ■ ■
7 lazy   ■ · · · · ■ ■ ■ ■
8 dog    ■ · · · · · ■ ■ ■
"""


@pytest.mark.parametrize("name, grid, allowed", [
    ("quick_brown_fox_local.psp", FOX_LOCAL, 39),
    ("quick_brown_fox_global.psp", FOX_GLOBAL, 51),
])
def test_quick_brown_fox_prints_the_hand_drawn_grid(name, grid, allowed, capsys):
    rc = cli.main(["show", str(EXAMPLES / name), "--tokens", FOX])
    out, err = capsys.readouterr()
    assert rc == 0, err
    title, sizes, blank, *rest = out.split("\n")
    assert title == load(name).canonical()
    assert sizes == "n = 9" and blank == ""
    drawn = "\n".join(rest[: len(grid.splitlines())]) + "\n"
    assert drawn == grid
    assert f"{allowed} of 81 pairs allowed" in out


# ---------------------------------------------------------------------------
# The other examples against their definitions
# ---------------------------------------------------------------------------

def test_sliding_window_and_longformer():
    # The last 200 rows of 5000 are enough to see the window's far edge.
    q, k = torch.arange(4800, 5000)[:, None], torch.arange(5000)[None, :]
    m = load("sliding_window.psp").mask(5000, nq=200)
    assert torch.equal(m, (k <= q) & (q - k < 4096))
    q, k = qk(700)
    m = load("longformer.psp").mask(700)
    assert torch.equal(m, ((q - k).abs() <= 256) | (q == 0) | (k == 0))


def test_sparse_transformer_strided():
    n, l = 600, 128
    q, k = qk(n)
    a1 = (q - k) < l
    a2 = (q - k) % l == 0
    expect = (k <= q) & (a1 | a2)
    assert torch.equal(load("sparse_transformer_strided.psp").mask(n), expect)


def test_sparse_transformer_fixed():
    n, l, c = 600, 128, 8
    q, k = qk(n)
    a1 = (q // l) == (k // l)
    a2 = (k % l) >= l - c
    expect = (k <= q) & (a1 | a2)
    assert torch.equal(load("sparse_transformer_fixed.psp").mask(n), expect)


def test_streamingllm_window_matches_its_cache():
    spec = load("streamingllm.psp")
    n = 3000
    q, k = qk(n)
    assert torch.equal(spec.mask(n), (k <= q) & ((k < 4) | (q - k <= 1023)))
    # The decode step (last query) attends exactly the positions the cache keeps:
    # the first 4 and the last 1024.
    row = spec.mask(n, nq=1)[0]
    kept = torch.zeros(n, dtype=torch.bool)
    kept[:4] = True
    kept[-1024:] = True
    assert torch.equal(row, kept)
    assert spec.canonical_ir.kv is not None


def test_dilated():
    n = 1500
    q, k = qk(n)
    d = q - k
    expect = (k <= q) & ((d <= 64) | ((d <= 256 * 4) & (d % 4 == 0)))
    assert torch.equal(load("dilated.psp").mask(n), expect)


def test_vertical_slash_static_and_prefix_lm():
    n = 700
    q, k = qk(n)
    expect = (k <= q) & ((k < 64) | ((q - k) < 128))
    assert torch.equal(load("vertical_slash_static.psp").mask(n), expect)
    expect = (k <= q) | ((q < 512) & (k < 512))
    assert torch.equal(load("prefix_lm.psp").mask(n), expect)


def test_packed_documents():
    docs = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    q, k = qk(9)
    expect = (k <= q) & (docs[:, None] == docs[None, :])
    assert torch.equal(load("packed_documents.psp").mask(9, doc_ids=docs), expect)


def test_bigbird_block_structure():
    n, b = 64 * 10, 64
    m = load("bigbird.psp").mask(n)
    blocks = m.view(10, b, 10, b)
    # Whole 64 x 64 blocks are in or out: every block equals its own first pair.
    assert torch.equal(blocks, blocks[:, :1, :, :1].expand_as(blocks))
    bm = blocks[:, 0, :, 0]
    i, j = qk(10)
    window_and_global = ((i - j).abs() <= 1) | (i == 0) | (j == 0) | (i == 9) | (j == 9)
    assert bool(bm[window_and_global].all())
    # Three random blocks per query block beyond the window and globals, at most.
    extra = (bm & ~window_and_global).sum(1)
    assert int(extra.max()) <= 3 and int(extra[1:9].sum()) > 0


def test_mixed_heads_rules():
    spec = load("mixed_heads.psp")
    causal = patterndsl.parse("causal").pattern()
    default = patterndsl.parse("causal & (local(1023) | sink(4))").pattern()
    assert spec.pattern(head=12, layer=5) == default
    assert spec.pattern(head=12, layer=1) == causal      # layers 0:2
    assert spec.pattern(head=2, layer=20) == causal      # heads 0:4
    assert spec.pattern(head=5, layer=20).is_dynamic     # heads 4:8
    assert spec.pattern(head=31, layer=31) == patterndsl.parse("causal & local(1023)").pattern()
    assert spec.pattern(head=31, layer=30) == default
    program = spec.canonical_ir
    assert program.kv is not None and len(program.kv.terms) == 3
    assert program.budget is not None
