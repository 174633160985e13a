"""Speed and memory of MOS's BBDM translator: training steps (pairs/s) and generation (seconds per chip).

  python tools/benchmark_bbdm.py --config_file configs/bbdm/hoss.yml --mode train --pairs 16 MODEL.DEVICE cuda
  python tools/benchmark_bbdm.py --config_file configs/bbdm/hoss.yml --mode sample MODEL.DEVICE cuda

`sample` times what tools/generate_pseudo_sar.py does per optical chip: TEST.FUSION.NUM_SAMPLES samples of
BBDM.SAMPLE_STEPS steps in BBDM.SAMPLE_PRECISION (train steps under SOLVER.AMP). On a GPU, train also prints
FLOPs and MFU (see tools/benchmark.py).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import add_config_args, load_config, parse_args  # noqa: E402
from model.bbdm.translator import build_translator  # noqa: E402
from processor.optim_step import autocast_context  # noqa: E402
from tools.benchmark import forward_flops, mfu_figures, peak_memory_gib, report, timed  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.device import resolve_device  # noqa: E402


def random_pairs(cfg, pairs: int, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    height, width = cfg.INPUT.SIZE_TRAIN
    images = torch.randint(0, 256, (2 * pairs, 3, height, width), dtype=torch.uint8, generator=gen)
    return {"image": images.to(device)}


def bench_train(args, cfg, device) -> dict:
    model = build_translator(cfg).to(device).train()
    batch = random_pairs(cfg, args.pairs, device)
    # counted on the eager model: FLOP counting does not see inside compiled graphs
    flops = 3 * forward_flops(model, batch) if device.type == "cuda" else 0.0  # forward + backward
    if cfg.MODEL.COMPILE:
        model.unet.compile()  # as train_bbdm.py does
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=cfg.SOLVER.BASE_LR,
                                  fused=device.type == "cuda" or None)

    def step():
        with autocast_context(cfg.SOLVER.AMP, device):
            loss = model(batch)["bridge"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, args.warmup, args.steps, device)
    figures = {"mode": "train", "pairs": args.pairs, "compiled": cfg.MODEL.COMPILE, "step_seconds": seconds,
               "pairs_per_second": args.pairs / seconds,
               "unet_parameters_m": sum(p.numel() for p in model.unet.parameters()) / 1e6,
               "peak_memory_gib": peak_memory_gib(device)}
    if device.type == "cuda":
        figures.update(mfu_figures(flops, seconds, device, args.peak_tflops))
    return figures


@torch.no_grad()
def bench_sample(args, cfg, device) -> dict:
    model = build_translator(cfg).to(device).eval()
    k = cfg.TEST.FUSION.NUM_SAMPLES
    optical = random_pairs(cfg, k, device)["image"][:k]

    def chip():
        model.translate(optical, cfg.BBDM.SAMPLE_STEPS, cfg.BBDM.SAMPLE_ETA, precision=cfg.BBDM.SAMPLE_PRECISION)

    seconds = timed(chip, min(args.warmup, 1), max(1, args.steps // 5), device)
    return {"mode": "sample", "samples_per_chip": k, "steps": cfg.BBDM.SAMPLE_STEPS,
            "precision": cfg.BBDM.SAMPLE_PRECISION, "seconds_per_chip": seconds,
            "peak_memory_gib": peak_memory_gib(device)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--mode", choices=("train", "sample"), required=True)
    parser.add_argument("--pairs", type=int, default=16, help="train: optical-SAR pairs per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (sample: a fifth of them, at least 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", default="")
    add_config_args(parser)
    args = parse_args(parser, argv)
    cfg = load_config(args.config_file or None, args.opts)
    device = resolve_device(cfg.MODEL.DEVICE)
    figures = bench_train(args, cfg, device) if args.mode == "train" else bench_sample(args, cfg, device)
    report(figures, args.json)
    return figures


if __name__ == "__main__":
    run_cli(main)
