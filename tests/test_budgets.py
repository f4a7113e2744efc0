"""Budget arithmetic: pyramid counts and the adaptive split, against hand results and brute force."""
import random

import pytest
import torch

from patterndsl import ir
from patterndsl.budgets import adaptive_split, layer_count, pyramid_count, top_mask
from patterndsl.errors import PsparseUsageError


def test_pyramid_by_hand():
    # h=100, beta=20: lo=5, hi=195; the middle layers hit .5 and round half to even.
    assert [pyramid_count(100, l, 5, 20) for l in range(5)] == [195, 148, 100, 52, 5]
    assert [pyramid_count(4, l, 3, 2) for l in range(3)] == [6, 4, 2]
    assert pyramid_count(37, 0, 1, 20) == 37
    assert pyramid_count(10, 0, 2, 1) == 10 and pyramid_count(10, 1, 2, 1) == 10


def test_pyramid_rejects_bad_layers():
    with pytest.raises(ValueError):
        pyramid_count(10, 3, 3, 2)


def test_layer_count():
    assert layer_count(7, None, None, None) == 7
    assert layer_count(7, ir.Uniform(), 3, None) == 7
    assert layer_count(7, ir.Adaptive(0.5), None, None) == 7
    assert layer_count(4, ir.Pyramid(2.0), 2, 3) == 2
    with pytest.raises(PsparseUsageError, match="num_layers"):
        layer_count(4, ir.Pyramid(2.0), 2, None)
    with pytest.raises(PsparseUsageError):
        layer_count(4, ir.Pyramid(2.0), 5, 3)


def B(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_top_mask_ties_and_overflow():
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert torch.equal(top_mask(s, 2), B([[0, 1, 1, 0, 0]]))
    assert torch.equal(top_mask(s, 0), B([[0, 0, 0, 0, 0]]))
    assert torch.equal(top_mask(s, 99), B([[1, 1, 1, 1, 1]]))
    valid = B([[1, 0, 1, 1, 1]])
    assert torch.equal(top_mask(s, 3, valid), B([[0, 0, 1, 1, 1]]))
    assert torch.equal(top_mask(s, 99, valid), valid)


def test_adaptive_by_hand():
    s = torch.tensor([[9.0, 8.0, 7.0, 6.0], [1.0, 2.0, 0.0, 0.0]])
    # floor 0.5 of h=2: one each first (head 0: 9, head 1: 2), then 8 and 7 from the pool.
    assert torch.equal(adaptive_split(s, 2, 0.5), B([[1, 1, 1, 0], [0, 1, 0, 0]]))
    # floor 1: every head keeps exactly its own two.
    assert torch.equal(adaptive_split(s, 2, 1.0), B([[1, 1, 0, 0], [1, 1, 0, 0]]))
    # floor 0: the four best overall.
    assert torch.equal(adaptive_split(s, 2, 0.0), B([[1, 1, 1, 1], [0, 0, 0, 0]]))


def test_adaptive_ties_position_then_head():
    s = torch.zeros(2, 3)
    assert torch.equal(adaptive_split(s, 1, 0.0), B([[1, 0, 0], [1, 0, 0]]))
    s3 = torch.zeros(3, 2)
    assert torch.equal(adaptive_split(s3, 1, 0.0), B([[1, 0], [1, 0], [1, 0]]))
    assert torch.equal(adaptive_split(torch.zeros(2, 3), 2, 0.0), B([[1, 1, 0], [1, 1, 0]]))


def test_adaptive_gives_a_short_heads_rest_to_others():
    s = torch.tensor([[5.0, 4.0, 3.0], [9.0, 8.0, 7.0]])
    valid = B([[1, 1, 1], [1, 0, 0]])
    # h=2, floor 1: head 1 has one candidate, so its spare count goes to head 0's next best.
    assert torch.equal(adaptive_split(s, 2, 1.0, valid), B([[1, 1, 1], [1, 0, 0]]))


def slow_adaptive(scores, h, floor, valid):
    H, C = len(scores), len(scores[0])
    take = [[False] * C for _ in range(H)]
    first = round(floor * h)
    for hd in range(H):
        order = sorted((c for c in range(C) if valid[hd][c]), key=lambda c: (-scores[hd][c], c))
        for c in order[:first]:
            take[hd][c] = True
    left = h * H - sum(map(sum, take))
    pool = sorted(((hd, c) for hd in range(H) for c in range(C) if valid[hd][c] and not take[hd][c]),
                  key=lambda t: (-scores[t[0]][t[1]], t[1], t[0]))
    for hd, c in pool[:max(left, 0)]:
        take[hd][c] = True
    return take


def test_adaptive_against_brute_force():
    rng = random.Random(3)
    for _ in range(200):
        H, C = rng.randint(1, 4), rng.randint(1, 7)
        h = rng.randint(0, C + 1)
        floor = rng.choice([0.0, 0.2, 0.5, 0.75, 1.0, rng.random()])
        scores = [[float(rng.randint(0, 3)) for _ in range(C)] for _ in range(H)]
        valid = [[rng.random() < 0.8 for _ in range(C)] for _ in range(H)]
        got = adaptive_split(torch.tensor(scores), h, floor, torch.tensor(valid))
        assert got.tolist() == slow_adaptive(scores, h, floor, valid), (scores, valid, h, floor)


def test_adaptive_leading_dims_are_independent_groups():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (3, 2, 4, 5), generator=g).float()
    got = adaptive_split(s, 2, 0.25)
    for a in range(3):
        for b in range(2):
            assert torch.equal(got[a, b], adaptive_split(s[a, b], 2, 0.25))


def test_adaptive_rejects_bad_floor():
    with pytest.raises(ValueError):
        adaptive_split(torch.zeros(2, 2), 1, 1.5)
