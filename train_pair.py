"""Contrastive optical-SAR pretraining of the TransOSS backbone on OptiSar_Pair (symmetric InfoNCE).

  python train_pair.py --config_file configs/pretrain/transoss.yml DATASETS.ROOT_DIR <dir with OptiSar_Pair/>
Writes OUTPUT_DIR/backbone_final.pth, which train.py takes as MODEL.PRETRAIN_PATH.
"""
from __future__ import annotations

import argparse
import os
import sys

from torch.utils.tensorboard import SummaryWriter

from configs import add_config_args, parse_args
from datasets import build_pair_loader
from loss import build_loss
from model import build_model
from model.weights import load_weights
from processor.checkpoint import export_backbone, last_checkpoint
from processor.engine import Trainer, TrainingInterrupted, unwrap, wrap_ddp
from processor.hooks import CheckpointHook, ProgressHook
from processor.setup import setup_run
from solver import CosineWarmupScheduler, build_optimizer
from utils.distributed import cleanup, is_main, rank, world_size
from utils.errors import ShipReIDError


def build_pair_trainer(cfg, device, logger) -> Trainer:
    if list(cfg.LOSS.TERMS) != ["infonce"]:
        raise ShipReIDError(f"train_pair.py trains with LOSS.TERMS ['infonce'], got {list(cfg.LOSS.TERMS)}; "
                            "use configs/pretrain/transoss.yml")
    loader = build_pair_loader(cfg, rank(), world_size())
    logger.info("%d optical-SAR pairs, %d pairs per batch", len(loader.dataset), cfg.SOLVER.IMS_PER_BATCH // 2)
    model = build_model(cfg)
    if cfg.MODEL.PRETRAIN_PATH:
        load_weights(model, cfg.MODEL.PRETRAIN_PATH, mode="init", strict=cfg.MODEL.STRICT_LOAD)
    model.neck.requires_grad_(False)  # pretraining trains and exports the backbone only
    model.to(device)
    if cfg.MODEL.COMPILE:
        model.backbone.compile()
    criterion = build_loss(cfg).to(device)
    optimizer = build_optimizer(cfg, model, criterion)
    writer = SummaryWriter(os.path.join(cfg.OUTPUT_DIR, "tensorboard")) if is_main() else None
    export = CheckpointHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.OUTPUT_DIR, final_exports=[
        lambda t: [export_backbone(unwrap(t.model), cfg.OUTPUT_DIR, "backbone_final")]])
    return Trainer(cfg, wrap_ddp(model, device), criterion, optimizer, CosineWarmupScheduler(optimizer, cfg),
                   loader, device, [ProgressHook(cfg.SOLVER.LOG_PERIOD, writer), export], rank())


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint")
    args = parse_args(parser, argv)
    cfg, logger, device = setup_run(args, "train_pair.log")
    trainer = build_pair_trainer(cfg, device, logger)
    if args.resume:
        path = last_checkpoint(cfg.OUTPUT_DIR)
        if path is None:
            raise ShipReIDError(f"--resume: no checkpoint in {cfg.OUTPUT_DIR}/checkpoints; run without --resume")
        trainer.resume(path)
    trainer.train()
    return trainer


if __name__ == "__main__":
    try:
        main()
    except ShipReIDError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
    finally:
        cleanup()
