"""Geometric transforms on 8-bit chips, returning uint8 3 x H x W tensors.

Pixel normalisation and the random-erasing fill happen on the device (model/reid_model.py,
datasets/erasing.py).
Training transforms draw from a numpy Generator that the dataset seeds per item, so augmentation is a
function of (seed, epoch, batch, slot) and does not depend on worker count or resume point.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from .erasing import draw_box


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class ResizeToTensor:
    """Resize to `size` (H, W) with PIL (bilinear: torchvision's Resize on PIL, the official test path)."""

    def __init__(self, size, interpolation=Image.BILINEAR):
        self.height, self.width = int(size[0]), int(size[1])
        self.interpolation = interpolation

    def __call__(self, array: np.ndarray, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        return _to_tensor(Image.fromarray(array).resize((self.width, self.height), self.interpolation))


_JITTERS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)


def draw_jitter(strength: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(brightness, contrast, saturation factors from [1 - s, 1 + s], the order to apply them in)."""
    factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=len(_JITTERS))
    return factors, rng.permutation(len(_JITTERS))


def apply_jitter(image: torch.Tensor, factors: np.ndarray, order: np.ndarray) -> torch.Tensor:
    for index in order:
        image = _JITTERS[index](image, float(factors[index]))
    return image


def color_jitter(image: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each by a factor from [1 - s, 1 + s], in a random order
    (torchvision's ColorJitter(s, s, s) with the factors drawn from the item's generator)."""
    return apply_jitter(image, *draw_jitter(strength, rng))


class TrainTransform:
    """Official training geometry: bicubic resize, horizontal flip, (colour jitter,) zero padding, random
    crop; plus the random-erasing box that the device fills after normalisation (`erase_box`).

    `__call__` draws the flip, the jitter and the crop offsets from the item's generator, in that order;
    `apply` runs the pipeline on given draws (the parity test feeds it the official code's flip and crop)."""

    def __init__(self, size, flip_prob: float, padding: int, erase_prob: float, jitter: float = 0.0):
        self.resize = ResizeToTensor(size, Image.BICUBIC)
        self.flip_prob, self.padding, self.erase_prob, self.jitter = flip_prob, padding, erase_prob, jitter

    def erase_box(self, rng: np.random.Generator) -> torch.Tensor:
        return torch.tensor(draw_box(rng, self.erase_prob, self.resize.height, self.resize.width))

    def __call__(self, array: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        flip = bool(rng.random() < self.flip_prob)
        jitter = draw_jitter(self.jitter, rng) if self.jitter else None
        top, left = rng.integers(0, 2 * self.padding + 1, size=2) if self.padding else (0, 0)
        return self.apply(array, flip, int(top), int(left), jitter)

    def apply(self, array: np.ndarray, flip: bool, top: int = 0, left: int = 0, jitter=None) -> torch.Tensor:
        """Resize, flip if `flip`, jitter (`draw_jitter`'s factors and order), pad, and crop at (`top`, `left`)
        of the padded image (offsets in [0, 2 * INPUT.PADDING])."""
        image = self.resize(array)
        if flip:
            image = image.flip(-1)
        if jitter is not None:
            image = apply_jitter(image, *jitter)
        if self.padding:
            p = self.padding
            image = torch.nn.functional.pad(image, (p, p, p, p))
            image = image[:, top:top + self.resize.height, left:left + self.resize.width]
        return image.contiguous()


def build_test_transform(cfg) -> ResizeToTensor:
    return ResizeToTensor(cfg.INPUT.SIZE_TEST)


def build_train_transform(cfg) -> TrainTransform:
    return TrainTransform(cfg.INPUT.SIZE_TRAIN, cfg.INPUT.FLIP_PROB, cfg.INPUT.PADDING, cfg.INPUT.RE_PROB,
                          cfg.INPUT.COLOR_JITTER)
