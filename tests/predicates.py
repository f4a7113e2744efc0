"""Torch-dialect predicates (``emit(..., dialect="torch")`` and ``owner_predicate``) as Python
functions, so tests can evaluate the very formulas the kernels are generated from."""
from __future__ import annotations

import torch


def torch_function(pred, params: str):
    """``pred`` (setup, body and result lines) as ``def f(<params>)``."""
    lines = [f"def f({params}):"] + [f"    {x}" for x in pred.setup + pred.body] \
        + [f"    return {pred.result}"]
    env = {"torch": torch}
    exec("\n".join(lines), env)
    return env["f"]
