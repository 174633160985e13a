"""A torch Dataset over chip records: every item is a dict (image, modality, size, pid, name)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .radiometry import ChipDecoder
from .records import ChipRecord
from .ship_size import ShipSizeEncoder


class ChipDataset(Dataset):
    """Decodes each record's file, computes its size vector and applies `transform`.

    `labels` (optional) are the training class indices, one per record. An item is asked for either by
    index (test) or by (index, seed) from a training sampler: the seed tuple drives the augmentation.
    """

    def __init__(self, records: Sequence[ChipRecord], decoder: ChipDecoder, size_encoder: ShipSizeEncoder,
                 transform: Callable, labels: Optional[Sequence[int]] = None, cache: Optional[dict] = None):
        self.records = list(records)
        self.decoder, self.size_encoder, self.transform = decoder, size_encoder, transform
        self.labels = None if labels is None else list(labels)
        self.cache = cache

    def decode(self, record: ChipRecord):
        if self.cache is not None and record.path in self.cache:
            return self.cache[record.path]
        return self.decoder(record.path, record.modality)

    def __len__(self) -> int:
        return len(self.records)

    def item(self, record: ChipRecord, rng: Optional[np.random.Generator] = None) -> dict:
        """One decoded, transformed chip (without dataset index or label)."""
        pixels, (width, height) = self.decode(record)
        item = {
            "image": self.transform(pixels, rng),
            "modality": record.modality,
            "size": torch.tensor(self.size_encoder(width, height, record.modality), dtype=torch.float32),
            "pid": record.pid,
            "name": record.name,
        }
        if rng is not None and hasattr(self.transform, "erase_box"):
            item["erase"] = self.transform.erase_box(rng)
        return item

    def __getitem__(self, key: Union[int, tuple]) -> dict:
        index, rng = (key, None) if isinstance(key, int) else (key[0], np.random.default_rng(key[1]))
        item = self.item(self.records[index], rng)
        item["index"] = index
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item
