"""datasets.radiometry / datasets.ship_size: chip decoding to 8-bit RGB (optical as is; SAR by max, percentile
or dB scaling), the ship-size vector, and bad chip files (each must raise DatasetError naming the file)."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from configs import get_cfg_defaults
from datasets.radiometry import ChipDecoder, sar_db_to_uint8, sar_max_to_uint8, sar_percentile_to_uint8
from datasets.records import OPTICAL, SAR, DatasetError
from datasets.ship_size import ShipSizeEncoder


def write_sar(tmp_path, array, name="0001_s05c2_SAR.tif") -> str:
    path = str(tmp_path / name)
    Image.fromarray(np.asarray(array, dtype=np.float32), mode="F").save(path)
    return path


def write_rgb(tmp_path, array, name="0001_s05c1_RGB.tif") -> str:
    path = str(tmp_path / name)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="RGB").save(path)
    return path


# ------------------------------------------------------------------------------------------ SAR: max
HAND_SAR = np.array([[0.5, 1.0],
                     [2.0, 4.0],
                     [3.0, 0.1]], dtype=np.float32)
# max = 4:  0.5/4*255 = 31.875 -> 31,  1/4*255 = 63.75 -> 63,  2/4*255 = 127.5 -> 127,  4/4*255 = 255,
#           3/4*255 = 191.25 -> 191,  0.1/4*255 = 6.375 -> 6      (truncation, not rounding)
HAND_SAR_MAX = np.array([[31, 63], [127, 255], [191, 6]], dtype=np.uint8)


def test_sar_max_function_hand_values():
    assert np.array_equal(sar_max_to_uint8(HAND_SAR), HAND_SAR_MAX)


def test_sar_max_decoder_on_a_tiff(tmp_path):
    path = write_sar(tmp_path, HAND_SAR)
    rgb, size = ChipDecoder("max")(path, SAR)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 2, 3)
    assert size == (2, 3)  # (width, height)
    for c in range(3):  # three identical channels
        assert np.array_equal(rgb[:, :, c], HAND_SAR_MAX)


def labels_row(samples_dir, file):
    with open(os.path.join(samples_dir, "labels.csv")) as f:
        return next(row for row in csv.DictReader(f) if row["file"] == file)


def test_sar_max_on_a_real_chip(samples_dir):
    file = "bounding_box_train/0001_s05c2_SAR.tif"
    path = os.path.join(samples_dir, file)
    row = labels_row(samples_dir, file)
    raw = np.asarray(Image.open(path), dtype=np.float32)
    assert raw.shape == (int(row["height"]), int(row["width"])) == (219, 55)
    assert float(raw.max()) == pytest.approx(float(row["vmax"]), rel=1e-6)
    rgb, size = ChipDecoder("max")(path, SAR)
    assert size == (55, 219)
    assert rgb.shape == (219, 55, 3)
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
    # the brightest pixel maps to 255
    peak = np.unravel_index(np.argmax(raw), raw.shape)
    assert rgb[peak][0] == 255 and rgb.max() == 255
    # official formula: float32 x / x.max() * 255, truncated
    expected = (raw / raw.max() * np.float32(255)).astype(np.uint8)
    assert np.array_equal(rgb[:, :, 0], expected)
    # and the image is very dark, as documented (a single bright scatterer sets the scale)
    assert np.median(rgb[:, :, 0]) < 64


# ------------------------------------------------------------------------------------------ SAR: percentile
def test_sar_percentile_hand_values():
    # 20 values: 0, 100, 101, ..., 118. 5th percentile with linear interpolation: position 0.05 * 19 = 0.95
    # between 0 and 100 -> lo = 95; 100th percentile -> hi = 118; range 23 (+1e-8, as MOS)
    amplitude = np.array([0.0] + list(range(100, 119)), dtype=np.float32).reshape(4, 5)
    grey = sar_percentile_to_uint8(amplitude, 5.0, 100.0)
    # 0   -> (0 - 95)/23*255 < 0 -> clipped to 0
    # 100 -> 5/23*255 = 55.43 -> 55
    # 110 -> 15/23*255 = 166.30 -> 166
    # 117 -> 22/23*255 = 243.91 -> 243
    # 118 -> 23/(23 + 1e-8)*255 in float32, where 23 + 1e-8 == 23 -> 255 (MOS's arithmetic: its released
    #        features are matched to 1e-6 only with float32, see tests/test_golden_transoss.py)
    assert grey.dtype == np.uint8
    assert grey[0, 0] == 0
    assert grey[0, 1] == 55
    assert grey.flat[11] == 166  # value 110
    assert grey.flat[18] == 243  # value 117
    assert grey.flat[19] == 255  # value 118


def test_sar_percentile_decoder_on_a_tiff(tmp_path):
    # 10 values 1..10, percentiles (10, 90): positions 0.9 and 8.1 -> lo = 1.9, hi = 9.1, range 7.2
    amplitude = np.arange(1, 11, dtype=np.float32).reshape(5, 2)
    path = write_sar(tmp_path, amplitude)
    rgb, size = ChipDecoder("percentile", percentiles=(10, 90))(path, SAR)
    assert size == (2, 5)
    # 1, 1.9 -> 0;  2 -> 0.1/7.2*255 = 3.54 -> 3;  5 -> 3.1/7.2*255 = 109.79 -> 109;  9 -> 7.1/7.2*255 = 251.46 -> 251
    # 10 -> 8.1/7.2*255 = 286.9 -> clipped to 255
    expected = np.array([[0, 3], [38, 74], [109, 145], [180, 216], [251, 255]], dtype=np.uint8)
    # (3 -> 1.1/7.2*255 = 38.96, 4 -> 74.38, 6 -> 145.21, 7 -> 180.63, 8 -> 216.04)
    for c in range(3):
        assert np.array_equal(rgb[:, :, c], expected)


def test_sar_percentile_constant_chip_does_not_divide_by_zero():
    grey = sar_percentile_to_uint8(np.full((3, 3), 2.5, dtype=np.float32), 5.0, 100.0)
    assert np.array_equal(grey, np.zeros((3, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------ SAR: dB
def test_sar_db_hand_values():
    # 20 log10(x) mapped from [-40, 20] dB to [0, 255]:
    # 0.01 -> -40 dB -> 0;  10 -> 20 dB -> 255;  sqrt(10) -> 10 dB -> 50/60*255 = 212.5 -> 212
    # 1e-3 -> -60 dB -> clipped 0;  100 -> 40 dB -> clipped 255;  0 -> floor 1e-10 -> -200 dB -> 0
    amplitude = np.array([[0.01, 10.0, np.sqrt(10.0), 1e-3, 100.0, 0.0]], dtype=np.float32)
    assert sar_db_to_uint8(amplitude, -40.0, 20.0).tolist() == [[0, 255, 212, 0, 255, 0]]
    # another range: [-20, 0] dB; 0.1 -> -20 dB -> 0; 1 -> 0 dB -> 255; 10**-0.5 -> -10 dB -> 127.5 -> 127
    amplitude = np.array([[0.1, 1.0, 10 ** -0.5]], dtype=np.float32)
    assert sar_db_to_uint8(amplitude, -20.0, 0.0).tolist() == [[0, 255, 127]]


def test_sar_db_decoder_on_a_tiff(tmp_path):
    path = write_sar(tmp_path, [[0.01], [10.0]])
    rgb, size = ChipDecoder("db", db_range=(-40, 20))(path, SAR)
    assert size == (1, 2)
    assert rgb.tolist() == [[[0, 0, 0]], [[255, 255, 255]]]


def test_decoder_from_config_uses_the_config(tmp_path):
    cfg = get_cfg_defaults()
    decoder = ChipDecoder.from_config(cfg)
    assert (decoder.sar_radiometry, decoder.percentiles, decoder.db_range) == ("max", (5.0, 100.0), (-40.0, 20.0))
    rgb, _ = decoder(write_sar(tmp_path, HAND_SAR), SAR)
    assert np.array_equal(rgb[:, :, 0], HAND_SAR_MAX)


def test_unknown_radiometry_raises():
    with pytest.raises(DatasetError, match="SAR_RADIOMETRY"):
        ChipDecoder("log")


# ------------------------------------------------------------------------------------------ optical
def test_optical_decoding_returns_the_rgb_array_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (280, 60, 3), dtype=np.uint8)
    path = write_rgb(tmp_path, array)
    rgb, size = ChipDecoder("max")(path, OPTICAL)
    assert size == (60, 280)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, array)
    # the SAR radiometry setting does not touch optical chips
    assert np.array_equal(ChipDecoder("db")(path, OPTICAL)[0], array)


def test_optical_real_chip(samples_dir):
    file = "bounding_box_train/0001_s05c1_RGB.tif"  # LZW-compressed 8-bit RGB, 60 x 281
    path = os.path.join(samples_dir, file)
    rgb, size = ChipDecoder()(path, OPTICAL)
    assert size == (60, 281) and rgb.shape == (281, 60, 3)
    assert np.array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))
    row = labels_row(samples_dir, file)
    assert (int(rgb.min()), int(rgb.max())) == (int(float(row["vmin"])), int(float(row["vmax"])))


# ------------------------------------------------------------------------------------------ ship size
def test_ship_size_vector_by_hand(tmp_path):
    encoder = ShipSizeEncoder.from_config(get_cfg_defaults())
    _, optical_size = ChipDecoder()(write_rgb(tmp_path, np.zeros((280, 60, 3))), OPTICAL)
    _, sar_size = ChipDecoder()(write_sar(tmp_path, np.ones((230, 46))), SAR)
    assert optical_size == (60, 280) and sar_size == (46, 230)
    # optical 60 x 280 px at 0.75 m: beam 45 m, length 210 m
    #   (45/93 - 0.434)/0.031 = (0.48387096774 - 0.434)/0.031 = 1.60874089484
    #   (210/427 - 0.461)/0.031 = (0.49180327869 - 0.461)/0.031 = 0.99365415145
    #   210/45 = 4.66666666667
    assert encoder(*optical_size, OPTICAL) == pytest.approx((1.60874089484, 0.99365415145, 4.66666666667), rel=1e-9)
    # SAR 46 x 230 px at 1 m: beam 46 m, length 230 m
    #   (46/93 - 0.434)/0.031 = (0.49462365591 - 0.434)/0.031 = 1.95560180355
    #   (230/427 - 0.461)/0.031 = (0.53864168618 - 0.461)/0.031 = 2.50457052194
    #   230/46 = 5
    assert encoder(*sar_size, SAR) == pytest.approx((1.95560180355, 2.50457052194, 5.0), rel=1e-9)


# ------------------------------------------------------------------------------------------ bad inputs
def assert_raises_naming(path, modality, decoder=None):
    with pytest.raises(DatasetError) as err:
        (decoder or ChipDecoder())(path, modality)
    assert path in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("modality", [OPTICAL, SAR])
def test_truncated_tiff(tmp_path, modality):
    if modality == OPTICAL:
        path = write_rgb(tmp_path, np.full((280, 60, 3), 7))
    else:
        path = write_sar(tmp_path, np.full((230, 46), 1.5))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    assert "cannot decode" in assert_raises_naming(path, modality)


@pytest.mark.parametrize("modality", [OPTICAL, SAR])
def test_empty_file(tmp_path, modality):
    path = str(tmp_path / "0001_s05c1_RGB.tif")
    open(path, "wb").close()
    assert_raises_naming(path, modality)


@pytest.mark.parametrize("modality", [OPTICAL, SAR])
def test_non_image_bytes(tmp_path, modality):
    path = str(tmp_path / "0001_s05c1_SAR.tif")
    with open(path, "wb") as f:
        f.write(b"this is not a TIFF file, just some text\n" * 20)
    assert_raises_naming(path, modality)


def test_missing_file(tmp_path):
    path = str(tmp_path / "0001_s05c1_RGB.tif")
    assert "not found" in assert_raises_naming(path, OPTICAL)


def test_optical_single_band(tmp_path):
    path = str(tmp_path / "0001_s05c1_RGB.tif")
    Image.fromarray(np.full((20, 5), 100, dtype=np.uint8), mode="L").save(path)
    assert "'L'" in assert_raises_naming(path, OPTICAL)


def test_optical_rgba(tmp_path):
    path = str(tmp_path / "0001_s05c1_RGB.tif")
    Image.fromarray(np.full((20, 5, 4), 100, dtype=np.uint8), mode="RGBA").save(path)
    assert "'RGBA'" in assert_raises_naming(path, OPTICAL)


def test_optical_chip_that_is_float_sar(tmp_path):
    path = write_sar(tmp_path, np.ones((20, 5)), name="0001_s05c1_RGB.tif")
    assert_raises_naming(path, OPTICAL)


@pytest.mark.parametrize("radiometry", ["max", "percentile", "db"])
def test_sar_all_zero(tmp_path, radiometry):
    path = write_sar(tmp_path, np.zeros((20, 5)))
    assert "all zero" in assert_raises_naming(path, SAR, ChipDecoder(radiometry))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_sar_nan_or_inf(tmp_path, bad):
    array = np.ones((20, 5), dtype=np.float32)
    array[3, 2] = bad
    path = write_sar(tmp_path, array)
    assert "NaN or infinite" in assert_raises_naming(path, SAR)


def test_sar_stored_as_uint8(tmp_path):
    path = str(tmp_path / "0001_s05c2_SAR.tif")
    Image.fromarray(np.full((20, 5), 100, dtype=np.uint8), mode="L").save(path)
    assert "'L'" in assert_raises_naming(path, SAR)


def test_sar_stored_as_rgb(tmp_path):
    path = write_rgb(tmp_path, np.full((20, 5, 3), 100), name="0001_s05c2_SAR.tif")
    assert "'RGB'" in assert_raises_naming(path, SAR)


def test_8bit_sar_png_is_accepted_as_grey(tmp_path):
    # the pretraining pairs' 8-bit SAR PNGs are already grey levels: replicated, not rescaled
    path = str(tmp_path / "x_0001_SAR.png")
    grey = np.array([[0, 10], [200, 30]], dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(path)
    rgb, size = ChipDecoder()(path, SAR)
    assert size == (2, 2) and rgb.tolist() == [[[0] * 3, [10] * 3], [[200] * 3, [30] * 3]]


def test_sar_negative_amplitude_is_rejected(tmp_path):
    # amplitude cannot be negative; decode_sar checks NaN/inf/all-zero but not this. Hand computation:
    # -1 / 2 * 255 = -127.5 -> astype(uint8) wraps to 129 (a mid-grey pixel out of a negative value).
    path = write_sar(tmp_path, [[-1.0, 2.0]])
    with pytest.raises(DatasetError, match="negative") as err:
        ChipDecoder("max")(path, SAR)
    assert path in str(err.value)
