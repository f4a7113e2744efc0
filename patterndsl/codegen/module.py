"""Self-contained kernel modules: ``render_module(spec) -> str``.

The module (templates/module.py.jinja) imports only torch and triton.  It holds the
canonical spec as a string literal, one forward/backward kernel pair per distinct pattern
of the spec's lines, the same predicates as torch code (``mask``), the parameter binders
(index sets, slash offsets and random tables resolved against the call's ``n``, from
recipes emitted alongside the predicates) and a tile-scan plan builder.  The same spec
gives byte-identical text.
"""
from __future__ import annotations

from .. import ir
from ..errors import PsparseUsageError
from .emit import emit
from .render import canonical_text, environment, kernel_name


def _selector(sel: ir.Selector | None) -> str:
    if sel is None:
        return "None"
    stop = "None" if sel.stop is None else str(int(sel.stop))
    return f"({int(sel.start)}, {stop}, {int(sel.step)})"


def render_module(spec, **options) -> str:
    """The module text for ``spec`` (a :class:`~patterndsl.spec.Spec` or spec text).

    ``options`` are compiled in: ``head_dim``/``dtype`` become checks every call must pass
    (and choose the tiles), ``block_m``/``block_n`` fix the tile sizes.  Without them the
    module picks tiles per call from the inputs."""
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
            pred = emit(expr)
            name = kernel_name(pred)
            ctx = dict(name=name, pred=pred, uses_doc=pred.uses_doc)
            patterns.append(dict(
                name=name,
                canonical_repr=repr(canonical_text(expr)),
                forward=env.get_template("forward.py.jinja").render(**ctx).strip("\n"),
                backward=env.get_template("backward.py.jinja").render(**ctx).strip("\n"),
                torch=emit(expr, dialect="torch"),
                uses_doc=pred.uses_doc,
            ))
        rules.append((_selector(rule.layers), _selector(rule.heads), index_of[expr]))
    dtype = options.get("dtype")
    return env.get_template("module.py.jinja").render(
        version=__version__, spec_repr=repr(spec.canonical()), patterns=patterns, rules=rules,
        head_dim=repr(options.get("head_dim")), dtype=f"torch.{dtype}" if dtype else "None",
        block_m=repr(options.get("block_m")), block_n=repr(options.get("block_n")))
