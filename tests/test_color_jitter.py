"""Colour jitter of the training transform (SDF-Net recipe): seeded, bounded, off at strength 0."""
from __future__ import annotations

import numpy as np
import torch

from datasets.transforms import TrainTransform, color_jitter


def _image(seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(30, 220, (3, 32, 16), dtype=np.uint8))


def test_same_generator_state_same_result_and_strength_zero_is_identity():
    image = _image()
    a = color_jitter(image, 0.2, np.random.default_rng(7))
    b = color_jitter(image, 0.2, np.random.default_rng(7))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and not torch.equal(a, image)
    assert torch.equal(color_jitter(image, 0.0, np.random.default_rng(7)), image)


def test_brightness_alone_stays_within_the_factor_range():
    # a grey image has no saturation and a uniform image no contrast: only brightness acts on it
    grey = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    values = {int(color_jitter(grey, 0.2, np.random.default_rng(seed))[0, 0, 0]) for seed in range(50)}
    assert min(values) >= 78 and max(values) <= 120 and len(values) > 10   # 1 - 2 for uint8 truncation


def test_train_transform_jitters_only_when_configured():
    array = np.random.default_rng(1).integers(0, 255, (40, 20, 3), dtype=np.uint8)
    plain = TrainTransform((32, 16), flip_prob=0.0, padding=0, erase_prob=0.0)
    jitter = TrainTransform((32, 16), flip_prob=0.0, padding=0, erase_prob=0.0, jitter=0.2)
    assert torch.equal(plain(array, np.random.default_rng(3)), plain.resize(array))
    assert not torch.equal(jitter(array, np.random.default_rng(3)), plain.resize(array))
