"""MOS's optical -> SAR translator: a conditional UNet trained as a Brownian bridge, with the EMA weights
that sample. One module, so the engine trains, checkpoints and resumes it like a ReID model."""
from __future__ import annotations

import copy

import torch
from torch import nn

from model.weights import read_state_dict
from utils.errors import ShipReIDError

from .bridge import BrownianBridge
from .unet import ConditionalUNet

# uint8 pixels to the bridge's [-1, 1] range
PIXEL_HALF_RANGE = 127.5


class ToBridgeRange(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / PIXEL_HALF_RANGE - 1.0 if images.dtype == torch.uint8 else images


def to_uint8_grey(samples: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W) uint8, the channel mean (SAR is one band)."""
    return ((samples.float().mean(dim=1).clamp(-1, 1) + 1) * PIXEL_HALF_RANGE).round().to(torch.uint8)


class PseudoSarTranslator(nn.Module):
    """Batches hold N optical images then their N SAR partners (the pair loader's layout); the bridge runs
    from the SAR image x0 (t = 0) to the optical image y (t = T), and the UNet also sees y."""

    def __init__(self, unet: ConditionalUNet, bridge: BrownianBridge, ema_decay: float, ema_start: int):
        super().__init__()
        self.normalizer = ToBridgeRange()
        self.unet, self.bridge = unet, bridge
        self.ema_unet = copy.deepcopy(unet).requires_grad_(False)
        self.ema_decay, self.ema_start = ema_decay, ema_start

    def forward(self, batch: dict) -> dict:
        images = self.normalizer(batch["image"])
        half = images.shape[0] // 2
        return {"bridge": self.bridge.training_loss(self.unet, images[half:], images[:half])}

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """After optimizer step `step`: copy the weights before EMA_START, then move the average towards them."""
        weight = 1.0 if step < self.ema_start else 1.0 - self.ema_decay
        ema, live = list(self.ema_unet.parameters()), list(self.unet.parameters())
        torch._foreach_lerp_(ema, live, weight)
        for ema_buffer, buffer in zip(self.ema_unet.buffers(), self.unet.buffers()):
            ema_buffer.copy_(buffer)

    @torch.no_grad()
    def translate(self, optical: torch.Tensor, steps: int, eta: float, generator=None) -> torch.Tensor:
        """Pseudo-SAR samples in [-1, 1] for optical images (uint8 or already in [-1, 1]), EMA weights."""
        return self.bridge.sample(self.ema_unet, self.normalizer(optical), steps=steps, eta=eta, generator=generator)


def load_translator_weights(model: PseudoSarTranslator, path: str) -> None:
    """A whole translator saved by train_bbdm.py (EMA included); errors name the file."""
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as err:
        raise ShipReIDError(f"{path} does not fit the BBDM.* sizes of this config: {err}") from None


def build_translator(cfg) -> PseudoSarTranslator:
    b = cfg.BBDM
    unet = ConditionalUNet(in_channels=3, cond_channels=3, out_channels=3, base_channels=b.BASE_CHANNELS,
                           channel_mult=tuple(b.CHANNEL_MULT), num_res_blocks=b.NUM_RES_BLOCKS,
                           attention_levels=tuple(b.ATTENTION_LEVELS), num_heads_channels=b.HEAD_CHANNELS,
                           dropout=b.DROPOUT)
    bridge = BrownianBridge(num_timesteps=b.NUM_TIMESTEPS, m_min=b.M_MIN, m_max=b.M_MAX, max_var=b.MAX_VAR,
                            objective=b.OBJECTIVE, loss=b.LOSS)
    return PseudoSarTranslator(unet, bridge, b.EMA_DECAY, b.EMA_START)
