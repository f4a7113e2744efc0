"""Self-contained kernel modules: ``render_module(spec) -> str``.

The module (templates/module.py.jinja) imports only torch and triton.  It holds the
canonical spec as a string literal; psparse's planner (``patterndsl/plan/runtime.py``, read
from the package and inlined verbatim, so it is never copied by hand); per distinct pattern
of the spec's lines its *plan program* (the canonical expression spelled with the planner's
node classes: class names and validated integers only), one forward/backward kernel pair
whose partial-tile predicate decides which part owns a pair (:mod:`.ownerpred`), the same
predicate as torch code (``mask``) and the parameter binders (index sets, slash offsets and
random tables resolved against the call's ``n``).  Its ``plan`` is therefore the package's
``Spec.plan``, and its ``attention`` launches and merges the same parts.  The same spec
gives byte-identical text.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .. import ir
from ..errors import PsparseUsageError
from .emit import emit
from .ownerpred import owner_predicate
from .render import canonical_text, environment, kernel_name

_FIELDS = {
    ir.All: (), ir.Nothing: (), ir.Causal: (), ir.Document: (),
    ir.Local: ("left", "right"), ir.Block: ("size",), ir.Stride: ("step",),
    ir.Dilated: ("width", "dilation"), ir.Every: ("step", "offset"), ir.Rows: ("index",),
    ir.Cols: ("index",), ir.Global: ("index",), ir.Sink: ("count",), ir.Slash: ("offsets",),
    ir.Prefix: ("length",), ir.Random: ("count", "block", "seed", "causal"),
    ir.Blockwise: ("block", "expr"), ir.Union: ("terms",), ir.Intersect: ("terms",),
    ir.Difference: ("left", "right"),
}


def _literal(x) -> str:
    """A validated value of the IR as Python source: ints, bools, None, index sets, nodes."""
    if x is None or isinstance(x, bool):
        return repr(x)
    if isinstance(x, int):
        return str(int(x))
    if isinstance(x, ir.Slice):
        return f"NODES.Slice({_literal(x.start)}, {_literal(x.stop)}, {_literal(x.step)})"
    if isinstance(x, ir.IndexSet):
        return f"NODES.IndexSet(({''.join(_literal(i) + ', ' for i in x.items)}))"
    if isinstance(x, tuple):
        return f"({''.join(_literal(t) + ', ' for t in x)})"
    if type(x) in _FIELDS:
        args = ", ".join(_literal(getattr(x, f)) for f in _FIELDS[type(x)])
        return f"NODES.{type(x).__name__}({args})"
    raise TypeError(f"not a static pattern value: {x!r}")


def plan_program(expr: ir.Expr) -> str:
    """The plan program of a pattern: its canonical expression as a constructor call over the
    plan runtime's node classes (``NODES.Causal()``...: only class names and validated integers)."""
    return _literal(ir.strip_spans(expr))


@lru_cache(maxsize=1)
def runtime_source() -> str:
    """The planner runtime's text, ready to sit inside a module (its docstring left out)."""
    text = (Path(__file__).resolve().parent.parent / "plan" / "runtime.py").read_text(encoding="utf-8")
    body = text.split('"""', 2)[2]
    body = body.strip("\n")
    return ("# ---- psparse's planner (patterndsl/plan/runtime.py, verbatim) ----------------------\n"
            + body + "\n")


def _selector(sel: ir.Selector | None) -> str:
    if sel is None:
        return "None"
    stop = "None" if sel.stop is None else str(int(sel.stop))
    return f"({int(sel.start)}, {stop}, {int(sel.step)})"


def render_module(spec, **options) -> str:
    """The module text for ``spec`` (a :class:`~patterndsl.spec.Spec` or spec text).

    ``options`` are compiled in: ``head_dim``/``dtype`` become checks every call must pass
    (and choose the tiles), ``block_m``/``block_n`` fix the tile sizes.  Without them the
    module picks tiles per call from the inputs, by psparse's rule."""
    from ..spec import Spec, parse
    from .. import __version__
    from ..modcache import normalize_options
    options = normalize_options(**options)
    if not isinstance(spec, Spec):
        spec = parse(spec)
    env = environment()
    patterns, index_of, rules = [], {}, []
    for rule in spec.canonical_ir.rules:
        expr = ir.strip_spans(rule.expr)
        if expr.is_dynamic:
            raise PsparseUsageError("data-dependent terms (topk) cannot be compiled into a static module")
        if expr not in index_of:
            index_of[expr] = len(patterns)
            pred = owner_predicate(expr)
            torch_pred = emit(expr, dialect="torch")
            # the kernels read the pattern's parameters exactly as the torch predicate does
            assert pred.recipes == torch_pred.recipes and pred.tables == torch_pred.tables
            name = kernel_name(pred)
            ctx = dict(name=name, pred=pred, uses_doc=pred.uses_doc)
            patterns.append(dict(
                name=name,
                canonical_repr=repr(canonical_text(expr)),
                forward=env.get_template("forward.py.jinja").render(**ctx).strip("\n"),
                backward=env.get_template("backward.py.jinja").render(**ctx).strip("\n"),
                torch=torch_pred,
                uses_doc=pred.uses_doc,
                program=plan_program(expr),
            ))
        rules.append((_selector(rule.layers), _selector(rule.heads), index_of[expr]))
    dtype = options.get("dtype")
    return env.get_template("module.py.jinja").render(
        version=__version__, spec_repr=repr(spec.canonical()), patterns=patterns, rules=rules,
        runtime=runtime_source(),
        head_dim=repr(options.get("head_dim")), dtype=f"torch.{dtype}" if dtype else "None",
        block_m=repr(options.get("block_m")), block_n=repr(options.get("block_n")))
