"""Brownian-bridge diffusion (BBDM) optical -> SAR, MOS's cross-modal synthesis, trained by the shared engine.

  python train_bbdm.py --config_file configs/bbdm/pretrain.yml DATASETS.ROOT_DIR <dir with OptiSar_Pair/>
  python train_bbdm.py --config_file configs/bbdm/hoss.yml DATASETS.ROOT_DIR <dir with HOSS/> \
      BBDM.PRETRAIN_PATH logs/bbdm_pretrain/bbdm_final.pth
Writes OUTPUT_DIR/bbdm_final.pth (the whole translator, EMA weights included), which
tools/generate_pseudo_sar.py takes as BBDM.WEIGHTS.
"""
from __future__ import annotations

import os

from datasets import build_pair_loader
from model.bbdm.translator import build_translator, load_translator_weights
from processor.checkpoint import atomic_save
from processor.engine import Trainer, unwrap, wrap_ddp
from processor.hooks import CheckpointHook, Hook, ProgressHook
from processor.setup import run_training, training_parts
from solver import CosineWarmupScheduler
from utils.cli import describe, run_cli
from utils.distributed import rank, world_size
from utils.errors import ShipReIDError


class EMAHook(Hook):
    """Tells the translator every optimizer step; it updates on every BBDM.EMA_INTERVAL-th. The count is the
    trainer's optimizer_steps, which checkpoints keep, so a resumed run updates on the same steps."""

    def after_step(self, trainer):
        if not trainer.step_wrapper.pending:  # the optimizer stepped on this batch
            unwrap(trainer.model).update_ema(trainer.optimizer_steps)


def export_translator(model, output_dir: str) -> str:
    path = os.path.join(output_dir, "bbdm_final.pth")
    atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return path


def build_bbdm_trainer(cfg, device, logger) -> Trainer:
    if list(cfg.LOSS.TERMS) != ["bridge"]:
        raise ShipReIDError(f"train_bbdm.py trains with LOSS.TERMS ['bridge'], got {list(cfg.LOSS.TERMS)}; "
                            "use a configs/bbdm/ recipe")
    loader = build_pair_loader(cfg, rank(), world_size(), source=cfg.BBDM.PAIRS, same_augmentation=True)
    logger.info("%d optical-SAR pairs (%s), %d pairs per batch", len(loader.dataset), cfg.BBDM.PAIRS,
                cfg.SOLVER.IMS_PER_BATCH // 2)
    model = build_translator(cfg)
    logger.info("BBDM UNet: %.2f M parameters", sum(p.numel() for p in model.unet.parameters()) / 1e6)
    if cfg.BBDM.PRETRAIN_PATH:
        load_translator_weights(model, cfg.BBDM.PRETRAIN_PATH)
    model.to(device)
    criterion, optimizer, writer = training_parts(cfg, model, device)
    export = CheckpointHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.OUTPUT_DIR,
                            final_exports=[lambda t: [export_translator(unwrap(t.model), cfg.OUTPUT_DIR)]])
    # the trained UNet only, after the DDP wrap (wrap_ddp): sampling (EMA copy) stays eager, so caches stay bit-stable
    compiled = model.unet if cfg.MODEL.COMPILE else None
    return Trainer(cfg, wrap_ddp(model, device, compiled), criterion, optimizer, CosineWarmupScheduler(optimizer, cfg),
                   loader, device, [ProgressHook(cfg.SOLVER.LOG_PERIOD, writer), EMAHook(), export])


def main(argv=None):
    return run_training(argv, describe(__doc__), "train_bbdm.log", build_bbdm_trainer)


if __name__ == "__main__":
    run_cli(main)
