"""utils.metrics: mAP / CMC / mINP on hand-computed distance matrices, squared Euclidean distances, and
the chunked vectorised evaluation against a plain per-query loop (the classic Market-1501 evaluation)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import utils.metrics as metrics_module
from utils.metrics import RankingMetrics, evaluate_features, evaluate_ranking, squared_euclidean

# --------------------------------------------------------------------------------------------------------
# Hand-computed case: ties broken by gallery order, distractors (pid -1), several positives per query,
# a query with no positive in the gallery.
# --------------------------------------------------------------------------------------------------------
#                g0  g1  g2  g3  g4  g5  g6  g7
G_PIDS = [3, -1, 3, 5, -1, 3, 5, 8]
DIST = torch.tensor([
    # q0, pid 3 (positives g0, g2, g5).
    #   stable ascending order: g7(.05) g4(.1) g3(.2) g6(.3) | g0(.4) g1(.4) g2(.4) | g5(.9)
    #   the tie group at 0.4 keeps gallery order g0, g1 (a distractor), g2 -> positives at ranks 5, 7, 8
    #   AP  = (1/5 + 2/7 + 3/8) / 3 = (56 + 80 + 105) / 280 / 3 = 241/840
    #   INP = 3/8;  first positive at rank 5 -> R1 miss, R5 hit, R10 hit
    [0.4, 0.4, 0.4, 0.2, 0.1, 0.9, 0.3, 0.05],
    # q1, pid 42: nothing in the gallery -> skipped, counted in num_skipped_query
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    # q2, pid 5 (positives g3, g6).
    #   all at 0.5 except g3 at 0.6: order g0 g1 g2 g4 g5 g6 g7 | g3 -> positives at ranks 6 (g6) and 8 (g3)
    #   AP  = (1/6 + 2/8) / 2 = (5/12) / 2 = 5/24
    #   INP = 2/8 = 1/4;  first positive at rank 6 -> R1 miss, R5 miss, R10 hit
    [0.5, 0.5, 0.5, 0.6, 0.5, 0.5, 0.5, 0.5],
    # q3, pid 8 (positive g7 only), nearest -> rank 1: AP = 1, INP = 1, R1 = R5 = R10 = hit
    [0.3, 0.2, 0.6, 0.7, 0.8, 0.9, 1.0, 0.0],
])
Q_PIDS = [3, 42, 5, 8]
# mAP  = (241/840 + 5/24 + 1) / 3 = (241 + 175 + 840) / 840 / 3 = 1256/2520 = 157/315
# mINP = (3/8 + 1/4 + 1) / 3 = (13/8) / 3 = 13/24
# R1 = 1/3 (only q3), R5 = 2/3 (q0, q3), R10 = 3/3
EXPECTED = {"mAP": Fraction(157, 315), "mINP": Fraction(13, 24), "R1": Fraction(1, 3), "R5": Fraction(2, 3),
            "R10": Fraction(1, 1)}


def test_hand_computed_ties_distractors_multiple_positives_and_skipped_query():
    m = evaluate_ranking(DIST, Q_PIDS, G_PIDS)
    for key, value in EXPECTED.items():
        assert m[key] == pytest.approx(float(value), abs=1e-12), key
    assert m["num_valid_query"] == 3
    assert m["num_skipped_query"] == 1


def test_each_hand_computed_query_alone():
    per_query = {
        0: (Fraction(241, 840), Fraction(3, 8), (0, 1, 1)),
        2: (Fraction(5, 24), Fraction(1, 4), (0, 0, 1)),
        3: (Fraction(1), Fraction(1), (1, 1, 1)),
    }
    for i, (ap, inp, (r1, r5, r10)) in per_query.items():
        m = evaluate_ranking(DIST[i:i + 1], [Q_PIDS[i]], G_PIDS)
        assert m["mAP"] == pytest.approx(float(ap), abs=1e-12)
        assert m["mINP"] == pytest.approx(float(inp), abs=1e-12)
        assert (m["R1"], m["R5"], m["R10"]) == (r1, r5, r10)
        assert (m["num_valid_query"], m["num_skipped_query"]) == (1, 0)


def test_tie_order_is_gallery_order_not_reversed():
    # Same distances for a negative and a positive: whichever comes first in the gallery ranks first.
    # positive first: rank 1 -> AP 1; positive second: rank 2 -> AP 1/2
    assert evaluate_ranking(torch.tensor([[0.3, 0.3]]), [1], [1, 2])["mAP"] == 1.0
    assert evaluate_ranking(torch.tensor([[0.3, 0.3]]), [1], [2, 1])["mAP"] == 0.5
    # three positives tied with three negatives, interleaved N P N P P N:
    # ranks 2, 4, 5 -> AP = (1/2 + 2/4 + 3/5)/3 = 1.6/3 = 8/15, INP = 3/5
    m = evaluate_ranking(torch.full((1, 6), 0.7), [4], [9, 4, 9, 4, 4, 9])
    assert m["mAP"] == pytest.approx(8 / 15, abs=1e-12)
    assert m["mINP"] == pytest.approx(3 / 5, abs=1e-12)


def test_positive_beyond_rank_10_and_custom_ranks():
    # 12 gallery items at increasing distance, the only positive last: rank 12
    # AP = 1/12, INP = 1/12, R1 = R5 = R10 = 0; with ranks (1, 12): R12 = 1
    dist = torch.arange(12, dtype=torch.float32).unsqueeze(0)
    g_pids = [2] * 11 + [1]
    m = evaluate_ranking(dist, [1], g_pids)
    assert m["mAP"] == pytest.approx(1 / 12, abs=1e-12) and m["mINP"] == pytest.approx(1 / 12, abs=1e-12)
    assert (m["R1"], m["R5"], m["R10"]) == (0.0, 0.0, 0.0)
    m = evaluate_ranking(dist, [1], g_pids, ranks=(1, 12))
    assert (m["R1"], m["R12"]) == (0.0, 1.0) and "R5" not in m


def test_distractor_query_pid_is_not_special_for_the_gallery():
    # Distractors never match a real identity: a pid-3 query whose only gallery items are distractors is skipped.
    m = evaluate_ranking(torch.tensor([[0.1, 0.2]]), [3], [-1, -1])
    assert m["num_valid_query"] == 0 and m["num_skipped_query"] == 1
    assert m["mAP"] == 0.0 and m["R1"] == 0.0 and m["mINP"] == 0.0


def test_all_queries_skipped_gives_zeros():
    m = evaluate_ranking(torch.rand(3, 5), [10, 11, 12], [1, 2, 3, 4, 5])
    assert m == {"mAP": 0.0, "R1": 0.0, "R5": 0.0, "R10": 0.0, "mINP": 0.0, "num_valid_query": 0,
                 "num_skipped_query": 3}


def test_negative_zero_ties_with_positive_zero():
    # g0 (negative) at +0.0, g1 (positive) at -0.0: equal distances -> gallery order -> positive at rank 2, AP 1/2
    # (torch.sort(stable=True) / np.argsort(kind="stable") both give order [0, 1]).
    # Arises e.g. with dist = -similarity when a similarity is exactly 0.
    dist = torch.tensor([[0.0, -0.0]])
    assert torch.sort(dist, stable=True).indices.tolist() == [[0, 1]]
    assert evaluate_ranking(dist, [1], [2, 1])["mAP"] == 0.5


# --------------------------------------------------------------------------------------------------------
# squared_euclidean
# --------------------------------------------------------------------------------------------------------
def test_squared_euclidean_hand_computed():
    q = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    g = torch.tensor([[3.0, 4.0], [1.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    # (0,0)-(3,4): 9+16=25; (0,0)-(1,2): 1+4=5; (0,0)-(-1,0): 1
    # (1,2)-(3,4): 4+4=8;   (1,2)-(1,2): 0;     (1,2)-(-1,0): 4+4=8
    expected = torch.tensor([[25.0, 5.0, 1.0], [8.0, 0.0, 8.0]], dtype=torch.float64)
    assert torch.allclose(squared_euclidean(q, g), expected, atol=1e-12)


def test_squared_euclidean_matches_direct_difference():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(7, 13, generator=gen, dtype=torch.float64)
    g = torch.randn(11, 13, generator=gen, dtype=torch.float64)
    direct = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    assert torch.allclose(squared_euclidean(q, g), direct, atol=1e-10)
    # unit vectors: 2 - 2 cos
    qn, gn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    assert torch.allclose(squared_euclidean(qn, gn), 2 - 2 * qn @ gn.t(), atol=1e-12)
    # float32 too, looser tolerance
    assert torch.allclose(squared_euclidean(q.float(), g.float()), direct.float(), atol=1e-4)


# --------------------------------------------------------------------------------------------------------
# Vectorised + chunked evaluation vs a plain per-query loop
# --------------------------------------------------------------------------------------------------------
def loop_reference(dist: np.ndarray, q_pids, g_pids, max_rank: int = 10) -> dict:
    """Classic Market-1501 evaluation, one query at a time: stable argsort, AP = mean precision at each hit."""
    dist = np.asarray(dist, dtype=np.float32)  # the library compares distances in float32
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    aps, inps, cmcs = [], [], []
    for i in range(len(dist)):
        order = np.argsort(dist[i], kind="stable")
        matches = (g_pids[order] == q_pids[i]).astype(np.int64)
        if not matches.any():
            continue
        cmc = matches.cumsum()
        cmc[cmc > 1] = 1
        cmcs.append(cmc[:max_rank])
        num_rel = matches.sum()
        precision = matches.cumsum() / np.arange(1, len(matches) + 1)
        aps.append((precision * matches).sum() / num_rel)
        last = np.nonzero(matches)[0].max() + 1
        inps.append(num_rel / last)
    cmc = np.mean(cmcs, axis=0)
    return {"mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)), "R1": float(cmc[0]), "R5": float(cmc[4]),
            "R10": float(cmc[9]), "num_valid_query": len(aps), "num_skipped_query": len(dist) - len(aps)}


def random_case(seed: int, num_query=50, num_gallery=200, integer_dist=False):
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, 25, num_gallery)
    g_pids[rng.random(num_gallery) < 0.2] = -1  # distractors
    q_pids = rng.integers(0, 30, num_query)      # pids 25..29 never in the gallery -> skipped
    if integer_dist:
        # heavy ties, and negative values (the float32 key must mirror the sign)
        dist = rng.integers(-3, 4, (num_query, num_gallery)).astype(np.float32)
    else:
        dist = rng.random((num_query, num_gallery)).astype(np.float32) * 4 - 1
    return dist, q_pids, g_pids


def assert_same(m: dict, ref: dict):
    for key in ("mAP", "mINP", "R1", "R5", "R10"):
        assert m[key] == pytest.approx(ref[key], abs=1e-12), key
    assert m["num_valid_query"] == ref["num_valid_query"]
    assert m["num_skipped_query"] == ref["num_skipped_query"]


@pytest.mark.parametrize("integer_dist", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunking_matches_per_query_loop(monkeypatch, seed, integer_dist):
    dist, q_pids, g_pids = random_case(seed, integer_dist=integer_dist)
    ref = loop_reference(dist, q_pids, g_pids)
    assert ref["num_skipped_query"] > 0 and ref["num_valid_query"] > 0  # the case exercises both paths
    # _chunk_size(200) = max(1, CHUNK_ENTRIES // 200): 1 -> one query per chunk, 1024*200 -> one chunk
    results = {}
    for chunk in (1, 1024):
        monkeypatch.setattr(metrics_module, "CHUNK_ENTRIES", chunk * dist.shape[1])
        assert metrics_module._chunk_size(dist.shape[1]) == chunk
        results[chunk] = evaluate_ranking(torch.from_numpy(dist), q_pids.tolist(), g_pids.tolist())
        assert_same(results[chunk], ref)
    assert results[1].keys() == results[1024].keys()
    for key in results[1]:
        assert results[1][key] == pytest.approx(results[1024][key], abs=1e-12), key


def test_ranking_metrics_accumulated_by_hand_over_uneven_chunks():
    dist, q_pids, g_pids = random_case(7, num_query=37, num_gallery=90, integer_dist=True)
    ref = loop_reference(dist, q_pids, g_pids)
    acc = RankingMetrics(torch.as_tensor(g_pids))
    for start, end in ((0, 1), (1, 14), (14, 15), (15, 37)):
        acc.add(torch.from_numpy(dist[start:end]), torch.as_tensor(q_pids[start:end]))
    assert_same(acc.result(), ref)


def test_evaluate_features_matches_loop_on_squared_euclidean(monkeypatch):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((50, 8)).astype(np.float32)
    g = rng.standard_normal((200, 8)).astype(np.float32)
    _, q_pids, g_pids = random_case(3)
    dist = squared_euclidean(torch.from_numpy(q), torch.from_numpy(g))
    ref = loop_reference(dist.numpy(), q_pids, g_pids)
    for chunk in (1, 1024):
        monkeypatch.setattr(metrics_module, "CHUNK_ENTRIES", chunk * g.shape[0])
        assert_same(evaluate_features(torch.from_numpy(q), torch.from_numpy(g), q_pids, g_pids), ref)


def test_float64_distances_are_compared_in_float32():
    # 1.0 and 1.0 + 1e-12 are the same float32: a tie -> gallery order -> the negative g0 first, positive rank 2
    dist = torch.tensor([[1.0 + 1e-12, 1.0]], dtype=torch.float64)
    assert evaluate_ranking(dist, [1], [2, 1])["mAP"] == 0.5
    # clearly different in float32: the positive is nearer -> rank 1
    dist = torch.tensor([[1.001, 1.0]], dtype=torch.float64)
    assert evaluate_ranking(dist, [1], [2, 1])["mAP"] == 1.0
