"""The built-in synthetic HOSS set: official layout and formats, determinism, and a model that learns on it."""
from __future__ import annotations

import filecmp
import os

import numpy as np
import pytest

from conftest import REPO

from datasets.hoss import HOSS, derive_cross_modal
from datasets.pairs import scan_pairs
from datasets.radiometry import ChipDecoder
from datasets.records import OPTICAL, SAR, DatasetError
from datasets.synthetic import SyntheticSpec, ensure_synthetic

SMALL = SyntheticSpec(seed=3, train_ids=16, test_ids=12, images_per_id=4, distractors=6, pair_folders=2,
                      pairs_per_folder=8)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synthetic") / "data")
    assert ensure_synthetic(root, SMALL)
    return root


def test_layout_names_and_protocol_folders(small_root):
    hoss = HOSS(small_root)
    labels, pid_to_label = hoss.train_labels()
    assert len(pid_to_label) == SMALL.train_ids and len(hoss.train) == SMALL.train_ids * SMALL.images_per_id
    hoss.check_disjoint_identities()
    query, gallery = hoss.split("query"), hoss.split("bounding_box_test")
    assert len(query) == SMALL.test_ids  # one query per test identity
    assert sum(r.pid == -1 for r in gallery) == SMALL.distractors
    assert {r.modality for r in query} == {OPTICAL, SAR}
    for name in ("O2S", "S2O"):
        release = hoss.protocol(name)
        assert not release.derived
        derived = derive_cross_modal(name, query, gallery)
        assert [r.name for r in release.query] == [r.name for r in derived.query]
        assert [r.name for r in release.gallery] == [r.name for r in derived.gallery]


def test_formats_and_ground_sample_distance(small_root):
    decoder = ChipDecoder()
    hoss = HOSS(small_root)
    from PIL import Image
    heights = {}
    for record in hoss.train:
        image = Image.open(record.path)
        assert image.mode == ("RGB" if record.modality == OPTICAL else "F")
        pixels, (width, height) = decoder(record.path, record.modality)
        assert pixels.dtype == np.uint8 and pixels.shape == (height, width, 3)
        heights.setdefault(record.pid, {}).setdefault(record.modality, []).append(height)
    # the same ship is 0.75 m/px optical and 1 m/px SAR: SAR chips are about 3/4 as tall
    ratios = [np.mean(h[SAR]) / np.mean(h[OPTICAL]) for h in heights.values()]
    assert 0.65 < np.median(ratios) < 0.85
    sar = next(r for r in hoss.train if r.modality == SAR)
    amplitude = np.asarray(Image.open(sar.path), dtype=np.float32)
    assert amplitude.min() > 0 and amplitude.max() > 1.0


def test_pairs_are_keyed_by_folder(small_root):
    pairs = scan_pairs(small_root)
    assert len(pairs) == SMALL.pair_folders * SMALL.pairs_per_folder
    for optical, sar in pairs:
        assert os.path.dirname(optical.path) == os.path.dirname(sar.path)
        assert optical.name.split("_")[1] == sar.name.split("_")[1]


def test_deterministic_from_the_seed(small_root, tmp_path):
    again = str(tmp_path / "again")
    ensure_synthetic(again, SMALL)
    assert not ensure_synthetic(again, SMALL)  # present: nothing regenerated
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        a, b = os.path.join(small_root, "HOSS", split), os.path.join(again, "HOSS", split)
        names = sorted(os.listdir(a))
        assert names == sorted(os.listdir(b))
        match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
        assert not mismatch and not errors
    other = str(tmp_path / "other")
    ensure_synthetic(other, SyntheticSpec(**{**SMALL.__dict__, "seed": 4}))
    shared = sorted(set(os.listdir(os.path.join(other, "HOSS", "query")))
                    & set(os.listdir(os.path.join(small_root, "HOSS", "query"))))
    assert shared and not any(filecmp.cmp(os.path.join(small_root, "HOSS", "query", name),
                                          os.path.join(other, "HOSS", "query", name), shallow=False)
                              for name in shared)
    with pytest.raises(DatasetError, match="another spec"):
        ensure_synthetic(again, SyntheticSpec(**{**SMALL.__dict__, "seed": 9}))


def test_training_lowers_the_loss_and_raises_map(small_root, tmp_path):
    """A few epochs must lower the loss and separate the training identities far better than at start
    (retrieval among the training chips: each identity's first image against the rest)."""
    import argparse

    import train as train_entry
    from configs import add_config_args, parse_args
    from datasets.hoss import Protocol
    from processor.evaluator import Evaluator
    from processor.setup import setup_run

    config = os.path.join(REPO, "configs", "demo", "transoss.yml")
    overrides = ["DATASETS.ROOT_DIR", small_root, "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "run"),
                 "SOLVER.MAX_EPOCHS", "25", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.BASE_LR", "0.002", "SOLVER.IMS_PER_BATCH", "16", "SOLVER.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "0",
                 "SOLVER.LOG_PERIOD", "1", "DATASETS.PROTOCOLS", "['ALL']", "INPUT.RE_PROB", "0.0",
                 "MODEL.EMBED_DIM", "64", "MODEL.DEPTH", "2", "MODEL.NUM_HEADS", "2"]
    args = parse_args(add_config_args(argparse.ArgumentParser()), ["--config_file", config, *overrides])
    cfg, logger, device = setup_run(args, "train.log")
    trainer = train_entry.build_trainer(cfg, device, logger)
    train = HOSS(small_root).train
    first = {}
    for r in train:
        first.setdefault(r.pid, r)
    seen = Protocol("TRAIN", list(first.values()), [r for r in train if first[r.pid] is not r], derived=True)
    evaluator = Evaluator(cfg, [seen])
    before = evaluator.evaluate(trainer.model, device)[0]["TRAIN"]["mAP"]

    losses = []

    class RecordLoss:
        def __getattr__(self, event):
            return lambda trainer: None

        def after_step(self, trainer):
            losses.append(trainer.check_finite()["total"])

    trainer.hooks.append(RecordLoss())
    trainer.train()
    after = evaluator.evaluate(trainer.model, device)[0]["TRAIN"]["mAP"]
    steps = len(losses) // cfg.SOLVER.MAX_EPOCHS
    assert np.mean(losses[-steps:]) < 0.8 * np.mean(losses[:steps])
    assert after > before + 0.15, (before, after)
