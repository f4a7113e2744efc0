"""Shared pytest setup: the tests folder is importable, so test modules can say
``from strategies import ...`` whichever way pytest was started."""
from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
