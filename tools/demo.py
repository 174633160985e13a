"""The main job on a fresh machine: synthetic HOSS data, a tiny TransOSS trained on CPU, the results table.

  python tools/demo.py                          # data in data/synthetic, run in logs/demo
  python tools/demo.py SOLVER.MAX_EPOCHS 10     # any config override
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config  # noqa: E402
from datasets.synthetic import SyntheticSpec, ensure_synthetic  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402

import train as train_entry  # noqa: E402

DEMO_CONFIG = "configs/demo/transoss.yml"


def main(argv=None):
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--config_file", default=DEMO_CONFIG)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    start = time.time()
    if ensure_synthetic(cfg.DATASETS.ROOT_DIR, SyntheticSpec(seed=args.seed)):
        print(f"generated synthetic HOSS data in {cfg.DATASETS.ROOT_DIR} ({time.time() - start:.0f} s)")
    trainer = train_entry.main(["--config_file", args.config_file, *args.opts])
    print(f"demo finished in {(time.time() - start) / 60:.1f} min; results in {cfg.OUTPUT_DIR}/results.json")
    return trainer


if __name__ == "__main__":
    run_cli(main)
