"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised over index lists and boolean set masks.

Same definition as the widely used reference implementation: squared Euclidean distances scaled by
each row's maximum, k1-reciprocal sets expanded by their k1/2-reciprocal subsets that overlap by
more than two thirds, Gaussian-weighted set vectors, local query expansion over k2 neighbours,
Jaccard distance, and final = (1 - lambda) * jaccard + lambda * original.
Memory is about RERANK_BYTES_PER_PAIR x N^2 for N = queries + gallery (a few N x N float64 matrices); the
Jaccard step reads only each query's non-zero set-vector entries, in chunks of bounded size.
"""
from __future__ import annotations

import torch

from .errors import ShipReIDError
from .metrics import squared_euclidean

# a candidate's half-size reciprocal set joins the expansion when this share of it is already inside
EXPANSION_OVERLAP = 2.0 / 3.0
# peak memory per (image, image) pair: measured 64 at N = 4,000 and 35 at N = 8,000 on the CPU
# (tools/benchmark.py --mode rerank; the fixed chunk memory weighs less as N grows)
RERANK_BYTES_PER_PAIR = 64
# working memory of one chunk of rows (sorting, set gathering, query expansion, Jaccard)
CHUNK_BYTES = 256 * 2 ** 20


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on `device` (MemAvailable on the host)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def check_memory(n: int, device: torch.device) -> None:
    """Raise when re-ranking n images would not fit in what `device` has free. One process's need is enough:
    under torchrun only rank 0 scores (processor/evaluator.py), while the other ranks wait."""
    need = RERANK_BYTES_PER_PAIR * n * n
    try:
        free = available_memory(device)
    except OSError:  # not Linux: nothing to compare with
        return
    if need > free:
        raise ShipReIDError(f"TEST.RE_RANKING on {n} images needs about {need / 2 ** 30:.1f} GiB "
                            f"({RERANK_BYTES_PER_PAIR} bytes x {n}^2) and {device} has {free / 2 ** 30:.1f} GiB "
                            "available: turn it off, or evaluate fewer images (DATASETS.PROTOCOLS)")


def _query_supports(weights: torch.Tensor, num_query: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) of each query row's non-zero set-vector entries, padded with zeros to the largest
    support (a zero adds nothing to a sum of minima)."""
    support = int((weights[:num_query] > 0).sum(1).max())
    return weights[:num_query].topk(support, dim=1)


def _jaccard(transposed: torch.Tensor, values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """1 - s / (2 - s), s[i, j] = sum_c min(V[i, c], V[j, c]), for the query rows against all rows.

    V >= 0, so only the columns where V[i] is non-zero contribute: each query reads those columns of V, as
    contiguous rows of V transposed (chunk x support x N values instead of chunk x N x N)."""
    n = transposed.shape[0]
    num_query, support = values.shape
    jaccard = torch.empty(num_query, n, dtype=transposed.dtype, device=transposed.device)
    for start, end in _row_chunks(num_query, n * support * transposed.element_size()):
        shared = torch.minimum(transposed[columns[start:end]], values[start:end].unsqueeze(-1)).sum(1)
        jaccard[start:end] = 1 - shared / (2 - shared)
    return jaccard


def _row_chunks(n: int, bytes_per_row: int):
    """Row ranges [start, end) of about CHUNK_BYTES of working memory each."""
    step = max(1, CHUNK_BYTES // max(1, bytes_per_row))
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _nearest(original: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest of every row (itself included), ties in index order, without sorting the full matrix
    at once."""
    n = original.shape[0]
    out = torch.empty(n, k, dtype=torch.int64, device=original.device)
    for start, end in _row_chunks(n, 16 * n):
        out[start:end] = torch.sort(original[start:end], dim=1, stable=True).indices[:, :k]
    return out


def _reciprocal(nearest: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the k nearest of each row, mask of those that have the row among their own k nearest)."""
    top = nearest[:, :k]
    mask = torch.empty_like(top, dtype=torch.bool)
    for start, end in _row_chunks(len(top), 8 * k * k):
        rows = torch.arange(start, end, device=top.device).view(-1, 1, 1)
        mask[start:end] = (top[top[start:end]] == rows).any(-1)
    return top, mask


def _set_entries(matrix: torch.Tensor, columns: torch.Tensor, valid: torch.Tensor, row_offset: int = 0) -> None:
    """matrix[row_offset + i, columns[i, j]] = True wherever valid[i, j]."""
    rows = torch.arange(row_offset, row_offset + len(columns), device=columns.device).unsqueeze(1)
    matrix.view(-1)[(rows * matrix.shape[1] + columns)[valid]] = True


def _expanded_sets(nearest: torch.Tensor, k1: int) -> torch.Tensor:
    """N x N mask of every row's k1-reciprocal set expanded by the half-size reciprocal sets of its members
    that overlap it by more than EXPANSION_OVERLAP. Only the sets' index lists are gathered (N x k1 x k1/2),
    never N x N x N products."""
    n = len(nearest)
    members, member_ok = _reciprocal(nearest, k1 + 1)
    halves, half_ok = _reciprocal(nearest, int(round(k1 / 2)) + 1)
    half_sizes = half_ok.sum(1)
    expanded = torch.zeros(n, n, dtype=torch.bool, device=nearest.device)
    _set_entries(expanded, members, member_ok)
    reciprocal = expanded.clone()
    width = members.shape[1] * halves.shape[1]
    for start, end in _row_chunks(n, 16 * width):
        candidates = members[start:end]                        # (rows, k1 + 1) candidates c
        candidate_half = halves[candidates]                    # (rows, k1 + 1, h): H(c)
        candidate_ok = half_ok[candidates]
        inside = reciprocal[start:end].gather(1, candidate_half.reshape(end - start, -1)).view_as(candidate_half)
        overlap = (inside & candidate_ok).sum(-1)              # |R(i) ∩ H(c)|
        joins = member_ok[start:end] & (overlap > EXPANSION_OVERLAP * half_sizes[candidates])
        _set_entries(expanded, candidate_half.reshape(end - start, -1),
                     (candidate_ok & joins.unsqueeze(-1)).reshape(end - start, -1), start)
    return expanded


def re_ranking(query: torch.Tensor, gallery: torch.Tensor, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3) -> torch.Tensor:
    """Re-ranked (num_query x num_gallery) distance matrix."""
    num_query = query.shape[0]
    feats = torch.cat([query, gallery]).double()
    n = feats.shape[0]
    check_memory(n, feats.device)
    original = squared_euclidean(feats, feats).clamp_(min=0)
    original.div_(original.max(dim=1, keepdim=True).values)  # each row scaled by its maximum
    k1, k2 = min(k1, n - 1), min(k2, n)
    nearest = _nearest(original, max(k1 + 1, k2))

    expanded = _expanded_sets(nearest, k1)
    weights = torch.zeros_like(original)
    weights[expanded] = torch.exp(-original[expanded])
    del expanded
    weights.div_(weights.sum(1, keepdim=True))
    if k2 != 1:  # local query expansion: the mean set vector of each row's k2 nearest
        expanded_weights = torch.empty_like(weights)
        for start, end in _row_chunks(n, 8 * k2 * n):
            expanded_weights[start:end] = weights[nearest[start:end, :k2]].mean(1)
        weights = expanded_weights

    values, columns = _query_supports(weights, num_query)
    transposed = weights.t().contiguous()
    del weights
    final = _jaccard(transposed, values, columns) * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:].to(query.dtype)
