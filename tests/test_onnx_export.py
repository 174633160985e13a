"""ONNX export of the feature extractor matches PyTorch (onnxruntime, dynamic batch)."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime
import pytest

from conftest import TINY_MODEL

from tools.export_onnx import PARITY_TOLERANCE, main as export_main


@pytest.mark.parametrize("method,overrides", [("transoss", []), ("sdfnet", ["MODEL.SDF.STRUCT_LAYER", "1"])])
def test_onnx_matches_pytorch_with_a_dynamic_batch(golden_dir, tmp_path, method, overrides):
    weights = os.path.join(golden_dir, f"{method}_tiny", f"{method}_tiny_official_format.pth")
    out = str(tmp_path / f"{method}.onnx")
    diff = export_main(["--config_file", f"configs/hoss/{method}.yml", "--weights", weights, "--out", out,
                        *TINY_MODEL, *overrides])
    assert diff <= PARITY_TOLERANCE
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "modality", "size"]
    for batch in (1, 7):
        feed = {"image": np.zeros((batch, 3, 256, 128), np.float32), "modality": np.ones(batch, np.int64),
                "size": np.zeros((batch, 3), np.float32)}
        assert session.run(["feat"], feed)[0].shape == (batch, 48)
