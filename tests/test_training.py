"""End-to-end training on the real chips: pretrain -> fine-tune -> test.py, and exact resume."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import TINY_MODEL

import test as test_entry
import train as train_entry
import train_pair as pair_entry

# tiny, fast, single-process CPU runs (P = 2 identities x K = 4 images per batch)
TINY_RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.AMP", "off", "SOLVER.LOG_PERIOD", "5", "MODEL.PRETRAIN_PATH", ""]


def make_pair_root(samples_dir: str, root) -> None:
    """OptiSar_Pair from the real training chips: each identity's first optical and first SAR chip."""
    train = os.path.join(samples_dir, "bounding_box_train")
    by_pid: dict[str, dict[str, str]] = {}
    for name in sorted(os.listdir(train)):
        pid, _, modality = name[:-4].split("_")
        by_pid.setdefault(pid, {}).setdefault(modality, name)
    folder = root / "OptiSar_Pair" / "0001"
    folder.mkdir(parents=True)
    for pid, files in by_pid.items():
        if len(files) == 2:
            for modality, name in files.items():
                os.symlink(os.path.join(train, name), folder / f"hoss_{pid}_{modality}.tif")


def test_pretrain_finetune_and_test_on_real_chips(hoss_root, samples_dir, tmp_path):
    root = tmp_path / "root"
    make_pair_root(samples_dir, root)
    pre_out, ft_out, test_out = tmp_path / "pre", tmp_path / "ft", tmp_path / "test"
    pair_entry.main(["--config_file", "configs/pretrain/transoss.yml", "DATASETS.ROOT_DIR", str(root),
                     "OUTPUT_DIR", str(pre_out), "SOLVER.MAX_EPOCHS", "1", *TINY_RUN])
    backbone = pre_out / "backbone_final.pth"
    assert backbone.is_file()

    trainer = train_entry.main([
        "--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, "OUTPUT_DIR", str(ft_out),
        "SOLVER.MAX_EPOCHS", "1", *TINY_RUN, "MODEL.PRETRAIN_PATH", str(backbone)])
    # the fine-tuned model started from the pretrained backbone (its cls token moved only by one epoch)
    pretrained = torch.load(backbone, weights_only=True)
    tuned = trainer.model.state_dict()
    assert torch.allclose(tuned["backbone.cls_token"], pretrained["backbone.cls_token"], atol=1e-2)
    assert (ft_out / "results.json").is_file() and (ft_out / "checkpoints" / "last_checkpoint").is_file()

    results = {}
    for stem in ("model_final", "model_final_official"):
        results[stem] = test_entry.main([
            "--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root,
            "TEST.WEIGHT", str(ft_out / f"{stem}.pth"), "OUTPUT_DIR", str(test_out / stem), *TINY_RUN])
    assert results["model_final"] == results["model_final_official"]
    with open(ft_out / "results.json") as f:
        assert json.load(f)["ALL"]["mAP"] == pytest.approx(results["model_final"]["ALL"]["mAP"], abs=1e-9)


class StopAfterEpoch:
    """Simulates a crash right after the checkpoint of `epoch` has been written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def __getattr__(self, event):
        return lambda trainer: None

    def after_epoch_advanced(self, trainer):
        if trainer.epoch - 1 == self.epoch:
            raise KeyboardInterrupt


def test_resume_gives_the_weights_of_an_uninterrupted_run(hoss_root, tmp_path):
    common = ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, *TINY_RUN,
              "SOLVER.MAX_EPOCHS", "3", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.EVAL_PERIOD", "0",
              "DATASETS.PROTOCOLS", "['ALL']"]
    full = train_entry.main(common + ["OUTPUT_DIR", str(tmp_path / "full")]).model.state_dict()

    from processor.setup import setup_run
    import argparse
    from configs import add_config_args, parse_args
    args = parse_args(add_config_args(argparse.ArgumentParser()), common + ["OUTPUT_DIR", str(tmp_path / "cut")])
    cfg, logger, device = setup_run(args, "train.log")
    trainer = train_entry.build_trainer(cfg, device, logger)
    trainer.hooks.append(StopAfterEpoch(1))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    resumed = train_entry.main(common + ["OUTPUT_DIR", str(tmp_path / "cut"), "--resume"]).model.state_dict()
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_sigterm_saves_mid_epoch_and_resume_is_exact(hoss_root, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO
    common = ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, *TINY_RUN,
              "SOLVER.MAX_EPOCHS", "6", "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.EVAL_PERIOD", "0",
              "SOLVER.LOG_PERIOD", "1", "DATASETS.PROTOCOLS", "['ALL']"]
    full = train_entry.main(common + ["OUTPUT_DIR", str(tmp_path / "full")]).model.state_dict()

    out = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, "train.py", *common, "OUTPUT_DIR", str(out)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = out / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "epoch 2 iter 3/" in log.read_text()):
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "rerun with --resume" in err, err[-2000:]
    saved = sorted(p.name for p in (out / "checkpoints").iterdir() if "_iter_" in p.name)
    assert saved and saved[0].startswith("epoch_0002_iter_")  # stopped inside epoch 2
    resumed = train_entry.main(common + ["OUTPUT_DIR", str(out), "--resume"]).model.state_dict()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
