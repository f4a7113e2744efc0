"""Template rendering: one Jinja environment for every generated source.

Rendering is a pure function of the canonical expression (and the template files): the
same pattern gives byte-identical source, which the kernel cache and the module dumps rely
on.  Templates only branch on flags; the predicate lines come from :mod:`.emit`.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

from .. import ir
from ..resources import resource_dir
from .emit import Predicate, emit


@lru_cache(maxsize=1)
def environment():
    import jinja2
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def canonical_text(expr: ir.Expr) -> str:
    from ..printer import to_text
    return to_text(ir.strip_spans(expr))


def kernel_name(pred: Predicate) -> str:
    """A name derived from the emitted predicate, so equal predicates share a kernel."""
    h = hashlib.sha256("\n".join(pred.setup + pred.body + (pred.result,)).encode()).hexdigest()
    return f"psparse_{h[:16]}"


@lru_cache(maxsize=256)
def kernel_source(expr: ir.Expr) -> tuple[str, str]:
    """``(name, source)`` of the module holding ``{name}_fwd`` and ``{name}_bwd`` for the
    element predicate ``expr`` (a canonical, static expression)."""
    pred = emit(expr)
    name = kernel_name(pred)
    src = environment().get_template("kernels.py.jinja").render(
        name=name, pred=pred, uses_doc=pred.uses_doc,
        canonical_repr=repr(canonical_text(expr)))
    return name, src


@lru_cache(maxsize=256)
def table_kernel_source(expr: ir.Expr) -> tuple[str, str]:
    """``(name, source)`` of the module holding ``{name}_tfwd`` and ``{name}_tbwd``: the
    kernels of one table part whose element predicate is ``expr`` (which may hold dynamic
    terms, read from the call's tables)."""
    from .emit import emit_dynamic
    pred = emit_dynamic(expr)
    name = kernel_name(pred).replace("psparse_", "psparse_t_", 1)
    src = environment().get_template("kernels_tables.py.jinja").render(
        name=name, pred=pred, canonical_repr=repr(canonical_text(expr)))
    return name, src
