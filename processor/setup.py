"""What every entry point does first: seeds, logger, device, resolved config."""
from __future__ import annotations

import random

import numpy as np
import torch

from configs import setup_config
from utils.device import resolve_device
from utils.logger import setup_logger


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_run(args, log_name: str):
    """(cfg, logger, device) for an entry point."""
    cfg = setup_config(args)
    logger = setup_logger(cfg.OUTPUT_DIR, log_name)
    device = resolve_device(cfg.MODEL.DEVICE)
    seed_everything(cfg.SEED)
    return cfg, logger, device
