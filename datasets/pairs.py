"""OptiSar_Pair: co-registered optical/SAR pairs for contrastive pretraining.

Layout `<root>/OptiSar_Pair/<folder>/<scene>_<pairid>_..._<RGB|SAR>.<tif|png>`: the pair id is the second
`_`-separated token and the modality the last. Pairs are keyed by (folder, pair id), so equal ids in
different folders never pair up (the official reader merged them). Optical chips and SAR PNGs may be in any
8-bit PIL mode (converted to RGB on reading, see radiometry.ChipDecoder); SAR TIFFs are float32 amplitude.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from utils.errors import ShipReIDError

from .chip_dataset import ChipDataset
from .records import (MODALITY_TAGS, OPTICAL, PAIR_FOLDER, SAR, ChipRecord, DatasetError, ignored_note,
                      is_chip_name, list_chip_files)

logger = logging.getLogger("shipreid.data")
PAIR_EXTENSIONS = (".tif", ".png")
Pair = tuple[ChipRecord, ChipRecord]


def parse_pair_name(path: str) -> ChipRecord:
    name = os.path.basename(path)
    stem, ext = os.path.splitext(name)
    tokens = stem.split("_")
    if ext.lower() not in PAIR_EXTENSIONS or len(tokens) < 3 or tokens[-1] not in MODALITY_TAGS:
        raise DatasetError(f"{path}: pair file names must look like '<scene>_<pairid>_<RGB|SAR>.tif' "
                           "(.png also accepted); rename or remove the file")
    return ChipRecord(path, -1, MODALITY_TAGS[tokens[-1]])


def pair_key(path: str) -> tuple[str, str]:
    """(sub-folder, pair id) of a pair file."""
    return os.path.basename(os.path.dirname(path)), os.path.basename(path).split("_")[1]


def scan_pair_files(root: str) -> tuple[list[ChipRecord], list[str]]:
    """(a record per chip of `<root>/OptiSar_Pair/<folder>/`, its names checked; a note per folder that holds
    entries that are not chips: hidden files, other extensions, nested folders)."""
    base = os.path.join(root, PAIR_FOLDER)
    if not os.path.isdir(base):
        raise DatasetError(f"pair folder not found: {base}; DATASETS.ROOT_DIR must contain {PAIR_FOLDER}/")
    folders, ignored = [], []
    for name in sorted(os.listdir(base)):
        path = os.path.join(base, name)
        if is_chip_name(name):
            raise DatasetError(f"{path}: {PAIR_FOLDER}/ must contain only sub-folders of pairs; move the file "
                               "into one")
        if os.path.isdir(path) and not name.startswith("."):
            folders.append(path)
        else:
            ignored.append(name)
    notes = [ignored_note(base, ignored)] if ignored else []
    records = []
    for folder in folders:
        chips, ignored = list_chip_files(folder)
        if ignored:
            notes.append(ignored_note(folder, ignored))
        records += [parse_pair_name(os.path.join(folder, name)) for name in chips]
    return records, notes


def group_pairs(records: list[ChipRecord]) -> tuple[list[Pair], list[ChipRecord]]:
    """(every (optical, SAR) pair: the cartesian product of each key's optical and SAR files; the files whose
    key has no partner of the other modality). Keys are (folder, pair id), so equal ids in different folders
    never pair up (the official reader merged them)."""
    groups: dict[tuple[str, str], dict[int, list[ChipRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        groups[pair_key(record.path)][record.modality].append(record)
    pairs, lone = [], []
    for key in sorted(groups):
        found = groups[key]
        if found[OPTICAL] and found[SAR]:
            pairs += [(o, s) for o in found[OPTICAL] for s in found[SAR]]
        else:
            lone += found[OPTICAL] + found[SAR]
    return pairs, lone


def lone_member_error(record: ChipRecord) -> DatasetError:
    folder, pair_id = pair_key(record.path)
    missing, tag = ("SAR", "SAR") if record.modality == OPTICAL else ("optical", "RGB")
    return DatasetError(f"{record.path}: pair id {pair_id} in folder {folder} has no {missing} partner (a "
                        f"'<scene>_{pair_id}_{tag}' file beside it); add the partner or remove the file")


def scan_pairs(root: str) -> list[Pair]:
    """Every (optical, SAR) pair under `<root>/OptiSar_Pair`. Entries that are not chips are ignored (one log
    line per folder); a badly named chip or one without its partner raises, whatever DATALOADER.ON_BAD_IMAGE
    says (only files that fail to decode are left to it)."""
    records, notes = scan_pair_files(root)
    for note in notes:
        logger.info(note)
    pairs, lone = group_pairs(records)
    if lone:
        raise lone_member_error(lone[0])
    if not pairs:
        raise DatasetError(f"no pairs found under {os.path.join(root, PAIR_FOLDER)}")
    return pairs


def identity_pairs(records: list[ChipRecord]) -> list[Pair]:
    """Every (optical, SAR) pair of images of the same identity (e.g. the HOSS training split): these are
    the same ship, not co-registered views."""
    by_pid: dict[int, dict[int, list[ChipRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_pid[record.pid][record.modality].append(record)
    pairs = [(o, s) for pid in sorted(by_pid) for o in by_pid[pid][OPTICAL] for s in by_pid[pid][SAR]]
    if not pairs:
        raise DatasetError("no identity has both an optical and a SAR image, so there are no pairs")
    return pairs


class PairDataset(Dataset):
    """Item = {"optical": chip item, "sar": chip item}; each side augmented independently, or both with the
    same draw (`same_augmentation`: the same flip and crop, for translation models)."""

    def __init__(self, pairs, chips: ChipDataset, same_augmentation: bool = False):
        """`chips` supplies decoding and transforms (its own record list is not used)."""
        self.pairs, self.chips = pairs, chips
        self.same_augmentation = same_augmentation

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key):
        index, seed = key
        optical, sar = self.pairs[index]
        items = [self.chips.item(record, np.random.default_rng(seed if self.same_augmentation else (*seed, side)))
                 for side, record in ((0, optical), (1, sar))]
        items[0]["pid"] = items[1]["pid"] = index
        return {"optical": items[0], "sar": items[1]}


def collate_pairs(items: list[dict]) -> dict:
    """All optical images first, then their SAR partners in the same order."""
    batch = {}
    sides = [item["optical"] for item in items] + [item["sar"] for item in items]
    for key in sides[0]:
        values = [side[key] for side in sides]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else (
            torch.tensor(values) if isinstance(values[0], int) else values)
    return batch


class ShuffledBatchSampler(Sampler):
    """Shuffled full batches of `batch_size` items per epoch (remainder dropped), sliced per rank."""

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ShipReIDError(f"batch of {batch_size} pairs cannot be split over {world_size} ranks")
        if num_items < batch_size:
            raise ShipReIDError(f"{num_items} pairs are fewer than one batch of {batch_size}; lower "
                                "SOLVER.IMS_PER_BATCH")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __iter__(self) -> Iterator[list[tuple[int, tuple]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        per_rank = self.batch_size // self.world_size
        start = self.rank * per_rank
        for number in range(self.skip_batches, self.num_items // self.batch_size):
            batch = order[number * self.batch_size:(number + 1) * self.batch_size]
            yield [(int(index), (self.seed, self.epoch, number, start + slot))
                   for slot, index in enumerate(batch[start:start + per_rank])]

    def __len__(self) -> int:
        return self.num_items // self.batch_size - self.skip_batches
