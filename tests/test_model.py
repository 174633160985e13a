"""The TransOSS backbone on timm: token layout, modality routing, size token, neck, parameter count."""
from __future__ import annotations

import torch

from conftest import TINY_MODEL

from configs import load_config
from model import build_model


def build(*overrides, num_classes=0):
    torch.manual_seed(0)
    return build_model(load_config(None, [*TINY_MODEL, *overrides]), num_classes=num_classes).eval()


def batch(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, 256, 128), dtype=torch.uint8, generator=gen),
            "modality": torch.tensor([0, 1] * (n // 2)), "size": torch.randn(n, 3, generator=gen)}


def tokens(model, b):
    images = model.normalizer(b["image"])
    return model.backbone.embed_tokens(images, b["modality"], b["size"])


def test_token_layout():
    b = batch()
    assert tokens(build(), b).shape == (4, 1 + 128 + 1, 48)       # cls, 16 x 8 patches, size token
    assert tokens(build("MODEL.SSE", "False"), b).shape == (4, 129, 48)
    assert build("MODEL.MIE", "False").backbone.mie_embed is None
    assert build("MODEL.STRIDE_SIZE", "[12,12]").backbone.grid_size == (21, 10)


def test_modality_acts_only_through_the_sar_head_and_mie():
    b = batch()
    flipped = dict(b, modality=1 - b["modality"])
    for overrides, matters in ((("MODEL.DUAL_PATCH_EMBED", "False", "MODEL.MIE", "False"), False),
                               (("MODEL.DUAL_PATCH_EMBED", "False"), True), (("MODEL.MIE", "False"), True)):
        model = build(*overrides)
        if model.backbone.patch_embed.sar is not None:
            torch.nn.init.normal_(model.backbone.patch_embed.sar.weight)  # make the two heads differ
        same = torch.allclose(model.embed(b), model.embed(flipped), atol=1e-6)
        assert same != matters, overrides


def test_routing_is_per_sample():
    model = build()
    b = batch(4)
    together = model.embed(b)
    alone = torch.cat([model.embed({k: v[i:i + 1] for k, v in b.items()}) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_size_token_only_with_sse():
    b = batch()
    other = dict(b, size=b["size"] + 1)
    assert not torch.allclose(build().embed(b), build().embed(other))
    assert torch.allclose(build("MODEL.SSE", "False").embed(b), build("MODEL.SSE", "False").embed(other))


def test_neck_classifier_and_after_feature():
    model = build(num_classes=21)
    assert not model.neck.bias.requires_grad and model.classifier.bias is None
    b = batch()
    before, after = model.embed(b, "before"), model.embed(b, "after")
    neck = model.neck
    expected = (before - neck.running_mean) / torch.sqrt(neck.running_var + neck.eps) * neck.weight + neck.bias
    assert torch.allclose(after, expected, atol=1e-6)
    model.train()
    assert model(b)["logits"].shape == (4, 21)


def test_parameter_count():
    d, depth, mlp, patches, classes = 48, 2, 192, 128, 21
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (mlp * d + mlp) + (d * mlp + d)  # 2 LNs, qkv, proj, MLP
    backbone = (2 * (3 * 16 * 16 * d + d)      # optical and SAR patch projections
                + d + (1 + patches) * d        # cls token, position embedding
                + 2 * d                        # MIE, one vector per modality
                + 3 * d + d                    # SSE linear
                + depth * block + 2 * d)       # blocks, final LN
    model = build(num_classes=classes)
    assert sum(p.numel() for p in model.backbone.parameters()) == backbone
    assert sum(p.numel() for p in model.parameters()) == backbone + 2 * d + classes * d
