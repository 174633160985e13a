"""Per-identity, per-modality statistics of a batch: the shared core of SDF-Net's structure loss and
MOS's class-wise modality alignment."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model.embeddings import NUM_MODALITIES, OPTICAL, SAR


@dataclass
class PairedStats:
    """Rows: the identities of the batch that have both an optical and a SAR sample (possibly none)."""
    optical_mean: torch.Tensor
    sar_mean: torch.Tensor
    optical_var: torch.Tensor   # biased (population) variance; 0 for a single sample
    sar_var: torch.Tensor

    @property
    def count(self) -> int:
        return self.optical_mean.shape[0]


def paired_modality_stats(feat: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> PairedStats:
    """Mean and biased variance of `feat` (N, D) per (identity, modality) group, for the identities with
    both modalities. Vectorised: one scatter per statistic, no loop over identities."""
    _, identity = torch.unique(labels, return_inverse=True)
    group = identity * NUM_MODALITIES + modality.long()
    num_groups = (int(identity.max()) + 1) * NUM_MODALITIES if feat.shape[0] else 0
    count = feat.new_zeros(num_groups).index_add_(0, group, feat.new_ones(feat.shape[0]))
    mean = feat.new_zeros(num_groups, feat.shape[1]).index_add_(0, group, feat) / count.clamp(min=1).unsqueeze(1)
    centred = (feat - mean[group]).pow(2)
    var = feat.new_zeros(num_groups, feat.shape[1]).index_add_(0, group, centred) / count.clamp(min=1).unsqueeze(1)
    mean = mean.view(-1, NUM_MODALITIES, feat.shape[1])
    var = var.view(-1, NUM_MODALITIES, feat.shape[1])
    both = (count.view(-1, NUM_MODALITIES) > 0).all(dim=1)
    return PairedStats(mean[both, OPTICAL], mean[both, SAR], var[both, OPTICAL], var[both, SAR])
