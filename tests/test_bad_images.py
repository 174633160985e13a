"""DATALOADER.ON_BAD_IMAGE: "error" stops before the first step naming the file and writes no checkpoint;
"skip" leaves the file out, lists it in the log, and never substitutes another image."""
from __future__ import annotations

import os
import shutil

import pytest

from conftest import TINY_MODEL

import train as train_entry
from datasets.records import DatasetError

RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
       "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "SOLVER.MAX_EPOCHS", "1", "SOLVER.EVAL_PERIOD", "0",
       "DATASETS.PROTOCOLS", "['ALL']"]


@pytest.fixture
def root_with_a_corrupt_chip(samples_dir, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(samples_dir, root / "HOSS", ignore=shutil.ignore_patterns("*.csv"))
    bad = root / "HOSS" / "bounding_box_train" / "0101_s04c1_RGB.tif"
    bad.write_bytes(bad.read_bytes()[:150])
    return str(root), str(bad)


def test_error_policy_stops_before_training(root_with_a_corrupt_chip, tmp_path):
    root, bad = root_with_a_corrupt_chip
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=bad):
        train_entry.main(["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", root,
                          "OUTPUT_DIR", str(out), *RUN])
    assert not (out / "checkpoints").exists() and not list(out.glob("model_*.pth"))


def test_skip_policy_leaves_the_file_out_and_lists_it(root_with_a_corrupt_chip, tmp_path):
    root, bad = root_with_a_corrupt_chip
    out = tmp_path / "out"
    trainer = train_entry.main(["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", root,
                                "OUTPUT_DIR", str(out), "DATALOADER.ON_BAD_IMAGE", "skip", *RUN])
    dataset = trainer.loader.dataset
    assert bad not in [r.path for r in dataset.records] and len(dataset.records) == 55
    assert dataset.num_classes == 21  # identity 101 keeps its other image
    assert bad in (out / "train.log").read_text()
    assert os.path.isfile(out / "model_final.pth")
