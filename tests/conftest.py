"""Shared pytest setup: the tests folder is importable, so test modules can say
``from strategies import ...`` whichever way pytest was started."""
from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """Many small tensor ops per step (decoding, generate()): one intra-op thread avoids
    thread contention on a busy 2-core box; the previous count is restored afterwards."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_dynamic_chunks(monkeypatch):
    """Small key chunks and block tiles in the dynamic-term estimator, so tests walk many of
    them at test sizes."""
    from patterndsl.dynamic import estimate
    monkeypatch.setattr(estimate, "KEY_CHUNK", 16)
    monkeypatch.setattr(estimate, "BLOCK_TILE_SCORES", 64)
