"""Decoding of chips to 8-bit RGB arrays, with the SAR amplitude-to-grey conversions."""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from .records import MODALITY_NAMES, OPTICAL, DatasetError

RADIOMETRIES = ("max", "percentile", "db")
# Added to the percentile range so that a constant chip does not divide by zero (MOS uses the same).
PERCENTILE_EPS = 1e-8
# Smallest amplitude taken into the log for the dB conversion.
DB_FLOOR = 1e-10
# PIL modes with 8-bit bands: Image.convert("RGB") keeps their values (alpha and padding bands are dropped).
# Wider modes (I;16, I, F) would be clipped at 255 by the conversion, so they are refused instead.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


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
    """Reads a chip file and returns (uint8 H x W x 3 array, (width, height) in pixels).

    HOSS chips must be stored as released (optical 8-bit RGB, SAR float32 amplitude). With `convert_8bit` (the
    OptiSar_Pair pretraining chips) files are read as the official pair reader reads them: optical chips and SAR
    PNGs in any 8-bit mode are converted to RGB; SAR TIFFs are float32 amplitude as in HOSS.
    """

    def __init__(self, sar_radiometry: str = "max", percentiles=(5.0, 100.0), db_range=(-40.0, 20.0),
                 convert_8bit: bool = False):
        if sar_radiometry not in RADIOMETRIES:
            raise DatasetError(f"INPUT.SAR_RADIOMETRY must be one of {RADIOMETRIES}, got {sar_radiometry!r}")
        self.sar_radiometry = sar_radiometry
        self.percentiles = tuple(float(p) for p in percentiles)
        self.db_range = tuple(float(d) for d in db_range)
        self.convert_8bit = convert_8bit

    @classmethod
    def from_config(cls, cfg, convert_8bit: bool = False) -> "ChipDecoder":
        return cls(cfg.INPUT.SAR_RADIOMETRY, cfg.INPUT.SAR_PERCENTILES, cfg.INPUT.SAR_DB_RANGE, convert_8bit)

    def __call__(self, path: str, modality: int) -> tuple[np.ndarray, tuple[int, int]]:
        pixels, size, _ = self.decode(path, modality)
        return pixels, size

    def decode(self, path: str, modality: int) -> tuple[np.ndarray, tuple[int, int], Optional[str]]:
        """(pixels, size, the PIL mode the chip was converted from to RGB, None when read as stored)."""
        image = open_image(path)
        is_png = path.lower().endswith(".png")
        if self.convert_8bit and (modality == OPTICAL or is_png):
            pixels = convert_8bit_to_rgb(image, path, modality)
            # RGB optical and grey SAR PNGs are the stored forms; anything else is worth a count in the log
            converted = image.mode not in (("RGB",) if modality == OPTICAL else ("L", "RGB"))
            return pixels, image.size, image.mode if converted else None
        if modality == OPTICAL:
            return decode_optical(image, path), image.size, None
        if image.mode == "L" and is_png:
            # 8-bit SAR PNGs (SEN1-2 style pretraining pairs) are already grey levels
            return np.repeat(np.asarray(image, dtype=np.uint8)[:, :, None], 3, axis=2), image.size, None
        return self.sar_to_rgb(decode_sar(image, path)), image.size, None

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


def convert_8bit_to_rgb(image: Image.Image, path: str, modality: int) -> np.ndarray:
    """Image.convert("RGB") (a grey band is replicated), for 8-bit modes only."""
    if image.mode not in EIGHT_BIT_MODES:
        raise DatasetError(f"{path}: a pretraining {MODALITY_NAMES[modality]} chip in PIL mode {image.mode!r} "
                           f"does not hold 8-bit bands (accepted: {', '.join(EIGHT_BIT_MODES)}); converting it "
                           "to RGB would clip every value above 255. Rescale it to 8 bits"
                           + ("" if modality == OPTICAL else " or store it as a float32 TIFF"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


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
