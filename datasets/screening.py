"""Decode every image once before work starts: bad files stop the run (or are skipped, listed, never
substituted) before the first step, and the decoded chips can be kept in memory."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

from tqdm import tqdm

from utils.errors import ShipReIDError

from .radiometry import ChipDecoder
from .records import MODALITY_NAMES, ChipRecord, DatasetError

logger = logging.getLogger("shipreid.data")
POLICIES = ("error", "skip")


def screen_records(records: Sequence[ChipRecord], decoder: ChipDecoder, policy: str = "error",
                   cache_bytes: float = 0.0) -> tuple[list[ChipRecord], dict]:
    """(records that decode, cache path -> (pixels, (width, height)) for up to `cache_bytes` of pixels).

    policy "error" raises on the first bad file; "skip" leaves bad files out and logs each with its reason.
    Chips converted to RGB on reading (pretraining pairs in another PIL mode) are counted, one log line per
    modality and mode.
    """
    if policy not in POLICIES:
        raise ShipReIDError(f"DATALOADER.ON_BAD_IMAGE must be one of {POLICIES}, got {policy!r}")
    kept, cache, bad, held = [], {}, {}, 0
    checked: set[str] = set()  # a file in several records (pairs share chips) is decoded and counted once
    conversions: Counter = Counter()
    for record in tqdm(records, desc="check images", unit="img", leave=False, dynamic_ncols=True):
        if record.path in bad:
            continue
        if record.path not in checked:
            try:
                pixels, size, converted_from = decoder.decode(record.path, record.modality)
            except DatasetError as err:
                if policy == "error":
                    raise
                bad[record.path] = str(err)
                continue
            checked.add(record.path)
            if converted_from is not None:
                conversions[record.modality, converted_from] += 1
            if held + pixels.nbytes <= cache_bytes:
                held += pixels.nbytes
                cache[record.path] = (pixels, size)
        kept.append(record)
    for reason in bad.values():
        logger.warning("skipped (DATALOADER.ON_BAD_IMAGE skip): %s", reason)
    for (modality, mode), count in sorted(conversions.items()):
        logger.info(conversion_note(count, modality, mode))
    if cache_bytes and len(cache) < len({r.path for r in kept}):
        logger.warning("image cache full at %.1f GB (DATALOADER.CACHE_MAX_GB); the other images are decoded on "
                       "every use", cache_bytes / 2 ** 30)
    return kept, cache


def conversion_note(count: int, modality: int, mode: str) -> str:
    return f"converted {count} {MODALITY_NAMES[modality]} chip(s) from PIL mode {mode} to RGB on reading"
