"""The dataset validator passes clean folders and reports each planted problem with its file."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from datasets.validate import validate_hoss
from tools.validate_dataset import main as validate_main


def test_clean_folders_pass(hoss_root, tmp_path):
    clean = validate_hoss(hoss_root)
    assert clean.problems == [] and clean.notes == []
    from datasets.synthetic import SyntheticSpec, ensure_synthetic
    root = str(tmp_path / "synthetic")
    ensure_synthetic(root, SyntheticSpec(train_ids=4, test_ids=4, distractors=2, pair_folders=1, pairs_per_folder=3))
    assert validate_hoss(root).problems == []
    assert validate_main([root]) == []


def test_planted_problems_are_each_reported(samples_dir, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(samples_dir, root / "HOSS", ignore=shutil.ignore_patterns("*.csv"))
    train, test = root / "HOSS" / "bounding_box_train", root / "HOSS" / "bounding_box_test"
    corrupt = train / "0001_s05c1_RGB.tif"
    corrupt.write_bytes(corrupt.read_bytes()[:200])                       # truncated TIFF
    wrong_name = train / "ship_0001.tif"
    wrong_name.write_bytes(b"")                                           # name outside the convention
    single_band = test / "0002_s05c9_RGB.tif"
    Image.fromarray(np.zeros((40, 10), dtype=np.uint8), mode="L").save(single_band)  # 1-band optical chip
    leak = test / "0004_s05c9_SAR.tif"                                     # pid 4 is a training identity
    Image.fromarray(np.ones((30, 8), dtype=np.float32), mode="F").save(leak)
    problems = validate_hoss(str(root)).problems
    for planted in (corrupt, wrong_name, single_band, leak):
        assert sum(str(planted) in line for line in problems) == 1, planted
    assert len(problems) == 4
    with pytest.raises(SystemExit) as stop:
        validate_main([str(root)])
    assert stop.value.code == 1
