"""Check a dataset root before a long job: names, formats, dtypes, channels, unreadable files, identities in
both train and test, protocol folders and pretraining pairs. Prints one line per problem with its fix and
exits 1 when there is any; notes (files that are not chips and are ignored, pretraining chips converted to RGB)
are printed too but do not fail the check.

  python tools/validate_dataset.py data          # the folder that contains HOSS/ (and OptiSar_Pair/)
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.validate import validate_hoss  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("root", help="folder containing HOSS/ (DATASETS.ROOT_DIR)")
    parser.add_argument("--sar-radiometry", default="max", help="INPUT.SAR_RADIOMETRY to decode SAR chips with")
    args = parser.parse_args(argv)
    report = validate_hoss(args.root, args.sar_radiometry)
    for line in report.notes:
        print(f"note: {line}")
    for line in report.problems:
        print(line)
    problems = report.problems
    print(f"{len(problems)} problem(s) in {args.root}" if problems else f"{args.root}: no problems found")
    if problems:
        sys.exit(1)
    return problems


if __name__ == "__main__":
    run_cli(main)
