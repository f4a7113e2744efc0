"""Budget arithmetic (LANGUAGE.md "Budgets"), shared by dynamic terms and retention.

A budget reshapes a score-based count ``h``: ``pyramid`` changes it per layer,
``adaptive`` moves it between heads.  Selection order everywhere is the best
score first, ties to the smaller position, then (across heads) the smaller head.
"""
from __future__ import annotations

from . import ir
from .errors import PsparseUsageError


def pyramid_count(h: int, layer: int, num_layers: int, beta: float) -> int:
    """The count layer ``layer`` of ``num_layers`` uses under ``pyramid(beta)``."""
    if num_layers < 1 or not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} is not one of the {num_layers} layers")
    if num_layers == 1:
        return h
    lo = h / beta
    hi = 2 * h - lo
    # Evaluated in the order LANGUAGE.md writes it, so float rounding (and Python's
    # round-half-to-even) match every other place that implements the formula.
    return round(lo + (hi - lo) * (num_layers - 1 - layer) / (num_layers - 1))


def layer_count(h: int, budget: ir.Budget | None, layer: int | None, num_layers: int | None) -> int:
    """``h`` after the per-layer part of ``budget`` (only ``pyramid`` has one)."""
    if isinstance(budget, ir.Pyramid):
        if layer is None or num_layers is None:
            raise PsparseUsageError(
                "this spec has a pyramid budget over score-based counts: pass layer= and num_layers=")
        if not 0 <= layer < num_layers:
            raise PsparseUsageError(f"layer={layer} is outside num_layers={num_layers}")
        return pyramid_count(h, layer, num_layers, budget.beta)
    return h


def _order_ranks(key, eligible):
    """Rank (0 = first) of each entry along the last dim: eligible entries first, then by
    ``key`` descending, ties to the smaller index; a stable sort gives exactly that."""
    import torch

    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    demote = (~eligible).gather(-1, order).to(torch.int8)
    order = order.gather(-1, torch.sort(demote, dim=-1, stable=True).indices)
    ranks = torch.empty_like(order)
    idx = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return ranks.scatter_(-1, order, idx.contiguous())


def top_mask(scores, h: int, valid=None):
    """``bool`` like ``scores [..., C]``: the ``h`` best valid entries of each row
    (largest score, ties to the smaller index); all valid ones when fewer."""
    import torch

    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    valid = valid.expand_as(scores)
    if h >= scores.shape[-1]:
        return valid.clone()
    return valid & (_order_ranks(scores, valid) < h)


def adaptive_split(scores, h: int, floor: float, valid=None):
    """``adaptive(floor)`` over ``scores [..., H, C]`` (one group per leading index).

    Each head first takes its ``round(floor * h)`` best valid entries; the other
    ``h * H - sum(first)`` go to the best valid entries left across all ``H`` heads,
    ties to the smaller position, then the smaller head.  Returns ``bool [..., H, C]``."""
    import torch

    if not 0 <= floor <= 1:
        raise ValueError(f"adaptive floor must be in [0, 1], not {floor}")
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    valid = valid.expand_as(scores)
    *lead, heads, cands = scores.shape
    if h >= cands:
        # Even the first round alone, or the shared rest, covers every candidate.
        return valid.clone()
    first = top_mask(scores, round(floor * h), valid)
    left = h * heads - first.sum(dim=(-2, -1))
    # Position-major flattening makes the stable sort break ties by position, then head.
    flat = scores.transpose(-2, -1).reshape(*lead, cands * heads)
    eligible = (valid & ~first).transpose(-2, -1).reshape(*lead, cands * heads)
    extra = eligible & (_order_ranks(flat, eligible) < left.unsqueeze(-1))
    return first | extra.reshape(*lead, cands, heads).transpose(-2, -1)
