"""Contrastive optical-SAR pretraining of the TransOSS backbone on OptiSar_Pair (symmetric InfoNCE).

  python train_pair.py --config_file configs/pretrain/transoss.yml DATASETS.ROOT_DIR <dir with OptiSar_Pair/>
Writes OUTPUT_DIR/backbone_final.pth, which train.py takes as MODEL.PRETRAIN_PATH.
"""
from __future__ import annotations

from datasets import build_pair_loader
from model import build_model
from processor.checkpoint import export_backbone
from processor.engine import Trainer, unwrap, wrap_ddp
from processor.hooks import CheckpointHook, ProgressHook
from processor.setup import log_distribution, prepare_training, run_training
from solver import CosineWarmupScheduler
from utils.cli import describe, run_cli
from utils.distributed import rank, world_size
from utils.errors import ShipReIDError


def build_pair_trainer(cfg, device, logger) -> Trainer:
    if list(cfg.LOSS.TERMS) != ["infonce"]:
        raise ShipReIDError(f"train_pair.py trains with LOSS.TERMS ['infonce'], got {list(cfg.LOSS.TERMS)}; "
                            "use configs/pretrain/transoss.yml")
    loader = build_pair_loader(cfg, rank(), world_size())
    logger.info("%d optical-SAR pairs, %d pairs per batch", len(loader.dataset), cfg.SOLVER.IMS_PER_BATCH // 2)
    log_distribution(cfg, logger, neck=False)
    # the backbone alone: like the official pair branch, pretraining never runs a BN neck or a classifier
    model, criterion, optimizer, writer = prepare_training(cfg, build_model(cfg, with_neck=False), device, logger)
    export = CheckpointHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.OUTPUT_DIR, final_exports=[
        lambda t: [export_backbone(unwrap(t.model), cfg.OUTPUT_DIR, "backbone_final")]])
    compiled = model.backbone if cfg.MODEL.COMPILE else None  # compiled after the DDP wrap (wrap_ddp)
    return Trainer(cfg, wrap_ddp(model, device, compiled), criterion, optimizer, CosineWarmupScheduler(optimizer, cfg),
                   loader, device, [ProgressHook(cfg.SOLVER.LOG_PERIOD, writer), export])


def main(argv=None):
    return run_training(argv, describe(__doc__), "train_pair.log", build_pair_trainer)


if __name__ == "__main__":
    run_cli(main)
