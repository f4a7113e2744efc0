"""Position retention policies: the keys ``auto``, ``sink(m)`` and ``recent(w)`` keep.

Position terms are decided from positions alone and their kept sets are joined (union,
LANGUAGE.md "Retention").  A policy is built per KV head: ``auto`` keeps what any of that KV
head's query heads may still attend, so it analyses the union of their patterns.

Score terms (``heavy``, ``snap``, ``norm``) need per-step attention probabilities or key
norms; this module does not implement them and refuses them with a usage error rather than
silently keeping something else.  Without a ``kv`` line nothing is evicted.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..errors import PsparseUsageError
from .auto import Reach, analyze

__all__ = ["PositionPolicy", "position_policy", "head_policies"]


@dataclass(frozen=True)
class PositionPolicy:
    """What one KV head keeps at logical length ``n``.

    ``bound``: the most keys kept at any ``n`` (``None``: grows with the context);
    ``why``: for an unbounded policy, the term that keeps keys forever;
    ``exact``: ``auto``'s part is exactly the needed set (always a superset)."""

    sink: int
    recent: int
    auto: Reach | None
    keep_all: bool = False

    def keep(self, k, n: int):
        """bool like ``k`` (int64 positions ``< n``): the stored keys to keep."""
        if self.keep_all:
            return k == k
        m = (k < self.sink) | (k >= n - self.recent)
        if self.auto is not None:
            m = m | self.auto.keep(k, n)
        return m

    @property
    def bound(self) -> int | None:
        if self.keep_all or (self.auto is not None and self.auto.bound is None):
            return None
        return self.sink + self.recent + (self.auto.bound if self.auto is not None else 0)

    @property
    def why(self) -> str:
        if self.keep_all:
            return "no kv line: the cache keeps every key"
        if self.auto is not None and self.auto.bound is None:
            return f"auto keeps every key that stays reachable under {self.auto.why}"
        return ""

    @property
    def exact(self) -> bool:
        return self.auto is None or self.auto.exact


def position_policy(retention: ir.Retention | None, patterns: list[ir.Expr]) -> PositionPolicy:
    """The policy of ``retention`` for a KV head whose query heads use ``patterns``."""
    if retention is None:
        return PositionPolicy(0, 0, None, keep_all=True)
    sink = recent = 0
    auto = False
    for t in retention.terms:
        if isinstance(t, ir.KvSink):
            sink = max(sink, t.count)
        elif isinstance(t, ir.KvRecent):
            recent = max(recent, t.count)
        elif isinstance(t, ir.KvAuto):
            auto = True
        else:
            name = {ir.KvHeavy: "heavy", ir.KvSnap: "snap", ir.KvNorm: "norm"}[type(t)]
            raise PsparseUsageError(
                f"kv = ... uses {name}, a score-based term this cache does not implement; "
                "use position terms (auto, sink, recent)")
    reach = None
    if auto:
        expr = patterns[0] if len(patterns) == 1 else ir.Union(tuple(patterns))
        reach = analyze(expr)
    return PositionPolicy(sink, recent, reach)


def head_policies(program: ir.Program, num_heads: int, num_kv_heads: int,
                  layer: int | None = None) -> list[PositionPolicy]:
    """One policy per KV head of ``layer`` (query head ``h`` uses KV head
    ``h // (num_heads // num_kv_heads)``)."""
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise PsparseUsageError(
            f"the {num_heads} query heads must be a multiple of the {num_kv_heads} KV heads")
    group = num_heads // num_kv_heads
    out = []
    for kvh in range(num_kv_heads):
        patterns = []
        for h in range(kvh * group, (kvh + 1) * group):
            rule = program.rule_for(h if program.has_heads else None, layer)
            if rule is None:
                where = " ".join(x for x in (f"layer {layer}" if layer is not None else "",
                                             f"head {h}") if x)
                raise PsparseUsageError(f"no line of the spec covers {where}")
            if rule.expr not in patterns:
                patterns.append(rule.expr)
        out.append(position_policy(program.kv, patterns))
    return out
