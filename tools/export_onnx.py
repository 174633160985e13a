"""Export the TransOSS feature extractor to ONNX and check it against PyTorch with onnxruntime.

  python tools/export_onnx.py --config_file configs/hoss/transoss.yml --weights model.pth --out transoss.onnx
Inputs: `image` float32 (N, 3, H, W) normalised as in training (INPUT.PIXEL_MEAN/STD), `modality` int64 (N,)
(0 optical, 1 SAR), `size` float32 (N, 3) (the ship-size vector); output `feat` float32 (N, D), the test feature
(TEST.NECK_FEAT) before L2 normalisation. The batch dimension is dynamic.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config  # noqa: E402
from model import build_model  # noqa: E402
from model.weights import load_weights  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.errors import ShipReIDError  # noqa: E402

# largest |onnxruntime - pytorch| accepted by the check
PARITY_TOLERANCE = 1e-4


class FeatureGraph(nn.Module):
    """The inference path with explicit tensors instead of a batch dict."""

    def __init__(self, model, neck_feat: str):
        super().__init__()
        self.model, self.neck_feat = model, neck_feat

    def forward(self, image, modality, size):
        return self.model.embed({"image": image, "modality": modality, "size": size}, self.neck_feat)


def example_inputs(cfg, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    height, width = cfg.INPUT.SIZE_TEST
    return (torch.randn(batch, 3, height, width, generator=gen), torch.arange(batch) % 2,
            torch.randn(batch, 3, generator=gen))


def export(cfg, weights: str, out: str) -> float:
    """Write the ONNX file and return the largest absolute difference to PyTorch on a fresh batch of 5."""
    import onnxruntime
    model = build_model(cfg).eval()
    load_weights(model, weights, mode="full", strict=cfg.MODEL.STRICT_LOAD, file_grid=cfg.MODEL.WEIGHTS_GRID)
    graph = FeatureGraph(model, cfg.TEST.NECK_FEAT).eval()
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(graph, example_inputs(cfg, 2), out, input_names=["image", "modality", "size"],
                      output_names=["feat"], dynamo=True, external_data=False,
                      dynamic_shapes={"image": {0: batch}, "modality": {0: batch}, "size": {0: batch}})
    inputs = example_inputs(cfg, 5, seed=1)
    with torch.no_grad():
        expected = graph(*inputs).numpy()
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = session.run(["feat"], dict(zip(["image", "modality", "size"], (t.numpy() for t in inputs))))[0]
    return float(np.abs(got - expected).max())


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE")
    args = parser.parse_args(argv)
    diff = export(load_config(args.config_file, args.opts), args.weights, args.out)
    print(f"wrote {args.out}; onnxruntime vs PyTorch max |diff| = {diff:.2e}")
    if diff > PARITY_TOLERANCE:
        raise ShipReIDError(f"{args.out}: ONNX output differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})")
    return diff


if __name__ == "__main__":
    run_cli(main)
