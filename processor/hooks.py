"""Trainer hooks: progress and logs, TensorBoard, periodic evaluation, checkpoints."""
from __future__ import annotations

import logging
import time

from tqdm import tqdm

from utils.distributed import barrier, is_main

from .checkpoint import export_weights, save_training_state
from .engine import unwrap
from .evaluator import format_results, write_results

logger = logging.getLogger("shipreid.train")


class Hook:
    def before_train(self, trainer): pass
    def before_epoch(self, trainer): pass
    def after_step(self, trainer): pass
    def after_epoch(self, trainer): pass
    def after_epoch_advanced(self, trainer): pass
    def after_epoch_saved(self, trainer): pass
    def after_train(self, trainer): pass
    def on_interrupt(self, trainer): pass


class ProgressHook(Hook):
    """A progress bar per epoch with the losses, and a log line every LOG_PERIOD steps with the ETA."""

    def __init__(self, log_period: int, writer=None):
        self.log_period, self.writer = max(1, log_period), writer
        self.bar = None

    def before_train(self, trainer):
        self.start_time, self.start_step = time.time(), trainer.global_step

    def before_epoch(self, trainer):
        total = trainer.batches_in_epoch()
        self.bar = tqdm(total=total, initial=trainer.iteration, desc=f"epoch {trainer.epoch}/{trainer.max_epochs}",
                        unit="it", leave=False, dynamic_ncols=True, disable=not is_main())

    def after_step(self, trainer):
        self.bar.update(1)
        if trainer.global_step % self.log_period and trainer.iteration != trainer.batches_in_epoch():
            return
        losses = trainer.check_finite()
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
        amp = fp16_figures(trainer)
        if self.writer is not None:
            for name, value in losses.items():
                self.writer.add_scalar(f"loss/{name}", value, trainer.global_step)
            self.writer.add_scalar("lr", trainer.lr, trainer.global_step)
            for name, value in amp.items():
                self.writer.add_scalar(f"amp/{name}", value, trainer.global_step)
        done = trainer.global_step - self.start_step
        per_step = (time.time() - self.start_time) / max(done, 1)
        remaining = (trainer.max_epochs - trainer.epoch + 1) * trainer.batches_in_epoch() - trainer.iteration
        logger.info("epoch %d iter %d/%d  %s  lr %.2e%s  %.3f s/it  eta %s", trainer.epoch, trainer.iteration,
                    trainer.batches_in_epoch(), "  ".join(f"{k} {v:.4f}" for k, v in losses.items()), trainer.lr,
                    "".join(f"  {k.replace('_', ' ')} {v:g}" for k, v in amp.items()), per_step,
                    _hms(per_step * remaining))

    def after_epoch(self, trainer):
        self.bar.close()


def fp16_figures(trainer) -> dict:
    """The fp16 loss scale and the optimizer steps the scaler skipped so far (a host sync); {} without fp16."""
    scale = trainer.step_wrapper.loss_scale()
    if scale is None:
        return {}
    return {"loss_scale": scale, "skipped_steps": int(trainer.step_wrapper.skipped_steps)}


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EvalHook(Hook):
    """Evaluates every `period` epochs and after the last, once the epoch's checkpoint is written; tracks the best
    ALL (or first protocol) mAP. A run resumed from a checkpoint whose epoch was due but not evaluated (the
    evaluation failed, or the run was killed during it) evaluates that epoch first."""

    def __init__(self, evaluator, period: int, output_dir: str, writer=None):
        self.evaluator, self.period, self.output_dir, self.writer = evaluator, period, output_dir, writer
        self.results = None

    def is_due(self, epoch: int, max_epochs: int) -> bool:
        return epoch == max_epochs or (self.period > 0 and epoch % self.period == 0)

    def before_train(self, trainer):
        finished = trainer.epoch - 1
        if (trainer.iteration == 0 and finished >= 1 and self.is_due(finished, trainer.max_epochs)
                and trainer.extra_state.get("evaluated_epoch", 0) != finished):
            logger.info("epoch %d was saved but not evaluated: evaluating it first", finished)
            self._evaluate_epoch(trainer, finished)

    def after_epoch_saved(self, trainer):
        finished = trainer.epoch - 1
        if self.is_due(finished, trainer.max_epochs):
            self._evaluate_epoch(trainer, finished)

    def _evaluate(self, trainer, epoch: int):
        results, _ = self.evaluator.evaluate(unwrap(trainer.model), trainer.device)
        if not is_main():
            return results
        logger.info("evaluation after epoch %d (%%):\n%s", epoch, format_results(results))
        if self.writer is not None:
            for protocol, metrics in results.items():
                for name in ("mAP", "R1", "R5", "R10", "mINP"):
                    self.writer.add_scalar(f"eval/{protocol}/{name}", metrics[name], epoch)
        key = next(iter(results))
        best = trainer.extra_state.get("best_mAP", -1.0)
        if results[key]["mAP"] > best:
            trainer.extra_state.update(best_mAP=results[key]["mAP"], best_epoch=epoch, best_results=results)
            export_weights(unwrap(trainer.model), self.output_dir, "model_best")
        self.results = results
        return results

    def _evaluate_epoch(self, trainer, epoch: int):
        self._evaluate(trainer, epoch)
        trainer.extra_state["evaluated_epoch"] = epoch
        if epoch == trainer.max_epochs and is_main():
            write_results(self.results, self.output_dir)
            # the papers report the best test-set epoch (checkpoint selection on the test set): both are kept
            best_epoch, best = trainer.extra_state["best_epoch"], trainer.extra_state.get("best_results")
            if best is None:  # resumed from a checkpoint that predates results_best.json
                return
            write_results({"epoch": best_epoch, **best}, self.output_dir, "results_best.json")
            logger.info("last epoch in results.json; best %s mAP at epoch %d (selected on the test set) in "
                        "results_best.json / model_best.pth", next(iter(self.results)), best_epoch)


class CheckpointHook(Hook):
    """Full training state every `period` epochs, at the end, and at every epoch `also_at(epoch, max_epochs)`
    names (the evaluated ones: saved before they are evaluated); weights-only exports at the end."""

    def __init__(self, period: int, output_dir: str, final_exports=(), also_at=None):
        self.period, self.output_dir, self.final_exports, self.also_at = period, output_dir, final_exports, also_at

    def after_epoch_advanced(self, trainer):
        finished = trainer.epoch - 1
        if (finished == trainer.max_epochs or (self.period > 0 and finished % self.period == 0)
                or (self.also_at is not None and self.also_at(finished, trainer.max_epochs))):
            state = trainer.state_dict()
            if is_main():
                path = save_training_state(self.output_dir, f"epoch_{finished:04d}.pth", state)
                logger.info("saved %s", path)
            barrier()

    def on_interrupt(self, trainer):
        """Mid-epoch state (the sampler resumes at the next batch) when the run is told to stop."""
        state = trainer.state_dict()
        if is_main():
            path = save_training_state(self.output_dir, f"epoch_{trainer.epoch:04d}_iter_{trainer.iteration:06d}.pth",
                                       state)
            logger.info("saved %s", path)
        barrier()

    def after_train(self, trainer):
        if not is_main():
            return
        for export in self.final_exports:
            for path in export(trainer):
                logger.info("wrote %s", path)
