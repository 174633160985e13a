"""SDF-Net: the structure descriptor, the prototype and orthogonality losses, the ablation switches, its
weights, and a fine-tune on synthetic and real chips evaluated by test.py."""
from __future__ import annotations

import math
import os

import pytest
import torch

from conftest import TINY_MODEL

import test as test_entry
import train as train_entry
from configs.loader import load_config
from datasets.synthetic import SyntheticSpec, ensure_synthetic
from loss.alignment import orthogonality_loss, structure_prototype_loss
from loss.build import build_loss
from model.build import build_model
from model.structure import structure_descriptor
from model.weights import load_weights, to_official
from utils.errors import ShipReIDError

TINY_RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.AMP", "off", "SOLVER.LOG_PERIOD", "5", "MODEL.PRETRAIN_PATH", "", "MODEL.SDF.STRUCT_LAYER", "1"]


def standardise(values: list[float]) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float64)
    return ((v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5)).float()


def test_structure_descriptor_on_linear_ramps():
    # channel c of the map is a_c * row + b_c * col: every vertical difference is a_c, every horizontal b_c
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(3.0), indexing="ij")
    slopes = [(1.0, 0.0), (-2.0, 1.0), (0.5, -0.5), (0.0, 0.0)]
    channels = [a * rows + b * cols for a, b in slopes]
    patch_map = torch.stack(channels, dim=-1).unsqueeze(0)              # (1, 4, 3, 4)
    energy = [abs(a) + abs(b) for a, b in slopes]                       # 1, 3, 1, 0
    torch.testing.assert_close(structure_descriptor(patch_map)[0], standardise(energy))
    # scale invariance (up to the 1e-5 in the normalisation) and independence of a constant offset
    torch.testing.assert_close(structure_descriptor(3 * patch_map + 7), structure_descriptor(patch_map), atol=1e-5, rtol=0)


def test_structure_descriptor_uses_both_directions_and_absolute_values():
    patch_map = torch.zeros(2, 3, 2, 2)
    patch_map[0, 1, :, 0] = 1.0      # sample 0, channel 0: a bump in the middle row
    patch_map[1, :, 1, 1] = -4.0     # sample 1, channel 1: the right column lowered
    out = structure_descriptor(patch_map)
    # sample 0: vertical |diffs| (1, 1) over 2 rows of pairs x 2 cols -> mean 1 for channel 0; horizontal:
    # rows 0, 2 give 0, row 1 gives |0 - 1| = 1 -> mean 1/3; energy (4/3, 0)
    torch.testing.assert_close(out[0], standardise([4 / 3, 0.0]))
    # sample 1: channel 1 changes only horizontally by 4 in every row -> energy (0, 4)
    torch.testing.assert_close(out[1], standardise([0.0, 4.0]))
    with pytest.raises(ValueError, match="rows >= 2"):
        structure_descriptor(torch.zeros(1, 1, 4, 3))


def test_structure_prototype_loss():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    modality = torch.tensor([0, 1, 1, 0, 1, 0])
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [5.0, -1.0], [5.0, -1.0], [9.0, 9.0]])
    assert float(structure_prototype_loss(same, labels, modality)) == 0.0
    feats = torch.tensor([[1.0, 2.0], [0.0, 2.0], [2.0, 4.0], [5.0, -1.0], [3.0, 1.0], [9.0, 9.0]])
    # id 0: optical (1, 2), SAR mean (1, 3) -> MSE (0 + 1) / 2 = 0.5; id 1: (5,-1) vs (3,1) -> (4 + 4) / 2 = 4;
    # id 2 has no SAR image and is left out
    assert float(structure_prototype_loss(feats, labels, modality)) == pytest.approx((0.5 + 4.0) / 2)
    # no identity with both modalities: zero
    assert float(structure_prototype_loss(feats, labels, torch.zeros(6, dtype=torch.long))) == 0.0


def test_orthogonality_loss_on_constructed_vectors():
    e1, e2 = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    assert float(orthogonality_loss(e1, e2)) == 0.0
    assert float(orthogonality_loss(e1, -5 * e1)) == pytest.approx(1.0)
    diagonal = torch.tensor([[1.0, 1.0, 0.0]])
    assert float(orthogonality_loss(e1, diagonal)) == pytest.approx(1 / math.sqrt(2))
    pair = orthogonality_loss(torch.cat([e1, e1]), torch.cat([e2, -diagonal]))      # mean of 0 and |-1/sqrt2|
    assert float(pair) == pytest.approx(1 / (2 * math.sqrt(2)))


def _model_and_loss(*overrides):
    cfg = load_config("configs/hoss/transoss.yml", [*TINY_MODEL, "MODEL.SDF.STRUCT_LAYER", "0", *overrides,
                                                    "LOSS.TERMS", "[id,triplet,orth,struct]",
                                                    "LOSS.WEIGHTS", "[1.0,1.0,10.0,1.0]"])
    torch.manual_seed(0)
    return build_model(cfg, num_classes=5), build_loss(cfg)


def _shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (8, 3, 256, 128), dtype=torch.uint8, generator=g),
            "modality": torch.tensor([0, 1, 0, 1, 0, 1, 0, 0]), "size": torch.randn(8, 3, generator=g),
            "label": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])}


def test_each_ablation_switch_changes_exactly_its_part():
    base, base_loss = _model_and_loss()
    d = base.backbone.embed_dim
    assert set(base_loss.terms) == {"id", "triplet"}       # SDF-Net terms left out while their modules are off
    base_shapes = _shapes(base)

    scl, scl_loss = _model_and_loss("MODEL.SDF.STRUCT_LAYER", "1")
    assert _shapes(scl) == base_shapes and set(scl_loss.terms) == {"id", "triplet", "struct"}
    scl.train()
    assert scl(_batch())["structure"].shape == (8, d)

    dfl, dfl_loss = _model_and_loss("MODEL.SDF.DFL", "tokens")
    shapes = _shapes(dfl)
    assert set(shapes) - set(base_shapes) == {"backbone.spec_tokens"} and set(base_shapes) <= set(shapes)
    changed = {k for k in base_shapes if shapes[k] != base_shapes[k]}
    assert changed == {"backbone.pos_embed"} and shapes["backbone.pos_embed"][1] == base_shapes["backbone.pos_embed"][1] + 1
    assert set(dfl_loss.terms) == {"id", "triplet", "orth"}
    # parameter count: TransOSS plus the two specific tokens and one position entry (official: "same size")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(dfl) == count(base) + 3 * d

    concat, _ = _model_and_loss("MODEL.SDF.DFL", "tokens", "MODEL.SDF.FUSION", "concat")
    changed = {k for k in shapes if _shapes(concat)[k] != shapes[k]}
    assert changed == {"neck.weight", "neck.bias", "neck.running_mean", "neck.running_var", "classifier.weight"}
    assert _shapes(concat)["classifier.weight"] == (5, 2 * d)

    linear, _ = _model_and_loss("MODEL.SDF.DFL", "linear")
    assert set(_shapes(linear)) - set(base_shapes) == {"head.shared.weight", "head.shared.bias",
                                                       "head.specific.weight", "head.specific.bias"}
    assert _shapes(linear)["backbone.pos_embed"] == base_shapes["backbone.pos_embed"]


@pytest.mark.parametrize("fusion", ["sum", "shared", "specific", "concat"])
def test_fusion_modes_read_the_two_class_tokens(fusion):
    model, _ = _model_and_loss("MODEL.SDF.DFL", "tokens", "MODEL.SDF.FUSION", fusion)
    model.eval()
    batch = _batch()
    out = model(batch)
    tokens = model.backbone.forward_tokens(model.normalizer(batch["image"]), batch["modality"], batch["size"])
    shared, specific = tokens[:, 0], tokens[:, 1]
    expected = {"sum": shared + specific, "shared": shared, "specific": specific,
                "concat": torch.cat([shared, specific], 1)}[fusion]
    torch.testing.assert_close(out["feat"], expected)
    # the specific token is chosen by modality: swapping the two rows of spec_tokens swaps them per sample
    with torch.no_grad():
        model.backbone.spec_tokens.copy_(model.backbone.spec_tokens.flip(0))
    swapped = model.backbone.forward_tokens(model.normalizer(batch["image"]), 1 - batch["modality"], batch["size"])
    assert not torch.allclose(swapped[:, 1], specific)


def test_bad_switch_values_name_the_key():
    with pytest.raises(ShipReIDError, match="MODEL.SDF.DFL"):
        _model_and_loss("MODEL.SDF.DFL", "heads")
    with pytest.raises(ShipReIDError, match="MODEL.SDF.FUSION"):
        _model_and_loss("MODEL.SDF.DFL", "tokens", "MODEL.SDF.FUSION", "mean")
    with pytest.raises(ShipReIDError, match="MODEL.SDF.STRUCT_LAYER"):
        _model_and_loss("MODEL.SDF.STRUCT_LAYER", "3")


def test_transoss_weights_initialise_sdfnet_with_the_class_position_duplicated(tmp_path):
    transoss, _ = _model_and_loss()
    path = tmp_path / "transoss.pth"
    torch.save({k: v for k, v in transoss.state_dict().items() if k.startswith("backbone.")}, path)
    sdf, _ = _model_and_loss("MODEL.SDF.DFL", "tokens")
    spec_before = sdf.backbone.spec_tokens.detach().clone()
    report = load_weights(sdf, str(path), mode="init")
    pos, old = sdf.backbone.pos_embed.detach(), transoss.backbone.pos_embed.detach()
    assert torch.equal(pos[:, 0], old[:, 0]) and torch.equal(pos[:, 1], old[:, 0]) and torch.equal(pos[:, 2:], old[:, 1:])
    assert torch.equal(sdf.backbone.spec_tokens, spec_before)          # new tokens keep their initialisation
    assert any("1 -> 2 class entries" in note for note in report.notes)


def test_official_sdfnet_layout_round_trips(golden_dir, tmp_path):
    official = torch.load(os.path.join(golden_dir, "sdfnet_tiny", "sdfnet_tiny_official_format.pth"), weights_only=True)
    model, _ = _model_and_loss("MODEL.SDF.DFL", "tokens")
    model.classifier = torch.nn.Linear(48, official["classifier.weight"].shape[0], bias=False)
    load_weights(model, os.path.join(golden_dir, "sdfnet_tiny", "sdfnet_tiny_official_format.pth"))
    back = to_official(model.state_dict())
    dead = {k for k in official if k.startswith(("base.fc.", "bottleneck.")) or k == "logit_scale"}
    assert set(back) == set(official) - dead
    for key, value in back.items():
        assert torch.equal(value, official[key]), key


SMALL = SyntheticSpec(seed=5, train_ids=8, test_ids=6, images_per_id=4, distractors=2, pair_folders=1,
                      pairs_per_folder=4)


@pytest.mark.parametrize("data,switches", [
    ("synthetic", []), ("real", []), ("synthetic", ["MODEL.SDF.DFL", "linear", "MODEL.SDF.FUSION", "concat"])])
def test_one_epoch_sdfnet_fine_tune_then_test_py(data, switches, hoss_root, tmp_path):
    if data == "synthetic":
        root = str(tmp_path / "synthetic")
        ensure_synthetic(root, SMALL)
    else:
        root = hoss_root
    out = tmp_path / "run"
    trainer = train_entry.main(["--config_file", "configs/hoss/sdfnet.yml", "DATASETS.ROOT_DIR", root,
                                "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCHS", "1", *TINY_RUN, *switches])
    # every SDF-Net term took part in the last step (the PK batch of 2 identities x 4 images)
    assert set(trainer.last_losses) == {"id", "triplet", "orth", "struct", "total"}
    assert 0.0 < float(trainer.last_losses["orth"]) <= 1.0
    linear = "linear" in switches
    # the official code has no linear heads, so that model is exported in the shipreid layout only
    assert (out / "model_final.pth").is_file() and (out / "model_final_official.pth").is_file() is not linear
    state = trainer.model.state_dict()
    assert ("backbone.spec_tokens" in state) is not linear
    assert state["backbone.pos_embed"].shape[1] == 16 * 8 + (1 if linear else 2)
    weights = out / ("model_final.pth" if linear else "model_final_official.pth")
    results = test_entry.main(["--config_file", "configs/hoss/sdfnet.yml", "DATASETS.ROOT_DIR", root,
                               "TEST.WEIGHT", str(weights), "OUTPUT_DIR", str(tmp_path / "test"), *TINY_RUN,
                               *switches])
    for protocol in ("ALL", "O2S", "S2O"):
        assert 0.0 < results[protocol]["mAP"] <= 1.0


@pytest.mark.parametrize("method,config", [("sdfnet", "configs/hoss/sdfnet.yml"), ("mos", "configs/hoss/mos.yml")])
def test_full_size_model_has_the_official_key_layout(golden_dir, method, config):
    """ViT-B/16 built from the recipe, written back in the official layout: exactly the official key list
    (names, shapes, dtypes), less the keys the official model carries dead (ImageNet head, temperature and,
    for SDF-Net, the unused plain neck)."""
    from test_weights import parse_key_list
    official = parse_key_list(os.path.join(golden_dir, f"official_keys_{method}_vitb.txt"))
    model = build_model(load_config(config), num_classes=21)
    ours = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in to_official(model.state_dict()).items()}
    dead = {"base.fc.weight", "base.fc.bias", "logit_scale"}
    if method == "sdfnet":
        dead |= {k for k in official if k.startswith("bottleneck.")}
    assert ours == {k: tuple(v) for k, v in official.items() if k not in dead}


def test_dfl_off_row_is_evaluated_on_the_pre_neck_feature(golden_dir, hoss_root, tmp_path):
    """`configs/hoss/sdfnet.yml MODEL.SDF.DFL off` (the "SCL only" row): TEST.NECK_FEAT auto gives the pre-neck
    class token, as the released code evaluates a model that is not disentangled: on the official TransOSS
    checkpoint, exactly the official TransOSS features; the log names the feature."""
    import numpy as np

    import test as test_entry
    out = tmp_path / "out"
    test_entry.main(["--config_file", "configs/hoss/sdfnet.yml", "DATASETS.ROOT_DIR", hoss_root, *TINY_MODEL,
                     "MODEL.SDF.DFL", "off", "MODEL.SDF.STRUCT_LAYER", "1", "MODEL.DEVICE", "cpu",
                     "DATALOADER.NUM_WORKERS", "0", "TEST.SAVE_FEATS", "True", "DATASETS.PROTOCOLS", "['ALL']",
                     "TEST.WEIGHT", os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth"),
                     "OUTPUT_DIR", str(out)])
    ours = np.load(out / "features_ALL.npz")["feats"]
    official = np.load(os.path.join(golden_dir, "transoss_tiny", "features_ALL.npz"))["feats"]
    assert np.abs(ours - official).max() < 1e-5
    assert "test feature: the class token before the BN neck (TEST.NECK_FEAT auto)" in (out / "test.log").read_text()


@pytest.mark.parametrize("dfl,expected", [("off", "before"), ("tokens", "after"), ("linear", "after")])
def test_auto_neck_feature_follows_the_dfl_switch(dfl, expected):
    torch.manual_seed(0)
    model = build_model(load_config("configs/hoss/sdfnet.yml", [*TINY_MODEL, "MODEL.SDF.STRUCT_LAYER", "1",
                                                                  "MODEL.SDF.DFL", dfl])).eval()
    with torch.no_grad():
        model.neck.running_mean.normal_()  # a neck that changes the feature
    batch = {"image": torch.randint(0, 256, (3, 3, 256, 128), dtype=torch.uint8), "modality": torch.tensor([0, 1, 0]),
             "size": torch.randn(3, 3)}
    auto = model.embed(batch, "auto")
    assert torch.equal(auto, model.embed(batch, expected))
    assert not torch.equal(auto, model.embed(batch, {"before": "after", "after": "before"}[expected]))
