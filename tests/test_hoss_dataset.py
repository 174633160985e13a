"""datasets.hoss on the shared real chips and on small hand-made datasets of real TIFFs: split counts,
training labels, the ALL / O2S / S2O protocols (release subset folders or derived), identity leaks,
bad folder contents and the statistics table."""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from PIL import Image

from datasets.hoss import HOSS, derive_cross_modal, format_statistics, statistics_rows
from datasets.records import DISTRACTOR_PID, OPTICAL, SAR, ChipRecord, DatasetError, parse_hoss_name


# ------------------------------------------------------------------------------------------ helpers
def write_chip(folder, name: str) -> str:
    """A real tiny chip: 8-bit RGB TIFF for *_RGB.tif, float32 single-band TIFF for *_SAR.tif."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name.endswith("_RGB.tif"):
        Image.fromarray(rng.integers(0, 256, (12, 4, 3), dtype=np.uint8), mode="RGB").save(path)
    else:
        Image.fromarray(rng.random((10, 3), dtype=np.float32) + 0.01, mode="F").save(path)
    return path


def make_hoss(root, layout: dict[str, list[str]]) -> str:
    """<root>/HOSS/<folder>/<names> for every folder of `layout`; returns the DATASETS.ROOT_DIR."""
    for folder, names in layout.items():
        os.makedirs(os.path.join(str(root), "HOSS", folder), exist_ok=True)
        for name in names:
            write_chip(os.path.join(str(root), "HOSS", folder), name)
    return str(root)


BASE_LAYOUT = {
    "bounding_box_train": ["0001_s05c1_RGB.tif", "0001_s05c2_SAR.tif", "0004_s05c1_RGB.tif"],
    "query": ["0002_s05c1_RGB.tif", "0201_s01c1_SAR.tif"],
    "bounding_box_test": ["0002_s05c2_SAR.tif", "0002_s05c3_RGB.tif", "0201_s01c2_RGB.tif",
                          "-1_0081_SAR.tif", "-1_0090_RGB.tif"],
}


def record(name: str) -> ChipRecord:
    return parse_hoss_name(os.path.join("somewhere", name))


# ------------------------------------------------------------------------------------------ real chips
def test_real_chip_split_counts(hoss_root):
    hoss = HOSS(hoss_root)
    train = hoss.train
    assert len(train) == 56
    assert len({r.pid for r in train}) == 21
    assert sum(r.modality == OPTICAL for r in train) == 41
    assert sum(r.modality == SAR for r in train) == 15
    query, gallery = hoss.split("query"), hoss.split("bounding_box_test")
    assert len(query) == 31 and len({r.pid for r in query}) == 31  # one image per test identity
    assert sum(r.modality == OPTICAL for r in query) == 18 and sum(r.modality == SAR for r in query) == 13
    assert len(gallery) == 78
    assert sum(r.pid == DISTRACTOR_PID for r in gallery) == 18
    assert len({r.pid for r in gallery} - {DISTRACTOR_PID}) == 31
    assert sum(r.modality == OPTICAL for r in gallery) == 52 and sum(r.modality == SAR for r in gallery) == 26
    # records are sorted by file name and carry the parsed fields
    assert [r.name for r in train] == sorted(os.listdir(os.path.join(hoss_root, "HOSS", "bounding_box_train")))
    first = train[0]
    assert (first.name, first.pid, first.modality, first.seq, first.pass_id) == ("0001_s05c1_RGB.tif", 1, OPTICAL, 5, 1)
    hoss.check_disjoint_identities()  # the real release split has no leak


def test_real_chip_train_labels_are_relabelled_in_sorted_pid_order(hoss_root):
    hoss = HOSS(hoss_root)
    labels, pid_to_label = hoss.train_labels()
    pids = sorted({r.pid for r in hoss.train})
    assert pid_to_label == {pid: i for i, pid in enumerate(pids)}
    assert sorted(set(labels)) == list(range(21))
    assert labels == [pid_to_label[r.pid] for r in hoss.train]
    # the smallest pid gets 0, the largest 20; first record 0001 -> label 0
    assert labels[0] == 0 and pid_to_label[min(pids)] == 0 and pid_to_label[max(pids)] == 20
    # raw pids are not 0..20 (so the relabelling really happens)
    assert pids != list(range(21))


def test_real_chip_query_and_gallery_keep_raw_pids(hoss_root):
    hoss = HOSS(hoss_root)
    query, gallery = hoss.split("query"), hoss.split("bounding_box_test")
    for r in query + gallery:
        if r.pid != DISTRACTOR_PID:
            assert r.name.startswith(f"{r.pid:04d}_")
        else:
            assert r.name.startswith("-1_")
    assert {r.pid for r in query} == {r.pid for r in gallery} - {DISTRACTOR_PID}
    all_protocol = hoss.protocol("ALL")
    assert all_protocol.query == query and all_protocol.gallery == gallery and all_protocol.derived is False


def test_real_chip_derived_cross_modal_protocols(hoss_root):
    hoss = HOSS(hoss_root)
    o2s, s2o = hoss.protocol("O2S"), hoss.protocol("S2O")
    assert (len(o2s.query), len(o2s.gallery)) == (16, 26)
    assert (len(s2o.query), len(s2o.gallery)) == (13, 52)
    assert o2s.derived is True and s2o.derived is True
    assert all(r.modality == OPTICAL for r in o2s.query) and all(r.modality == SAR for r in o2s.gallery)
    assert all(r.modality == SAR for r in s2o.query) and all(r.modality == OPTICAL for r in s2o.gallery)
    for protocol in (o2s, s2o):
        gallery_pids = {r.pid for r in protocol.gallery}
        assert all(r.pid in gallery_pids for r in protocol.query), protocol.name
    # 18 optical queries, 16 kept: 2 have no SAR gallery image (e.g. 0025: only c3_RGB in the gallery)
    dropped = {r.name for r in hoss.split("query") if r.modality == OPTICAL} - {r.name for r in o2s.query}
    assert len(dropped) == 2 and "0025_s05c1_RGB.tif" in dropped
    # distractors of the right modality stay in the cross-modal galleries
    assert sum(r.pid == DISTRACTOR_PID for r in o2s.gallery) + sum(r.pid == DISTRACTOR_PID for r in s2o.gallery) == 18


def test_format_statistics_one_row_per_subset(hoss_root):
    hoss = HOSS(hoss_root)
    protocols = [hoss.protocol(name) for name in ("ALL", "O2S", "S2O")]
    rows = statistics_rows(protocols, hoss.train)
    assert [label for label, _ in rows] == ["train", "ALL query", "ALL gallery", "O2S query", "O2S gallery",
                                            "S2O query", "S2O gallery"]
    table = format_statistics(rows).splitlines()
    assert len(table) == 2 + 7  # header, rule, one line per subset
    assert table[0].split() == ["subset", "ids", "images", "optical", "SAR", "distractors"]
    assert set(table[1]) == {"-"}
    parsed = {}
    for line in table[2:]:
        *label, ids, images, optical, sar, distractors = line.split()
        parsed[" ".join(label)] = tuple(int(v) for v in (ids, images, optical, sar, distractors))
    assert parsed["train"] == (21, 56, 41, 15, 0)
    assert parsed["ALL query"] == (31, 31, 18, 13, 0)
    assert parsed["ALL gallery"] == (31, 78, 52, 26, 18)
    assert parsed["O2S query"] == (16, 16, 16, 0, 0)
    assert parsed["S2O query"] == (13, 13, 0, 13, 0)
    assert parsed["O2S gallery"][1:4] == (26, 0, 26)
    assert parsed["S2O gallery"][1:4] == (52, 52, 0)
    # without train: no train row
    assert len(format_statistics(statistics_rows(protocols[:1])).splitlines()) == 2 + 2


# ------------------------------------------------------------------------------------------ derivation by hand
def test_protocol_derivation_on_hand_made_records():
    query = [record(n) for n in (
        "0001_s05c1_RGB.tif",   # optical, has a SAR gallery image -> O2S
        "0002_s05c1_RGB.tif",   # optical, only optical gallery images -> dropped from O2S
        "0003_s01c1_SAR.tif",   # SAR, has an optical gallery image -> S2O
        "0004_s01c1_SAR.tif",   # SAR, only SAR gallery images -> dropped from S2O
        "0005_s05c1_RGB.tif",   # optical, no gallery image at all -> dropped everywhere
    )]
    gallery = [record(n) for n in (
        "0001_s05c2_SAR.tif", "0001_s05c3_RGB.tif",
        "0002_s05c3_RGB.tif",
        "0003_s01c2_RGB.tif",
        "0004_s01c2_SAR.tif",
        "-1_0001_SAR.tif", "-1_0002_RGB.tif",
    )]
    o2s = derive_cross_modal("O2S", query, gallery)
    assert [r.name for r in o2s.query] == ["0001_s05c1_RGB.tif"]
    assert [r.name for r in o2s.gallery] == ["0001_s05c2_SAR.tif", "0004_s01c2_SAR.tif", "-1_0001_SAR.tif"]
    assert o2s.derived is True and o2s.name == "O2S"
    s2o = derive_cross_modal("S2O", query, gallery)
    assert [r.name for r in s2o.query] == ["0003_s01c1_SAR.tif"]
    assert [r.name for r in s2o.gallery] == ["0001_s05c3_RGB.tif", "0002_s05c3_RGB.tif", "0003_s01c2_RGB.tif",
                                             "-1_0002_RGB.tif"]


def test_distractor_query_is_never_kept_by_derivation():
    # a (malformed) distractor query would only "match" distractors, which do not count as positives
    query = [record("-1_0005_RGB.tif")]
    gallery = [record("-1_0001_SAR.tif")]
    assert derive_cross_modal("O2S", query, gallery).query == []


# ------------------------------------------------------------------------------------------ subset folders
def test_release_subset_folders_are_used_when_present(tmp_path):
    layout = dict(BASE_LAYOUT)
    # a release O2S subset that differs from the pure modality filter (an extra SAR gallery image)
    layout["subset/O2S/query"] = ["0002_s05c1_RGB.tif"]
    layout["subset/O2S/bounding_box_test"] = ["0002_s05c2_SAR.tif", "0009_s05c2_SAR.tif"]
    root = make_hoss(tmp_path, layout)
    hoss = HOSS(root)
    o2s = hoss.protocol("O2S")
    assert o2s.derived is False
    assert [r.name for r in o2s.query] == ["0002_s05c1_RGB.tif"]
    assert [r.name for r in o2s.gallery] == ["0002_s05c2_SAR.tif", "0009_s05c2_SAR.tif"]
    subset_dir = os.path.join(root, "HOSS", "subset", "O2S")
    assert all(r.path.startswith(subset_dir) for r in o2s.query + o2s.gallery)
    # S2O has no subset folder: derived from the ALL folders
    s2o = hoss.protocol("S2O")
    assert s2o.derived is True
    assert [r.name for r in s2o.query] == ["0201_s01c1_SAR.tif"]
    # split folders are sorted by file name: '-' sorts before digits
    assert [r.name for r in s2o.gallery] == ["-1_0090_RGB.tif", "0002_s05c3_RGB.tif", "0201_s01c2_RGB.tif"]


@pytest.mark.parametrize("protocol,split,planted", [
    ("O2S", "bounding_box_test", "0009_s05c3_RGB.tif"),   # an optical chip in the O2S (SAR) gallery
    ("S2O", "query", "0002_s05c1_RGB.tif")])              # an optical chip among the S2O (SAR) queries
def test_a_subset_folder_holds_one_modality(tmp_path, protocol, split, planted):
    """Fusion and the cross-modal metrics take subset/O2S and subset/S2O to hold one modality per folder: a chip
    of the other modality is an error naming it, not a silently mixed protocol."""
    layout = dict(BASE_LAYOUT)
    query, gallery = {"O2S": (["0002_s05c1_RGB.tif"], ["0002_s05c2_SAR.tif"]),
                      "S2O": (["0201_s01c1_SAR.tif"], ["0201_s01c2_RGB.tif"])}[protocol]
    layout[f"subset/{protocol}/query"] = query + ([planted] if split == "query" else [])
    layout[f"subset/{protocol}/bounding_box_test"] = gallery + ([planted] if split != "query" else [])
    hoss = HOSS(make_hoss(tmp_path, layout))
    with pytest.raises(DatasetError, match=rf"{planted}: optical chip in subset/{protocol}/{split}, which holds SAR "
                                           rf"chips only for {protocol}; move it out"):
        hoss.protocol(protocol)


def test_derived_when_no_subset_folder(tmp_path):
    hoss = HOSS(make_hoss(tmp_path, BASE_LAYOUT))
    o2s = hoss.protocol("O2S")
    assert o2s.derived is True
    assert [r.name for r in o2s.query] == ["0002_s05c1_RGB.tif"]
    assert [r.name for r in o2s.gallery] == ["-1_0081_SAR.tif", "0002_s05c2_SAR.tif"]


def test_incomplete_subset_folder_raises(tmp_path):
    layout = dict(BASE_LAYOUT)
    layout["subset/O2S/query"] = ["0002_s05c1_RGB.tif"]  # no subset/O2S/bounding_box_test
    hoss = HOSS(make_hoss(tmp_path, layout))
    with pytest.raises(DatasetError, match="split folder not found") as err:
        hoss.protocol("O2S")
    assert os.path.join("subset", "O2S", "bounding_box_test") in str(err.value)


def test_unknown_protocol_raises(tmp_path):
    hoss = HOSS(make_hoss(tmp_path, BASE_LAYOUT))
    with pytest.raises(DatasetError, match="O2O"):
        hoss.protocol("O2O")


# ------------------------------------------------------------------------------------------ errors
def test_identity_leak_between_train_and_test_names_the_file(tmp_path):
    layout = dict(BASE_LAYOUT)
    layout["bounding_box_test"] = BASE_LAYOUT["bounding_box_test"] + ["0004_s05c3_SAR.tif"]  # 0004 is a train id
    hoss = HOSS(make_hoss(tmp_path, layout))
    with pytest.raises(DatasetError) as err:
        hoss.check_disjoint_identities()
    leaked = os.path.join(str(tmp_path), "HOSS", "bounding_box_test", "0004_s05c3_SAR.tif")
    assert leaked in str(err.value) and "pid 4" in str(err.value)


def test_identity_leak_in_query_names_the_file(tmp_path):
    layout = dict(BASE_LAYOUT)
    layout["query"] = BASE_LAYOUT["query"] + ["0001_s05c3_RGB.tif"]
    hoss = HOSS(make_hoss(tmp_path, layout))
    with pytest.raises(DatasetError) as err:
        hoss.check_disjoint_identities()
    assert os.path.join(str(tmp_path), "HOSS", "query", "0001_s05c3_RGB.tif") in str(err.value)


@pytest.mark.parametrize("bad_name", ["foo.tif", "0001_RGB.tif", "0001_s05c1_rgb.tif", "0001_s05c1_RGB.tiff",
                                      "0001_s05c1_RGB.png", "-2_0001_SAR.tif", "0001_s05c1_IR.tif"])
def test_badly_named_file_in_split_folder_raises_naming_it(tmp_path, bad_name):
    root = make_hoss(tmp_path, BASE_LAYOUT)
    bad = os.path.join(root, "HOSS", "query", bad_name)
    with open(bad, "wb") as f:
        f.write(b"x")
    hoss = HOSS(root)
    with pytest.raises(DatasetError) as err:
        hoss.split("query")
    assert bad in str(err.value)
    # the other splits are still fine
    assert len(hoss.train) == 3


def test_empty_split_folder_raises(tmp_path):
    layout = dict(BASE_LAYOUT)
    layout["query"] = []
    root = make_hoss(tmp_path, layout)
    with pytest.raises(DatasetError, match="empty") as err:
        HOSS(root).protocol("ALL")
    assert os.path.join(root, "HOSS", "query") in str(err.value)


def test_missing_split_folder_raises(tmp_path):
    layout = {k: v for k, v in BASE_LAYOUT.items() if k != "bounding_box_test"}
    root = make_hoss(tmp_path, layout)
    with pytest.raises(DatasetError, match="not found") as err:
        HOSS(root).protocol("ALL")
    assert os.path.join(root, "HOSS", "bounding_box_test") in str(err.value)


def test_missing_hoss_folder_raises(tmp_path):
    with pytest.raises(DatasetError) as err:
        HOSS(str(tmp_path))
    assert os.path.join(str(tmp_path), "HOSS") in str(err.value)


def test_distractor_in_training_split_raises_naming_it(tmp_path):
    layout = dict(BASE_LAYOUT)
    layout["bounding_box_train"] = BASE_LAYOUT["bounding_box_train"] + ["-1_0001_RGB.tif"]
    root = make_hoss(tmp_path, layout)
    with pytest.raises(DatasetError) as err:
        HOSS(root).train_labels()
    assert os.path.join(root, "HOSS", "bounding_box_train", "-1_0001_RGB.tif") in str(err.value)


def test_hand_made_dataset_labels(tmp_path):
    hoss = HOSS(make_hoss(tmp_path, BASE_LAYOUT))
    labels, pid_to_label = hoss.train_labels()
    # train files sorted: 0001_s05c1_RGB, 0001_s05c2_SAR, 0004_s05c1_RGB -> pids 1, 1, 4 -> labels 0, 0, 1
    assert labels == [0, 0, 1] and pid_to_label == {1: 0, 4: 1}
    assert [r.modality for r in hoss.train] == [OPTICAL, SAR, OPTICAL]
