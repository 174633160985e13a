"""Cross-modal alignment losses: SDF-Net's structure consistency and orthogonality, MOS's CMAL."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .modality_stats import paired_modality_stats


def structure_prototype_loss(structure: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """SDF-Net SCL: mean over identities with both modalities of mean_c (optical prototype - SAR prototype)^2,
    prototypes being the per-modality means of the structure descriptors; 0 when no identity qualifies.

    The released code's per-dimension mean (MSE) is used, not the paper's un-normalised squared norm: the
    weight 1.0 was tuned with it.
    """
    stats = paired_modality_stats(structure.float(), labels, modality)
    return stats.average((stats.optical_mean - stats.sar_mean).pow(2).mean(1))


def orthogonality_loss(shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    """SDF-Net DFL: mean |cos(f_shared, f_specific)| over the batch."""
    return (F.normalize(shared.float(), dim=1) * F.normalize(specific.float(), dim=1)).sum(1).abs().mean()


def classwise_alignment_loss(feat: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor,
                             squared: bool = False) -> torch.Tensor:
    """MOS CMAL on L2-normalised features, over identities with both modalities (0 when none):
    mean_p |mu_opt - mu_sar| + mean_p |var_opt - var_sar| (released code), or with squared norms (paper)."""
    stats = paired_modality_stats(F.normalize(feat.float(), dim=1), labels, modality)
    mean_diff, var_diff = stats.optical_mean - stats.sar_mean, stats.optical_var - stats.sar_var
    if squared:
        return stats.average(mean_diff.pow(2).sum(1)) + stats.average(var_diff.pow(2).sum(1))
    # vector_norm has a zero subgradient at 0 (sqrt would give NaN): two single images have equal variance 0
    return stats.average(torch.linalg.vector_norm(mean_diff, dim=1)) + \
        stats.average(torch.linalg.vector_norm(var_diff, dim=1))
