"""alpha-weighted query expansion (utils/query_expansion.py): a hand-computed case, a loop reference, chunking,
and its effect on retrieval."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils import query_expansion
from utils.errors import ShipReIDError
from utils.metrics import evaluate_features
from utils.query_expansion import average_query_expansion


def loop_reference(feats: np.ndarray, k: int, alpha: float, rounds: int) -> np.ndarray:
    for _ in range(rounds):
        normed = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        out = np.zeros_like(feats)
        for i in range(len(feats)):
            sims = normed @ normed[i]
            nearest = np.argsort(-sims, kind="stable")[:k]
            out[i] = np.mean(feats[nearest] * sims[nearest, None] ** alpha, axis=0)
        feats = out
    return feats


def test_hand_computed_case():
    # q = (1, 0); gallery (0.6, 0.8) and (0, 1); k = 2, alpha = 3. Cosine similarities: q-g1 0.6, q-g2 0,
    # g1-g2 0.8. q: itself (w 1) and g1 (w 0.6^3 = 0.216): ((1, 0) + 0.216 (0.6, 0.8)) / 2 = (0.5648, 0.0864)
    # g1: itself and g2 (w 0.512): ((0.6, 0.8) + 0.512 (0, 1)) / 2 = (0.3, 0.656)
    # g2: itself and g1 (w 0.512): ((0, 1) + 0.512 (0.6, 0.8)) / 2 = (0.1536, 0.7048)
    query, gallery = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    q, g = average_query_expansion(query, gallery, k=2, alpha=3.0)
    torch.testing.assert_close(q, torch.tensor([[0.5648, 0.0864]]))
    torch.testing.assert_close(g, torch.tensor([[0.3, 0.656], [0.1536, 0.7048]]))


@pytest.mark.parametrize("k,alpha,rounds", [(5, 3.0, 1), (1, 3.0, 1), (3, 1.0, 2), (10, 0.0, 1)])
def test_matches_loop_reference_and_chunking_is_invisible(k, alpha, rounds, monkeypatch):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((30, 8)).astype(np.float64)
    expected = loop_reference(feats.copy(), k, alpha, rounds)
    for rows in (1, 7, 1024):
        monkeypatch.setattr(query_expansion, "ROWS_PER_CHUNK", rows)
        q, g = average_query_expansion(torch.from_numpy(feats[:10]), torch.from_numpy(feats[10:]), k, alpha, rounds)
        np.testing.assert_allclose(torch.cat([q, g]).numpy(), expected, atol=1e-12)


def test_expansion_helps_on_clustered_features():
    gen = torch.Generator().manual_seed(3)
    centres = torch.nn.functional.normalize(torch.randn(20, 32, generator=gen), dim=1)
    def draw(ids):  # noqa: E306
        return torch.nn.functional.normalize(centres[ids] + 0.2 * torch.randn(len(ids), 32, generator=gen), dim=1)
    q_ids, g_ids = torch.arange(20), torch.arange(20).repeat_interleave(6)
    query, gallery = draw(q_ids), draw(g_ids)
    before = evaluate_features(query, gallery, q_ids.tolist(), g_ids.tolist())["mAP"]
    q, g = average_query_expansion(query, gallery, k=5, alpha=3.0)
    after = evaluate_features(torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1),
                              q_ids.tolist(), g_ids.tolist())["mAP"]
    assert after > before + 0.05, (before, after)  # measured 0.784 -> 0.898


def test_bad_settings_name_the_key():
    with pytest.raises(ShipReIDError, match="TEST.AQE_K"):
        average_query_expansion(torch.ones(2, 3), torch.ones(2, 3), k=0)


def test_ranked_lists_rank_as_the_metrics_do():
    """The distance matrix behind the ranked-list pictures (AQE on) gives the metrics test.py reports."""
    from configs import load_config
    from processor.evaluator import features_for_ranking, ranking_distances
    from utils.metrics import evaluate_ranking
    test_cfg = load_config(None, ["TEST.AQE", "True", "TEST.AQE_K", "4"]).TEST
    gen = torch.Generator().manual_seed(8)
    query, gallery = torch.randn(15, 16, generator=gen), torch.randn(60, 16, generator=gen)
    q_ids, g_ids = (torch.arange(15) % 5).tolist(), (torch.arange(60) % 5).tolist()
    from_distances = evaluate_ranking(ranking_distances(test_cfg, query, gallery), q_ids, g_ids)
    chunked = evaluate_features(*features_for_ranking(test_cfg, query, gallery), q_ids, g_ids)
    plain = evaluate_features(torch.nn.functional.normalize(query, dim=1),
                              torch.nn.functional.normalize(gallery, dim=1), q_ids, g_ids)
    assert from_distances == chunked and from_distances["mAP"] != plain["mAP"]
