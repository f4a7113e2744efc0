"""Checking the integer arguments of calls (not of specs: the front end checks those)."""
from __future__ import annotations

import operator

from .errors import PsparseUsageError


def checked_int(name: str, value, low: int):
    """``value`` as a Python int >= ``low`` (numpy and torch integers accepted)."""
    try:
        value = operator.index(value)
    except TypeError:
        raise PsparseUsageError(f"{name} must be an integer, not {value!r}") from None
    if value < low:
        raise PsparseUsageError(f"{name} must be >= {low}, not {value}")
    return value
