"""The validation split (DATASETS.VAL_IDS): training identities held out and evaluated like the test set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hoss import Protocol, derive_cross_modal
from .records import OPTICAL, SAR, ChipRecord, DatasetError

# training identities a run needs (the triplet loss pairs identities; a classifier needs classes)
MIN_TRAIN_IDS = 2


@dataclass
class ValidationSplit:
    ids: list[int]                # held-out identities, sorted
    train: list[ChipRecord]       # the training records left
    protocols: list[Protocol]     # the validation protocols, named as the test ones


def eligible_ids(records: list[ChipRecord]) -> list[int]:
    """Identities with at least one optical and one SAR image, sorted."""
    modalities: dict[int, set[int]] = {}
    for record in records:
        modalities.setdefault(record.pid, set()).add(record.modality)
    return sorted(pid for pid, seen in modalities.items() if seen == {OPTICAL, SAR})


def hold_out(records: list[ChipRecord], num_ids: int, seed: int, protocol_names) -> ValidationSplit:
    """`num_ids` identities drawn from `seed` among those with both modalities, out of the training records.

    Validation query: one image per held-out identity and modality (drawn from `seed`); gallery: the rest.
    ALL is that query against that gallery; O2S and S2O are derived from it by modality, as from the test folders.
    """
    eligible, total = eligible_ids(records), len({r.pid for r in records})
    if num_ids > len(eligible):
        raise DatasetError(f"DATASETS.VAL_IDS {num_ids} is more than the {len(eligible)} training identities with "
                           f"both optical and SAR images that a validation split can hold out")
    if total - num_ids < MIN_TRAIN_IDS:
        raise DatasetError(f"DATASETS.VAL_IDS {num_ids} leaves {total - num_ids} of the {total} training identities "
                           f"to train on; at least {MIN_TRAIN_IDS} are needed: hold out at most "
                           f"{max(0, total - MIN_TRAIN_IDS)}")
    rng = np.random.default_rng(seed)
    held = sorted(int(pid) for pid in rng.permutation(eligible)[:num_ids])
    query = []
    for pid in held:
        for modality in (OPTICAL, SAR):
            candidates = sorted((r for r in records if r.pid == pid and r.modality == modality), key=lambda r: r.path)
            query.append(candidates[int(rng.integers(len(candidates)))])
    chosen, held_set = {r.path for r in query}, set(held)
    gallery = [r for r in records if r.pid in held_set and r.path not in chosen]
    # ALL, like the test ALL, is not derived; the names were checked when the test protocols were read
    protocols = [Protocol(name, query, gallery, derived=False) if name == "ALL"
                 else derive_cross_modal(name, query, gallery) for name in protocol_names]
    return ValidationSplit(held, [r for r in records if r.pid not in held_set], protocols)

def check_selectable(split: ValidationSplit, protocol: str) -> None:
    """The validation protocol that selects the model must have a query with a same-identity gallery image."""
    chosen = next(p for p in split.protocols if p.name == protocol)
    gallery = {r.pid for r in chosen.gallery}
    if not any(r.pid in gallery for r in chosen.query):
        raise DatasetError(f"the validation {protocol} protocol of DATASETS.VAL_IDS {len(split.ids)} (identities "
                           f"{split.ids}) has no query with a gallery image of its identity, so SOLVER.SELECT_METRIC "
                           f"cannot rank epochs on it: hold out more identities, or select on another protocol")
