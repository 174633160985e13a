"""Chip records and the HOSS file-name convention (the one place names are parsed)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from utils.errors import ShipReIDError
from typing import Optional

OPTICAL, SAR = 0, 1
MODALITY_NAMES = {OPTICAL: "optical", SAR: "SAR"}
MODALITY_TAGS = {"RGB": OPTICAL, "SAR": SAR}
DISTRACTOR_PID = -1

# {pid}_s{seq}c{pass}_{RGB|SAR}.tif for identities, -1_{n}_{RGB|SAR}.tif for gallery distractors.
HOSS_NAME = re.compile(
    r"^(?:(?P<pid>\d+)_s(?P<seq>\d+)c(?P<pass>\d+)|-1_(?P<index>\d+))_(?P<tag>RGB|SAR)\.tif$")


class DatasetError(ShipReIDError):
    """A dataset folder or file that does not follow the expected layout."""


@dataclass(frozen=True)
class ChipRecord:
    """One image chip: where it is and what its name says about it."""
    path: str
    pid: int                      # identity as written in the file name (-1 for distractors)
    modality: int                 # OPTICAL or SAR
    seq: Optional[int] = None     # acquisition sequence (s..), None for distractors
    pass_id: Optional[int] = None  # pass/frame inside the sequence (c..)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def parse_hoss_name(path: str) -> ChipRecord:
    name = os.path.basename(path)
    match = HOSS_NAME.match(name)
    if match is None:
        raise DatasetError(
            f"{path}: file name does not follow the HOSS convention "
            "'{pid}_s{seq}c{pass}_{RGB|SAR}.tif' (or '-1_{n}_{RGB|SAR}.tif' for a distractor); "
            "rename it or move it out of the split folder")
    modality = MODALITY_TAGS[match["tag"]]
    if match["pid"] is None:
        return ChipRecord(path, DISTRACTOR_PID, modality)
    return ChipRecord(path, int(match["pid"]), modality, int(match["seq"]), int(match["pass"]))


def scan_hoss_folder(folder: str) -> list[ChipRecord]:
    """Every chip of a split folder, sorted by file name; any other entry is an error."""
    if not os.path.isdir(folder):
        raise DatasetError(f"split folder not found: {folder}; DATASETS.ROOT_DIR must contain HOSS/ "
                           "in the release layout (bounding_box_train, query, bounding_box_test)")
    names = sorted(os.listdir(folder))
    if not names:
        raise DatasetError(f"split folder is empty: {folder}")
    return [parse_hoss_name(os.path.join(folder, name)) for name in names]


def relabel(records: list[ChipRecord]) -> tuple[list[int], dict[int, int]]:
    """Training class index per record: pids relabelled 0..K-1 in sorted order."""
    pid_to_label = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [pid_to_label[r.pid] for r in records], pid_to_label
