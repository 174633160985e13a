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
from processor.evaluator import format_results  # noqa: E402
from processor.results import metrics_of, read_results  # noqa: E402
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
    trained = time.time()
    trainer = train_entry.main(["--config_file", args.config_file, *args.opts])
    finished = time.time()
    path = os.path.join(cfg.OUTPUT_DIR, "results.json")
    print(f"last epoch on the test set (%):\n{format_results(metrics_of(read_results(path)))}")
    print(f"demo finished: training and evaluation {minutes(finished - trained)}, data set-up "
          f"{minutes(trained - start)}; results in {path}")
    return trainer


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


if __name__ == "__main__":
    run_cli(main)
