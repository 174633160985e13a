"""Per-identity, per-modality statistics of a batch: the shared core of SDF-Net's structure loss and
MOS's class-wise modality alignment.

Fixed shapes only (an identity-equality matrix, masks as weights): no torch.unique, no boolean indexing, no
reading a count on the host, so a training step never waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model.embeddings import OPTICAL


@dataclass
class PairedStats:
    """Row i: the statistics of sample i's identity (rows repeat within an identity). `weight` averages over
    identities: it is 1 / (qualifying identities x the identity's samples) on the rows of identities that have
    both an optical and a SAR sample, 0 elsewhere (all 0 when none qualifies), so sum_i weight_i * value_i is the
    mean over qualifying identities of a per-identity value, and 0 when there is none."""
    optical_mean: torch.Tensor
    sar_mean: torch.Tensor
    optical_var: torch.Tensor   # biased (population) variance; 0 for a single sample
    sar_var: torch.Tensor
    weight: torch.Tensor

    def average(self, per_identity: torch.Tensor) -> torch.Tensor:
        """The mean over qualifying identities of `per_identity` (one value per row), 0 when none qualifies."""
        return (self.weight * per_identity).sum()


def _group_stats(feat: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, mean, biased variance) of the samples that `members[i]` selects, for every row i."""
    count = members.sum(1, keepdim=True)
    mean = members @ feat / count.clamp(min=1)
    centred = (feat.unsqueeze(0) - mean.unsqueeze(1)).pow(2)             # (rows, samples, D)
    var = (members.unsqueeze(2) * centred).sum(1) / count.clamp(min=1)
    return count.squeeze(1), mean, var


def paired_modality_stats(feat: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> PairedStats:
    """Mean and biased variance of `feat` (N, D) per (identity, modality) of every sample, and the weights that
    average over the identities having both modalities."""
    same_identity = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(feat.dtype)
    optical = (modality == OPTICAL).to(feat.dtype)
    optical_count, optical_mean, optical_var = _group_stats(feat, same_identity * optical.unsqueeze(0))
    sar_count, sar_mean, sar_var = _group_stats(feat, same_identity * (1 - optical).unsqueeze(0))
    both = ((optical_count > 0) & (sar_count > 0)).to(feat.dtype)
    per_row = both / (optical_count + sar_count)       # each qualifying identity's rows sum to 1
    weight = per_row / per_row.sum().clamp(min=1)      # / number of qualifying identities (0 stays 0)
    return PairedStats(optical_mean, sar_mean, optical_var, sar_var, weight)
