"""Consistency of the entry points (issue 14, item 7): KEY VALUE overrides in tools/extract_features.py, whole
--help descriptions, the tiny BBDM config's fusion samples, readable ranked-list and embedding pictures, and
data-loader workers capped at the CPUs."""
from __future__ import annotations

import ast
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_MODEL

from configs import load_config
from configs.loader import ConfigError

TRANSOSS = "configs/hoss/transoss.yml"


def tiny_weights(golden_dir: str) -> str:
    return os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")


# ------------------------------------------------------------------ 1. extract_features.py takes KEY VALUE


def test_extract_features_takes_key_value_overrides(golden_dir, samples_dir, tmp_path):
    """Overrides as for every entry point: after and between the image files, and they take effect (the tiny
    model's shape, flip features)."""
    from processor.extractor import FeatureExtractor
    from tools.extract_features import main as extract_main
    query = os.path.join(samples_dir, "query")
    paths = [os.path.join(query, n) for n in ("0002_s05c1_RGB.tif", "0003_s05c1_RGB.tif", "0206_s01c1_SAR.tif")]
    out = str(tmp_path / "feats.npz")
    extract_main(["--config_file", TRANSOSS, "--weights", tiny_weights(golden_dir), "--out", out, paths[0],
                  "TEST.FLIP_FEATS", "True", *paths[1:], *TINY_MODEL, "MODEL.DEVICE", "cpu"])
    saved = np.load(out)
    assert list(saved["names"]) == [os.path.basename(p) for p in paths]
    assert saved["camids"].tolist() == [0, 0, 1]
    flipped = FeatureExtractor(TRANSOSS, tiny_weights(golden_dir), "cpu", [*TINY_MODEL, "TEST.FLIP_FEATS", "True"])
    assert np.allclose(saved["feats"], flipped(paths).numpy(), atol=1e-6)
    plain = FeatureExtractor(TRANSOSS, tiny_weights(golden_dir), "cpu", TINY_MODEL)(paths).numpy()
    assert np.abs(saved["feats"] - plain).max() > 1e-3  # TEST.FLIP_FEATS was applied


def test_extract_features_override_errors_name_the_key(golden_dir, samples_dir, tmp_path):
    from tools.extract_features import main as extract_main
    chip = os.path.join(samples_dir, "query", "0002_s05c1_RGB.tif")
    common = ["--config_file", TRANSOSS, "--weights", tiny_weights(golden_dir), "--out", str(tmp_path / "f.npz")]
    with pytest.raises(ConfigError, match="MODEL.DEVICE has no value"):
        extract_main([*common, chip, "MODEL.DEVICE"])
    with pytest.raises(ConfigError, match="unknown config key MODEL.DEVIC"):
        extract_main([*common, chip, "MODEL.DEVIC", "cpu"])


# ------------------------------------------------------------------ 2. --help descriptions are whole sentences

ENTRY_POINTS = ["train.py", "train_pair.py", "test.py", "train_bbdm.py"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tools", "*.py"))
    if not p.endswith("__init__.py"))

# One child interpreter runs every entry point as __main__ with --help (one torch import instead of 15).
HELP_RUNNER = """
import contextlib, io, json, os, runpy, sys
helps = {}
for path in sys.argv[1:]:
    sys.argv, sys.path[0] = [path, "--help"], os.path.dirname(os.path.abspath(path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit:
            pass
    helps[path] = out.getvalue()
print(json.dumps(helps))
"""


def first_paragraph(path: str) -> str:
    """The module docstring up to its first blank or indented line, whitespace collapsed."""
    with open(os.path.join(REPO, path)) as f:
        doc = ast.get_docstring(ast.parse(f.read()), clean=False)
    lines = []
    for line in doc.strip().splitlines():
        if not line.strip() or line[0].isspace():
            break
        lines.append(line)
    return " ".join(" ".join(lines).split())


def help_description(text: str) -> str:
    """argparse's description: the block after the usage block, whitespace collapsed."""
    blocks = re.split(r"\n\s*\n", text.strip())
    assert blocks[0].startswith("usage:") and len(blocks) > 2, text
    return " ".join(blocks[1].split())


@pytest.fixture(scope="module")
def helps() -> dict:
    result = subprocess.run([sys.executable, "-c", HELP_RUNNER, *ENTRY_POINTS], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_help_description_is_the_whole_first_paragraph(helps, entry_point):
    description = help_description(helps[entry_point])
    assert description == first_paragraph(entry_point)
    assert description[-1] in ".)!?", f"{entry_point}: --help description ends mid-sentence: {description!r}"


# ------------------------------------------------------------------ 3. the tiny BBDM's fusion samples


def _mos_section() -> str:
    with open(os.path.join(REPO, "docs", "methods.md")) as f:
        text = f.read()
    start = text.index("\n## MOS")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _commands(text: str) -> list[str]:
    """The indented shell lines of a markdown text, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.startswith("    python ")]


def test_tiny_bbdm_config_states_its_fusion_samples_against_the_mos_recipe():
    """configs/bbdm/tiny.yml writes fewer pseudo-SAR samples than configs/hoss/mos.yml fuses: its header says
    both numbers, and docs/methods.md (MOS) evaluates its cache with a test.py command that asks for exactly its
    number."""
    tiny_k = load_config("configs/bbdm/tiny.yml").TEST.FUSION.NUM_SAMPLES
    mos_k = load_config("configs/hoss/mos.yml").TEST.FUSION.NUM_SAMPLES
    with open(os.path.join(REPO, "configs", "bbdm", "tiny.yml")) as f:
        header = " ".join(line[1:].strip() for line in f.read().splitlines() if line.startswith("#"))
    assert "CPU tests" in header and "configs/hoss/mos.yml" in header
    assert re.findall(r"TEST\.FUSION\.NUM_SAMPLES (\d+)", header)[:2] == [str(tiny_k), str(mos_k)]
    if tiny_k == mos_k:
        return
    section = _mos_section()
    assert "configs/bbdm/tiny.yml" in section
    evaluations = [c for c in _commands(section) if c.startswith("python test.py --config_file configs/hoss/mos.yml")
                   and "pseudo_sar_tiny" in c]
    assert len(evaluations) == 1, evaluations
    overrides = evaluations[0].split()[4:]  # after: python test.py --config_file <file>
    assert load_config("configs/hoss/mos.yml", overrides).TEST.FUSION.NUM_SAMPLES == tiny_k


# ------------------------------------------------------------------ 4. ranked lists: distances and identities


def test_distance_labels_tell_neighbours_apart():
    from utils.ranked_list import distance_labels
    # neighbours that differ in the 4th significant digit: 4 digits, trailing zeros kept
    assert distance_labels([0.81234, 0.81237, 0.81291, 0.9, 1.2]) == ["0.8123", "0.8124", "0.8129", "0.9000", "1.200"]
    # neighbours that differ in the 7th: as many digits as that takes, for the whole row
    assert distance_labels([0.51, 0.8123411, 0.8123412]) == ["0.5100000", "0.8123411", "0.8123412"]
    # ties stay ties
    assert distance_labels([0.25, 0.25, 0.5]) == ["0.2500", "0.2500", "0.5000"]


def test_chip_label_names_identity_and_modality():
    from datasets.records import ChipRecord
    from utils.ranked_list import chip_label
    assert chip_label(ChipRecord("q/0002_s05c1_RGB.tif", 2, 0), query=True) == "Q id 2 OPT"
    assert chip_label(ChipRecord("g/0206_s01c2_SAR.tif", 206, 1)) == "id 206 SAR"
    assert chip_label(ChipRecord("g/-1_0081_SAR.tif", -1, 1)) == "id -1 SAR"


def test_ranked_list_tool_labels_close_neighbours(hoss_root, tmp_path):
    """Features made so that the first query's gallery distances step by about 5e-4: the tool's picture prints
    each result's distance so that neighbours read differently (2 decimals would print most of them alike)."""
    from datasets import build_dataset
    from processor.evaluator import ranking_distances
    from tools.ranked_list import main as ranked_main
    from utils.ranked_list import BORDER, CAPTION, GAP, LINE, TILE_H, TILE_W, distance_labels, grid_size
    common = ["DATASETS.ROOT_DIR", hoss_root, "MODEL.DEVICE", "cpu"]
    cfg = load_config(TRANSOSS, common)
    protocol = build_dataset(cfg).protocol("O2S")
    num_query, num_gallery = len(protocol.query), len(protocol.gallery)
    feats = np.zeros((num_query + num_gallery, 4), dtype=np.float32)
    feats[:num_query, 0] = 1.0
    angles = 0.5 + 5e-4 * np.arange(num_gallery)
    feats[num_query:, 0], feats[num_query:, 1] = np.cos(angles), np.sin(angles)
    records = protocol.query + protocol.gallery
    np.savez(tmp_path / "features_O2S.npz", feats=feats, names=np.array([r.name for r in records]),
             pids=np.array([r.pid for r in records]), camids=np.array([r.modality for r in records]),
             num_query=np.int64(num_query))
    top_k = 6
    path = ranked_main(["--features", str(tmp_path / "features_O2S.npz"), "--config_file", TRANSOSS,
                        "--out", str(tmp_path / "ranked.png"), "--queries", "2", "--topk", str(top_k), *common])

    shown = torch.sort(ranking_distances(cfg.TEST, torch.from_numpy(feats[:num_query]),
                                         torch.from_numpy(feats[num_query:]))[0]).values[:top_k]
    assert len({f"{float(d):.2f}" for d in shown}) < top_k  # 2 decimals would not tell them apart
    labels = distance_labels(shown)
    assert all(a != b for a, b in zip(labels, labels[1:])), labels

    with Image.open(path) as picture:
        assert picture.size == grid_size(2, top_k)
        pixels = np.asarray(picture.convert("L"))
    cell_w, caption_y = TILE_W + 2 * BORDER + GAP, GAP + TILE_H + 2 * BORDER + 1
    assert caption_y + 2 * LINE <= GAP + TILE_H + 2 * BORDER + CAPTION

    def caption_line(rank: int, line: int) -> np.ndarray:
        x = GAP + (rank + 1) * cell_w
        return pixels[caption_y + line * LINE:caption_y + (line + 1) * LINE, x:x + cell_w - 1]

    for rank in range(top_k):
        assert (caption_line(rank, 0) < 128).any(), f"rank {rank + 1}: no identity line"
    for rank in range(top_k - 1):
        assert not np.array_equal(caption_line(rank, 1), caption_line(rank + 1, 1)), \
            f"ranks {rank + 1} and {rank + 2} show the same distance"


# ------------------------------------------------------------------ 5. embedding plot: axes, legend, colours


def test_pca_explained_variance_matches_numpy():
    from utils.embedding_plot import axis_labels, pca_2d
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(40, 12)) * np.linspace(3.0, 0.2, 12) + 0.5
    xy, explained = pca_2d(torch.from_numpy(feats))

    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    centred = unit - unit.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (len(feats) - 1))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    expected = eigenvalues[:2] / eigenvalues.sum()
    assert np.allclose(explained, expected, rtol=1e-10, atol=0)
    assert expected[0] > expected[1] > 0.05  # two real axes, not round-off
    for axis in range(2):  # the plotted coordinates are the components (up to sign and scale)
        assert abs(np.corrcoef(xy[:, axis], centred @ eigenvectors[:, axis])[0, 1]) > 1 - 1e-9
    assert axis_labels(expected) == (f"PC1 ({100 * expected[0]:.1f}% of variance)",
                                     f"PC2 ({100 * expected[1]:.1f}% of variance)")


def test_identity_colours_tell_twenty_identities_apart():
    from utils.embedding_plot import GREY, colour_note, identity_colour
    pids = list(range(100, 120))
    order = {pid: i for i, pid in enumerate(pids)}
    colours = np.array([identity_colour(pid, order) for pid in pids], dtype=float)
    distances = np.sqrt(((colours[:, None] - colours[None]) ** 2).sum(-1))
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= 45, distances.min()  # every pair of the 20 apart by at least 45 RGB levels
    assert np.sqrt(((colours - GREY) ** 2).sum(-1)).min() >= 45  # and none is the distractors' grey
    assert identity_colour(-1, order) == GREY
    assert colour_note(20) == "colour = identity (20 identities, 20 colours)"
    assert "repeated" in colour_note(21)


def test_embedding_plot_tool_draws_axes_and_legend(hoss_root, golden_dir, tmp_path):
    from tools.embedding_plot import main as plot_main
    from utils.embedding_plot import AXIS, LEGEND, PANEL, PLOT, TITLE, picture_size
    path = plot_main(["--config_file", TRANSOSS, "--weights", tiny_weights(golden_dir), "--out",
                      str(tmp_path / "e.png"), "--protocol", "O2S", "DATASETS.ROOT_DIR", hoss_root,
                      "MODEL.PRETRAIN_PATH", "", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", *TINY_MODEL])
    with Image.open(path) as picture:
        assert picture.size == picture_size(2)
        dark = np.asarray(picture.convert("L")) < 100
    for left in (0, PANEL):
        assert dark[TITLE + PLOT + 1:TITLE + PLOT + AXIS, left + AXIS:left + PANEL].sum() > 50   # PC1 label
        assert dark[TITLE:TITLE + PLOT, left:left + AXIS].sum() > 50                           # PC2 label
    assert dark[-LEGEND:].sum() > 200                                                          # legend


# ------------------------------------------------------------------ 6. data-loader workers capped at the CPUs


def test_loader_workers_are_capped_at_the_available_cpus(hoss_root, tmp_path, monkeypatch):
    import datasets.build as build
    from datasets import build_dataset, build_test_loader, build_train_loader
    from utils.logger import setup_logger
    monkeypatch.setattr(build, "_reported_caps", set())  # the cap is logged once per process
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    setup_logger(str(tmp_path), "run.log")
    cfg = load_config(TRANSOSS, ["DATASETS.ROOT_DIR", hoss_root, "DATALOADER.NUM_WORKERS", str(cpus + 3),
                                 "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "2"])
    dataset = build_dataset(cfg)
    assert build_test_loader(cfg, dataset.protocol("ALL").query).num_workers == cpus
    assert build_train_loader(cfg, dataset.train).num_workers == cpus
    with open(tmp_path / "run.log") as f:
        lines = [line for line in f if "NUM_WORKERS" in line]
    assert len(lines) == 1 and f"DATALOADER.NUM_WORKERS {cpus + 3} capped at {cpus}, the CPUs available" in lines[0]

    within = load_config(TRANSOSS, ["DATASETS.ROOT_DIR", hoss_root, "DATALOADER.NUM_WORKERS", str(cpus)])
    assert build_test_loader(within, dataset.protocol("ALL").query).num_workers == cpus
