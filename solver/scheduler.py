"""Per-epoch cosine learning rate with linear warm-up, reproducing the official TransOSS values.

For epoch e = 1..E and a parameter group with base LR b_g (global BASE_LR b):
  e < W:  lr = f_w * b + e * (b_g - f_w * b) / W
  else:   lr = m * b + (b_g - m * b) * (1 + cos(pi * e / E)) / 2
with W = WARMUP_EPOCHS, f_w = WARMUP_FACTOR, m = MIN_LR_FACTOR. (Official, 5e-4 over 200 epochs:
1.04e-4 at epoch 1, 4.99e-4 at 5, 2.5e-4 at 100, 1e-6 at 200.)
"""
from __future__ import annotations

import math


def cosine_warmup_lr(epoch: int, group_lr: float, base_lr: float, max_epochs: int, warmup_epochs: int,
                     warmup_factor: float, min_lr_factor: float) -> float:
    if epoch < warmup_epochs:
        start = warmup_factor * base_lr
        return start + epoch * (group_lr - start) / warmup_epochs
    floor = min_lr_factor * base_lr
    return floor + 0.5 * (group_lr - floor) * (1 + math.cos(math.pi * epoch / max_epochs))


class CosineWarmupScheduler:
    """Sets every group's LR for an epoch; its state is just the last epoch set."""

    def __init__(self, optimizer, cfg):
        s = cfg.SOLVER
        self.optimizer = optimizer
        self.args = dict(base_lr=s.BASE_LR, max_epochs=s.MAX_EPOCHS, warmup_epochs=s.WARMUP_EPOCHS,
                         warmup_factor=s.WARMUP_FACTOR, min_lr_factor=s.MIN_LR_FACTOR)
        self.epoch = 0

    def step(self, epoch: int) -> None:
        self.epoch = epoch
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_warmup_lr(epoch, group["base_lr"], **self.args)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.step(state["epoch"])
