"""Retention policies: the keys ``auto``, ``sink(m)``, ``recent(w)`` and ``norm(h)`` keep.

Position terms are decided from positions alone and their kept sets are joined (union,
LANGUAGE.md "Retention").  A policy is built per KV head: ``auto`` keeps what any of that KV
head's query heads may still attend, so it analyses the union of their patterns.

Score terms then pick, in the order written, among the keys nothing before them keeps.
``norm(h)`` / ``norm(h, low=true)`` is implemented: the key L2 norm is the score, decided after
every step like ``heavy`` (the lowest score is evicted, ties evict the earliest position).
``heavy`` and ``snap`` need attention probabilities from the decode kernel and the prompt's
last queries; they are refused with a usage error rather than silently keeping something
else, as is an ``adaptive`` budget over score terms (it shares counts across KV heads when the
prompt ends).  ``pyramid`` reshapes the ``norm`` counts per layer.  Without a ``kv`` line
nothing is evicted.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..budgets import layer_count
from ..errors import PsparseUsageError
from .auto import Reach, analyze

__all__ = ["PositionPolicy", "position_policy", "head_policies", "pick_scores"]


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
    scores: tuple = ()   # ((count, low), ...) of the norm terms, in the order written

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
        return (self.sink + self.recent + (self.auto.bound if self.auto is not None else 0)
                + sum(c for c, _ in self.scores))

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


def position_policy(retention: ir.Retention | None, patterns: list[ir.Expr], *,
                    budget: ir.Budget | None = None, layer: int | None = None,
                    num_layers: int | None = None) -> PositionPolicy:
    """The policy of ``retention`` for a KV head whose query heads use ``patterns``."""
    if retention is None:
        return PositionPolicy(0, 0, None, keep_all=True)
    sink = recent = 0
    auto = False
    scores = []
    for t in retention.terms:
        if isinstance(t, ir.KvNorm):
            if isinstance(budget, ir.Adaptive):
                raise PsparseUsageError(
                    "an adaptive budget over norm(...) is not implemented by this cache; "
                    "use uniform or pyramid")
            scores.append((layer_count(t.count, budget, layer, num_layers), t.low))
            continue
        if isinstance(t, ir.KvSink):
            sink = max(sink, t.count)
        elif isinstance(t, ir.KvRecent):
            recent = max(recent, t.count)
        elif isinstance(t, ir.KvAuto):
            auto = True
        else:
            name = {ir.KvHeavy: "heavy", ir.KvSnap: "snap"}[type(t)]
            raise PsparseUsageError(
                f"kv = ... uses {name}, a score-based term this cache does not implement; "
                "use position terms (auto, sink, recent) and norm(...)")
    reach = None
    if auto:
        expr = patterns[0] if len(patterns) == 1 else ir.Union(tuple(patterns))
        reach = analyze(expr)
    return PositionPolicy(sink, recent, reach, scores=tuple(scores))


def head_policies(program: ir.Program, num_heads: int, num_kv_heads: int,
                  layer: int | None = None, num_layers: int | None = None) -> list[PositionPolicy]:
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
        out.append(position_policy(program.kv, patterns, budget=program.budget, layer=layer,
                                   num_layers=num_layers))
    return out


def pick_scores(scores: tuple, positions, norms):
    """bool like ``positions [C]``: the candidates the score terms keep.  Each term in turn
    keeps its ``count`` best among the candidates no earlier term took; best is the largest
    norm (smallest with ``low``), and a tie keeps the later position (ties evict the earliest)."""
    import torch

    taken = torch.zeros_like(positions, dtype=torch.bool)
    if not scores or positions.numel() == 0:
        return taken
    by_pos = torch.sort(positions, descending=True, stable=True).indices
    for count, low in scores:
        key = (-norms if low else norms)[by_pos]
        order = by_pos[torch.sort(key, descending=True, stable=True).indices]
        free = order[~taken[order]]
        taken[free[:count]] = True
    return taken
