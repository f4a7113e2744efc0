"""Retention policies: what ``auto``, ``sink(m)``, ``recent(w)``, ``heavy(h)``, ``snap(h)`` and
``norm(h)`` keep (LANGUAGE.md "Retention"), one policy per (layer, KV head).

Position terms are decided from positions alone and their kept sets are joined.  ``auto``
keeps what any of the KV head's query heads may still attend, so it analyses the union of
their patterns.  Score terms then pick, in the order written, among the keys nothing before
them keeps (ties evict the earliest position):

- ``norm(h)``: the key L2 norm, decided after every step;
- ``heavy(h)`` (H2O): the attention probability a key received, accumulated by the cache
  from the decode kernel's fused output (and the prompt's queries), decided after each step;
- ``snap(h, window, pool)`` (SnapKV): decided once when the prompt ends from the pooled
  attention of the prompt's last ``window`` queries; every later key is kept, so the policy
  has no bound.

Budgets reshape the score counts: ``pyramid`` per layer (here), ``adaptive`` per batch element
and KV head when the prompt ends (the cache does that; ``ScoreTerm.most`` is the largest count
one head can get, what storage is sized for).  Without a ``kv`` line nothing is evicted.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..budgets import layer_count
from ..errors import PsparseUsageError
from .auto import Reach, analyze

__all__ = ["PositionPolicy", "ScoreTerm", "position_policy", "head_policies", "pick_scores",
           "best"]


@dataclass(frozen=True)
class ScoreTerm:
    """One score term: ``kind`` is "norm", "heavy" or "snap"; ``count`` after ``pyramid``;
    ``most``: the largest count a head can get (``count`` unless the budget is adaptive)."""

    kind: str
    count: int
    most: int
    low: bool = False
    window: int = 32
    pool: int = 7


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
    terms: tuple = ()    # every score term (ScoreTerm), in the order written
    adaptive: float | None = None   # the adaptive budget's floor, if any

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
        if any(t.kind == "snap" for t in self.terms):
            return None
        return (self.sink + self.recent + (self.auto.bound if self.auto is not None else 0)
                + sum(t.most for t in self.terms))

    @property
    def why(self) -> str:
        if self.keep_all:
            return "no kv line: the cache keeps every key"
        if self.auto is not None and self.auto.bound is None:
            return f"auto keeps every key that stays reachable under {self.auto.why}"
        if any(t.kind == "snap" for t in self.terms):
            return "snap keeps every key generated after the prompt"
        return ""

    @property
    def heavy(self) -> bool:
        return any(t.kind == "heavy" for t in self.terms)

    @property
    def needs_attention(self) -> bool:
        """Some term scores keys by attention (heavy, snap): the prompt's queries are needed."""
        return any(t.kind in ("heavy", "snap") for t in self.terms)

    @property
    def exact(self) -> bool:
        return self.auto is None or self.auto.exact


def position_policy(retention: ir.Retention | None, patterns: list[ir.Expr], *,
                    budget: ir.Budget | None = None, layer: int | None = None,
                    num_layers: int | None = None, num_kv_heads: int = 1) -> PositionPolicy:
    """The policy of ``retention`` for a KV head whose query heads use ``patterns``
    (``num_kv_heads``: the heads an adaptive budget shares counts across)."""
    if retention is None:
        return PositionPolicy(0, 0, None, keep_all=True)
    sink = recent = 0
    auto = False
    terms = []
    floor = budget.floor if isinstance(budget, ir.Adaptive) else None
    for t in retention.terms:
        if isinstance(t, ir.SCORE_KV_TYPES):
            count = layer_count(t.count, budget, layer, num_layers)
            most = count
            if floor is not None:
                # every other head keeps its first round(floor * h); this one may take the rest
                most = count * num_kv_heads - (num_kv_heads - 1) * round(floor * count)
            if isinstance(t, ir.KvNorm):
                terms.append(ScoreTerm("norm", count, most, low=t.low))
            elif isinstance(t, ir.KvHeavy):
                terms.append(ScoreTerm("heavy", count, most))
            else:
                terms.append(ScoreTerm("snap", count, most, window=t.window, pool=t.pool))
        elif isinstance(t, ir.KvSink):
            sink = max(sink, t.count)
        elif isinstance(t, ir.KvRecent):
            recent = max(recent, t.count)
        elif isinstance(t, ir.KvAuto):
            auto = True
    if auto and terms:
        raise PsparseUsageError(
            f"kv = ... puts {terms[0].kind}(...) beside auto: auto already keeps every key the "
            "pattern allows; use sink/recent with score terms, or auto alone")
    reach = None
    if auto:
        expr = patterns[0] if len(patterns) == 1 else ir.Union(tuple(patterns))
        reach = analyze(expr)
    scores = tuple((t.count, t.low) for t in terms if t.kind == "norm")
    return PositionPolicy(sink, recent, reach, scores=scores, terms=tuple(terms), adaptive=floor)


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
                                   num_layers=num_layers, num_kv_heads=num_kv_heads))
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


def best(score, candidates, count: int):
    """bool like ``candidates``: the ``count`` candidates with the largest ``score``, ties
    keeping the later slot (slots are in position order, so ties evict the earliest)."""
    import torch

    taken = torch.zeros_like(candidates)
    idx = candidates.nonzero().flatten()
    if count <= 0 or idx.numel() == 0:
        return taken
    if idx.numel() <= count:
        taken[idx] = True
        return taken
    rev = idx.flip(0)
    order = torch.sort(score[rev], descending=True, stable=True).indices
    taken[rev[order[:count]]] = True
    return taken
