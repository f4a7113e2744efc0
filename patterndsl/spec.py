"""The user-facing :class:`Spec`: a parsed, validated, canonicalised spec.

``parse(text)`` runs the front end (grammar -> tree -> IR -> canonical IR) and
returns a Spec, which then answers questions about its meaning: the canonical
text, the reference mask, and (in later stages) plans and kernels.
"""
from __future__ import annotations

from functools import cached_property

from . import ir
from .errors import PsparseSyntaxError, PsparseUsageError


class Spec:
    """A compiled-front-end spec. ``ir`` is the program as written (lets inlined), ``canonical_ir``
    the optimised equivalent every later stage uses."""

    def __init__(self, source: str, program: ir.Program, canonical_program: ir.Program):
        self.source = source
        self.ir = program
        self.canonical_ir = canonical_program

    # -- text ---------------------------------------------------------------
    def canonical(self) -> str:
        from .printer import to_text
        return to_text(self.canonical_ir)

    def __repr__(self) -> str:
        return f"Spec({self.canonical()!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Spec) and self.canonical_ir == other.canonical_ir

    def __hash__(self) -> int:
        return hash(self.canonical_ir)

    # -- structure ----------------------------------------------------------
    @property
    def has_heads(self) -> bool:
        return self.canonical_ir.has_heads

    @property
    def has_layers(self) -> bool:
        return self.canonical_ir.has_layers

    @cached_property
    def is_dynamic(self) -> bool:
        return any(r.expr.is_dynamic for r in self.canonical_ir.rules)

    @cached_property
    def needs_doc_ids(self) -> bool:
        return any(r.expr.needs_doc_ids for r in self.canonical_ir.rules)

    def pattern(self, head: int | None = None, layer: int | None = None) -> ir.Expr:
        """The canonical expression that governs query head ``head`` of layer ``layer``."""
        rule = self.canonical_ir.rule_for(head, layer)
        if rule is None:
            where = []
            if layer is not None:
                where.append(f"layer {layer}")
            if head is not None:
                where.append(f"head {head}")
            if self.has_heads and head is None:
                raise PsparseUsageError(
                    "this spec has 'heads' lines, so the head must be given (num_heads= or head=)")
            raise PsparseUsageError(
                f"no line of the spec covers {' '.join(where) or 'the default pattern'}; "
                "add a default pattern or a line that covers it")
        return rule.expr

    # -- meaning ------------------------------------------------------------
    def mask(self, n: int, *, nq: int | None = None, q_offset: int | None = None,
             num_heads: int | None = None, layer: int | None = None, doc_ids=None,
             q=None, k=None, scale: float | None = None, num_layers: int | None = None):
        """The reference boolean mask of LANGUAGE.md: ``[nq, n]``, ``[num_heads, nq, n]`` when
        ``num_heads`` is given, with a leading batch dimension when ``doc_ids`` has one or
        ``q``/``k`` are given."""
        from .reference import program_mask
        return program_mask(self.canonical_ir, n, nq=nq, q_offset=q_offset, num_heads=num_heads,
                            layer=layer, doc_ids=doc_ids, q=q, k=k, scale=scale,
                            num_layers=num_layers)

    def plan(self, n: int, *, nq: int | None = None, q_offset: int | None = None, head: int | None = 0,
             layer: int | None = 0, head_dim: int = 128, dtype=None, block_m: int | None = None,
             block_n: int | None = None, doc_ids=None):
        """The block plan for length ``n`` (docs/PLAN.md): ``nq`` query rows at ``q_offset``
        (default ``n - nq``), the pattern of query head ``head`` in layer ``layer``, tiles
        chosen for ``head_dim`` and ``dtype`` (``None``: ``torch.bfloat16``; the default is
        spelled None so that importing psparse does not import torch) unless ``block_m`` /
        ``block_n`` force them, ``doc_ids`` ``[n]`` for ``document``.  Cached per (pattern,
        n, options)."""
        from .plan import build_plan
        options = {} if dtype is None else {"dtype": dtype}
        return build_plan(self, n, nq=nq, q_offset=q_offset, head=head, layer=layer, head_dim=head_dim,
                          block_m=block_m, block_n=block_n, doc_ids=doc_ids, **options)


def parse(text) -> Spec:
    """Parse spec text (a one-line expression or a file of statements) into a :class:`Spec`.

    Raises :class:`~patterndsl.errors.PsparseError` for anything malformed."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise PsparseSyntaxError(f"the spec is not valid UTF-8 text (byte {e.start})") from None
    if not isinstance(text, str):
        raise PsparseUsageError(f"a spec is text, not {type(text).__name__}")
    from .parser import gc_paused, parse_tree
    from .lower import lower
    from .passes import canonicalize
    # One pause of the cyclic collector for the whole front end (each stage also pauses it
    # on its own): a collection between stages would scan every token and tree node just
    # made, and the tree is freed by reference counting before the collector runs again.
    with gc_paused():
        tree = parse_tree(text)
        program = lower(tree, text)
        del tree
        return Spec(text, program, canonicalize(program))
