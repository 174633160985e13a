"""model.weights: every checkpoint layout a TransOSS user meets, built with the REAL official key names.

The official key list (tests/data/golden/official_keys_transoss_vitb.txt, the layout of the released
fine-tuned ViT-B checkpoint) is parsed here, cut to blocks 0-1 and scaled to the tiny model (width 48,
qkv 144, MLP 192; the dead ImageNet head keeps its 1000 rows, the classifier its 21), filled with random
tensors and saved; then every tensor must land in the right place of the shipreid model.
"""
from __future__ import annotations

import os
import pickle
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_MODEL

from configs import load_config
from model import build_model
from model.weights import (WeightsError, load_weights, old_patch_grid, read_state_dict, resize_pos_embed,
                           to_official)

D = 48
SCALE = {768: 48, 2304: 144, 3072: 192}        # ViT-B width, qkv rows, MLP hidden -> the tiny model's
KEEP_BLOCKS = re.compile(r"blocks\.(\d+)\.")
LINE = re.compile(r"^(?P<key>\S+) \[(?P<shape>[0-9, ]*)\] (?P<dtype>\w+)$")

# shipreid key -> official fine-tuned key: every kind of tensor the mapper has to move
OURS_TO_OFFICIAL = {
    "backbone.cls_token": "base.cls_token",
    "backbone.pos_embed": "base.pos_embed",
    "backbone.mie_embed": "base.mie_embed",
    "backbone.patch_embed.optical.weight": "base.patch_embed.proj.weight",
    "backbone.patch_embed.optical.bias": "base.patch_embed.proj.bias",
    "backbone.patch_embed.sar.weight": "base.patch_embed_SAR.proj.weight",
    "backbone.patch_embed.sar.bias": "base.patch_embed_SAR.proj.bias",
    "backbone.size_embed.weight": "base.wh_embed.linear_layer.weight",
    "backbone.size_embed.bias": "base.wh_embed.linear_layer.bias",
    "backbone.blocks.0.norm1.weight": "base.blocks.0.norm1.weight",
    "backbone.blocks.0.attn.qkv.weight": "base.blocks.0.attn.qkv.weight",
    "backbone.blocks.0.attn.qkv.bias": "base.blocks.0.attn.qkv.bias",
    "backbone.blocks.1.attn.proj.weight": "base.blocks.1.attn.proj.weight",
    "backbone.blocks.1.mlp.fc1.weight": "base.blocks.1.mlp.fc1.weight",
    "backbone.blocks.1.mlp.fc2.bias": "base.blocks.1.mlp.fc2.bias",
    "backbone.norm.weight": "base.norm.weight",
    "backbone.norm.bias": "base.norm.bias",
    "neck.weight": "bottleneck.weight",
    "neck.bias": "bottleneck.bias",
    "neck.running_mean": "bottleneck.running_mean",
    "neck.running_var": "bottleneck.running_var",
    "neck.num_batches_tracked": "bottleneck.num_batches_tracked",
}


# ------------------------------------------------------------------------------------------ helpers
def parse_key_list(path: str) -> dict[str, tuple[list[int], str]]:
    """'key [d0, d1] dtype' lines -> {key: (shape, dtype)}; comment lines skipped."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = LINE.match(line)
            assert match, f"unparsable key-list line: {line!r}"
            shape = [int(s) for s in match["shape"].split(",") if s.strip()]
            out[match["key"]] = (shape, match["dtype"])
    return out


def tiny_layout(golden_dir: str, name: str = "transoss", scale=None) -> dict[str, tuple[list[int], str]]:
    """The official layout cut to blocks 0-1 and scaled to the tiny model."""
    scale = scale or SCALE
    full = parse_key_list(os.path.join(golden_dir, f"official_keys_{name}_vitb.txt"))
    tiny = {}
    for key, (shape, dtype) in full.items():
        block = KEEP_BLOCKS.search(key)
        if block and int(block[1]) > 1:
            continue
        tiny[key] = ([scale.get(s, s) for s in shape], dtype)
    return tiny


def random_state(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in layout.items():
        if dtype == "int64":
            state[key] = torch.randint(0, 1000, shape, generator=gen)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5      # a variance is positive
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


@pytest.fixture
def official(golden_dir) -> dict[str, torch.Tensor]:
    return random_state(tiny_layout(golden_dir))


def cfg(*extra):
    return load_config(None, [*TINY_MODEL, *extra])


def build(*extra, num_classes=0, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg(*extra), num_classes=num_classes)


def make_batch(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, 256, 128), dtype=torch.uint8, generator=gen),
            "modality": torch.tensor([0, 1, 1, 0, 1, 0][:n], dtype=torch.int64),
            "size": torch.randn(n, 3, generator=gen, dtype=torch.float32)}


def save(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


def imagenet_from_official(official: dict) -> dict[str, torch.Tensor]:
    """A timm-style ImageNet ViT state dict (14 x 14 grid, `head.*`) made from the official backbone keys."""
    gen = torch.Generator().manual_seed(7)
    state = {}
    for key, value in official.items():
        if not key.startswith("base.") or key.startswith(("base.patch_embed_SAR", "base.mie_embed", "base.wh_embed")):
            continue
        name = key[len("base."):]
        if name.startswith("fc."):
            name = "head." + name[len("fc."):]
        state[name] = value.clone()
    state["pos_embed"] = torch.randn(1, 1 + 14 * 14, D, generator=gen)
    return state


def expected_pos_resize(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """cls entry kept, grid bilinearly interpolated (align_corners=False), flattened row-major."""
    grid = pos[:, 1:].reshape(1, old[0], old[1], D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], D)], dim=1)


# ------------------------------------------------------------------------------------------ key list
def test_key_list_parser_and_tiny_layout(golden_dir):
    mine = parse_key_list(os.path.join(golden_dir, "official_keys_transoss_vitb.txt"))
    assert len(mine) == 6 + 2 + 12 * 12 + 2 + 2 + 2 + 1 + 5     # 164 tensors in the ViT-B checkpoint
    assert mine["base.pos_embed"] == ([1, 129, 768], "float32")
    assert mine["classifier.weight"] == ([21, 768], "float32")
    tiny = tiny_layout(golden_dir)
    assert len(tiny) == len(mine) - 10 * 12
    assert tiny["base.blocks.1.attn.qkv.weight"][0] == [144, 48]
    assert tiny["base.blocks.0.mlp.fc2.weight"][0] == [48, 192]
    assert tiny["base.fc.weight"][0] == [1000, 48] and tiny["classifier.weight"][0] == [21, 48]
    assert tiny["bottleneck.num_batches_tracked"] == ([], "int64") and tiny["logit_scale"] == ([], "float32")


# ------------------------------------------------------------------------------------ official full
@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_fine_tuned_checkpoint_loads_every_tensor_in_place(official, tmp_path, prefix):
    path = save({prefix + k: v for k, v in official.items()}, tmp_path / "transoss_official.pth")
    model = build(num_classes=21)
    report = load_weights(model, path, mode="full")
    own = model.state_dict()

    assert report.layout == "official_full"
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.ignored) == ["base.fc.bias", "base.fc.weight", "logit_scale"]
    assert set(report.loaded) == set(own)                         # every model tensor came from the file
    for ours, theirs in OURS_TO_OFFICIAL.items():
        assert torch.equal(own[ours], official[theirs]), (ours, theirs)
    # the whole mapping, not only the samples above: every official key except the dead ones
    for key, value in official.items():
        if key in ("base.fc.weight", "base.fc.bias", "logit_scale"):
            continue
        ours = (key.replace("base.patch_embed_SAR.proj.", "backbone.patch_embed.sar.")
                .replace("base.patch_embed.proj.", "backbone.patch_embed.optical.")
                .replace("base.wh_embed.linear_layer.", "backbone.size_embed.")
                .replace("base.", "backbone.").replace("bottleneck.", "neck."))
        assert torch.equal(own[ours], value), key
    # the identity classifier of the file loads when the model has one of the same shape
    assert torch.equal(model.classifier.weight, official["classifier.weight"])
    assert model.backbone.patch_embed.sar.weight.data_ptr() != model.backbone.patch_embed.optical.weight.data_ptr()
    assert not torch.equal(model.backbone.patch_embed.sar.weight, model.backbone.patch_embed.optical.weight)


def test_official_checkpoint_into_an_inference_model_without_classifier(official, tmp_path):
    path = save(official, tmp_path / "ft.pth")
    model = build()                                              # num_classes 0: no classifier
    report = load_weights(model, path, mode="full")
    assert sorted(report.ignored) == ["base.fc.bias", "base.fc.weight", "classifier.weight", "logit_scale"]
    assert not report.missing and not report.unexpected
    assert torch.equal(model.neck.running_mean, official["bottleneck.running_mean"])


def test_wrapped_checkpoints_are_unwrapped(official, tmp_path):
    for wrapper in ("model", "state_dict"):
        path = save({wrapper: {"module." + k: v for k, v in official.items()}, "epoch": torch.tensor(3)},
                    tmp_path / f"{wrapper}.pth")
        state = read_state_dict(path)
        assert set(state) == set(official)
        model = build(num_classes=21)
        load_weights(model, path, mode="full")
        assert torch.equal(model.backbone.blocks[1].mlp.fc2.weight, official["base.blocks.1.mlp.fc2.weight"])


# ------------------------------------------------------------------------ (b) official backbone only
@pytest.mark.parametrize("with_size_embed", [True, False])
def test_official_backbone_pretrained_file_loads_for_init(official, tmp_path, with_size_embed):
    backbone = {k[len("base."):]: v for k, v in official.items() if k.startswith("base.")}
    if not with_size_embed:                                      # the pretraining recipe runs with SSE off
        backbone = {k: v for k, v in backbone.items() if not k.startswith("wh_embed.")}
    assert backbone["pos_embed"].shape == (1, 129, D) and "patch_embed_SAR.proj.weight" in backbone
    assert "mie_embed" in backbone and not any(k.startswith(("bottleneck", "classifier", "logit")) for k in backbone)
    path = save(backbone, tmp_path / "vit_b512_pre.pth")

    model = build(num_classes=5, seed=1)
    size_before = model.backbone.size_embed.weight.detach().clone()
    neck_before = {k: v.clone() for k, v in model.neck.state_dict().items()}
    classifier_before = model.classifier.weight.detach().clone()
    report = load_weights(model, path, mode="init")

    assert report.layout == "official_backbone"
    assert not report.missing and not report.unexpected and not report.mismatched
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    b = model.backbone
    assert torch.equal(b.patch_embed.sar.weight, backbone["patch_embed_SAR.proj.weight"])
    assert torch.equal(b.patch_embed.optical.bias, backbone["patch_embed.proj.bias"])
    assert torch.equal(b.mie_embed, backbone["mie_embed"])
    assert torch.equal(b.pos_embed, backbone["pos_embed"])
    assert torch.equal(b.blocks[0].attn.qkv.weight, backbone["blocks.0.attn.qkv.weight"])
    assert torch.equal(b.norm.bias, backbone["norm.bias"])
    if with_size_embed:
        assert torch.equal(b.size_embed.weight, backbone["wh_embed.linear_layer.weight"])
    else:
        assert torch.equal(b.size_embed.weight, size_before)
        assert "backbone.size_embed.weight keeps its initialisation" in report.notes
    # init mode leaves the neck and the classifier as built
    assert all(torch.equal(v, neck_before[k]) for k, v in model.neck.state_dict().items())
    assert torch.equal(model.classifier.weight, classifier_before)


def test_backbone_only_file_is_not_a_full_model(official, tmp_path):
    backbone = {k[len("base."):]: v for k, v in official.items() if k.startswith("base.")}
    path = save(backbone, tmp_path / "vit_b512_pre.pth")
    with pytest.raises(WeightsError, match="vit_b512_pre.pth") as err:
        load_weights(build(), path, mode="full")
    assert "neck.weight" in str(err.value)


# ---------------------------------------------------------------- (c) raw pretraining checkpoint
def test_raw_pretraining_checkpoint_loads_for_init(official, tmp_path):
    raw = {"module." + k: v for k, v in official.items()}
    raw["module.classifier.weight"] = torch.randn(1234, D)        # classifier sized to the pair identities
    path = save(raw, tmp_path / "transformer_60.pth")
    model = build(num_classes=21, seed=2)
    neck_before = {k: v.clone() for k, v in model.neck.state_dict().items()}
    classifier_before = model.classifier.weight.detach().clone()
    report = load_weights(model, path, mode="init")

    assert report.layout == "official_full"
    assert not report.missing and not report.unexpected and not report.mismatched
    assert set(report.ignored) == {"base.fc.weight", "base.fc.bias", "logit_scale", "classifier.weight",
                                   "neck.weight", "neck.bias", "neck.running_mean", "neck.running_var",
                                   "neck.num_batches_tracked"}
    own = model.state_dict()
    for ours, theirs in OURS_TO_OFFICIAL.items():
        if ours.startswith("backbone."):
            assert torch.equal(own[ours], official[theirs]), ours
    assert all(torch.equal(v, neck_before[k]) for k, v in model.neck.state_dict().items())
    assert torch.equal(model.classifier.weight, classifier_before)


# ------------------------------------------------------------------------------- (d) ImageNet ViT
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "linear_patch"])
def test_imagenet_vit_loads_for_init(official, tmp_path, fmt):
    state = imagenet_from_official(official)
    assert state["pos_embed"].shape == (1, 197, D) and state["head.weight"].shape == (1000, D)
    patch = state["patch_embed.proj.weight"].clone()
    if fmt == "linear_patch":                                     # old-style linear patchify [D, 3*16*16]
        state["patch_embed.proj.weight"] = patch.reshape(D, 3 * 16 * 16)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        path = str(tmp_path / "vit_base_patch16_224.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        path = save(state, tmp_path / "vit_base_p16_224.pth")

    model = build(seed=3)
    b = model.backbone
    mie_before = b.mie_embed.detach().clone()
    size_before = {k: v.clone() for k, v in b.size_embed.state_dict().items()}
    report = load_weights(model, path, mode="init")

    assert report.layout == "imagenet_vit"
    assert not report.missing and not report.unexpected and not report.mismatched
    assert sorted(report.ignored) == ["head.bias", "head.weight"]
    assert torch.equal(b.patch_embed.optical.weight, patch)
    assert torch.equal(b.patch_embed.sar.weight, b.patch_embed.optical.weight)   # SAR head from the optical one
    assert torch.equal(b.patch_embed.sar.bias, state["patch_embed.proj.bias"])
    assert b.patch_embed.sar.weight.data_ptr() != b.patch_embed.optical.weight.data_ptr()  # copies, not tied
    assert torch.equal(b.mie_embed, mie_before)
    assert all(torch.equal(v, size_before[k]) for k, v in b.size_embed.state_dict().items())
    assert torch.equal(b.cls_token, state["cls_token"])
    assert torch.equal(b.blocks[1].attn.qkv.bias, state["blocks.1.attn.qkv.bias"])
    assert torch.equal(b.norm.weight, state["norm.weight"])
    assert b.pos_embed.shape == (1, 129, D)
    expected = expected_pos_resize(state["pos_embed"], (14, 14), (16, 8))
    assert torch.equal(b.pos_embed[:, 0], state["pos_embed"][:, 0])
    torch.testing.assert_close(b.pos_embed.detach(), expected, atol=1e-6, rtol=0)
    assert any("reshaped" in n for n in report.notes) == (fmt == "linear_patch")
    assert any("[1, 197, 48] -> [1, 129, 48]" in n for n in report.notes)


def test_current_timm_model_state_dict_loads_for_init(tmp_path):
    import timm
    torch.manual_seed(11)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=D, depth=2, num_heads=3)
    state = vit.state_dict()
    path = save(state, tmp_path / "timm_vit.pth")
    model = build(seed=4)
    report = load_weights(model, path, mode="init")
    assert report.layout == "imagenet_vit" and not report.missing and not report.unexpected
    b = model.backbone
    for ours, theirs in (("blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.weight"),
                         ("blocks.1.mlp.fc1.bias", "blocks.1.mlp.fc1.bias"),
                         ("patch_embed.optical.weight", "patch_embed.proj.weight"),
                         ("patch_embed.sar.weight", "patch_embed.proj.weight"), ("norm.bias", "norm.bias")):
        assert torch.equal(b.state_dict()[ours], state[theirs]), ours
    torch.testing.assert_close(b.pos_embed.detach(), expected_pos_resize(state["pos_embed"], (14, 14), (16, 8)),
                               atol=1e-6, rtol=0)
    # the timm blocks and ours are the same modules: the same tokens give the same output
    x = torch.randn(2, 7, D)
    vit.eval(), model.eval()
    assert torch.allclose(vit.norm(vit.blocks(x)), b.norm(b.blocks(x)), atol=1e-6)


# ----------------------------------------------------------------------- position embedding resize
def test_16x8_checkpoint_initialises_a_stride_12_model(official, tmp_path):
    path = save(official, tmp_path / "ft.pth")
    model = build("MODEL.STRIDE_SIZE", "[12,12]", num_classes=21)
    assert model.backbone.grid_size == (21, 10)
    report = load_weights(model, path, mode="init")
    assert not report.missing and not report.mismatched
    assert any("grid 16x8 -> 21x10" in n for n in report.notes)
    assert model.backbone.pos_embed.shape == (1, 1 + 21 * 10, D)
    expected = expected_pos_resize(official["base.pos_embed"], (16, 8), (21, 10))
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected, atol=1e-6, rtol=0)
    # the model runs at that grid: 211 + size token
    out = model.eval().embed(make_batch(2))
    assert out.shape == (2, D) and torch.isfinite(out).all()


@pytest.mark.parametrize("strict", [True, False])
def test_a_trained_model_is_never_resized_for_evaluation(official, tmp_path, strict):
    """test.py, resume and FeatureExtractor load in "full" mode: a stride-16 model into a stride-12 config stops
    with the keys to set, even with MODEL.STRICT_LOAD False."""
    path = save(official, tmp_path / "ft.pth")
    with pytest.raises(WeightsError, match=r"ft\.pth: .*128 patch entries, this model's grid is 21x10.*never resized"
                                           r".*MODEL\.STRIDE_SIZE.*INPUT\.SIZE_TEST.*config\.yaml"):
        load_weights(build("MODEL.STRIDE_SIZE", "[12,12]", num_classes=21), path, mode="full", strict=strict)


def test_a_grid_the_entry_count_cannot_tell_is_refused_until_declared(official, tmp_path):
    """A 16x8 checkpoint into a 256x256 model (16x16): 128 entries fit 16x8 and 8x16 equally well. Guessing
    8x16 would silently transpose the position embedding, so the load stops and names the key to set."""
    path = save(official, tmp_path / "ft.pth")
    with pytest.raises(WeightsError, match=r"ft\.pth.*128 patch entries.*8x16.*16x8.*MODEL\.WEIGHTS_GRID"):
        load_weights(build("INPUT.SIZE_TRAIN", "[256,256]", "INPUT.SIZE_TEST", "[256,256]"), path, mode="init")
    model = build("INPUT.SIZE_TRAIN", "[256,256]", "INPUT.SIZE_TEST", "[256,256]")
    report = load_weights(model, path, mode="init", file_grid=cfg("MODEL.WEIGHTS_GRID", "[16,8]").MODEL.WEIGHTS_GRID)
    assert any("grid 16x8 -> 16x16" in n for n in report.notes)
    torch.testing.assert_close(model.backbone.pos_embed.detach(),
                               expected_pos_resize(official["base.pos_embed"], (16, 8), (16, 16)), atol=1e-6, rtol=0)
    with pytest.raises(WeightsError, match=r"MODEL.WEIGHTS_GRID \[12, 12\] has 144 cells.*128 patch entries"):
        load_weights(build("INPUT.SIZE_TRAIN", "[256,256]"), path, mode="init", file_grid=[12, 12])


def test_old_patch_grid_and_resize_pos_embed():
    assert old_patch_grid(128, (16, 8)) == (16, 8)
    assert old_patch_grid(128, (21, 10)) == (16, 8)
    assert old_patch_grid(196, (16, 8)) == (14, 14)
    assert old_patch_grid(210, (16, 8)) == (21, 10)               # a stride-12 checkpoint back to stride 16
    assert old_patch_grid(288, (16, 8)) == (24, 12)               # 384 x 192 input
    assert old_patch_grid(128, (16, 16), declared=(8, 16)) == (8, 16)
    with pytest.raises(WeightsError, match="about equally well"):
        old_patch_grid(128, (16, 16))                             # 16x8 or 8x16: both off by a factor 2
    pos = torch.randn(1, 1 + 128, D)
    assert torch.equal(resize_pos_embed(pos, (16, 8)), pos)       # same grid: unchanged
    torch.testing.assert_close(resize_pos_embed(pos, (32, 16)), expected_pos_resize(pos, (16, 8), (32, 16)))


# ------------------------------------------------------------------------------------ strictness
def test_checkpoint_of_another_width_is_refused(golden_dir, tmp_path):
    layout = tiny_layout(golden_dir, scale={768: 64, 2304: 192, 3072: 256})     # a width-64 model
    path = save(random_state(layout), tmp_path / "width64.pth")
    with pytest.raises(WeightsError, match=re.escape(path)) as err:
        load_weights(build(), path, mode="full")
    assert "backbone.cls_token [1, 1, 64] vs model [1, 1, 48]" in str(err.value)
    assert "STRICT_LOAD" in str(err.value)
    model = build(num_classes=21)
    report = load_weights(model, path, mode="full", strict=False)
    own = model.state_dict()
    widths = [k for k, v in own.items() if v.dim() and not k.startswith("classifier.")]
    assert sorted(m.split(" ")[0] for m in report.mismatched) == sorted(widths)
    assert "classifier.weight" in report.ignored                  # a classifier of another shape is rebuilt
    assert report.loaded == ["neck.num_batches_tracked"]          # the only tensor without the width


def test_single_shape_mismatch(official, tmp_path):
    bad = dict(official, **{"base.norm.weight": torch.randn(64)})
    path = save(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=re.escape(path)):
        load_weights(build(), path, mode="full")
    model = build(num_classes=21)
    norm_before = model.backbone.norm.weight.detach().clone()
    report = load_weights(model, path, mode="full", strict=False)
    assert report.mismatched == ["backbone.norm.weight [64] vs model [48]"]
    assert report.unexpected == []
    assert set(report.missing) <= {"backbone.norm.weight"}
    assert torch.equal(model.backbone.norm.weight, norm_before)   # skipped, keeps its value
    assert torch.equal(model.backbone.norm.bias, official["base.norm.bias"])     # the rest loads
    assert torch.equal(model.backbone.patch_embed.sar.weight, official["base.patch_embed_SAR.proj.weight"])
    assert len(report.loaded) == len(model.state_dict()) - 1


def test_unexpected_key(official, tmp_path):
    path = save(dict(official, **{"base.some_new_layer.weight": torch.randn(3)}), tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=re.escape(path)) as err:
        load_weights(build(), path, mode="full")
    assert "backbone.some_new_layer.weight" in str(err.value)
    model = build(num_classes=21)
    report = load_weights(model, path, mode="full", strict=False)
    assert report.unexpected == ["backbone.some_new_layer.weight"] and not report.missing and not report.mismatched
    assert torch.equal(model.backbone.blocks[0].norm2.bias, official["base.blocks.0.norm2.bias"])
    # unexpected keys are refused in init mode as well
    with pytest.raises(WeightsError, match="some_new_layer"):
        load_weights(build(), path, mode="init")


def test_missing_required_key_in_full_mode(official, tmp_path):
    path = save({k: v for k, v in official.items() if k != "base.norm.weight"}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=re.escape(path)) as err:
        load_weights(build(), path, mode="full")
    assert "backbone.norm.weight" in str(err.value)
    model = build(num_classes=21)
    before = model.backbone.norm.weight.detach().clone()
    report = load_weights(model, path, mode="full", strict=False)
    assert report.missing == ["backbone.norm.weight"] and not report.unexpected and not report.mismatched
    assert torch.equal(model.backbone.norm.weight, before)
    assert torch.equal(model.backbone.norm.bias, official["base.norm.bias"])
    # a required backbone key is required at init too (only MIE, SSE and the SAR head may be absent)
    with pytest.raises(WeightsError, match="backbone.norm.weight"):
        load_weights(build(), path, mode="init")


def test_bad_files_name_the_path(tmp_path):
    cases = {"absent.pth": None, "a_list.pth": [torch.ones(2), torch.zeros(3)], "numbers.pth": {"a": 1, "b": 2}}
    for name, content in cases.items():
        if content is not None:
            torch.save(content, tmp_path / name)
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 3)
    with open(tmp_path / "pickle.pth", "wb") as f:
        pickle.dump([1, 2, 3], f, protocol=2)
    (tmp_path / "noise.safetensors").write_bytes(b"\x00" * 40)
    for name in [*cases, "noise.pth", "pickle.pth", "noise.safetensors"]:
        path = str(tmp_path / name)
        with pytest.raises(WeightsError, match=re.escape(path)):
            load_weights(build(), path, mode="init")


def test_unknown_layout_and_mode(tmp_path):
    path = save({"encoder.layer.0.weight": torch.ones(2)}, tmp_path / "bert.pth")
    with pytest.raises(WeightsError, match="unrecognised checkpoint layout"):
        load_weights(build(), path)
    with pytest.raises(ValueError, match="mode"):
        load_weights(build(), path, mode="partial")


def test_linear_patch_weight_of_another_width_is_a_reported_mismatch(tmp_path):
    """Regression (was a bare RuntimeError from the unconditional reshape, fixed in a81dade): a 2-D [64, 768]
    patch projection of a width-64 ViT into the width-48 model is a WeightsError naming the file, and with
    strict=False a reported mismatch; the position embedding of another width is not resized."""
    import timm
    torch.manual_seed(12)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=64, depth=2, num_heads=4)
    state = vit.state_dict()
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].reshape(64, -1)
    path = save(state, tmp_path / "vit64_linear.pth")
    with pytest.raises(WeightsError, match=re.escape(path)):
        load_weights(build(), path, mode="init")
    report = load_weights(build(), path, mode="init", strict=False)
    assert "backbone.patch_embed.optical.weight [64, 768] vs model [48, 3, 16, 16]" in report.mismatched
    assert "backbone.pos_embed [1, 197, 64] vs model [1, 129, 48]" in report.mismatched
    assert not any("reshaped" in n or "resized" in n for n in report.notes)


# ------------------------------------------------------------------------------------ round trip
def test_to_official_round_trip(golden_dir, tmp_path):
    model = build(num_classes=21, seed=5).eval()
    with torch.no_grad():                                         # a trained-looking neck, not the identity
        model.neck.running_mean.normal_()
        model.neck.running_var.uniform_(0.5, 2.0)
        model.neck.weight.normal_()
    official = to_official(model.state_dict())
    expected = {k for k in tiny_layout(golden_dir) if not k.startswith("base.fc.") and k != "logit_scale"}
    assert set(official) == expected
    layout = tiny_layout(golden_dir)
    for key, value in official.items():
        assert list(value.shape) == layout[key][0], key
        assert str(value.dtype) == f"torch.{layout[key][1]}", key
    path = save(official, tmp_path / "official.pth")

    again = build(num_classes=21, seed=6).eval()
    report = load_weights(again, path, mode="full")
    assert not report.missing and not report.unexpected and not report.ignored
    batch = make_batch(6)
    assert torch.equal(model.embed(batch), again.embed(batch))
    assert torch.equal(model.embed(batch, "after"), again.embed(batch, "after"))
    assert torch.equal(model.classifier.weight, again.classifier.weight)
    with pytest.raises(KeyError):
        to_official({"something.else": torch.ones(1)})


def test_shipreid_checkpoint_round_trip_with_module_prefix(tmp_path):
    model = build(num_classes=21, seed=8).eval()
    path = save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "ckpt.pth")
    again = build(num_classes=21, seed=9).eval()
    report = load_weights(again, path, mode="full")
    assert report.layout == "shipreid" and not report.missing
    batch = make_batch(4)
    assert torch.equal(model.embed(batch), again.embed(batch))


# ------------------------------------------------------------------------------------ golden file
def test_golden_checkpoint_loads_cleanly(golden_dir):
    path = os.path.join(golden_dir, "transoss_tiny", "transoss_tiny_official_format.pth")
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    model = build(num_classes=21)
    report = load_weights(model, path, mode="full")
    assert report.layout == "official_full"
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.ignored) == ["base.fc.bias", "base.fc.weight", "logit_scale"]
    own = model.state_dict()
    assert set(report.loaded) == set(own)
    for ours, theirs in OURS_TO_OFFICIAL.items():
        assert torch.equal(own[ours], file_state[theirs]), ours
    assert torch.equal(model.classifier.weight, file_state["classifier.weight"])
