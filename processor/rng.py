"""The global random generators (python, numpy, torch, CUDA): seeding, per-rank streams, saved states.

Data order and augmentation never draw from them (they are seeded per item, datasets/transforms.py); what
does is the model and the losses during training: drop path, dropout, BBDM's timesteps and noise.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

logger = logging.getLogger("shipreid.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """A seed for rank `rank`'s own stream: ranks that shared SEED's stream would draw the same drop-path
    masks and diffusion noise for their i-th samples, which wastes part of every global batch."""
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1)[0])


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rank_state(saved, rank: int, world: int, seed: int, epoch: int, iteration: int) -> None:
    """Restore this rank's saved generators. `saved` is one state per rank of the run that wrote it (a
    single dict in checkpoints from before per-rank states). With another number of ranks the states cannot
    be matched up: every rank is reseeded from (SEED, rank, epoch, iteration), which is said in the log."""
    states = [saved] if isinstance(saved, dict) else list(saved)
    if len(states) == world:
        set_rng_state(states[rank])
        return
    logger.warning("the checkpoint holds the random states of %d rank(s) and this run has %d: drop-path, dropout "
                   "and diffusion noise are reseeded per rank, so they differ from an uninterrupted run (data order "
                   "and augmentation do not: they are seeded per item)", len(states), world)
    seed_everything(rank_seed(seed, rank, epoch, iteration))
