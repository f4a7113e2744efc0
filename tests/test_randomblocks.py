"""Random key blocks: the known answers of LANGUAGE.md and a scalar re-derivation."""
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from patterndsl.plan.runtime import umod64
from patterndsl.randomblocks import (random_block_lists, random_blocks, splitmix64,
                                     splitmix64_tensor)

M64 = (1 << 64) - 1


def slow_splitmix(x):
    # Written out independently of the module: one step of Vigna's generator.
    x = (x + 0x9E3779B97F4A7C15) % (1 << 64)
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return z ^ (z >> 31)


def slow_R(count, seed, causal, nb, i):
    cand = i + 1 if causal else nb
    h = slow_splitmix(slow_splitmix(seed) ^ i)
    got = set()
    j = 0
    while len(got) < min(count, cand):
        got.add(slow_splitmix((h + j) % (1 << 64)) % cand)
        j += 1
    return got


def to_signed(u):
    return u - (1 << 64) if u >= 1 << 63 else u


def test_splitmix64_first_output_of_seed_zero():
    # The generator's published first output for state 0.
    assert splitmix64(0) == 0xE220A8397B1DCDAF


def test_known_answers():
    assert random_block_lists(3, 1, 0, False, 8)[:4] == [(1, 3, 7), (0, 3, 7), (0, 2, 5), (0, 4, 5)]
    assert random_block_lists(3, 1, 0, True, 8)[:4] == [(0,), (0, 1), (0, 1, 2), (0, 1, 3)]
    assert random_block_lists(2, 1, 42, False, 5) == [(0, 3), (1, 4), (3, 4), (1, 2), (1, 3)]


def test_known_answer_with_blocks_of_two():
    # nb = ceil(10 / 2) = ceil(9 / 2) = 5: the same draws as block=1 at n=5.
    expect = [(0, 3), (1, 4), (3, 4), (1, 2), (1, 3)]
    assert random_block_lists(2, 2, 42, False, 10) == expect
    assert random_block_lists(2, 2, 42, False, 9) == expect


@given(st.lists(st.integers(0, M64), min_size=1, max_size=50))
@settings(max_examples=50, deadline=None)
def test_vector_splitmix_matches_scalar(values):
    t = torch.tensor([to_signed(v) for v in values], dtype=torch.int64)
    got = [v & M64 for v in splitmix64_tensor(t).tolist()]
    assert got == [slow_splitmix(v) for v in values]
    assert [splitmix64(v) for v in values] == got


@given(st.lists(st.tuples(st.integers(0, M64), st.integers(1, (1 << 40))), min_size=1, max_size=50))
@settings(max_examples=50, deadline=None)
def test_unsigned_mod(pairs):
    x = torch.tensor([to_signed(u) for u, _ in pairs], dtype=torch.int64)
    c = torch.tensor([c for _, c in pairs], dtype=torch.int64)
    assert umod64(x, c).tolist() == [u % c for u, c in pairs]


@pytest.mark.parametrize("count,block,seed,causal,n", [
    (3, 1, 0, False, 8), (3, 1, 0, True, 8), (2, 1, 42, False, 5), (0, 1, 7, False, 9),
    (5, 3, 123, False, 40), (5, 3, 123, True, 40), (12, 1, 9, False, 13), (12, 1, 9, True, 13),
    (30, 1, 2**32 - 1, False, 31), (29, 1, 5, True, 60), (1, 64, 3, False, 1000), (100, 4, 1, False, 20),
])
def test_matches_scalar_definition(count, block, seed, causal, n):
    nb = -(-n // block)
    table = random_blocks(count, block, seed, causal, n)
    assert table.shape == (nb, nb) and table.dtype == torch.bool
    for i in range(nb):
        expect = slow_R(count, seed, causal, nb, i)
        assert set(table[i].nonzero().flatten().tolist()) == expect, i
        assert len(expect) == min(count, i + 1 if causal else nb)


def test_random_parameters_against_scalar():
    rng = random.Random(11)
    for _ in range(20):
        nb = rng.randint(1, 30)
        count = rng.randint(0, nb + 2)
        seed = rng.randrange(1 << 32)
        causal = rng.random() < 0.5
        lists = random_block_lists(count, 1, seed, causal, nb)
        assert lists == [tuple(sorted(slow_R(count, seed, causal, nb, i))) for i in range(nb)]


def test_result_is_a_fresh_tensor():
    a = random_blocks(2, 1, 42, False, 5)
    a[:] = False
    assert random_block_lists(2, 1, 42, False, 5)[0] == (0, 3)


def test_huge_count_and_empty():
    assert random_blocks(10**30, 1, 0, False, 4).all()
    assert random_blocks(3, 4, 0, False, 0).shape == (0, 0)
    with pytest.raises(ValueError):
        random_blocks(1, 0, 0, False, 4)
