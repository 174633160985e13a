"""Batch-hard triplet loss on un-normalised features (Hermans et al. 2017; official TransOSS form)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# floor under squared distances before the square root (keeps the gradient finite at zero)
SQUARED_DISTANCE_FLOOR = 1e-12


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    squared = x.pow(2).sum(1, keepdim=True)
    squared = (squared + squared.t()).addmm_(x, x.t(), alpha=-2)
    return squared.clamp(min=SQUARED_DISTANCE_FLOOR).sqrt()


def hardest_pairs(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every anchor: the farthest positive (itself included) and the nearest negative."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    dist_ap = dist.masked_fill(~same, float("-inf")).max(1).values
    dist_an = dist.masked_fill(same, float("inf")).min(1).values
    return dist_ap, dist_an


def batch_hard_triplet(feat: torch.Tensor, labels: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """margin > 0: mean max(0, d_ap - d_an + margin); margin == 0: soft margin mean log(1 + exp(d_ap - d_an))."""
    # a batch of one identity has no negative (d_an = inf, loss 0): start-up checks refuse such a batch size
    # (configs/checks.py), so the step itself reads nothing back from the device
    dist_ap, dist_an = hardest_pairs(euclidean_distances(feat.float()), labels)
    if margin > 0:
        return F.relu(dist_ap - dist_an + margin).mean()
    return F.softplus(dist_ap - dist_an).mean()
