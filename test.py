"""Evaluate a trained TransOSS model on HOSS ReID: ALL, optical->SAR and SAR->optical.

  python test.py --config_file configs/hoss/transoss.yml DATASETS.ROOT_DIR <dir with HOSS/> \
      TEST.WEIGHT <checkpoint> MODEL.DEVICE cpu
"""
from __future__ import annotations

import argparse
import os

from configs import add_config_args, parse_args
from configs.loader import ConfigError
from datasets import build_dataset
from datasets.hoss import format_statistics, statistics_rows
from model import build_model
from model.weights import load_weights
from processor.evaluator import Evaluator, format_results
from processor.results import evaluation_record, write_results
from processor.setup import setup_run
from utils.cli import describe, run_cli
from utils.distributed import is_main
from utils.provenance import provenance


# what a training run leaves in its OUTPUT_DIR: an evaluation there must not replace its records
TRAINING_RUN_MARKERS = ("checkpoints", "train.log", "train_pair.log", "train_bbdm.log")


def evaluation_dir(cfg) -> str:
    """OUTPUT_DIR, or OUTPUT_DIR/test/<weight file name> when OUTPUT_DIR holds a training run (whose results.json,
    config.yaml and logs stay as training wrote them)."""
    if any(os.path.exists(os.path.join(cfg.OUTPUT_DIR, marker)) for marker in TRAINING_RUN_MARKERS):
        stem = os.path.splitext(os.path.basename(cfg.TEST.WEIGHT))[0] or "weights"
        return os.path.join(cfg.OUTPUT_DIR, "test", stem)
    return cfg.OUTPUT_DIR


def main(argv=None) -> dict:
    args = parse_args(add_config_args(argparse.ArgumentParser(description=describe(__doc__))), argv)
    cfg, logger, device = setup_run(args, "test.log", output_dir=evaluation_dir)
    if not cfg.TEST.WEIGHT:
        raise ConfigError("TEST.WEIGHT is empty: pass the checkpoint to evaluate, e.g. TEST.WEIGHT weights/model.pth")

    logger.info("evaluation outputs in %s", cfg.OUTPUT_DIR)
    dataset = build_dataset(cfg)
    protocols = [dataset.protocol(name) for name in cfg.DATASETS.PROTOCOLS]
    logger.info("test data (%s):\n%s", dataset.root, format_statistics(statistics_rows(protocols)))

    model = build_model(cfg).to(device)
    load_weights(model, cfg.TEST.WEIGHT, mode="full", strict=cfg.MODEL.STRICT_LOAD,
                 file_grid=cfg.MODEL.WEIGHTS_GRID)
    evaluator = Evaluator(cfg, protocols)
    logger.info("embedding %d unique images on %s", len(evaluator.records), device)
    results, feats = evaluator.evaluate(model, device)
    if not is_main():
        return results
    logger.info("results (%%):\n%s", format_results(results))
    logger.info("wrote %s", write_results(evaluation_record(results, cfg.TEST.WEIGHT, provenance(cfg)), cfg.OUTPUT_DIR))
    if cfg.TEST.SAVE_FEATS:
        for path in evaluator.save_features(feats, cfg.OUTPUT_DIR):
            logger.info("wrote %s", path)
    if cfg.TEST.RANKED_LIST_QUERIES > 0:
        for path in evaluator.save_ranked_lists(feats, cfg.OUTPUT_DIR, model, device):
            logger.info("wrote %s", path)
    return results


if __name__ == "__main__":
    run_cli(main)
