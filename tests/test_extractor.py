"""FeatureExtractor: the features of test.py for the same files, from paths or arrays, with no dataset."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_MODEL

import test as test_entry
from processor.extractor import FeatureExtractor, modality_from_name
from processor.results import metrics_of, read_results
from utils.errors import ShipReIDError


def test_extractor_equals_test_py(golden_dir, hoss_root, samples_dir, tmp_path):
    weights = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    test_entry.main(["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, "TEST.WEIGHT",
                     weights, "OUTPUT_DIR", str(tmp_path), "TEST.SAVE_FEATS", "True", "MODEL.DEVICE", "cpu",
                     "DATALOADER.NUM_WORKERS", "0", "DATASETS.PROTOCOLS", "['ALL']", *TINY_MODEL])
    saved = np.load(tmp_path / "features_ALL.npz")
    names = list(saved["names"])
    paths = [os.path.join(samples_dir, "query" if i < int(saved["num_query"]) else "bounding_box_test", n)
             for i, n in enumerate(names)]
    extractor = FeatureExtractor("configs/hoss/transoss.yml", weights, "cpu", TINY_MODEL, batch_size=5)
    feats = extractor(paths)
    assert torch.allclose(feats, torch.from_numpy(saved["feats"]), atol=1e-5)

    # arrays: a SAR amplitude and an optical chip, with modality and original (width, height) given
    sar_path = next(p for p in paths if p.endswith("_SAR.tif"))
    opt_path = next(p for p in paths if p.endswith("_RGB.tif"))
    sar, opt = Image.open(sar_path), Image.open(opt_path)
    from_arrays = extractor([np.asarray(sar, dtype=np.float32), np.asarray(opt)], modalities=[1, 0],
                            sizes=[sar.size, opt.size])
    assert torch.allclose(from_arrays, extractor([sar_path, opt_path]), atol=1e-6)
    assert torch.allclose(extractor([opt_path], normalize=True).norm(dim=1), torch.ones(1))


def test_modality_must_be_known():
    assert modality_from_name("x/0001_s05c1_RGB.tif") == 0 and modality_from_name("b_SAR.png") == 1
    with pytest.raises(ShipReIDError, match="modality"):
        modality_from_name("ship.tif")


def test_ranked_list_pictures_from_test_py(golden_dir, hoss_root, tmp_path):
    from utils.ranked_list import grid_size
    weights = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    test_entry.main(["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, "TEST.WEIGHT",
                     weights, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
                     "TEST.RANKED_LIST_QUERIES", "5", "TEST.RANKED_LIST_TOPK", "7", *TINY_MODEL])
    for protocol in ("ALL", "O2S", "S2O"):
        with Image.open(tmp_path / f"ranked_{protocol}.png") as picture:
            assert picture.size == grid_size(5, 7)
            pixels = np.asarray(picture.convert("RGB"))
        # every result is framed green (same identity) or red; the ALL protocol has both on the real chips
        greens = ((pixels == (30, 170, 60)).all(-1)).sum()
        reds = ((pixels == (210, 40, 40)).all(-1)).sum()
        assert reds > 0 and (greens > 0 or protocol != "ALL")


def test_embedding_plot_tool(hoss_root, golden_dir, tmp_path):
    from tools.embedding_plot import main as plot_main
    from utils.embedding_plot import PANEL, picture_size
    weights = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    path = plot_main(["--config_file", "configs/hoss/transoss.yml", "--weights", weights, "--out",
                      str(tmp_path / "e.png"), "--protocol", "O2S", "DATASETS.ROOT_DIR", hoss_root,
                      "MODEL.PRETRAIN_PATH", "", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", *TINY_MODEL])
    with Image.open(path) as picture:
        assert picture.size == picture_size(2)
        pixels = np.asarray(picture.convert("RGB"))
    # both panels hold markers: optical circles and SAR squares drawn in identity colours (non-grey pixels)
    coloured = (pixels.max(-1).astype(int) - pixels.min(-1)) > 60
    assert coloured[:, :PANEL].sum() > 100 and coloured[:, PANEL:].sum() > 100


def test_ranked_list_tool_from_saved_features(golden_dir, hoss_root, tmp_path):
    from tools.ranked_list import main as ranked_main
    weights = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    common = ["DATASETS.ROOT_DIR", hoss_root, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", *TINY_MODEL]
    test_entry.main(["--config_file", "configs/hoss/transoss.yml", "TEST.WEIGHT", weights, "OUTPUT_DIR",
                     str(tmp_path), "TEST.SAVE_FEATS", "True", "TEST.RANKED_LIST_QUERIES", "4", *common])
    path = ranked_main(["--features", str(tmp_path / "features_S2O.npz"), "--config_file", "configs/hoss/transoss.yml",
                        "--out", str(tmp_path / "tool.png"), "--queries", "4", "--topk", "10", *common])
    with Image.open(path) as a, Image.open(tmp_path / "ranked_S2O.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # the same picture as test.py's


def test_flip_features_are_the_mean_with_the_mirror_image(golden_dir, samples_dir):
    """TEST.FLIP_FEATS: each feature is the mean of the chip's and of its left-right mirror's (the mirror given
    here as an array with the same modality and size)."""
    weights = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    paths = sorted(os.path.join(samples_dir, "query", n) for n in os.listdir(os.path.join(samples_dir, "query")))[:4]
    plain = FeatureExtractor("configs/hoss/transoss.yml", weights, "cpu", TINY_MODEL)
    flipped = FeatureExtractor("configs/hoss/transoss.yml", weights, "cpu", [*TINY_MODEL, "TEST.FLIP_FEATS", "True"])
    modalities = [modality_from_name(p) for p in paths]
    decoded = [plain.decoder(p, m) for p, m in zip(paths, modalities)]
    mirrors = plain([np.ascontiguousarray(pixels[:, ::-1]) for pixels, _ in decoded], modalities=modalities,
                    sizes=[size for _, size in decoded])
    expected = (plain(paths) + mirrors) / 2
    got = flipped(paths)
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - plain(paths)).abs().max() > 1e-3  # the model is not mirror-invariant: flipping changes features


def test_test_py_flip_and_query_expansion(golden_dir, hoss_root, samples_dir, tmp_path):
    """test.py with TEST.FLIP_FEATS and TEST.AQE: the saved features are the extractor's flip features, and the
    metrics are those of the expanded, re-normalised features."""
    from utils.metrics import evaluate_features
    from utils.query_expansion import average_query_expansion
    weights = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    options = ["TEST.FLIP_FEATS", "True", "TEST.AQE", "True", "TEST.AQE_K", "3"]
    test_entry.main(["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", hoss_root, "TEST.WEIGHT",
                     weights, "OUTPUT_DIR", str(tmp_path), "TEST.SAVE_FEATS", "True", "MODEL.DEVICE", "cpu",
                     "DATALOADER.NUM_WORKERS", "0", "DATASETS.PROTOCOLS", "['ALL']", *TINY_MODEL, *options])
    saved = np.load(tmp_path / "features_ALL.npz")
    num_query = int(saved["num_query"])
    paths = [os.path.join(samples_dir, "query" if i < num_query else "bounding_box_test", n)
             for i, n in enumerate(saved["names"])]
    extractor = FeatureExtractor("configs/hoss/transoss.yml", weights, "cpu", [*TINY_MODEL, *options])
    assert torch.allclose(extractor(paths), torch.from_numpy(saved["feats"]), atol=1e-5)
    feats = torch.nn.functional.normalize(torch.from_numpy(saved["feats"]), dim=1)
    q, g = average_query_expansion(feats[:num_query], feats[num_query:], k=3, alpha=3.0)
    expected = evaluate_features(torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1),
                                 saved["pids"][:num_query].tolist(), saved["pids"][num_query:].tolist())
    results = metrics_of(read_results(tmp_path / "results.json"))["ALL"]
    for name in ("mAP", "R1", "R5", "mINP"):
        assert results[name] == pytest.approx(expected[name], abs=1e-12), name
    unexpanded = evaluate_features(feats[:num_query], feats[num_query:], saved["pids"][:num_query].tolist(),
                                   saved["pids"][num_query:].tolist())
    assert abs(unexpanded["mAP"] - expected["mAP"]) > 1e-3  # the expansion changed the ranking
