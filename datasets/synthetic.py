"""A synthetic HOSS ReID dataset in the official layout and formats, generated from a seed.

Ships are drawn bow-up in chips cut along the hull, like the release: an identity is a rigid design
(length, beam, superstructure blocks along the deck, bright radar scatterers, hull and deck paint), and each
image varies pose, margins, illumination, blur and noise; SAR chips are float32 linear amplitude with
speckle over sea clutter, optical chips 8-bit RGB. Chip pixel sizes follow each modality's ground sample
distance, so the ship-size token carries signal. Matching across modalities has to go through geometry.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

from .hoss import derive_cross_modal
from .records import OPTICAL, SAR, DatasetError, scan_hoss_folder

OPTICAL_GSD, SAR_GSD = 0.75, 1.0   # metres per pixel, as the release's sensors
SPEC_FILE = "synthetic_spec.json"
TAGS = {OPTICAL: "RGB", SAR: "SAR"}
# shared paint palette: identities are not separable by colour alone
HULL_COLOURS = np.array([[70, 70, 75], [120, 40, 35], [40, 60, 90], [150, 150, 145], [30, 30, 30], [90, 100, 60]])
DECK_COLOURS = np.array([[170, 160, 140], [110, 90, 70], [160, 60, 50], [90, 110, 90], [200, 200, 195]])
BLOCK_COLOURS = np.array([[230, 230, 225], [200, 190, 170], [210, 90, 60], [100, 120, 140], [240, 210, 80]])


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the same spec and seed give byte-identical files."""
    seed: int = 0
    train_ids: int = 150
    test_ids: int = 50
    images_per_id: int = 4          # alternating modalities over the passes of one sequence
    distractors: int = 20
    pair_folders: int = 4
    pairs_per_folder: int = 100

    def validate(self) -> None:
        if self.images_per_id < 2:
            raise DatasetError("SyntheticSpec.images_per_id must be at least 2 (a query and a gallery image)")
        for name in ("train_ids", "test_ids", "pair_folders", "pairs_per_folder"):
            if getattr(self, name) < 1:
                raise DatasetError(f"SyntheticSpec.{name} must be positive, got {getattr(self, name)}")
        if self.distractors < 0:
            raise DatasetError(f"SyntheticSpec.distractors must not be negative, got {self.distractors}")


@dataclass
class ShipDesign:
    length: float                   # metres
    beam: float
    bow: float                      # fraction of the length that tapers to the bow
    blocks: np.ndarray              # (n, 5): centre along hull, length, width fraction, colour index, radar gain
    scatterers: np.ndarray          # (m, 3): position along hull, lateral offset, amplitude
    hull_colour: np.ndarray
    deck_colour: np.ndarray


def random_design(rng: np.random.Generator) -> ShipDesign:
    length = rng.uniform(50, 300)
    beam = length / rng.uniform(4.0, 8.0)
    count = rng.integers(1, 5)
    centres = np.sort(rng.uniform(0.2, 0.85, count))
    blocks = np.stack([centres, rng.uniform(0.05, 0.18, count), rng.uniform(0.35, 0.85, count),
                       rng.integers(0, len(BLOCK_COLOURS), count), rng.uniform(1.5, 4.0, count)], 1)
    m = rng.integers(2, 6)
    scatterers = np.stack([rng.uniform(0.1, 0.95, m), rng.uniform(-0.35, 0.35, m), rng.uniform(3.0, 10.0, m)], 1)
    return ShipDesign(length, beam, rng.uniform(0.1, 0.25), blocks, scatterers,
                      HULL_COLOURS[rng.integers(len(HULL_COLOURS))].astype(float),
                      DECK_COLOURS[rng.integers(len(DECK_COLOURS))].astype(float))


def _ship_coordinates(design: ShipDesign, gsd: float, rng: np.random.Generator):
    """Pixel grid of one chip and each pixel's (along, across) position on the hull in [0,1] x [-.5,.5]."""
    angle = np.deg2rad(rng.uniform(-4, 4))
    length_px, beam_px = design.length / gsd, design.beam / gsd
    margin_x, margin_y = rng.uniform(2, 10, 2), rng.uniform(3, 14, 2)
    height = int(np.ceil(length_px * abs(np.cos(angle)) + beam_px * abs(np.sin(angle)) + margin_y.sum()))
    width = int(np.ceil(beam_px * abs(np.cos(angle)) + length_px * abs(np.sin(angle)) + margin_x.sum()))
    centre_y = margin_y[0] + (height - margin_y.sum()) / 2
    centre_x = margin_x[0] + (width - margin_x.sum()) / 2
    y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    dy, dx = y - centre_y, x - centre_x
    along = (dy * np.cos(angle) + dx * np.sin(angle)) / length_px + 0.5        # 0 at the bow (top)
    across = (dx * np.cos(angle) - dy * np.sin(angle)) / beam_px               # -0.5 .. 0.5 on the hull
    return along, across


def _masks(design: ShipDesign, along, across):
    half_width = 0.5 * np.clip(along / design.bow, 0, 1) * np.clip((1.02 - along) / 0.06, 0.6, 1)
    hull = (along >= 0) & (along <= 1) & (np.abs(across) <= half_width)
    deck = hull & (np.abs(across) <= half_width * 0.75)
    blocks = []
    for centre, size, width, colour, gain in design.blocks:
        mask = hull & (np.abs(along - centre) <= size / 2) & (np.abs(across) <= width / 2)
        blocks.append((mask, int(colour), gain))
    return hull, deck, blocks


def render_optical(design: ShipDesign, rng: np.random.Generator) -> np.ndarray:
    along, across = _ship_coordinates(design, OPTICAL_GSD, rng)
    hull, deck, blocks = _masks(design, along, across)
    sea = np.array([20, 45, 70]) + rng.normal(0, 8, 3)
    image = np.broadcast_to(sea, hull.shape + (3,)).copy() + rng.normal(0, 6, hull.shape + (1,))
    image[hull] = design.hull_colour + rng.normal(0, 10, 3)
    image[deck] = design.deck_colour + rng.normal(0, 10, 3)
    for mask, colour, _ in blocks:
        image[mask] = BLOCK_COLOURS[colour] + rng.normal(0, 12, 3)
        shadow = np.roll(mask, 2, axis=1) & ~mask & hull
        image[shadow] *= 0.6
    image = image * rng.uniform(0.75, 1.25) + rng.normal(0, 5, image.shape)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5))))


def render_sar(design: ShipDesign, rng: np.random.Generator) -> np.ndarray:
    along, across = _ship_coordinates(design, SAR_GSD, rng)
    hull, _, blocks = _masks(design, along, across)
    amplitude = np.full(hull.shape, rng.uniform(0.05, 0.2))
    amplitude[hull] = rng.uniform(0.4, 1.0)
    for mask, _, gain in blocks:
        amplitude[mask] = gain * rng.uniform(0.85, 1.15)
    for position, offset, peak in design.scatterers:
        distance = (along - position) ** 2 * (design.length / 3.0) ** 2 + (across - offset) ** 2 * (design.beam / 2.0) ** 2
        amplitude += peak * rng.uniform(0.8, 1.2) * np.exp(-distance)
    speckle = rng.gamma(shape=4.0, scale=0.25, size=amplitude.shape)  # 4-look intensity speckle, mean 1
    return (amplitude * np.sqrt(speckle) + 1e-3).astype(np.float32)


def _save(path: str, modality: int, pixels: np.ndarray) -> None:
    if modality == OPTICAL:
        Image.fromarray(pixels, mode="RGB").save(path, compression="tiff_lzw")
    else:
        Image.fromarray(pixels, mode="F").save(path)


def _render(design, modality, rng):
    return render_optical(design, rng) if modality == OPTICAL else render_sar(design, rng)


def generate(root: str, spec: SyntheticSpec) -> None:
    """Write HOSS/ (with subset/O2S and subset/S2O) and OptiSar_Pair/ under `root`."""
    rng = np.random.default_rng(spec.seed)
    hoss = os.path.join(root, "HOSS")
    folders = {name: os.path.join(hoss, name) for name in ("bounding_box_train", "query", "bounding_box_test")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    for number in range(spec.train_ids + spec.test_ids):
        pid, is_test = number + 1, number >= spec.train_ids
        design = random_design(rng)
        seq = 1 + number // 20
        first = int(rng.integers(0, 2))
        for pass_id in range(1, spec.images_per_id + 1):
            modality = (first + pass_id - 1) % 2
            split = ("query" if pass_id == 1 else "bounding_box_test") if is_test else "bounding_box_train"
            name = f"{pid:04d}_s{seq:02d}c{pass_id}_{TAGS[modality]}.tif"
            _save(os.path.join(folders[split], name), modality, _render(design, modality, rng))
    for index in range(spec.distractors):
        modality = index % 2
        _save(os.path.join(folders["bounding_box_test"], f"-1_{index + 1:04d}_{TAGS[modality]}.tif"), modality,
              _render(random_design(rng), modality, rng))
    query, gallery = scan_hoss_folder(folders["query"]), scan_hoss_folder(folders["bounding_box_test"])
    for protocol in ("O2S", "S2O"):
        derived = derive_cross_modal(protocol, query, gallery)
        for split, records in (("query", derived.query), ("bounding_box_test", derived.gallery)):
            target = os.path.join(hoss, "subset", protocol, split)
            os.makedirs(target, exist_ok=True)
            for record in records:
                shutil.copyfile(record.path, os.path.join(target, record.name))
    for folder in range(1, spec.pair_folders + 1):
        target = os.path.join(root, "OptiSar_Pair", f"{folder:04d}")
        os.makedirs(target, exist_ok=True)
        for pair in range(1, spec.pairs_per_folder + 1):  # pair ids repeat across folders, as keys must not
            design = random_design(rng)
            for modality in (OPTICAL, SAR):
                _save(os.path.join(target, f"scene{folder:02d}_{pair:05d}_{TAGS[modality]}.tif"), modality,
                      _render(design, modality, rng))


def ensure_synthetic(root: str, spec: SyntheticSpec) -> bool:
    """Generate under `root` unless it already holds this spec's data. True when it generated."""
    spec.validate()
    marker = os.path.join(root, SPEC_FILE)
    if os.path.isfile(marker):
        with open(marker) as f:
            found = json.load(f)
        if found != asdict(spec):
            raise DatasetError(f"{root} holds synthetic data of another spec ({found}); delete the folder or "
                               "choose another root")
        return False
    if os.path.exists(root) and os.listdir(root):
        raise DatasetError(f"{root} is not empty and holds no {SPEC_FILE}; choose an empty folder for synthetic data")
    tmp = root.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    generate(tmp, spec)
    with open(os.path.join(tmp, SPEC_FILE), "w") as f:
        json.dump(asdict(spec), f, indent=2)
    if os.path.exists(root):
        os.rmdir(root)
    os.replace(tmp, root)
    return True
