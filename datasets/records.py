"""Chip records and the HOSS file-name convention (the one place names are parsed)."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from utils.errors import ShipReIDError
from typing import Optional

logger = logging.getLogger("shipreid.data")

OPTICAL, SAR = 0, 1
MODALITY_NAMES = {OPTICAL: "optical", SAR: "SAR"}
MODALITY_TAGS = {"RGB": OPTICAL, "SAR": SAR}
DISTRACTOR_PID = -1
PAIR_FOLDER = "OptiSar_Pair"
# What the chip readers can open. Any other file in a data folder (.DS_Store, GDAL *.aux.xml sidecars, notes) is
# not a chip and is ignored; a file with one of these extensions is a chip and must be named as one.
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
# How many ignored names a log line or note lists before it only counts the rest.
LISTED_NAMES = 5

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


def is_chip_name(name: str) -> bool:
    """A visible entry with an image extension. Hidden entries (.DS_Store, ._x.tif) and any other extension are
    not chips; an entry with an image extension is one even when it is broken, so that decoding reports it."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_chip_files(folder: str) -> tuple[list[str], list[str]]:
    """(names of the folder's chip files, names of its other entries), each sorted."""
    names = sorted(os.listdir(folder))
    chips = [name for name in names if is_chip_name(name)]
    chip_set = set(chips)
    return chips, [name for name in names if name not in chip_set]


def ignored_note(folder: str, ignored: list[str]) -> str:
    """The one line that reports a folder's entries that are not chips."""
    listed = ", ".join(ignored[:LISTED_NAMES])
    more = f" and {len(ignored) - LISTED_NAMES} more" if len(ignored) > LISTED_NAMES else ""
    return f"{folder}: ignored {len(ignored)} file(s) that are not chips ({listed}{more})"


def scan_hoss_folder(folder: str, skip_bad_names: bool = False) -> list[ChipRecord]:
    """Every chip of a split folder, sorted by file name. Entries that are not chips are ignored (one log line);
    a chip whose name breaks the convention raises, or with `skip_bad_names` is left out and logged."""
    if not os.path.isdir(folder):
        raise DatasetError(f"split folder not found: {folder}; DATASETS.ROOT_DIR must contain HOSS/ "
                           "in the release layout (bounding_box_train, query, bounding_box_test)")
    chips, ignored = list_chip_files(folder)
    if ignored:
        logger.info(ignored_note(folder, ignored))
    records = []
    for name in chips:
        try:
            records.append(parse_hoss_name(os.path.join(folder, name)))
        except DatasetError as err:
            if not skip_bad_names:
                raise
            logger.warning("skipped (DATALOADER.ON_BAD_IMAGE skip): %s", err)
    if not records:
        skipped = f", {len(chips)} badly named file(s) skipped" if chips else ""
        raise DatasetError(f"split folder is empty: {folder} holds no chips ({'/'.join(IMAGE_EXTENSIONS)} files"
                           f"{skipped}); copy the split's chips into it")
    return records


def relabel(records: list[ChipRecord]) -> tuple[list[int], dict[int, int]]:
    """Training class index per record: pids relabelled 0..K-1 in sorted order."""
    pid_to_label = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [pid_to_label[r.pid] for r in records], pid_to_label
