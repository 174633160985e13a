"""What every entry point does first: seeds, logger, device, resolved config."""
from __future__ import annotations

import argparse
import os

from torch.utils.tensorboard import SummaryWriter

from configs import add_config_args, parse_args, setup_config
from configs.checks import check_config
from configs.loader import write_config
from loss import build_loss
from model.weights import load_weights
from solver import build_optimizer
from utils.device import resolve_device
from utils.distributed import init_distributed, is_main, world_size
from utils.logger import setup_logger
from utils.provenance import record_run

from .rng import seed_everything


def setup_run(args, log_name: str, output_dir=None):
    """(cfg, logger, device) for an entry point; joins the torchrun process group when there is one.

    `output_dir(cfg)`: the folder this run writes to instead of OUTPUT_DIR (test.py beside a training run).
    Only rank 0 writes the resolved config and the log file; other ranks log warnings to the console.
    """
    cfg = setup_config(args, write=False)
    check_config(cfg)  # before anything is scanned, decoded or built
    if output_dir is not None:
        cfg.defrost()
        cfg.OUTPUT_DIR = output_dir(cfg)
        cfg.freeze()
    device = init_distributed(resolve_device(cfg.MODEL.DEVICE), cfg.DIST.TIMEOUT_S)
    if is_main():
        write_config(cfg)
    logger = setup_logger(cfg.OUTPUT_DIR if is_main() else "", log_name)
    if not is_main():
        logger.setLevel("WARNING")  # the shipreid.* loggers inherit it
    seed_everything(cfg.SEED)
    record_run(cfg, args.config_file, args.opts, device)  # for the results files' provenance
    return cfg, logger, device


def log_distribution(cfg, logger, neck: bool = True) -> None:
    """How the global batch is spread: world size, ranks per node, images per rank and step, BN statistics."""
    ranks, per_node = world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
    batch = cfg.SOLVER.IMS_PER_BATCH
    text = f"{ranks} rank(s), {per_node} per node; {batch} images per step, {batch // ranks} per rank"
    if neck:
        text += "; BN neck statistics over " + (
            "the global batch (MODEL.SYNC_BN True)" if cfg.MODEL.SYNC_BN or ranks == 1
            else "each rank's own images (MODEL.SYNC_BN False, as the official code trained)")
    logger.info(text)


def run_training(argv, description: str, log_name: str, build_trainer):
    """The body of train.py and train_pair.py: parse, set up, build, optionally resume, train."""
    parser = add_config_args(argparse.ArgumentParser(description=description))
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint")
    args = parse_args(parser, argv)
    cfg, logger, device = setup_run(args, log_name)
    trainer = build_trainer(cfg, device, logger)
    if args.resume:
        trainer.resume_from(cfg.OUTPUT_DIR)
    trainer.train()
    return trainer


def prepare_training(cfg, model, device, logger):
    """ReID models: initialisation weights (the loss's too: a pretraining checkpoint's temperature), device,
    then (model, *training_parts). MODEL.COMPILE is applied by wrap_ddp, after the DDP wrap."""
    criterion = build_loss(cfg)
    if cfg.MODEL.PRETRAIN_PATH:
        load_weights(model, cfg.MODEL.PRETRAIN_PATH, mode="init", strict=cfg.MODEL.STRICT_LOAD,
                     file_grid=cfg.MODEL.WEIGHTS_GRID, loss=criterion)
    else:
        logger.info("MODEL.PRETRAIN_PATH is empty: training from random initialisation")
    model.to(device)
    return (model, *training_parts(cfg, model, device, criterion))


def training_parts(cfg, model, device, criterion=None):
    """(criterion, optimizer, TensorBoard writer) for a model already on its device: what every entry point
    (train.py, train_pair.py, train_bbdm.py) trains with. `criterion`: a loss already built (else built here)."""
    criterion = (criterion if criterion is not None else build_loss(cfg)).to(device)
    return criterion, build_optimizer(cfg, model, criterion), setup_writer(cfg)


def setup_writer(cfg):
    """TensorBoard writer under OUTPUT_DIR on rank 0 (None on the other ranks)."""
    return SummaryWriter(os.path.join(cfg.OUTPUT_DIR, "tensorboard")) if is_main() else None
