"""Real multi-process DDP on CPU (gloo) through torchrun: same weights and metrics as one process."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_MODEL
from test_training import build, make_pair_root

import train as train_entry
import train_pair as pair_entry
from processor.engine import unwrap
from processor.results import metrics_of, read_results

# drop path and dropout draw from each process's own generator, so they are off for an exact comparison; the
# defaults do the rest: BN neck statistics and the triplet batch over the global batch. 8 images of 2 identities:
# each of 2 ranks holds ONE identity, the case where per-rank BN statistics would describe a single ship
DETERMINISTIC_RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
                     "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "MODEL.DROP_PATH", "0.0",
                     "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.EVAL_PERIOD", "0", "SOLVER.MAX_EPOCHS", "2"]


def run(script: str, args: list[str], nproc: int, threads: int | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    done = subprocess.run(launcher + [script] + args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def initial_parameters(trainer) -> dict[str, torch.Tensor]:
    """The trainable weights a run starts from (the same seed on every rank: one process builds them alike)."""
    return {name: p.detach().clone() for name, p in unwrap(trainer.model).named_parameters() if p.requires_grad}


def assert_trained(initial: dict, final: dict, tolerance: float) -> None:
    """The weights moved far beyond the tolerance of the comparison: a run that trained nothing cannot pass."""
    moved = max((final[k].float() - v).abs().max().item() for k, v in initial.items())
    assert moved >= 100 * tolerance, moved


# SDF-Net's structure loss and MOS's CMAL pair images of one identity: they see the gathered global batch too
# with gradient accumulation each rank keeps its gradients local inside a group (DDP no_sync) and all-reduces once
@pytest.mark.parametrize("recipe,overrides", [
    pytest.param("transoss", [], id="transoss"), pytest.param("sdfnet", ["MODEL.SDF.STRUCT_LAYER", "1"], id="sdfnet"),
    pytest.param("mos", [], id="mos"), pytest.param("transoss", ["SOLVER.ACCUM_STEPS", "2"], id="transoss-accum2"),
    # every loss set one process accepts: without "id" no classifier is built and the neck's scale is not trained
    pytest.param("transoss", ["LOSS.TERMS", "[triplet]", "LOSS.WEIGHTS", "[1.0]"], id="triplet-only"),
    pytest.param("transoss", ["LOSS.TERMS", "[id]", "LOSS.WEIGHTS", "[1.0]"], id="id-only"),
    pytest.param("mos", ["LOSS.TERMS", "[triplet,cmal]", "LOSS.WEIGHTS", "[1.0,2.0]"], id="mos-no-id")])
def test_two_process_training_matches_one_process(hoss_root, tmp_path, recipe, overrides):
    base = ["--config_file", f"configs/hoss/{recipe}.yml", "DATASETS.ROOT_DIR", hoss_root, *DETERMINISTIC_RUN,
            *overrides, "SOLVER.EVAL_PERIOD", "0"]
    outputs = {nproc: run("train.py", base + ["OUTPUT_DIR", str(tmp_path / f"np{nproc}")], nproc) for nproc in (1, 2)}
    # no warnings from a normal run (e.g. the deprecated torch.distributed.nn gather), on any rank
    assert "Warning" not in outputs[2].stderr + outputs[2].stdout, outputs[2].stderr[-2000:]
    one = torch.load(tmp_path / "np1" / "model_final.pth", weights_only=True)
    two = torch.load(tmp_path / "np2" / "model_final.pth", weights_only=True)
    assert one.keys() == two.keys()
    one_state = torch.load(tmp_path / "np1" / "checkpoints" / "epoch_0002.pth", weights_only=False)["model"]
    assert_trained(initial_parameters(build(train_entry.build_trainer, base + ["OUTPUT_DIR", str(tmp_path / "init")])),
                   one, 1e-5)
    for key in one:
        # weights within 1e-5 (measured 3.4e-7); the BN running statistics average features in which those
        # rounding differences are amplified by the blocks (measured 1.4e-5 for SDF-Net), so they get 5e-5
        atol = 5e-5 if "running_" in key else 1e-5
        assert torch.allclose(one[key].float(), two[key].float(), atol=atol, rtol=0), key
    assert torch.equal(one_state["neck.num_batches_tracked"], two["neck.num_batches_tracked"])
    one_results, two_results = (read_results(tmp_path / f"np{n}" / "results.json") for n in (1, 2))
    assert metrics_of(one_results) == metrics_of(two_results)  # evaluation sharded over two ranks, gathered on rank 0
    assert (one_results["provenance"]["world_size"], two_results["provenance"]["world_size"]) == (1, 2)
    log = (tmp_path / "np2" / "train.log").read_text()
    assert "2 rank(s), 2 per node; 8 images per step, 4 per rank; BN neck statistics over the global batch" in log
    assert ("not trained: neck.weight" in log) == ("id" not in overrides[overrides.index("LOSS.TERMS") + 1]
                                                   if "LOSS.TERMS" in overrides else False)


def test_two_process_resume_gives_each_rank_its_own_random_stream_back(hoss_root, tmp_path):
    """Drop path on: each rank draws its own masks (a stream seeded from SEED and its rank). A 2-rank run resumed
    from its epoch-1 checkpoint ends with exactly the weights of the uninterrupted run, which holds only if
    every rank's random state is saved and handed back to that rank."""
    args = ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, *DETERMINISTIC_RUN,
            "MODEL.DROP_PATH", "0.3", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.LOG_PERIOD", "1"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run("train.py", args + ["OUTPUT_DIR", str(full)], 2)
    saved = torch.load(full / "checkpoints" / "epoch_0001.pth", weights_only=False)
    assert len(saved["rng"]) == 2 and not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "epoch_0001.pth", resumed / "checkpoints")
    (resumed / "checkpoints" / "last_checkpoint").write_text("epoch_0001.pth\n")
    run("train.py", ["--resume", *args, "OUTPUT_DIR", str(resumed)], 2)
    # it started at epoch 2 and trained epoch 2 only (a job that retrained from scratch would end with the same
    # weights): with LOG_PERIOD 1 rank 0 logs every step it runs
    log = (resumed / "train.log").read_text()
    assert f"resumed from {resumed / 'checkpoints' / 'epoch_0001.pth'} at epoch 2, iteration 0" in log
    ran = [(int(e), int(i), int(n)) for e, i, n in re.findall(r"epoch (\d+) iter (\d+)/(\d+)", log)]
    assert ran and ran == [(2, i, ran[0][2]) for i in range(1, ran[0][2] + 1)], ran
    uninterrupted = torch.load(full / "model_final.pth", weights_only=True)
    continued = torch.load(resumed / "model_final.pth", weights_only=True)
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], continued[key]), key


# drop path off (pretraining has no BN neck): two ranks' arithmetic differs from one process's only in rounding
PAIR_RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "MODEL.DROP_PATH", "0.0", "SOLVER.CHECKPOINT_PERIOD", "0",
            "SOLVER.MAX_EPOCHS", "2"]


def test_two_process_pretraining_matches_one_process(samples_dir, tmp_path):
    """train_pair.py on two ranks: every rank's InfoNCE sees the negatives of the whole global batch (gathered) and
    the learned temperature gets the same gradient everywhere, so backbone and logit_scale are one process's."""
    root = tmp_path / "root"
    make_pair_root(samples_dir, root)
    args = ["--config_file", "configs/pretrain/transoss.yml", "DATASETS.ROOT_DIR", str(root), *PAIR_RUN]
    for nproc in (1, 2):
        run("train_pair.py", args + ["OUTPUT_DIR", str(tmp_path / f"np{nproc}")], nproc)
    one, two = (torch.load(tmp_path / f"np{n}" / "checkpoints" / "epoch_0002.pth", weights_only=False)
                for n in (1, 2))
    backbone = {k: v for k, v in one["model"].items() if k.startswith("backbone.")}
    assert backbone.keys() == torch.load(tmp_path / "np1" / "backbone_final.pth", weights_only=True).keys()
    for key, value in backbone.items():  # measured 6e-8; without the gathered negatives 5e-4
        assert torch.allclose(value, two["model"][key], atol=1e-6, rtol=0), key
    scale = next(k for k in one["criterion"] if k.endswith("logit_scale"))
    assert torch.allclose(one["criterion"][scale], two["criterion"][scale], atol=1e-7, rtol=0)  # measured 0

    trainer = build(pair_entry.build_pair_trainer, args + ["OUTPUT_DIR", str(tmp_path / "init")])
    initial = initial_parameters(trainer)
    assert_trained({k: v for k, v in initial.items() if k.startswith("backbone.")}, backbone, 1e-6)
    assert_trained({scale: trainer.criterion.state_dict()[scale]}, one["criterion"], 1e-7)


def test_sharded_test_py_equals_official_features(golden_dir, hoss_root, tmp_path):
    golden = os.path.join(golden_dir, "transoss_tiny")
    run("test.py", ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root,
                    "TEST.WEIGHT", os.path.join(golden, "transoss_tiny_official_format.pth"), "OUTPUT_DIR", str(tmp_path),
                    "TEST.SAVE_FEATS", "True", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", *TINY_MODEL], 2)
    for protocol in ("ALL", "O2S", "S2O"):
        ours = np.load(tmp_path / f"features_{protocol}.npz")
        ref = np.load(os.path.join(golden, f"features_{protocol}.npz"))
        assert list(ours["names"]) == list(ref["names"])
        diff = float(np.abs(ours["feats"] - ref["feats"]).max())
        assert diff < 1e-5, (protocol, diff)  # measured 2.3e-6 at most


def test_a_rank_that_raises_stops_the_whole_job(hoss_root, tmp_path):
    """Rank 0 cannot write OUTPUT_DIR (a path under a regular file) while rank 1 goes on to its first
    collective: the job must end promptly with rank 0's message instead of hanging."""
    import time
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, *DETERMINISTIC_RUN,
            "OUTPUT_DIR", str(blocker / "out"), "DIST.TIMEOUT_S", "60"]
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "OUTPUT_DIR" in done.stdout + done.stderr and "cannot be written" in done.stdout + done.stderr
    assert time.time() - start < 120


def test_bbdm_training_and_sharded_generation_under_torchrun(hoss_root, tmp_path):
    """train_bbdm.py runs on two ranks; generation split over two ranks writes the same cache, byte for byte,
    as one process (each chip's samples come from its own seeded generator)."""
    common = ["--config_file", "configs/bbdm/tiny.yml", "DATASETS.ROOT_DIR", hoss_root]
    run("train_bbdm.py", common + ["OUTPUT_DIR", str(tmp_path / "bbdm"), "SOLVER.MAX_EPOCHS", "1"], 2)
    weights = tmp_path / "bbdm" / "bbdm_final.pth"
    assert weights.is_file()
    caches = {}
    for nproc in (1, 2):
        caches[nproc] = tmp_path / f"cache{nproc}"
        run("tools/generate_pseudo_sar.py", common + ["DATASETS.PROTOCOLS", "[O2S]", "BBDM.WEIGHTS", str(weights),
                                                      "TEST.FUSION.CACHE_DIR", str(caches[nproc]),
                                                      "OUTPUT_DIR", str(tmp_path / f"gen{nproc}")], nproc,
            threads=1)  # torchrun runs one thread per process: the same for one process, so the same arithmetic
    files = sorted(str(p.relative_to(caches[1])) for p in caches[1].rglob("*.png"))
    assert files and files == sorted(str(p.relative_to(caches[2])) for p in caches[2].rglob("*.png"))
    for name in files:
        assert (caches[1] / name).read_bytes() == (caches[2] / name).read_bytes(), name
