"""Registered loss terms: each reads the model outputs and the batch and returns a scalar."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.registry import Registry

from .infonce import SymmetricInfoNCE
from .triplet import batch_hard_triplet

LOSS_TERMS = Registry("loss term")


@LOSS_TERMS.register("id")
class IdentityLoss(nn.Module):
    """Cross-entropy of the classifier logits, optionally label-smoothed."""

    def __init__(self, cfg):
        super().__init__()
        self.smoothing = cfg.LOSS.LABEL_SMOOTH

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        return F.cross_entropy(outputs["logits"].float(), batch["label"], label_smoothing=self.smoothing)


@LOSS_TERMS.register("triplet")
class TripletLoss(nn.Module):
    """Batch-hard triplet on the pre-neck feature."""

    def __init__(self, cfg):
        super().__init__()
        self.margin = cfg.LOSS.TRIPLET_MARGIN

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        return batch_hard_triplet(outputs["feat"], batch["label"], self.margin)


@LOSS_TERMS.register("infonce")
class PairInfoNCE(SymmetricInfoNCE):
    """Contrastive pretraining: the batch holds N optical images then their N SAR partners."""

    def __init__(self, cfg):
        super().__init__(cfg.LOSS.INFONCE_TEMPERATURE, cfg.LOSS.INFONCE_MAX_SCALE)

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        feat = outputs["feat"]
        half = feat.shape[0] // 2
        return super().forward(feat[:half], feat[half:])
