"""End-to-end training on the real chips: pretrain -> fine-tune -> test.py, and exact resume."""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from conftest import TINY_MODEL

import test as test_entry
import train as train_entry
import train_pair as pair_entry
from configs import add_config_args, parse_args
from processor.engine import unwrap
from processor.hooks import Hook
from processor.results import metrics_of, read_results
from model.weights import WeightsError
from processor.setup import setup_run
from utils.errors import ShipReIDError

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


def build(builder, argv: list[str]):
    """The trainer that an entry point's main(argv) would train, before its first step."""
    cfg, logger, device = setup_run(parse_args(add_config_args(argparse.ArgumentParser()), argv), "train.log")
    return builder(cfg, device, logger)


def test_pretrain_finetune_and_test_on_real_chips(hoss_root, samples_dir, tmp_path):
    root = tmp_path / "root"
    make_pair_root(samples_dir, root)
    pre_out, ft_out, test_out = tmp_path / "pre", tmp_path / "ft", tmp_path / "test"
    pair_entry.main(["--config_file", "configs/pretrain/transoss.yml", "DATASETS.ROOT_DIR", str(root),
                     "OUTPUT_DIR", str(pre_out), "SOLVER.MAX_EPOCHS", "1", *TINY_RUN, "SEED", "1"])
    backbone = pre_out / "backbone_final.pth"
    pretrained = torch.load(backbone, weights_only=True)

    # another seed: a backbone equal to the file's can only have come from the file
    trainer = build(train_entry.build_trainer, [
        "--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, "OUTPUT_DIR", str(ft_out),
        "SOLVER.MAX_EPOCHS", "1", *TINY_RUN, "MODEL.PRETRAIN_PATH", str(backbone), "SEED", "2"])
    initial = trainer.model.state_dict()
    # every backbone weight but the size token (absent from pretraining) starts as the file's
    assert set(pretrained) == {k for k in initial if k.startswith("backbone.") and "size_embed" not in k}
    for key, value in pretrained.items():
        assert torch.equal(initial[key], value), key
    trainer.train()
    assert (ft_out / "results.json").is_file() and (ft_out / "checkpoints" / "last_checkpoint").is_file()

    results = {}
    for stem in ("model_final", "model_final_official"):
        results[stem] = test_entry.main([
            "--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root,
            "TEST.WEIGHT", str(ft_out / f"{stem}.pth"), "OUTPUT_DIR", str(test_out / stem), *TINY_RUN])
    assert results["model_final"] == results["model_final_official"]
    assert metrics_of(read_results(ft_out / "results.json"))["ALL"]["mAP"] == pytest.approx(
        results["model_final"]["ALL"]["mAP"], abs=1e-9)


class StopAfterEpoch(Hook):
    """Simulates a crash right after the checkpoint of `epoch` has been written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_epoch_advanced(self, trainer):
        if trainer.epoch - 1 == self.epoch:
            raise KeyboardInterrupt


class StepCounter(Hook):
    """Where a run started (epoch, iteration, optimizer steps done) and how many optimizer steps it then took."""

    def before_train(self, trainer):
        self.start, self.steps = (trainer.epoch, trainer.iteration, trainer.optimizer_steps), 0
        trainer.optimizer.register_step_post_hook(self.count)

    def count(self, optimizer, args, kwargs):
        self.steps += 1


def count_steps(monkeypatch, module, builder: str = "build_trainer") -> StepCounter:
    """A StepCounter on the trainer that the next `module.main()` builds."""
    counter, build_trainer = StepCounter(), getattr(module, builder)

    def build_and_count(cfg, device, logger):
        trainer = build_trainer(cfg, device, logger)
        trainer.hooks.append(counter)
        return trainer
    monkeypatch.setattr(module, builder, build_and_count)
    return counter


def saved_position(out) -> tuple[int, int, int]:
    """(epoch, iteration, optimizer steps done) of the checkpoint that OUTPUT_DIR's last_checkpoint names."""
    name = (out / "checkpoints" / "last_checkpoint").read_text().strip()
    state = torch.load(out / "checkpoints" / name, weights_only=False)
    return state["epoch"], state["iteration"], state["optimizer_steps"]


def assert_resumed(counter: StepCounter, saved: tuple[int, int, int], total_steps: int) -> None:
    """The resumed run started where the checkpoint left off and took only the remaining optimizer steps
    (a run that ignored --resume and retrained from scratch would end with the same weights)."""
    assert counter.start == saved
    assert 0 < counter.steps == total_steps - saved[2], (counter.steps, total_steps, saved)


def test_resume_gives_the_weights_of_an_uninterrupted_run(hoss_root, tmp_path, monkeypatch):
    common = ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, *TINY_RUN,
              "SOLVER.MAX_EPOCHS", "3", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.EVAL_PERIOD", "0",
              "DATASETS.PROTOCOLS", "['ALL']"]
    full = train_entry.main(common + ["OUTPUT_DIR", str(tmp_path / "full")])

    cut = tmp_path / "cut"
    trainer = build(train_entry.build_trainer, common + ["OUTPUT_DIR", str(cut)])
    trainer.hooks.append(StopAfterEpoch(1))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    saved = saved_position(cut)
    assert saved[:2] == (2, 0)
    counter = count_steps(monkeypatch, train_entry)
    resumed = train_entry.main(common + ["OUTPUT_DIR", str(cut), "--resume"]).model.state_dict()
    assert_resumed(counter, saved, full.optimizer_steps)
    expected = full.model.state_dict()
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_sigterm_saves_mid_epoch_and_resume_is_exact(hoss_root, tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO
    common = ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, *TINY_RUN,
              "SOLVER.MAX_EPOCHS", "6", "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.EVAL_PERIOD", "0",
              "SOLVER.LOG_PERIOD", "1", "DATASETS.PROTOCOLS", "['ALL']"]
    full = train_entry.main(common + ["OUTPUT_DIR", str(tmp_path / "full")])

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
    saved = saved_position(out)
    assert saved[0] == 2 and saved[1] > 0  # stopped inside epoch 2
    counter = count_steps(monkeypatch, train_entry)
    resumed = train_entry.main(common + ["OUTPUT_DIR", str(out), "--resume"]).model.state_dict()
    assert_resumed(counter, saved, full.optimizer_steps)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed[key]), key


def test_a_finished_run_is_evaluated_and_resumed_only_with_its_own_grid(hoss_root, tmp_path):
    """A stride-12 run: test.py with the stride-16 recipe stops (never resizes a trained model) and names the keys;
    with the run's own config.yaml it evaluates; a resume under another model config names the checkpoint."""
    out = tmp_path / "run"
    common = ["DATASETS.ROOT_DIR", hoss_root, *TINY_RUN, "SOLVER.EVAL_PERIOD", "0", "DATASETS.PROTOCOLS", "['ALL']"]
    train_entry.main(["--config_file", "configs/hoss/transoss.yml", *common, "MODEL.STRIDE_SIZE", "[12,12]",
                      "SOLVER.MAX_EPOCHS", "1", "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)])
    evaluate = ["TEST.WEIGHT", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")]
    with pytest.raises(WeightsError, match=r"model_final\.pth: .*210 patch entries, this model's grid is 16x8.*"
                                           r"MODEL\.STRIDE_SIZE.*config\.yaml"):
        test_entry.main(["--config_file", "configs/hoss/transoss.yml", *common, *evaluate])
    # pointed at the run itself, test.py writes beside the run's records, never over them
    records = {name: (out / name).read_bytes() for name in ("config.yaml", "train.log", "results.json")}
    results = test_entry.main(["--config_file", str(out / "config.yaml"), "TEST.WEIGHT", str(out / "model_final.pth")])
    assert 0 < results["ALL"]["mAP"] <= 1
    written = read_results(out / "test" / "model_final" / "results.json")
    assert metrics_of(written) == results and written["weights"] == str(out / "model_final.pth")
    assert (out / "test" / "model_final" / "config.yaml").is_file()
    assert all((out / name).read_bytes() == content for name, content in records.items())
    with pytest.raises(ShipReIDError, match=r"(?s)epoch_0001\.pth does not fit the model this config builds.*config\.yaml"):
        train_entry.main(["--config_file", "configs/hoss/transoss.yml", *common, "SOLVER.MAX_EPOCHS", "2",
                          "OUTPUT_DIR", str(out), "--resume"])


def test_log_lines_never_land_inside_a_progress_bar(hoss_root, tmp_path):
    """stdout and stderr in one stream, as a terminal shows them: no line holds both a bar and a log record."""
    import re
    import subprocess
    import sys

    from conftest import REPO
    done = subprocess.run([sys.executable, "train.py", "--config_file", "configs/hoss/transoss.yml",
                           "DATASETS.ROOT_DIR", hoss_root, *TINY_RUN, "SOLVER.MAX_EPOCHS", "1", "SOLVER.LOG_PERIOD", "2",
                           "SOLVER.EVAL_PERIOD", "0", "DATASETS.PROTOCOLS", "['ALL']", "OUTPUT_DIR", str(tmp_path / "out")],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    pieces = re.split(r"[\r\n]", done.stdout)
    assert sum("shipreid.train INFO: epoch 1 iter" in piece for piece in pieces) >= 4  # log lines were printed ...
    assert any("it/s" in piece for piece in pieces)                                    # ... while bars were drawn
    tangled = [piece for piece in pieces if "it/s" in piece and " shipreid." in piece]
    assert not tangled, tangled[:3]


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_in_training_steps_only(hoss_root, tmp_path, tf32):
    """SOLVER.TF32 holds inside training steps; test features are always full fp32; the flags are restored."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    seen = {True: set(), False: set()}  # model.training -> (matmul, cudnn) flags seen by the backbone
    trainer = build(train_entry.build_trainer, [
        "--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, *TINY_RUN, "SOLVER.MAX_EPOCHS", "1",
        "SOLVER.TF32", str(tf32), "DATASETS.PROTOCOLS", "['ALL']", "OUTPUT_DIR", str(tmp_path / "out")])
    unwrap(trainer.model).backbone.register_forward_hook(lambda module, args, out: seen[module.training].add(
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
    trainer.train()
    assert seen == {True: {(tf32, tf32)}, False: {(False, False)}}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == saved
