"""Write the built-in synthetic HOSS ReID set (and OptiSar_Pair pairs) in the official layout and formats.

  python tools/make_synthetic.py --root data/synthetic
  python tools/make_synthetic.py --root /tmp/big --train-ids 400 --test-ids 200 --seed 1
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.hoss import HOSS, PROTOCOLS, format_statistics, statistics_rows  # noqa: E402
from datasets.pairs import scan_pairs  # noqa: E402
from datasets.synthetic import SyntheticSpec, ensure_synthetic  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--root", default="data/synthetic", help="folder to create (holds HOSS/ and OptiSar_Pair/)")
    for field in fields(SyntheticSpec):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    args = parser.parse_args(argv)
    spec = SyntheticSpec(**{f.name: getattr(args, f.name) for f in fields(SyntheticSpec)})
    start = time.time()
    generated = ensure_synthetic(args.root, spec)
    print(f"{'generated' if generated else 'already present'}: {args.root} ({time.time() - start:.1f} s)")
    hoss = HOSS(args.root)
    print(format_statistics(statistics_rows([hoss.protocol(p) for p in PROTOCOLS], hoss.train)))
    print(f"OptiSar_Pair: {len(scan_pairs(args.root))} pairs")
    return args.root


if __name__ == "__main__":
    run_cli(main)
