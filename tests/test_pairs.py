"""Same-identity optical/SAR pairs of the HOSS training split and paired augmentation (BBDM training data)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from configs.loader import load_config
from datasets import build_pair_loader
from datasets.hoss import HOSS
from datasets.pairs import identity_pairs
from datasets.records import OPTICAL, SAR, ChipRecord, DatasetError


def test_identity_pairs_are_the_per_identity_cartesian_product():
    records = [ChipRecord("a1", 1, OPTICAL), ChipRecord("a2", 1, OPTICAL), ChipRecord("a3", 1, SAR),
               ChipRecord("b1", 2, OPTICAL), ChipRecord("c1", 3, SAR), ChipRecord("c2", 3, OPTICAL),
               ChipRecord("c3", 3, SAR)]
    pairs = [(o.path, s.path) for o, s in identity_pairs(records)]
    assert pairs == [("a1", "a3"), ("a2", "a3"), ("c2", "c1"), ("c2", "c3")]   # identity 2 has no SAR image
    with pytest.raises(DatasetError, match="both an optical and a SAR"):
        identity_pairs([ChipRecord("b1", 2, OPTICAL)])


def test_hoss_pair_loader_uses_train_pairs_with_one_flip_per_pair(hoss_root):
    cfg = load_config("configs/bbdm/tiny.yml", ["DATASETS.ROOT_DIR", hoss_root, "INPUT.FLIP_PROB", "0.5"])
    loader = build_pair_loader(cfg, source="hoss_train", same_augmentation=True)
    train = HOSS(hoss_root).train
    assert len(loader.dataset) == len(identity_pairs(train))
    dataset = loader.dataset
    flipped_both = flipped_one = 0
    for index in range(len(dataset)):
        item = dataset[(index, (0, 1, index, 0))]
        optical, sar = dataset.pairs[index]
        assert optical.pid == sar.pid and optical.modality == OPTICAL and sar.modality == SAR
        plain = [dataset.chips.transform.resize(dataset.chips.decode(r)[0]) for r in (optical, sar)]
        flips = [not torch.equal(item[side]["image"], image) for side, image in zip(("optical", "sar"), plain)]
        flipped_both += all(flips)
        flipped_one += flips[0] != flips[1]
    assert flipped_one == 0 and 0 < flipped_both < len(dataset)
    batch = next(iter(loader))
    half = len(batch["image"]) // 2
    assert (batch["modality"][:half] == OPTICAL).all() and (batch["modality"][half:] == SAR).all()
    assert np.array_equal(batch["pid"][:half].numpy(), batch["pid"][half:].numpy())
