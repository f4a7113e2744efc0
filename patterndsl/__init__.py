"""psparse: a compiler for sparse attention patterns."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (PsparseError, PsparseSemanticError, PsparseSyntaxError,  # noqa: E402
                     PsparseUsageError)
from .spec import Spec, parse  # noqa: E402

__all__ = ["__version__", "parse", "Spec", "PsparseError", "PsparseSyntaxError",
           "PsparseSemanticError", "PsparseUsageError"]
