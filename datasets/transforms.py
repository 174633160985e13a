"""Geometric transforms on 8-bit chips. Pixel normalisation happens on the device (model/normalize)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class ResizeToTensor:
    """Resize a uint8 H x W x 3 array to `size` (H, W) with PIL and return a uint8 3 x H x W tensor.

    PIL bilinear is what torchvision's Resize does on PIL images, i.e. the official test pipeline.
    """

    def __init__(self, size, interpolation=Image.BILINEAR):
        self.height, self.width = int(size[0]), int(size[1])
        self.interpolation = interpolation

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        image = Image.fromarray(array).resize((self.width, self.height), self.interpolation)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def build_test_transform(cfg) -> ResizeToTensor:
    return ResizeToTensor(cfg.INPUT.SIZE_TEST)
