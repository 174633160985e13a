"""Symmetric InfoNCE between paired optical and SAR features, with a learned temperature (CLIP-style)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SymmetricInfoNCE(nn.Module):
    """L = (CE(t S O^T, I) + CE(t O S^T, I)) / 2 over L2-normalised SAR (S) and optical (O) features.

    t = exp(logit_scale), learned, initialised at 1 / temperature and clamped to [1, max_scale] as CLIP does
    (max_scale 0: unclamped, the official TransOSS pretraining).
    """

    def __init__(self, temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.max_log_scale = math.log(max_scale) if max_scale > 0 else None

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        # fp32 throughout, autocast or not: at a scale of 100 a bf16 logit moves in steps of 0.5
        with torch.autocast(optical.device.type, enabled=False):
            optical, sar = F.normalize(optical.float(), dim=1), F.normalize(sar.float(), dim=1)
            log_scale = self.logit_scale.float()
            if self.max_log_scale is not None:
                log_scale = log_scale.clamp(0.0, self.max_log_scale)
            logits = log_scale.exp() * sar @ optical.t()
            targets = torch.arange(len(logits), device=logits.device)
            return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
