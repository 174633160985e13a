"""Optimizer with the official parameter groups (bias LR factor and weight decay) and a no-decay list."""
from __future__ import annotations

import torch

from utils.errors import ShipReIDError

OPTIMIZERS = ("SGD", "AdamW")


def param_groups(named_params, cfg) -> list[dict]:
    """One group per distinct (lr, weight_decay); `base_lr` is kept for the scheduler."""
    s = cfg.SOLVER
    groups: dict[tuple[float, float], list] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        lr, decay = s.BASE_LR, s.WEIGHT_DECAY
        if "bias" in name:
            lr, decay = s.BASE_LR * s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS
        if any(key in name for key in s.NO_DECAY_KEYS):
            decay = 0.0
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "base_lr": lr, "weight_decay": decay}
            for (lr, decay), params in groups.items()]


def build_optimizer(cfg, *modules) -> torch.optim.Optimizer:
    """Optimizer over the trainable parameters of `modules` (the model and the loss, which may hold some)."""
    named = [(f"{i}.{name}", p) for i, m in enumerate(modules) for name, p in m.named_parameters()]
    groups = param_groups(named, cfg)
    name = cfg.SOLVER.OPTIMIZER_NAME
    use_fused = all(p.is_cuda for g in groups for p in g["params"])
    if name == "SGD":
        return torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                               fused=use_fused or None)
    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR, fused=use_fused or None)
    raise ShipReIDError(f"SOLVER.OPTIMIZER_NAME must be one of {OPTIMIZERS}, got {name!r}")
