"""MODEL.COMPILE under DDP: compiled after the wrap, so dynamo's DDPOptimizer splits the graph at DDP's buckets.

Run by torchrun, this file is also the launcher: it runs an entry point's main() with recorders around
Module.compile, DistributedDataParallel and dynamo's DDPOptimizer, and compiles with the aot_eager backend. The
splitting happens in dynamo, before any backend; aot_eager keeps AOTAutograd, whose compiled backward runs as one
autograd node per graph (the all-gradients-at-its-end backward that the splitting breaks up), and leaves out only
inductor's C++ code generation (~50 s per rank on a 2-core CPU).
"""
from __future__ import annotations

import importlib
import json
import os
import sys

import pytest
import torch

from conftest import REPO
from test_distributed import PAIR_RUN, assert_trained, initial_parameters, run
from test_training import build, make_pair_root

import train_pair as pair_entry
from processor.engine import unwrap

LAUNCHER = os.path.relpath(os.path.abspath(__file__), REPO)

# EMBED_DIM 96: 1.2 MB of backbone weights, more than DDP's first bucket (1 MB), so DDP has two buckets and
# DDPOptimizer two subgraphs (the tiny model's 0.55 MB would fit one bucket: nothing to split). 8 pairs per step:
# one step per epoch (15 pairs), two in all, a checkpoint after each
COMPILED_PAIR_RUN = [*PAIR_RUN, "MODEL.EMBED_DIM", "96", "MODEL.COMPILE", "True", "SOLVER.IMS_PER_BATCH", "16",
                     "SOLVER.CHECKPOINT_PERIOD", "1"]


def compile_records(output_dir) -> dict[int, dict]:
    """What the launcher recorded on each rank (rank -> record)."""
    names = sorted(n for n in os.listdir(output_dir) if n.startswith("compile_rank"))
    records = {}
    for name in names:
        with open(os.path.join(output_dir, name)) as f:
            records[int(name[len("compile_rank"):-len(".json")])] = json.load(f)
    return records


def test_compiled_two_process_pretraining_matches_one_process(samples_dir, tmp_path):
    """train_pair.py with MODEL.COMPILE on two ranks: each rank compiles the backbone after the DDP wrap, dynamo's
    DDPOptimizer splits its training graph at DDP's two buckets, and after 2 steps the weights are one compiled
    process's on the same global batch. The keys stay the eager module's, and a compiled model resumes."""
    root = tmp_path / "root"
    make_pair_root(samples_dir, root)
    args = ["--config_file", "configs/pretrain/transoss.yml", "DATASETS.ROOT_DIR", str(root), *COMPILED_PAIR_RUN]
    for nproc in (1, 2):
        run(LAUNCHER, ["train_pair", str(tmp_path / f"np{nproc}"), *args, "OUTPUT_DIR", str(tmp_path / f"np{nproc}")],
            nproc)

    one, two = compile_records(tmp_path / "np1"), compile_records(tmp_path / "np2")
    assert one == {0: {"compiled": [["TransOSSBackbone", False]], "ddp_optimizer_buckets": []}}, one
    # every rank compiled the backbone once, after it was wrapped, and DDPOptimizer split the training graph in two.
    # Compiling first and wrapping next splits alike as long as nothing runs the module in between (dynamo traces
    # at the first call, inside DDP's forward); a graph traced before the wrap would be reused unsplit: the order
    # is what rules that out, so the record checks it
    assert two == {r: {"compiled": [["TransOSSBackbone", True]], "ddp_optimizer_buckets": [2]} for r in (0, 1)}, two

    one_state, two_state = (torch.load(tmp_path / f"np{n}" / "checkpoints" / "epoch_0002.pth", weights_only=False)
                            for n in (1, 2))
    # the model a compiled run builds (one process: compiled in place, lazily, so never run here)
    trainer = build(pair_entry.build_pair_trainer, args + ["OUTPUT_DIR", str(tmp_path / "built")])
    backbone = {k: v for k, v in two_state["model"].items() if k.startswith("backbone.")}
    assert_trained({k: v for k, v in initial_parameters(trainer).items() if k in backbone}, backbone, 1e-6)
    for key, value in backbone.items():  # measured 7.5e-9
        assert torch.allclose(one_state["model"][key], value, atol=1e-6, rtol=0), key
    scale = next(k for k in one_state["criterion"] if k.endswith("logit_scale"))
    assert torch.allclose(one_state["criterion"][scale], two_state["criterion"][scale], atol=1e-7, rtol=0)  # 0

    # compiled in place: checkpoints and exports keep the module's keys (no _orig_mod.), and a compiled model resumes
    assert unwrap(trainer.model).backbone._compiled_call_impl is not None
    assert one_state["model"].keys() == two_state["model"].keys() == unwrap(trainer.model).state_dict().keys()
    assert not any("_orig_mod" in key for key in one_state["model"])
    assert backbone.keys() == torch.load(tmp_path / "np2" / "backbone_final.pth", weights_only=True).keys()
    trainer.resume(str(tmp_path / "np2" / "checkpoints" / "epoch_0001.pth"))
    saved = torch.load(tmp_path / "np2" / "checkpoints" / "epoch_0001.pth", weights_only=False)["model"]
    assert trainer.epoch == 2
    for key, value in unwrap(trainer.model).state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("entry,compiled", [("train", "backbone"), ("train_pair", "backbone"), ("train_bbdm", "unet")])
def test_every_entry_point_compiles_its_trained_module_in_place(hoss_root, samples_dir, tmp_path, entry, compiled):
    """What each entry point hands wrap_ddp to compile: the ReID backbone, the BBDM UNet being trained (not its
    EMA copy, which samples), and nothing else. One process: built, never run."""
    if entry == "train_pair":
        make_pair_root(samples_dir, tmp_path / "pairs")
    config, root = {"train": ("configs/hoss/transoss.yml", hoss_root),
                    "train_pair": ("configs/pretrain/transoss.yml", str(tmp_path / "pairs")),
                    "train_bbdm": ("configs/bbdm/tiny.yml", hoss_root)}[entry]
    module = importlib.import_module(entry)
    builder = getattr(module, {"train": "build_trainer", "train_pair": "build_pair_trainer",
                               "train_bbdm": "build_bbdm_trainer"}[entry])
    trainer = build(builder, ["--config_file", config, "DATASETS.ROOT_DIR", root, *PAIR_RUN, "MODEL.COMPILE", "True",
                              "OUTPUT_DIR", str(tmp_path / "out")])
    model = unwrap(trainer.model)
    assert [name for name, m in model.named_modules() if m._compiled_call_impl is not None] == [compiled]


def launch(entry: str, output_dir: str, argv: list[str]) -> None:
    """torchrun's worker: `entry`.main(argv), recording to output_dir/compile_rank<RANK>.json which modules
    Module.compile compiled (and whether a DDP wrap held them by then) and how many buckets each DDPOptimizer
    split made."""
    import atexit

    from torch._dynamo.backends.distributed import DDPOptimizer
    from torch.nn.parallel import DistributedDataParallel

    wrapped: set[int] = set()
    record: dict[str, list] = {"compiled": [], "ddp_optimizer_buckets": []}
    ddp_init, module_compile, split = DistributedDataParallel.__init__, torch.nn.Module.compile, DDPOptimizer.compile_fn

    def recording_ddp_init(self, module, *a, **kw):
        ddp_init(self, module, *a, **kw)
        wrapped.update(id(m) for m in module.modules())

    def recording_compile(self, *a, **kw):
        record["compiled"].append([type(self).__name__, id(self) in wrapped])
        return module_compile(self, *a, **{**kw, "backend": "aot_eager"})

    def recording_split(self, gm, example_inputs, **kw):
        compiled = split(self, gm, example_inputs, **kw)
        record["ddp_optimizer_buckets"].append(len(self.buckets))
        return compiled

    def save():
        with open(os.path.join(output_dir, f"compile_rank{os.environ.get('RANK', '0')}.json"), "w") as f:
            json.dump(record, f)

    DistributedDataParallel.__init__, torch.nn.Module.compile = recording_ddp_init, recording_compile
    DDPOptimizer.compile_fn = recording_split
    atexit.register(save)
    importlib.import_module(entry).main(argv)


if __name__ == "__main__":
    launch(sys.argv[1], sys.argv[2], sys.argv[3:])
