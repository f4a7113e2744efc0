"""The ``psparse`` command.

Every subcommand is one entry of :data:`COMMANDS` (an ``add`` function that declares its
arguments and a ``run`` function that does the work), and ``dump``'s stages are the entries of
:data:`DUMP_STAGES`; later stages of the compiler add theirs there, which is all the CLI needs.

Exit status: 0 success, 1 a problem with the spec or with what was asked of it (the message
names the line and column), 2 a malformed command line (argparse's own), 70 a bug in psparse.
Nothing reaches the user as a traceback (set PSPARSE_TRACEBACK=1 to see one when debugging).

Importing this module stays cheap: torch is imported only by the subcommands that draw.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

from . import __version__
from .errors import PsparseError, PsparseUsageError
from .show import PillowMissing

EXIT_OK = 0
EXIT_SPEC = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE from sysexits.h

SPEC_HELP = ("the spec: a pattern in quotes (\"causal & local(128)\"), a .psp file, "
             "or - to read standard input")

EPILOG = """\
examples:
  psparse show "local(2) | global([0])" --tokens "The quick brown fox jumps over the lazy dog"
  psparse show "causal & (sink(4) | local(1023))" -n 4096
  psparse show examples/packed_documents.psp --doc-ids 0,0,0,1,1,1,1,2,2
  psparse show examples/mixed_heads.psp -n 512 --layer 3 --head 12 --png mask.png
  psparse dump "local(2) | local(5) | causal" --stage canonical
  echo "causal & local(4) | sink(2)" | psparse dump - --stage tree
  psparse dump "causal & stride(128)" --stage plan -n 4096
  psparse compile "causal & (sink(4) | local(1023))" -o streaming.py
  psparse check "causal & (sink(4) | local(16))" -n 128

exit status: 0 ok, 1 the spec is wrong or cannot be used as asked, 2 bad command line,
70 internal error (a bug: please report it)
"""


class CliError(Exception):
    """A problem with the request that is not a PsparseError (a missing file, say): exit 1."""


@dataclass
class SpecSource:
    text: str
    path: str | None  # the file it came from, for error messages; None for literal text


# ---------------------------------------------------------------------------
# Reading a spec
# ---------------------------------------------------------------------------

def read_spec(arg: str) -> SpecSource:
    """A literal spec, a file (when ``arg`` names one, or ends in .psp), or stdin for ``-``."""
    if arg == "-":
        try:
            data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        except (OSError, ValueError) as e:  # closed or unreadable standard input
            raise CliError(f"cannot read the spec from standard input: {e}") from None
        return SpecSource(_decode(data, "standard input"), "<stdin>")
    # A multi-line argument is spec text, never a file name.
    if "\n" not in arg and (arg.endswith(".psp") or os.path.isfile(arg)):
        try:
            with open(arg, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CliError(f"no such spec file: {arg}") from None
        except IsADirectoryError:
            raise CliError(f"{arg} is a folder, not a spec file") from None
        except OSError as e:
            raise CliError(f"cannot read {arg}: {e.strerror or e}") from None
        return SpecSource(_decode(data, arg), arg)
    return SpecSource(arg, None)


def _decode(data, where: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CliError(f"{where} is not UTF-8 text (bad byte at offset {e.start})") from None


def _parse(source: SpecSource):
    from . import parse
    return parse(source.text)


# ---------------------------------------------------------------------------
# Argument types (errors here are usage errors: exit 2)
# ---------------------------------------------------------------------------

def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def convert(s: str) -> int:
        try:
            v = int(s.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{what} must be >= {low}, not {v}")
        return v
    convert.__name__ = what  # argparse names the type in some messages
    return convert


def _doc_ids(s: str) -> list[int]:
    parts = [p for p in s.replace(",", " ").split() if p]
    if not parts:
        raise argparse.ArgumentTypeError("give one document id per position, e.g. 0,0,0,1,1")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"document ids are integers separated by commas, not {s!r}") from None


# ---------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------

# Rows of the mask computed at once when walking a long mask for the block view.
CHUNK_ELEMENTS = 1 << 22
# Beyond these, a drawing would take minutes or more memory than the machine has.
MAX_PAIRS = 1 << 32
MAX_DRAWN_BLOCKS = 512


def _add_show(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "show", help="draw the mask of a spec",
        description="Draw which keys each query may attend: rows are queries, columns keys.\n"
                    "Up to 64 keys are drawn pair by pair; longer sequences (or --block) are\n"
                    "drawn in blocks.",
        epilog="examples:\n"
               "  psparse show \"local(2)\" -n 9\n"
               "  psparse show \"local(2) | global([0])\" "
               "--tokens \"The quick brown fox jumps over the lazy dog\"\n"
               "  psparse show \"causal & local(3)\" -n 64 --nq 8\n"
               "  psparse show examples/bigbird.psp -n 1024 --png bigbird.png\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("-n", type=_int_at_least(1, "n"), metavar="N",
                   help="sequence length (defaults to the number of --tokens or --doc-ids)")
    p.add_argument("--tokens", metavar="TEXT",
                   help="label positions with these whitespace-separated tokens")
    p.add_argument("--nq", type=_int_at_least(1, "--nq"), metavar="NQ",
                   help="draw only the last NQ query rows (bottom-right aligned, as in decoding)")
    p.add_argument("--head", type=_int_at_least(0, "--head"), metavar="H",
                   help="the query head to draw (needed when the spec has 'heads' lines)")
    p.add_argument("--layer", type=_int_at_least(0, "--layer"), metavar="L",
                   help="the layer to draw (picks the spec's 'layers' lines)")
    p.add_argument("--doc-ids", type=_doc_ids, metavar="IDS",
                   help="document of each position, e.g. 0,0,0,1,1 (needed by 'document')")
    p.add_argument("--block", type=_int_at_least(1, "--block"), metavar="B",
                   help="draw B x B blocks: full, partly or not allowed")
    p.add_argument("--ascii", action="store_true",
                   help="draw with # and . instead of Unicode marks")
    p.add_argument("--png", metavar="FILE",
                   help="also write a picture of the mask (needs psparse[image])")
    return p


def _show_n(args, parser) -> int:
    tokens = args.tokens.split() if args.tokens is not None else None
    sources = []
    if args.n is not None:
        sources.append(("-n", args.n))
    if tokens is not None:
        if not tokens:
            parser.error("--tokens is empty")
        sources.append(("--tokens", len(tokens)))
    if args.doc_ids is not None:
        sources.append(("--doc-ids", len(args.doc_ids)))
    if not sources:
        parser.error("give the sequence length with -n N (or label positions with --tokens)")
    name0, n = sources[0]
    for name, v in sources[1:]:
        if v != n:
            parser.error(f"{name} gives {v} positions but {name0} gives {n}")
    if args.nq is not None and args.nq > n:
        parser.error(f"--nq {args.nq} is more query rows than the {n} positions")
    if args.block is not None and -(-n // args.block) > MAX_DRAWN_BLOCKS:
        parser.error(f"--block {args.block} makes {-(-n // args.block)} columns of blocks; "
                     f"at most {MAX_DRAWN_BLOCKS} can be drawn, so use a larger --block")
    if n * (args.nq or n) > MAX_PAIRS:
        parser.error(f"{n} x {args.nq or n} pairs is more than psparse show evaluates "
                     f"({MAX_PAIRS:,}); draw fewer query rows with --nq")
    args.token_list = tokens
    return n


def _pattern_for(spec, head, layer):
    """The expression that governs (head, layer), with messages in the CLI's terms."""
    # Without --head, a spec with 'heads' lines would silently fall back to its default
    # pattern, which is not what its author sees on most heads: ask instead.
    if spec.has_heads and head is None:
        raise PsparseUsageError("this spec has 'heads' lines: pick a query head with --head H")
    if spec.has_layers and layer is None:
        raise PsparseUsageError("this spec has 'layers' lines: pick a layer with --layer L")
    if spec.canonical_ir.rule_for(head, layer) is None:
        where = " ".join(x for x in (f"layer {layer}" if layer is not None else "",
                                     f"head {head}" if head is not None else "") if x)
        raise PsparseUsageError(f"no line of the spec covers {where}, and it has no default "
                                "pattern")
    return spec.pattern(head=head, layer=layer)


def _run_show(args, parser, out) -> int:
    from . import ir, show
    from .printer import to_text
    from .spec import Spec

    n = _show_n(args, parser)
    source = read_spec(args.spec)
    spec = _parse(source)
    expr = _pattern_for(spec, args.head, args.layer)
    if expr.is_dynamic:
        raise PsparseUsageError(
            "this pattern has dynamic terms (vertical/slash with topk=, blocks), chosen from "
            "the queries and keys of each call; psparse show draws patterns that the spec "
            "alone decides")
    if expr.needs_doc_ids and args.doc_ids is None:
        raise PsparseUsageError("this pattern uses 'document': give the document of every "
                                "position with --doc-ids, e.g. --doc-ids 0,0,0,1,1")

    torch = _import_torch()
    single = ir.Program((ir.Rule(expr),))
    drawn = Spec(source.text, single, single)
    nq = args.nq or n
    q_start = n - nq
    doc_ids = torch.tensor(args.doc_ids) if args.doc_ids is not None else None
    ascii_only = args.ascii or not show.can_encode(getattr(out, "encoding", None))
    title = _title(to_text(expr), n, nq, args)

    def rows_mask(start: int, count: int):
        return drawn.mask(n, nq=count, q_offset=start, doc_ids=doc_ids)

    if args.png:
        show.require_pillow()  # fail before drawing anything (or walking a long mask)
    if args.block is None and n <= show.MAX_GRID_COLUMNS:
        rows = rows_mask(q_start, nq).tolist()
        out.write(show.render_grid(rows, q_start=q_start, tokens=args.token_list,
                                   doc_ids=args.doc_ids, ascii_only=ascii_only, title=title))
        if args.png:
            pic = _write_png(args.png, show.write_png_grid, rows, q_start=q_start,
                             tokens=args.token_list)
            out.write(f"\nwrote {args.png} ({pic.width} x {pic.height} pixels)\n")
        return EXIT_OK

    block = args.block or show.auto_block(n, _block_columns(out))
    # The picture uses finer groups than the text (up to PNG_MAX_PIXELS of them per side).
    png_block = show.auto_block(n, show.PNG_MAX_PIXELS) if args.png else None
    acc = _zeros(n, q_start, block)
    png_acc = _zeros(n, q_start, png_block) if png_block else None
    step = max(1, CHUNK_ELEMENTS // n)
    for start in range(q_start, n, step):
        count = min(step, n - start)
        m = rows_mask(start, count)
        show.add_block_counts(acc, m, start, block, q_start // block)
        if png_acc is not None:
            show.add_block_counts(png_acc, m, start, png_block, q_start // png_block)
    out.write(show.render_blocks(acc.tolist(), n=n, block=block, q_start=q_start,
                                 ascii_only=ascii_only, title=title))
    if png_acc is not None:
        rsz, csz = show.block_totals(n, q_start, png_block)
        totals = torch.tensor(rsz, dtype=torch.float64)[:, None] * torch.tensor(
            csz, dtype=torch.float64)[None, :]
        pic = _write_png(args.png, show.write_png_density, png_acc.to(torch.float64) / totals)
        out.write(f"\nwrote {args.png} ({pic.width} x {pic.height} pixels)\n")
    return EXIT_OK


def _import_torch():
    # torch warns on import when NumPy is missing; psparse never uses NumPy, and the warning
    # would otherwise be the first thing a new user sees above the drawing.
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        import torch
    return torch


def _write_png(path, writer, *a, **kw):
    try:
        return writer(path, *a, **kw)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


def _block_columns(out) -> int:
    """How many key blocks to draw at most: 64, or fewer when a terminal is narrower than
    the picture would be (two characters per block plus the row labels)."""
    limit = 64
    try:
        if out.isatty():
            width = os.get_terminal_size(out.fileno()).columns
            limit = max(8, min(limit, (width - 20) // 2))
    except (AttributeError, OSError, ValueError):
        pass
    return limit


def _zeros(n: int, q_start: int, block: int):
    torch = _import_torch()
    return torch.zeros(((n - 1) // block - q_start // block + 1, -(-n // block)),
                       dtype=torch.int64)


def _title(text: str, n: int, nq: int, args) -> str:
    if len(text) > 200:
        text = text[:197] + "..."
    where = [f"n = {n}"]
    if nq < n:
        where.append(f"queries {n - nq}-{n - 1}")
    if args.layer is not None:
        where.append(f"layer {args.layer}")
    if args.head is not None:
        where.append(f"head {args.head}")
    return f"{text}\n{', '.join(where)}"


# ---------------------------------------------------------------------------
# Options shared by dump's later stages, compile and check
# ---------------------------------------------------------------------------

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Default lengths: a plan worth reading, and a check that Triton's interpreter finishes in
# seconds.
DUMP_N = 1024
CHECK_N = 128
# Per dtype: the largest relative error (max |got - ref| / max(max |ref|, 1)) check accepts.
# float32 is what the kernels compute in; 16-bit inputs round P and dS to 16 bits.
CHECK_TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
DYNAMIC_NOT_SUPPORTED = (
    "this spec has data-dependent terms (vertical(topk=..), slash(topk=..), blocks(..)), "
    "chosen from the queries and keys of each call; compiling them is not supported yet")


def _power_of_two(what: str) -> Callable[[str], int]:
    at_least = _int_at_least(16, what)

    def convert(s: str) -> int:
        v = at_least(s)
        if v & (v - 1):
            raise argparse.ArgumentTypeError(f"{what} must be a power of two, not {v}")
        return v
    convert.__name__ = what
    return convert


def _head_dim(s: str) -> int:
    v = _int_at_least(16, "--head-dim")(s)
    if v > 256:
        raise argparse.ArgumentTypeError(f"--head-dim must be <= 256, not {v}")
    return v


def _add_tile_options(p, dtype_default: str | None = None) -> None:
    p.add_argument("--head-dim", type=_head_dim, metavar="D",
                   help="head dimension, 16 to 256 (sizes the tiles)")
    p.add_argument("--dtype", choices=list(DTYPES), default=dtype_default,
                   help="element type of q, k, v" + (f" (default {dtype_default})"
                                                     if dtype_default else ""))
    p.add_argument("--block-m", type=_power_of_two("--block-m"), metavar="M",
                   help="query tile rows (a power of two >= 16)")
    p.add_argument("--block-n", type=_power_of_two("--block-n"), metavar="N",
                   help="key tile columns (a power of two >= 16)")


def _tile_options(args) -> dict:
    """--head-dim/--dtype/--block-m/--block-n as keyword options (unset ones left out)."""
    opts = {"head_dim": args.head_dim, "dtype": args.dtype and DTYPES[args.dtype],
            "block_m": args.block_m, "block_n": args.block_n}
    return {k: v for k, v in opts.items() if v is not None}


def _static(spec) -> None:
    if spec.is_dynamic:
        raise PsparseUsageError(DYNAMIC_NOT_SUPPORTED)


# ---------------------------------------------------------------------------
# dump --stage plan | kernel | module
# ---------------------------------------------------------------------------

def _plan_for(source: SpecSource, args):
    """The spec's plan for the pattern of --head/--layer at -n, with the tile options."""
    spec = _parse(source)
    expr = _pattern_for(spec, args.head, args.layer)
    if expr.is_dynamic:
        raise PsparseUsageError(DYNAMIC_NOT_SUPPORTED)
    n = args.n
    if args.doc_ids is not None:
        if n is not None and n != len(args.doc_ids):
            raise PsparseUsageError(f"--doc-ids gives {len(args.doc_ids)} positions but -n "
                                    f"gives {n}")
        n = len(args.doc_ids)
    n = n or DUMP_N
    if args.nq is not None and args.nq > n:
        raise PsparseUsageError(f"--nq {args.nq} is more query rows than the {n} positions")
    if expr.needs_doc_ids and args.doc_ids is None:
        raise PsparseUsageError("this pattern uses 'document': give the document of every "
                                "position with --doc-ids, e.g. --doc-ids 0,0,0,1,1")
    torch = _import_torch()
    from .plan import build_plan
    opts = _tile_options(args)
    if "dtype" in opts:
        opts["dtype"] = getattr(torch, opts["dtype"])
    doc = torch.tensor(args.doc_ids) if args.doc_ids is not None else None
    return expr, build_plan(expr, n, nq=args.nq, doc_ids=doc, **opts)


def _positions(a: int, b: int) -> str:
    return "none" if b <= a else f"{a}" if b == a + 1 else f"{a}-{b - 1}"


def _view_text(view) -> str:
    where = f"positions {_positions(view.start, view.stop)}"
    if view.period == 1:
        return f"{view.num_tiles} tiles of {view.block} ({where})"
    return (f"{view.num_tiles} tiles of {view.block}: {view.period} residue classes mod "
            f"{view.period}, {view.class_tiles} tiles each ({where})")


def _kind_text(kind) -> str:
    text = {"id": "identity (plain tiles)",
            "d": f"residue classes mod {kind.s} on both axes, key class = query class - {kind.r}",
            "k": f"key residue class {kind.r} mod {kind.s}",
            "q": f"query residue classes mod {kind.s}"}.get(kind.kind, kind.kind)
    if kind.qlo is not None or kind.qhi is not None:
        text += f", rows [{kind.qlo}, {kind.qhi})"
    return text


LAYOUT_ROWS, LAYOUT_COLUMNS = 32, 64


def _layout_text(plan) -> str:
    """The plain tiling drawn in at most LAYOUT_ROWS x LAYOUT_COLUMNS characters."""
    from .plan.layout import EMPTY, FULL
    dense = plan.layout().to_dense()
    tq, tk = dense.shape
    if tq == 0 or tk == 0:
        return "(no tiles)\n"
    gr, gc = -(-tq // LAYOUT_ROWS), -(-tk // LAYOUT_COLUMNS)
    rows = []
    for r0 in range(0, tq, gr):
        line = []
        for c0 in range(0, tk, gc):
            cell = dense[r0:r0 + gr, c0:c0 + gc]
            if bool((cell == FULL).all()):
                line.append("#")
            elif bool((cell == EMPTY).all()):
                line.append(".")
            else:
                line.append("+")
        rows.append("  " + "".join(line))
    group = "one tile" if gr == gc == 1 else f"{gr} x {gc} tiles"
    return (f"layout of the plain {plan.block_m} x {plan.block_n} tiling ({tq} x {tk} tiles; "
            f"one character per {group}):\n" + "\n".join(rows) +
            "\n  # full   + partly allowed (or mixed)   . empty\n")


def _dump_plan(source: SpecSource, args) -> str:
    from .printer import to_text
    expr, plan = _plan_for(source, args)
    lines = [
        f"pattern     {to_text(expr)}",
        f"geometry    n = {plan.n}, query rows {_positions(plan.q_offset, plan.q_offset + plan.nq)}"
        f" (nq = {plan.nq})",
        f"tiles       {plan.block_m} x {plan.block_n} plain tiling, chosen for head_dim "
        f"{plan.head_dim}, {str(plan.dtype).removeprefix('torch.')}",
        f"pairs       {plan.allowed_pairs:,} allowed of {plan.nq * plan.n:,} "
        f"({plan.density:.2%}); {plan.executed_pairs:,} computed",
        f"work ratio  {plan.work_ratio:.3f} (computed / allowed pairs)",
        f"parts       {len(plan.parts)}",
    ]
    for i, part in enumerate(plan.parts):
        nonempty = (part.kv_hi > part.kv_lo).sum(1) if part.num_runs else None
        runs = (f"up to {part.num_runs} per query tile" if nonempty is None or not nonempty.numel()
                else f"up to {part.num_runs} per query tile (min {int(nonempty.min())}, "
                     f"mean {float(nonempty.float().mean()):.1f}, max {int(nonempty.max())})")
        visited, full = part.visited_tiles(), part.full_tiles()
        lines += [
            "",
            f"part {i}      {to_text(part.predicate)}",
            f"  views     {_kind_text(part.view)}",
            f"  queries   {_view_text(part.q_view)}",
            f"  keys      {_view_text(part.k_view)}",
            f"  runs      {runs}",
            f"  tiles     {visited:,} visited: {full:,} full (no mask), {visited - full:,} partial",
            f"  pairs     {part.allowed_pairs:,} allowed, {part.executed_pairs:,} computed",
        ]
    return "\n".join(lines) + "\n\n" + _layout_text(plan)


_dump_plan.takes_args = True


def _dump_kernel(source: SpecSource, args) -> str:
    from . import ir
    from .codegen.render import kernel_source
    from .printer import to_text
    expr, plan = _plan_for(source, args)
    if plan.parts:
        if args.part >= len(plan.parts):
            raise PsparseUsageError(f"--part {args.part}: the plan has {len(plan.parts)} "
                                    f"part{'s' if len(plan.parts) != 1 else ''}")
        pred = plan.parts[args.part].predicate
        what = f"part {args.part} of {len(plan.parts)}"
    else:
        # Nothing is allowed at this length: the pattern's own kernel is what would run.
        pred, what = expr, "the whole pattern (the plan has no parts at this length)"
    _, text = kernel_source(ir.strip_spans(pred))
    return (f"# psparse dump --stage kernel: {what}, n = {plan.n}\n"
            f"# predicate: {_one_line(to_text(pred))}\n" + text)


_dump_kernel.takes_args = True


def _dump_module(source: SpecSource, args) -> str:
    from . import modcache
    spec = _parse(source)
    _static(spec)
    return modcache.module_text(spec, **_tile_options(args))


_dump_module.takes_args = True


# ---------------------------------------------------------------------------
# compile
# ---------------------------------------------------------------------------

def _add_compile(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compile", help="write a self-contained Python module for a spec",
        description="Write one Python module (it imports only torch and triton) exposing\n"
                    "attention(q, k, v, ...), SPEC, mask(n) and plan(n).  Modules are cached\n"
                    "under PSPARSE_CACHE_DIR; the same spec and options give the same bytes.\n"
                    "--head-dim and --dtype are compiled in as checks every call must pass\n"
                    "(and choose the tiles); --block-m/--block-n fix the tile sizes.  Without\n"
                    "them the module picks its tiles per call from the inputs.",
        epilog="examples:\n"
               "  psparse compile \"causal & local(256)\" -o sliding.py\n"
               "  psparse compile examples/bigbird.psp -o bigbird.py --head-dim 64 --dtype bf16\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the module to write (- for standard output)")
    _add_tile_options(p)
    p.add_argument("--no-cache", action="store_true",
                   help="render the module afresh instead of reading the module cache")
    return p


def _run_compile(args, parser, out) -> int:
    from . import modcache
    spec = _parse(read_spec(args.spec))
    _static(spec)
    text = modcache.module_text(spec, use_cache=not args.no_cache, **_tile_options(args))
    if args.output == "-":
        out.write(text)
        return EXIT_OK
    write_file(args.output, text)
    out.write(f"wrote {args.output} ({len(text.encode('utf-8')):,} bytes)\n")
    return EXIT_OK


def write_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically: on any failure the file is as it was."""
    from pathlib import Path

    from .modcache import write_atomic
    target = Path(path)
    if target.is_dir():
        raise CliError(f"{path} is a folder: give the name of the file to write")
    folder = target.parent
    if not folder.is_dir():
        raise CliError(f"cannot write {path}: there is no folder {str(folder)!r}")
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        write_atomic(target, text.encode("utf-8"), mode=mode)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------

def _add_check(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check", help="run the compiled kernels against the dense reference",
        description="Run the compiled kernels (Triton's interpreter on the CPU, compiled Triton\n"
                    "on a GPU) on random inputs, forward and backward, and compare output,\n"
                    "log-sum-exp and gradients with a dense float64 softmax under the spec's\n"
                    "mask.  Exit 0 when every relative error is within tolerance, else 1.\n"
                    "Relative error: max |got - ref| / max(max |ref|, 1).",
        epilog="examples:\n"
               "  psparse check \"causal & local(16)\"\n"
               "  psparse check examples/bigbird.psp -n 256 --backend torch\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("-n", type=_int_at_least(1, "n"), metavar="N",
                   help=f"sequence length (default {CHECK_N})")
    p.add_argument("--nq", type=_int_at_least(1, "--nq"), metavar="NQ",
                   help="only the last NQ query rows (decoding)")
    p.add_argument("--backend", choices=["interpret", "torch", "triton"],
                   help="interpret (Triton's interpreter), torch, or triton (CUDA); default: "
                        "triton with a GPU, else interpret")
    p.add_argument("--batch", type=_int_at_least(1, "--batch"), default=1, metavar="B",
                   help="batch size (default 1)")
    p.add_argument("--heads", type=_int_at_least(1, "--heads"), metavar="H",
                   help="query heads (default 2, or enough for every 'heads' line)")
    p.add_argument("--kv-heads", type=_int_at_least(1, "--kv-heads"), metavar="HKV",
                   help="key/value heads, dividing --heads (default: --heads)")
    p.add_argument("--layer", type=_int_at_least(0, "--layer"), metavar="L",
                   help="the layer to check (specs with 'layers' lines; default 0)")
    p.add_argument("--doc-ids", type=_doc_ids, metavar="IDS",
                   help="document of each position (default for 'document': random documents)")
    p.add_argument("--seed", type=_int_at_least(0, "--seed"), default=0, metavar="S",
                   help="seed of the random inputs (default 0)")
    p.add_argument("--tolerance", type=float, metavar="TOL",
                   help="largest relative error accepted (default: 1e-5 for fp32, 1e-2 fp16, "
                        "5e-2 bf16)")
    _add_tile_options(p, dtype_default="fp32")
    return p


def _default_heads(spec) -> int:
    """2, or enough query heads for every 'heads' line to govern at least one."""
    need = 2
    for rule in spec.canonical_ir.rules:
        if rule.heads is not None:
            top = rule.heads.stop if rule.heads.stop is not None else rule.heads.start + 1
            need = max(need, top)
    return min(need, 64)


def _run_check(args, parser, out) -> int:
    import patterndsl

    n = args.n or (len(args.doc_ids) if args.doc_ids is not None else CHECK_N)
    if args.doc_ids is not None and len(args.doc_ids) != n:
        parser.error(f"--doc-ids gives {len(args.doc_ids)} positions but -n gives {n}")
    nq = args.nq or n
    if nq > n:
        parser.error(f"--nq {nq} is more query rows than the {n} positions")
    spec = _parse(read_spec(args.spec))
    _static(spec)
    heads = args.heads or _default_heads(spec)
    kv_heads = args.kv_heads or heads
    if heads % kv_heads:
        parser.error(f"--heads {heads} is not a multiple of --kv-heads {kv_heads}")
    torch = _import_torch()
    backend = args.backend or ("triton" if torch.cuda.is_available() else "interpret")
    if backend == "triton" and not torch.cuda.is_available():
        raise CliError("--backend triton needs a CUDA GPU; on this machine use --backend "
                       "interpret (the same kernels under Triton's interpreter) or torch")
    device = "cuda" if backend == "triton" else "cpu"
    dtype_name = DTYPES[args.dtype]
    dtype = getattr(torch, dtype_name)
    D = args.head_dim or 32
    tol = args.tolerance if args.tolerance is not None else CHECK_TOLERANCE[dtype_name]
    layer = args.layer or 0
    opts = _tile_options(args)
    opts["dtype"] = dtype
    attn = patterndsl.compile(spec, backend=backend, **opts)

    g = torch.Generator().manual_seed(args.seed)
    B = args.batch
    doc = None
    if spec.needs_doc_ids:
        if args.doc_ids is not None:
            doc = torch.tensor(args.doc_ids, dtype=torch.int64)
        else:  # a few documents of random lengths, in order
            doc = torch.sort(torch.randint(0, 4, (n,), generator=g)).values
    q, k, v, dout = (torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
                     for shape in ((B, heads, nq, D), (B, kv_heads, n, D), (B, kv_heads, n, D),
                                   (B, heads, nq, D)))
    mask = spec.mask(n, nq=nq, num_heads=heads if spec.has_heads else None,
                     layer=layer if spec.has_layers else None, doc_ids=doc)
    # The float64 reference runs where the kernels do (n x n scores are slow on a CPU).
    ref = _dense_reference(torch, *(t.to(device) for t in (q, k, v, dout, mask)))

    qd, kd, vd = (t.to(device).requires_grad_(True) for t in (q, k, v))
    got_out, got_lse = attn(qd, kd, vd, doc_ids=None if doc is None else doc.to(device),
                            layer=layer, return_lse=True)
    got_out.backward(dout.to(device))
    got = dict(out=got_out, lse=got_lse, dq=qd.grad, dk=kd.grad, dv=vd.grad)

    out.write(f"check   {'; '.join(spec.canonical().splitlines())}\n"
              f"inputs  n = {n}" + (f", nq = {nq}" if nq < n else "") +
              f", batch {B}, heads {heads} (kv {kv_heads}), head_dim {D}, {dtype_name}" +
              (f", layer {layer}" if spec.has_layers else "") + f"; backend {backend}\n")
    seen = {}
    for h in range(heads):
        rule = spec.canonical_ir.rule_for(h, layer)
        if rule is not None and id(rule) not in seen:
            seen[id(rule)] = h
    for rule_id, h in seen.items():
        plan = attn.plan(n, head=h, layer=layer, nq=nq, doc_ids=doc, head_dim=D)
        who = f"heads like {h}: " if len(seen) > 1 else ""
        out.write(f"plan    {who}work ratio {plan.work_ratio:.3f} ({plan.executed_pairs:,} pairs "
                  f"computed for {plan.allowed_pairs:,} allowed, {len(plan.parts)} "
                  f"part{'s' if len(plan.parts) != 1 else ''})\n")
    out.write(f"\n{'':<6}{'max abs error':>15}{'max rel error':>15}\n")
    failed = []
    for name in ("out", "lse", "dq", "dk", "dv"):
        abs_err, rel_err = _errors(torch, got[name], ref[name])
        out.write(f"{name:<6}{abs_err:>15.3e}{rel_err:>15.3e}\n")
        if not rel_err <= tol:  # NaN fails too
            failed.append(f"{name} ({rel_err:.3e})")
    if failed:
        out.flush()
        raise CliError(f"the compiled kernels ({backend}) disagree with the dense reference: "
                       f"relative error above {tol:g} in {', '.join(failed)}")
    out.write(f"\nok: every relative error is within {tol:g}\n")
    return EXIT_OK


def _dense_reference(torch, q, k, v, dout, mask):
    """Softmax attention in float64 under ``mask`` (``[nq, n]`` or ``[H, nq, n]``): output,
    natural-log log-sum-exp (-inf on rows with no allowed key) and the gradients of
    ``(out * dout).sum()``; rows with no allowed key give 0 and zero gradients."""
    qd, kd, vd = (t.detach().to(torch.float64).requires_grad_(True) for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    kr, vr = kd.repeat_interleave(g, 1), vd.repeat_interleave(g, 1)
    m = mask.to(torch.bool)
    while m.dim() < 4:
        m = m.unsqueeze(0)
    s = (qd @ kr.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~m, float("-inf"))
    empty = ~m.any(-1, keepdim=True)
    # Rows with no allowed key: a finite stand-in keeps logsumexp's gradient finite; their
    # probabilities are still exp(-inf) = 0.
    lse = torch.logsumexp(s.masked_fill(empty, 0.0), -1, keepdim=True)
    o = torch.exp(s - lse) @ vr
    (o * dout.to(torch.float64)).sum().backward()
    lse = lse.squeeze(-1).masked_fill(empty.squeeze(-1), float("-inf"))
    return dict(out=o.detach(), lse=lse.detach(), dq=qd.grad, dk=kd.grad, dv=vd.grad)


def _errors(torch, got, ref) -> tuple[float, float]:
    """(max abs error, max abs error / max(max |ref|, 1)); infinities must match exactly
    (infinite error otherwise), NaN is an infinite error."""
    if got is None:
        return float("inf"), float("inf")
    got = got.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if got.shape != ref.shape:
        return float("inf"), float("inf")
    if bool(torch.isnan(got).any()):
        return float("nan"), float("nan")
    inf_r, inf_g = torch.isinf(ref), torch.isinf(got)
    if not torch.equal(inf_r, inf_g) or not torch.equal(got[inf_g], ref[inf_r]):
        return float("inf"), float("inf")
    finite = ~inf_r
    if not bool(finite.any()):
        return 0.0, 0.0
    diff = float((got[finite] - ref[finite]).abs().max())
    scale = max(float(ref[finite].abs().max()), 1.0)
    return diff, diff / scale


# ---------------------------------------------------------------------------
# dump
# ---------------------------------------------------------------------------

def _dump_tree(source: SpecSource) -> str:
    from .parser import parse_tree
    return parse_tree(source.text).pretty()


def _dump_ir(source: SpecSource) -> str:
    from .lower import lower
    from .parser import parse_tree
    return format_ir(lower(parse_tree(source.text), source.text)) + "\n"


def _dump_canonical(source: SpecSource) -> str:
    return _parse(source).canonical().rstrip("\n") + "\n"


# Stage name -> (one-line description, function from the spec to the text printed).
DUMP_STAGES: dict[str, tuple[str, Callable[[SpecSource], str]]] = {
    "tree": ("the parse tree of the grammar", _dump_tree),
    "ir": ("the typed IR as written (lets substituted, defaults filled in)", _dump_ir),
    "canonical": ("the canonical spec text every later stage starts from", _dump_canonical),
    "plan": ("the block plan: parts, views, tiles, runs, work ratio, layout", _dump_plan),
    "kernel": ("the generated Triton kernels of one part's predicate", _dump_kernel),
    "module": ("the self-contained module that psparse compile writes", _dump_module),
}


def _add_dump(sub) -> argparse.ArgumentParser:
    stages = "\n".join(f"  {name:<10} {desc}" for name, (desc, _) in DUMP_STAGES.items())
    p = sub.add_parser(
        "dump", help="print a stage of the compiler",
        description="Print what one stage of the compiler makes of the spec.",
        epilog=f"stages:\n{stages}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("--stage", choices=list(DUMP_STAGES), default="canonical",
                   help="which stage to print (default: canonical)")
    g = p.add_argument_group("plan, kernel and module stages")
    g.add_argument("-n", type=_int_at_least(1, "n"), metavar="N",
                   help=f"sequence length of the plan (default: {DUMP_N}, or the number of "
                        "--doc-ids)")
    g.add_argument("--nq", type=_int_at_least(1, "--nq"), metavar="NQ",
                   help="plan only the last NQ query rows (decoding)")
    g.add_argument("--head", type=_int_at_least(0, "--head"), metavar="H",
                   help="the query head whose pattern is planned (specs with 'heads' lines)")
    g.add_argument("--layer", type=_int_at_least(0, "--layer"), metavar="L",
                   help="the layer whose pattern is planned (specs with 'layers' lines)")
    g.add_argument("--doc-ids", type=_doc_ids, metavar="IDS",
                   help="document of each position (needed by 'document')")
    g.add_argument("--part", type=_int_at_least(0, "--part"), metavar="I", default=0,
                   help="kernel stage: the part of the plan whose kernel is printed (default 0)")
    _add_tile_options(g)
    return p


def _run_dump(args, parser, out) -> int:
    _, fn = DUMP_STAGES[args.stage]
    source = read_spec(args.spec)
    # Stages after the front end also read -n, --head, the tile options, ...
    out.write(fn(source, args) if getattr(fn, "takes_args", False) else fn(source))
    return EXIT_OK


def format_ir(node, indent: int = 0, width: int = 88) -> str:
    """The IR as indented dataclass reprs: a node that fits on its line stays on one line,
    a longer one puts each field on a line of its own.  Spans are left out (they are not
    part of a node's value)."""
    from .ir import strip_spans
    return _fmt(strip_spans(node), indent, width)


def _fmt(v, indent: int, width: int, used: int = 0) -> str:
    """``v`` laid out on a line that starts at column ``indent`` and already holds ``used``
    characters after the indent; nested lines are indented four more than their parent."""
    flat = repr(v)
    if indent + used + len(flat) <= width:
        return flat
    pad = " " * (indent + 4)
    if hasattr(v, "__dataclass_fields__"):
        from dataclasses import fields
        parts = [f"{pad}{f.name}={_fmt(getattr(v, f.name), indent + 4, width, len(f.name) + 1)}"
                 for f in fields(v) if f.repr]
        return f"{type(v).__name__}(\n" + ",\n".join(parts) + ",\n" + " " * indent + ")"
    if isinstance(v, tuple) and v:
        parts = [pad + _fmt(x, indent + 4, width) for x in v]
        return "(\n" + ",\n".join(parts) + ",\n" + " " * indent + ")"
    return flat


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    name: str
    add: Callable  # (subparsers) -> ArgumentParser
    run: Callable  # (args, parser, out) -> exit status


COMMANDS: list[Command] = [
    Command("show", _add_show, _run_show),
    Command("dump", _add_dump, _run_dump),
    Command("compile", _add_compile, _run_compile),
    Command("check", _add_check, _run_check),
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="psparse",
        description="psparse: write a sparse attention pattern as a short spec, see exactly\n"
                    "what it means, and compile it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"psparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {c.name: c.add(sub) for c in COMMANDS}
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    """Run ``psparse`` with ``argv`` (default: the process's arguments); returns the exit
    status instead of exiting, except for argparse's own usage errors, help and version,
    which exit as argparse does (2 and 0)."""
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    out = sys.stdout
    prefix = "psparse: error: "
    try:
        return command.run(args, subparsers[args.command], out)
    except PsparseError as e:
        where = _where(args)
        print(prefix + (f"{where}: " if where else "") + str(e) + _not_a_file_note(args),
              file=sys.stderr)
        return EXIT_SPEC
    except CliError as e:
        print(prefix + str(e), file=sys.stderr)
        return EXIT_SPEC
    except PillowMissing as e:
        print(prefix + str(e), file=sys.stderr)
        return EXIT_SPEC
    except MemoryError:
        print(prefix + "out of memory: try a smaller -n", file=sys.stderr)
        return EXIT_SPEC
    except BrokenPipeError:
        # The reader went away (`psparse show ... | head`); nothing more to say.
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("PSPARSE_TRACEBACK"):
            raise
        print(f"psparse: internal error: {type(e).__name__}: {_one_line(e)}\n"
              f"This is a bug in psparse {__version__}. Please report it with the command "
              "you ran (PSPARSE_TRACEBACK=1 shows the traceback).", file=sys.stderr)
        return EXIT_INTERNAL


def _where(args) -> str | None:
    spec = getattr(args, "spec", None)
    if spec is None or spec == "-" or "\n" in spec:
        return "<stdin>" if spec == "-" else None
    return spec if (spec.endswith(".psp") or os.path.isfile(spec)) else None


def _not_a_file_note(args) -> str:
    """A hint when SPEC was read as spec text but was probably meant as a file name."""
    import re
    spec = getattr(args, "spec", None)
    if (spec and spec != "-" and "\n" not in spec and not os.path.exists(spec)
            and re.fullmatch(r"[\w./\\~-]*([/\\]|\.[A-Za-z]\w*$)[\w./\\~-]*", spec)):
        return f"\n(read as spec text: there is no file named {spec!r})"
    return ""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _silence_stdout() -> None:
    # Point stdout at devnull so the interpreter's final flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
