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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config  # noqa: E402
from datasets import build_dataset  # noqa: E402
from datasets.radiometry import ChipDecoder  # noqa: E402
from processor.evaluator import load_saved_ranking  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
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
    protocol, dist = load_saved_ranking(cfg, args.features, build_dataset(cfg))
    decoder = ChipDecoder.from_config(cfg)
    path = draw_ranked_lists(protocol.query, protocol.gallery, dist, lambda r: decoder(r.path, r.modality)[0],
                             args.out, args.queries, args.topk)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
