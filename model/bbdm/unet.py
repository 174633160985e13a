"""The conditional UNet that BBDM trains: it sees the bridge state x_t and the optical condition y.

Conditioning is by channel concatenation (Conditional-BBDM style): the bridge already ends at y, but giving the
network the clean y at every step as well makes the cross-modal mapping easier to learn.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from utils.errors import ShipReIDError

from .blocks import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_init,
)

# The timestep MLP is this many times wider than the base width (the usual diffusion-UNet ratio).
TIME_EMBED_MULT = 4


class _Level(nn.Module):
    """One step of the encoder or decoder: a residual block, optionally followed by self-attention."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float, attention: bool,
                 head_channels: int):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, time_dim, dropout)
        self.attn = AttentionBlock(out_channels, head_channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, temb))


class ConditionalUNet(nn.Module):
    """Predicts the bridge objective from (x_t, t, y) for maps of any H x W divisible by the total downsampling.

    Level i (i downsamplings, resolution 1/2**i) has base_channels * channel_mult[i] channels and
    num_res_blocks residual blocks; levels in `attention_levels` add self-attention after each block, and the
    middle (coarsest) stage always has one. The output conv starts at zero, so the initial prediction is 0.
    """

    def __init__(self, in_channels: int = 3, cond_channels: int = 3, out_channels: int = 3, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (3,), num_heads_channels: int = 64, dropout: float = 0.0):
        super().__init__()
        levels = len(channel_mult)
        bad_levels = [lvl for lvl in attention_levels if not 0 <= lvl < levels]
        if bad_levels:
            raise ShipReIDError(f"attention_levels {bad_levels} do not exist: with channel_mult {tuple(channel_mult)} "
                                f"the levels are 0..{levels - 1} (level = number of downsamplings)")
        self.in_channels, self.cond_channels = in_channels, cond_channels
        self.downsample_factor = 2 ** (levels - 1)
        time_dim = TIME_EMBED_MULT * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))

        def level(cin: int, cout: int, lvl: int) -> _Level:
            return _Level(cin, cout, time_dim, dropout, lvl in attention_levels, num_heads_channels)

        self.input_conv = nn.Conv2d(in_channels + cond_channels, base_channels, 3, padding=1)
        self.down_blocks, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        skip_channels, ch = [base_channels], base_channels
        for lvl, mult in enumerate(channel_mult):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(level(ch, base_channels * mult, lvl))
                ch = base_channels * mult
                skip_channels.append(ch)
            self.down_blocks.append(blocks)
            if lvl < levels - 1:
                self.downsamplers.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid_res1 = ResBlock(ch, ch, time_dim, dropout)
        self.mid_attn = AttentionBlock(ch, num_heads_channels)
        self.mid_res2 = ResBlock(ch, ch, time_dim, dropout)

        # Decoder, coarsest level first: one more block than the encoder, to consume the downsampler's skip too.
        self.up_blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for lvl in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(level(ch + skip_channels.pop(), base_channels * channel_mult[lvl], lvl))
                ch = base_channels * channel_mult[lvl]
            self.up_blocks.append(blocks)
            if lvl > 0:
                self.upsamplers.append(Upsample(ch))

        self.output = nn.Sequential(group_norm(ch), nn.SiLU(),
                                    zero_init(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def _check_inputs(self, x_t: torch.Tensor, cond: torch.Tensor) -> None:
        h, w = x_t.shape[-2:]
        if h % self.downsample_factor or w % self.downsample_factor:
            raise ShipReIDError(f"input size {h}x{w} is not divisible by {self.downsample_factor} "
                                f"(2 ** (len(channel_mult) - 1)); resize or pad the images, or use fewer levels")
        if x_t.shape[1] != self.in_channels or cond.shape[1] != self.cond_channels:
            raise ShipReIDError(f"expected x_t with {self.in_channels} and cond with {self.cond_channels} channels, "
                                f"got {x_t.shape[1]} and {cond.shape[1]}")
        if cond.shape[-2:] != x_t.shape[-2:]:
            raise ShipReIDError(f"cond is {tuple(cond.shape[-2:])} but x_t is {tuple(x_t.shape[-2:])}; "
                                "resize the condition to the image size")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x_t, cond: (B, C, H, W); t: (B,) int64 timesteps. Returns (B, out_channels, H, W)."""
        self._check_inputs(x_t, cond)
        temb = self.time_mlp(timestep_embedding(t, self.base_channels))
        h = self.input_conv(torch.cat([x_t, cond.to(x_t.dtype)], dim=1))
        skips = [h]
        for lvl, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, temb)
                skips.append(h)
            if lvl < len(self.downsamplers):
                h = self.downsamplers[lvl](h)
                skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, temb)), temb)
        for i, blocks in enumerate(self.up_blocks):
            for block in blocks:
                h = block(torch.cat([h, skips.pop().to(h.dtype)], dim=1), temb)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h)
        return self.output(h)
