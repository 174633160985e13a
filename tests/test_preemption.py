"""Preemption under torchrun: SIGTERM to the launcher saves a mid-epoch checkpoint within a few steps on every
rank and --resume ends exactly as an uninterrupted run; a resume on a node that does not see the checkpoint says
why; a GPU's random state is matched to the rank that drew from it."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from test_distributed import DETERMINISTIC_RUN, run

from processor.rng import pick_cuda_state, restore_rank_state, rng_state, seed_everything

CONFIG = os.path.join(REPO, "configs", "hoss", "transoss.yml")
# LOG_PERIOD far beyond a run's steps: ranks that agreed only at log lines would never stop mid-epoch; drop path on,
# so the random stream of every rank must be saved mid-epoch and handed back to it for an exact resume
PREEMPT_RUN = [*DETERMINISTIC_RUN, "MODEL.DROP_PATH", "0.3", "INPUT.SIZE_TRAIN", "[128,64]", "INPUT.SIZE_TEST",
               "[128,64]", "SOLVER.MAX_EPOCHS", "3", "SOLVER.LOG_PERIOD", "1000", "DATASETS.PROTOCOLS", "['ALL']"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# the SIGTERM is acted on after at most this many optimizer steps (one to finish the step it arrived in, one for
# the vote started after it to be read)
MAX_STOP_STEPS = 2


def test_sigterm_to_torchrun_saves_mid_epoch_on_every_rank_and_resume_is_exact(hoss_root, tmp_path):
    args = ["--config_file", CONFIG, *PREEMPT_RUN, "DATASETS.ROOT_DIR", hoss_root]
    full, cut = tmp_path / "full", tmp_path / "cut"
    run("train.py", args + ["OUTPUT_DIR", str(full)], 2)

    log, stderr = cut / "train.log", tmp_path / "cut.err"
    with open(stderr, "w") as err:
        launcher = subprocess.Popen(TORCHRUN + ["train.py", *args, "OUTPUT_DIR", str(cut)], cwd=REPO,
                                    stdout=subprocess.DEVNULL, stderr=err)
        # with LOG_PERIOD 1000 the only progress lines are the epochs' last steps: stop at the start of epoch 2
        deadline = time.time() + 180
        while launcher.poll() is None and time.time() < deadline and not (
                log.is_file() and re.search(r"epoch 1 iter (\d+)/\1 ", log.read_text())):
            time.sleep(0.005)
        assert launcher.poll() is None, stderr.read_text()[-3000:]
        launcher.send_signal(signal.SIGTERM)  # to the launcher only: it forwards SIGTERM to both workers
        sent = time.time()
        launcher.wait(timeout=120)
    exited = time.time() - sent
    text, written = stderr.read_text(), log.read_text()
    # both workers stopped themselves, before torchrun's 30 s SIGKILL
    stops = re.findall(r"stopped by SIGTERM at epoch (\d+), iteration (\d+); the state is saved", text)
    assert len(stops) == 2 and stops[0] == stops[1], text[-3000:]
    assert "forcefully exiting" not in text and exited < 25, (exited, text[-3000:])
    epoch, iteration = map(int, stops[0])
    per_epoch = int(re.search(r"epoch 1 iter (\d+)/\1 ", written).group(1))
    assert epoch == 2 and 0 < iteration < per_epoch, (epoch, iteration, per_epoch)
    name = f"epoch_0002_iter_{iteration:06d}.pth"
    assert (cut / "checkpoints" / "last_checkpoint").read_text().strip() == name
    assert sorted(os.listdir(cut / "checkpoints")) == sorted(["last_checkpoint", name])
    # rank 0's own figures: the steps and seconds from its SIGTERM to the agreed stop
    signalled, stopped, steps, seconds = re.search(
        r"SIGTERM after step (\d+): stopping after step (\d+) \((\d+) step\(s\), ([\d.]+) s later\)", written).groups()
    assert int(stopped) == per_epoch + iteration and int(steps) == int(stopped) - int(signalled)
    assert int(steps) <= MAX_STOP_STEPS, written[-2000:]
    print(f"agreement delay: {steps} step(s), {seconds} s; launcher exited {exited:.2f} s after SIGTERM")

    run("train.py", ["--resume", *args, "OUTPUT_DIR", str(cut)], 2)
    assert f"resumed from {cut / 'checkpoints' / name} at epoch 2, iteration {iteration}" in log.read_text()
    uninterrupted = torch.load(full / "model_final.pth", weights_only=True)
    resumed = torch.load(cut / "model_final.pth", weights_only=True)
    assert uninterrupted.keys() == resumed.keys()
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], resumed[key]), key


# The torchrun entry: every rank but 0 runs from another working directory, so a relative OUTPUT_DIR is another
# folder there, as it is on a node that does not share rank 0's filesystem.
OTHER_NODE = """import os, runpy, sys
sys.path.insert(0, {repo!r})
if os.environ["RANK"] != "0":
    os.chdir({elsewhere!r})
runpy.run_path(os.path.join({repo!r}, "train.py"), run_name="__main__")
"""


def test_resume_on_a_rank_that_does_not_see_the_checkpoint_names_it_and_the_requirement(hoss_root, tmp_path):
    here, elsewhere = tmp_path / "node0", tmp_path / "node1"
    (here / "out" / "checkpoints").mkdir(parents=True)
    elsewhere.mkdir()
    (here / "out" / "checkpoints" / "epoch_0001.pth").write_bytes(b"")  # never read: the ranks agree first
    (here / "out" / "checkpoints" / "last_checkpoint").write_text("epoch_0001.pth\n")
    entry = tmp_path / "entry.py"
    entry.write_text(OTHER_NODE.format(repo=REPO, elsewhere=str(elsewhere)))
    done = subprocess.run(TORCHRUN + [str(entry), "--resume", "--config_file", CONFIG, *PREEMPT_RUN,
                                      "DATASETS.ROOT_DIR", hoss_root, "OUTPUT_DIR", "out"],
                          cwd=here, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    message = ("error: --resume: rank(s) 1 cannot see out/checkpoints/epoch_0001.pth, the checkpoint that rank 0 "
               "found in out; every rank reads it itself, so OUTPUT_DIR must be on a filesystem that all nodes share")
    # the ranks agree before anyone reads the file: both stop with the message, none with another error
    assert done.stderr.count(message) == 2, done.stderr[-3000:]
    assert "cannot read the checkpoint" not in done.stderr


def test_a_gpu_state_is_picked_for_this_rank_or_not_at_all():
    own, others = torch.arange(16, dtype=torch.uint8), [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    # saved now: the saving rank's own device, restored on whatever device index this rank has
    assert pick_cuda_state(own, 0, 1) is own and pick_cuda_state(own, 5, 8) is own
    # older checkpoints, every visible GPU's state from each rank's process: the same GPUs per node, this device's
    assert pick_cuda_state(others, 3, 8) is others[3] and pick_cuda_state(others[:1], 0, 1) is others[0]
    # another number of GPUs per node: the entry that was this rank's is unknown (and may not exist)
    assert pick_cuda_state(others, 3, 4) is None and pick_cuda_state(others[:2], 3, 4) is None
    assert pick_cuda_state(others, 0, 1) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_states_of_another_gpu_count_are_reseeded_not_indexed(caplog):
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    seed_everything(3)
    torch.rand(4, device=device)
    state = rng_state(device)
    assert isinstance(state["cuda"], torch.Tensor)  # this device's state only
    after = torch.rand(4, device=device)
    seed_everything(0)
    restore_rank_state([state], 0, 1, seed=3, epoch=1, iteration=0, device=device)
    assert torch.equal(torch.rand(4, device=device), after)

    # a checkpoint of the old layout saved on a node with one GPU more than this one
    old = dict(state, cuda=[state["cuda"]] * (torch.cuda.device_count() + 1))
    with caplog.at_level(logging.WARNING, logger="shipreid.train"):
        restore_rank_state([old], 0, 1, seed=3, epoch=2, iteration=5, device=device)
    assert f"{torch.cuda.device_count() + 1} GPU(s) per process" in caplog.text
