"""The drawing functions of patterndsl.show, against hand-drawn tables.

The masks here are built with plain Python comprehensions straight from LANGUAGE.md's
definitions, not by the reference, so these tests pin the drawing alone."""
from __future__ import annotations

import random
import sys

import pytest
import torch

from patterndsl import show


def band(n, w, q_start=0, nq=None):
    nq = n if nq is None else nq
    return [[abs(q - k) <= w for k in range(n)] for q in range(q_start, q_start + nq)]


def test_grid_small_by_hand():
    expected = (
        "q\\k  0 1 2 3 4\n"
        "  0  ■ ■ · · ·\n"
        "  1  ■ ■ ■ · ·\n"
        "  2  · ■ ■ ■ ·\n"
        "  3  · · ■ ■ ■\n"
        "  4  · · · ■ ■\n"
        "\n"
        "■ allowed   · masked   (rows: queries q, columns: keys k)\n"
        "13 of 25 pairs allowed (52.0%)\n"
    )
    assert show.render_grid(band(5, 1)) == expected


def test_grid_two_digit_columns_and_query_offset():
    # causal, the last three queries of twelve positions: column numbers stand vertically.
    rows = [[k <= q for k in range(12)] for q in range(9, 12)]
    expected = (
        "                         1 1\n"
        "q\\k  0 1 2 3 4 5 6 7 8 9 0 1\n"
        "  9  # # # # # # # # # # . .\n"
        " 10  # # # # # # # # # # # .\n"
        " 11  # # # # # # # # # # # #\n"
        "\n"
        "# allowed   . masked   (rows: queries q, columns: keys k)\n"
        "33 of 36 pairs allowed (91.7%)\n"
    )
    assert show.render_grid(rows, q_start=9, ascii_only=True) == expected


def test_grid_with_tokens_and_title():
    rows = [[k <= q for k in range(4)] for q in range(4)]
    out = show.render_grid(rows, tokens=["I", "saw", "a", "cat"], title="causal\nn = 4")
    expected = (
        "causal\n"
        "n = 4\n"
        "\n"
        "       I s a c\n"
        "         a   a\n"
        "         w   t\n"
        "  q\\k  0 1 2 3\n"
        "0 I    ■ · · ·\n"
        "1 saw  ■ ■ · ·\n"
        "2 a    ■ ■ ■ ·\n"
        "3 cat  ■ ■ ■ ■\n"
        "\n"
        "■ allowed   · masked   (rows: queries q, columns: keys k)\n"
        "10 of 16 pairs allowed (62.5%)\n"
    )
    assert out == expected


def test_grid_wide_tokens_keep_columns_aligned():
    out = show.render_grid(band(3, 0), tokens=["猫", "x", "犬"])
    lines = out.splitlines()
    # The header line of first characters: a wide character fills its two-column cell.
    assert lines[0] == "      猫x 犬"
    body = lines[2:5]
    assert body == ["0 猫  ■ · ·", "1 x   · ■ ·", "2 犬  · · ■"]
    # The grid starts at the same display column on every row.
    assert {show.text_width(ln[: ln.index(m)]) for ln, m in zip(body, "■··")} == {6}


def test_grid_clips_long_tokens_in_column_labels_only():
    long = "internationalization"
    out = show.render_grid(band(2, 1), tokens=[long, "b"])
    header = out.splitlines()[: show.MAX_VERTICAL_LABEL]
    assert "".join(line.strip()[0] for line in header) == long[:9] + "…"
    assert f"0 {long}" in out


def test_grid_rejects_token_count_mismatch():
    with pytest.raises(ValueError):
        show.render_grid(band(3, 1), tokens=["a", "b"])


def test_vertical_numbers_and_words():
    assert show.vertical_numbers(range(8, 12)) == ["  11", "8901"]
    assert show.vertical_numbers([5, 105]) == [" 1", " 0", "55"]
    assert show.vertical_words(["ab", "c"]) == [["a", "c"], ["b", ""]]


def test_blocks_by_hand():
    # causal at n = 10 in blocks of 4: diagonal blocks partly allowed, those below full.
    n, b = 10, 4
    counts = [[sum(1 for q in range(i * b, min(n, i * b + b)) for k in range(j * b, min(n, j * b + b))
                   if k <= q) for j in range(3)] for i in range(3)]
    expected = (
        "   q\\k  0 1 2\n"
        "0  0-3  ▒ · ·\n"
        "1  4-7  █ ▒ ·\n"
        "2  8-9  █ █ ▒\n"
        "\n"
        "█ all allowed   ▒ some   · none   (rows: query blocks and their positions, "
        "columns: key blocks)\n"
        "each cell is 4 x 4 positions: block j holds 4j .. 4j+3; the last key block holds 2\n"
        "55 of 100 pairs allowed (55.0%)\n"
    )
    assert show.render_blocks(counts, n=n, block=b) == expected


def test_blocks_with_partial_first_row_block():
    # Rows 5..9 of local(0) at n = 10, blocks of 4: query block 1 holds only rows 5-7,
    # whose three diagonal pairs fill part of key block 1; block (2, 2) is half allowed.
    rows = band(10, 0, q_start=5, nq=5)
    acc = torch.zeros((2, 3), dtype=torch.int64)
    show.add_block_counts(acc, torch.tensor(rows), 5, 4, 1)
    assert acc.tolist() == [[0, 3, 0], [0, 0, 2]]
    out = show.render_blocks(acc.tolist(), n=10, block=4, q_start=5, ascii_only=True)
    assert out.splitlines()[:3] == ["   q\\k  0 1 2", "1  5-7  . + .", "2  8-9  . . +"]


@pytest.mark.parametrize("seed", range(5))
def test_add_block_counts_matches_loops(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    block = rng.randint(1, 9)
    q_start = rng.randint(0, n - 1)
    mask = torch.rand(n - q_start, n, generator=torch.Generator().manual_seed(seed)) < 0.3
    first = q_start // block
    acc = torch.zeros(((n - 1) // block - first + 1, -(-n // block)), dtype=torch.int64)
    # Walk the rows in uneven chunks, as the CLI does for long masks.
    start = q_start
    while start < n:
        step = rng.randint(1, 7)
        chunk = mask[start - q_start: start - q_start + step]
        show.add_block_counts(acc, chunk, start, block, first)
        start += step
    expect = [[0] * acc.shape[1] for _ in range(acc.shape[0])]
    for i, q in enumerate(range(q_start, n)):
        for k in range(n):
            if mask[i, k]:
                expect[q // block - first][k // block] += 1
    assert acc.tolist() == expect
    rows, cols = show.block_totals(n, q_start, block)
    assert sum(rows) == n - q_start and sum(cols) == n


def test_auto_block():
    assert show.auto_block(64) == 1
    assert show.auto_block(65) == 2
    assert show.auto_block(4096) == 64
    assert show.auto_block(4097) == 128
    assert show.auto_block(1000, 1024) == 1


def test_can_encode():
    assert show.can_encode("utf-8")
    assert not show.can_encode("ascii")
    assert not show.can_encode("cp1252")
    assert not show.can_encode(None)


def test_png_grid_cells(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rows = band(6, 1, q_start=2, nq=4)
    path = tmp_path / "m.png"
    pic = show.write_png_grid(path, rows, q_start=2, tokens=list("abcdef"))
    img = Image.open(path).convert("RGB")
    assert img.size == (pic.width, pic.height)
    for i, row in enumerate(rows):
        for k, allowed in enumerate(row):
            centre = (pic.left + k * pic.cell + pic.cell // 2, pic.top + i * pic.cell + pic.cell // 2)
            assert img.getpixel(centre) == (show.INK if allowed else show.PAPER), (i, k)


def test_png_density_shades(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    f = torch.tensor([[0.0, 1.0], [0.5, 0.25]], dtype=torch.float64)
    path = tmp_path / "d.png"
    pic = show.write_png_density(path, f)
    img = Image.open(path).convert("RGB")
    assert pic.cell == 256 and img.size == (512, 512)
    assert img.getpixel((10, 10)) == show.PAPER
    assert img.getpixel((300, 10)) == show.INK
    half = img.getpixel((10, 300))
    for p, w, c in zip(half, show.PAPER, show.INK):
        assert p == round(w + (c - w) * 0.5)


def test_png_without_pillow(monkeypatch, tmp_path):
    # None in sys.modules makes `import PIL` fail as if Pillow were not installed.
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(show.PillowMissing, match=r"pip install 'psparse\[image\]'"):
        show.write_png_grid(tmp_path / "x.png", band(2, 1))
    assert not (tmp_path / "x.png").exists()
