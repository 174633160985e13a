"""Generate K pseudo-SAR chips per optical test chip with a trained BBDM, into the fusion cache.

  python tools/generate_pseudo_sar.py --config_file configs/bbdm/hoss.yml DATASETS.ROOT_DIR data \
      BBDM.WEIGHTS logs/bbdm_hoss/bbdm_final.pth TEST.FUSION.CACHE_DIR cache/pseudo_sar
Then evaluate with the same TEST.FUSION.CACHE_DIR (configs/hoss/mos.yml). Sources are the optical images of
DATASETS.PROTOCOLS; each is sampled with its own generator seeded from (SEED, file name), so a chip's samples
do not depend on which others are generated. Entries already in the cache are kept (a killed run resumes);
under torchrun the sources are split over the ranks.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import add_config_args, parse_args  # noqa: E402
from configs.loader import ConfigError  # noqa: E402
from datasets import build_dataset  # noqa: E402
from datasets.pseudo_sar import check_generator, file_sha1, has_entry, sar_domain, write_entry  # noqa: E402
from datasets.radiometry import ChipDecoder  # noqa: E402
from datasets.records import OPTICAL  # noqa: E402
from datasets.transforms import build_train_transform  # noqa: E402
from model.bbdm.translator import build_translator, load_translator_weights, to_uint8_grey  # noqa: E402
from processor.setup import setup_run  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.distributed import barrier, is_main, rank, world_size  # noqa: E402


def source_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{name}".encode()).digest()[:8], "little")


def optical_sources(cfg) -> list:
    dataset = build_dataset(cfg)
    found = {}
    for protocol in (dataset.protocol(name) for name in cfg.DATASETS.PROTOCOLS):
        for record in protocol.query + protocol.gallery:
            if record.modality == OPTICAL:
                found.setdefault(record.name, record)
    return [found[name] for name in sorted(found)]


def optical_resize(cfg):
    """The resize of BBDM's training pairs (the training transform's, bicubic), so that the translator is fed
    optical chips resized as in training."""
    return build_train_transform(cfg).resize


def load_translator(cfg, device):
    if not cfg.BBDM.WEIGHTS:
        raise ConfigError("BBDM.WEIGHTS is empty: pass the translator trained by train_bbdm.py (bbdm_final.pth)")
    translator = build_translator(cfg)
    load_translator_weights(translator, cfg.BBDM.WEIGHTS)
    return translator.to(device).eval()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--chips-per-batch", type=int, default=8,
                        help="optical chips sampled together (each with its K samples); results do not depend on it")
    args = parse_args(add_config_args(parser), argv)
    cfg, logger, device = setup_run(args, "generate_pseudo_sar.log")
    cache_dir, k = cfg.TEST.FUSION.CACHE_DIR, cfg.TEST.FUSION.NUM_SAMPLES
    if not cache_dir:
        raise ConfigError("TEST.FUSION.CACHE_DIR is empty: name the folder the pseudo-SAR chips go to")
    translator = load_translator(cfg, device)
    fingerprint = {"weights_sha1": file_sha1(cfg.BBDM.WEIGHTS), "steps": cfg.BBDM.SAMPLE_STEPS,
                   "eta": cfg.BBDM.SAMPLE_ETA, "precision": cfg.BBDM.SAMPLE_PRECISION, "seed": cfg.SEED,
                   "size": list(cfg.INPUT.SIZE_TRAIN), "num_samples": k, **sar_domain(cfg)}
    if is_main():
        check_generator(cache_dir, fingerprint)
    barrier()
    sources = optical_sources(cfg)
    todo = [r for r in sources[rank()::world_size()] if not has_entry(cache_dir, r)]
    logger.info("%d optical sources, %d to generate on this rank, %d samples each, %d steps", len(sources),
                len(todo), k, cfg.BBDM.SAMPLE_STEPS)
    decoder, resize = ChipDecoder.from_config(cfg), optical_resize(cfg)
    start = time.time()
    bar = tqdm(total=len(todo), desc="generate", unit="chip", disable=not is_main(), dynamic_ncols=True)
    for first in range(0, len(todo), args.chips_per_batch):
        chunk = todo[first:first + args.chips_per_batch]
        decoded = [decoder(record.path, record.modality) for record in chunk]
        optical = torch.cat([resize(pixels).unsqueeze(0).expand(k, -1, -1, -1) for pixels, _ in decoded]).to(device)
        # one generator per chip, shared by its K rows: a chip's samples do not depend on its batch neighbours
        generators = [torch.Generator(device=device).manual_seed(source_seed(cfg.SEED, record.name))
                      for record in chunk]
        samples = translator.translate(optical, cfg.BBDM.SAMPLE_STEPS, cfg.BBDM.SAMPLE_ETA,
                                       [g for g in generators for _ in range(k)], cfg.BBDM.SAMPLE_PRECISION)
        grey = to_uint8_grey(samples).cpu().numpy()
        for index, (record, (_, (width, height))) in enumerate(zip(chunk, decoded)):
            write_entry(cache_dir, record, grey[index * k:(index + 1) * k], width, height)
        bar.update(len(chunk))
    bar.close()
    seconds = time.time() - start
    barrier()
    summary = {"sources": len(sources), "generated": len(todo), "seconds": seconds,
               "seconds_per_chip": seconds / max(1, len(todo))}
    logger.info("generated %d chips in %.1f s (%.3f s per chip) into %s", len(todo), seconds,
                summary["seconds_per_chip"], cache_dir)
    return summary


if __name__ == "__main__":
    run_cli(main)
