"""The evaluator keeps the test chips its screening pass decoded (DATALOADER.CACHE_IMAGES): every evaluation
reads memory, not files, and gives the same features as reading the files."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from conftest import TINY_MODEL

from configs import load_config
from datasets import build_dataset
from datasets.records import DatasetError
from model import build_model
from processor.evaluator import Evaluator


def evaluator_and_model(root: str, cache: bool):
    cfg = load_config("configs/hoss/transoss.yml", [*TINY_MODEL, "DATASETS.ROOT_DIR", root, "MODEL.DEVICE", "cpu",
                                                    "DATALOADER.NUM_WORKERS", "0", "DATASETS.PROTOCOLS", "['O2S']",
                                                    "DATALOADER.CACHE_IMAGES", str(cache)])
    protocols = [build_dataset(cfg).protocol("O2S")]
    torch.manual_seed(0)
    return Evaluator(cfg, protocols), build_model(cfg).eval()


def test_cached_test_chips_are_read_from_memory(samples_dir, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(samples_dir, root / "HOSS")  # a copy whose chips this test may delete
    cached, model = evaluator_and_model(str(root), cache=True)
    uncached, _ = evaluator_and_model(str(root), cache=False)
    assert len(cached.cache) == len(cached.records) > 0 and not uncached.cache
    from_files = uncached.extract(model, torch.device("cpu"))
    for record in cached.records:
        os.remove(record.path)
    assert torch.equal(cached.extract(model, torch.device("cpu")), from_files)
    with pytest.raises(DatasetError, match="file not found"):  # without the cache the files are read again
        uncached.extract(model, torch.device("cpu"))
