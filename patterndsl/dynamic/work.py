"""Work accounting of a call, dynamic parts included.

``attn.last_work`` (after a forward call) and ``attn.work(q, k)`` return a :class:`Work`:

* ``executed_pairs``: (query, key) pairs the kernels compute, summed over batch elements and
  query heads: a static part's ``Plan.executed_pairs`` (tiles counted whole, clipped to
  valid positions) per (batch, head), plus per table part the valid rows of each query tile
  times the key slots it visits (gathered columns; whole diagonal or block windows);
* ``allowed_pairs``: pairs the pattern allows (``attn.work`` only; ``last_work`` leaves it
  None, since counting the table parts' pairs costs an evaluation of their predicates);
* ``static_executed`` / ``table_executed``: the two shares of ``executed_pairs``;
* ``launches``: parts run (one launch each on the kernel backends, whatever B and H).

During a call the table parts' counts stay tensors on the device; ``last_work`` reads them
when asked, so a call never waits for the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Work", "Tally"]


@dataclass(frozen=True)
class Work:
    executed_pairs: int
    allowed_pairs: int | None
    static_executed: int
    table_executed: int
    launches: int

    @property
    def work_ratio(self) -> float | None:
        if self.allowed_pairs is None:
            return None
        return 1.0 if self.allowed_pairs == 0 else self.executed_pairs / self.allowed_pairs


class Tally:
    def __init__(self):
        self.static = 0
        self.table: list[torch.Tensor] = []
        self.allowed: int | None = None
        self.allowed_tables: list[torch.Tensor] = []
        self.launches = 0

    def add_plan(self, plan, copies: int, allowed: bool = False):
        self.static += plan.executed_pairs * copies
        self.launches += len(plan.parts)
        if allowed:
            self.allowed = (self.allowed or 0) + plan.allowed_pairs * copies

    def add_table(self, tp, tabs, allowed: bool = False, ctx=None):
        self.table.append(tp.executed_pairs(tabs.q_offset, tabs.nq))
        self.launches += 1
        if allowed:
            from ..backends.torch_backend import count_table_part
            self.allowed = self.allowed or 0
            self.allowed_tables.append(count_table_part(tp, tabs, ctx))

    def result(self) -> Work:
        table = int(sum(int(t) for t in self.table))
        allowed = self.allowed
        if allowed is not None:
            allowed += int(sum(int(t) for t in self.allowed_tables))
        return Work(self.static + table, allowed, self.static, table, self.launches)
