"""Loss terms against hand-computed values: batch-hard triplet, identity CE, symmetric InfoNCE, composer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import configs
from loss.build import LossComposer, build_loss
from loss.infonce import SymmetricInfoNCE
from loss.terms import IdentityLoss
from loss.triplet import batch_hard_triplet, euclidean_distances, hardest_pairs
from utils.errors import ShipReIDError

# 4 points on a line, identities [0, 0, 1, 1]: x = 0, 1 | 3, 6
#   distances: d(0,1)=1 d(0,3)=3 d(0,6)=6 d(1,3)=2 d(1,6)=5 d(3,6)=3
#   anchor x=0: farthest positive 1 (x=1), nearest negative 3 (x=3)
#   anchor x=1: d_ap 1, negatives 2, 5 -> 2
#   anchor x=3: d_ap 3 (x=6), negatives 3, 2 -> 2
#   anchor x=6: d_ap 3, negatives 6, 5 -> 5
LINE = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
LINE_LABELS = torch.tensor([0, 0, 1, 1])
D_AP = [1.0, 1.0, 3.0, 3.0]
D_AN = [3.0, 2.0, 2.0, 5.0]


def test_euclidean_distances_and_hardest_pairs_on_a_line():
    dist = euclidean_distances(LINE)
    expected = torch.tensor([[0, 1, 3, 6], [1, 0, 2, 5], [3, 2, 0, 3], [6, 5, 3, 0]], dtype=torch.float32)
    off_diag = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(dist[off_diag], expected[off_diag], atol=1e-5)
    # the diagonal is the floored sqrt(1e-12) = 1e-6, not 0
    assert torch.allclose(dist.diagonal(), torch.full((4,), 1e-6), atol=1e-7)
    d_ap, d_an = hardest_pairs(dist, LINE_LABELS)
    assert torch.allclose(d_ap, torch.tensor(D_AP), atol=1e-5)
    assert torch.allclose(d_an, torch.tensor(D_AN), atol=1e-5)


def test_hardest_pairs_pick_farthest_positive_and_nearest_negative():
    # an asymmetric hand-made matrix: row = anchor; labels [a, b, a, b, c]
    dist = torch.tensor([
        [0.0, 7.0, 4.0, 2.0, 9.0],   # positives {0: 0, 2: 4} -> 4; negatives {7, 2, 9} -> 2
        [5.0, 0.0, 1.0, 8.0, 3.0],   # positives {0, 8} -> 8; negatives {5, 1, 3} -> 1
        [6.0, 2.5, 0.5, 1.5, 0.7],   # positives {6, 0.5} -> 6; negatives {2.5, 1.5, 0.7} -> 0.7
        [4.0, 3.0, 9.0, 0.0, 8.5],   # positives {3, 0} -> 3; negatives {4, 9, 8.5} -> 4
        [1.0, 2.0, 3.0, 4.0, 0.2],   # only itself: positive 0.2; negatives -> 1
    ])
    labels = torch.tensor([0, 1, 0, 1, 2])
    d_ap, d_an = hardest_pairs(dist, labels)
    assert d_ap.tolist() == [4.0, 8.0, 6.0, 3.0, pytest.approx(0.2)]
    assert d_an.tolist() == [2.0, 1.0, pytest.approx(0.7), 4.0, 1.0]


def test_batch_hard_triplet_soft_margin_by_hand():
    # d_ap - d_an = [-2, -1, 1, -2]; softplus = log(1 + exp(.)):
    #   log(1+e^-2) = 0.126928, log(1+e^-1) = 0.313262, log(1+e^1) = 1.313262
    #   mean = (0.126928 + 0.313262 + 1.313262 + 0.126928) / 4 = 0.470095
    expected = sum(math.log1p(math.exp(a - n)) for a, n in zip(D_AP, D_AN)) / 4
    assert expected == pytest.approx(0.470095, abs=1e-6)
    loss = batch_hard_triplet(LINE, LINE_LABELS)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_batch_hard_triplet_margin_by_hand():
    # relu(d_ap - d_an + 0.3) = relu([-1.7, -0.7, 1.3, -1.7]) = [0, 0, 1.3, 0]; mean = 0.325
    loss = batch_hard_triplet(LINE, LINE_LABELS, margin=0.3)
    assert loss.item() == pytest.approx(0.325, abs=1e-5)
    # a 2-D set, invariant to translation: shifting every point leaves the loss unchanged
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # distances: d01=5 d02=1 d03=10 d12=sqrt(9+9)=4.2426 d13=5 d23=sqrt(36+49)=9.2195
    # anchors: 0: ap 5, an min(1, 10)=1 -> 4.3; 1: ap 5, an min(4.2426, 5)=4.2426 -> 1.0574
    #          2: ap 9.2195, an min(1, 4.2426)=1 -> 8.5195; 3: ap 9.2195, an min(10, 5)=5 -> 4.5195
    expected = (4.3 + (5 - math.sqrt(18) + 0.3) + (math.sqrt(85) - 1 + 0.3) + (math.sqrt(85) - 5 + 0.3)) / 4
    assert batch_hard_triplet(feats, labels, margin=0.3).item() == pytest.approx(expected, abs=1e-4)
    assert batch_hard_triplet(feats + 10, labels, margin=0.3).item() == pytest.approx(expected, abs=1e-3)


def test_batch_hard_triplet_gradient_is_finite_with_duplicate_points():
    # up-sampled identities put identical images (identical features) in a batch: distance 0 -> floored
    feats = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0], [4.0, 6.0]], requires_grad=True)
    loss = batch_hard_triplet(feats, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    # d_ap = 1e-6 for every anchor, d_an = 5 -> softplus(-5) = log(1 + e^-5) = 0.0067153
    assert loss.item() == pytest.approx(math.log1p(math.exp(-5)), abs=1e-5)


def test_a_triplet_batch_of_one_identity_is_refused_at_start_up():
    """The step reads nothing back from the device; one identity per batch (no negative) is refused by the
    configuration check instead."""
    from configs.checks import config_problems
    problems = config_problems(configs.load_config(None, ["SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCE", "4"]))
    assert problems == ["the triplet loss needs two identities per batch: SOLVER.IMS_PER_BATCH 4 holds 1 of "
                        "DATALOADER.NUM_INSTANCE 4 images; use at least 8"]
    assert not config_problems(configs.load_config(None, ["SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "4"]))
    assert batch_hard_triplet(LINE, torch.zeros(4, dtype=torch.long)).item() == 0.0  # d_an = inf


def smooth_cfg(eps: float):
    return configs.load_config(None, ["LOSS.LABEL_SMOOTH", str(eps)])


def test_identity_loss_with_label_smoothing_by_hand():
    # logits [ln 2, 0, 0] -> p = [1/2, 1/4, 1/4]
    #   label 0: CE = ln 2 = 0.693147; label 2: CE = ln 4 = 1.386294
    #   mean_k(-log p_k) = (ln 2 + 2 ln 4) / 3 = 1.155245
    #   smoothed = 0.9 CE + 0.1 * 1.155245 -> 0.739357 and 1.363189; batch mean = 1.051273
    logits = torch.tensor([[math.log(2), 0.0, 0.0], [math.log(2), 0.0, 0.0]])
    batch = {"label": torch.tensor([0, 2])}
    smoothed = IdentityLoss(smooth_cfg(0.1))({"logits": logits}, batch)
    assert smoothed.item() == pytest.approx(1.051273, abs=1e-5)
    plain = IdentityLoss(smooth_cfg(0.0))({"logits": logits}, batch)
    assert plain.item() == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)
    # the general formula (1 - eps) * CE + eps * mean(-log p) on random logits
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    log_p = logits.log_softmax(1)
    formula = 0.9 * F.nll_loss(log_p, labels) + 0.1 * (-log_p).mean(1).mean()
    value = IdentityLoss(smooth_cfg(0.1))({"logits": logits}, {"label": labels})
    assert value.item() == pytest.approx(formula.item(), abs=1e-6)


# 2 pairs: optical o1 = [2, 0] -> [1, 0], o2 = [0, 1]; SAR s1 = [1, 0], s2 = [3, 3] -> [c, c], c = 1/sqrt 2
OPTICAL = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
SARF = torch.tensor([[1.0, 0.0], [3.0, 3.0]])


def infonce_by_hand(t: float) -> float:
    """L = t [[1, 0], [c, c]] (rows SAR, columns optical), targets diagonal.

    rows:    -log softmax([t, 0])[0] = log(1 + e^-t);   -log softmax([tc, tc])[1] = log 2
    columns: L^T = t [[1, c], [0, c]]: log(1 + e^{t(c - 1)});   log(1 + e^{-tc})
    L = (mean(rows) + mean(columns)) / 2
    """
    c = 1 / math.sqrt(2)
    rows = (math.log1p(math.exp(-t)) + math.log(2)) / 2
    cols = (math.log1p(math.exp(t * (c - 1))) + math.log1p(math.exp(-t * c))) / 2
    return (rows + cols) / 2


def test_symmetric_infonce_by_hand():
    loss_fn = SymmetricInfoNCE(temperature=0.07)
    assert loss_fn.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    # t = 14.2857: rows (6.2e-7 + 0.693147) / 2, columns (0.015121 + 4.1e-5) / 2 -> L = 0.177078
    expected = infonce_by_hand(1 / 0.07)
    assert expected == pytest.approx(0.17708, abs=1e-4)
    assert loss_fn(OPTICAL, SARF).item() == pytest.approx(expected, abs=1e-5)


def test_symmetric_infonce_scale_is_clamped():
    loss_fn = SymmetricInfoNCE(temperature=0.07, max_scale=100.0)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1000.0))  # above the cap: effective scale 100
    assert loss_fn(OPTICAL, SARF).item() == pytest.approx(infonce_by_hand(100.0), abs=1e-5)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(-2.0)  # below 0: effective scale exp(0) = 1
    assert loss_fn(OPTICAL, SARF).item() == pytest.approx(infonce_by_hand(1.0), abs=1e-5)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(20.0))  # inside the range: used as is
    assert loss_fn(OPTICAL, SARF).item() == pytest.approx(infonce_by_hand(20.0), abs=1e-5)


def test_symmetric_infonce_unclamped_scale_is_used_as_is():
    """LOSS.INFONCE_MAX_SCALE 0: the official pretraining's unclamped scale, outside CLIP's [1, 100] too."""
    loss_fn = SymmetricInfoNCE(temperature=0.07, max_scale=0.0)
    for scale in (1000.0, math.exp(-2.0), 20.0):
        with torch.no_grad():
            loss_fn.logit_scale.fill_(math.log(scale))
        assert loss_fn(OPTICAL, SARF).item() == pytest.approx(infonce_by_hand(scale), abs=1e-5), scale


def test_symmetric_infonce_temperature_gets_a_gradient():
    loss_fn = SymmetricInfoNCE(temperature=0.07)
    loss_fn(OPTICAL, SARF).backward()
    grad = loss_fn.logit_scale.grad
    assert grad is not None
    # dL/d(log t) = t dL/dt, by central difference of the hand formula
    t, h = 1 / 0.07, 1e-4
    expected = t * (infonce_by_hand(t + h) - infonce_by_hand(t - h)) / (2 * h)
    assert expected != 0
    assert grad.item() == pytest.approx(expected, rel=1e-3, abs=1e-6)


def composer_cfg(*opts):
    return configs.load_config(None, ["LOSS.TERMS", "['id', 'triplet']", "LOSS.WEIGHTS", "[1.0, 0.5]",
                                      "LOSS.TRIPLET_MARGIN", "0.3", *opts])


def test_build_loss_returns_every_term_and_the_weighted_total():
    loss = build_loss(composer_cfg())
    assert isinstance(loss, LossComposer)
    logits = torch.tensor([[math.log(2), 0.0, 0.0]] * 4)
    outputs = {"logits": logits, "feat": LINE}
    values = loss(outputs, {"label": LINE_LABELS})
    assert set(values) == {"id", "triplet", "total"}
    # id: labels [0, 0, 1, 1] -> CE = [ln 2, ln 2, ln 4, ln 4], mean = 1.5 ln 2 = 1.039721
    # triplet (margin 0.3): 0.325 (see above); total = 1.0 * 1.039721 + 0.5 * 0.325 = 1.202221
    assert values["id"].item() == pytest.approx(1.5 * math.log(2), abs=1e-5)
    assert values["triplet"].item() == pytest.approx(0.325, abs=1e-5)
    assert values["total"].item() == pytest.approx(1.5 * math.log(2) + 0.5 * 0.325, abs=1e-5)


def test_build_loss_zero_weight_keeps_the_term_logged():
    loss = build_loss(configs.load_config(None, ["LOSS.WEIGHTS", "[0.0, 1.0]"]))
    values = loss({"logits": torch.zeros(4, 3), "feat": LINE}, {"label": LINE_LABELS})
    assert values["id"].item() == pytest.approx(math.log(3), abs=1e-6)  # uniform over 3 classes
    assert values["total"].item() == pytest.approx(values["triplet"].item(), abs=1e-6)


def test_build_loss_infonce_holds_the_learnable_scale():
    loss = build_loss(configs.load_config(None, ["LOSS.TERMS", "['infonce']", "LOSS.WEIGHTS", "[1.0]"]))
    names = [n for n, _ in loss.named_parameters()]
    assert names == ["terms.infonce.logit_scale"]
    # the batch is N optical features then their N SAR partners
    values = loss({"feat": torch.cat([OPTICAL, SARF])}, {})
    assert values["infonce"].item() == pytest.approx(infonce_by_hand(1 / 0.07), abs=1e-5)
    assert values["total"].item() == pytest.approx(values["infonce"].item(), abs=1e-7)


def test_build_loss_errors_name_the_keys():
    with pytest.raises(ShipReIDError, match=r"LOSS\.TERMS.*LOSS\.WEIGHTS"):
        build_loss(configs.load_config(None, ["LOSS.WEIGHTS", "[1.0]"]))
    with pytest.raises(ShipReIDError, match=r"LOSS\.TERMS.*'centre'"):
        build_loss(configs.load_config(None, ["LOSS.TERMS", "['id', 'centre']"]))
    with pytest.raises(ShipReIDError, match="twice"):
        build_loss(configs.load_config(None, ["LOSS.TERMS", "['id', 'id']"]))


def test_infonce_is_computed_in_fp32_under_bf16_autocast():
    """Under autocast the logits scale * S O^T would be bf16 (steps of 0.5 at scale 100): the loss and its gradients
    must equal the fp32 ones."""
    torch.manual_seed(0)
    optical, sar = torch.randn(16, 64), torch.randn(16, 64)
    results = []
    for autocast in (False, True):
        loss_fn = SymmetricInfoNCE(temperature=0.01)  # scale 100, where bf16 rounding hurts most
        o, s = optical.clone().requires_grad_(), sar.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(o, s)
        loss.backward()
        assert loss.dtype == torch.float32
        results.append((loss.detach(), o.grad, s.grad, loss_fn.logit_scale.grad))
    (reference, *ref_grads), (ours, *our_grads) = results
    assert ours == pytest.approx(reference.item(), rel=1e-3)
    for ref, got in zip(ref_grads, our_grads):
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
