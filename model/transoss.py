"""TransOSS backbone: timm's VisionTransformer with the dual patch embedding, MIE and the SSE token."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from .embeddings import NUM_MODALITIES, DualPatchEmbed, SizeEmbed


class TransOSSBackbone(VisionTransformer):
    """Token sequence [cls; patches] + pos + MIE_COE * mie[modality], then the size token appended.

    The size token carries no position or modality embedding; the output is the final-normed cls token.
    """

    def __init__(self, img_size=(256, 128), patch_size=16, stride=(16, 16), embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, drop_path=0.1, drop_out=0.0, attn_drop=0.0,
                 dual_patch_embed=True, mie=True, mie_coe=3.0, sse=True):
        super().__init__(
            img_size=tuple(img_size), patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0, global_pool="token",
            pos_drop_rate=drop_out, proj_drop_rate=drop_out, attn_drop_rate=attn_drop,
            drop_path_rate=drop_path, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            embed_layer=partial(DualPatchEmbed, stride=stride, dual=dual_patch_embed))
        trunc_normal_(self.cls_token, std=0.02)
        self.mie_coe = mie_coe
        self.mie_embed = None
        if mie:
            self.mie_embed = nn.Parameter(torch.zeros(NUM_MODALITIES, 1, embed_dim))
            trunc_normal_(self.mie_embed, std=0.02)
        self.size_embed = SizeEmbed(embed_dim) if sse else None

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def embed_tokens(self, images: torch.Tensor, modality: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images, modality)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        if self.mie_embed is not None:
            x = x + self.mie_coe * self.mie_embed[modality]
        if self.size_embed is not None:
            x = torch.cat([x, self.size_embed(size).unsqueeze(1)], dim=1)
        return self.norm_pre(self.pos_drop(x))

    def forward_tokens(self, images, modality, size) -> torch.Tensor:
        """All output tokens after the final norm: cls, patches, then the size token when SSE is on."""
        x = self.embed_tokens(images, modality, size)
        return self.norm(self.blocks(x))

    def forward(self, images, modality, size) -> torch.Tensor:
        return self.forward_tokens(images, modality, size)[:, 0]
