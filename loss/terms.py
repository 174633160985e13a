"""Registered loss terms: each reads the model outputs and the batch and returns a scalar.

A term that belongs to a switchable module has `off_reason(cfg)`: while the module is off, the term is
left out of the loss (and the log says so), so that an ablation is one override of the module switch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.distributed import all_gather_with_grad
from utils.registry import Registry

from .alignment import classwise_alignment_loss, orthogonality_loss, structure_prototype_loss
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


def _gathered(gather: bool, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(all_gather_with_grad(t) for t in tensors) if gather else tensors


@LOSS_TERMS.register("orth")
class OrthogonalityLoss(nn.Module):
    """SDF-Net DFL: mean |cos| between each sample's shared and specific features."""

    def __init__(self, cfg):
        super().__init__()

    @staticmethod
    def off_reason(cfg) -> str | None:
        return "DFL is off (MODEL.SDF.DFL off)" if cfg.MODEL.SDF.DFL == "off" else None

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        return orthogonality_loss(outputs["feat_shared"], outputs["feat_specific"])


@LOSS_TERMS.register("struct")
class StructureLoss(nn.Module):
    """SDF-Net SCL: optical and SAR structure prototypes of each identity pulled together."""

    def __init__(self, cfg):
        super().__init__()
        self.gather = cfg.LOSS.GATHER_ACROSS_RANKS

    @staticmethod
    def off_reason(cfg) -> str | None:
        return "SCL is off (MODEL.SDF.STRUCT_LAYER 0)" if cfg.MODEL.SDF.STRUCT_LAYER == 0 else None

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        structure, labels, modality = _gathered(self.gather, outputs["structure"], batch["label"], batch["modality"])
        return structure_prototype_loss(structure, labels, modality)


@LOSS_TERMS.register("cmal")
class ClasswiseAlignmentLoss(nn.Module):
    """MOS CMAL on the L2-normalised pre-neck feature."""

    def __init__(self, cfg):
        super().__init__()
        self.gather = cfg.LOSS.GATHER_ACROSS_RANKS
        self.squared = cfg.LOSS.CMAL_SQUARED

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        feat, labels, modality = _gathered(self.gather, outputs["feat"], batch["label"], batch["modality"])
        return classwise_alignment_loss(feat, labels, modality, self.squared)


@LOSS_TERMS.register("bridge")
class BridgeLoss(nn.Module):
    """BBDM training: the translator computes its objective's L1/L2 loss in its forward pass."""

    def __init__(self, cfg):
        super().__init__()

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        return outputs["bridge"]
