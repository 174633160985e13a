"""Random erasing (Zhong et al. 2020; timm's 'pixel' mode): one box filled with N(0, 1) noise.

The box is drawn per item in the data pipeline from the item's own generator (so it depends only on the
item's global slot, not on the worker or the number of processes); the fill happens on the device after
normalisation, from a generator seeded by the item.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# box area as a fraction of the image, smallest box aspect ratio (the largest is its inverse), and how
# many draws may try to fit a box inside the image
MIN_AREA, MAX_AREA = 0.02, 1 / 3
MIN_ASPECT = 0.3
MAX_ATTEMPTS = 10
# an item's erase vector: top, left, height, width, noise seed (height 0 = no box)
NO_BOX = (0, 0, 0, 0, 0)


def draw_box(rng: np.random.Generator, prob: float, height: int, width: int) -> tuple[int, ...]:
    if prob <= 0 or rng.random() >= prob:
        return NO_BOX
    log_aspect = (math.log(MIN_ASPECT), math.log(1 / MIN_ASPECT))
    for _ in range(MAX_ATTEMPTS):
        area = rng.uniform(MIN_AREA, MAX_AREA) * height * width
        aspect = math.exp(rng.uniform(*log_aspect))
        h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < h < height and 0 < w < width:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return top, left, h, w, int(rng.integers(1, 2 ** 62))
    return NO_BOX


def apply_erasing(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fill each item's box (rows of `boxes`: top, left, h, w, seed) with per-pixel N(0, 1) noise."""
    generator = torch.Generator(device=images.device)
    for i, (top, left, h, w, seed) in enumerate(boxes.tolist()):
        if h == 0:
            continue
        generator.manual_seed(seed)
        images[i, :, top:top + h, left:left + w] = torch.randn(
            (images.shape[1], h, w), generator=generator, device=images.device, dtype=images.dtype)
    return images
