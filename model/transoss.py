"""TransOSS backbone: timm's VisionTransformer with the dual patch embedding, MIE and the SSE token.

SDF-Net's released code adds a modality-specific class token after the shared one (`spec_token=True`)
and reads a structure map from an intermediate block; both are options here.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from .embeddings import NUM_MODALITIES, DualPatchEmbed, SizeEmbed


class TransOSSBackbone(VisionTransformer):
    """Token sequence [cls; (spec[modality];) patches] + pos + MIE_COE * mie[modality], then the size
    token appended.

    The size token carries no position or modality embedding. `forward` (= `forward_features`) returns every
    output token and, optionally, the patch map after one block.
    """

    def __init__(self, img_size=(256, 128), patch_size=16, stride=(16, 16), embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, drop_path=0.1, drop_out=0.0, attn_drop=0.0,
                 dual_patch_embed=True, mie=True, mie_coe=3.0, sse=True, spec_token=False, fused_attention=True):
        super().__init__(
            img_size=tuple(img_size), patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0, global_pool="token",
            pos_drop_rate=drop_out, proj_drop_rate=drop_out, attn_drop_rate=attn_drop,
            drop_path_rate=drop_path, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            embed_layer=partial(DualPatchEmbed, stride=stride, dual=dual_patch_embed))
        trunc_normal_(self.cls_token, std=0.02)
        self.spec_tokens = None
        if spec_token:
            # one class token per modality; the position embedding grows by the entry it occupies
            self.spec_tokens = nn.Parameter(torch.zeros(NUM_MODALITIES, 1, embed_dim))
            trunc_normal_(self.spec_tokens, std=0.02)
            self.num_prefix_tokens = 2
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 2, embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
        self.mie_coe = mie_coe
        self.mie_embed = None
        if mie:
            self.mie_embed = nn.Parameter(torch.zeros(NUM_MODALITIES, 1, embed_dim))
            trunc_normal_(self.mie_embed, std=0.02)
        self.size_embed = SizeEmbed(embed_dim) if sse else None
        self.set_fused_attention(fused_attention)

    def set_fused_attention(self, enabled: bool) -> None:
        """torch's fused scaled-dot-product attention (True) or timm's explicit softmax(q k^T) v, the official
        code's arithmetic (False): the same maths, summed in another order (see docs/parity.md)."""
        for block in self.blocks:
            block.attn.fused_attn = enabled

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def embed_tokens(self, images: torch.Tensor, modality: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images, modality)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.spec_tokens is not None:
            prefix.append(self.spec_tokens[modality])
        x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        if self.mie_embed is not None:
            x = x + self.mie_coe * self.mie_embed[modality]
        if self.size_embed is not None:
            x = torch.cat([x, self.size_embed(size).unsqueeze(1)], dim=1)
        return self.norm_pre(self.pos_drop(x))

    def patch_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens of a sequence as a (B, rows, cols, C) map (class and size tokens dropped)."""
        rows, cols = self.grid_size
        patches = tokens[:, self.num_prefix_tokens:self.num_prefix_tokens + rows * cols]
        return patches.reshape(tokens.shape[0], rows, cols, tokens.shape[-1])

    def forward_features(self, images, modality, size, tap_block: int = 0
                         ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(all output tokens after the final norm, patch map after block `tap_block` or None).

        `tap_block` (0..depth, checked where the model is built) counts blocks from 1 and is read before the
        final norm; 0 taps nothing.
        """
        x = self.embed_tokens(images, modality, size)
        tapped = None
        for index, block in enumerate(self.blocks, start=1):
            x = block(x)
            if index == tap_block:
                tapped = self.patch_map(x)
        return self.norm(x), tapped

    def forward_tokens(self, images, modality, size) -> torch.Tensor:
        """All output tokens after the final norm: class token(s), patches, then the size token (SSE on)."""
        return self.forward_features(images, modality, size)[0]

    def forward(self, images, modality, size, tap_block: int = 0
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        # callers go through the module call, not forward_features: Module.compile() (MODEL.COMPILE) wraps only it
        return self.forward_features(images, modality, size, tap_block)
