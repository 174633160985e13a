"""Random erasing (timm 'pixel' mode, one box): the per-item box draw and the on-device N(0, 1) fill."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.erasing import MAX_AREA, MIN_AREA, MIN_ASPECT, NO_BOX, apply_erasing, draw_box

H, W = 256, 128
SENTINEL = 100.0  # N(0, 1) noise never reaches 100, so "changed" == "inside the box"


def boxes_for(seeds, prob: float, height: int = H, width: int = W) -> torch.Tensor:
    return torch.tensor([draw_box(np.random.default_rng(s), prob, height, width) for s in seeds])


def box_mask(box, height: int = H, width: int = W) -> torch.Tensor:
    top, left, h, w, _ = box
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top:top + h, left:left + w] = True
    return mask


def test_prob_one_erases_exactly_one_box_per_image():
    seeds = range(16)
    boxes = boxes_for(seeds, 1.0)
    images = torch.full((16, 3, H, W), SENTINEL)
    out = apply_erasing(images.clone(), boxes)
    for i, box in enumerate(boxes.tolist()):
        top, left, h, w, seed = box
        assert h > 0 and w > 0 and seed > 0
        assert top + h <= H and left + w <= W
        changed = (out[i] != SENTINEL)
        # every channel changed exactly on the box, nothing outside
        for c in range(3):
            assert torch.equal(changed[c], box_mask(box))
        fill = out[i, :, top:top + h, left:left + w]
        assert fill.abs().max() < 8
        if h * w >= 1000:  # a big box: per-pixel standard normal noise
            assert abs(fill.mean().item()) < 0.1 and abs(fill.std().item() - 1) < 0.1


def test_box_area_and_aspect_come_from_the_timm_ranges():
    """The target area is uniform in [0.02, 1/3] of the image and the aspect log-uniform in [0.3, 1/0.3];
    h and w are that target rounded to integers (as in timm), so the realised area may miss the range by
    the rounding: (h - 1/2)(w - 1/2) <= target <= (h + 1/2)(w + 1/2)."""
    fractions = []
    for seed in range(3000):
        top, left, h, w, _ = draw_box(np.random.default_rng(seed), 1.0, H, W)
        assert h > 0, f"seed {seed}: no box at prob 1"
        assert (h - 0.5) * (w - 0.5) <= MAX_AREA * H * W
        assert (h + 0.5) * (w + 0.5) >= MIN_AREA * H * W
        assert (h - 0.5) / (w + 0.5) <= 1 / MIN_ASPECT and (h + 0.5) / (w - 0.5) >= MIN_ASPECT
        assert 0 <= top <= H - h and 0 <= left <= W - w
        fractions.append(h * w / (H * W))
    # at 256 x 128 the rounding moves the fraction by at most ~1 %: 0.0195 .. 0.337
    assert 0.0195 <= min(fractions) and max(fractions) <= 0.337
    # and the whole range is used
    assert min(fractions) < 0.03 and max(fractions) > 0.3
    assert np.mean(fractions) == pytest.approx((MIN_AREA + MAX_AREA) / 2, abs=0.02)


def test_prob_zero_leaves_the_batch_unchanged():
    boxes = boxes_for(range(8), 0.0)
    assert boxes.tolist() == [list(NO_BOX)] * 8
    images = torch.randn(8, 3, H, W, generator=torch.Generator().manual_seed(0))
    assert torch.equal(apply_erasing(images.clone(), boxes), images)


def test_prob_half_erases_about_half():
    boxes = boxes_for(range(2000), 0.5)
    erased = (boxes[:, 2] > 0).float().mean().item()
    assert 0.45 < erased < 0.55


def test_same_seed_same_result_and_independent_of_the_batch():
    box_a = draw_box(np.random.default_rng(42), 1.0, H, W)
    assert draw_box(np.random.default_rng(42), 1.0, H, W) == box_a
    assert draw_box(np.random.default_rng(43), 1.0, H, W) != box_a
    base = torch.zeros(3, 3, H, W)
    boxes = boxes_for([42, 7, 9], 1.0)
    first = apply_erasing(base.clone(), boxes)
    second = apply_erasing(base.clone(), boxes)
    assert torch.equal(first, second)
    # an item's fill depends only on its own box seed, not on its position or neighbours in the batch
    alone = apply_erasing(base[:1].clone(), boxes[:1])
    assert torch.equal(alone[0], first[0])
    reordered = apply_erasing(base.clone(), boxes.flip(0))
    assert torch.equal(reordered[2], first[0])
    # two items with the same box geometry but different noise seeds get different noise
    twin = boxes[:1].repeat(2, 1)
    twin[1, 4] += 1
    noise = apply_erasing(torch.zeros(2, 3, H, W), twin)
    assert not torch.equal(noise[0], noise[1])


def test_images_too_small_for_any_box_stay_untouched():
    # a 1 x 1 image cannot hold 0 < h < 1: every attempt fails and no box is drawn
    assert draw_box(np.random.default_rng(0), 1.0, 1, 1) == NO_BOX
