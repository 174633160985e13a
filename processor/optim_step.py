"""Mixed precision, gradient accumulation and clipping in one optimizer-step wrapper."""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from utils.distributed import world_size
from utils.errors import ShipReIDError

AMP_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(mode: str, device: torch.device):
    if mode not in AMP_MODES:
        raise ShipReIDError(f"SOLVER.AMP must be one of {sorted(AMP_MODES)}, got {mode!r}")
    dtype = AMP_MODES[mode]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise ShipReIDError("SOLVER.AMP fp16 needs a GPU; use bf16 or off on the CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulation_group(iteration: int, num_batches: int, accum_steps: int) -> tuple[int, bool]:
    """(batches in the accumulation group of batch `iteration` (from 0), whether that batch ends it).

    Groups are ACCUM_STEPS consecutive batches of an epoch; the last one holds the remainder."""
    start = iteration - iteration % accum_steps
    size = min(accum_steps, num_batches - start)
    return size, iteration + 1 == start + size


class OptimizerStep:
    """backward(loss, boundary): accumulate gradients; at a boundary clip, step, update the scaler, zero."""

    def __init__(self, optimizer, params, amp: str, device: torch.device, accum_steps: int = 1,
                 clip_norm: float = 0.0, sync_params=()):
        """`sync_params`: trainable parameters outside DDP (the loss's), whose gradients are averaged
        over ranks here."""
        if accum_steps < 1:
            raise ShipReIDError(f"SOLVER.ACCUM_STEPS must be >= 1, got {accum_steps}")
        self.optimizer, self.params = optimizer, [p for p in params if p.requires_grad]
        self.accum_steps, self.clip_norm = accum_steps, clip_norm
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
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
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
