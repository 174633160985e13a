"""Every results file says where it came from: commit, libraries, device, world size, AMP, seed, the config file, the
overrides and a hash of the resolved config."""
from __future__ import annotations

import argparse
import hashlib
import subprocess
from importlib import metadata

import pytest

from conftest import REPO, TINY_MODEL

import test as test_entry
import train as train_entry
import utils.provenance as provenance_module
from configs import add_config_args, parse_args
from processor.results import read_results
from processor.setup import setup_run
from utils.errors import ShipReIDError
from utils.provenance import git_state, provenance

RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
       "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "DATASETS.PROTOCOLS", "['ALL']", "INPUT.SIZE_TRAIN", "[128,64]",
       "INPUT.SIZE_TEST", "[128,64]", "SOLVER.MAX_EPOCHS", "1"]
CONFIG = "configs/hoss/transoss.yml"


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, check=True).stdout


def set_up(argv: list[str]):
    return setup_run(parse_args(add_config_args(argparse.ArgumentParser()), argv), "train.log")[0]


def test_training_and_test_results_record_their_provenance(hoss_root, tmp_path):
    out = tmp_path / "run"
    overrides = [*RUN, "DATASETS.ROOT_DIR", hoss_root, "SEED", "11", "OUTPUT_DIR", str(out)]
    train_entry.main(["--config_file", CONFIG, *overrides])
    test_overrides = [*RUN, "DATASETS.ROOT_DIR", hoss_root, "TEST.WEIGHT", str(out / "model_final.pth"),
                      "OUTPUT_DIR", str(tmp_path / "test")]
    test_entry.main(["--config_file", CONFIG, *test_overrides])
    versions = {name: metadata.version(name) for name in ("torch", "torchvision", "timm")}
    dirty = bool(git("status", "--porcelain").strip())
    for path, argv, seed in ((out / "results.json", overrides, 11), (out / "results_best.json", overrides, 11),
                             (tmp_path / "test" / "results.json", test_overrides, 1234)):
        record = read_results(str(path))["provenance"]
        assert record["git"] == {"commit": git("rev-parse", "HEAD").strip(), "dirty": dirty}, path
        assert record["versions"] == versions
        assert record["device"] == {"type": "cpu", "name": record["device"]["name"], "count": 1}
        assert record["device"]["name"]
        assert (record["world_size"], record["amp"], record["seed"]) == (1, "off", seed)
        assert record["config_file"] == f"{REPO}/{CONFIG}" and record["overrides"] == argv
        # the hash of the resolved config is the hash of the config.yaml the run wrote
        config_yaml = (path.parent / "config.yaml").read_bytes()
        assert record["config_sha256"] == hashlib.sha256(config_yaml).hexdigest(), path
    assert read_results(str(tmp_path / "test" / "results.json"))["weights"] == str(out / "model_final.pth")


def test_the_config_hash_follows_the_resolved_config(tmp_path):
    base = ["--config_file", CONFIG, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")]
    first = provenance(set_up(base))["config_sha256"]
    assert provenance(set_up(base))["config_sha256"] == first
    assert provenance(set_up(base + ["SOLVER.BASE_LR", "0.001"]))["config_sha256"] != first
    # the same resolved value, written another way: the same configuration
    assert provenance(set_up(base + ["SOLVER.BASE_LR", "5e-4"]))["config_sha256"] == first


def test_results_are_written_only_for_the_run_that_was_set_up(tmp_path):
    cfg = set_up(["--config_file", CONFIG, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "a")])
    set_up(["--config_file", CONFIG, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "b")])
    with pytest.raises(ShipReIDError, match="not for the configuration this process's run was set up with"):
        provenance(cfg)


def test_outside_a_git_checkout_the_commit_is_unknown(tmp_path, monkeypatch):
    assert git_state()["commit"] == git("rev-parse", "HEAD").strip()
    monkeypatch.setattr(provenance_module, "REPO", str(tmp_path))  # an unpacked archive: no .git
    assert git_state() == {"commit": "unknown", "dirty": "unknown"}

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(provenance_module, "REPO", REPO)
    monkeypatch.setattr(subprocess, "run", no_git)  # a machine without git
    assert git_state() == {"commit": "unknown", "dirty": "unknown"}
