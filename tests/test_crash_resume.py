"""SIGKILL at three points (inside an epoch, just after a checkpoint, during a checkpoint write): every
resumed run starts from the last complete checkpoint, takes only the remaining steps and ends with exactly the
weights of an uninterrupted run; no partial checkpoint is ever used."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from test_training import assert_resumed, count_steps, saved_position

import train as train_entry

# a model big enough that a checkpoint write takes a few milliseconds (a window the test can hit)
RUN = ["MODEL.EMBED_DIM", "96", "MODEL.DEPTH", "4", "MODEL.NUM_HEADS", "4", "MODEL.DEVICE", "cpu",
       "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "",
       "SOLVER.MAX_EPOCHS", "5", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.EVAL_PERIOD", "0", "SOLVER.LOG_PERIOD", "1",
       "DATASETS.PROTOCOLS", "['ALL']"]


WRITE_WINDOW_TRIES = 4


def kill_when(args, out, condition, timeout=180.0) -> bool:
    """Start training into `out`, SIGKILL it as soon as `condition(out)` holds; False if it finished first."""
    process = subprocess.Popen([sys.executable, "train.py", "--config_file", "configs/hoss/transoss.yml",
                                *args, "OUTPUT_DIR", str(out)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        if condition(out):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
    process.wait()
    return False


def log_has(text):
    return lambda out: (out / "train.log").is_file() and text in (out / "train.log").read_text()


def checkpoint_exists(name):
    return lambda out: (out / "checkpoints" / name).is_file()


def writing_a_later_checkpoint(out) -> bool:
    """A checkpoint file is being written while an earlier one is already complete and named."""
    folder = out / "checkpoints"
    return (folder / "last_checkpoint").is_file() and any(".tmp-" in name for name in os.listdir(folder))


@pytest.fixture
def uninterrupted(hoss_root, tmp_path):
    args = ["DATASETS.ROOT_DIR", hoss_root, *RUN]
    return args, train_entry.main(["--config_file", "configs/hoss/transoss.yml", *args, "OUTPUT_DIR",
                                   str(tmp_path / "full")])


@pytest.mark.parametrize("point", ["inside_epoch", "after_checkpoint", "during_checkpoint_write"])
def test_sigkill_then_resume_is_exact(uninterrupted, tmp_path, monkeypatch, point):
    args, full = uninterrupted
    condition = {"inside_epoch": log_has("epoch 3 iter 4/"), "after_checkpoint": checkpoint_exists("epoch_0002.pth"),
                 "during_checkpoint_write": writing_a_later_checkpoint}[point]
    # a checkpoint write lasts milliseconds: a run can finish without the poll ever seeing one, so a few tries
    for attempt in range(WRITE_WINDOW_TRIES):
        out = tmp_path / f"{point}_{attempt}"
        if kill_when(args, out, condition):
            break
    else:
        pytest.fail(f"{WRITE_WINDOW_TRIES} runs ended before the kill point {point}")
    named = (out / "checkpoints" / "last_checkpoint").read_text().strip()
    assert ".tmp-" not in named and (out / "checkpoints" / named).is_file()  # never a partial file
    saved = saved_position(out)
    counter = count_steps(monkeypatch, train_entry)
    resumed = train_entry.main(["--config_file", "configs/hoss/transoss.yml", *args, "OUTPUT_DIR", str(out),
                                "--resume"]).model.state_dict()
    assert_resumed(counter, saved, full.optimizer_steps)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed[key]), key
