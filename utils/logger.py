"""Console + file logging for the entry points."""
from __future__ import annotations

import logging
import os
import sys


def setup_logger(output_dir: str, filename: str, name: str = "shipreid") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, filename))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
