"""Retrieval metrics: mAP, CMC and mINP, vectorised over queries (no Python loop per query).

Conventions of the official TransOSS evaluation: every gallery item is kept (no same-camera
filtering, distractors included); a query with no positive in the gallery is skipped and counted.
Ties in distance are broken by gallery order (a stable sort), so results are deterministic.
"""
from __future__ import annotations

import torch

DEFAULT_RANKS = (1, 5, 10)


def squared_euclidean(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """|q|^2 + |g|^2 - 2 q.g, the official distance (2 - 2 cos for unit vectors)."""
    return (query.pow(2).sum(1, keepdim=True) + gallery.pow(2).sum(1).unsqueeze(0)).addmm_(query, gallery.t(),
                                                                                            alpha=-2)


def _ranked_matches(dist: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor) -> torch.Tensor:
    order = torch.sort(dist, dim=1, stable=True).indices
    return g_pids[order] == q_pids.unsqueeze(1)


def evaluate_ranking(dist: torch.Tensor, q_pids, g_pids, ranks=DEFAULT_RANKS, chunk: int = 1024) -> dict:
    """Metrics for a (num_query x num_gallery) distance matrix (smaller is closer).

    Returns fractions: mAP, mINP, R<k> for each k in `ranks`, plus num_valid_query and num_skipped_query
    (queries without any positive).
    """
    q_pids = torch.as_tensor(q_pids, device=dist.device)
    g_pids = torch.as_tensor(g_pids, device=dist.device)
    ap_sum = inp_sum = 0.0
    hits = torch.zeros(len(ranks), dtype=torch.float64)
    num_valid = 0
    positions = torch.arange(1, dist.shape[1] + 1, device=dist.device, dtype=torch.float64)
    for start in range(0, dist.shape[0], chunk):
        matches = _ranked_matches(dist[start:start + chunk], q_pids[start:start + chunk], g_pids)
        valid = matches.any(1)
        matches = matches[valid].double()
        if not len(matches):
            continue
        num_valid += len(matches)
        num_pos = matches.sum(1)
        precision = matches.cumsum(1) / positions
        ap_sum += ((precision * matches).sum(1) / num_pos).sum().item()
        first_hit = matches.argmax(1)
        last_hit = matches.shape[1] - 1 - matches.flip(1).argmax(1)
        inp_sum += (num_pos / (last_hit + 1)).sum().item()
        for i, k in enumerate(ranks):
            hits[i] += (first_hit < k).sum().item()
    results = {"mAP": ap_sum / num_valid if num_valid else 0.0}
    results.update({f"R{k}": (hits[i] / num_valid).item() if num_valid else 0.0 for i, k in enumerate(ranks)})
    results["mINP"] = inp_sum / num_valid if num_valid else 0.0
    results["num_valid_query"] = num_valid
    results["num_skipped_query"] = int(dist.shape[0]) - num_valid
    return results
