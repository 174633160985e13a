"""Random erasing on a normalised batch, on the device (Zhong et al. 2020; timm's 'pixel' mode)."""
from __future__ import annotations

import math

import numpy as np
import torch

# box area as a fraction of the image, box aspect ratio range, and tries to fit a box inside the image
MIN_AREA, MAX_AREA = 0.02, 1 / 3
MIN_ASPECT = 0.3
MAX_ATTEMPTS = 10


class RandomErasing:
    """With probability `prob` per image, one box filled with N(0, 1) noise per pixel and channel."""

    def __init__(self, prob: float):
        self.prob = prob
        self.log_aspect = (math.log(MIN_ASPECT), math.log(1 / MIN_ASPECT))

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.prob <= 0:
            return images
        _, channels, height, width = images.shape
        noise_gen = torch.Generator(device=images.device)
        noise_gen.manual_seed(int(rng.integers(2 ** 62)))
        for i in range(images.shape[0]):
            if rng.random() >= self.prob:
                continue
            for _ in range(MAX_ATTEMPTS):
                area = rng.uniform(MIN_AREA, MAX_AREA) * height * width
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
                if h < height and w < width:
                    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                    images[i, :, top:top + h, left:left + w] = torch.randn(
                        (channels, h, w), generator=noise_gen, device=images.device, dtype=images.dtype)
                    break
        return images
