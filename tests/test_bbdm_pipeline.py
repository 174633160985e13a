"""MOS's cross-modal path end to end on the real chips with tiny models: BBDM training through the engine
(EMA, checkpoints, exact resume), pseudo-SAR generation into the cache, and a fused evaluation of a MOS model."""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from conftest import TINY_MODEL
from test_training import assert_resumed, count_steps, saved_position

import test as test_entry
import train as train_entry
import train_bbdm
from configs import add_config_args, parse_args
from configs.loader import load_config
from model.bbdm.translator import build_translator, to_uint8_grey
from processor.hooks import Hook
from processor.setup import setup_run
from tools import generate_pseudo_sar

class CrashAfterEpoch(Hook):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_epoch_advanced(self, trainer):
        if trainer.epoch - 1 == self.epoch:
            raise KeyboardInterrupt


BBDM_RUN = ["--config_file", "configs/bbdm/tiny.yml", "SOLVER.CHECKPOINT_PERIOD", "1"]


def test_translator_ema_copies_then_averages():
    model = build_translator(load_config("configs/bbdm/tiny.yml", ["BBDM.EMA_START", "2", "BBDM.EMA_DECAY", "0.9"]))
    ema = dict(model.ema_unet.named_parameters())
    name, param = next(iter(model.unet.named_parameters()))
    with torch.no_grad():
        param.fill_(1.0)
    model.update_ema(0)                                   # before EMA_START: a copy
    assert torch.equal(ema[name], param)
    with torch.no_grad():
        param.fill_(3.0)
    model.update_ema(2)                                   # 0.9 * 1 + 0.1 * 3
    torch.testing.assert_close(ema[name], torch.full_like(param, 1.2))
    assert not any(p.requires_grad for p in model.ema_unet.parameters())


def test_to_uint8_grey():
    samples = torch.tensor([[[[-1.0, 1.0]], [[-1.0, 0.0]], [[-1.0, -1.0]]]])    # (1, 3, 1, 2)
    # channel means -1 and 0 -> 0 and 127.5, rounded half to even -> 128
    assert to_uint8_grey(samples).tolist() == [[[0, 128]]]


def test_ema_start_counts_optimizer_steps_under_accumulation(hoss_root, tmp_path):
    """ACCUM_STEPS 2 over one epoch: the EMA is told optimizer steps (half the batches, rounded up), so with
    EMA_START above that count it is still an exact copy of the live weights."""
    common = [*BBDM_RUN, "DATASETS.ROOT_DIR", hoss_root, "SOLVER.MAX_EPOCHS", "1", "SOLVER.ACCUM_STEPS", "2"]
    trainer = train_bbdm.main([*common, "OUTPUT_DIR", str(tmp_path / "a")])
    batches = trainer.global_step
    assert batches >= 3 and trainer.optimizer_steps == (batches + 1) // 2
    start_after_last_step = ["BBDM.EMA_START", str(trainer.optimizer_steps + 1)]
    copied = train_bbdm.main([*common, *start_after_last_step, "OUTPUT_DIR", str(tmp_path / "b")]).model
    for (name, ema), live in zip(copied.ema_unet.named_parameters(), copied.unet.parameters()):
        assert torch.equal(ema, live), name
    # one step earlier the EMA has started averaging on the last step
    averaged = train_bbdm.main([*common, "BBDM.EMA_START", str(trainer.optimizer_steps),
                                "OUTPUT_DIR", str(tmp_path / "c")]).model
    assert any(not torch.equal(e, p) for e, p in zip(averaged.ema_unet.parameters(), averaged.unet.parameters()))


def test_bbdm_training_resume_generation_and_fused_evaluation(hoss_root, tmp_path, monkeypatch):
    common = [*BBDM_RUN, "DATASETS.ROOT_DIR", hoss_root]
    full = train_bbdm.main([*common, "OUTPUT_DIR", str(tmp_path / "bbdm"), "SOLVER.MAX_EPOCHS", "2"])
    weights = tmp_path / "bbdm" / "bbdm_final.pth"
    assert weights.is_file() and float(full.last_losses["bridge"]) > 0
    # killed after epoch 1 (its checkpoint written), resumed: the same weights and EMA as the full run
    args = parse_args(add_config_args(argparse.ArgumentParser()),
                      [*common, "OUTPUT_DIR", str(tmp_path / "cut"), "SOLVER.MAX_EPOCHS", "2"])
    cfg, logger, device = setup_run(args, "train_bbdm.log")
    trainer = train_bbdm.build_bbdm_trainer(cfg, device, logger)
    trainer.hooks.append(CrashAfterEpoch(1))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    saved = saved_position(tmp_path / "cut")
    assert saved[:2] == (2, 0)
    counter = count_steps(monkeypatch, train_bbdm, "build_bbdm_trainer")
    resumed = train_bbdm.main([*common, "OUTPUT_DIR", str(tmp_path / "cut"), "SOLVER.MAX_EPOCHS", "2", "--resume"])
    assert_resumed(counter, saved, full.optimizer_steps)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key

    # pseudo-SAR chips for the O2S queries (optical), then a fused O2S evaluation of a one-epoch MOS model
    cache = tmp_path / "cache"
    gen = ["--config_file", "configs/bbdm/tiny.yml", "DATASETS.ROOT_DIR", hoss_root, "DATASETS.PROTOCOLS", "[O2S]",
           "BBDM.WEIGHTS", str(weights), "TEST.FUSION.CACHE_DIR", str(cache), "OUTPUT_DIR", str(tmp_path / "gen")]
    summary = generate_pseudo_sar.main(gen)
    assert summary["generated"] == summary["sources"] > 0
    entries = sorted(p for p in os.listdir(cache) if os.path.isdir(cache / p))
    assert len(entries) == summary["sources"]
    with open(cache / entries[0] / "source.json") as f:
        assert json.load(f)["num_samples"] == 2
    assert generate_pseudo_sar.main(gen)["generated"] == 0          # complete entries are kept
    # each chip has its own generator: one chip per batch gives the same bytes as the default batches
    single = tmp_path / "cache_single"
    generate_pseudo_sar.main([*gen[:-4], "TEST.FUSION.CACHE_DIR", str(single), "OUTPUT_DIR", str(tmp_path / "gen1"),
                              "--chips-per-batch", "1"])
    pngs = sorted(p.relative_to(cache) for p in cache.rglob("*.png"))
    assert pngs == sorted(p.relative_to(single) for p in single.rglob("*.png"))
    assert all((cache / p).read_bytes() == (single / p).read_bytes() for p in pngs)

    reid = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "DATASETS.ROOT_DIR", hoss_root]
    train_entry.main(["--config_file", "configs/hoss/mos.yml", "OUTPUT_DIR", str(tmp_path / "mos"),
                      "SOLVER.MAX_EPOCHS", "1", *reid])
    evaluate = ["--config_file", "configs/hoss/mos.yml", "TEST.WEIGHT", str(tmp_path / "mos" / "model_final.pth"),
                "DATASETS.PROTOCOLS", "[O2S]", *reid]
    plain = test_entry.main([*evaluate, "OUTPUT_DIR", str(tmp_path / "plain")])
    fused = test_entry.main([*evaluate, "OUTPUT_DIR", str(tmp_path / "fused"), "TEST.FUSION.CACHE_DIR", str(cache),
                             "TEST.FUSION.NUM_SAMPLES", "2", "TEST.FUSION.TAU", "0.2"])
    assert 0.0 < fused["O2S"]["mAP"] <= 1.0 and fused["O2S"]["num_query"] == plain["O2S"]["num_query"]
    # ALL needs the gallery's optical chips too, which were not generated: refused, naming a file
    with pytest.raises(Exception, match="no pseudo-SAR chips"):
        test_entry.main([*evaluate[:-len(reid)], *reid, "DATASETS.PROTOCOLS", "[ALL]", "OUTPUT_DIR",
                         str(tmp_path / "all"), "TEST.FUSION.CACHE_DIR", str(cache), "TEST.FUSION.NUM_SAMPLES", "2"])


def test_bbdm_trained_on_synthetic_pairs_translates_held_out_chips(tmp_path):
    """A few hundred steps of train_bbdm.py on the built-in synthetic OptiSar_Pair chips; on pairs of another
    synthetic draw (other ships) its samples are much closer to the true SAR chips than the optical inputs."""
    from datasets.pairs import scan_pairs
    from datasets.radiometry import ChipDecoder
    from datasets.synthetic import SyntheticSpec, ensure_synthetic
    from datasets.transforms import ResizeToTensor
    spec = dict(train_ids=8, test_ids=4, images_per_id=2, distractors=0, pair_folders=1, pairs_per_folder=48)
    train_root, held_out_root = str(tmp_path / "train"), str(tmp_path / "held_out")
    ensure_synthetic(train_root, SyntheticSpec(seed=7, **spec))
    ensure_synthetic(held_out_root, SyntheticSpec(seed=8, **spec))
    trainer = train_bbdm.main(["--config_file", "configs/bbdm/tiny.yml", "DATASETS.ROOT_DIR", train_root,
                               "BBDM.PAIRS", "optisar", "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_EPOCHS", "25",
                               "SOLVER.IMS_PER_BATCH", "16", "SOLVER.CHECKPOINT_PERIOD", "0"])
    assert trainer.global_step == 25 * 48 // 8
    cfg = load_config("configs/bbdm/tiny.yml")
    decoder, resize = ChipDecoder.from_config(cfg), ResizeToTensor(cfg.INPUT.SIZE_TRAIN)
    pairs = scan_pairs(held_out_root)[:32]
    optical = torch.stack([resize(decoder(o.path, o.modality)[0]) for o, _ in pairs])
    sar = torch.stack([resize(decoder(s.path, s.modality)[0]) for _, s in pairs]).float() / 127.5 - 1
    samples = trainer.model.translate(optical, steps=cfg.BBDM.SAMPLE_STEPS, eta=0.0)
    input_distance = (optical.float() / 127.5 - 1 - sar).abs().mean()
    sample_distance = (samples - sar).abs().mean()
    assert sample_distance < 0.5 * input_distance, (float(sample_distance), float(input_distance))


def test_compiled_unet_is_what_training_runs():
    """MODEL.COMPILE compiles the translator's UNet in place (train_bbdm.py): the training loss must go through
    the compiled module and give the eager loss; the EMA copy and the state-dict keys are untouched."""
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_translator(load_config("configs/bbdm/tiny.yml"))
    keys = set(model.state_dict())
    batch = {"image": torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8)}
    torch.manual_seed(1)
    eager = model(batch)["bridge"]
    model.unet.compile(backend=recording_backend)
    torch.manual_seed(1)
    compiled = model(batch)["bridge"]
    assert graphs and torch.allclose(compiled, eager, atol=1e-6)
    assert set(model.state_dict()) == keys
