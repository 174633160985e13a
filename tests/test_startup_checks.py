"""A wrong setting fails at start-up, before any data is read (the data folder here does not even exist), with
every problem named; and a failing evaluation never loses the epoch it evaluates."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import TINY_MODEL

import test as test_entry
import train as train_entry
import train_pair as pair_entry
from configs.checks import ConfigCheckError
from processor.hooks import Hook
from processor.results import read_results
from utils.errors import ShipReIDError

TINY_RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "DATASETS.PROTOCOLS", "['ALL']"]


@pytest.mark.parametrize("entry,config,override,message", [
    (train_entry, "configs/hoss/transoss.yml", ["INPUT.SIZE_TRAIN", "[128,64]"],
     r"INPUT\.SIZE_TRAIN \[128, 64\] gives a 8x4 patch grid and INPUT\.SIZE_TEST \[256, 128\] a 16x8 one"),
    (test_entry, "configs/hoss/transoss.yml", ["INPUT.SIZE_TEST", "[128,64]", "TEST.WEIGHT", "x.pth"],
     r"INPUT\.SIZE_TEST \[128, 64\] a 8x4 one"),
    (pair_entry, "configs/pretrain/transoss.yml", ["LOSS.WEIGHTS", "[1.0,2.0]"],
     r"LOSS\.TERMS \['infonce'\] and LOSS\.WEIGHTS \[1\.0, 2\.0\] must have the same length"),
    (train_entry, "configs/hoss/sdfnet.yml", [], r"MODEL\.SDF\.STRUCT_LAYER 6 must be between 0 \(off\) and MODEL\.DEPTH 2"),
    (train_entry, "configs/hoss/transoss.yml", ["SOLVER.AMP", "fp32"], r"SOLVER\.AMP must be one of"),
    (train_entry, "configs/hoss/transoss.yml", ["SOLVER.IMS_PER_BATCH", "10"],
     r"SOLVER\.IMS_PER_BATCH 10 cannot be split into identities of DATALOADER\.NUM_INSTANCE 4 images over 1 rank"),
], ids=["train-size", "test-size", "pretrain-loss-weights", "struct-layer", "amp", "pk-batch"])
def test_config_errors_come_before_the_data_scan(tmp_path, entry, config, override, message):
    missing_root = tmp_path / "no_such_folder"
    with pytest.raises(ShipReIDError, match=message):
        entry.main(["--config_file", config, *TINY_RUN, "DATASETS.ROOT_DIR", str(missing_root), *override,
                    "OUTPUT_DIR", str(tmp_path / "out")])


def test_fusion_sample_count_is_checked_against_the_cache_generator(tmp_path):
    cache = tmp_path / "pseudo_sar"
    cache.mkdir()
    (cache / "generator.json").write_text(json.dumps({"steps": 4, "num_samples": 2}))
    common = ["--config_file", "configs/hoss/mos.yml", *TINY_RUN, "DATASETS.ROOT_DIR", str(tmp_path / "no_such_folder"),
              "TEST.WEIGHT", "x.pth", "TEST.FUSION.CACHE_DIR", str(cache), "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(ConfigCheckError, match=r"TEST\.FUSION\.NUM_SAMPLES 5 asks for more .* than the 2 that .*"
                                               r"generator\.json says were generated"):
        test_entry.main(common)
    with pytest.raises(ShipReIDError) as caught:  # with a count the cache holds, the run gets as far as the data
        test_entry.main(common + ["TEST.FUSION.NUM_SAMPLES", "2"])
    assert not isinstance(caught.value, ConfigCheckError) and "no_such_folder" in str(caught.value)


def test_fusion_refuses_a_cache_made_for_another_sar_radiometry(tmp_path):
    """MOS fuses pseudo-SAR chips imitating its percentile-stretched SAR: a cache generated for another SAR domain
    (max scaling, or other percentiles) is refused at start-up; the same domain passes the check."""
    cache = tmp_path / "pseudo_sar"
    cache.mkdir()
    common = ["--config_file", "configs/hoss/mos.yml", *TINY_RUN, "DATASETS.ROOT_DIR", str(tmp_path / "no_such_folder"),
              "TEST.WEIGHT", "x.pth", "TEST.FUSION.CACHE_DIR", str(cache), "OUTPUT_DIR", str(tmp_path / "out")]
    generated = {"num_samples": 5, "sar_radiometry": "percentile", "sar_percentiles": [5.0, 100.0],
                 "sar_db_range": [-40.0, 20.0]}
    for other, message in ((dict(generated, sar_radiometry="max"), r"sar_radiometry: cache max vs INPUT\.SAR_RADIOMETRY "
                            r"percentile"),
                           (dict(generated, sar_percentiles=[2.0, 98.0]), r"sar_percentiles: cache \[2\.0, 98\.0\] vs "
                            r"INPUT\.SAR_PERCENTILES \[5\.0, 100\.0\]")):
        (cache / "generator.json").write_text(json.dumps(other))
        with pytest.raises(ConfigCheckError, match=r"generated for another SAR radiometry.*" + message):
            test_entry.main(common)
    (cache / "generator.json").write_text(json.dumps(dict(generated, sar_db_range=[-30.0, 10.0])))  # unused by it
    with pytest.raises(ShipReIDError) as caught:
        test_entry.main(common)
    assert not isinstance(caught.value, ConfigCheckError) and "no_such_folder" in str(caught.value)


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ConfigCheckError) as caught:
        train_entry.main(["--config_file", "configs/hoss/transoss.yml", *TINY_RUN, "INPUT.SIZE_TEST", "[128,64]",
                          "LOSS.WEIGHTS", "[1.0]", "SOLVER.AMP", "fp8", "OUTPUT_DIR", str(tmp_path / "out")])
    assert str(caught.value).count("\n  ") == 3


class DeleteAfterEpoch(Hook):
    """Removes a test chip once `epoch`'s batches are done, so that its evaluation fails reading it."""

    def __init__(self, epoch: int, path):
        self.epoch, self.path = epoch, path

    def after_epoch(self, trainer):
        if trainer.epoch == self.epoch:
            self.path.unlink()


def test_a_failing_evaluation_keeps_the_epoch_and_the_resume_evaluates_it(samples_dir, tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(samples_dir, root / "HOSS")
    common = ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", str(root), *TINY_RUN,
              "DATALOADER.CACHE_IMAGES", "False", "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1",
              "SOLVER.CHECKPOINT_PERIOD", "0"]
    full = train_entry.main(common + ["OUTPUT_DIR", str(tmp_path / "full")])

    chip = root / "HOSS" / "query" / sorted(p.name for p in (root / "HOSS" / "query").iterdir())[0]
    kept = chip.read_bytes()
    build_trainer = train_entry.build_trainer

    def with_deletion(cfg, device, logger):
        trainer = build_trainer(cfg, device, logger)
        trainer.hooks.append(DeleteAfterEpoch(1, chip))
        return trainer
    monkeypatch.setattr(train_entry, "build_trainer", with_deletion)
    out = tmp_path / "cut"
    with pytest.raises(ShipReIDError, match=chip.name):
        train_entry.main(common + ["OUTPUT_DIR", str(out)])
    monkeypatch.undo()
    # epoch 1 was saved before its evaluation failed, although CHECKPOINT_PERIOD is 0
    assert (out / "checkpoints" / "last_checkpoint").read_text().strip() == "epoch_0001.pth"

    chip.write_bytes(kept)
    resumed = train_entry.main(common + ["OUTPUT_DIR", str(out), "--resume"])
    log = (out / "train.log").read_text()
    assert "epoch 1 was saved but not evaluated: evaluating it first" in log
    assert log.count("evaluation after epoch 1") == 1 and log.count("evaluation after epoch 2") == 1
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for name in ("results.json", "results_best.json"):
        resumed_results, full_results = read_results(out / name), read_results(tmp_path / "full" / name)
        assert {k: v for k, v in resumed_results.items() if k != "provenance"} == \
            {k: v for k, v in full_results.items() if k != "provenance"}, name
