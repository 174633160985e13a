"""The TransOSS input embeddings: dual patch projection and the ship-size token."""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import trunc_normal_

# Modality ids used by the data pipeline and by every released checkpoint (patch head, MIE row).
OPTICAL, SAR = 0, 1
NUM_MODALITIES = 2
# Dimension of the ship-size vector (beam, length, length/beam).
SIZE_VECTOR_DIM = 3


def patch_grid(img_size, patch_size: int, stride) -> tuple[int, int]:
    """Number of patch rows and columns for a (H, W) input."""
    return ((img_size[0] - patch_size) // stride[0] + 1, (img_size[1] - patch_size) // stride[1] + 1)


class DualPatchEmbed(nn.Module):
    """One patch projection for optical and one for SAR chips, chosen per sample by modality.

    Used as timm's `embed_layer`, so it accepts the keyword arguments VisionTransformer passes.
    With `dual=False` both modalities share the optical projection (the ablation).
    """

    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True, stride=(16, 16), dual=True,
                 dynamic_img_pad=False, device=None, dtype=None):
        super().__init__()
        if dynamic_img_pad:
            raise ValueError("DualPatchEmbed does not pad images dynamically")
        stride = tuple(stride)
        self.grid_size = patch_grid(img_size, patch_size, stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        dd = dict(device=device, dtype=dtype)
        self.optical = nn.Conv2d(in_chans, embed_dim, patch_size, stride, bias=bias, **dd)
        self.sar = nn.Conv2d(in_chans, embed_dim, patch_size, stride, bias=bias, **dd) if dual else None

    def forward(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        tokens = self.optical(images)
        if self.sar is not None:
            # Both projections run on the whole batch: static shapes (compile, DDP) for ~1% more FLOPs.
            is_sar = (modality == SAR).view(-1, 1, 1, 1)
            tokens = torch.where(is_sar, self.sar(images), tokens)
        return tokens.flatten(2).transpose(1, 2)


class SizeEmbed(nn.Linear):
    """SSE: the ship-size vector projected to one token."""

    def __init__(self, embed_dim: int):
        super().__init__(SIZE_VECTOR_DIM, embed_dim)
        trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)
