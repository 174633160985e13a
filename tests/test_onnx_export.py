"""ONNX export of the feature extractor matches PyTorch on real chips (onnxruntime, dynamic batch)."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime
import pytest
import torch

from conftest import TINY_MODEL

from processor.extractor import FeatureExtractor, modality_from_name
from tools.export_onnx import PARITY_TOLERANCE, main as export_main


@pytest.mark.parametrize("method,overrides", [("transoss", []), ("sdfnet", ["MODEL.SDF.STRUCT_LAYER", "1"])])
def test_onnx_matches_pytorch_on_real_chips(golden_dir, samples_dir, tmp_path, method, overrides):
    weights = os.path.join(golden_dir, f"{method}_tiny", f"{method}_tiny_official_format.pth")
    out = str(tmp_path / f"{method}.onnx")
    diff = export_main(["--config_file", f"configs/hoss/{method}.yml", "--weights", weights, "--out", out,
                        *TINY_MODEL, *overrides])
    assert diff <= PARITY_TOLERANCE
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "modality", "size"]

    # the query chips (optical and SAR) decoded as test.py decodes them, then normalised: the graph's inputs
    extractor = FeatureExtractor(f"configs/hoss/{method}.yml", weights, "cpu", [*TINY_MODEL, *overrides])
    query = os.path.join(samples_dir, "query")
    paths = sorted(os.path.join(query, name) for name in os.listdir(query))
    images, modalities, sizes = [], [], []
    for path in paths:
        modality = modality_from_name(path)
        pixels, (width, height) = extractor.decoder(path, modality)
        images.append(extractor.transform(pixels))
        modalities.append(modality)
        sizes.append(extractor.size_encoder(width, height, modality))
    assert set(modalities) == {0, 1}
    feed = {"image": extractor.model.normalizer(torch.stack(images)).numpy(), "modality": np.array(modalities, dtype=np.int64),
            "size": np.array(sizes, dtype=np.float32)}
    expected = extractor(paths).numpy()
    assert expected.shape == (len(paths), 48) and expected.std(axis=0).min() > 1e-3  # chips embed differently
    for batch in (1, len(paths)):
        got = session.run(["feat"], {name: value[:batch] for name, value in feed.items()})[0]
        diff = float(np.abs(got - expected[:batch]).max())
        assert diff < 1e-5, (batch, diff)  # measured 2.4e-6
