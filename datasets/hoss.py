"""The HOSS ReID dataset: splits, training labels and the ALL / O2S / S2O evaluation protocols."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .records import DISTRACTOR_PID, MODALITY_NAMES, OPTICAL, SAR, ChipRecord, DatasetError, relabel, scan_hoss_folder
from .screening import POLICIES

PROTOCOLS = ("ALL", "O2S", "S2O")
# protocol -> (query modality, gallery modality) for the cross-modal protocols
CROSS_MODAL = {"O2S": (OPTICAL, SAR), "S2O": (SAR, OPTICAL)}


@dataclass
class Protocol:
    name: str
    query: list[ChipRecord]
    gallery: list[ChipRecord]
    derived: bool  # True when built from the ALL folders by modality instead of read from subset/


def derive_cross_modal(name: str, query: list[ChipRecord], gallery: list[ChipRecord]) -> Protocol:
    """Queries of one modality against the gallery of the other; queries with no positive dropped."""
    query_modality, gallery_modality = CROSS_MODAL[name]
    kept_gallery = [r for r in gallery if r.modality == gallery_modality]
    gallery_pids = {r.pid for r in kept_gallery if r.pid != DISTRACTOR_PID}
    kept_query = [r for r in query if r.modality == query_modality and r.pid in gallery_pids]
    return Protocol(name, kept_query, kept_gallery, derived=True)


class HOSS:
    """HOSS ReID in the release layout under `<root>/HOSS`. Splits are read on first use.

    `on_bad_image` (DATALOADER.ON_BAD_IMAGE): a chip whose name breaks the convention raises ("error") or is left
    out and logged ("skip"). Files that are not chips (hidden files, other extensions) are always ignored.
    """

    folder = "HOSS"

    def __init__(self, root: str, on_bad_image: str = "error"):
        if on_bad_image not in POLICIES:
            raise DatasetError(f"DATALOADER.ON_BAD_IMAGE must be one of {POLICIES}, got {on_bad_image!r}")
        self.root = os.path.join(root, self.folder)
        if not os.path.isdir(self.root):
            raise DatasetError(f"HOSS folder not found: {self.root}; set DATASETS.ROOT_DIR to the folder "
                               "that contains HOSS/")
        self.on_bad_image = on_bad_image
        self._splits: dict[str, list[ChipRecord]] = {}

    def split(self, name: str) -> list[ChipRecord]:
        if name not in self._splits:
            self._splits[name] = scan_hoss_folder(os.path.join(self.root, name), self.on_bad_image == "skip")
        return self._splits[name]

    @property
    def train(self) -> list[ChipRecord]:
        return self.split("bounding_box_train")

    def train_labels(self) -> tuple[list[int], dict[int, int]]:
        """Training class index per record: pids relabelled 0..K-1 in sorted order."""
        records = self.train
        distractors = [r.path for r in records if r.pid == DISTRACTOR_PID]
        if distractors:
            raise DatasetError(f"{distractors[0]}: distractors (pid -1) belong in the gallery, not in training")
        return relabel(records)

    def protocol(self, name: str) -> Protocol:
        if name not in PROTOCOLS:
            raise DatasetError(f"unknown protocol {name!r} in DATASETS.PROTOCOLS; choose from {PROTOCOLS}")
        query, gallery = self.split("query"), self.split("bounding_box_test")
        if name == "ALL":
            return Protocol(name, query, gallery, derived=False)
        subset = os.path.join("subset", name)
        if os.path.isdir(os.path.join(self.root, subset)):
            # fusion and the cross-modal metrics take these folders to hold one modality each: checked, not assumed
            return Protocol(name, *(self._one_modality(os.path.join(subset, split), modality, name) for split, modality
                                    in zip(("query", "bounding_box_test"), CROSS_MODAL[name])), derived=False)
        return derive_cross_modal(name, query, gallery)

    def _one_modality(self, split: str, modality: int, protocol: str) -> list[ChipRecord]:
        records = self.split(split)
        for record in records:
            if record.modality != modality:
                raise DatasetError(f"{record.path}: {MODALITY_NAMES[record.modality]} chip in {split}, which holds "
                                   f"{MODALITY_NAMES[modality]} chips only for {protocol}; move it out (or remove "
                                   f"subset/{protocol} to derive the protocol from the ALL folders)")
        return records

    def check_disjoint_identities(self) -> None:
        """Train and test identities must not overlap (a leak that inflates every metric)."""
        train_pids = {r.pid for r in self.train}
        for split in ("query", "bounding_box_test"):
            for record in self.split(split):
                if record.pid in train_pids:
                    raise DatasetError(f"{record.path}: pid {record.pid} is also in bounding_box_train; "
                                       "train and test identities must be disjoint")


def split_statistics(records: list[ChipRecord]) -> dict:
    pids = {r.pid for r in records if r.pid != DISTRACTOR_PID}
    return {
        "ids": len(pids),
        "images": len(records),
        "optical": sum(r.modality == OPTICAL for r in records),
        "SAR": sum(r.modality == SAR for r in records),
        "distractors": sum(r.pid == DISTRACTOR_PID for r in records),
    }


def statistics_rows(protocols: list[Protocol], train: list[ChipRecord] | None = None,
                    validation: list[Protocol] = ()) -> list:
    """(label, records) per table row: the training split, the test protocols, then the validation ones ("val")."""
    rows = [("train", train)] if train is not None else []
    for prefix, group in (("", protocols), ("val ", validation)):
        for p in group:
            rows += [(f"{prefix}{p.name} query", p.query), (f"{prefix}{p.name} gallery", p.gallery)]
    return rows


def format_statistics(rows: list[tuple[str, list[ChipRecord]]]) -> str:
    """A fixed-width table: one row per (label, records)."""
    header = f"{'subset':<22}{'ids':>6}{'images':>8}{'optical':>9}{'SAR':>6}{'distractors':>13}"
    lines = [header, "-" * len(header)]
    for label, records in rows:
        s = split_statistics(records)
        lines.append(f"{label:<22}{s['ids']:>6}{s['images']:>8}{s['optical']:>9}{s['SAR']:>6}{s['distractors']:>13}")
    return "\n".join(lines)
