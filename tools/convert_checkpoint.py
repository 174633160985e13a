"""Convert TransOSS weights between layouts: this project's, the official code's, and safetensors.

  python tools/convert_checkpoint.py HOSS_TransOSS.pth model.pth --to shipreid
  python tools/convert_checkpoint.py logs/run/model_final.pth official.pth --to official
  python tools/convert_checkpoint.py logs/run/model_final.pth model.safetensors --to safetensors
Any layout model/weights.py reads is accepted as input; the output holds weights only.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.weights import checkpoint_filter_fn, detect_layout, read_state_dict, to_official  # noqa: E402
from processor.checkpoint import atomic_save  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402

TARGETS = ("shipreid", "official", "safetensors")


def convert(source: str, target: str, to: str) -> str:
    raw = read_state_dict(source)
    state, ignored = checkpoint_filter_fn(raw, detect_layout(raw, source))
    if ignored:
        print(f"dropped {len(ignored)} unused entries: {', '.join(ignored[:6])}{' ...' if len(ignored) > 6 else ''}")
    if to == "official":
        atomic_save(to_official(state), target)
    elif to == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, target)
    else:
        atomic_save(state, target)
    return target


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--to", choices=TARGETS, required=True)
    args = parser.parse_args(argv)
    path = convert(args.source, args.target, args.to)
    print(f"wrote {path} ({args.to} layout)")
    return path


if __name__ == "__main__":
    run_cli(main)
