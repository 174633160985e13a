"""Check a dataset root completely and report every problem (instead of stopping at the first)."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from .hoss import CROSS_MODAL
from .pairs import group_pairs, lone_member_error, scan_pair_files
from .radiometry import ChipDecoder
from .records import (DISTRACTOR_PID, MODALITY_NAMES, PAIR_FOLDER, ChipRecord, DatasetError, ignored_note,
                      list_chip_files, parse_hoss_name)
from .screening import conversion_note

SPLITS = ("bounding_box_train", "query", "bounding_box_test")


@dataclass
class ValidationReport:
    problems: list[str] = field(default_factory=list)  # each stops a run: one line with its fix
    notes: list[str] = field(default_factory=list)     # what a run does on its own: ignore, convert


def _check_folder(folder: str, decoder: ChipDecoder, report: ValidationReport) -> list[ChipRecord]:
    """Records of the folder's valid chips; a problem line for every other chip, a note for non-chip files."""
    if not os.path.isdir(folder):
        report.problems.append(f"{folder}: folder missing; create it with the release's files")
        return []
    chips, ignored = list_chip_files(folder)
    if ignored:
        report.notes.append(ignored_note(folder, ignored))
    if not chips:
        report.problems.append(f"{folder}: folder holds no chips; copy the split's chips into it")
    records = []
    for name in chips:
        path = os.path.join(folder, name)
        try:
            record = parse_hoss_name(path)
            decoder(path, record.modality)
        except DatasetError as err:
            report.problems.append(str(err))
            continue
        records.append(record)
    return records


def _check_pairs(root: str, decoder: ChipDecoder, report: ValidationReport) -> None:
    """OptiSar_Pair: names, partners and decoding of every chip; conversions to RGB counted as notes."""
    try:
        records, notes = scan_pair_files(root)
    except DatasetError as err:
        report.problems.append(str(err))
        return
    report.notes += notes
    _, lone = group_pairs(records)
    report.problems += [str(lone_member_error(record)) for record in lone]
    conversions: Counter = Counter()
    for record in records:
        try:
            *_, converted_from = decoder.decode(record.path, record.modality)
        except DatasetError as err:
            report.problems.append(str(err))
            continue
        if converted_from is not None:
            conversions[record.modality, converted_from] += 1
    report.notes += [f"{os.path.join(root, PAIR_FOLDER)}: {conversion_note(count, modality, mode)}"
                     for (modality, mode), count in sorted(conversions.items())]


def validate_hoss(root: str, sar_radiometry: str = "max") -> ValidationReport:
    """Problems and notes of `<root>/HOSS` (and `<root>/OptiSar_Pair` when present)."""
    decoder = ChipDecoder(sar_radiometry)
    report = ValidationReport()
    hoss = os.path.join(root, "HOSS")
    if not os.path.isdir(hoss):
        report.problems.append(f"{hoss}: folder missing; the root must contain HOSS/ in the release layout")
        return report
    splits = {split: _check_folder(os.path.join(hoss, split), decoder, report) for split in SPLITS}
    train_pids = {r.pid for r in splits["bounding_box_train"]}
    for split in ("query", "bounding_box_test"):
        for record in splits[split]:
            if record.pid in train_pids:
                report.problems.append(f"{record.path}: pid {record.pid} is also in bounding_box_train; train and "
                                       "test identities must be disjoint (move or relabel one of them)")
    for record in splits["bounding_box_train"]:
        if record.pid == DISTRACTOR_PID:
            report.problems.append(f"{record.path}: distractor in the training split; move it to bounding_box_test")
    subset = os.path.join(hoss, "subset")
    if os.path.isdir(subset):
        for protocol, (query_modality, gallery_modality) in CROSS_MODAL.items():
            for split, modality in (("query", query_modality), ("bounding_box_test", gallery_modality)):
                for record in _check_folder(os.path.join(subset, protocol, split), decoder, report):
                    if record.modality != modality:
                        report.problems.append(
                            f"{record.path}: {MODALITY_NAMES[record.modality]} chip in {protocol}/{split}, "
                            f"which holds {MODALITY_NAMES[modality]} chips only; move it out")
    if os.path.isdir(os.path.join(root, PAIR_FOLDER)):
        _check_pairs(root, ChipDecoder(sar_radiometry, convert_8bit=True), report)
    return report
