"""MOS's optical -> SAR translator: a conditional UNet trained as a Brownian bridge, with the EMA weights
that sample. One module, so the engine trains, checkpoints and resumes it like a ReID model."""
from __future__ import annotations

import copy

import torch
from torch import nn

from model.weights import read_state_dict
from utils.device import autocast_to
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


# BBDM.SAMPLE_PRECISION: the autocast dtype sampling runs under (None: plain float32)
SAMPLE_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def sampling_precision(precision: str, device: torch.device):
    """The context sampling runs in: nothing for "fp32", else autocast to bf16 / fp16 on `device`."""
    return autocast_to(precision, SAMPLE_PRECISIONS, "BBDM.SAMPLE_PRECISION", device)


class PseudoSarTranslator(nn.Module):
    """Batches hold N optical images then their N SAR partners (the pair loader's layout); the bridge runs
    from the SAR image x0 (t = 0) to the optical image y (t = T), and the UNet also sees y."""

    def __init__(self, unet: ConditionalUNet, bridge: BrownianBridge, ema_decay: float, ema_start: int,
                 ema_interval: int):
        super().__init__()
        self.normalizer = ToBridgeRange()
        self.unet, self.bridge = unet, bridge
        self.ema_unet = copy.deepcopy(unet).requires_grad_(False)
        self.ema_decay, self.ema_start, self.ema_interval = ema_decay, ema_start, ema_interval

    def forward(self, batch: dict) -> dict:
        images = self.normalizer(batch["image"])
        half = images.shape[0] // 2
        return {"bridge": self.bridge.training_loss(self.unet, images[half:], images[:half])}

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """After optimizer step `step` (counted from 1), as the BBDM reference does: on every `ema_interval`-th
        step, copy the weights while step < `ema_start`, from then on move the average `1 - ema_decay` of the
        way towards them; on other steps the averaged weights stay. Buffers are not averaged: the copy takes
        the live ones after every step (the reference samples with its live model's buffers)."""
        for ema_buffer, buffer in zip(self.ema_unet.buffers(), self.unet.buffers()):
            ema_buffer.copy_(buffer)
        if step % self.ema_interval:
            return
        ema, live = list(self.ema_unet.parameters()), list(self.unet.parameters())
        if step < self.ema_start:
            torch._foreach_copy_(ema, live)
        else:
            torch._foreach_lerp_(ema, live, 1.0 - self.ema_decay)

    @torch.no_grad()
    def translate(self, optical: torch.Tensor, steps: int, eta: float, generator=None,
                  precision: str = "fp32") -> torch.Tensor:
        """Pseudo-SAR samples in [-1, 1] for optical images (uint8 or already in [-1, 1]), EMA weights, the
        UNet run under `precision` (BBDM.SAMPLE_PRECISION; the bridge arithmetic stays float32)."""
        with sampling_precision(precision, optical.device):
            return self.bridge.sample(self.ema_unet, self.normalizer(optical), steps=steps, eta=eta,
                                      generator=generator)


def load_translator_weights(model: PseudoSarTranslator, path: str) -> None:
    """A whole translator saved by train_bbdm.py (EMA included); errors name the file."""
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as err:
        raise ShipReIDError(f"{path} does not fit the BBDM.* sizes of this config: {err}") from None


def _check_bbdm_settings(b) -> None:
    """The EMA and sampling keys that the modules below take without checking them."""
    problems = []
    if not 0.0 <= b.EMA_DECAY < 1.0:
        problems.append(f"BBDM.EMA_DECAY must be in [0, 1), got {b.EMA_DECAY}")
    if not (isinstance(b.EMA_INTERVAL, int) and b.EMA_INTERVAL >= 1):
        problems.append(f"BBDM.EMA_INTERVAL counts optimizer steps between EMA updates: an integer >= 1, "
                        f"got {b.EMA_INTERVAL!r}")
    if not b.SAMPLE_ETA >= 0:
        problems.append(f"BBDM.SAMPLE_ETA scales the sampling noise: it must be >= 0, got {b.SAMPLE_ETA}")
    if b.SAMPLE_PRECISION not in SAMPLE_PRECISIONS:
        problems.append(f"BBDM.SAMPLE_PRECISION must be one of {list(SAMPLE_PRECISIONS)}, got {b.SAMPLE_PRECISION!r}")
    if problems:
        raise ShipReIDError("; ".join(problems))


def build_translator(cfg) -> PseudoSarTranslator:
    b = cfg.BBDM
    _check_bbdm_settings(b)
    unet = ConditionalUNet(in_channels=3, cond_channels=3, out_channels=3, base_channels=b.BASE_CHANNELS,
                           channel_mult=tuple(b.CHANNEL_MULT), num_res_blocks=b.NUM_RES_BLOCKS,
                           attention_levels=tuple(b.ATTENTION_LEVELS), num_heads_channels=b.HEAD_CHANNELS,
                           dropout=b.DROPOUT)
    bridge = BrownianBridge(num_timesteps=b.NUM_TIMESTEPS, m_min=b.M_MIN, m_max=b.M_MAX, max_var=b.MAX_VAR,
                            objective=b.OBJECTIVE, loss=b.LOSS)
    bridge.sample_timesteps(b.SAMPLE_STEPS)  # a bad BBDM.SAMPLE_STEPS stops the run here, not at sampling
    return PseudoSarTranslator(unet, bridge, b.EMA_DECAY, b.EMA_START, b.EMA_INTERVAL)
