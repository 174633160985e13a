"""Explanation maps (model/attention_maps.py, model/pair_maps.py, processor/explainer.py) and tools/explain.py:
rollout by hand, constructed models whose maps must peak where they were built to, the model left untouched, and
the pictures from real chips and from saved features."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from configs import load_config
from model import build_model
from model.attention_maps import AttentionRecorder, discard_lowest, patch_row, rollout
from model.pair_maps import pair_cams
from processor.explainer import Explainer, picture_size, positive_part
from utils.errors import ShipReIDError
from utils.explain_plot import UNKNOWN
from utils.ranked_list import HIT, MISS

DEMO = "configs/demo/transoss.yml"
CPU = torch.device("cpu")


def tiny(*opts):
    """The demo model from its config (whatever its patch grid), random weights, eval mode."""
    torch.manual_seed(0)
    cfg = load_config(DEMO, ["MODEL.DEVICE", "cpu", "MODEL.DEPTH", "2", "DATALOADER.NUM_WORKERS", "0", *opts])
    return cfg, build_model(cfg).eval()


def chip_paths(samples_dir):
    query = os.path.join(samples_dir, "query", "0002_s05c1_RGB.tif")
    gallery = [os.path.join(samples_dir, "bounding_box_test", n) for n in ("0002_s05c2_SAR.tif", "0003_s05c2_SAR.tif")]
    return query, gallery


def real_batch(explainer, samples_dir):
    query, gallery = chip_paths(samples_dir)
    return explainer._batch([explainer.load(p) for p in [query] + gallery])


# ------------------------------------------------------------------ rollout


def test_rollout_is_the_product_of_attention_plus_identity_by_hand(samples_dir):
    cfg, model = tiny()
    for block in model.backbone.blocks:  # peaked attention, so that the product is not near uniform
        block.attn.qkv.weight.data *= 8
    batch = real_batch(Explainer(model, cfg, CPU), samples_dir)
    with torch.no_grad(), AttentionRecorder(model.backbone) as recorder:
        model(batch)
    recorded = recorder.probabilities()

    # the same probabilities, read where timm's explicit (unfused) attention forms them
    explicit, handles = [], [b.attn.attn_drop.register_forward_hook(lambda m, i, o: explicit.append(o.clone()))
                             for b in model.backbone.blocks]
    model.backbone.set_fused_attention(False)
    with torch.no_grad():
        model(batch)
    model.backbone.set_fused_attention(True)
    for handle in handles:
        handle.remove()
    for mine, timms in zip(recorded, explicit):
        assert torch.allclose(mine, timms, atol=1e-6)
    assert min(float(a.amax(dim=-1).mean()) for a in explicit) > 0.2  # peaked: rows far from uniform (1/N)

    for fusion, reduce in (("mean", np.mean), ("max", np.max), ("min", np.min)):
        expected = None
        for attn in explicit:
            a = reduce(attn.double().numpy(), axis=1) + np.eye(attn.shape[-1])
            a = a / a.sum(axis=-1, keepdims=True)
            expected = a if expected is None else a @ expected
        got = rollout(recorded, fusion).double().numpy()
        assert np.allclose(got, expected, atol=1e-5), fusion
        assert not np.allclose(got, rollout(recorded[::-1], fusion).double().numpy(), atol=1e-3)  # order matters


def test_discard_drops_the_lowest_off_diagonal_entries_of_each_row():
    attn = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.35, 0.25]]])
    kept = torch.tensor([[[0.5, 0.3, 0.0], [0.0, 0.6, 0.3], [0.4, 0.0, 0.25]]])
    assert torch.equal(discard_lowest(attn, 0.5), kept)
    assert torch.equal(discard_lowest(attn, 0.99), kept)  # floor(0.99 * 2) = 1 of the 2 off-diagonal entries
    assert torch.equal(discard_lowest(attn, 0.0), attn)
    with pytest.raises(ShipReIDError, match="discard ratio"):
        discard_lowest(attn, 1.0)


# ------------------------------------------------------------------ constructed models


def attending_model(cfg, model, targets: dict[int, int]):
    """Blocks that change nothing (zero attention output and MLP) but whose output token t attends to patch
    targets[t] alone: every input is zero except one large embedding direction per target (patch position entry
    or class token), and q of token t meets k of its patch."""
    backbone, dim = model.backbone, cfg.MODEL.EMBED_DIM
    big = 50.0
    with torch.no_grad():
        for p in backbone.parameters():
            p.zero_()
        for block in backbone.blocks:
            block.norm1.weight.fill_(1)
            head_dim = block.attn.head_dim
            for i, (token, patch) in enumerate(targets.items()):
                token_dim, patch_dim = 2 * i, 2 * i + 1
                for h in range(block.attn.num_heads):
                    block.attn.qkv.weight[h * head_dim + i, token_dim] = big           # q reads the token's direction
                    block.attn.qkv.weight[dim + h * head_dim + i, patch_dim] = 1.0    # k reads the patch's direction
        for i, (token, patch) in enumerate(targets.items()):
            prefix = backbone.cls_token[0, 0] if token == 0 else backbone.spec_tokens[:, 0]
            prefix[..., 2 * i] = big
            backbone.pos_embed[0, backbone.num_prefix_tokens + patch, 2 * i + 1] = big
    return model


def peak(grid: torch.Tensor) -> int:
    return int(grid.flatten().argmax())


def test_class_token_attending_one_patch_peaks_there(samples_dir):
    """SDF-Net tokens: the shared class token attends only to one patch, the specific one only to another; each
    map (rollout, last-layer attention, at grid and at chip resolution) peaks at its own patch."""
    cfg, model = tiny("MODEL.SDF.DFL", "tokens")
    rows, cols = model.backbone.grid_size
    shared_patch, specific_patch = cols + 1, (rows - 2) * cols + cols - 2
    attending_model(cfg, model, {0: shared_patch, 1: specific_patch})
    explainer = Explainer(model, cfg, CPU, kind="rollout")
    query, gallery = chip_paths(samples_dir)
    chips = [explainer.load(query), explainer.load(gallery[0])]
    with torch.no_grad(), AttentionRecorder(model.backbone) as recorder:
        model(explainer._batch(chips))
    attentions = recorder.probabilities()
    assert float(patch_row(attentions[-1].mean(1), model.backbone, 0).flatten()[shared_patch]) > 0.99
    rolled = rollout(attentions)
    assert peak(patch_row(rolled, model.backbone, 0)[0]) == shared_patch
    assert peak(patch_row(rolled, model.backbone, 1)[0]) == specific_patch

    conv = model.backbone.patch_embed.optical
    input_h, input_w = cfg.INPUT.SIZE_TEST
    for kind in ("rollout", "attention"):
        for feature, patch in (("shared", shared_patch), ("specific", specific_patch)):
            maps = Explainer(model, cfg, CPU, kind=kind, feature=feature).explain_row(*chips[:1], chips[1:])
            for heat in (maps.query, maps.gallery[0]):
                y, x = np.unravel_index(heat.argmax(), heat.shape)
                # the brightest chip pixel, in network-input pixels, lies in the patch's receptive field
                iy, ix = (y + 0.5) * input_h / heat.shape[0], (x + 0.5) * input_w / heat.shape[1]
                r, c = divmod(patch, cols)
                assert r * conv.stride[0] <= iy <= r * conv.stride[0] + conv.kernel_size[0], (kind, feature)
                assert c * conv.stride[1] <= ix <= c * conv.stride[1] + conv.kernel_size[1], (kind, feature)


def colour_model(cfg, model):
    """Patch tokens carry the mean colour of their pixels (zero pixels: zero tokens); every block but the last
    changes nothing; the last one's class token becomes the mean of the normalised tokens (uniform attention,
    identity value and projection). The feature is then the mean of the chip's coloured patches."""
    backbone, dim = model.backbone, cfg.MODEL.EMBED_DIM
    with torch.no_grad():
        for p in backbone.parameters():
            p.zero_()
        for conv in (backbone.patch_embed.optical, backbone.patch_embed.sar):
            for k in range(3):
                conv.weight[k, k] = 1.0
        for norm in [backbone.norm] + [b.norm1 for b in backbone.blocks]:
            norm.weight.fill_(1)
        last = backbone.blocks[-1].attn
        last.qkv.weight[2 * dim:] = torch.eye(dim)
        last.proj.weight.copy_(torch.eye(dim))
    return model


def paint(image: torch.Tensor, conv, patch: int, cols: int, channel: int) -> torch.Tensor:
    r, c = divmod(patch, cols)
    y, x = r * conv.stride[0], c * conv.stride[1]
    image[channel, y:y + conv.kernel_size[0], x:x + conv.kernel_size[1]] = 1.0
    return image


def test_pair_map_is_positive_where_the_features_agree_and_negative_where_they_differ():
    """Query: red patch a, blue patch c. Gallery: red patch b, green patch d. The pair's similarity rises with the
    shared red: the query map peaks at a and is negative at c, the gallery map peaks at b and is negative at d;
    patches that see no colour carry nothing."""
    cfg, model = tiny()
    colour_model(cfg, model)
    conv, (rows, cols) = model.backbone.patch_embed.optical, model.backbone.grid_size
    a, c, b, d = cols + 1, (rows - 2) * cols + 1, 2 * cols + cols - 2, (rows - 3) * cols + cols - 2
    shape = (3, *cfg.INPUT.SIZE_TEST)
    query = paint(paint(torch.zeros(shape), conv, a, cols, 0), conv, c, cols, 2)
    gallery = paint(paint(torch.zeros(shape), conv, b, cols, 0), conv, d, cols, 1)
    batch = {"image": torch.stack([query, gallery]), "modality": torch.tensor([0, 1]), "size": torch.zeros(2, 3)}
    cams, distance, outputs = pair_cams(model, batch, 1, "feat", feat_norm=True)
    cams = cams.flatten(1)
    assert torch.allclose(distance, (F.normalize(outputs["feat"][:1]) - F.normalize(outputs["feat"][1:])).pow(2).sum(1))
    for cam, agree, differ, image in ((cams[0], a, c, query), (cams[1], b, d, gallery)):
        assert peak(cam) == agree and cam[agree] > 0 and cam[differ] < -0.1 * cam[agree]
        seen = F.conv2d(image.abs().sum(0)[None, None], torch.ones(1, 1, *conv.kernel_size), stride=conv.stride)
        assert torch.all(cam[seen.flatten() == 0].abs() < 1e-6 * cam[agree])
        shown = positive_part(cam.reshape(rows, cols)).flatten()
        assert float(shown[agree]) == 1.0 and float(shown[differ]) == 0.0


# ------------------------------------------------------------------ maps of real chips, model untouched


def test_maps_are_in_unit_range_at_the_chip_resolution(samples_dir):
    cfg, model = tiny()
    query, gallery = chip_paths(samples_dir)
    for kind in ("pair", "rollout", "attention"):
        explainer = Explainer(model, cfg, CPU, kind=kind)
        q, gs = explainer.load(query), [explainer.load(p) for p in gallery]
        maps = explainer.explain_row(q, gs)
        pairs = [(q, maps.query)] + list(zip(gs, maps.gallery)) + [(q, m) for m in maps.query_pair]
        assert len(pairs) == (5 if kind == "pair" else 3)
        for chip, heat in pairs:
            assert heat.shape == chip.pixels.shape[:2] and heat.dtype == np.float32
            assert heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0.8 and heat.min() < 0.2, kind
        assert len(maps.distances) == 2 and all(0 < d < 4 for d in maps.distances)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_maps_leave_the_model_as_it_was(samples_dir):
    """Hooks removed, fused attention and train/eval mode as before, outputs equal bit for bit; the pair map's
    forward pass computes the same features as a plain one."""
    cfg, model = tiny("MODEL.SDF.DFL", "tokens")
    batch = real_batch(Explainer(model, cfg, CPU), samples_dir)
    with torch.no_grad():
        before = model(batch)
    hooks, fused = _hooks(model), [b.attn.fused_attn for b in model.backbone.blocks]
    query, gallery = chip_paths(samples_dir)
    model.train()
    for kind in ("pair", "rollout", "attention"):
        explainer = Explainer(model, cfg, CPU, kind=kind, feature="specific")
        explainer.explain_row(explainer.load(query), [explainer.load(p) for p in gallery])
    assert model.training
    model.eval()
    assert _hooks(model) == hooks and [b.attn.fused_attn for b in model.backbone.blocks] == fused
    with torch.no_grad():
        after = model(batch)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    pair_batch = {k: v[[0, 0, 1, 2]] for k, v in batch.items()}
    _, _, during = pair_cams(model, pair_batch, 2, "feat", True)
    assert all(torch.equal(during[k], before[k][[0, 0, 1, 2]]) for k in before)
    with pytest.raises(RuntimeError, match="boom"), AttentionRecorder(model.backbone):
        raise RuntimeError("boom")
    assert _hooks(model) == hooks


def test_bad_arguments_name_themselves():
    cfg, model = tiny()
    with pytest.raises(ShipReIDError, match="--feature shared needs an SDF-Net model"):
        Explainer(model, cfg, CPU, feature="shared")
    with pytest.raises(ShipReIDError, match="--head_fusion"):
        Explainer(model, cfg, CPU, head_fusion="median")
    with pytest.raises(ShipReIDError, match="--discard_ratio"):
        Explainer(model, cfg, CPU, discard_ratio=1.5)


# ------------------------------------------------------------------ pictures


@pytest.fixture
def weights(tmp_path):
    _, model = tiny()
    path = str(tmp_path / "tiny.pth")
    torch.save(model.state_dict(), path)
    return path


def frame_pixels(path, colour) -> int:
    with Image.open(path) as picture:
        return int((np.asarray(picture.convert("RGB")) == colour).all(-1).sum())


def test_tool_draws_a_query_against_gallery_chips(samples_dir, weights, tmp_path):
    from tools.explain import main as explain_main
    query, gallery = chip_paths(samples_dir)
    unnamed = str(tmp_path / "ship_SAR.tif")  # a chip whose name gives no identity: grey frame
    os.symlink(gallery[1], unnamed)
    out = explain_main(["--config_file", DEMO, "--weights", weights, "--query", query, "--out",
                        str(tmp_path / "rollout.png"), "--map", "rollout", "--gallery", *gallery, unnamed,
                        "MODEL.DEVICE", "cpu", "MODEL.DEPTH", "2"])  # overrides after the chips
    with Image.open(out) as picture:
        assert picture.size == picture_size(1, 3, "rollout")
    assert frame_pixels(out, HIT) > 100 and frame_pixels(out, MISS) > 100 and frame_pixels(out, UNKNOWN) > 100

    with pytest.raises(ShipReIDError, match="missing_RGB.tif"):
        explain_main(["--config_file", DEMO, "--weights", weights, "--query", str(tmp_path / "missing_RGB.tif"),
                      "--gallery", *gallery, "--out", str(tmp_path / "x.png"), "MODEL.DEPTH", "2"])
    with pytest.raises(ShipReIDError, match="--query needs --gallery"):
        explain_main(["--config_file", DEMO, "--weights", weights, "--query", query, "--out", "x.png"])


def test_ranked_list_pictures_with_maps_and_the_tool_from_saved_features(hoss_root, weights, tmp_path, capsys):
    """test.py's ranked lists with TEST.RANKED_LIST_MAPS, and the tool's picture from the features saved beside them:
    the same picture pixel for pixel, and the model's distances agree with the saved ranking (no warning)."""
    from datasets import build_dataset
    from model.weights import load_weights
    from processor.evaluator import Evaluator
    from tools.explain import main as explain_main
    opts = ["DATASETS.ROOT_DIR", hoss_root, "MODEL.DEVICE", "cpu", "MODEL.DEPTH", "2", "DATALOADER.NUM_WORKERS", "0"]
    cfg = load_config(DEMO, [*opts, "TEST.RANKED_LIST_QUERIES", "2", "TEST.RANKED_LIST_TOPK", "3",
                             "TEST.RANKED_LIST_MAPS", "True"])
    model = build_model(cfg).eval()
    load_weights(model, weights)
    evaluator = Evaluator(cfg, [build_dataset(cfg).protocol("S2O")])
    feats = evaluator.extract(model, CPU)
    with pytest.raises(ShipReIDError, match="TEST.RANKED_LIST_MAPS"):
        evaluator.save_ranked_lists(feats, str(tmp_path))
    (path,) = evaluator.save_ranked_lists(feats, str(tmp_path), model, CPU)
    with Image.open(path) as picture:
        assert picture.size == picture_size(2, 3, "pair")
        drawn = np.asarray(picture)
    assert frame_pixels(path, MISS) > 0
    (saved,) = evaluator.save_features(feats, str(tmp_path))
    tool = explain_main(["--config_file", DEMO, "--weights", weights, "--from-features", saved, "--queries", "2",
                         "--topk", "3", "--out", str(tmp_path / "tool.png"), *opts])
    with Image.open(tool) as picture:
        assert np.array_equal(np.asarray(picture), drawn)
    assert "warning" not in capsys.readouterr().err

    with pytest.raises(ShipReIDError, match="features_<protocol>.npz"):
        explain_main(["--config_file", DEMO, "--weights", weights, "--from-features", str(tmp_path / "f.npz"),
                      "--out", "x.png", *opts])
