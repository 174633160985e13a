"""Check a dataset root completely and report every problem (instead of stopping at the first)."""
from __future__ import annotations

import os

from .hoss import CROSS_MODAL
from .pairs import PAIR_FOLDER, scan_pairs
from .radiometry import ChipDecoder
from .records import DISTRACTOR_PID, MODALITY_NAMES, DatasetError, parse_hoss_name

SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def _check_folder(folder: str, decoder: ChipDecoder, problems: list[str]) -> list:
    """Records of the folder's valid files; a problem line for every other entry."""
    if not os.path.isdir(folder):
        problems.append(f"{folder}: folder missing; create it with the release's files")
        return []
    names = sorted(os.listdir(folder))
    if not names:
        problems.append(f"{folder}: folder is empty; copy the split's chips into it")
    records = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            record = parse_hoss_name(path)
            decoder(path, record.modality)
        except DatasetError as err:
            problems.append(str(err))
            continue
        records.append(record)
    return records


def validate_hoss(root: str, decoder: ChipDecoder | None = None) -> list[str]:
    """Problems of `<root>/HOSS` (and `<root>/OptiSar_Pair` when present), one line each with its fix."""
    decoder = decoder or ChipDecoder()
    problems: list[str] = []
    hoss = os.path.join(root, "HOSS")
    if not os.path.isdir(hoss):
        return [f"{hoss}: folder missing; the root must contain HOSS/ in the release layout"]
    splits = {split: _check_folder(os.path.join(hoss, split), decoder, problems) for split in SPLITS}
    train_pids = {r.pid for r in splits["bounding_box_train"]}
    for split in ("query", "bounding_box_test"):
        for record in splits[split]:
            if record.pid in train_pids:
                problems.append(f"{record.path}: pid {record.pid} is also in bounding_box_train; train and test "
                                "identities must be disjoint (move or relabel one of them)")
    for record in splits["bounding_box_train"]:
        if record.pid == DISTRACTOR_PID:
            problems.append(f"{record.path}: distractor in the training split; move it to bounding_box_test")
    subset = os.path.join(hoss, "subset")
    if os.path.isdir(subset):
        for protocol, (query_modality, gallery_modality) in CROSS_MODAL.items():
            for split, modality in (("query", query_modality), ("bounding_box_test", gallery_modality)):
                for record in _check_folder(os.path.join(subset, protocol, split), decoder, problems):
                    if record.modality != modality:
                        problems.append(f"{record.path}: {MODALITY_NAMES[record.modality]} chip in {protocol}/{split}, "
                                        f"which holds {MODALITY_NAMES[modality]} chips only; move it out")
    if os.path.isdir(os.path.join(root, PAIR_FOLDER)):
        try:
            for optical, sar in scan_pairs(root):
                for record in (optical, sar):
                    try:
                        decoder(record.path, record.modality)
                    except DatasetError as err:
                        problems.append(str(err))
        except DatasetError as err:
            problems.append(str(err))
    return problems
