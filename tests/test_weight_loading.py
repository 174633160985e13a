"""Every checkpoint layout, built from the official key lists at a tiny size, loads into the right place."""
from __future__ import annotations

import os
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_MODEL

from configs import load_config
from model import build_model
from model.weights import WeightsError, load_weights, old_patch_grid, to_official

# ViT-B sizes in the key list -> the tiny model's (width 48, MLP 192, 3 heads), blocks 0-1 kept
SCALE = {768: 48, 2304: 144, 3072: 192}
LINE = re.compile(r"^(\S+) \[([\d, ]*)\] (\w+)$")


def tiny_cfg(*extra):
    return load_config(None, [*TINY_MODEL, *extra])


def official_state(golden_dir, name="transoss") -> dict:
    """Random tensors with every key and (scaled) shape of the official full-size checkpoint."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    with open(os.path.join(golden_dir, f"official_keys_{name}_vitb.txt")) as f:
        for line in f:
            match = LINE.match(line.strip())
            if not match or re.search(r"blocks\.([2-9]|1\d)\.", match[1]):
                continue
            shape = [SCALE.get(int(s), int(s)) for s in match[2].split(",") if s.strip()]
            state[match[1]] = (torch.randint(0, 5, shape, generator=gen) if match[3] == "int64"
                               else torch.randn(shape, generator=gen))
    return state


def test_official_fine_tuned_layout_with_and_without_module_prefix(golden_dir, tmp_path):
    state = official_state(golden_dir)
    for prefix in ("", "module."):
        path = tmp_path / f"ft{prefix or 'plain'}.pth"
        torch.save({prefix + k: v for k, v in state.items()}, path)
        model = build_model(tiny_cfg())
        report = load_weights(model, str(path), mode="full")
        own = model.state_dict()
        assert report.layout == "official_full" and not report.missing and not report.unexpected
        assert set(report.ignored) == {"base.fc.weight", "base.fc.bias", "logit_scale", "classifier.weight"}
        pairs = {"backbone.patch_embed.sar.weight": "base.patch_embed_SAR.proj.weight",
                 "backbone.patch_embed.optical.bias": "base.patch_embed.proj.bias",
                 "backbone.size_embed.weight": "base.wh_embed.linear_layer.weight",
                 "backbone.mie_embed": "base.mie_embed", "backbone.blocks.1.mlp.fc2.weight": "base.blocks.1.mlp.fc2.weight",
                 "neck.running_var": "bottleneck.running_var", "backbone.norm.bias": "base.norm.bias"}
        for ours, theirs in pairs.items():
            assert torch.equal(own[ours], state[theirs]), ours


def test_official_backbone_and_raw_pretraining_checkpoints(golden_dir, tmp_path):
    state = official_state(golden_dir)
    backbone = {k[len("base."):]: v for k, v in state.items() if k.startswith("base.") and "wh_embed" not in k}
    torch.save(backbone, tmp_path / "vit_b512_pre.pth")
    model = build_model(tiny_cfg(), num_classes=5)
    report = load_weights(model, str(tmp_path / "vit_b512_pre.pth"), mode="init")
    assert report.layout == "official_backbone" and not report.missing
    assert torch.equal(model.backbone.patch_embed.sar.weight, backbone["patch_embed_SAR.proj.weight"])

    raw = {"module." + k: v for k, v in state.items()}
    raw["module.classifier.weight"] = torch.randn(1234, 48)  # classifier sized to the pair ids
    torch.save(raw, tmp_path / "transformer_60.pth")
    model = build_model(tiny_cfg(), num_classes=5)
    report = load_weights(model, str(tmp_path / "transformer_60.pth"), mode="init")
    assert report.layout == "official_full" and "classifier.weight" in report.ignored
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, state["base.blocks.0.attn.qkv.weight"])


def imagenet_state(linear_patch: bool = False) -> dict:
    import timm
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=48, depth=2, num_heads=3)
    state = vit.state_dict()
    if linear_patch:
        state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].reshape(48, -1)
    return state


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "linear_patch"])
def test_imagenet_vit_is_mapped_and_resized(tmp_path, fmt):
    state = imagenet_state(linear_patch=fmt == "linear_patch")
    path = tmp_path / f"vit.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = build_model(tiny_cfg())
    mie_before = model.backbone.mie_embed.detach().clone()
    report = load_weights(model, str(path), mode="init")
    assert report.layout == "imagenet_vit" and not report.missing and "head.weight" in report.ignored
    b = model.backbone
    assert torch.equal(b.patch_embed.sar.weight, b.patch_embed.optical.weight)
    assert torch.equal(b.patch_embed.optical.weight.flatten(1), state["patch_embed.proj.weight"].reshape(48, -1))
    assert torch.equal(b.mie_embed, mie_before)  # keeps its initialisation
    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, 48).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(16, 8), mode="bilinear", align_corners=False)
    expected = torch.cat([state["pos_embed"][:, :1], expected.permute(0, 2, 3, 1).reshape(1, 128, 48)], 1)
    assert b.pos_embed.shape == (1, 129, 48) and torch.allclose(b.pos_embed, expected, atol=1e-6)


def test_position_embedding_of_a_16x8_grid_into_stride_12(tmp_path):
    source = build_model(tiny_cfg())
    torch.save(source.state_dict(), tmp_path / "ours.pth")
    target = build_model(tiny_cfg("MODEL.STRIDE_SIZE", "[12,12]"))
    assert target.backbone.grid_size == (21, 10)
    load_weights(target, str(tmp_path / "ours.pth"), mode="full")
    assert target.backbone.pos_embed.shape == (1, 1 + 210, 48)
    assert old_patch_grid(128, (21, 10)) == (16, 8) and old_patch_grid(196, (16, 8)) == (14, 14)


def test_strictness_and_bad_files(golden_dir, tmp_path):
    state = official_state(golden_dir)
    cases = {
        "shape": {**state, "base.norm.weight": torch.ones(64)},
        "unexpected": {**state, "base.some_new_layer.weight": torch.ones(3)},
        "missing": {k: v for k, v in state.items() if k != "base.norm.weight"},
    }
    for name, bad in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(bad, path)
        with pytest.raises(WeightsError, match=str(path)):
            load_weights(build_model(tiny_cfg()), str(path), mode="full")
        report = load_weights(build_model(tiny_cfg()), str(path), mode="full", strict=False)
        assert report.mismatched or report.unexpected or report.missing
    torch.save([1, 2, 3], tmp_path / "list.pth")
    (tmp_path / "noise.pth").write_bytes(os.urandom(200))
    for name in ("list.pth", "noise.pth", "absent.pth"):
        with pytest.raises(WeightsError, match=name):
            load_weights(build_model(tiny_cfg()), str(tmp_path / name))


def test_round_trip_through_the_official_layout(golden_dir, tmp_path):
    model = build_model(tiny_cfg()).eval()
    official = to_official(model.state_dict())
    expected = {k for k in official_state(golden_dir) if not k.startswith(("base.fc.", "logit_scale", "classifier"))}
    assert set(official) == expected
    torch.save(official, tmp_path / "official.pth")
    again = build_model(tiny_cfg()).eval()
    load_weights(again, str(tmp_path / "official.pth"), mode="full")
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (4, 3, 256, 128), dtype=torch.uint8, generator=gen),
             "modality": torch.tensor([0, 1, 0, 1]), "size": torch.randn(4, 3, generator=gen)}
    assert torch.equal(model.embed(batch), again.embed(batch))


def test_golden_checkpoint_loads_cleanly(golden_dir):
    path = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    report = load_weights(build_model(tiny_cfg()), path, mode="full")
    assert not report.missing and not report.unexpected and not report.mismatched
