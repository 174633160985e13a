"""MOS feature fusion with cached pseudo-SAR chips: the formula, tau = 0, the cache keyed by source file."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_MODEL

import test as test_entry
from configs.loader import load_config
from datasets.hoss import HOSS
from datasets.pseudo_sar import PseudoSarCacheError, read_entry, write_entry
from datasets.radiometry import ChipDecoder
from datasets.records import OPTICAL, SAR
from datasets.ship_size import ShipSizeEncoder
from datasets.transforms import build_test_transform
from model.build import build_model
from model.weights import load_weights
from processor.fusion import fuse_with_pseudo_sar

K = 3


def test_fusion_formula_on_constructed_vectors():
    feat = torch.tensor([[3.0, 0.0]])
    pseudo = torch.tensor([[[0.0, 2.0], [0.0, 5.0], [1.0, 0.0]]])     # normalised mean (1/3, 2/3)
    mixed = 0.75 * torch.tensor([1.0, 0.0]) + 0.25 * torch.tensor([1 / 3, 2 / 3])
    torch.testing.assert_close(fuse_with_pseudo_sar(feat, pseudo, 0.25)[0], mixed / mixed.norm())
    torch.testing.assert_close(fuse_with_pseudo_sar(feat, pseudo, 0.0), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="TAU"):
        fuse_with_pseudo_sar(feat, pseudo, 1.5)


def optical_test_records(root):
    protocol = HOSS(root).protocol("ALL")
    seen = {r.name: r for r in protocol.query + protocol.gallery if r.modality == OPTICAL}
    return [seen[name] for name in sorted(seen)]


def fake_generation(records, cache_dir, decoder):
    """K distinct grey versions of each optical chip (a stand-in for BBDM samples: the cache is what is tested)."""
    for record in records:
        pixels, (width, height) = decoder(record.path, record.modality)
        grey = pixels.astype(np.float32).mean(axis=2)
        samples = np.stack([np.clip(grey * (0.4 + 0.3 * k), 0, 255).astype(np.uint8) for k in range(K)])
        write_entry(cache_dir, record, samples, width, height)


@pytest.fixture
def golden_run(golden_dir, hoss_root, tmp_path):
    weights = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    common = ["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, "TEST.WEIGHT", weights,
              "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "TEST.SAVE_FEATS", "True", *TINY_MODEL]
    cfg = load_config("configs/hoss/transoss.yml", ["DATASETS.ROOT_DIR", hoss_root, *TINY_MODEL])
    records = optical_test_records(hoss_root)
    cache = str(tmp_path / "cache")
    fake_generation(records, cache, ChipDecoder.from_config(cfg))
    return common, cfg, records, cache, weights


def run(common, out, *overrides):
    results = test_entry.main([*common, "OUTPUT_DIR", str(out), *overrides])
    return results, {p: np.load(out / f"features_{p}.npz") for p in ("ALL", "O2S", "S2O")}


def test_tau_zero_reproduces_unfused_metrics_and_tau_moves_only_optical_features(golden_run, tmp_path):
    common, cfg, records, cache, weights = golden_run
    plain, plain_feats = run(common, tmp_path / "plain")
    zero, _ = run(common, tmp_path / "zero", "TEST.FUSION.CACHE_DIR", cache, "TEST.FUSION.TAU", "0.0",
                  "TEST.FUSION.NUM_SAMPLES", str(K))
    assert zero == plain
    fused, fused_feats = run(common, tmp_path / "fused", "TEST.FUSION.CACHE_DIR", cache, "TEST.FUSION.TAU", "0.3",
                             "TEST.FUSION.NUM_SAMPLES", str(K))
    assert fused != plain

    # by hand: the ReID model on each optical chip's K cached chips as SAR with the source's size vector
    model = build_model(cfg).eval()
    load_weights(model, weights)
    transform, sizes = build_test_transform(cfg), ShipSizeEncoder.from_config(cfg)
    ref = fused_feats["ALL"]
    names = list(ref["names"])
    for record in records[:6]:
        paths, width, height = read_entry(cache, record, K)
        images = torch.stack([transform(np.array(Image.open(p).convert("RGB"))) for p in paths])
        with torch.no_grad():
            pseudo = model.embed({"image": images, "modality": torch.full((K,), SAR),
                                  "size": torch.tensor([sizes(width, height, OPTICAL)] * K)})
        row = names.index(record.name)
        plain_row = torch.from_numpy(plain_feats["ALL"]["feats"][row])
        expected = fuse_with_pseudo_sar(plain_row[None], pseudo[None], 0.3)[0]
        np.testing.assert_allclose(ref["feats"][row], expected.numpy(), atol=1e-5)
    for row, camid in enumerate(ref["camids"]):
        if camid == SAR:          # SAR features are untouched
            np.testing.assert_array_equal(ref["feats"][row], plain_feats["ALL"]["feats"][row])


def test_cache_is_keyed_by_source_file_not_order(golden_run, tmp_path):
    common, cfg, records, cache, _ = golden_run
    _, feats = run(common, tmp_path / "a", "TEST.FUSION.CACHE_DIR", cache, "TEST.FUSION.NUM_SAMPLES", str(K))
    # a second cache written in reverse order (folders created in another order) gives the same features
    reversed_cache = str(tmp_path / "reversed")
    fake_generation(list(reversed(records)), reversed_cache, ChipDecoder.from_config(cfg))
    _, again = run(common, tmp_path / "b", "TEST.FUSION.CACHE_DIR", reversed_cache, "TEST.FUSION.NUM_SAMPLES", str(K))
    np.testing.assert_array_equal(feats["ALL"]["feats"], again["ALL"]["feats"])
    # swapping two entries' samples changes exactly those two chips' features
    first, second = (os.path.join(reversed_cache, os.path.splitext(r.name)[0]) for r in records[:2])
    for k in range(K):
        a, b = os.path.join(first, f"{k}.png"), os.path.join(second, f"{k}.png")
        shutil.move(a, a + ".swap")
        shutil.move(b, a)
        shutil.move(a + ".swap", b)
    _, swapped = run(common, tmp_path / "c", "TEST.FUSION.CACHE_DIR", reversed_cache, "TEST.FUSION.NUM_SAMPLES", str(K))
    names = list(feats["ALL"]["names"])
    changed = {names[i] for i in range(len(names)) if not np.array_equal(feats["ALL"]["feats"][i], swapped["ALL"]["feats"][i])}
    assert changed == {records[0].name, records[1].name}


def test_missing_stale_or_short_cache_entries_are_refused(golden_run, tmp_path):
    common, cfg, records, cache, _ = golden_run
    shutil.rmtree(os.path.join(cache, os.path.splitext(records[3].name)[0]))
    with pytest.raises(PseudoSarCacheError, match=records[3].name):
        run(common, tmp_path / "a", "TEST.FUSION.CACHE_DIR", cache, "TEST.FUSION.NUM_SAMPLES", str(K))
    meta_path = os.path.join(cache, os.path.splitext(records[4].name)[0], "source.json")
    with open(meta_path) as f:
        meta = json.load(f)
    with pytest.raises(PseudoSarCacheError, match="holds 3 samples"):
        read_entry(cache, records[4], K + 1)
    meta["sha1"] = "0" * 40
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(PseudoSarCacheError, match="another file"):
        read_entry(cache, records[4], K)
