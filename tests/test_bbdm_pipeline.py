"""MOS's cross-modal path end to end on the real chips with tiny models: BBDM training through the engine
(EMA, checkpoints, exact resume), pseudo-SAR generation into the cache, and a fused evaluation of a MOS model."""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from torch import nn

from conftest import TINY_MODEL
from test_training import assert_resumed, count_steps, saved_position

import test as test_entry
import train as train_entry
import train_bbdm
from configs import add_config_args, parse_args
from configs.loader import load_config
from datasets import build_pair_loader
from datasets.radiometry import ChipDecoder
from datasets.transforms import ResizeToTensor
from model.bbdm import BrownianBridge, ConditionalUNet
from model.bbdm.translator import PseudoSarTranslator, build_translator, to_uint8_grey
from processor.hooks import Hook
from processor.setup import setup_run
from tools import benchmark_bbdm, generate_pseudo_sar
from utils.errors import ShipReIDError


class CrashAfterEpoch(Hook):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_epoch_advanced(self, trainer):
        if trainer.epoch - 1 == self.epoch:
            raise KeyboardInterrupt


BBDM_RUN = ["--config_file", "configs/bbdm/tiny.yml", "SOLVER.CHECKPOINT_PERIOD", "1"]


class OneWeight(nn.Module):
    """A UNet stand-in: one weight and one buffer."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("count", torch.zeros(1))


def test_translator_ema_follows_the_bbdm_reference():
    """Updated every EMA_INTERVAL-th optimizer step (counted from 1): a copy before EMA_START, then
    ema = decay ema + (1 - decay) w; buffers are the live ones after every step. The live weight is the step
    number (w = 1, 2, 3, ...); the average starts as the initial weight 0."""
    model = PseudoSarTranslator(OneWeight(), BrownianBridge(), ema_decay=0.75, ema_start=4, ema_interval=2)
    expected = {1: 0.0,                           # not an update step: the initial weight
                2: 2.0,                           # 2 < EMA_START: a copy
                3: 2.0,
                4: 0.75 * 2.0 + 0.25 * 4.0,       # = 2.5, EMA_START reached: averaging
                5: 2.5,
                6: 0.75 * 2.5 + 0.25 * 6.0,       # = 3.375
                7: 3.375,
                8: 0.75 * 3.375 + 0.25 * 8.0}     # = 4.53125
    for step, value in expected.items():
        with torch.no_grad():
            model.unet.w.fill_(step)
            model.unet.count.fill_(10 * step)
        model.update_ema(step)
        assert model.ema_unet.w.item() == value, step
        assert model.ema_unet.count.item() == 10 * step, step
    assert not any(p.requires_grad for p in model.ema_unet.parameters())


def test_bbdm_keys_reach_the_translator_and_bad_ones_are_named():
    built = build_translator(load_config("configs/bbdm/tiny.yml", ["BBDM.EMA_INTERVAL", "3", "BBDM.EMA_START", "7",
                                                                   "BBDM.EMA_DECAY", "0.9"]))
    assert (built.ema_interval, built.ema_start, built.ema_decay) == (3, 7, 0.9)
    assert build_translator(load_config("configs/bbdm/tiny.yml")).ema_interval == 8   # the reference's interval
    for key, value in [("EMA_INTERVAL", "0"), ("EMA_DECAY", "1.0"), ("SAMPLE_ETA", "-1.0"),
                       ("SAMPLE_PRECISION", "fp8"), ("SAMPLE_STEPS", "1001")]:
        with pytest.raises(ShipReIDError, match=rf"BBDM\.{key}"):
            build_translator(load_config("configs/bbdm/tiny.yml", [f"BBDM.{key}", value]))


def test_to_uint8_grey():
    samples = torch.tensor([[[[-1.0, 1.0]], [[-1.0, 0.0]], [[-1.0, -1.0]]]])    # (1, 3, 1, 2)
    # channel means -1 and 0 -> 0 and 127.5, rounded half to even -> 128
    assert to_uint8_grey(samples).tolist() == [[[0, 128]]]


def test_ema_counts_optimizer_steps_under_accumulation(hoss_root, tmp_path):
    """ACCUM_STEPS 2 over one epoch: the EMA is told optimizer steps (half the batches, rounded up). With
    EMA_INTERVAL that count, the last step is the one update: a copy of the live weights while EMA_START is
    above it, an average once EMA_START is reached (told batches, the last step would be no update at all)."""
    common = [*BBDM_RUN, "DATASETS.ROOT_DIR", hoss_root, "SOLVER.MAX_EPOCHS", "1", "SOLVER.ACCUM_STEPS", "2"]
    trainer = train_bbdm.main([*common, "OUTPUT_DIR", str(tmp_path / "a")])
    batches, steps = trainer.global_step, trainer.optimizer_steps
    assert batches >= 3 and steps == (batches + 1) // 2 and batches % steps
    interval = ["BBDM.EMA_INTERVAL", str(steps)]
    copied = train_bbdm.main([*common, *interval, "BBDM.EMA_START", str(steps + 1),
                              "OUTPUT_DIR", str(tmp_path / "b")]).model
    for (name, ema), live in zip(copied.ema_unet.named_parameters(), copied.unet.parameters()):
        assert torch.equal(ema, live), name
    averaged = train_bbdm.main([*common, *interval, "BBDM.EMA_START", str(steps),
                                "OUTPUT_DIR", str(tmp_path / "c")]).model
    assert any(not torch.equal(e, p) for e, p in zip(averaged.ema_unet.parameters(), averaged.unet.parameters()))


def test_bbdm_training_resume_generation_and_fused_evaluation(hoss_root, tmp_path, monkeypatch):
    # EMA updates at optimizer steps 3 (a copy), 6, 9, ... (averages): the resume after epoch 1 falls between two
    common = [*BBDM_RUN, "DATASETS.ROOT_DIR", hoss_root, "BBDM.EMA_START", "4", "BBDM.EMA_INTERVAL", "3"]
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
    assert saved[:2] == (2, 0) and saved[2] % 3 and full.optimizer_steps > saved[2] + 3
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
    with open(cache / "generator.json") as f:
        assert json.load(f)["precision"] == "fp32"
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


def record_unet_precision(monkeypatch) -> list:
    """(autocast on, its dtype) as seen by every ConditionalUNet forward from now on (CPU)."""
    seen, forward = [], ConditionalUNet.forward

    def recording(self, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(ConditionalUNet, "forward", recording)
    return seen


@pytest.mark.parametrize("precision, amp, autocast", [("bf16", "off", (True, torch.bfloat16)),
                                                      ("fp32", "bf16", (False, None))])
def test_sampling_benchmark_samples_in_bbdm_sample_precision(monkeypatch, precision, amp, autocast):
    """tools/benchmark_bbdm.py --mode sample times sampling in BBDM.SAMPLE_PRECISION (what generation does), not
    in SOLVER.AMP (what training steps in)."""
    seen = record_unet_precision(monkeypatch)
    cfg = load_config("configs/bbdm/tiny.yml", ["BBDM.SAMPLE_PRECISION", precision, "SOLVER.AMP", amp])
    figures = benchmark_bbdm.bench_sample(argparse.Namespace(warmup=0, steps=1), cfg, torch.device("cpu"))
    assert figures["precision"] == precision
    assert len(seen) == cfg.BBDM.SAMPLE_STEPS
    assert all(on == autocast[0] and (not on or dtype == autocast[1]) for on, dtype in seen)


def test_generation_samples_in_bbdm_sample_precision_and_records_it(hoss_root, tmp_path, monkeypatch):
    cfg = load_config("configs/bbdm/tiny.yml")
    weights = train_bbdm.export_translator(build_translator(cfg), str(tmp_path))
    sources = generate_pseudo_sar.optical_sources
    monkeypatch.setattr(generate_pseudo_sar, "optical_sources", lambda c: sources(c)[:2])
    seen = record_unet_precision(monkeypatch)
    cache = tmp_path / "cache"
    gen = ["--config_file", "configs/bbdm/tiny.yml", "DATASETS.ROOT_DIR", hoss_root, "DATASETS.PROTOCOLS", "[O2S]",
           "BBDM.WEIGHTS", weights, "TEST.FUSION.CACHE_DIR", str(cache), "OUTPUT_DIR", str(tmp_path / "gen")]
    assert generate_pseudo_sar.main([*gen, "BBDM.SAMPLE_PRECISION", "bf16"])["generated"] == 2
    assert seen == [(True, torch.bfloat16)] * cfg.BBDM.SAMPLE_STEPS
    with open(cache / "generator.json") as f:
        assert json.load(f)["precision"] == "bf16"
    # the same cache in another precision would mix samples of two generators: refused
    with pytest.raises(ShipReIDError, match="another generator"):
        generate_pseudo_sar.main([*gen, "BBDM.SAMPLE_PRECISION", "fp32"])


def test_generation_resizes_optical_chips_as_bbdm_training_does(hoss_root):
    """The chip the translator samples from is the optical chip of its training pairs, resized the same way
    (bicubic), not the ReID test resize (bilinear)."""
    cfg = load_config("configs/bbdm/tiny.yml", ["DATASETS.ROOT_DIR", hoss_root, "INPUT.FLIP_PROB", "0.0"])
    dataset = build_pair_loader(cfg, source="hoss_train", same_augmentation=True).dataset
    optical = dataset.pairs[0][0]
    trained_on = dataset[(0, (cfg.SEED, 1, 0, 0))]["optical"]["image"]
    pixels, _ = ChipDecoder.from_config(cfg)(optical.path, optical.modality)
    generated_from = generate_pseudo_sar.optical_resize(cfg)(pixels)
    assert trained_on.dtype == generated_from.dtype == torch.uint8
    assert trained_on.shape == generated_from.shape == (3, *cfg.INPUT.SIZE_TRAIN)
    assert torch.equal(trained_on, generated_from)
    assert not torch.equal(generated_from, ResizeToTensor(cfg.INPUT.SIZE_TRAIN)(pixels))   # bilinear differs


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
