"""Drawing masks for people: a text grid, a block summary for long sequences, and a PNG.

The text renderers are pure functions from rows of booleans (or block counts) and labels to
a string, so they can be tested against hand-drawn tables without running any spec.  Only
:func:`add_block_counts` and :func:`write_png` touch torch or Pillow, and they import them
when called.

Layout choices, made to read like a mask drawn on paper:

* rows are queries and columns are keys, both labelled with absolute positions;
* every cell is two terminal columns wide (mark + space), which makes cells look roughly
  square in a terminal font;
* column numbers are written vertically (tens above ones), so 64 columns fit in 128
  characters without labels running into each other;
* with tokens, the keys' tokens are written vertically above the grid, first letters on one
  line, and each row starts with the query's position and token.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Sequence

# Above this many key columns the cell grid stops being readable and `psparse show`
# switches to blocks.
MAX_GRID_COLUMNS = 64
# Tokens longer than this are cut in the vertical column labels (rows show them whole).
MAX_VERTICAL_LABEL = 10
MAX_ROW_TOKEN = 24


@dataclass(frozen=True)
class Marks:
    allowed: str   # one allowed (q, k) pair
    masked: str    # a pair (or a block) with nothing allowed
    full: str      # a block whose every pair is allowed
    partial: str   # a block with some pairs allowed


UNICODE_MARKS = Marks(allowed="■", masked="·", full="█", partial="▒")
ASCII_MARKS = Marks(allowed="#", masked=".", full="#", partial="+")


def marks_for(ascii_only: bool) -> Marks:
    return ASCII_MARKS if ascii_only else UNICODE_MARKS


def can_encode(encoding: str | None) -> bool:
    """Whether a stream with this encoding can print the Unicode marks (a Windows console
    in cp1252 cannot; then the CLI falls back to ASCII instead of crashing)."""
    if not encoding:
        return False
    try:
        "".join(vars(UNICODE_MARKS).values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


# ---------------------------------------------------------------------------
# Display width (so CJK tokens line up)
# ---------------------------------------------------------------------------

def char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(s: str) -> int:
    return sum(char_width(c) for c in s)


def pad_right(s: str, width: int) -> str:
    return s + " " * max(0, width - text_width(s))


def pad_left(s: str, width: int) -> str:
    return " " * max(0, width - text_width(s)) + s


def clip(s: str, limit: int) -> str:
    """``s`` cut to ``limit`` characters, the last one replaced by an ellipsis when cut."""
    return s if len(s) <= limit else s[: limit - 1] + "…"


def printable_token(tok: str) -> str:
    # A control character inside a token would wreck the layout; show it escaped.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in tok)


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------

def vertical_numbers(numbers: Sequence[int]) -> list[str]:
    """Each number written downward with its ones digit on the last line; one character per
    number and line, so line ``j`` of the result has character ``i`` for ``numbers[i]``."""
    texts = [str(x) for x in numbers]
    height = max((len(t) for t in texts), default=1)
    padded = [t.rjust(height) for t in texts]
    return ["".join(t[j] for t in padded) for j in range(height)]


def vertical_words(words: Sequence[str]) -> list[list[str]]:
    """Words written downward, first letters on the first line (top-aligned, like labels
    rotated on paper).  Line ``j`` holds, for each word, its ``j``-th character or ``""``."""
    height = max((len(w) for w in words), default=0)
    return [[w[j] if j < len(w) else "" for w in words] for j in range(height)]


def _cells(chars: Sequence[str]) -> str:
    """Lay single characters out as two-column cells (a wide character fills its cell)."""
    return "".join(c + " " * max(0, 2 - text_width(c)) if c else "  " for c in chars).rstrip()


def _rule_row(values: Sequence[bool], marks: Marks) -> str:
    return " ".join(marks.allowed if v else marks.masked for v in values)


def _count_text(allowed: int, total: int) -> str:
    pct = 100.0 * allowed / total if total else 0.0
    return f"{allowed:,} of {total:,} pairs allowed ({pct:.1f}%)"


# ---------------------------------------------------------------------------
# The cell grid
# ---------------------------------------------------------------------------

def render_grid(rows: Sequence[Sequence[bool]], *, q_start: int = 0,
                tokens: Sequence[str] | None = None, doc_ids: Sequence[int] | None = None,
                ascii_only: bool = False, title: str | None = None) -> str:
    """The mask drawn cell by cell.

    ``rows[i][k]`` says whether query ``q_start + i`` may attend key ``k``; ``tokens``, when
    given, has one entry per key position and labels both axes; ``doc_ids`` (one per
    position) adds a line naming each key's document, so document boundaries show."""
    marks = marks_for(ascii_only)
    n = len(rows[0]) if rows else (len(tokens) if tokens is not None else 0)
    if tokens is not None and len(tokens) != n:
        raise ValueError(f"{len(tokens)} tokens for {n} key positions")
    qs = range(q_start, q_start + len(rows))

    numbers = [str(q) for q in qs]
    num_w = max([len(s) for s in numbers] + [len(str(max(n - 1, 0)))])
    if tokens is not None:
        toks = [printable_token(t) for t in tokens]
        row_toks = [clip(toks[q], MAX_ROW_TOKEN) if q < n else "" for q in qs]
        tok_w = max((text_width(t) for t in row_toks), default=0)
        labels = [f"{num:>{num_w}} {pad_right(t, tok_w)}" for num, t in zip(numbers, row_toks)]
        label_w = num_w + 1 + tok_w
    else:
        labels = [f"{num:>{num_w}}" for num in numbers]
        label_w = num_w
    label_w = max(label_w, 3)  # room for the "q\k" corner
    gap = "  "
    lead = " " * (label_w + len(gap))

    lines: list[str] = []
    if title:
        lines += [title, ""]
    if tokens is not None:
        for chars in vertical_words([clip(t, MAX_VERTICAL_LABEL) for t in toks]):
            lines.append((lead + _cells(chars)).rstrip())
    if doc_ids is not None:
        doc_lines = vertical_numbers(doc_ids)
        for j, digits in enumerate(doc_lines):
            corner = "doc" if j == len(doc_lines) - 1 else ""
            lines.append((pad_left(corner, label_w) + gap + _cells(list(digits))).rstrip())
    digit_lines = vertical_numbers(range(n))
    for j, digits in enumerate(digit_lines):
        corner = "q\\k" if j == len(digit_lines) - 1 else ""
        lines.append((pad_left(corner, label_w) + gap + _cells(list(digits))).rstrip())
    for label, row in zip(labels, rows):
        lines.append(pad_left(label, label_w) + gap + _rule_row(row, marks))
    allowed = sum(sum(1 for v in row if v) for row in rows)
    lines += ["", f"{marks.allowed} allowed   {marks.masked} masked   "
                  "(rows: queries q, columns: keys k)",
              _count_text(allowed, len(rows) * n)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Blocks (long sequences)
# ---------------------------------------------------------------------------

def auto_block(n: int, max_columns: int = MAX_GRID_COLUMNS) -> int:
    """The smallest power of two that draws ``n`` keys in at most ``max_columns`` blocks;
    powers of two because kernel block sizes are, so the picture matches a block plan."""
    b = 1
    while -(-n // b) > max_columns:
        b *= 2
    return b


def block_totals(n: int, q_start: int, block: int) -> tuple[list[int], list[int]]:
    """Rows present in each query block (from block ``q_start // block``) and keys in each key
    block: the sizes that turn allowed counts into full / partial / empty."""
    first = q_start // block
    last = (n - 1) // block
    rows = [min(n, (i + 1) * block) - max(q_start, i * block) for i in range(first, last + 1)]
    cols = [min(n, (j + 1) * block) - j * block for j in range(-(-n // block))]
    return rows, cols


def render_blocks(counts: Sequence[Sequence[int]], *, n: int, block: int, q_start: int = 0,
                  ascii_only: bool = False, title: str | None = None) -> str:
    """The mask drawn in ``block x block`` squares.

    ``counts[i][j]`` is how many allowed pairs fall in query block ``q_start // block + i``
    and key block ``j``; blocks are on absolute positions, as in ``blockwise``."""
    marks = marks_for(ascii_only)
    row_sizes, col_sizes = block_totals(n, q_start, block)
    if len(counts) != len(row_sizes) or any(len(r) != len(col_sizes) for r in counts):
        raise ValueError("block counts do not match n, q_start and block")
    first = q_start // block
    row_blocks = range(first, first + len(row_sizes))

    def span(i: int, size_first: int) -> str:
        lo = max(q_start, i * block) if size_first else i * block
        hi = min(n, (i + 1) * block) - 1
        return f"{lo}-{hi}" if hi > lo else f"{lo}"

    idx_w = len(str(row_blocks[-1]))
    spans = [span(i, True) for i in row_blocks]
    span_w = max(len(s) for s in spans)
    label_w = max(idx_w + 2 + span_w, 3)
    gap = "  "
    lines: list[str] = []
    if title:
        lines += [title, ""]
    digit_lines = vertical_numbers(range(len(col_sizes)))
    for j, digits in enumerate(digit_lines):
        corner = "q\\k" if j == len(digit_lines) - 1 else ""
        lines.append((pad_left(corner, label_w) + gap + _cells(list(digits))).rstrip())
    allowed_total = 0
    for i, (row, rsize) in enumerate(zip(counts, row_sizes)):
        cells = []
        for c, csize in zip(row, col_sizes):
            allowed_total += c
            cells.append(marks.full if c == rsize * csize else marks.partial if c else marks.masked)
        label = f"{row_blocks[i]:>{idx_w}}  {spans[i]:>{span_w}}"
        lines.append(pad_left(label, label_w) + gap + " ".join(cells))
    last = col_sizes[-1]
    ragged = f"; the last key block holds {last}" if last != block else ""
    lines += [
        "",
        f"{marks.full} all allowed   {marks.partial} some   {marks.masked} none   "
        "(rows: query blocks and their positions, columns: key blocks)",
        f"each cell is {block} x {block} positions: block j holds {block}j .. {block}j+{block - 1}"
        f"{ragged}",
        _count_text(allowed_total, sum(row_sizes) * n),
    ]
    return "\n".join(lines) + "\n"


def add_block_counts(acc, mask, q_start: int, block: int, first_block: int):
    """Add the allowed pairs of ``mask`` (``[rows, n]`` bool, rows at absolute positions from
    ``q_start``) into ``acc[i, j]`` (query block ``first_block + i``, key block ``j``).

    Works for any chunk of rows, aligned to the blocks or not, so the CLI can walk a long
    mask in slices that fit in memory."""
    import torch

    r, n = mask.shape
    nbk = -(-n // block)
    m = mask.to(torch.int64)
    if nbk * block != n:
        m = torch.nn.functional.pad(m, (0, nbk * block - n))
    per_row = m.view(r, nbk, block).sum(-1)
    rows = torch.arange(q_start, q_start + r) // block - first_block
    acc.index_add_(0, rows, per_row)
    return acc


# ---------------------------------------------------------------------------
# PNG
# ---------------------------------------------------------------------------

PNG_CELL = 20          # pixels per cell when the mask is drawn with labels
PNG_MAX_PIXELS = 1024  # the largest side of a position-level image


class PillowMissing(RuntimeError):
    """Pillow is not installed (it is the optional extra ``psparse[image]``)."""


def require_pillow():
    """Pillow's modules, or PillowMissing with the install command."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise PillowMissing("writing PNG needs Pillow: pip install 'psparse[image]'") from None
    return Image, ImageDraw, ImageFont


def _font(ImageFont, size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


INK = (31, 78, 121)       # allowed
PAPER = (255, 255, 255)   # masked
GRID = (210, 210, 210)
TEXT = (40, 40, 40)


@dataclass(frozen=True)
class PngLayout:
    """Where things landed in a written picture: its size, and for a labelled grid the
    top-left corner of cell (0, 0) and the cell size in pixels."""
    width: int
    height: int
    left: int = 0
    top: int = 0
    cell: int = 1


def write_png_grid(path, rows: Sequence[Sequence[bool]], *, q_start: int = 0,
                   tokens: Sequence[str] | None = None) -> PngLayout:
    """A labelled picture of a small mask, one square per (q, k) pair."""
    Image, ImageDraw, ImageFont = require_pillow()
    nq, n = len(rows), len(rows[0])
    font = _font(ImageFont, 13)
    row_labels = [f"{q} {tokens[q]}" if tokens is not None else str(q)
                  for q in range(q_start, q_start + nq)]
    col_labels = [f"{k} {tokens[k]}" if tokens is not None else str(k) for k in range(n)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(s):
        box = probe.textbbox((0, 0), s, font=font)
        return box[2] - box[0], box[3] - box[1]

    def text(d, xy, s):
        # Place the ink's top-left corner at xy (fonts draw with an offset of their own).
        box = d.textbbox((0, 0), s, font=font)
        d.text((xy[0] - box[0], xy[1] - box[1]), s, fill=TEXT, font=font)

    left = max(size(s)[0] for s in row_labels) + 10
    top = max(size(s)[0] for s in col_labels) + 10
    c = PNG_CELL
    img = Image.new("RGB", (left + n * c + 1 + 8, top + nq * c + 1 + 8), PAPER)
    draw = ImageDraw.Draw(img)
    for i, row in enumerate(rows):
        for k, v in enumerate(row):
            if v:
                x, y = left + k * c, top + i * c
                draw.rectangle([x, y, x + c, y + c], fill=INK)
    for k in range(n + 1):
        draw.line([(left + k * c, top), (left + k * c, top + nq * c)], fill=GRID)
    for i in range(nq + 1):
        draw.line([(left, top + i * c), (left + n * c, top + i * c)], fill=GRID)
    for i, s in enumerate(row_labels):
        w, h = size(s)
        text(draw, (left - 6 - w, top + i * c + (c - h) // 2), s)
    for k, s in enumerate(col_labels):
        w, h = size(s)
        # Column labels are drawn on their own strip and turned a quarter, reading upward.
        strip = Image.new("RGB", (w + 2, h + 4), PAPER)
        text(ImageDraw.Draw(strip), (1, 2), s)
        strip = strip.rotate(90, expand=True)
        img.paste(strip, (left + k * c + (c - strip.width) // 2, top - 6 - strip.height))
    img.save(path, format="PNG")
    return PngLayout(img.width, img.height, left, top, c)


def write_png_density(path, fractions) -> PngLayout:
    """A picture of a long mask: one pixel (scaled up to at least ~512 px) per group of
    positions, its darkness the fraction of allowed pairs in the group.  ``fractions`` is a
    2-D float tensor in [0, 1]."""
    Image, _, _ = require_pillow()
    import torch

    rows, cols = fractions.shape
    scale = max(1, 512 // max(rows, cols))
    # Ink on white: 0 allowed -> white, all allowed -> INK, linear in between.
    f = fractions.clamp(0, 1).unsqueeze(-1)
    ink = torch.tensor(INK, dtype=torch.float32)
    paper = torch.tensor(PAPER, dtype=torch.float32)
    rgb = (paper + (ink - paper) * f).round().to(torch.uint8)
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    rgb = rgb.contiguous()
    # Through a list, not .numpy(): torch does not require NumPy.
    img = Image.frombytes("RGB", (rgb.shape[1], rgb.shape[0]), bytes(rgb.flatten().tolist()))
    img.save(path, format="PNG")
    return PngLayout(img.width, img.height, 0, 0, scale)
