"""psparse: a compiler for sparse attention patterns."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (PsparseError, PsparseSemanticError, PsparseSyntaxError,  # noqa: E402
                     PsparseUsageError)
from .spec import Spec, parse  # noqa: E402

# `compile` and `CompiledPattern` stay out of __all__: a star import would load torch (and
# shadow the builtin compile).
__all__ = ["__version__", "parse", "Spec", "PsparseError", "PsparseSyntaxError",
           "PsparseSemanticError", "PsparseUsageError"]


def __getattr__(name):
    # The attention runtime imports torch; loading it on first use keeps `import patterndsl`
    # (and the front end) free of torch.
    if name in ("compile", "CompiledPattern"):
        from . import attention
        return getattr(attention, name)
    raise AttributeError(f"module 'patterndsl' has no attribute {name!r}")
