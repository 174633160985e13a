"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised with boolean neighbour matrices.

Same definition as the widely used reference implementation: squared Euclidean distances scaled by
each row's maximum, k1-reciprocal sets expanded by their k1/2-reciprocal subsets that overlap by
more than two thirds, Gaussian-weighted set vectors, local query expansion over k2 neighbours,
Jaccard distance, and final = (1 - lambda) * jaccard + lambda * original.
Memory is O(N^2) for N = queries + gallery; the Jaccard step is O(N^2 * N / chunk) in chunks.
"""
from __future__ import annotations

import torch

from .metrics import squared_euclidean

# a candidate's half-size reciprocal set joins the expansion when this share of it is already inside
EXPANSION_OVERLAP = 2.0 / 3.0


def _reciprocal(initial_rank: torch.Tensor, k: int) -> torch.Tensor:
    """R[i, j] = j is among the k nearest of i and i among the k nearest of j."""
    n = initial_rank.shape[0]
    top = torch.zeros(n, n, dtype=torch.bool, device=initial_rank.device)
    top.scatter_(1, initial_rank[:, :k], True)
    return top & top.t()


def re_ranking(query: torch.Tensor, gallery: torch.Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               chunk: int = 64) -> torch.Tensor:
    """Re-ranked (num_query x num_gallery) distance matrix."""
    num_query = query.shape[0]
    feats = torch.cat([query, gallery]).double()
    n = feats.shape[0]
    original = squared_euclidean(feats, feats).clamp_(min=0)
    original = original / original.max(dim=1, keepdim=True).values  # each row scaled by its maximum
    initial_rank = torch.sort(original, dim=1, stable=True).indices
    k1, k2 = min(k1, n - 1), min(k2, n)

    reciprocal = _reciprocal(initial_rank, k1 + 1)
    half = _reciprocal(initial_rank, int(round(k1 / 2)) + 1)
    overlap = reciprocal.double() @ half.double().t()  # |R(i) ∩ R_half(c)|
    joins = reciprocal & (overlap > EXPANSION_OVERLAP * half.sum(1).double().unsqueeze(0))
    expanded = reciprocal | ((joins.double() @ half.double()) > 0)

    weights = torch.where(expanded, torch.exp(-original), torch.zeros_like(original))
    weights = weights / weights.sum(1, keepdim=True)
    if k2 != 1:
        weights = weights[initial_rank[:, :k2]].mean(1)

    jaccard = torch.empty(num_query, n, dtype=torch.float64, device=feats.device)
    for start in range(0, num_query, chunk):
        end = min(start + chunk, num_query)
        shared = torch.minimum(weights[start:end].unsqueeze(1), weights.unsqueeze(0)).sum(-1)
        jaccard[start:end] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:].to(query.dtype)
