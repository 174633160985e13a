"""Embed image files with a trained model and write an .npz (feats, names, camids).

  python tools/extract_features.py --config_file configs/hoss/transoss.yml --weights model.pth \
      --out feats.npz chips/*.tif [KEY VALUE ...]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from processor.extractor import FeatureExtractor, modality_from_name  # noqa: E402
from utils.cli import run_cli  # noqa: E402


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--device", default="auto")
    parser.add_argument("images", nargs="+", help="image files named ..._RGB.tif / ..._SAR.tif")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args(argv)
    extractor = FeatureExtractor(args.config_file, args.weights, args.device, args.opts)
    feats = extractor(args.images)
    np.savez(args.out, feats=feats.numpy(), names=np.array([os.path.basename(p) for p in args.images]),
             camids=np.array([modality_from_name(p) for p in args.images], dtype=np.int64))
    print(f"wrote {args.out}: {tuple(feats.shape)}")
    return args.out


if __name__ == "__main__":
    run_cli(main)
