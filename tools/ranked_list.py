"""Ranked-list picture from features saved by test.py (TEST.SAVE_FEATS True), without the model.

  python tools/ranked_list.py --features logs/eval/features_O2S.npz --config_file configs/hoss/transoss.yml \
      --out ranked_O2S.png [--queries 8 --topk 10] [DATASETS.ROOT_DIR data ...]
The chips are found by name in the protocol's folders under DATASETS.ROOT_DIR and drawn with the
configured SAR radiometry.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config  # noqa: E402
from datasets import build_dataset  # noqa: E402
from datasets.radiometry import ChipDecoder  # noqa: E402
from processor.evaluator import ranking_distances  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.errors import ShipReIDError  # noqa: E402
from utils.ranked_list import draw_ranked_lists  # noqa: E402


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--features", required=True, help="features_<protocol>.npz written by test.py")
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    saved = np.load(args.features)
    protocol_name = os.path.basename(args.features)[len("features_"):-len(".npz")]
    protocol = build_dataset(cfg).protocol(protocol_name)
    records = protocol.query + protocol.gallery
    if [r.name for r in records] != list(saved["names"]):
        raise ShipReIDError(f"{args.features}: its file names do not match protocol {protocol_name} under "
                            f"{cfg.DATASETS.ROOT_DIR}; pass the DATASETS.ROOT_DIR the features were computed on")
    feats = torch.from_numpy(saved["feats"])
    num_query = int(saved["num_query"])
    decoder = ChipDecoder.from_config(cfg)
    dist = ranking_distances(cfg.TEST, feats[:num_query], feats[num_query:])  # as test.py ranks (AQE, re-ranking)
    path = draw_ranked_lists(protocol.query, protocol.gallery, dist, lambda r: decoder(r.path, r.modality)[0],
                             args.out, args.queries, args.topk)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
