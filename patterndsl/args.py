"""Checking the integer arguments of calls (not of specs: the front end checks those)."""
from __future__ import annotations

import operator

from .errors import PsparseUsageError


def checked_int(name: str, value, low: int):
    """``value`` as a Python int >= ``low`` (numpy and torch integers accepted, bools not)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise PsparseUsageError(f"{name} must be an integer, not {value!r}") from None
    if value < low:
        raise PsparseUsageError(f"{name} must be >= {low}, not {value}")
    return value


def query_rows(n: int, nq, q_offset) -> tuple[int, int]:
    """``(nq, q_offset)`` of a call over ``n`` positions: ``nq`` defaults to ``n`` and the rows
    sit bottom-right (``q_offset = n - nq``) unless placed explicitly; every row must lie in
    ``[0, n)``."""
    nq = n if nq is None else checked_int("nq", nq, 0)
    if nq > n:
        raise PsparseUsageError(f"nq={nq} query rows do not fit in n = {n} positions")
    offset = n - nq if q_offset is None else checked_int("q_offset", q_offset, 0)
    if offset + nq > n:
        raise PsparseUsageError(
            f"q_offset={offset} puts query rows outside [0, n = {n}): need q_offset <= n - nq = {n - nq}")
    return nq, offset
