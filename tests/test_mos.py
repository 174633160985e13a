"""MOS: class-wise modality alignment (CMAL) on constructed cases, and its place in the recipe."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from configs.loader import load_config
from loss.alignment import classwise_alignment_loss
from loss.build import build_loss
from processor.results import metrics_of, read_results


def test_cmal_is_zero_for_identical_modality_statistics():
    labels = torch.tensor([3, 3, 3, 3, 8, 8])
    modality = torch.tensor([0, 0, 1, 1, 0, 1])
    a, b, c = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]), torch.tensor([0.6, 0.8, 0])
    feats = torch.stack([a, b, b, a, c, 4 * c])      # same set per modality; scale removed by normalisation
    assert float(classwise_alignment_loss(feats, labels, modality)) == pytest.approx(0.0, abs=1e-7)
    assert float(classwise_alignment_loss(feats, labels, modality, squared=True)) == pytest.approx(0.0, abs=1e-7)


def test_cmal_on_a_constructed_case():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    modality = torch.tensor([0, 0, 1, 0, 1, 1])
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    # identity 0: optical unit vectors e1, e2 -> mean (.5, .5), variance (.25, .25);
    #             SAR (1, 1)/sqrt2 -> mean (s, s) with s = 1/sqrt2, variance 0
    s = 1 / math.sqrt(2)
    mean_gap0, var_gap0 = math.sqrt(2) * (s - 0.5), math.sqrt(2) * 0.25
    # identity 1: optical e1, SAR e2 -> |e1 - e2| = sqrt2, both variances 0; identity 2 has no optical image
    mean_gap1, var_gap1 = math.sqrt(2), 0.0
    expected = (mean_gap0 + mean_gap1) / 2 + (var_gap0 + var_gap1) / 2
    assert float(classwise_alignment_loss(feats, labels, modality)) == pytest.approx(expected, rel=1e-6)
    squared = (mean_gap0 ** 2 + mean_gap1 ** 2) / 2 + (var_gap0 ** 2 + var_gap1 ** 2) / 2
    assert float(classwise_alignment_loss(feats, labels, modality, squared=True)) == pytest.approx(squared, rel=1e-6)
    # no identity with both modalities: zero (and still part of the graph)
    assert float(classwise_alignment_loss(feats, labels, torch.zeros(6, dtype=torch.long))) == 0.0


def test_cmal_gradient_is_finite_when_both_variances_are_zero():
    # one optical and one SAR image per identity: both variances are 0, a sqrt would give a NaN gradient
    feats = torch.randn(4, 5, requires_grad=True)
    loss = classwise_alignment_loss(feats, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_cmal_pulls_the_modalities_together():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(4)
    modality = torch.tensor([0, 0, 1, 1] * 4)
    feats = (torch.randn(16, 8) + 2.0 * modality.unsqueeze(1)).requires_grad_(True)
    optimiser = torch.optim.Adam([feats], lr=0.05)
    start = float(classwise_alignment_loss(feats.detach(), labels, modality))
    for _ in range(200):
        optimiser.zero_grad()
        classwise_alignment_loss(feats, labels, modality).backward()
        optimiser.step()
    assert float(classwise_alignment_loss(feats.detach(), labels, modality)) < 0.2 * start
    unit = F.normalize(feats.detach(), dim=1)
    gap = (unit[modality == 0].mean(0) - unit[modality == 1].mean(0)).norm()
    assert gap < 0.3


def test_mos_recipe():
    cfg = load_config("configs/hoss/mos.yml")
    assert cfg.INPUT.SAR_RADIOMETRY == "percentile" and list(cfg.INPUT.SAR_PERCENTILES) == [5.0, 100.0]
    composer = build_loss(cfg)
    assert composer.weights == {"id": 1.0, "triplet": 1.0, "cmal": 2.0}
    assert cfg.SOLVER.MAX_EPOCHS == 100 and cfg.LOSS.CMAL_SQUARED is False


def test_mos_fine_tune_on_real_chips_keeps_last_and_best_epoch_then_test_py(hoss_root, tmp_path):
    import test as test_entry
    import train as train_entry
    from conftest import TINY_MODEL
    run = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
           "SOLVER.AMP", "off", "SOLVER.LOG_PERIOD", "5", "MODEL.PRETRAIN_PATH", "", "DATASETS.ROOT_DIR", hoss_root]
    out = tmp_path / "mos"
    trainer = train_entry.main(["--config_file", "configs/hoss/mos.yml", "OUTPUT_DIR", str(out),
                                "SOLVER.MAX_EPOCHS", "2", *run])
    assert set(trainer.last_losses) == {"id", "triplet", "cmal", "total"}
    # the recipe evaluates every epoch: results.json is the last epoch, results_best.json the best on test
    last, best = read_results(out / "results.json"), read_results(out / "results_best.json")
    assert (last["epoch"], last["selected_by"], best["selected_by"]) == (2, "last epoch", "test ALL/mAP")
    assert best["epoch"] in (1, 2) and metrics_of(best)["ALL"]["mAP"] >= metrics_of(last)["ALL"]["mAP"]
    if best["epoch"] == 2:
        assert metrics_of(best)["ALL"] == metrics_of(last)["ALL"]
    assert (out / "model_best.pth").is_file()
    total = sum(w * float(trainer.last_losses[t]) for t, w in zip(("id", "triplet", "cmal"), (1.0, 1.0, 2.0)))
    assert float(trainer.last_losses["total"]) == pytest.approx(total, rel=1e-6)
    results = test_entry.main(["--config_file", "configs/hoss/mos.yml", "TEST.WEIGHT", str(out / "model_final.pth"),
                               "OUTPUT_DIR", str(tmp_path / "test"), *run])
    assert all(0.0 < results[p]["mAP"] <= 1.0 for p in ("ALL", "O2S", "S2O"))
