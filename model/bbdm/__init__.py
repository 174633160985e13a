"""Compact pixel-space Brownian-bridge diffusion (BBDM), optical -> SAR, for MOS's cross-modal synthesis."""
from .bridge import LOSSES, OBJECTIVES, BrownianBridge
from .unet import ConditionalUNet

__all__ = ["LOSSES", "OBJECTIVES", "BrownianBridge", "ConditionalUNet"]
