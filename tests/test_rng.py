"""Per-rank random streams and their saved states (processor/rng.py)."""
from __future__ import annotations

import logging

import numpy as np
import torch

from processor.rng import rank_seed, restore_rank_state, rng_state, seed_everything


def draws() -> tuple:
    return torch.rand(4).tolist(), float(np.random.rand()), torch.randint(0, 1000, (3,)).tolist()


def test_rank_seeds_are_repeatable_and_distinct():
    seeds = [rank_seed(1234, rank) for rank in range(64)]
    assert len(set(seeds)) == 64
    assert seeds == [rank_seed(1234, rank) for rank in range(64)]
    assert rank_seed(1234, 0) != rank_seed(1235, 0) and rank_seed(1234, 0, 3, 0) != rank_seed(1234, 0)
    seed_everything(seeds[0])
    rank0 = draws()
    seed_everything(seeds[1])
    assert draws() != rank0


def test_each_rank_gets_its_own_saved_state_back():
    states, next_draws = [], []
    for rank in range(2):
        seed_everything(rank_seed(7, rank))
        draws()
        states.append(rng_state())
        next_draws.append(draws())
    assert next_draws[0] != next_draws[1]
    for rank in range(2):
        seed_everything(0)
        restore_rank_state(states, rank, 2, seed=7, epoch=3, iteration=0)
        assert draws() == next_draws[rank]


def test_a_state_from_before_per_rank_states_restores_one_process():
    seed_everything(5)
    state = rng_state()
    after = draws()
    seed_everything(0)
    restore_rank_state(state, 0, 1, seed=5, epoch=1, iteration=0)  # a single dict, as older checkpoints hold
    assert draws() == after


def test_another_number_of_ranks_reseeds_each_rank_and_says_so(caplog):
    seed_everything(5)
    states = [rng_state(), rng_state()]
    with caplog.at_level(logging.WARNING, logger="shipreid.train"):
        restore_rank_state(states, 2, 4, seed=5, epoch=3, iteration=10)
    assert "2 rank(s) and this run has 4" in caplog.text
    reseeded = draws()
    seed_everything(rank_seed(5, 2, 3, 10))
    assert draws() == reseeded
