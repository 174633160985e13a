"""MOS cross-modal feature fusion (CDGF): an optical chip's feature moved towards those of its pseudo-SAR chips."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fuse_with_pseudo_sar(feat: torch.Tensor, pseudo: torch.Tensor, tau: float) -> torch.Tensor:
    """normalize((1 - tau) f^ + tau mean_k p^_k) with ^ the L2 normalisation.

    feat: (N, D) features of N optical chips; pseudo: (N, K, D) features of their K generated chips.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"TEST.FUSION.TAU must be in [0, 1], got {tau}")
    mean_pseudo = F.normalize(pseudo, dim=-1).mean(dim=1)
    return F.normalize((1 - tau) * F.normalize(feat, dim=-1) + tau * mean_pseudo, dim=-1)
