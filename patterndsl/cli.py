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
    return p


def _run_dump(args, parser, out) -> int:
    _, fn = DUMP_STAGES[args.stage]
    out.write(fn(read_spec(args.spec)))
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
