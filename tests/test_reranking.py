"""utils.reranking.re_ranking against a plain loop implementation of k-reciprocal re-ranking
(Zhong et al., CVPR 2017, as in the widely used reference code), and its effect on a clustered case."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils import reranking
from utils.errors import ShipReIDError
from utils.metrics import evaluate_ranking, squared_euclidean
from utils.reranking import re_ranking


def loop_re_ranking(query: np.ndarray, gallery: np.ndarray, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Straightforward loops, following the reference implementation step by step (float64 throughout)."""
    feats = np.concatenate([query, gallery]).astype(np.float64)
    num_query, n = len(query), len(feats)
    original = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    original = original / original.max(axis=1, keepdims=True)  # each row divided by its maximum
    initial_rank = np.argsort(original, axis=1, kind="stable")
    half = int(np.around(k1 / 2))

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = initial_rank[i, :k + 1]
        backward = initial_rank[forward, :k + 1]
        return forward[np.where(backward == i)[0]]

    V = np.zeros((n, n))
    for i in range(n):
        k_reciprocal = reciprocal(i, k1)
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            candidate_set = reciprocal(candidate, half)
            if len(np.intersect1d(candidate_set, k_reciprocal)) > 2 / 3 * len(candidate_set):
                expansion = np.append(expansion, candidate_set)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / weight.sum()
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(n):
            V_qe[i] = V[initial_rank[i, :k2]].mean(axis=0)
        V = V_qe
    jaccard = np.zeros((num_query, n))
    for i in range(num_query):
        for j in range(n):
            s = np.minimum(V[i], V[j]).sum()
            jaccard[i, j] = 1 - s / (2 - s)
    final = (1 - lambda_value) * jaccard + lambda_value * original[:num_query]
    return final[:, num_query:]


SETTINGS = [
    (20, 6, 0.3),   # library defaults
    (5, 1, 0.3),    # k2 = 1: no query expansion; k1/2 = 2.5 rounds to 2
    (7, 3, 0.5),    # k1/2 = 3.5 rounds to 4
    (4, 2, 0.0),    # pure Jaccard
    (3, 4, 1.0),    # pure original distance
    (10, 10, 0.7),
    (60, 80, 0.3),  # k1, k2 beyond the 52 points: every neighbourhood is everything
]


@pytest.mark.parametrize("k1,k2,lambda_value", SETTINGS)
def test_matches_loop_reference_on_random_features(k1, k2, lambda_value):
    rng = np.random.default_rng(k1 * 100 + k2)
    query = rng.standard_normal((12, 16))
    gallery = rng.standard_normal((40, 16))
    expected = loop_re_ranking(query, gallery, k1, k2, lambda_value)
    got = re_ranking(torch.from_numpy(query), torch.from_numpy(gallery), k1, k2, lambda_value)
    assert got.shape == (12, 40) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_bytes", [1, 50_000, reranking.CHUNK_BYTES])
def test_clustered_features_match_loop_reference_and_chunking_is_invisible(chunk_bytes, monkeypatch):
    # clustered data makes large reciprocal sets and real expansions (the random case has few); the chunk
    # budget gives 1 query per chunk, a few, and all at once
    monkeypatch.setattr(reranking, "CHUNK_BYTES", chunk_bytes)
    query, gallery, _, _ = clustered_case()
    expected = loop_re_ranking(query, gallery, 6, 3, 0.3)
    got = re_ranking(torch.from_numpy(query), torch.from_numpy(gallery), 6, 3, 0.3)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


def test_too_many_images_are_refused_before_any_allocation():
    n = 2 * math.isqrt(reranking.available_memory(torch.device("cpu")) // reranking.RERANK_BYTES_PER_PAIR)
    query, gallery = torch.zeros(n // 2, 1).expand(-1, 4), torch.zeros(n - n // 2, 1).expand(-1, 4)
    with pytest.raises(ShipReIDError, match=rf"TEST.RE_RANKING on {n} images needs about .* GiB"):
        re_ranking(query, gallery)


def test_float32_input_gives_float32_output_close_to_reference():
    rng = np.random.default_rng(5)
    query = rng.standard_normal((12, 16)).astype(np.float32)
    gallery = rng.standard_normal((40, 16)).astype(np.float32)
    expected = loop_re_ranking(query, gallery, 20, 6, 0.3)
    got = re_ranking(torch.from_numpy(query), torch.from_numpy(gallery))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


def test_lambda_one_is_row_scaled_original_distance():
    # final = original / row max (over query+gallery) when lambda = 1; hand case in 1-D:
    # q = [0], gallery = [1], [3]; all points 0, 1, 3 -> row of q: [0, 1, 9], max 9 -> gallery columns 1/9, 9/9
    q = torch.tensor([[0.0]], dtype=torch.float64)
    g = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    got = re_ranking(q, g, k1=1, k2=1, lambda_value=1.0)
    assert torch.allclose(got, torch.tensor([[1 / 9, 1.0]], dtype=torch.float64), atol=1e-12)


def clustered_case():
    """Identities are tight clusters spread out along a chain (a manifold); each query sits at one end of
    its chain, next to a compact cluster of distractors. Plain Euclidean ranks the distractors before the
    far end of the chain; the k-reciprocal neighbourhoods follow the chain instead."""
    rng = np.random.default_rng(0)
    dim, per_chain, num_ids = 16, 8, 4
    gallery, g_pids, query, q_pids = [], [], [], []
    for pid in range(num_ids):
        origin = np.zeros(dim)
        origin[pid] = 20.0                      # identities far apart
        direction = np.zeros(dim)
        direction[num_ids + pid] = 1.0           # the chain runs along its own axis
        side = np.zeros(dim)
        side[2 * num_ids + pid] = 1.0            # distractors off to the side of the chain's start
        for step in range(per_chain):
            gallery.append(origin + direction * 0.5 * (step + 1) + rng.normal(0, 0.05, dim))
            g_pids.append(pid)
        for _ in range(per_chain):
            gallery.append(origin + side * 1.2 + rng.normal(0, 0.05, dim))
            g_pids.append(-1)
        query.append(origin + rng.normal(0, 0.05, dim))
        q_pids.append(pid)
    return np.array(query), np.array(gallery), q_pids, g_pids


def test_re_ranking_improves_map_on_clustered_case():
    query, gallery, q_pids, g_pids = clustered_case()
    q, g = torch.from_numpy(query), torch.from_numpy(gallery)
    plain = evaluate_ranking(squared_euclidean(q, g), q_pids, g_pids)
    reranked = evaluate_ranking(re_ranking(q, g, k1=6, k2=3, lambda_value=0.3), q_pids, g_pids)
    assert plain["num_valid_query"] == reranked["num_valid_query"] == 4
    # Euclidean (squared): chain steps at 0.25, 1, 2.25, 4, ... 16; the 8 distractors at 1.2^2 = 1.44 (noise
    # adds ~0.08 to all), so the order is step1, step2, 8 distractors, steps 3..8 -> positive ranks
    # 1, 2, 11, 12, 13, 14, 15, 16: AP = (1 + 1 + 3/11 + 4/12 + 5/13 + 6/14 + 7/15 + 8/16) / 8, INP = 8/16
    ap = (1 + 1 + 3 / 11 + 4 / 12 + 5 / 13 + 6 / 14 + 7 / 15 + 8 / 16) / 8  # = 0.54824
    assert plain["mAP"] == pytest.approx(ap, abs=1e-12)
    assert plain["mINP"] == pytest.approx(0.5, abs=1e-12)
    # re-ranked: the whole chain comes before the distractors for every query
    assert reranked["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert reranked["mINP"] == pytest.approx(1.0, abs=1e-12)
    assert reranked["R1"] == 1.0
