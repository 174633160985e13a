"""Building blocks of the conditional UNet: timestep embedding, residual block, self-attention, resampling.

Every block works on NCHW maps of any height and width (HOSS chips are 256 x 128, not square).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ShipReIDError

# GroupNorm uses at most this many groups (the usual diffusion-UNet choice); fewer when channels need it.
MAX_NORM_GROUPS = 32
# Period range of the sinusoidal timestep embedding (the Transformer position-encoding constant).
MAX_PERIOD = 10000.0
NORM_EPS = 1e-6


def norm_groups(channels: int) -> int:
    """The largest group count <= MAX_NORM_GROUPS that divides `channels` (GroupNorm needs a divisor)."""
    return next(g for g in range(min(MAX_NORM_GROUPS, channels), 0, -1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels, eps=NORM_EPS)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch (or the network output) starts as exactly zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) integer timesteps -> (B, dim) float32 sin/cos features at geometrically spaced frequencies.

    Always float32, even under autocast: bf16 cannot resolve neighbouring timesteps near T = 1000.
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(MAX_PERIOD) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Norm-SiLU-conv twice, with the timestep embedding added in between; 1x1 skip when widths differ.

    The second conv starts at zero, so every block starts as the identity (stable early training).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(in_channels), nn.SiLU(),
                                       nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels))
        self.out_layers = nn.Sequential(group_norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.time_proj(temb).to(h.dtype)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels of a map (global context at coarse levels).

    Heads have `head_channels` channels each (one head when the map is narrower).
    """

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        if channels % self.num_heads:
            raise ShipReIDError(f"attention over {channels} channels cannot be split into {self.num_heads} heads "
                                f"of {head_channels}; choose a head width that divides the level width")
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # (B, heads, HW, head dim) with the head dim contiguous: SDPA's fused (flash / memory-efficient) kernels
        # take only that layout; a transposed view would fall back to the math path and its HW x HW scores
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 conv (learned, unlike pooling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
