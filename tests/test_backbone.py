"""The TransOSS model (model/transoss.py, model/embeddings.py, model/reid_model.py) at a tiny size.

Token layout, the hand-built token sequence, where the modality and the size vector act, per-sample
routing in mixed batches, the BNNeck and the classifier, and the parameter count from the shapes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_MODEL

from configs import load_config
from model import build_model
from utils.errors import ShipReIDError

D, DEPTH, HEADS, MLP = 48, 2, 3, 192


def build(*overrides, num_classes=0, seed=0):
    torch.manual_seed(seed)
    return build_model(load_config(None, [*TINY_MODEL, *overrides]), num_classes=num_classes).eval()


def make_batch(modality=(0, 1, 1, 0, 1, 0), seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = len(modality)
    return {"image": torch.randint(0, 256, (n, 3, 256, 128), dtype=torch.uint8, generator=gen),
            "modality": torch.tensor(modality, dtype=torch.int64),
            "size": torch.randn(n, 3, generator=gen, dtype=torch.float32)}


def tokens(model, batch):
    return model.backbone.embed_tokens(model.normalizer(batch["image"]), batch["modality"], batch["size"])


def rows(batch, index):
    return {k: v[index] for k, v in batch.items()}


# -------------------------------------------------------------------------------------- token layout
def test_token_count_with_and_without_the_size_token():
    batch = make_batch()
    with torch.no_grad():
        assert tokens(build(), batch).shape == (6, 1 + 16 * 8 + 1, D)
        m = build()
        assert m.backbone.forward_tokens(m.normalizer(batch["image"]), batch["modality"],
                                         batch["size"]).shape == (6, 130, D)
        assert tokens(build("MODEL.SSE", "False"), batch).shape == (6, 1 + 128, D)
        assert tokens(build("MODEL.STRIDE_SIZE", "[12,12]"), batch).shape == (6, 1 + 21 * 10 + 1, D)
    assert build().backbone.pos_embed.shape == (1, 129, D)
    assert build().embed(batch).shape == (6, D)


def test_optional_parts_are_absent_when_switched_off():
    names = lambda m: {n for n, _ in m.named_parameters()}  # noqa: E731
    full = names(build())
    assert {"backbone.mie_embed", "backbone.size_embed.weight", "backbone.size_embed.bias",
            "backbone.patch_embed.sar.weight", "backbone.patch_embed.sar.bias"} <= full
    no_mie = build("MODEL.MIE", "False")
    assert no_mie.backbone.mie_embed is None and not any("mie" in n for n in names(no_mie))
    no_sse = build("MODEL.SSE", "False")
    assert no_sse.backbone.size_embed is None and not any("size_embed" in n for n in names(no_sse))
    shared = build("MODEL.DUAL_PATCH_EMBED", "False")
    assert shared.backbone.patch_embed.sar is None and not any(".sar." in n for n in names(shared))
    assert full - names(no_mie) == {"backbone.mie_embed"}


@pytest.mark.parametrize("mie_coe", ["3.0", "0.5"])
def test_token_sequence_by_hand(mie_coe):
    """[cls; patches] + pos + MIE_COE * mie[modality], then the size token with no pos and no MIE."""
    model = build("MODEL.MIE_COE", mie_coe)
    b = model.backbone
    batch = make_batch()
    images = model.normalizer(batch["image"])
    with torch.no_grad():
        optical = F.conv2d(images, b.patch_embed.optical.weight, b.patch_embed.optical.bias, stride=16)
        sar = F.conv2d(images, b.patch_embed.sar.weight, b.patch_embed.sar.bias, stride=16)
        patches = torch.stack([(sar if m == 1 else optical)[i] for i, m in enumerate(batch["modality"].tolist())])
        patches = patches.flatten(2).transpose(1, 2)                            # row-major 16 x 8
        seq = torch.cat([b.cls_token.expand(6, -1, -1), patches], 1) + b.pos_embed
        seq = seq + float(mie_coe) * b.mie_embed[batch["modality"]]
        size_token = batch["size"] @ b.size_embed.weight.T + b.size_embed.bias
        expected = torch.cat([seq, size_token[:, None]], 1)
        got = b.embed_tokens(images, batch["modality"], batch["size"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_vit_details():
    b = build().backbone
    assert b.norm.eps == 1e-6 and all(blk.norm1.eps == 1e-6 and blk.norm2.eps == 1e-6 for blk in b.blocks)
    assert all(blk.attn.qkv.bias is not None for blk in b.blocks)
    assert b.blocks[0].mlp.fc1.out_features == MLP and b.blocks[0].attn.num_heads == HEADS
    # stochastic depth linearly spaced from 0 to MODEL.DROP_PATH (0.1) over the 2 blocks
    assert isinstance(b.blocks[0].drop_path1, torch.nn.Identity)
    assert b.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    assert b.patch_embed.optical.stride == (16, 16) and b.patch_embed.optical.kernel_size == (16, 16)
    assert build("MODEL.STRIDE_SIZE", "[12,12]").backbone.patch_embed.sar.stride == (12, 12)
    assert torch.equal(b.size_embed.bias, torch.zeros(D))                       # SSE bias starts at 0


# ---------------------------------------------------------------------------------- modality routing
@pytest.mark.parametrize("dual,mie,matters", [("False", "False", False), ("True", "False", True),
                                              ("False", "True", True), ("True", "True", True)])
def test_modality_acts_only_through_the_sar_head_and_mie(dual, mie, matters):
    model = build("MODEL.DUAL_PATCH_EMBED", dual, "MODEL.MIE", mie)
    batch = make_batch()
    flipped = dict(batch, modality=1 - batch["modality"])
    a, f = model.embed(batch), model.embed(flipped)
    if matters:
        assert (a - f).abs().amax(1).min() > 1e-4          # every sample moves
    else:
        assert torch.equal(a, f)


def test_modality_has_no_other_path():
    """With both on, make the SAR head equal to the optical one and the two MIE rows equal: then the
    modality id must not matter at all (nothing else reads it)."""
    model = build()
    b = model.backbone
    with torch.no_grad():
        b.patch_embed.sar.weight.copy_(b.patch_embed.optical.weight)
        b.patch_embed.sar.bias.copy_(b.patch_embed.optical.bias)
        b.mie_embed[1].copy_(b.mie_embed[0])
    batch = make_batch()
    assert torch.equal(model.embed(batch), model.embed(dict(batch, modality=1 - batch["modality"])))
    # and the SAR head alone, or MIE alone, is enough to make it matter again
    with torch.no_grad():
        b.mie_embed[1].add_(0.1)
    assert not torch.allclose(model.embed(batch), model.embed(dict(batch, modality=1 - batch["modality"])))


def test_changing_one_sample_modality_changes_only_that_sample():
    model = build()
    batch = make_batch()
    changed = dict(batch, modality=batch["modality"].clone())
    changed["modality"][2] = 0
    a, c = model.embed(batch), model.embed(changed)
    assert (a[2] - c[2]).abs().max() > 1e-4
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(a[keep], c[keep], atol=1e-5, rtol=0)


def test_sample_feature_is_independent_of_the_batch():
    model = build()
    batch = make_batch((0, 1, 1, 0, 1, 0, 0, 1))
    together = model.embed(batch)
    alone = torch.cat([model.embed(rows(batch, slice(i, i + 1))) for i in range(8)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    for modality in (0, 1):                                           # single-modality sub-batches
        index = (batch["modality"] == modality).nonzero().flatten()
        torch.testing.assert_close(model.embed(rows(batch, index)), together[index], atol=1e-5, rtol=0)
    order = torch.tensor([7, 2, 5, 0, 3, 6, 1, 4])
    torch.testing.assert_close(model.embed(rows(batch, order)), together[order], atol=1e-5, rtol=0)


def test_uint8_and_normalised_float_images_agree():
    model = build()
    batch = make_batch()
    as_float = dict(batch, image=(batch["image"].float() / 255 - model.normalizer.mean) / model.normalizer.std)
    torch.testing.assert_close(model.embed(batch), model.embed(as_float), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------- size token
def test_size_vector_matters_only_with_sse():
    batch = make_batch()
    other = dict(batch, size=batch["size"].clone())
    other["size"][1] += torch.tensor([0.5, -1.0, 2.0])
    with_sse = build()
    a, o = with_sse.embed(batch), with_sse.embed(other)
    assert (a[1] - o[1]).abs().max() > 1e-4
    torch.testing.assert_close(a[[0, 2, 3, 4, 5]], o[[0, 2, 3, 4, 5]], atol=1e-5, rtol=0)
    without = build("MODEL.SSE", "False")
    assert torch.equal(without.embed(batch), without.embed(dict(batch, size=torch.randn(6, 3) * 10)))


def test_size_token_is_a_linear_map_of_the_size_vector():
    b = build().backbone
    size = torch.randn(5, 3)
    with torch.no_grad():
        torch.testing.assert_close(b.size_embed(size), size @ b.size_embed.weight.T + b.size_embed.bias)
    assert b.size_embed.weight.shape == (D, 3)


# ------------------------------------------------------------------------------- neck and classifier
def test_bnneck_bias_frozen_and_classifier_without_bias():
    model = build(num_classes=21)
    assert model.neck.bias.requires_grad is False and model.neck.weight.requires_grad is True
    assert model.classifier.bias is None and model.classifier.weight.shape == (21, D)
    assert build().classifier is None
    model.train()
    out = model(make_batch())
    assert out["logits"].shape == (6, 21)
    torch.testing.assert_close(out["logits"], out["feat_bn"] @ model.classifier.weight.T)
    out["logits"].square().sum().backward()
    assert model.neck.bias.grad is None and model.neck.weight.grad is not None
    assert model.classifier.weight.grad is not None
    model.eval()
    assert "logits" not in model(make_batch())


def test_after_feature_is_the_eval_mode_bn_of_before():
    model = build(num_classes=21)
    neck = model.neck
    with torch.no_grad():                                  # a trained-looking neck, far from the identity
        neck.running_mean.normal_(0, 0.5)
        neck.running_var.uniform_(0.3, 3.0)
        neck.weight.normal_(1, 0.3)
        neck.bias.normal_(0, 0.2)
    batch = make_batch()
    before, after = model.embed(batch, "before"), model.embed(batch, "after")
    by_hand = (before - neck.running_mean) / torch.sqrt(neck.running_var + 1e-5) * neck.weight + neck.bias
    torch.testing.assert_close(after, by_hand, atol=1e-5, rtol=1e-5)
    functional = F.batch_norm(before, neck.running_mean, neck.running_var, neck.weight, neck.bias, training=False)
    torch.testing.assert_close(after, functional, atol=1e-6, rtol=1e-6)
    assert (after - before).abs().max() > 0.1
    # one sample alone gives the same "after" feature (running statistics, not batch statistics)
    torch.testing.assert_close(model.embed(rows(batch, slice(0, 1)), "after"), after[:1], atol=1e-5, rtol=0)
    with pytest.raises(ShipReIDError, match="NECK_FEAT"):
        model.embed(batch, "middle")


# ---------------------------------------------------------------------------------- parameter count
def expected_parameters(d=D, depth=DEPTH, mlp=MLP, grid=(16, 8), patch=16, dual=True, mie=True, sse=True,
                        classes=0) -> tuple[int, int]:
    """(backbone, whole model) parameter counts from the shapes."""
    patches = grid[0] * grid[1]
    patch_head = 3 * patch * patch * d + d                       # conv weight + bias
    block = (2 * d                                               # norm1
             + 3 * d * d + 3 * d                                 # qkv with bias
             + d * d + d                                         # attention projection
             + 2 * d                                             # norm2
             + mlp * d + mlp                                     # fc1
             + d * mlp + d)                                      # fc2
    backbone = ((2 if dual else 1) * patch_head
                + d                                              # cls token
                + (1 + patches) * d                              # position embedding
                + (2 * d if mie else 0)                          # one MIE vector per modality
                + (3 * d + d if sse else 0)                      # SSE linear 3 -> d
                + depth * block
                + 2 * d)                                         # final LayerNorm
    model = backbone + 2 * d + classes * d                       # BN neck weight and bias, classifier
    return backbone, model


@pytest.mark.parametrize("overrides,kwargs", [
    ((), {}),
    (("MODEL.SSE", "False"), {"sse": False}),
    (("MODEL.MIE", "False", "MODEL.DUAL_PATCH_EMBED", "False"), {"mie": False, "dual": False}),
    (("MODEL.STRIDE_SIZE", "[12,12]"), {"grid": (21, 10)}),
    (("MODEL.MLP_RATIO", "2.0"), {"mlp": 96}),
])
def test_parameter_count(overrides, kwargs):
    model = build(*overrides, num_classes=21)
    backbone, total = expected_parameters(classes=21, **kwargs)
    assert sum(p.numel() for p in model.backbone.parameters()) == backbone
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total - D   # frozen neck bias


def test_parameter_count_is_a_fixed_number():
    # numbers written out, so that the formula above cannot drift together with the model:
    # patch heads 2 x (3*16*16*48 + 48), cls 48, pos 129*48, MIE 2*48, SSE 3*48 + 48, blocks 2 x 28272, LN 96
    assert expected_parameters() == (136_992, 137_088)
    assert sum(p.numel() for p in build(num_classes=21).parameters()) == 136_992 + 96 + 21 * 48 == 138_096


# -------------------------------------------------------------------------------------- compile
def test_compiled_backbone_is_what_the_model_runs():
    """MODEL.COMPILE calls backbone.compile(), which wraps only the module call: the model must go through it
    (training with the structure tap and evaluation), and the compiled graph must give the eager outputs."""
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    model = build("MODEL.SDF.STRUCT_LAYER", "1", "MODEL.DROP_PATH", "0.0", num_classes=3)
    batch = make_batch()
    with torch.no_grad():
        eager_eval = model.embed(batch)
        model.train()
        eager_train = model(batch)
    model.backbone.compile(backend=recording_backend)
    with torch.no_grad():
        compiled_train = model(batch)
        model.eval()
        compiled_eval = model.embed(batch)
    assert len(graphs) >= 2  # one graph per tap setting (training taps block 1, evaluation taps none)
    assert torch.allclose(compiled_eval, eager_eval, atol=1e-5)
    for key in ("feat", "structure", "logits"):
        assert torch.allclose(compiled_train[key], eager_train[key], atol=1e-5), key
    assert set(model.state_dict()) == set(build("MODEL.SDF.STRUCT_LAYER", "1", num_classes=3).state_dict())
