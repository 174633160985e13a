"""A training step never waits for the device: one `Trainer.run_step` of every recipe (TransOSS, SDF-Net, MOS,
contrastive pretraining, BBDM), built by its entry point, runs with every host-reading tensor call patched to
raise. Host reads belong to the periodic log / check boundary (`Trainer.check_finite`), not to the step.

On a CPU nothing actually waits, so the patched calls stand in for the GPU's synchronisations: reading a value
(item, tolist, bool/int/float of a tensor, cpu, numpy), or an output whose size depends on the values (unique,
nonzero, masked_select)."""
from __future__ import annotations

import argparse
import inspect
import os
import pathlib

import pytest
import torch

from conftest import TINY_MODEL
from test_training import make_pair_root

import train as train_entry
import train_bbdm as bbdm_entry
import train_pair as pair_entry
from configs import add_config_args, parse_args
from processor.setup import setup_run

SYNCING_TENSOR_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__",
                          "nonzero", "unique")
SYNCING_FUNCTIONS = ("unique", "nonzero", "masked_select", "unique_consecutive", "argwhere")
# RE_PROB 0: the erasing boxes are drawn and read on the host by design (host tensors, no device sync)
STEP_RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "INPUT.RE_PROB", "0.0", "DATASETS.PROTOCOLS", "['ALL']",
            "SOLVER.EVAL_PERIOD", "0"]
RECIPES = {
    "transoss": (train_entry.build_trainer, "configs/hoss/transoss.yml", []),
    "sdfnet": (train_entry.build_trainer, "configs/hoss/sdfnet.yml", ["MODEL.SDF.STRUCT_LAYER", "1"]),
    "mos": (train_entry.build_trainer, "configs/hoss/mos.yml", []),
    "pretrain": (pair_entry.build_pair_trainer, "configs/pretrain/transoss.yml", []),
    "bbdm": (bbdm_entry.build_bbdm_trainer, "configs/bbdm/tiny.yml", []),
}


class HostSync(AssertionError):
    pass


def called_from_the_cpu_optimizer() -> bool:
    """torch's single-tensor optimizers read their step count on the host on a CPU; on a GPU build_optimizer picks
    the fused kernels, which keep it on the device. Those reads are not the project's."""
    return any(f"{os.sep}torch{os.sep}optim{os.sep}" in frame.filename for frame in inspect.stack()[2:])


def forbid_host_reads(monkeypatch) -> None:
    def raiser(name, original):
        def forbidden(*args, **kwargs):
            if called_from_the_cpu_optimizer():
                return original(*args, **kwargs)
            raise HostSync(f"{name} inside a training step (a host synchronisation on a GPU)")
        return forbidden
    for name in SYNCING_TENSOR_METHODS:
        monkeypatch.setattr(torch.Tensor, name, raiser(f"Tensor.{name}", getattr(torch.Tensor, name)))
    for name in SYNCING_FUNCTIONS:
        monkeypatch.setattr(torch, name, raiser(f"torch.{name}", getattr(torch, name)))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_training_step_reads_nothing_back_from_the_device(recipe, hoss_root, samples_dir, tmp_path, monkeypatch):
    builder, config, overrides = RECIPES[recipe]
    make_pair_root(samples_dir, pathlib.Path(hoss_root))
    args = parse_args(add_config_args(argparse.ArgumentParser()), [
        "--config_file", config, "DATASETS.ROOT_DIR", hoss_root, *STEP_RUN, *overrides, "OUTPUT_DIR", str(tmp_path)])
    cfg, logger, device = setup_run(args, "train.log")
    trainer = builder(cfg, device, logger)
    trainer.scheduler.step(1)
    trainer.loader.batch_sampler.set_epoch(1)
    batch = next(iter(trainer.loader))
    batch.pop("erase", None)  # host tensors by design (drawn and read on the host, no device involved)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}

    with monkeypatch.context() as patched:
        forbid_host_reads(patched)
        trainer.run_step(batch, boundary=True, group_size=1)

    # the step happened (the loss is finite and the weights moved) and the host reads it afterwards
    assert set(trainer.check_finite()) >= {"total"}
    moved = [name for name, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert moved
