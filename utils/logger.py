"""Console + file logging for the entry points."""
from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm


def hms(seconds: float) -> str:
    """A duration as h:mm:ss (progress lines, time-left estimates)."""
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressAwareHandler(logging.StreamHandler):
    """Console lines written through tqdm, which clears the progress bars first and redraws them after, so a log
    line never lands in the middle of a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logger(output_dir: str, filename: str, name: str = "shipreid") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S")
    console = ProgressAwareHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, filename))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
