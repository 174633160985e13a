"""Every bad input stops train.py before training with a message naming the offender, and leaves nothing
in OUTPUT_DIR that a later run could take for a result (no checkpoint, no weights, no results.json)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_MODEL

import train as train_entry
from utils.errors import ShipReIDError

RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
       "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "SOLVER.MAX_EPOCHS", "1", "SOLVER.EVAL_PERIOD", "0"]


def plant(case: str, hoss, tmp_path) -> tuple[list[str], str]:
    """Damage a copy of the real chips (or the arguments) for `case`; returns (extra overrides, offender)."""
    train, query, gallery = hoss / "bounding_box_train", hoss / "query", hoss / "bounding_box_test"
    if case == "corrupt_tiff":
        path = train / "0001_s05c1_RGB.tif"
        path.write_bytes(path.read_bytes()[:300])
    elif case == "empty_file":
        path = query / "0002_s05c1_RGB.tif"
        path.write_bytes(b"")
    elif case == "optical_wrong_channels":
        path = gallery / "0002_s05c3_RGB.tif"
        Image.fromarray(np.zeros((40, 10), np.uint8), mode="L").save(path)
    elif case in ("sar_all_zero", "sar_nan", "sar_inf"):
        path = train / "0001_s05c2_SAR.tif"
        values = {"sar_all_zero": 0.0, "sar_nan": np.nan, "sar_inf": np.inf}[case]
        Image.fromarray(np.full((30, 8), values, np.float32), mode="F").save(path)
    elif case == "unknown_name":  # a chip-like file (image extension) with a name outside the convention
        path = train / "ship_0001.tif"
        path.write_bytes(b"x")
    elif case == "empty_split":
        for chip in query.iterdir():
            chip.unlink()
        path = query
    elif case == "pid_in_train_and_test":
        path = gallery / "0001_s05c9_RGB.tif"
        shutil.copyfile(train / "0001_s05c1_RGB.tif", path)
    elif case == "unknown_config_key":
        return ["MODEL.NOT_A_KEY", "1"], "MODEL.NOT_A_KEY"
    elif case == "wrong_config_type":
        return ["SOLVER.MAX_EPOCHS", "many"], "SOLVER.MAX_EPOCHS"
    elif case in ("weights_wrong_shapes", "weights_foreign_layout", "weights_missing"):
        path = tmp_path / f"{case}.pth"
        if case == "weights_wrong_shapes":
            torch.save({"base.cls_token": torch.zeros(1, 1, 64), "base.pos_embed": torch.zeros(1, 129, 64)}, path)
        elif case == "weights_foreign_layout":
            torch.save({"layer1.conv.weight": torch.zeros(3)}, path)
        return ["MODEL.PRETRAIN_PATH", str(path)], str(path)
    return [], str(path)


CASES = ["corrupt_tiff", "empty_file", "optical_wrong_channels", "sar_all_zero", "sar_nan", "sar_inf",
         "unknown_name", "empty_split", "pid_in_train_and_test", "unknown_config_key", "wrong_config_type",
         "weights_wrong_shapes", "weights_foreign_layout", "weights_missing"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_before_training(case, samples_dir, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(samples_dir, root / "HOSS", ignore=shutil.ignore_patterns("*.csv"))
    extra, offender = plant(case, root / "HOSS", tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ShipReIDError) as err:
        train_entry.main(["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", str(root),
                          "OUTPUT_DIR", str(out), *RUN, *extra])
    assert offender in str(err.value)
    written = {p.name for p in out.rglob("*")} if out.exists() else set()
    assert not written & {"checkpoints", "results.json", "model_final.pth", "model_best.pth"}
    assert not any(name.endswith(".pth") for name in written)


def test_unwritable_output_dir_and_exit_status(hoss_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run([sys.executable, "train.py", "--config_file", "configs/hoss/transoss.yml",
                           "DATASETS.ROOT_DIR", hoss_root, "OUTPUT_DIR", str(blocker / "out"), *RUN],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and str(blocker / "out") in done.stderr and "Traceback" not in done.stderr
