"""Where the grammar and templates live, installed or in a source checkout."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """``grammar`` or ``templates``: inside the package in a wheel, beside it in a checkout."""
    for candidate in (_HERE / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"psparse is installed without its {name}/ folder")
