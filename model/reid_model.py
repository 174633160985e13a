"""Backbone + BNNeck + identity classifier, taking and returning dicts."""
from __future__ import annotations

import torch
from torch import nn

from utils.device import tf32
from utils.distributed import all_reduce_sum_with_grad, world_size
from utils.errors import ShipReIDError

from .structure import structure_descriptor

NECK_FEATS = ("before", "after")
AUTO_NECK_FEAT = "auto"


def resolve_neck_feat(neck_feat: str, disentangled: bool) -> str:
    """TEST.NECK_FEAT with "auto" resolved: after the neck for a disentangled (SDF-Net DFL) model, as its released
    code evaluates one, before it otherwise."""
    if neck_feat == AUTO_NECK_FEAT:
        return "after" if disentangled else "before"
    if neck_feat not in NECK_FEATS:
        raise ShipReIDError(f"TEST.NECK_FEAT must be one of {NECK_FEATS + (AUTO_NECK_FEAT,)}, got {neck_feat!r}")
    return neck_feat


class PixelNormalizer(nn.Module):
    """uint8 images to normalised float, on whatever device the batch is on.

    Same arithmetic as torchvision's ToTensor + Normalize, so results match the official pipeline.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div(255).sub(self.mean).div(self.std)


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d with the shift frozen at zero (the bias is not trained), as in BoT/TransReID.

    With `sync`, training batch statistics are summed over DDP ranks (works on CPU/gloo too).
    """

    def __init__(self, dim: int, sync: bool = False):
        super().__init__(dim)
        self.bias.requires_grad_(False)
        self.sync = sync

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.sync and self.training and world_size() > 1):
            return super().forward(x)
        dim = x.shape[1]
        stats = torch.cat([x.sum(0), x.pow(2).sum(0), x.new_full((1,), x.shape[0])])
        stats = all_reduce_sum_with_grad(stats)
        count = stats[-1]
        mean = stats[:dim] / count
        var = stats[dim:2 * dim] / count - mean.pow(2)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class ReIDModel(nn.Module):
    """outputs = {"feat": pre-neck feature, "feat_bn": after the neck, "logits": in training}, plus what the
    head adds (SDF-Net: "feat_shared", "feat_specific") and, with a structure tap, "structure".

    `with_neck=False` (contrastive pretraining): no BN neck and no classifier; only "feat" (and the head's
    outputs). The official pretraining never calls the neck either, so nothing unused runs or changes.

    batch["image"] is uint8 (normalised here) or float that is already normalised (training batches
    after on-device augmentation).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, pixel_mean, pixel_std,
                 sync_bn: bool = False, struct_layer: int = 0, with_neck: bool = True):
        super().__init__()
        self.normalizer = PixelNormalizer(pixel_mean, pixel_std)
        self.backbone = backbone
        self.head = head
        if not 0 <= struct_layer <= len(backbone.blocks):
            raise ShipReIDError(f"MODEL.SDF.STRUCT_LAYER {struct_layer} must be between 0 (off) and MODEL.DEPTH "
                                f"{len(backbone.blocks)}")
        self.struct_layer = struct_layer
        if num_classes > 0 and not with_neck:
            raise ValueError("an identity classifier reads the BN neck's output: build it with with_neck=True")
        self.neck = BNNeck(head.out_dim, sync=sync_bn) if with_neck else None
        self.classifier = None
        if num_classes > 0:
            self.classifier = nn.Linear(head.out_dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, batch: dict) -> dict:
        images = batch["image"]
        if images.dtype == torch.uint8:
            images = self.normalizer(images)
        # the structure map only feeds a training loss; evaluation skips it
        tap = self.struct_layer if self.training else 0
        tokens, patch_map = self.backbone(images, batch["modality"], batch["size"], tap)
        outputs = self.head(tokens)
        if self.neck is not None:
            outputs["feat_bn"] = self.neck(outputs["feat"])
        if patch_map is not None:
            outputs["structure"] = structure_descriptor(patch_map)
        if self.training and self.classifier is not None:
            outputs["logits"] = self.classifier(outputs["feat_bn"])
        return outputs

    @property
    def disentangled(self) -> bool:
        return self.head.disentangled

    def test_feature(self, neck_feat: str) -> str:
        """The test feature `embed(batch, neck_feat)` returns, in words (for the log)."""
        feat = self.head.feature_name
        return f"BN({feat}) after the neck" if resolve_neck_feat(neck_feat, self.disentangled) == "after" else \
            f"{feat} before the BN neck"

    def test_feature_key(self, neck_feat: str) -> str:
        """The key of `forward`'s outputs that holds the test feature for TEST.NECK_FEAT `neck_feat`."""
        neck_feat = resolve_neck_feat(neck_feat, self.disentangled)
        if neck_feat == "after" and self.neck is None:
            raise ShipReIDError("TEST.NECK_FEAT after: this model has no BN neck (a pretraining backbone); use before")
        return "feat" if neck_feat == "before" else "feat_bn"

    @torch.no_grad()
    def embed(self, batch: dict, neck_feat: str = "before", flip: bool = False) -> torch.Tensor:
        """The test feature: pre-neck ("before", official) or post-neck ("after"); with `flip` (TEST.FLIP_FEATS)
        the mean of the image's and its left-right mirror's features."""
        key = self.test_feature_key(neck_feat)
        with tf32(False):  # test features in full fp32, whatever training used (SOLVER.TF32)
            feat = self.forward(batch)[key]
            if flip:
                feat = (feat + self.forward({**batch, "image": batch["image"].flip(-1)})[key]) / 2
        return feat
