"""Speed and memory figures for training, inference, evaluation and data loading.

  python tools/benchmark.py --mode eval --num-query 10000 --num-gallery 100000 --dim 768
  python tools/benchmark.py --mode eval --num-query 2000 --num-gallery 20000 --check
  python tools/benchmark.py --mode train --config_file configs/demo/transoss.yml --compare
  python tools/benchmark.py --mode infer --batch 64 MODEL.DEVICE cuda SOLVER.AMP bf16
  python tools/benchmark.py --mode rerank --num-query 1000 --num-gallery 5000
  python tools/benchmark.py --mode data --config_file configs/demo/transoss.yml
  torchrun --standalone --nproc_per_node 2 tools/benchmark.py --mode startup --config_file configs/demo/transoss.yml

Prints images/s (or seconds), step time, peak memory and, on a GPU, the model FLOPs and MFU (fraction of the device's
dense bf16 peak given by --peak-tflops); --json FILE writes the same figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import add_config_args, load_config, parse_args  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.device import resolve_device  # noqa: E402
from utils.metrics import evaluate_features, squared_euclidean  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of common accelerators, for MFU
DEVICE_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.2}


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call of `fn` over `steps` calls after `warmup` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def report(figures, json_path: str = "") -> None:
    """Print the figures as JSON and, with `json_path`, write them there too."""
    print(json.dumps(figures, indent=2))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=2)


def exact_reference(query, gallery, q_pids, g_pids) -> dict:
    """Plain per-query computation: full stable sort of each gallery row (the textbook definition),
    on the same float32 distances."""
    dist = squared_euclidean(query, gallery).numpy()
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    aps, inps, r1, r5, r10 = [], [], 0, 0, 0
    for i in range(len(dist)):
        matches = (g_pids[np.argsort(dist[i], kind="stable")] == q_pids[i]).astype(np.float64)
        if not matches.any():
            continue
        hits = np.nonzero(matches)[0] + 1
        aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
        inps.append(len(hits) / hits[-1])
        r1, r5, r10 = r1 + (hits[0] <= 1), r5 + (hits[0] <= 5), r10 + (hits[0] <= 10)
    n = len(aps)
    return {"mAP": float(np.mean(aps)), "R1": r1 / n, "R5": r5 / n, "R10": r10 / n, "mINP": float(np.mean(inps))}


def bench_eval(args, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    num_ids = max(1, args.num_gallery // args.images_per_id)
    query = torch.nn.functional.normalize(torch.randn(args.num_query, args.dim, generator=gen), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(args.num_gallery, args.dim, generator=gen), dim=1)
    q_pids = torch.randint(0, num_ids, (args.num_query,), generator=gen)
    g_pids = torch.randint(0, num_ids, (args.num_gallery,), generator=gen)
    query, gallery = query.to(device), gallery.to(device)
    synchronize(device)
    start = time.perf_counter()
    metrics = evaluate_features(query, gallery, q_pids, g_pids)
    synchronize(device)
    seconds = time.perf_counter() - start
    figures = {"mode": "eval", "num_query": args.num_query, "num_gallery": args.num_gallery, "dim": args.dim,
               "seconds": seconds, "peak_memory_gib": peak_memory_gib(device), "metrics": metrics}
    if args.check:
        reference = exact_reference(query.cpu(), gallery.cpu(), q_pids, g_pids)
        figures["reference"] = reference
        figures["matches_reference"] = all(abs(metrics[k] - v) < 1e-12 for k, v in reference.items())
    return figures


def bench_rerank(args, cfg, device) -> dict:
    """k-reciprocal re-ranking (TEST.RE_RANKING_*) of random clustered features: seconds, peak memory and
    peak memory per image pair (what utils/reranking.py's RERANK_BYTES_PER_PAIR bounds)."""
    from utils.reranking import re_ranking
    gen = torch.Generator().manual_seed(0)
    num_ids = max(1, (args.num_query + args.num_gallery) // args.images_per_id)
    centres = torch.randn(num_ids, args.dim, generator=gen)
    feats = centres[torch.randint(0, num_ids, (args.num_query + args.num_gallery,), generator=gen)]
    feats = torch.nn.functional.normalize(feats + 0.5 * torch.randn(feats.shape, generator=gen), dim=1).to(device)
    before = peak_memory_gib(device)
    synchronize(device)
    start = time.perf_counter()
    re_ranking(feats[:args.num_query], feats[args.num_query:], cfg.TEST.RE_RANKING_K1, cfg.TEST.RE_RANKING_K2,
               cfg.TEST.RE_RANKING_LAMBDA)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = peak_memory_gib(device)
    n = args.num_query + args.num_gallery
    return {"mode": "rerank", "num_query": args.num_query, "num_gallery": args.num_gallery, "seconds": seconds,
            "peak_memory_gib": peak, "bytes_per_pair": (peak - before) * 2 ** 30 / n ** 2}


def model_batch(cfg, batch_size: int, device: torch.device, with_labels: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    height, width = cfg.INPUT.SIZE_TRAIN
    batch = {"image": torch.randint(0, 256, (batch_size, 3, height, width), dtype=torch.uint8, generator=gen),
             "modality": torch.arange(batch_size) % 2, "size": torch.randn(batch_size, 3, generator=gen)}
    if with_labels:
        batch["label"] = torch.arange(batch_size) // cfg.DATALOADER.NUM_INSTANCE
    return {k: v.to(device) for k, v in batch.items()}


def forward_flops(model, batch) -> float:
    """FLOPs of one forward pass, counted by torch's FLOP counter (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch)
    return float(counter.get_total_flops())


def bench_train(args, cfg, device, fused: bool) -> dict:
    """Optimisation steps through the real engine: `--data` feeds real batches from the training split
    (decoding and augmentation included; `fused=False` also turns the image cache off), otherwise one
    random uint8 batch, built once on the device, is reused."""
    from datasets import build_dataset, build_train_loader
    from loss import build_loss
    from model import build_model
    from processor.engine import Trainer
    from solver import CosineWarmupScheduler, build_optimizer
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH = args.batch
    cfg.DATALOADER.CACHE_IMAGES = cfg.DATALOADER.CACHE_IMAGES and fused
    cfg.freeze()
    if args.data:
        loader = build_train_loader(cfg, build_dataset(cfg).train)
        num_classes = loader.dataset.num_classes
    else:
        num_classes = max(2, args.batch // cfg.DATALOADER.NUM_INSTANCE)
        loader = None
    model = build_model(cfg, num_classes=num_classes).to(device).train()
    model.backbone.set_fused_attention(fused)
    # counted on the eager model: FLOP counting does not see inside compiled graphs
    flops = 3 * forward_flops(model, model_batch(cfg, args.batch, device, True)) if device.type == "cuda" else 0.0
    if args.compile:
        model.backbone.compile()
    criterion = build_loss(cfg).to(device)
    optimizer = build_optimizer(cfg, model, criterion)
    trainer = Trainer(cfg, model, criterion, optimizer, CosineWarmupScheduler(optimizer, cfg), loader, device)
    trainer.scheduler.step(1)

    def batches():
        if loader is None:
            # built once on the device: the figure is the step alone, no host batch or copy (run_step rewrites
            # the dict it gets, so each step takes a shallow copy)
            device_batch = model_batch(cfg, args.batch, device, with_labels=True)
            while True:
                yield dict(device_batch)
        epoch = 1
        while True:
            loader.batch_sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    seconds = timed(lambda: trainer.run_step(next(stream), boundary=True), args.warmup, args.steps, device)
    figures = {"mode": "train", "fused_attention": fused, "image_cache": cfg.DATALOADER.CACHE_IMAGES,
               "real_data": args.data, "compiled": args.compile, "amp": cfg.SOLVER.AMP, "batch": args.batch,
               "input": "real batches: decoding, augmentation, host-to-device copy" if args.data
               else "one uint8 batch built once on the device (the step alone)",
               "step_seconds": seconds,
               "images_per_second": args.batch / seconds, "peak_memory_gib": peak_memory_gib(device)}
    if device.type == "cuda":  # forward + backward = 3 x forward
        figures.update(mfu_figures(flops, seconds, device, args.peak_tflops))
    return figures


def mfu_figures(flops: float, seconds: float, device: torch.device, peak_tflops: float | None) -> dict:
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops or next((v for k, v in DEVICE_PEAK_TFLOPS.items() if k in name), None)
    achieved = flops / seconds / 1e12
    return {"device": name, "flops_per_step": flops, "achieved_tflops": achieved,
            "peak_tflops": peak, "mfu": achieved / peak if peak else None}


@torch.no_grad()
def bench_infer(args, cfg, device) -> dict:
    from model import build_model
    from processor.optim_step import autocast_context
    model = build_model(cfg).to(device).eval()
    batch = model_batch(cfg, args.batch, device, with_labels=False)

    def embed():
        with autocast_context(cfg.SOLVER.AMP, device):
            model.embed(batch)

    seconds = timed(embed, args.warmup, args.steps, device)
    figures = {"mode": "infer", "batch": args.batch, "batch_seconds": seconds, "images_per_second": args.batch / seconds,
               "peak_memory_gib": peak_memory_gib(device)}
    if device.type == "cuda":
        figures.update(mfu_figures(forward_flops(model, batch), seconds, device, args.peak_tflops))
    return figures


def bench_data(args, cfg) -> dict:
    from datasets import build_dataset, build_train_loader
    loader = build_train_loader(cfg, build_dataset(cfg).train)
    loader.batch_sampler.set_epoch(1)
    images, start = 0, time.perf_counter()
    for number, batch in enumerate(loader):
        images += len(batch["image"])
        if number + 1 >= args.steps:
            break
    seconds = time.perf_counter() - start
    return {"mode": "data", "batches": args.steps, "images_per_second": images / seconds,
            "workers": cfg.DATALOADER.NUM_WORKERS}


def bench_startup(cfg, device) -> list[dict]:
    """What a training run builds before its first step (training loader, evaluator: their image checks and
    caches), in one process or under torchrun: seconds and peak RSS of every rank, reported by rank 0."""
    from datasets import build_dataset, build_train_loader
    from processor.evaluator import Evaluator
    from utils.distributed import cleanup, gather_objects, init_distributed, is_main, rank, world_size
    init_distributed(device, cfg.DIST.TIMEOUT_S)
    rss_before = peak_memory_gib(torch.device("cpu"))
    start = time.perf_counter()
    dataset = build_dataset(cfg)
    train = build_train_loader(cfg, dataset.train, rank(), world_size()).dataset
    train_seconds = time.perf_counter() - start
    evaluator = Evaluator(cfg, [dataset.protocol(name) for name in cfg.DATASETS.PROTOCOLS])
    ranks = gather_objects({"rank": rank(), "seconds": time.perf_counter() - start, "train_seconds": train_seconds,
                            "peak_rss_gib": peak_memory_gib(torch.device("cpu")), "peak_rss_before_gib": rss_before,
                            "train_images": len(train), "train_cached": len(train.cache),
                            "test_images": len(evaluator.records), "test_cached": len(evaluator.cache)})
    cleanup()
    if not is_main():
        return []
    return [{"mode": "startup", "ranks": len(ranks), "image_cache": cfg.DATALOADER.CACHE_IMAGES,
             "cache_max_gb": cfg.DATALOADER.CACHE_MAX_GB, "seconds": max(r["seconds"] for r in ranks),
             "per_rank": ranks}]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--mode", choices=("train", "infer", "eval", "rerank", "data", "startup"), required=True)
    parser.add_argument("--batch", type=int, default=64, help="images per step (train, infer)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (train, infer) or batches (data)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--compare", action="store_true",
                        help="train: also measure with fused attention and the image cache off, in the same run, "
                             "and print the ratio")
    parser.add_argument("--compile", action="store_true", help="train: torch.compile the backbone")
    parser.add_argument("--data", action="store_true",
                        help="train: real batches from DATASETS.ROOT_DIR's training split (with decoding)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    parser.add_argument("--num-query", type=int, default=10000)
    parser.add_argument("--num-gallery", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--images-per-id", type=int, default=10, help="eval: gallery images per identity")
    parser.add_argument("--check", action="store_true", help="eval: compare with a full-sort reference")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    add_config_args(parser)
    args = parse_args(parser, argv)
    cfg = load_config(args.config_file or None, args.opts)
    device = resolve_device(cfg.MODEL.DEVICE)
    if args.mode == "eval":
        runs = [bench_eval(args, device)]
    elif args.mode == "train":
        runs = [bench_train(args, cfg, device, fused=True)]
        if args.compare:
            runs.append(bench_train(args, cfg, device, fused=False))
            runs[0]["speedup_vs_unfused"] = runs[0]["images_per_second"] / runs[1]["images_per_second"]
    elif args.mode == "infer":
        runs = [bench_infer(args, cfg, device)]
    elif args.mode == "rerank":
        runs = [bench_rerank(args, cfg, device)]
    elif args.mode == "startup":
        runs = bench_startup(cfg, device)  # empty on the ranks other than 0
    else:
        runs = [bench_data(args, cfg)]
    for figures in runs:
        print(json.dumps(figures, indent=2))
    if args.json and runs:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    return runs


if __name__ == "__main__":
    run_cli(main)
