"""tools/benchmark.py --mode train without --data times the step alone: one uint8 batch is built on the device
once and reused (a host batch per step would halve an H100's images/s), and the output says what is included."""
from __future__ import annotations

from conftest import TINY_MODEL

import tools.benchmark as benchmark


def test_train_benchmark_builds_its_batch_once_and_says_so(monkeypatch):
    built = []
    model_batch = benchmark.model_batch

    def counting(*args, **kwargs):
        built.append(kwargs.get("with_labels", args[3] if len(args) > 3 else None))
        return model_batch(*args, **kwargs)
    monkeypatch.setattr(benchmark, "model_batch", counting)
    [figures] = benchmark.main(["--mode", "train", "--batch", "8", "--steps", "3", "--warmup", "2",
                                "--config_file", "configs/hoss/transoss.yml", *TINY_MODEL, "MODEL.DEVICE", "cpu",
                                "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "INPUT.SIZE_TRAIN", "[64,32]",
                                "INPUT.SIZE_TEST", "[64,32]"])
    assert built == [True]  # one training batch for 5 steps (the FLOP-count batch is GPU-only)
    assert figures["input"] == "one uint8 batch built once on the device (the step alone)"
    assert figures["images_per_second"] > 0 and figures["batch"] == 8
