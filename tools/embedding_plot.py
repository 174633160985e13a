"""Embedding picture of a protocol's test features before and after training (PCA, colour = identity,
circle = optical, square = SAR), showing how training closes the modality gap.

  python tools/embedding_plot.py --config_file configs/demo/transoss.yml --weights logs/demo/model_final.pth \
      --out embedding.png [--protocol ALL] [KEY VALUE ...]
The "before" panel is the model at its initialisation (MODEL.PRETRAIN_PATH, or random with SEED).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config  # noqa: E402
from datasets import build_dataset  # noqa: E402
from model import build_model  # noqa: E402
from model.weights import load_weights  # noqa: E402
from processor.evaluator import Evaluator  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.device import resolve_device  # noqa: E402
from utils.embedding_plot import draw_embedding  # noqa: E402


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--weights", required=True, help="the trained model")
    parser.add_argument("--out", required=True, help="output .png")
    parser.add_argument("--protocol", default="ALL")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    device = resolve_device(cfg.MODEL.DEVICE)
    protocol = build_dataset(cfg).protocol(args.protocol)
    evaluator = Evaluator(cfg, [protocol])
    panels = []
    for title, weights, mode in (("before training", cfg.MODEL.PRETRAIN_PATH, "init"),
                                 ("after training", args.weights, "full")):
        torch.manual_seed(cfg.SEED)
        model = build_model(cfg).to(device)
        if weights:
            load_weights(model, weights, mode=mode, strict=cfg.MODEL.STRICT_LOAD,
                         file_grid=cfg.MODEL.WEIGHTS_GRID)
        feats = evaluator.protocol_features(evaluator.extract(model, device), protocol)
        panels.append((f"{title} ({args.protocol})", feats))
    records = protocol.query + protocol.gallery
    path = draw_embedding(panels, [r.pid for r in records], [r.modality for r in records], args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
