"""Dataset registry and loader builders."""
from __future__ import annotations

from torch.utils.data import DataLoader

from utils.registry import Registry

from .chip_dataset import ChipDataset
from .hoss import HOSS
from .radiometry import ChipDecoder
from .records import ChipRecord
from .ship_size import ShipSizeEncoder
from .transforms import build_test_transform

DATASETS = Registry("dataset")
DATASETS.register("HOSS")(HOSS)


def build_dataset(cfg):
    return DATASETS.get(cfg.DATASETS.NAMES, "DATASETS.NAMES")(cfg.DATASETS.ROOT_DIR)


def build_test_loader(cfg, records: list[ChipRecord]) -> DataLoader:
    dataset = ChipDataset(records, ChipDecoder.from_config(cfg), ShipSizeEncoder.from_config(cfg),
                          build_test_transform(cfg))
    workers = cfg.DATALOADER.NUM_WORKERS
    return DataLoader(dataset, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, num_workers=workers,
                      persistent_workers=False, pin_memory=False)
