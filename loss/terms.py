"""Registered loss terms: each reads the model outputs and the batch and returns a scalar."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.distributed import all_gather_with_grad
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
        self.gather = cfg.LOSS.GATHER_ACROSS_RANKS

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        feat, labels = outputs["feat"], batch["label"]
        if self.gather:
            feat, labels = all_gather_with_grad(feat), all_gather_with_grad(labels)
        return batch_hard_triplet(feat, labels, self.margin)


@LOSS_TERMS.register("infonce")
class PairInfoNCE(SymmetricInfoNCE):
    """Contrastive pretraining: the batch holds N optical images then their N SAR partners."""

    def __init__(self, cfg):
        super().__init__(cfg.LOSS.INFONCE_TEMPERATURE, cfg.LOSS.INFONCE_MAX_SCALE)
        self.gather = cfg.LOSS.GATHER_ACROSS_RANKS

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        feat = outputs["feat"]
        half = feat.shape[0] // 2
        optical, sar = feat[:half], feat[half:]
        if self.gather:
            # every rank computes the loss over all pairs (negatives from the whole global batch); the
            # temperature's gradient is then identical on every rank, so it needs no DDP averaging
            optical, sar = all_gather_with_grad(optical), all_gather_with_grad(sar)
        return super().forward(optical, sar)
