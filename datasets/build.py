"""Dataset registry and loader builders."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils.distributed import gather_objects, is_main, world_size
from utils.registry import Registry

from .chip_dataset import ChipDataset
from .hoss import HOSS
from .radiometry import ChipDecoder
from .records import ChipRecord, DatasetError, relabel
from .pairs import PairDataset, ShuffledBatchSampler, collate_pairs, identity_pairs, scan_pairs
from .samplers import PKBatchSampler
from .screening import fill_cache, screen_records
from .ship_size import ShipSizeEncoder
from .transforms import build_test_transform, build_train_transform

logger = logging.getLogger("shipreid.data")
_reported_caps: set[tuple[int, int]] = set()  # (requested, available) worker caps already logged
_reported_budgets: set[tuple[float, int]] = set()  # (CACHE_MAX_GB, ranks on the node) already logged

DATASETS = Registry("dataset")
DATASETS.register("HOSS")(HOSS)


def build_dataset(cfg):
    return DATASETS.get(cfg.DATASETS.NAMES, "DATASETS.NAMES")(cfg.DATASETS.ROOT_DIR,
                                                              on_bad_image=cfg.DATALOADER.ON_BAD_IMAGE)


def screen(cfg, records, decoder, reads=None) -> tuple[list[ChipRecord], dict]:
    """Training, pair or test images decoded once up front, split over the ranks (DATALOADER.ON_BAD_IMAGE):
    (the records that decode, the same on every rank; this rank's image cache). With DATALOADER.CACHE_IMAGES the
    cache holds, within the rank's share of CACHE_MAX_GB, the images `reads(kept records)` lists (default all)."""
    budget = cache_budget(cfg)
    kept, held = screen_records(records, decoder, cfg.DATALOADER.ON_BAD_IMAGE, budget)
    cache = fill_cache(kept if reads is None else reads(kept), held, decoder, budget)
    if budget:
        log_cache_sizes(cache)
    return kept, cache


def ranks_on_node() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))  # set by torchrun; else all ranks on one node


def cache_budget(cfg) -> float:
    """Bytes of decoded chips one rank may keep per image set: DATALOADER.CACHE_MAX_GB is the node's, shared
    evenly by the ranks torchrun starts on it (0 without DATALOADER.CACHE_IMAGES)."""
    if not cfg.DATALOADER.CACHE_IMAGES:
        return 0.0
    gigabytes, ranks = cfg.DATALOADER.CACHE_MAX_GB, ranks_on_node()
    if (gigabytes, ranks) not in _reported_budgets:
        _reported_budgets.add((gigabytes, ranks))
        logger.info("image cache: DATALOADER.CACHE_MAX_GB %g GB per node and image set, %.3g GB for each of its %d "
                    "rank(s)", gigabytes, gigabytes / ranks, ranks)
    return gigabytes / ranks * 2 ** 30


def log_cache_sizes(cache: dict) -> None:
    """Images and MB each rank keeps in its cache (rank 0 logs every rank's)."""
    sizes = gather_objects((len(cache), sum(pixels.nbytes for pixels, _ in cache.values()) / 2 ** 20))
    if is_main():
        logger.info("image cache per rank: %s images, %s MB", [n for n, _ in sizes],
                    [round(mb, 1) for _, mb in sizes])


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or a job's share), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(cfg) -> int:
    """DATALOADER.NUM_WORKERS, capped at the available CPUs (more workers than CPUs only compete for them)."""
    requested, cpus = cfg.DATALOADER.NUM_WORKERS, available_cpus()
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _reported_caps:  # once per process, not at every evaluation's loader
        _reported_caps.add((requested, cpus))
        logger.info("DATALOADER.NUM_WORKERS %d capped at %d, the CPUs available to this process", requested, cpus)
    return cpus


def build_test_loader(cfg, records: list[ChipRecord], cache: dict | None = None) -> DataLoader:
    """`cache`: decoded chips kept by the evaluator's screening pass (path -> pixels, size), read instead of the
    files."""
    dataset = ChipDataset(records, ChipDecoder.from_config(cfg), ShipSizeEncoder.from_config(cfg),
                          build_test_transform(cfg), cache=cache)
    workers = loader_workers(cfg)
    return DataLoader(dataset, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, num_workers=workers,
                      persistent_workers=False, pin_memory=False)


SAMPLERS = ("pk", "pk_modality")


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in each worker from torch's per-worker seed (augmentation itself is
    seeded per item; this covers any library that draws from the global generators)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def training_loader(cfg, dataset, batch_sampler, **extra) -> DataLoader:
    """A DataLoader over seeded batches. It draws its worker seeds from its own generator, not the global one,
    so starting an epoch's iterator (also when resuming inside an epoch) leaves the model's RNG untouched."""
    workers = loader_workers(cfg)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, persistent_workers=workers > 0,
                      worker_init_fn=seed_worker, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(cfg.SEED), **extra)


def build_train_loader(cfg, records: list[ChipRecord], rank: int = 0, world_size: int = 1) -> DataLoader:
    """PK batches of the training chips that decode; identities relabelled 0..K-1 over those
    (`loader.dataset.num_classes`). Call `loader.batch_sampler.set_epoch(e)` before each epoch."""
    if cfg.DATALOADER.SAMPLER not in SAMPLERS:
        raise DatasetError(f"DATALOADER.SAMPLER must be one of {SAMPLERS}, got {cfg.DATALOADER.SAMPLER!r}")
    decoder = ChipDecoder.from_config(cfg)
    records, cache = screen(cfg, records, decoder)
    labels, pid_to_label = relabel(records)
    dataset = ChipDataset(records, decoder, ShipSizeEncoder.from_config(cfg), build_train_transform(cfg),
                          labels=labels, cache=cache)
    dataset.num_classes = len(pid_to_label)
    sampler = PKBatchSampler(labels, [r.modality for r in records], cfg.SOLVER.IMS_PER_BATCH,
                             cfg.DATALOADER.NUM_INSTANCE, seed=cfg.SEED,
                             modality_balanced=cfg.DATALOADER.SAMPLER == "pk_modality", rank=rank,
                             world_size=world_size)
    return training_loader(cfg, dataset, sampler)


PAIR_SOURCES = ("optisar", "hoss_train")


def build_pair_loader(cfg, rank: int = 0, world_size: int = 1, source: str = "optisar",
                      same_augmentation: bool = False) -> DataLoader:
    """Batches of SOLVER.IMS_PER_BATCH / 2 optical-SAR pairs (optical images first, then SAR), from
    OptiSar_Pair ("optisar") or the same-identity pairs of the HOSS training split ("hoss_train")."""
    if cfg.SOLVER.IMS_PER_BATCH % 2:
        raise DatasetError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) counts images of pairs; make it even")
    if source not in PAIR_SOURCES:
        raise DatasetError(f"pair source must be one of {PAIR_SOURCES}, got {source!r}")
    pairs = scan_pairs(cfg.DATASETS.ROOT_DIR) if source == "optisar" else identity_pairs(build_dataset(cfg).train)
    # pretraining chips in other 8-bit modes are converted as the official pair reader does; HOSS chips stay strict
    decoder = ChipDecoder.from_config(cfg, convert_8bit=source == "optisar")
    usable, cache = screen(cfg, [record for pair in pairs for record in pair], decoder)
    usable_paths = {r.path for r in usable}
    pairs = [(o, s) for o, s in pairs if o.path in usable_paths and s.path in usable_paths]
    chips = ChipDataset([], decoder, ShipSizeEncoder.from_config(cfg), build_train_transform(cfg), cache=cache)
    sampler = ShuffledBatchSampler(len(pairs), cfg.SOLVER.IMS_PER_BATCH // 2, seed=cfg.SEED, rank=rank,
                                   world_size=world_size)
    return training_loader(cfg, PairDataset(pairs, chips, same_augmentation), sampler, collate_fn=collate_pairs)
