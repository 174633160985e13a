"""Checkpoint conversion: official -> shipreid -> safetensors -> official keeps the features exactly."""
from __future__ import annotations

import os

import torch

from conftest import TINY_MODEL

from configs import load_config
from model import build_model
from model.weights import load_weights, read_state_dict
from tools.convert_checkpoint import convert


def features(path: str) -> torch.Tensor:
    model = build_model(load_config(None, TINY_MODEL)).eval()
    load_weights(model, path, mode="full")
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (4, 3, 256, 128), dtype=torch.uint8, generator=gen),
             "modality": torch.tensor([0, 1, 1, 0]), "size": torch.randn(4, 3, generator=gen)}
    return model.embed(batch)


def test_round_trip_keeps_features(golden_dir, tmp_path):
    official = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    ours = convert(official, str(tmp_path / "ours.pth"), "shipreid")
    safe = convert(ours, str(tmp_path / "ours.safetensors"), "safetensors")
    back = convert(safe, str(tmp_path / "official.pth"), "official")
    reference = features(official)
    for path in (ours, safe, back):
        assert torch.equal(features(path), reference), path
    # the official temperature travels with the weights (train_pair.py resumes with it)
    assert all(k.startswith(("backbone.", "neck.", "classifier.")) or k == "loss.logit_scale"
               for k in read_state_dict(ours))
    assert all(k.startswith(("base.", "bottleneck.", "classifier.")) or k == "logit_scale" for k in read_state_dict(back))
    assert torch.equal(read_state_dict(back)["logit_scale"], read_state_dict(official)["logit_scale"])
