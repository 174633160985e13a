"""Identity-balanced batch samplers (P identities x K images), deterministic per (seed, epoch), DDP-aware.

Every rank builds the same global batch list and takes its own contiguous slice of each batch, so a
global batch holds whole identities (each rank gets P / world identities with all their K images).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from utils.errors import ShipReIDError


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items) - size + 1, size)]


def check_pk_batch(batch_size: int, num_instances: int, world_size: int = 1, modality_balanced: bool = False) -> None:
    """Whether a global batch of `batch_size` images splits into identities of K images, evenly over the ranks
    (checked at start-up, before any data is read, and by the sampler)."""
    if num_instances < 1 or batch_size % num_instances or (batch_size // num_instances) % world_size:
        step = num_instances * world_size  # whole identities of K images on every rank
        works = max(step, -(-batch_size // step) * step)
        raise ShipReIDError(f"SOLVER.IMS_PER_BATCH {batch_size} cannot be split into identities of "
                            f"DATALOADER.NUM_INSTANCE {num_instances} images over {world_size} rank(s): it must be a "
                            f"multiple of {step}, e.g. SOLVER.IMS_PER_BATCH {works}")
    if modality_balanced and num_instances % 2:
        raise ShipReIDError("DATALOADER.SAMPLER pk_modality needs an even DATALOADER.NUM_INSTANCE")


class PKBatchSampler(Sampler[list[int]]):
    """Official RandomIdentitySampler semantics as a batch sampler.

    Per epoch each identity's images are shuffled and cut into groups of K (identities with fewer than K
    images are up-sampled with replacement to K; a remainder is dropped); batches take P random identities
    that still have a group, until fewer than P remain. With `modality_balanced`, an identity with both
    modalities contributes groups of K/2 optical + K/2 SAR images instead: as many groups as its scarcer
    modality fills, so the other modality's surplus images sit out that epoch (a new random subset each epoch).
    """

    def __init__(self, labels: Sequence[int], modalities: Sequence[int], batch_size: int, num_instances: int,
                 seed: int = 0, modality_balanced: bool = False, rank: int = 0, world_size: int = 1):
        check_pk_batch(batch_size, num_instances, world_size, modality_balanced)
        self.num_ids_per_batch = batch_size // num_instances
        self.k = num_instances
        self.seed, self.epoch, self.skip_batches = seed, 0, 0
        self.modality_balanced = modality_balanced
        self.rank, self.world_size = rank, world_size
        self.by_id: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, (label, modality) in enumerate(zip(labels, modalities)):
            self.by_id[label][modality].append(index)
        self.ids = sorted(self.by_id)
        if len(self.ids) < self.num_ids_per_batch:
            raise ShipReIDError(f"the training set has {len(self.ids)} identities, fewer than the "
                                f"{self.num_ids_per_batch} a batch needs; lower SOLVER.IMS_PER_BATCH")
        self._batches: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's batches; `skip_batches` resumes inside an epoch."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def _groups(self, rng: np.random.Generator, by_modality: dict[int, list[int]]) -> list[list[int]]:
        if self.modality_balanced and len(by_modality) == 2:
            half = self.k // 2
            parts = []
            for modality in sorted(by_modality):
                idxs = list(by_modality[modality])
                if len(idxs) < half:
                    idxs = list(rng.choice(idxs, size=half, replace=True))
                rng.shuffle(idxs)
                parts.append(_chunks(idxs, half))
            return [a + b for a, b in zip(*parts)]
        idxs = [i for modality in sorted(by_modality) for i in by_modality[modality]]
        if len(idxs) < self.k:
            idxs = list(rng.choice(idxs, size=self.k, replace=True))
        rng.shuffle(idxs)
        return _chunks(idxs, self.k)

    def _global_batches(self) -> list[list[int]]:
        if self._batches is None or self._batches[0] != self.epoch:
            self._batches = (self.epoch, self._build_batches())
        return self._batches[1]

    def _build_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = {pid: self._groups(rng, self.by_id[pid]) for pid in self.ids}
        available = [pid for pid in self.ids if groups[pid]]
        batches = []
        while len(available) >= self.num_ids_per_batch:
            chosen = rng.choice(len(available), size=self.num_ids_per_batch, replace=False)
            batch = []
            for position in chosen:
                batch.extend(int(i) for i in groups[available[position]].pop(0))
            batches.append(batch)
            available = [pid for pid in available if groups[pid]]
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, tuple]]]:
        """Per-rank batches of (dataset index, augmentation seed); the seed names the global slot."""
        per_rank = (self.num_ids_per_batch // self.world_size) * self.k
        start = self.rank * per_rank
        for number, batch in enumerate(self._global_batches()):
            if number < self.skip_batches:
                continue
            yield [(index, (self.seed, self.epoch, number, start + slot))
                   for slot, index in enumerate(batch[start:start + per_rank])]

    def __len__(self) -> int:
        # identities with many groups can be left over, so the count varies slightly between epochs
        return len(self._global_batches()) - self.skip_batches
