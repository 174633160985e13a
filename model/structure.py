"""SDF-Net's structure descriptor: how strongly each channel varies across neighbouring patches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# instance normalisation epsilon of the released SDF-Net code (F.instance_norm's default)
STRUCTURE_NORM_EPS = 1e-5


def structure_descriptor(patch_map: torch.Tensor) -> torch.Tensor:
    """(B, rows, cols, C) patch map -> (B, C) descriptor.

    Per channel: mean |forward difference| down the rows plus mean |forward difference| along the columns
    (the released code's forward differences; the paper writes a central difference), then each sample's
    C values standardised to zero mean and unit biased variance, which makes the descriptor invariant to
    the feature map's scale.
    """
    if patch_map.dim() != 4 or patch_map.shape[1] < 2 or patch_map.shape[2] < 2:
        raise ValueError(f"structure_descriptor needs a (B, rows >= 2, cols >= 2, C) map, got {tuple(patch_map.shape)}")
    vertical = (patch_map[:, 1:] - patch_map[:, :-1]).abs().mean(dim=(1, 2))
    horizontal = (patch_map[:, :, 1:] - patch_map[:, :, :-1]).abs().mean(dim=(1, 2))
    energy = (vertical + horizontal).float()
    return F.instance_norm(energy.unsqueeze(1), eps=STRUCTURE_NORM_EPS).squeeze(1)
