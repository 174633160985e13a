"""Embed image files with a trained model and write an .npz (feats, names, camids).

  python tools/extract_features.py --config_file configs/hoss/transoss.yml --weights model.pth \
      --out feats.npz chips/*.tif [KEY VALUE ...]
KEY VALUE pairs are config overrides as for test.py (e.g. MODEL.DEVICE cpu TEST.FLIP_FEATS True); they may come
before, between or after the image files.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config, parse_args  # noqa: E402
from configs.loader import ConfigError  # noqa: E402
from processor.extractor import FeatureExtractor, modality_from_name  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.errors import ShipReIDError  # noqa: E402

# An upper-case dotted config name (MODEL.DEVICE, SEED); chip files are ..._RGB.tif / ..._SAR.tif.
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$")


def split_images_and_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """The positional arguments as (image files, KEY VALUE overrides): a config name that is not an existing file
    starts an override and the next argument is its value."""
    images, overrides = [], []
    items = iter(items)
    for item in items:
        if not _CONFIG_KEY.match(item) or os.path.exists(item):
            images.append(item)
            continue
        value = next(items, None)
        if value is None:
            raise ConfigError(f"config override {item} has no value; overrides come as KEY VALUE pairs")
        overrides += [item, value]
    if not images:
        raise ShipReIDError("no image files given; pass the chips to embed (..._RGB.tif / ..._SAR.tif)")
    return images, overrides


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--device", default=None, help="default: the config's MODEL.DEVICE")
    parser.add_argument("items", nargs="+", metavar="IMAGE or KEY VALUE",
                        help="image files named ..._RGB.tif / ..._SAR.tif, and config overrides, "
                             "e.g. MODEL.DEVICE cpu")
    args = parse_args(parser, argv)
    images, overrides = split_images_and_overrides(args.items)
    device = args.device or load_config(args.config_file, overrides).MODEL.DEVICE
    extractor = FeatureExtractor(args.config_file, args.weights, device, overrides)
    feats = extractor(images)
    np.savez(args.out, feats=feats.numpy(), names=np.array([os.path.basename(p) for p in images]),
             camids=np.array([modality_from_name(p) for p in images], dtype=np.int64))
    print(f"wrote {args.out}: {tuple(feats.shape)}")
    return args.out


if __name__ == "__main__":
    run_cli(main)
