"""Trainer hooks: progress and logs, TensorBoard, periodic evaluation and model selection, checkpoints."""
from __future__ import annotations

import logging
import math
import os
import time

from tqdm import tqdm

from utils.distributed import barrier, is_main
from utils.errors import ShipReIDError
from utils.logger import hms
from utils.provenance import provenance

from .checkpoint import export_weights, exported_weights, save_training_state
from .engine import unwrap
from .evaluator import format_results
from .results import LAST_EPOCH, EvalHistory, training_results, write_results
from .selection import SELECTABLE_METRICS, Selection

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
                    hms(per_step * remaining))

    def after_epoch(self, trainer):
        self.bar.close()


def fp16_figures(trainer) -> dict:
    """The fp16 loss scale and the optimizer steps the scaler skipped so far (a host sync); {} without fp16."""
    scale = trainer.step_wrapper.loss_scale()
    if scale is None:
        return {}
    return {"loss_scale": scale, "skipped_steps": int(trainer.step_wrapper.skipped_steps)}


class EvalHook(Hook):
    """Evaluates every `period` epochs (SOLVER.EVAL_PERIOD) and after the last, once the epoch's checkpoint is
    written, and keeps the epoch that SOLVER.SELECT_METRIC ranks best (strictly: the earliest of ties) in
    model_best.pth.

    Without a validation split the test set is evaluated at every due epoch and selects (the papers' practice). With
    one (DATASETS.VAL_IDS) the validation split is evaluated at every due epoch and selects, and the test set is
    evaluated at the end only: the last weights, then model_best.pth's. Every evaluation is a line of
    eval_history.jsonl; the end writes results.json (last epoch) and results_best.json (selected epoch), see
    processor/results.py. A run resumed from a checkpoint whose epoch was due but not evaluated (the evaluation failed,
    or the run was killed during it) evaluates that epoch first."""

    def __init__(self, cfg, evaluator, writer=None, validation=None):
        self.cfg, self.evaluator, self.validation, self.writer = cfg, evaluator, validation, writer
        self.period, self.output_dir = cfg.SOLVER.EVAL_PERIOD, cfg.OUTPUT_DIR
        self.selection = Selection.of(cfg, "test" if validation is None else "validation")
        self.history = EvalHistory(self.output_dir)

    def is_due(self, epoch: int, max_epochs: int) -> bool:
        return epoch == max_epochs or (self.period > 0 and epoch % self.period == 0)

    def before_train(self, trainer):
        self._check_selection(trainer.extra_state)
        finished = trainer.epoch - 1
        if (trainer.iteration == 0 and finished >= 1 and self.is_due(finished, trainer.max_epochs)
                and trainer.extra_state.get("evaluated_epoch", 0) != finished):
            logger.info("epoch %d was saved but not evaluated: evaluating it first", finished)
            self._evaluate_epoch(trainer, finished)

    def _check_selection(self, state: dict) -> None:
        """A resumed run goes on selecting as it started, or stops."""
        if "best_mAP" in state:  # a checkpoint from before SOLVER.SELECT_METRIC: the test set's first protocol's mAP
            best, results = state.pop("best_mAP"), state.pop("best_results", None)
            if results is None:  # older still: it kept no metrics to write results_best.json from
                state.pop("best_epoch", None)
                logger.info("the checkpoint kept no best epoch's results: the best epoch is tracked from here on")
            else:
                state.update(selected_by=f"test {next(iter(results))}/mAP", best_value=best, best_test=results)
        recorded = state.get("selected_by")
        if recorded is not None and recorded != self.selection.name:
            raise ShipReIDError(f"the checkpoint's run selected its best epoch by {recorded}, this config by "
                                f"{self.selection.name}: resume with the run's DATASETS.VAL_IDS and "
                                f"SOLVER.SELECT_METRIC ({self.output_dir}/config.yaml)")

    def after_epoch_saved(self, trainer):
        finished = trainer.epoch - 1
        if self.is_due(finished, trainer.max_epochs):
            self._evaluate_epoch(trainer, finished)

    def _evaluate_epoch(self, trainer, epoch: int):
        test = validation = None
        if self.validation is None:
            test = self._evaluate(self.evaluator, trainer, epoch, "test")
            self._select(trainer, epoch, test, test=test)
        else:
            validation = self._evaluate(self.validation, trainer, epoch, "validation")
            self._select(trainer, epoch, validation, validation=validation)
        if epoch == trainer.max_epochs:
            self._finish(trainer, epoch, test, validation)
        trainer.extra_state["evaluated_epoch"] = epoch

    def _evaluate(self, evaluator, trainer, epoch: int, split: str, weights: str = "") -> dict:
        """Metrics of `evaluator`'s protocols (the same on every rank), logged, in TensorBoard (eval/ for the test
        set, eval_val/ for the validation split) and in the history as `epoch`'s."""
        results, _ = evaluator.evaluate(unwrap(trainer.model), trainer.device)
        if not is_main():
            return results
        title = "evaluation" if split == "test" else "validation"
        logger.info("%s after epoch %d%s (%%):\n%s", title, epoch, weights, format_results(results))
        if self.writer is not None:
            prefix = "eval" if split == "test" else "eval_val"
            for protocol, metrics in results.items():
                for name in SELECTABLE_METRICS:
                    self.writer.add_scalar(f"{prefix}/{protocol}/{name}", metrics[name], epoch)
        self.history.add(epoch, split, results)
        return results

    def _select(self, trainer, epoch: int, results: dict, test=None, validation=None) -> None:
        state = trainer.extra_state
        value = self.selection.value(results)
        if value > state.get("best_value", -math.inf):
            state.update(selected_by=self.selection.name, best_value=value, best_epoch=epoch, best_test=test,
                         best_validation=validation)
            if is_main():
                export_weights(unwrap(trainer.model), self.output_dir, "model_best")

    def _finish(self, trainer, last: int, test: dict | None, validation: dict | None) -> None:
        """results.json and results_best.json; with a validation split, the test set evaluated for both epochs."""
        state = trainer.extra_state
        best_epoch = state["best_epoch"]
        if self.validation is None:
            best_test = state["best_test"]
        else:
            test = best_test = self._evaluate(self.evaluator, trainer, last, "test")
            if best_epoch != last:
                with exported_weights(unwrap(trainer.model), os.path.join(self.output_dir, "model_best.pth")):
                    best_test = self._evaluate(self.evaluator, trainer, best_epoch, "test", " (model_best.pth)")
            if is_main():
                self.history.keep_only("test", {best_epoch, last})
        if not is_main():
            return
        record = provenance(self.cfg)
        write_results(training_results(test, last, LAST_EPOCH, validation, record), self.output_dir)
        best = training_results(best_test, best_epoch, self.selection.name, state.get("best_validation"), record)
        write_results(best, self.output_dir, "results_best.json")
        logger.info("last epoch in results.json; epoch %d, the best by %s, in results_best.json / model_best.pth",
                    best_epoch, self.selection.name)


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
