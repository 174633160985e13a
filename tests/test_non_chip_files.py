"""Files that are not chips (.DS_Store, GDAL *.aux.xml sidecars, hidden files) in the data folders are ignored
with one log line per folder; a badly named file with an image extension stays an error (or is skipped and
listed under DATALOADER.ON_BAD_IMAGE skip). OptiSar_Pair reads optical chips and SAR PNGs in any 8-bit PIL mode
as the official pair reader does, counting each conversion kind in one log line. All through the entry points
on the real chips."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL
from test_training import make_pair_root

import train as train_entry
import train_pair as pair_entry
from datasets.hoss import HOSS
from datasets.records import DatasetError
from tools.validate_dataset import main as validate_main

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
       "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "SOLVER.MAX_EPOCHS", "1", "SOLVER.EVAL_PERIOD", "0",
       "SOLVER.LOG_PERIOD", "100"]
AUX_XML = '<PAMDataset>\n  <PAMRasterBand band="1">\n    <Metadata/>\n  </PAMRasterBand>\n</PAMDataset>\n'
BAD_NAME = "0001_s05c1_RGB copy.tif"  # a real chip under a name outside the convention


def plant_non_chips(folder, first_chip: str) -> list[str]:
    """What Finder, GDAL and macOS leave beside the chips; the names sorted as the log lists them."""
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (folder / f"{first_chip}.aux.xml").write_text(AUX_XML)
    (folder / f"._{first_chip}").write_bytes(b"\x00\x05\x16\x07" + bytes(28))  # AppleDouble: hidden, ends in .tif
    return sorted([".DS_Store", f"{first_chip}.aux.xml", f"._{first_chip}"])


@pytest.fixture
def planted_root(samples_dir, tmp_path):
    """(root, {split folder: ignored names}): the real chips linked into fresh split folders, plus non-chips."""
    root = tmp_path / "root"
    planted = {}
    for split in SPLITS:
        folder = root / "HOSS" / split
        folder.mkdir(parents=True)
        names = sorted(os.listdir(os.path.join(samples_dir, split)))
        for name in names:
            os.symlink(os.path.join(samples_dir, split, name), folder / name)
        planted[str(folder)] = plant_non_chips(folder, names[0])
    return root, planted


def plant_bad_name(root, samples_dir) -> str:
    bad = root / "HOSS" / "bounding_box_train" / BAD_NAME
    shutil.copyfile(os.path.join(samples_dir, "bounding_box_train", "0001_s05c1_RGB.tif"), bad)
    return str(bad)


def train(root, out, *extra):
    return train_entry.main(["--config_file", "configs/hoss/transoss.yml", "DATASETS.ROOT_DIR", str(root),
                             "OUTPUT_DIR", str(out), *RUN, "DATASETS.PROTOCOLS", "['ALL']", *extra])


def lines_with(log_file, text: str) -> list[str]:
    return [line for line in log_file.read_text().splitlines() if text in line]


def test_training_ignores_files_that_are_not_chips(planted_root, tmp_path):
    root, planted = planted_root
    out = tmp_path / "out"
    trainer = train(root, out)
    records = trainer.loader.dataset.records
    assert len(records) == 56 and trainer.loader.dataset.num_classes == 21  # every real training chip
    assert not [r for r in records if not r.name.endswith(("_RGB.tif", "_SAR.tif")) or r.name.startswith(".")]
    notes = lines_with(out / "train.log", "that are not chips")
    assert len(notes) == 3  # one line per split folder, not one per file
    for folder, names in planted.items():
        assert sum(f"{folder}: ignored 3 file(s) that are not chips ({', '.join(names)})" in n for n in notes) == 1
    assert os.path.isfile(out / "model_final.pth")


def test_badly_named_chip_stops_training_naming_it(planted_root, samples_dir, tmp_path):
    root, _ = planted_root
    bad = plant_bad_name(root, samples_dir)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="HOSS convention") as err:
        train(root, out)
    assert str(err.value).startswith(f"{bad}: ")
    assert not (out / "checkpoints").exists() and not list(out.glob("*.pth"))


def test_skip_policy_leaves_a_badly_named_chip_out_and_lists_it(planted_root, samples_dir, caplog):
    root, planted = planted_root
    bad = plant_bad_name(root, samples_dir)
    data_logger = logging.getLogger("shipreid.data")
    data_logger.addHandler(caplog.handler)  # an entry point run earlier in this process stops propagation
    try:
        with caplog.at_level(logging.INFO, logger="shipreid.data"):
            train_split = HOSS(str(root), on_bad_image="skip").train
    finally:
        data_logger.removeHandler(caplog.handler)
    assert len(train_split) == 56 and bad not in [r.path for r in train_split]
    messages = {(r.levelname, r.getMessage()) for r in caplog.records}
    assert messages == {
        ("WARNING", f"skipped (DATALOADER.ON_BAD_IMAGE skip): {bad}: file name does not follow the HOSS "
                    "convention '{pid}_s{seq}c{pass}_{RGB|SAR}.tif' (or '-1_{n}_{RGB|SAR}.tif' for a distractor); "
                    "rename it or move it out of the split folder"),
        ("INFO", f"{root / 'HOSS' / 'bounding_box_train'}: ignored 3 file(s) that are not chips "
                 f"({', '.join(planted[str(root / 'HOSS' / 'bounding_box_train')])})")}
    with pytest.raises(DatasetError, match="ON_BAD_IMAGE"):
        HOSS(str(root), on_bad_image="ignore")


def test_skip_policy_trains_without_a_badly_named_chip(planted_root, samples_dir, tmp_path):
    root, _ = planted_root
    bad = plant_bad_name(root, samples_dir)
    out = tmp_path / "out"
    trainer = train(root, out, "DATALOADER.ON_BAD_IMAGE", "skip")
    assert len(trainer.loader.dataset.records) == 56
    assert len(lines_with(out / "train.log", bad)) == 1
    assert os.path.isfile(out / "model_final.pth")


def test_validator_notes_non_chips_and_fails_only_on_the_bad_name(planted_root, samples_dir, capsys):
    root, planted = planted_root
    assert validate_main([str(root)]) == []
    printed = capsys.readouterr().out.splitlines()
    notes = [line for line in printed if line.startswith("note: ")]
    assert sorted(notes) == sorted(f"note: {folder}: ignored 3 file(s) that are not chips ({', '.join(names)})"
                                   for folder, names in planted.items())
    assert printed[-1] == f"{root}: no problems found"

    bad = plant_bad_name(root, samples_dir)
    with pytest.raises(SystemExit) as stop:
        validate_main([str(root)])
    assert stop.value.code == 1
    printed = capsys.readouterr().out.splitlines()
    problems = [line for line in printed if not line.startswith("note: ")][:-1]
    assert len(problems) == 1 and problems[0].startswith(f"{bad}: ")
    assert printed[-1] == f"1 problem(s) in {root}"


def replace_link(link, image: Image.Image, suffix: str) -> str:
    """The pair chip behind `link`, rewritten as `image` under `suffix` (.tif or .png)."""
    path = link.with_suffix(suffix)
    link.unlink()
    image.save(path)
    return str(path)


@pytest.fixture
def pair_root(samples_dir, tmp_path):
    """OptiSar_Pair from the real training chips (15 pairs in one folder), with chips stored in the other PIL
    modes the official reader accepts, one 16-bit optical chip and files that are not chips."""
    root = tmp_path / "root"
    make_pair_root(samples_dir, root)
    base = root / "OptiSar_Pair"
    folder = base / "0001"
    optical = {pid: Image.open(folder / f"hoss_{pid}_RGB.tif") for pid in ("0001", "0004", "0005", "0006")}
    sar = np.asarray(Image.open(folder / "hoss_0007_SAR.tif"), dtype=np.float32)
    changed = {
        "rgba": [replace_link(folder / f"hoss_{pid}_RGB.tif", optical[pid].convert("RGBA"), ".tif")
                 for pid in ("0001", "0004")],
        "grey": replace_link(folder / "hoss_0005_RGB.tif", optical["0005"].convert("L"), ".png"),
        "palette": replace_link(folder / "hoss_0006_RGB.tif", optical["0006"].quantize(64), ".png"),
        "sar_png": replace_link(folder / "hoss_0007_SAR.tif",
                                Image.fromarray((sar / sar.max() * 255).astype(np.uint8), mode="L"), ".png"),
    }
    wide = np.asarray(Image.open(folder / "hoss_0008_RGB.tif").convert("L"), dtype=np.uint16) * 257
    changed["16bit"] = replace_link(folder / "hoss_0008_RGB.tif", Image.fromarray(wide), ".png")
    changed["originals"] = {pid: np.asarray(image.convert("RGB")) for pid, image in optical.items()}
    (base / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    plant_non_chips(folder, "hoss_0001_RGB.tif")
    return root, changed


def pretrain(root, out, *extra):
    return pair_entry.main(["--config_file", "configs/pretrain/transoss.yml", "DATASETS.ROOT_DIR", str(root),
                            "OUTPUT_DIR", str(out), *RUN, *extra])


def test_pretraining_reads_8bit_modes_as_the_official_reader(pair_root, tmp_path):
    root, changed = pair_root
    out = tmp_path / "out"
    trainer = pretrain(root, out, "DATALOADER.ON_BAD_IMAGE", "skip")
    dataset = trainer.loader.dataset
    assert len(dataset) == 14  # 15 pairs less the one whose optical chip is 16-bit
    log = out / "train_pair.log"
    assert [line.split(": ", 1)[1] for line in lines_with(log, "to RGB on reading")] == [
        "converted 1 optical chip(s) from PIL mode L to RGB on reading",
        "converted 1 optical chip(s) from PIL mode P to RGB on reading",
        "converted 2 optical chip(s) from PIL mode RGBA to RGB on reading"]   # one line per kind
    skipped = lines_with(log, "skipped (DATALOADER.ON_BAD_IMAGE skip)")
    assert len(skipped) == 1 and changed["16bit"] in skipped[0] and "'I;16'" in skipped[0]
    base = root / "OptiSar_Pair"
    notes = lines_with(log, "that are not chips")
    assert len(notes) == 2
    assert f"{base}: ignored 1 file(s) that are not chips (.DS_Store)" in notes[0]
    assert (f"{base / '0001'}: ignored 3 file(s) that are not chips (.DS_Store, ._hoss_0001_RGB.tif, "
            "hoss_0001_RGB.tif.aux.xml)") in notes[1]

    pixels = {os.path.basename(o.path): dataset.chips.decode(o)[0] for o, _ in dataset.pairs}
    # RGBA -> RGB drops the alpha band: the real chip's pixels come back unchanged
    assert np.array_equal(pixels["hoss_0001_RGB.tif"], changed["originals"]["0001"])
    grey = pixels["hoss_0005_RGB.png"]
    assert np.array_equal(grey[..., 0], grey[..., 2])
    assert np.array_equal(grey[..., 1], np.asarray(Image.fromarray(changed["originals"]["0005"]).convert("L")))
    assert np.abs(pixels["hoss_0006_RGB.png"].astype(int) - changed["originals"]["0006"]).mean() < 8
    sar = next(s for _, s in dataset.pairs if s.path == changed["sar_png"])
    assert np.array_equal(dataset.chips.decode(sar)[0][..., 0], np.asarray(Image.open(changed["sar_png"])))
    assert os.path.isfile(out / "backbone_final.pth")


def test_pretraining_stops_at_a_lone_pair_member_naming_it(pair_root, samples_dir, tmp_path):
    root, _ = pair_root
    lone = root / "OptiSar_Pair" / "0001" / "hoss_9999_RGB.tif"
    shutil.copyfile(os.path.join(samples_dir, "bounding_box_train", "0001_s05c1_RGB.tif"), lone)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="no SAR partner") as err:
        pretrain(root, out, "DATALOADER.ON_BAD_IMAGE", "skip")
    assert str(err.value).startswith(f"{lone}: pair id 9999 in folder 0001")
    assert not list(out.glob("*.pth"))
