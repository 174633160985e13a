"""Model registry and `build_model(cfg, num_classes)`."""
from __future__ import annotations

from utils.registry import Registry

from .disentangle import ClassTokenHead, DisentangledHead
from .reid_model import ReIDModel
from .transoss import TransOSSBackbone

BACKBONES = Registry("backbone")


@BACKBONES.register("transoss")
def build_transoss_backbone(cfg) -> TransOSSBackbone:
    m = cfg.MODEL
    return TransOSSBackbone(
        img_size=cfg.INPUT.SIZE_TRAIN, patch_size=m.PATCH_SIZE, stride=m.STRIDE_SIZE, embed_dim=m.EMBED_DIM,
        depth=m.DEPTH, num_heads=m.NUM_HEADS, mlp_ratio=m.MLP_RATIO, drop_path=m.DROP_PATH,
        drop_out=m.DROP_OUT, attn_drop=m.ATT_DROP_RATE, dual_patch_embed=m.DUAL_PATCH_EMBED, mie=m.MIE,
        mie_coe=m.MIE_COE, sse=m.SSE, spec_token=cfg.MODEL.SDF.DFL == "tokens", fused_attention=m.FUSED_ATTENTION)


def build_head(cfg):
    """TransOSS's class token, or SDF-Net's disentangled shared/specific features (MODEL.SDF.DFL; the head
    refuses an unknown mode)."""
    if cfg.MODEL.SDF.DFL == "off":
        return ClassTokenHead(cfg.MODEL.EMBED_DIM)
    return DisentangledHead(cfg.MODEL.EMBED_DIM, cfg.MODEL.SDF.DFL, cfg.MODEL.SDF.FUSION)


def build_model(cfg, num_classes: int = 0, with_neck: bool = True) -> ReIDModel:
    """The ReID model; `num_classes` > 0 adds the identity classifier (training only); `with_neck=False` leaves
    out the BN neck (contrastive pretraining trains the backbone alone)."""
    backbone = BACKBONES.get(cfg.MODEL.NAME, "MODEL.NAME")(cfg)
    return ReIDModel(backbone, build_head(cfg), num_classes, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                     sync_bn=cfg.MODEL.SYNC_BN, struct_layer=cfg.MODEL.SDF.STRUCT_LAYER, with_neck=with_neck)


def freeze_unreached(model: ReIDModel, cfg) -> list[str]:
    """Leave untrained what no configured loss term reaches, so that every trained parameter gets a gradient
    (DDP then needs no search for unused parameters). Returns what was frozen and why, for the log.

    The BN neck's scale is read only by the identity classifier (built only with an "id" term); a linear SDF-Net
    head that the fusion drops is read only by the "orth" term."""
    frozen = []
    if model.classifier is None and model.neck is not None and model.neck.weight.requires_grad:
        model.neck.weight.requires_grad_(False)
        frozen.append("neck.weight (no 'id' loss term: no identity classifier reads the BN neck in training; its "
                      "running statistics still follow the training features)")
    head = model.head
    if getattr(head, "mode", None) == "linear" and head.fusion in ("shared", "specific") \
            and "orth" not in cfg.LOSS.TERMS:
        name = "specific" if head.fusion == "shared" else "shared"
        getattr(head, name).requires_grad_(False)
        frozen.append(f"head.{name} (MODEL.SDF.FUSION {head.fusion} without the 'orth' term)")
    return frozen
