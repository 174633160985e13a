"""Decode every image once before work starts: bad files stop the run (or are skipped, listed, never
substituted) before the first step, and the decoded chips can be kept in memory."""
from __future__ import annotations

import logging
from typing import Sequence

from tqdm import tqdm

from utils.errors import ShipReIDError

from .radiometry import ChipDecoder
from .records import ChipRecord, DatasetError

logger = logging.getLogger("shipreid.data")
POLICIES = ("error", "skip")


def screen_records(records: Sequence[ChipRecord], decoder: ChipDecoder, policy: str = "error",
                   cache_bytes: float = 0.0) -> tuple[list[ChipRecord], dict]:
    """(records that decode, cache path -> (pixels, (width, height)) for up to `cache_bytes` of pixels).

    policy "error" raises on the first bad file; "skip" leaves bad files out and logs each with its reason.
    """
    if policy not in POLICIES:
        raise ShipReIDError(f"DATALOADER.ON_BAD_IMAGE must be one of {POLICIES}, got {policy!r}")
    kept, cache, bad, held = [], {}, {}, 0
    for record in tqdm(records, desc="check images", unit="img", leave=False, dynamic_ncols=True):
        if record.path in bad:
            continue
        if record.path not in cache:
            try:
                decoded = decoder(record.path, record.modality)
            except DatasetError as err:
                if policy == "error":
                    raise
                bad[record.path] = str(err)
                continue
            if held + decoded[0].nbytes <= cache_bytes:
                held += decoded[0].nbytes
                cache[record.path] = decoded
        kept.append(record)
    for reason in bad.values():
        logger.warning("skipped (DATALOADER.ON_BAD_IMAGE skip): %s", reason)
    if cache_bytes and len(cache) < len({r.path for r in kept}):
        logger.warning("image cache full at %.1f GB (DATALOADER.CACHE_MAX_GB); the other images are decoded on "
                       "every use", cache_bytes / 2 ** 30)
    return kept, cache
