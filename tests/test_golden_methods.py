"""SDF-Net and MOS training losses against the official code on its fixed batch (golden README): the
training-mode outputs within 1e-4 and every loss term within 1e-5 relative."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import TINY_MODEL

from configs.loader import load_config
from loss.build import build_loss
from model.build import build_model
from model.weights import load_weights

NO_DROP = ["MODEL.DROP_PATH", "0.0", "MODEL.DROP_OUT", "0.0", "MODEL.ATT_DROP_RATE", "0.0"]
CASES = {
    # method: (recipe, overrides, {our output: golden output}, {our loss term: golden loss term})
    "sdfnet": ("configs/hoss/sdfnet.yml", ["MODEL.SDF.STRUCT_LAYER", "1"],
               {"feat_shared": "f_sh", "feat_specific": "f_sp", "structure": "f_struct", "feat": "feat_fuse",
                "feat_bn": "feat_fuse_bn", "logits": "logits"},
               {"id": "id_ce", "triplet": "triplet", "orth": "orth", "struct": "struct"}),
    "mos": ("configs/hoss/mos.yml", [],
            {"feat": "feat", "feat_bn": "feat_bn", "logits": "logits"},
            {"id": "id_ce", "triplet": "triplet", "cmal": "cmal"}),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_fixed_batch_outputs_and_losses_match_the_official_code(golden_dir, method):
    recipe, overrides, output_names, loss_names = CASES[method]
    golden = os.path.join(golden_dir, f"{method}_tiny")
    reference = torch.load(os.path.join(golden, "fixed_batch.pt"), weights_only=True)
    cfg = load_config(recipe, [*TINY_MODEL, *NO_DROP, *overrides])
    model = build_model(cfg, num_classes=reference["outputs"]["logits"].shape[1])
    load_weights(model, os.path.join(golden, f"{method}_tiny_official_format.pth"))
    model.train()
    batch = {"image": reference["images"], "modality": reference["camids"].long(),
             "size": reference["img_wh"].float(), "label": reference["pids"].long()}
    outputs = model(batch)
    for ours, theirs in output_names.items():
        torch.testing.assert_close(outputs[ours], reference["outputs"][theirs], atol=1e-4, rtol=0)

    losses = build_loss(cfg)(outputs, batch)
    assert set(losses) == set(loss_names) | {"total"}
    for ours, theirs in loss_names.items():
        expected = float(reference["losses"][theirs])
        assert float(losses[ours]) == pytest.approx(expected, rel=1e-5), ours
        assert cfg.LOSS.WEIGHTS[list(cfg.LOSS.TERMS).index(ours)] == float(reference["weights"][theirs])
    assert float(losses["total"]) == pytest.approx(float(reference["losses"]["total"]), rel=1e-5)
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
