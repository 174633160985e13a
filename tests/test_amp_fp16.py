"""The official recipes' precision, SOLVER.AMP fp16, through the real Trainer on the CPU and the real chips:
loss scaling, the step skipped on an overflow, clipping on unscaled gradients, the scaler across a resume; and
the fp32 / bf16 runs that still stop at a non-finite loss."""
from __future__ import annotations

import argparse
import math

import pytest
import torch

from conftest import TINY_MODEL
from test_training import StopAfterEpoch

import train as train_entry
from configs import add_config_args, parse_args
from processor.checkpoint import load_training_state
from processor.engine import MIN_LOSS_SCALE, TrainingDiverged, unwrap
from processor.hooks import Hook
from processor.setup import setup_run

# tiny single-process CPU runs (P = 2 identities x K = 4 images, 10 batches an epoch), 64 x 32 chips for speed
FP16_RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.AMP", "fp16", "SOLVER.LOG_PERIOD", "1", "MODEL.PRETRAIN_PATH", "", "SOLVER.EVAL_PERIOD", "0",
            "SOLVER.CHECKPOINT_PERIOD", "1", "DATASETS.PROTOCOLS", "['ALL']",
            "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]"]
# logits of order 1e-2 become ~1e6: beyond fp16's largest finite value (65504), ordinary in fp32
FP16_OVERFLOW = 1e8
OVERFLOW_STEP = 6  # 0-based batch index; after the scaler's own first overflows (its initial scale 2**16 is high)


def build(hoss_root, out, *overrides):
    args = parse_args(add_config_args(argparse.ArgumentParser()),
                      ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, *FP16_RUN,
                       "OUTPUT_DIR", str(out), *overrides])
    cfg, logger, device = setup_run(args, "train.log")
    return train_entry.build_trainer(cfg, device, logger)


def scale_logits_at(trainer, factor: float, steps) -> None:
    """A forward hook on the identity classifier: its logits times `factor` on the batches `steps` (0-based)."""
    def hook(module, inputs, logits):
        return logits * factor if trainer.global_step in steps else None
    unwrap(trainer.model).classifier.register_forward_hook(hook)


class Stop(Exception):
    pass


class Record(Hook):
    """Before training and after every batch: the parameters, the loss scale and the skipped-step count (entry
    i + 1 after batch i), and each batch's loss; stops after `stop_after` batches."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after, self.params, self.scales, self.skipped, self.losses = stop_after, [], [], [], []

    def before_train(self, trainer):
        self._snapshot(trainer)

    def after_step(self, trainer):
        self._snapshot(trainer)
        self.losses.append(trainer.last_losses["total"].item())
        if trainer.global_step == self.stop_after:
            raise Stop

    def _snapshot(self, trainer):
        self.params.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        self.scales.append(trainer.step_wrapper.loss_scale())
        self.skipped.append(int(trainer.step_wrapper.skipped_steps))

    def moved(self, step: int) -> bool:
        """Whether batch `step` (0-based) moved any parameter."""
        before, after = self.params[step], self.params[step + 1]
        return any(not torch.equal(before[n], after[n]) for n in before)


def test_fp16_overflow_skips_exactly_that_step(hoss_root, tmp_path):
    trainer = build(hoss_root, tmp_path / "out", "SOLVER.MAX_EPOCHS", "1")
    scale_logits_at(trainer, FP16_OVERFLOW, {OVERFLOW_STEP})
    record = Record(stop_after=OVERFLOW_STEP + 2)
    trainer.hooks.append(record)
    with pytest.raises(Stop):  # the run went on past the overflow without raising TrainingDiverged
        trainer.train()

    k = OVERFLOW_STEP
    assert not math.isfinite(record.losses[k]) and all(math.isfinite(v) for i, v in enumerate(record.losses) if i != k)
    # the overflowing batch moved no parameter (bit for bit), halved the scale and counted one skip
    assert not record.moved(k)
    assert record.scales[k + 1] == record.scales[k] / 2 and record.skipped[k + 1] == record.skipped[k] + 1
    # the batches before and after it stepped (and left scale and count alone)
    assert record.moved(k - 1) and record.moved(k + 1)
    assert record.scales[k + 2] == record.scales[k + 1] and record.skipped[k + 2] == record.skipped[k + 1]
    # the scaler's own overflows at its high initial scale (2**16) are skips of the same kind: the count is
    # exactly the batches that moved nothing, each of which halved the scale
    unmoved = [i for i in range(k + 2) if not record.moved(i)]
    assert record.skipped[-1] == len(unmoved) and record.scales[-1] == 2.0 ** (16 - len(unmoved)), unmoved
    log = (tmp_path / "out" / "train.log").read_text()
    assert f"loss scale {record.scales[-1]:g}  skipped steps {record.skipped[-1]}" in log
    assert log.count("SOLVER.AMP fp16 on the CPU is slow") == 1


def test_fp16_clipping_sees_unscaled_gradients(hoss_root, tmp_path):
    clip = 1e-3  # far below this model's gradient norm, so every step is clipped
    trainer = build(hoss_root, tmp_path / "out", "SOLVER.MAX_EPOCHS", "1", "SOLVER.CLIP_GRAD_NORM", str(clip))
    norms = []

    def capture(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads])).item())
    trainer.optimizer.register_step_pre_hook(capture)
    record = Record(stop_after=5)
    trainer.hooks.append(record)
    with pytest.raises(Stop):
        trainer.train()
    # the optimizer ran on every batch the scaler did not skip, each time on the gradient clipped to `clip`
    # (scaled gradients clipped before unscaling would reach it as clip / scale)
    assert len(norms) == 5 - record.skipped[-1] >= 2, record.skipped
    assert norms == pytest.approx([clip] * len(norms), rel=1e-4)


def test_fp16_run_learns_and_resumes_with_its_scaler(hoss_root, tmp_path):
    full = build(hoss_root, tmp_path / "full", "SOLVER.MAX_EPOCHS", "2")
    scale_logits_at(full, FP16_OVERFLOW, {OVERFLOW_STEP})  # the scale saved after epoch 1 is not the initial one
    record = Record()
    full.hooks.append(record)
    full.train()
    first, second = [v for v in record.losses[:10] if math.isfinite(v)], record.losses[10:]
    assert len(first) == 9 and all(math.isfinite(v) for v in second)
    assert sum(second) / 10 < 0.8 * sum(first) / 9, (first, second)  # it learns
    assert (tmp_path / "full" / "results.json").is_file()

    saved = load_training_state(str(tmp_path / "full" / "checkpoints" / "epoch_0001.pth"))["step_wrapper"]
    assert saved["scaler"]["scale"] == record.scales[10] < 2.0 ** 16 and saved["skipped_steps"] == record.skipped[10]

    cut = build(hoss_root, tmp_path / "cut", "SOLVER.MAX_EPOCHS", "2")
    scale_logits_at(cut, FP16_OVERFLOW, {OVERFLOW_STEP})
    cut.hooks.append(StopAfterEpoch(1))
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = build(hoss_root, tmp_path / "cut", "SOLVER.MAX_EPOCHS", "2")
    resumed.resume_from(str(tmp_path / "cut"))
    resumed.train()

    want, got = full.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert resumed.step_wrapper.state_dict() == full.step_wrapper.state_dict()
    assert full.step_wrapper.scaler.state_dict()["_growth_tracker"] > 0  # clean steps since the last skip


def test_fp16_scale_collapse_stops_the_run(hoss_root, tmp_path):
    """Every batch overflows: 17 halvings take the scale from 2**16 to 0.5, and the next check stops the run."""
    trainer = build(hoss_root, tmp_path / "out", "SOLVER.MAX_EPOCHS", "2")
    scale_logits_at(trainer, FP16_OVERFLOW, range(100))
    record = Record()
    trainer.hooks.append(record)
    with pytest.raises(TrainingDiverged, match=r"SOLVER.AMP fp16: the loss scale fell to 0.5 .* after 17 "
                                               r"optimizer steps skipped.*SOLVER.BASE_LR"):
        trainer.train()
    assert trainer.global_step == 17 and record.scales == [2.0 ** (16 - i) for i in range(17)]
    assert trainer.step_wrapper.loss_scale() == 0.5 < MIN_LOSS_SCALE
    initial = record.params[0]
    assert all(torch.equal(p, initial[n]) for n, p in trainer.model.named_parameters())  # every step was skipped


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_a_nonfinite_batch_stops_fp32_and_bf16_runs_only(hoss_root, tmp_path, amp):
    trainer = build(hoss_root, tmp_path / "out", "SOLVER.MAX_EPOCHS", "1", "SOLVER.AMP", amp,
                    "SOLVER.LOG_PERIOD", "3")
    # the batch right before the check at 3: the next batch, on NaN weights, would stop in the triplet loss
    scale_logits_at(trainer, math.inf, {2})
    record = Record(stop_after=3)
    trainer.hooks.append(record)
    if amp != "fp16":
        with pytest.raises(TrainingDiverged, match="non-finite loss by epoch 1, iteration 3: .*SOLVER.BASE_LR"):
            trainer.train()
        assert trainer.global_step == 3
        return
    with pytest.raises(Stop):  # past the check at 3: the scaler skipped the batch
        trainer.train()
    assert not math.isfinite(record.losses[2]) and not record.moved(2)
    assert record.skipped[3] == record.skipped[2] + 1
