"""The ship-size vector fed to the SSE token, from a chip's pixel size."""
from __future__ import annotations

from .records import OPTICAL


class ShipSizeEncoder:
    """Maps a chip's (width, height) in pixels to the 3-vector of TransOSS's size token.

    Chips are cut along the hull and rotated bow-up, so width is the beam and height the length.
    """

    def __init__(self, optical_gsd, sar_gsd, width_scale, length_scale, width_mean, length_mean, spread):
        self.gsd = {OPTICAL: float(optical_gsd), 1: float(sar_gsd)}
        self.width_scale, self.length_scale = float(width_scale), float(length_scale)
        self.width_mean, self.length_mean = float(width_mean), float(length_mean)
        self.spread = float(spread)

    @classmethod
    def from_config(cls, cfg) -> "ShipSizeEncoder":
        s = cfg.INPUT.SHIP_SIZE
        return cls(s.OPTICAL_GSD, s.SAR_GSD, s.WIDTH_SCALE, s.LENGTH_SCALE, s.WIDTH_MEAN, s.LENGTH_MEAN, s.SPREAD)

    def __call__(self, width_px: int, height_px: int, modality: int) -> tuple[float, float, float]:
        beam = width_px * self.gsd[modality]
        length = height_px * self.gsd[modality]
        return ((beam / self.width_scale - self.width_mean) / self.spread,
                (length / self.length_scale - self.length_mean) / self.spread,
                length / beam)
