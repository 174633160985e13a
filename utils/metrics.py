"""Retrieval metrics: mAP, CMC and mINP, vectorised over queries, without sorting the gallery.

Every metric depends only on the ranks of a query's positives. Ranks follow a stable sort: ascending
distance, ties in gallery order. Each gallery item gets the exact integer key (distance bits, index), the
positives' keys are sorted (a handful per query), and one `searchsorted` tells for every gallery item how
many positives precede it; a per-query histogram of that count gives every positive's rank. That is
O(gallery x log positives) per query and no sorted gallery is ever materialised, so 10,000 queries x
100,000 gallery items run in chunks on any device.

Conventions of the official TransOSS evaluation: every gallery item is kept (no same-camera filtering,
distractors included); a query with no positive in the gallery is skipped and counted. Distances are
compared in float32, as the official code does.
"""
from __future__ import annotations

import torch

DEFAULT_RANKS = (1, 5, 10)
# gallery entries (queries x gallery) handled per chunk: bounds memory at about 24 bytes per entry
CHUNK_ENTRIES = 2 ** 25
_INT32_SIGN_FLIP = 0x7FFFFFFF


def squared_euclidean(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """|q|^2 + |g|^2 - 2 q.g, the official distance (2 - 2 cos for unit vectors)."""
    return (query.pow(2).sum(1, keepdim=True) + gallery.pow(2).sum(1).unsqueeze(0)).addmm_(query, gallery.t(),
                                                                                            alpha=-2)


def _monotone_bits(dist: torch.Tensor) -> torch.Tensor:
    """int32 keys with the order of float32 `dist` (IEEE bits, negative values mirrored; + 0.0 turns -0.0
    into +0.0, which a sort treats as equal)."""
    bits = (dist.float() + 0.0).contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & _INT32_SIGN_FLIP)


def _positives_in_order(keys: torch.Tensor, positive: torch.Tensor, counts: torch.Tensor):
    """Each row's positives sorted by (key, gallery index): their int32 keys (padded with int32 max) and
    gallery indices (padded with the gallery size)."""
    num_query, num_gallery = keys.shape
    width = int(counts.max())
    rows, cols = positive.nonzero(as_tuple=True)
    slot = torch.arange(len(rows), device=keys.device) - (torch.cumsum(counts, 0) - counts)[rows]
    composite = torch.full((num_query, width), torch.iinfo(torch.int64).max, device=keys.device)
    composite[rows, slot] = (keys[rows, cols].to(torch.int64) + 2 ** 31) * num_gallery + cols
    composite = composite.sort(dim=1).values
    padding = composite == torch.iinfo(torch.int64).max
    pos_keys = (composite // num_gallery - 2 ** 31).masked_fill(padding, torch.iinfo(torch.int32).max)
    pos_index = (composite % num_gallery).masked_fill(padding, num_gallery)
    return pos_keys.to(torch.int32).contiguous(), pos_index


def _ranks_from_counts(not_after: torch.Tensor, width: int) -> torch.Tensor:
    """rank_j = 1 + number of gallery items with `not_after` <= j.

    `not_after` counts, for every gallery item, the positives at or ahead of it (itself included), so an
    item with a count <= j is ahead of positive j; positive j itself has count j + 1.
    """
    num_query = not_after.shape[0]
    offsets = torch.arange(num_query, device=not_after.device, dtype=not_after.dtype).unsqueeze(1) * (width + 1)
    histogram = torch.bincount((not_after + offsets).flatten(), minlength=num_query * (width + 1))
    return histogram.view(num_query, width + 1)[:, :width].cumsum(1).double() + 1


def positive_ranks(dist: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of each query's positives, ascending, padded to the largest positive count.

    dist, positive: (q, g), every row with at least one positive. Returns ranks (q, p) as float64 and the
    mask of real (non-padding) entries.

    For every gallery item, `not_after` = number of positives at or ahead of it in (distance, index) order.
    One int32 `searchsorted` gives it for items whose distance equals no positive's; the few items that
    tie a positive's distance get the index comparison within their tie group.
    """
    counts = positive.sum(1)
    width = int(counts.max())
    keys = _monotone_bits(dist)
    pos_keys, pos_index = _positives_in_order(keys, positive, counts)
    not_after = torch.searchsorted(pos_keys, keys, right=True, out_int32=True)
    # the key of the last positive at or ahead of each item (a sentinel below every key when none is)
    sentinel = torch.full((len(pos_keys), 1), torch.iinfo(torch.int32).min, dtype=torch.int32, device=dist.device)
    previous = torch.gather(torch.cat([sentinel, pos_keys], 1), 1, not_after.long())
    rows, cols = (previous == keys).nonzero(as_tuple=True)
    if len(rows):
        # tie group of each tied item: positives [first, not_after) with the item's exact distance
        first = torch.searchsorted(pos_keys[rows], keys[rows, cols].unsqueeze(1), out_int32=True).squeeze(1)
        slots = torch.arange(width, device=dist.device).unsqueeze(0)
        in_group = (slots >= first.unsqueeze(1)) & (slots < not_after[rows, cols].unsqueeze(1))
        at_or_before = in_group & (pos_index[rows] <= cols.unsqueeze(1))
        not_after[rows, cols] = first + at_or_before.sum(1, dtype=torch.int32)
    ranks = _ranks_from_counts(not_after, width)
    valid = torch.arange(width, device=dist.device).unsqueeze(0) < counts.unsqueeze(1)
    return ranks, valid


class RankingMetrics:
    """Accumulates mAP, CMC and mINP over chunks of queries against one gallery."""

    def __init__(self, g_pids, ranks=DEFAULT_RANKS):
        self.g_pids = torch.as_tensor(g_pids)
        self.ranks = tuple(ranks)
        self.ap_sum = self.inp_sum = 0.0
        self.hits = [0] * len(self.ranks)
        self.num_valid = self.num_query = 0

    def add(self, dist: torch.Tensor, q_pids) -> None:
        """Score the queries of one (chunk x gallery) distance block."""
        g_pids = self.g_pids.to(dist.device)
        positive = torch.as_tensor(q_pids, device=dist.device).unsqueeze(1) == g_pids.unsqueeze(0)
        self.num_query += dist.shape[0]
        keep = positive.any(1)
        if not keep.any():
            return
        pos_ranks, valid = positive_ranks(dist[keep], positive[keep])
        counts = valid.sum(1).double()
        self.num_valid += len(counts)
        order = torch.arange(1, pos_ranks.shape[1] + 1, device=dist.device, dtype=torch.float64)
        self.ap_sum += (torch.where(valid, order / pos_ranks, 0.0).sum(1) / counts).sum().item()
        last = pos_ranks.masked_fill(~valid, 0).max(1).values
        self.inp_sum += (counts / last).sum().item()
        for i, k in enumerate(self.ranks):
            self.hits[i] += int((pos_ranks[:, 0] <= k).sum())

    def result(self) -> dict:
        n = self.num_valid
        results = {"mAP": self.ap_sum / n if n else 0.0}
        results.update({f"R{k}": self.hits[i] / n if n else 0.0 for i, k in enumerate(self.ranks)})
        results["mINP"] = self.inp_sum / n if n else 0.0
        results["num_valid_query"] = n
        results["num_skipped_query"] = self.num_query - n
        return results


def _chunk_size(num_gallery: int) -> int:
    return max(1, CHUNK_ENTRIES // max(1, num_gallery))


def evaluate_ranking(dist: torch.Tensor, q_pids, g_pids, ranks=DEFAULT_RANKS) -> dict:
    """Metrics for a (num_query x num_gallery) distance matrix (smaller is closer).

    Returns fractions mAP, mINP and R<k> for each k in `ranks`, plus num_valid_query and num_skipped_query.
    """
    metrics = RankingMetrics(g_pids, ranks)
    q_pids = torch.as_tensor(q_pids)
    chunk = _chunk_size(dist.shape[1])
    for start in range(0, dist.shape[0], chunk):
        metrics.add(dist[start:start + chunk], q_pids[start:start + chunk])
    return metrics.result()


def evaluate_features(query: torch.Tensor, gallery: torch.Tensor, q_pids, g_pids, ranks=DEFAULT_RANKS) -> dict:
    """Same metrics with squared Euclidean distances computed chunk by chunk on the features' device,
    so the full distance matrix never exists (10,000 x 100,000 needs a few hundred MB)."""
    metrics = RankingMetrics(g_pids, ranks)
    q_pids = torch.as_tensor(q_pids)
    chunk = _chunk_size(gallery.shape[0])
    for start in range(0, query.shape[0], chunk):
        metrics.add(squared_euclidean(query[start:start + chunk], gallery), q_pids[start:start + chunk])
    return metrics.result()
