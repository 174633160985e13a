"""Start-up and evaluation that scale with the ranks, under real torchrun (CPU, gloo): the image check is split
over the ranks with one verdict for all, each rank caches within its share of the node's budget, and rank 0
alone scores the gathered features for every rank."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_MODEL

from datasets.radiometry import ChipDecoder
from datasets.records import scan_hoss_folder
from processor.results import metrics_of, read_results

WEIGHTS = os.path.join("tests", "data", "golden", "transoss_tiny", "transoss_tiny_official_format.pth")
TEST_RUN = ["--config_file", "configs/hoss/transoss.yml", "TEST.WEIGHT", WEIGHTS, "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", *TINY_MODEL]

# Builds what a training run builds before its first step (training loader, evaluator) and writes what this
# rank ended with to OUTPUT_DIR/rank<r>.json.
STARTUP_PROBE = f"""
import argparse, json, os, sys
sys.path.insert(0, {REPO!r})
from configs import add_config_args, parse_args
from datasets import build_dataset, build_train_loader
from processor.evaluator import Evaluator
from processor.setup import setup_run
from utils.cli import run_cli
from utils.distributed import rank, world_size


def main():
    cfg, _, _ = setup_run(parse_args(add_config_args(argparse.ArgumentParser()), sys.argv[1:]), "probe.log")
    dataset = build_dataset(cfg)
    train = build_train_loader(cfg, dataset.train, rank(), world_size()).dataset
    evaluator = Evaluator(cfg, [dataset.protocol(name) for name in cfg.DATASETS.PROTOCOLS])
    with open(os.path.join(cfg.OUTPUT_DIR, f"rank{{rank()}}.json"), "w") as f:
        json.dump({{"train": [r.path for r in train.records], "test": [r.path for r in evaluator.records],
                   "train_cache_bytes": sum(p.nbytes for p, _ in train.cache.values()),
                   "test_cache": sorted(evaluator.cache)}}, f)


run_cli(main)
"""

# test.py's main with re_ranking counted (the real one runs); every rank writes its results and that count.
COUNTED_TEST = f"""
import json, os, sys
sys.path.insert(0, {REPO!r})
import processor.evaluator as evaluator
import test as test_entry
from utils.cli import run_cli
from utils.distributed import rank

calls = []
real_re_ranking = evaluator.re_ranking


def counted(*args, **kwargs):
    calls.append(rank())
    return real_re_ranking(*args, **kwargs)


def main():
    evaluator.re_ranking = counted
    results = test_entry.main(sys.argv[2:])
    with open(os.path.join(sys.argv[1], f"rank{{rank()}}.json"), "w") as f:
        json.dump({{"results": results, "re_ranked": len(calls)}}, f)


run_cli(main)
"""


def launch(script: str, args: list[str], nproc: int, expect_rc: int = 0) -> str:
    """Run `script` in one process or under torchrun with `nproc` processes; the console output of all ranks."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    # one thread per process, as torchrun sets, so one process computes with the same arithmetic
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(launcher + [script] + args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == expect_rc, output[-4000:]
    return output


def corrupt(path) -> None:
    path.write_bytes(path.read_bytes()[:150])


def skip_warnings(output: str, path: str) -> int:
    return sum(1 for line in output.splitlines() if "ON_BAD_IMAGE skip" in line and path in line)


def train_pixel_bytes(folder) -> int:
    decoder = ChipDecoder()
    return sum(decoder(r.path, r.modality)[0].nbytes for r in scan_hoss_folder(str(folder)))


@pytest.fixture
def hoss_copy(samples_dir, tmp_path):
    """A DATASETS.ROOT_DIR with a writable copy of the real chips."""
    root = tmp_path / "root"
    shutil.copytree(samples_dir, root / "HOSS", ignore=shutil.ignore_patterns("*.csv"))
    return root


def test_two_ranks_split_the_check_keep_the_same_images_and_cache_their_share(hoss_copy, tmp_path):
    """One bad training and one bad test chip under DATALOADER.ON_BAD_IMAGE skip, on 2 ranks."""
    hoss = hoss_copy / "HOSS"
    budget_gb = 1.5 * train_pixel_bytes(hoss / "bounding_box_train") / 2 ** 30  # fits one process, not half
    bad_train = hoss / "bounding_box_train" / "0101_s04c1_RGB.tif"
    bad_test = hoss / "bounding_box_test" / "0002_s05c2_SAR.tif"
    corrupt(bad_train)
    corrupt(bad_test)
    probe, out = tmp_path / "probe.py", tmp_path / "out"
    probe.write_text(STARTUP_PROBE)
    output = launch(str(probe), [*TEST_RUN, "DATASETS.ROOT_DIR", str(hoss_copy), "OUTPUT_DIR", str(out),
                                 "DATALOADER.ON_BAD_IMAGE", "skip", "DATALOADER.CACHE_MAX_GB", str(budget_gb)], 2)
    # the bad files are named once, by rank 0, in the console and in its log
    for bad in (str(bad_train), str(bad_test)):
        assert skip_warnings(output, bad) == 1, bad
        assert skip_warnings((out / "probe.log").read_text(), bad) == 1, bad
    log = (out / "probe.log").read_text()
    # each rank decoded every other file: 56 training chips, 31 query + 78 gallery test chips
    assert "checked 56 image files on 2 ranks, decoded per rank: [28, 28]" in log
    assert "checked 109 image files on 2 ranks, decoded per rank: [55, 54]" in log

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    all_train = sorted(str(p) for p in (hoss / "bounding_box_train").glob("*.tif"))
    assert ranks[0]["train"] == ranks[1]["train"]
    assert sorted(ranks[0]["train"]) == sorted(set(all_train) - {str(bad_train)})
    assert ranks[0]["test"] == ranks[1]["test"]
    assert len(ranks[0]["test"]) == 108 and str(bad_test) not in ranks[0]["test"]
    for r, probe_rank in enumerate(ranks):
        # test chips: only rows this rank embeds; training chips: within half the node's budget
        assert probe_rank["test_cache"] and set(probe_rank["test_cache"]) <= set(probe_rank["test"][r::2]), r
        assert 0 < probe_rank["train_cache_bytes"] <= budget_gb / 2 * 2 ** 30, r
    assert log.count("image cache: DATALOADER.CACHE_MAX_GB") == 1 and "for each of its 2 rank(s)" in log


def test_error_policy_stops_every_rank_on_the_first_bad_file(hoss_copy, tmp_path):
    """The first bad file (in rank 1's share) is named by both ranks, as one process names it, not the later
    one in rank 0's share."""
    files = scan_hoss_folder(str(hoss_copy / "HOSS" / "bounding_box_train"))
    first, later = files[1].path, files[2].path  # checked by rank 1 and rank 0
    for path in (first, later):
        corrupt(hoss_copy / "HOSS" / "bounding_box_train" / os.path.basename(path))
    probe = tmp_path / "probe.py"
    probe.write_text(STARTUP_PROBE)
    args = [*TEST_RUN, "DATASETS.ROOT_DIR", str(hoss_copy)]
    one = launch(str(probe), args + ["OUTPUT_DIR", str(tmp_path / "np1")], 1, expect_rc=2)
    two = launch(str(probe), args + ["OUTPUT_DIR", str(tmp_path / "np2")], 2, expect_rc=1)
    named = [line for line in one.splitlines() if line.startswith("error:")]
    assert len(named) == 1 and named[0].startswith(f"error: {first}: cannot decode")
    # both ranks print it (their lines may interleave)
    assert two.count(named[0]) == 2 and two.count("error: ") == 2 and later not in two


def test_rank_0_scores_once_and_every_rank_returns_its_results(hoss_root, tmp_path):
    """TEST.RE_RANKING on: rank 0 re-ranks each protocol once, rank 1 none, and both return the one-process
    results."""
    script = tmp_path / "counted_test.py"
    script.write_text(COUNTED_TEST)
    args = [*TEST_RUN, "DATASETS.ROOT_DIR", hoss_root, "TEST.RE_RANKING", "True"]
    launch(str(script), [str(tmp_path / "np1"), *args, "OUTPUT_DIR", str(tmp_path / "np1")], 1)
    launch(str(script), [str(tmp_path / "np2"), *args, "OUTPUT_DIR", str(tmp_path / "np2")], 2)
    one = json.loads((tmp_path / "np1" / "rank0.json").read_text())
    two = [json.loads((tmp_path / "np2" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert one["re_ranked"] == 3 and [r["re_ranked"] for r in two] == [3, 0]
    assert two[0]["results"] == two[1]["results"] == one["results"]
    assert metrics_of(read_results(tmp_path / "np2" / "results.json")) == one["results"]


def test_fewer_test_images_than_ranks(samples_dir, tmp_path):
    """3 test images (2 queries, 1 gallery) on 4 ranks: the fourth embeds nothing; features and results are
    one process's. (On 2 ranks no shard is empty: a protocol needs a query and a gallery image.)"""
    hoss = tmp_path / "root" / "HOSS"
    for folder, names in (("query", ["0002_s05c1_RGB.tif", "0206_s01c1_SAR.tif"]),
                          ("bounding_box_test", ["0002_s05c2_SAR.tif"])):
        (hoss / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(os.path.join(samples_dir, folder, name), hoss / folder / name)
    args = [*TEST_RUN, "DATASETS.ROOT_DIR", str(tmp_path / "root"), "TEST.SAVE_FEATS", "True"]
    for nproc in (1, 4):
        launch("test.py", args + ["OUTPUT_DIR", str(tmp_path / f"np{nproc}")], nproc)
    one, four = (metrics_of(read_results(tmp_path / f"np{n}" / "results.json")) for n in (1, 4))
    assert one == four and one["ALL"]["num_query"] == 2 and one["ALL"]["num_gallery"] == 1
    for protocol in ("ALL", "O2S"):
        ref, ours = (np.load(tmp_path / f"np{n}" / f"features_{protocol}.npz") for n in (1, 4))
        assert list(ref["names"]) == list(ours["names"])
        assert np.abs(ref["feats"] - ours["feats"]).max() < 1e-6
