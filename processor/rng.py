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


def rng_state(device: torch.device | None = None) -> dict:
    """The generators this process draws from. On a GPU, only `device`'s (the current CUDA device by default):
    that is this rank's own stream, and a resume on another number of GPUs per node has no other entries to match."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(_cuda_index(device))
    return state


def _cuda_index(device: torch.device | None) -> int:
    if device is not None and device.type == "cuda" and device.index is not None:
        return device.index
    return torch.cuda.current_device()


def pick_cuda_state(saved, device_index: int, visible: int) -> torch.Tensor | None:
    """This rank's CUDA generator state from a saved `cuda` entry, or None when it cannot be told.

    Saved now: the state of the saving rank's own device (a tensor), whatever index that device had. Older
    checkpoints saved every visible GPU's state, from each rank's process: with the same number of visible GPUs
    the entry at this rank's device index is its stream; with another number the node layout changed and which
    entry the rank drew from is unknown."""
    if isinstance(saved, torch.Tensor):
        return saved
    if len(saved) != visible:
        return None
    return saved[device_index]


def set_rng_state(state: dict, cuda: torch.Tensor | None = None, device_index: int = 0) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device_index)


def restore_rank_state(saved, rank: int, world: int, seed: int, epoch: int, iteration: int,
                       device: torch.device | None = None) -> None:
    """Restore this rank's saved generators. `saved` is one state per rank of the run that wrote it (a
    single dict in checkpoints from before per-rank states). With another number of ranks the states cannot
    be matched up: every rank is reseeded from (SEED, rank, epoch, iteration), which is said in the log; so is
    a GPU's state that an older checkpoint (all visible GPUs' states) saved under another GPU count."""
    states = [saved] if isinstance(saved, dict) else list(saved)
    if len(states) != world:
        _reseed(f"the checkpoint holds the random states of {len(states)} rank(s) and this run has {world}",
                seed, rank, epoch, iteration)
        return
    state = states[rank]
    if "cuda" not in state or not torch.cuda.is_available():
        set_rng_state(state)
        return
    index, visible = _cuda_index(device), torch.cuda.device_count()
    cuda = pick_cuda_state(state["cuda"], index, visible)
    if cuda is None:
        _reseed(f"the checkpoint holds the CUDA random states of {len(state['cuda'])} GPU(s) per process and this "
                f"process sees {visible}", seed, rank, epoch, iteration)
        return
    set_rng_state(state, cuda, index)


def _reseed(reason: str, seed: int, rank: int, epoch: int, iteration: int) -> None:
    logger.warning("%s: drop-path, dropout and diffusion noise are reseeded per rank, so they differ from an "
                   "uninterrupted run (data order and augmentation do not: they are seeded per item)", reason)
    seed_everything(rank_seed(seed, rank, epoch, iteration))
