"""Mixed precision, gradient accumulation and clipping in one optimizer-step wrapper."""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from utils.device import autocast_to
from utils.distributed import world_size
from utils.errors import ShipReIDError

logger = logging.getLogger("shipreid.train")

AMP_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(mode: str, device: torch.device):
    """The training step's precision (SOLVER.AMP)."""
    return autocast_to(mode, AMP_MODES, "SOLVER.AMP", device)


def accumulation_group(iteration: int, num_batches: int, accum_steps: int) -> tuple[int, bool]:
    """(batches in the accumulation group of batch `iteration` (from 0), whether that batch ends it).

    Groups are ACCUM_STEPS consecutive batches of an epoch; the last one holds the remainder."""
    start = iteration - iteration % accum_steps
    size = min(accum_steps, num_batches - start)
    return size, iteration + 1 == start + size


class OptimizerStep:
    """backward(loss, boundary): accumulate gradients; at a boundary clip, step, update the scaler, zero.

    Under fp16 a step whose gradients overflow is the scaler's business: it skips the step and halves the
    scale. `skipped_steps` counts those on the device (read it only where a host sync is due)."""

    def __init__(self, optimizer, params, amp: str, device: torch.device, accum_steps: int = 1,
                 clip_norm: float = 0.0, sync_params=()):
        """`sync_params`: trainable parameters outside DDP (the loss's), whose gradients are averaged
        over ranks here."""
        if accum_steps < 1:
            raise ShipReIDError(f"SOLVER.ACCUM_STEPS must be >= 1, got {accum_steps}")
        self.optimizer, self.params = optimizer, [p for p in params if p.requires_grad]
        self.accum_steps, self.clip_norm = accum_steps, clip_norm
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        if self.scaler and device.type == "cpu":
            logger.warning("SOLVER.AMP fp16 on the CPU is slow and meant for checking the GPU recipe (autocast + "
                           "loss scaling); to train on the CPU use SOLVER.AMP off or bf16")
        self.skipped_steps = torch.zeros((), dtype=torch.int32, device=device)
        self.sync_params = [p for p in sync_params if p.requires_grad]
        self.pending = 0

    def backward(self, loss: torch.Tensor, boundary: bool, group_size: int | None = None) -> None:
        """`group_size`: batches in this accumulation group (ACCUM_STEPS, fewer in an epoch's last group), so
        that every step follows the mean gradient of the batches it accumulated."""
        loss = loss / (group_size or self.accum_steps)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        self.pending += 1
        if boundary:
            self.step()

    def step(self) -> None:
        if not self.pending:
            return
        if world_size() > 1:
            for param in self.sync_params:
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= world_size()
        if self.clip_norm > 0:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        if self.scaler:
            self._scaler_step()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0

    def _scaler_step(self) -> None:
        """Step (skipped by the scaler on non-finite gradients), update the scale, count a skip.

        The scale falls only on a skip (it grows only after `growth_interval` clean steps in a row), so comparing
        it before and after on the device counts skips without a host sync; `_scale` is the scaler's scale
        tensor, which update() changes in place."""
        before = self.scaler._scale.clone()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.skipped_steps += (self.scaler._scale < before).int()

    def loss_scale(self) -> float | None:
        """The fp16 loss scale (a host sync), None without a scaler."""
        return self.scaler.get_scale() if self.scaler else None

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None,
                "skipped_steps": int(self.skipped_steps)}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps.fill_(state.get("skipped_steps", 0))
