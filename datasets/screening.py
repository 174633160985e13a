"""Decode every image once before work starts: bad files stop the run (or are skipped, listed, never
substituted) before the first step, and the decoded chips can be kept in memory.

Under torchrun the check is split: rank r decodes every world-th file from the r-th, the verdicts are gathered,
and every rank keeps the same records; rank 0 alone names the bad files.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

from tqdm import tqdm

from utils.distributed import gather_objects, is_main, rank, world_size
from utils.errors import ShipReIDError

from .radiometry import ChipDecoder
from .records import MODALITY_NAMES, ChipRecord, DatasetError

logger = logging.getLogger("shipreid.data")
POLICIES = ("error", "skip")


@dataclass
class ShareVerdict:
    """What one rank found in its share of the files."""
    decoded: int = 0                                      # files this rank opened and decoded
    bad: dict[str, str] = field(default_factory=dict)     # path -> reason (policy "skip")
    error: Optional[tuple[int, DatasetError]] = None      # (file index, error) of its first bad file (policy "error")
    conversions: Counter = field(default_factory=Counter)  # (modality, PIL mode) -> chips converted to RGB


def unique_files(records: Sequence[ChipRecord]) -> list[ChipRecord]:
    """The first record of every file, in order (pairs share chips: a file is decoded and counted once)."""
    files: dict[str, ChipRecord] = {}
    for record in records:
        files.setdefault(record.path, record)
    return list(files.values())


def check_share(files: Sequence[ChipRecord], decoder: ChipDecoder, policy: str, share: int, shares: int,
                hold_bytes: float) -> tuple[ShareVerdict, dict]:
    """Decode files[share::shares]: (verdict, path -> (pixels, (width, height)) held for up to `hold_bytes`).

    Policy "error" stops at the share's first bad file; the earliest over all shares is the one reported."""
    verdict, held, held_bytes = ShareVerdict(), {}, 0
    indices = range(share, len(files), shares)
    for index in tqdm(indices, desc="check images", unit="img", leave=False, dynamic_ncols=True,
                      disable=not is_main()):
        record = files[index]
        verdict.decoded += 1
        try:
            pixels, size, converted_from = decoder.decode(record.path, record.modality)
        except DatasetError as err:
            if policy == "error":
                verdict.error = (index, err)
                break
            verdict.bad[record.path] = str(err)
            continue
        if converted_from is not None:
            verdict.conversions[record.modality, converted_from] += 1
        if held_bytes + pixels.nbytes <= hold_bytes:
            held_bytes += pixels.nbytes
            held[record.path] = (pixels, size)
    return verdict, held


def screen_records(records: Sequence[ChipRecord], decoder: ChipDecoder, policy: str = "error",
                   hold_bytes: float = 0.0) -> tuple[list[ChipRecord], dict]:
    """(records that decode, the pixels this rank decoded, up to `hold_bytes`: path -> (pixels, (width, height))).

    The same kept list on every rank. policy "error" raises, on every rank, the error of the first bad file in
    `records` order; "skip" leaves bad files out and rank 0 logs each with its reason. Chips converted to RGB
    on reading (pretraining pairs in another PIL mode) are counted, one log line per modality and mode.
    """
    if policy not in POLICIES:
        raise ShipReIDError(f"DATALOADER.ON_BAD_IMAGE must be one of {POLICIES}, got {policy!r}")
    files = unique_files(records)
    verdict, held = check_share(files, decoder, policy, rank(), world_size(), hold_bytes)
    verdicts = gather_objects(verdict)
    errors = [v.error for v in verdicts if v.error is not None]
    if errors:
        raise min(errors, key=lambda found: found[0])[1]
    bad = {path: reason for v in verdicts for path, reason in v.bad.items()}
    if is_main():
        log_verdicts(verdicts, files, bad)
    return [r for r in records if r.path not in bad], held


def log_verdicts(verdicts: list[ShareVerdict], files: Sequence[ChipRecord], bad: dict[str, str]) -> None:
    decoded = [v.decoded for v in verdicts]
    logger.info("checked %d image files%s", len(files),
                f" on {len(decoded)} ranks, decoded per rank: {decoded}" if len(decoded) > 1 else "")
    for record in files:
        if record.path in bad:
            logger.warning("skipped (DATALOADER.ON_BAD_IMAGE skip): %s", bad[record.path])
    conversions = sum((v.conversions for v in verdicts), Counter())
    for (modality, mode), count in sorted(conversions.items()):
        logger.info(conversion_note(count, modality, mode))


def fill_cache(records: Sequence[ChipRecord], held: dict, decoder: ChipDecoder, cache_bytes: float) -> dict:
    """Pixels of `records` for up to `cache_bytes` (path -> (pixels, (width, height))): first those already
    held from this rank's share of the check, then the others decoded now, in order, until one does not fit."""
    if not cache_bytes:
        return {}
    files = unique_files(records)
    cache, used = {}, 0
    for record in sorted(files, key=lambda r: r.path not in held):  # stable: held files first, each in order
        pixels, size = held[record.path] if record.path in held else decoder(record.path, record.modality)
        if used + pixels.nbytes > cache_bytes:
            if record.path in held:
                continue
            break
        used += pixels.nbytes
        cache[record.path] = (pixels, size)
    if len(cache) < len(files) and is_main():
        logger.warning("image cache full at %.2f GB for this rank (DATALOADER.CACHE_MAX_GB per node); the other "
                       "images are decoded on every use", cache_bytes / 2 ** 30)
    return cache


def conversion_note(count: int, modality: int, mode: str) -> str:
    return f"converted {count} {MODALITY_NAMES[modality]} chip(s) from PIL mode {mode} to RGB on reading"
