"""The one training loop shared by train.py and train_pair.py; the periphery lives in hooks."""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import signal
import threading
import time

import torch

from datasets.erasing import apply_erasing
from torch.nn.parallel import DistributedDataParallel

from utils.device import move_batch, tf32
from utils.distributed import gather_objects, rank, world_size
from utils.errors import ShipReIDError

from .checkpoint import load_training_state, resume_checkpoint
from .optim_step import OptimizerStep, accumulation_group, autocast_context
from .rng import rank_seed, restore_rank_state, rng_state, seed_everything

logger = logging.getLogger("shipreid.train")


class TrainingDiverged(ShipReIDError):
    """A loss became NaN or infinite (fp32, bf16), or the fp16 loss scale collapsed."""


# The fp16 loss scale starts at 2**16, halves on every step the scaler skips for non-finite gradients and
# doubles only after 2000 clean steps in a row: below 1 it has halved 17 times more than it doubled (in practice
# ~17 overflowing steps in a row), i.e. the gradients overflow fp16 even unscaled. That is a diverged run, not a
# transient overflow.
MIN_LOSS_SCALE = 1.0


class TrainingInterrupted(Exception):
    """SIGTERM was received; the state was saved after the current step and the run can be resumed."""


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def wrap_ddp(model, device: torch.device, compiled: torch.nn.Module | None = None):
    """DDP over torchrun's ranks (no-op for one process). Every trainable parameter takes part in the
    loss, so no `find_unused_parameters` (and its extra graph traversal) is needed.

    `compiled`: a submodule of `model` to torch.compile in place (MODEL.COMPILE), after the wrap. Dynamo splits a
    graph at DDP's bucket boundaries (DDPOptimizer, torch._dynamo.config.optimize_ddp) only when it first traces
    the frame inside DDP's forward, and it reuses a graph traced outside DDP there without splitting: the compiled
    backward then hands DDP every gradient at its end and no all-reduce overlaps it. Compiling after the wrap
    leaves no way to trace the module before DDP runs it (a no_grad evaluation through unwrap() traces another
    graph, guarded on grad mode). In place, so the state-dict keys stay those of the eager module."""
    wrapped = model if world_size() == 1 else \
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compiled is not None:
        compiled.compile()
    return wrapped


class Trainer:
    """Epochs 1..MAX_EPOCHS of: LR for the epoch, then (augment on device, forward, losses, step) per batch.

    State that a resume restores: model, optimizer, scheduler, scaler, RNG states, epoch, the position
    inside the epoch, and what the hooks keep (best metric).
    """

    def __init__(self, cfg, model, criterion, optimizer, scheduler, loader, device, hooks=()):
        self.cfg, self.model, self.criterion = cfg, model, criterion
        self.optimizer, self.scheduler, self.loader = optimizer, scheduler, loader
        self.device, self.hooks = device, list(hooks)
        params = list(model.parameters()) + list(criterion.parameters())
        self.step_wrapper = OptimizerStep(optimizer, params, cfg.SOLVER.AMP, device, cfg.SOLVER.ACCUM_STEPS,
                                          cfg.SOLVER.CLIP_GRAD_NORM, sync_params=list(criterion.parameters()))
        self.max_epochs = cfg.SOLVER.MAX_EPOCHS
        self.epoch = 1           # the epoch being trained (or next to train)
        self.iteration = 0       # batches finished inside self.epoch
        self.global_step = 0     # batches since the start (TensorBoard's x axis)
        self.optimizer_steps = 0  # = global_step unless SOLVER.ACCUM_STEPS > 1
        self.extra_state: dict = {}  # hooks keep their resumable state here (best metric, ...)
        self.last_losses: dict = {}
        self.nonfinite_steps = torch.zeros((), dtype=torch.int32, device=device)
        self.stop_requested = False
        self.stop_signal_at: tuple[float, int] | None = None  # (time, global_step) of this rank's SIGTERM
        self._stop_group = None  # a CPU (gloo) group for the stop votes
        self._stop_vote = None   # (flag, work) of the vote in flight
        if world_size() > 1:  # everything is built (identically on every rank): from here each rank draws its own
            seed_everything(rank_seed(cfg.SEED, rank()))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a resume restores. Collective under DDP (the random states of every rank are gathered):
        all ranks call it, rank 0 saves it."""
        return {
            "model": unwrap(self.model).state_dict(), "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step_wrapper": self.step_wrapper.state_dict(), "rng": gather_objects(rng_state(self.device)),
            "epoch": self.epoch, "iteration": self.iteration, "global_step": self.global_step,
            "optimizer_steps": self.optimizer_steps, "extra": dict(self.extra_state),
            "config": self.cfg.dump(),
        }

    def resume(self, path: str) -> None:
        state = load_training_state(path)
        try:
            unwrap(self.model).load_state_dict(state["model"])
            self.criterion.load_state_dict(state["criterion"])
        except RuntimeError as err:
            raise ShipReIDError(f"{path} does not fit the model this config builds ({err}); resume with the "
                                f"config the run was started with ({self.cfg.OUTPUT_DIR}/config.yaml)") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_wrapper.load_state_dict(state["step_wrapper"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        restore_rank_state(state["rng"], rank(), world_size(), self.cfg.SEED, self.epoch, self.iteration,
                           self.device)
        self.global_step, self.extra_state = state["global_step"], state["extra"]
        # checkpoints from before the count was kept: exact for ACCUM_STEPS 1, the only setting they trained BBDMs
        self.optimizer_steps = state.get("optimizer_steps", self.global_step)
        logger.info("resumed from %s at epoch %d, iteration %d", path, self.epoch, self.iteration)

    def resume_from(self, output_dir: str) -> None:
        """--resume: continue from the checkpoint that OUTPUT_DIR's `last_checkpoint` pointer names."""
        path = resume_checkpoint(output_dir)
        if path is None:
            raise ShipReIDError(f"--resume: no checkpoint in {output_dir}/checkpoints; run without --resume")
        self.resume(path)

    def batches_in_epoch(self) -> int:
        """Batches of the current epoch, including those skipped by a resume inside it."""
        sampler = self.loader.batch_sampler
        return len(sampler) + sampler.skip_batches

    # ------------------------------------------------------------------ loop
    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self)

    def _request_stop(self, signum, frame) -> None:
        # no logging here: a handler that runs while the main thread holds the logging lock would deadlock
        if not self.stop_requested:
            self.stop_requested, self.stop_signal_at = True, (time.monotonic(), self.global_step)

    def _should_stop(self) -> bool:
        """True at an optimizer-step boundary once any rank got SIGTERM, on every rank at the same step.

        SLURM and torchrun kill ~30 s after SIGTERM, so the ranks vote after every optimizer step: each starts a
        non-blocking all-reduce of its flag on a CPU (gloo) group and reads the result one step later. By then the
        vote has completed (it needs only every rank's host to have ended the previous step), so reading it costs
        no device sync and, in practice, no wait. A SIGTERM stops the run after the step it arrived in and one
        more (measured under torchrun, 2 CPU ranks: 2 steps, 0.03 to 0.27 s at 0.02 to 0.14 s per step); a
        blocking vote every N steps would sync the hosts each time and add up to N - 1 steps."""
        if self.step_wrapper.pending:
            return False
        if world_size() == 1:
            stop = self.stop_requested
        else:
            stop = self._read_stop_vote()
            if not stop:
                flag = torch.tensor([int(self.stop_requested)], dtype=torch.int32)
                self._stop_vote = (flag, torch.distributed.all_reduce(flag, group=self._stop_group, async_op=True))
        if stop and self.stop_signal_at is not None:
            at, step = self.stop_signal_at
            logger.info("SIGTERM after step %d: stopping after step %d (%d step(s), %.2f s later)", step,
                        self.global_step, self.global_step - step, time.monotonic() - at)
        return stop

    def _read_stop_vote(self) -> bool:
        if self._stop_vote is None:
            return False
        flag, work = self._stop_vote
        work.wait()
        self._stop_vote = None
        return bool(flag.item())  # a CPU tensor: no device sync

    def _join_stop_votes(self) -> None:
        """A gloo group for the votes (on GPU too: reading a CPU result never waits for the device)."""
        if world_size() > 1 and self._stop_group is None:
            self._stop_group = torch.distributed.new_group(
                backend="gloo", timeout=datetime.timedelta(seconds=self.cfg.DIST.TIMEOUT_S))

    def train(self) -> None:
        # each torchrun worker runs this on its own main thread, so every rank gets the SIGTERM torchrun forwards
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._request_stop)
        self._join_stop_votes()
        self._call("before_train")
        while self.epoch <= self.max_epochs:
            self.scheduler.step(self.epoch)
            self.loader.batch_sampler.set_epoch(self.epoch, skip_batches=self.iteration)
            self._call("before_epoch")
            self.model.train()
            num_batches = self.batches_in_epoch()
            for batch in self.loader:
                group_size, boundary = accumulation_group(self.iteration, num_batches, self.cfg.SOLVER.ACCUM_STEPS)
                self.run_step(batch, boundary, group_size)
                self.iteration += 1
                self.global_step += 1
                self._call("after_step")
                if self._should_stop():
                    self.check_finite()
                    self._call("on_interrupt")
                    raise TrainingInterrupted(f"stopped by SIGTERM at epoch {self.epoch}, iteration "
                                              f"{self.iteration}; the state is saved: rerun with --resume")
            self.check_finite()
            self._call("after_epoch")
            self.epoch, self.iteration = self.epoch + 1, 0
            self._call("after_epoch_advanced")  # the finished epoch's checkpoint is written here ...
            self._call("after_epoch_saved")     # ... before it is evaluated: a failing evaluation loses no training
        self._read_stop_vote()  # the last vote still in flight: every rank ends it before the group goes
        self._call("after_train")

    def run_step(self, batch: dict, boundary: bool, group_size: int | None = None) -> None:
        boxes = batch.pop("erase", None)  # stays on the host: reading it needs no device sync
        batch = move_batch(batch, self.device)
        batch["image"] = unwrap(self.model).normalizer(batch["image"])
        if boxes is not None:
            batch["image"] = apply_erasing(batch["image"], boxes)
        # inside an accumulation group DDP keeps gradients local: one all-reduce per optimizer step, not per batch
        local = self.model.no_sync() if not boundary and isinstance(self.model, DistributedDataParallel) \
            else contextlib.nullcontext()
        with local, tf32(self.cfg.SOLVER.TF32):
            with autocast_context(self.cfg.SOLVER.AMP, self.device):
                outputs = self.model(batch)
                losses = self.criterion(outputs, batch)
            self.step_wrapper.backward(losses["total"], boundary, group_size)
        self.optimizer_steps += int(boundary)
        # kept on the device: reading them (check_finite, logging) is the only host synchronisation
        self.last_losses = {name: value.detach() for name, value in losses.items()}
        if self.step_wrapper.scaler is None:  # under fp16 the scaler skips such steps (check_loss_scale)
            self.nonfinite_steps += (~torch.isfinite(self.last_losses["total"])).int()

    def check_finite(self) -> dict:
        """Host copies of the last losses; raises if any step since the last check was non-finite (fp32, bf16)
        or the fp16 loss scale collapsed.

        Called every LOG_PERIOD steps and before every checkpoint, so no diverged state is ever saved (under
        fp16 a non-finite step changed nothing: the scaler skipped it)."""
        values = {k: v.item() for k, v in self.last_losses.items()}
        if self.step_wrapper.scaler is not None:
            self.check_loss_scale()
        elif int(self.nonfinite_steps) or not all(math.isfinite(v) for v in values.values()):
            raise TrainingDiverged(
                f"non-finite loss by epoch {self.epoch}, iteration {self.iteration}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                + "; lower SOLVER.BASE_LR, use SOLVER.AMP bf16/off, or set SOLVER.CLIP_GRAD_NORM")
        return values

    def check_loss_scale(self) -> None:
        """Raises once the fp16 loss scale fell below MIN_LOSS_SCALE (a host sync)."""
        scale = self.step_wrapper.loss_scale()
        if scale < MIN_LOSS_SCALE:
            raise TrainingDiverged(
                f"SOLVER.AMP fp16: the loss scale fell to {scale:g} (below {MIN_LOSS_SCALE:g}) by epoch {self.epoch}, "
                f"iteration {self.iteration}, after {int(self.step_wrapper.skipped_steps)} optimizer steps skipped "
                "for non-finite gradients: the gradients overflow fp16 even unscaled; lower SOLVER.BASE_LR or use "
                "SOLVER.AMP bf16/off")

    @property
    def lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)
