"""Decoding of chips to 8-bit RGB arrays, with the SAR amplitude-to-grey conversions."""
from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from .records import DatasetError, OPTICAL

RADIOMETRIES = ("max", "percentile", "db")
# Added to the percentile range so that a constant chip does not divide by zero (MOS uses the same).
PERCENTILE_EPS = 1e-8
# Smallest amplitude taken into the log for the dB conversion.
DB_FLOOR = 1e-10


def sar_max_to_uint8(amplitude: np.ndarray) -> np.ndarray:
    """Official TransOSS conversion: x / max(x) * 255, truncated to uint8 (float32 throughout)."""
    return (amplitude / amplitude.max() * 255).astype(np.uint8)


def sar_percentile_to_uint8(amplitude: np.ndarray, low: float, high: float) -> np.ndarray:
    """MOS denoising: clip to the [low, high] percentiles (linear interpolation) and stretch, in float32 as the
    released code computes it (NumPy 1 keeps float32 arrays float32 when combined with float64 scalars)."""
    lo, hi = (np.float32(v) for v in np.percentile(amplitude, [low, high]))
    scaled = (amplitude - lo) / (hi - lo + np.float32(PERCENTILE_EPS)) * np.float32(255)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def sar_db_to_uint8(amplitude: np.ndarray, db_min: float, db_max: float) -> np.ndarray:
    """Log amplitude 20 log10(x), mapped linearly from [db_min, db_max] to [0, 255]."""
    db = 20.0 * np.log10(np.maximum(amplitude, DB_FLOOR))
    return np.clip((db - db_min) / (db_max - db_min) * 255, 0, 255).astype(np.uint8)


class ChipDecoder:
    """Reads a chip file and returns (uint8 H x W x 3 array, (width, height) in pixels)."""

    def __init__(self, sar_radiometry: str = "max", percentiles=(5.0, 100.0), db_range=(-40.0, 20.0)):
        if sar_radiometry not in RADIOMETRIES:
            raise DatasetError(f"INPUT.SAR_RADIOMETRY must be one of {RADIOMETRIES}, got {sar_radiometry!r}")
        self.sar_radiometry = sar_radiometry
        self.percentiles = tuple(float(p) for p in percentiles)
        self.db_range = tuple(float(d) for d in db_range)

    @classmethod
    def from_config(cls, cfg) -> "ChipDecoder":
        return cls(cfg.INPUT.SAR_RADIOMETRY, cfg.INPUT.SAR_PERCENTILES, cfg.INPUT.SAR_DB_RANGE)

    def __call__(self, path: str, modality: int) -> tuple[np.ndarray, tuple[int, int]]:
        image = open_image(path)
        if modality == OPTICAL:
            return decode_optical(image, path), image.size
        if image.mode == "L" and path.lower().endswith(".png"):
            # 8-bit SAR PNGs (SEN1-2 style pretraining pairs) are already grey levels
            return np.repeat(np.asarray(image, dtype=np.uint8)[:, :, None], 3, axis=2), image.size
        return self.sar_to_rgb(decode_sar(image, path)), image.size

    def sar_to_rgb(self, amplitude: np.ndarray) -> np.ndarray:
        if self.sar_radiometry == "max":
            grey = sar_max_to_uint8(amplitude)
        elif self.sar_radiometry == "percentile":
            grey = sar_percentile_to_uint8(amplitude, *self.percentiles)
        else:
            grey = sar_db_to_uint8(amplitude, *self.db_range)
        return np.repeat(grey[:, :, None], 3, axis=2)


def open_image(path: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot decode the image ({err}); the file is empty, truncated or "
                           "not a TIFF. Replace it or remove it from the folder") from None
    return image


def decode_optical(image: Image.Image, path: str) -> np.ndarray:
    if image.mode != "RGB":
        raise DatasetError(f"{path}: an optical chip must be 8-bit RGB (3 channels), got PIL mode "
                           f"{image.mode!r} with {len(image.getbands())} band(s); convert it to RGB")
    return np.asarray(image, dtype=np.uint8)


def decode_sar(image: Image.Image, path: str) -> np.ndarray:
    if image.mode != "F":
        raise DatasetError(f"{path}: a SAR chip must be single-band float32 amplitude (PIL mode 'F'), got "
                           f"mode {image.mode!r} with {len(image.getbands())} band(s)")
    amplitude = np.asarray(image, dtype=np.float32)
    if not np.isfinite(amplitude).all():
        raise DatasetError(f"{path}: SAR chip holds NaN or infinite values; fix or remove the file")
    if amplitude.min() < 0:
        raise DatasetError(f"{path}: SAR chip holds negative values (min {amplitude.min():.3g}); amplitude is "
                           "non-negative: store the magnitude (|x|), not a signed or log-scaled band")
    if amplitude.max() <= 0:
        raise DatasetError(f"{path}: SAR chip has no positive amplitude (all zero); fix or remove the file")
    return amplitude
