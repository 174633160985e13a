"""Explanation maps of a ReID model on chip files, at the chip's resolution, and the pictures that show them.

Map kinds (docs/explain.md): "rollout" (attention rollout of the feature's class token over the patches),
"attention" (the last block's class-token attention), "pair" (Grad-CAM of a query/gallery pair's similarity; the
query's own tile then shows its rollout). Rollout and attention maps are stretched to [0, 1] per chip
(min -> 0, max -> 1); a pair map keeps its positive part divided by its maximum (0 = no evidence for the match).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from datasets.radiometry import ChipDecoder
from datasets.ship_size import ShipSizeEncoder
from datasets.transforms import build_test_transform
from model.attention_maps import HEAD_FUSIONS, AttentionRecorder, last_layer, patch_row, rollout
from model.pair_maps import pair_cams, pair_score
from utils.device import tf32
from utils.errors import ShipReIDError
from utils.explain_plot import Cell, draw_cells, grid_size, identity_frame, overlay
from utils.ranked_list import QUERY_FRAME, chip_label, distance_labels, ranked_order

from .extractor import modality_from_name

MAP_KINDS = ("pair", "rollout", "attention")
FEATURES = ("test", "shared", "specific")


@dataclass
class Chip:
    path: str
    modality: int
    pid: Optional[int]     # None: the name gives no identity
    pixels: np.ndarray     # decoded uint8 H x W x 3, SAR with the configured radiometry
    image: torch.Tensor    # uint8 3 x H x W network input
    size: tuple            # ship-size vector


@dataclass
class RowMaps:
    """Maps in [0, 1] at each chip's resolution, and the model's distance from the query to each gallery chip."""
    query: np.ndarray                              # the query's rollout / attention map
    gallery: list                                  # per gallery chip: its map (its pair map in pair mode)
    distances: list
    query_pair: list = field(default_factory=list)  # pair mode: the query's map for each gallery chip


def unit_range(grid: torch.Tensor) -> torch.Tensor:
    low, high = grid.amin(dim=(-2, -1), keepdim=True), grid.amax(dim=(-2, -1), keepdim=True)
    return (grid - low) / (high - low).clamp_min(torch.finfo(grid.dtype).tiny)


def positive_part(grid: torch.Tensor) -> torch.Tensor:
    positive = grid.clamp_min(0)
    return positive / positive.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(grid.dtype).tiny)


def to_chip(grid: torch.Tensor, backbone, input_hw, chip_hw) -> np.ndarray:
    """A (rows, cols) grid in [0, 1] as an (H, W) map of the chip: spread bilinearly over the input pixels that its
    patches cover, the edge repeated over an uncovered border (input not a whole number of strides), then resized
    to the chip as the chip was resized to the input."""
    rows, cols = grid.shape
    conv = backbone.patch_embed.optical
    covered = ((rows - 1) * conv.stride[0] + conv.kernel_size[0], (cols - 1) * conv.stride[1] + conv.kernel_size[1])
    x = F.interpolate(grid[None, None].float(), size=covered, mode="bilinear", align_corners=False)
    pad = (0, max(0, input_hw[1] - covered[1]), 0, max(0, input_hw[0] - covered[0]))
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    x = F.interpolate(x, size=tuple(chip_hw), mode="bilinear", align_corners=False)
    return x[0, 0].clamp(0, 1).cpu().numpy()


def attention_rows(head, feature: str) -> list[int]:
    """The output tokens a feature is read from: SDF-Net tokens mode has the shared class token (0) and the
    modality-specific one (1); every other head reads the class token alone."""
    if getattr(head, "mode", None) != "tokens":
        return [0]
    chosen = head.fusion if feature == "test" else feature
    return {"shared": [0], "specific": [1]}.get(chosen, [0, 1])


class Explainer:
    """Maps of `model` (moved to `device` by the caller) for chips decoded as test.py decodes them. The model is
    run in eval mode and left in the mode it was in; its hooks are gone after each call."""

    def __init__(self, model, cfg, device, kind: str = "pair", feature: str = "test", head_fusion: str = "mean",
                 discard_ratio: float = 0.0):
        for name, value, choices in (("--map", kind, MAP_KINDS), ("--feature", feature, FEATURES),
                                     ("--head_fusion", head_fusion, HEAD_FUSIONS)):
            if value not in choices:
                raise ShipReIDError(f"{name} must be one of {choices}, got {value!r}")
        if not 0.0 <= discard_ratio < 1.0:
            raise ShipReIDError(f"--discard_ratio must be in [0, 1), got {discard_ratio}")
        if feature != "test" and not model.disentangled:
            raise ShipReIDError(f"--feature {feature} needs an SDF-Net model (MODEL.SDF.DFL tokens or linear); "
                                "this one has a single class-token feature: use --feature test")
        self.model, self.cfg = model, cfg
        self.device = device if device is not None else next(model.parameters()).device
        self.kind, self.feature, self.head_fusion, self.discard_ratio = kind, feature, head_fusion, discard_ratio
        self.feature_key = {"shared": "feat_shared", "specific": "feat_specific"}.get(feature) \
            or model.test_feature_key(cfg.TEST.NECK_FEAT)
        self.rows = attention_rows(model.head, feature)
        self.decoder = ChipDecoder.from_config(cfg)
        self.size_encoder = ShipSizeEncoder.from_config(cfg)
        self.transform = build_test_transform(cfg)

    def load(self, path: str, modality: Optional[int] = None, pid: Optional[int] = None) -> Chip:
        modality = modality_from_name(path) if modality is None else modality
        pixels, (width, height) = self.decoder(path, modality)
        return Chip(path, modality, pid, pixels, self.transform(pixels), self.size_encoder(width, height, modality))

    def _batch(self, chips: list[Chip]) -> dict:
        return {"image": torch.stack([c.image for c in chips]).to(self.device),
                "modality": torch.tensor([c.modality for c in chips], device=self.device),
                "size": torch.tensor([c.size for c in chips], dtype=torch.float32, device=self.device)}

    def map_name(self) -> str:
        name = "last attn" if self.kind == "attention" else "rollout"
        discard = f" d{self.discard_ratio:g}" if self.kind != "attention" and self.discard_ratio else ""
        return f"{name} {self.head_fusion}{discard}"

    def explain_row(self, query: Chip, gallery: list[Chip]) -> RowMaps:
        if not gallery:
            raise ShipReIDError("no gallery chips to explain the query against")
        backbone, count = self.model.backbone, len(gallery)
        was_training = self.model.training
        self.model.eval()
        try:
            with tf32(False), AttentionRecorder(backbone) as recorder:  # full fp32 also for the maps' matmuls
                if self.kind == "pair":
                    cams, distances, _ = pair_cams(self.model, self._batch([query] * count + gallery), count,
                                                   self.feature_key, self.cfg.TEST.FEAT_NORM)
                else:
                    with torch.no_grad():
                        feats = self.model(self._batch([query] + gallery))[self.feature_key]
                    distances = -pair_score(feats[:1].expand(count, -1), feats[1:], self.cfg.TEST.FEAT_NORM)
                attentions = recorder.probabilities()
                matrix = (last_layer(attentions, self.head_fusion) if self.kind == "attention"
                          else rollout(attentions, self.head_fusion, self.discard_ratio))
        finally:
            self.model.train(was_training)
        single = unit_range(torch.stack([patch_row(matrix, backbone, t) for t in self.rows]).mean(dim=0))

        def chip_map(grid, chip):
            return to_chip(grid, backbone, self.cfg.INPUT.SIZE_TEST, chip.pixels.shape[:2])

        maps = RowMaps(chip_map(single[0], query), [], distances.tolist())
        if self.kind == "pair":
            cams = positive_part(cams)
            maps.query_pair = [chip_map(cams[i], query) for i in range(count)]
            maps.gallery = [chip_map(cams[count + i], g) for i, g in enumerate(gallery)]
        else:
            maps.gallery = [chip_map(single[1 + i], g) for i, g in enumerate(gallery)]
        return maps

    def row_cells(self, query: Chip, gallery: list[Chip], maps: RowMaps, labels: list[str]) -> list[Cell]:
        cells = [Cell([query.pixels, overlay(query.pixels, maps.query)], QUERY_FRAME,
                      [chip_label(query, query=True), self.map_name()])]
        for i, g in enumerate(gallery):
            tiles = [overlay(query.pixels, maps.query_pair[i])] if self.kind == "pair" else []
            cells.append(Cell(tiles + [overlay(g.pixels, maps.gallery[i])], identity_frame(query.pid, g.pid),
                              [chip_label(g), labels[i]]))
        return cells


def picture_size(num_rows: int, top_k: int, kind: str) -> tuple[int, int]:
    """(width, height) of an explanation picture: the query cell (chip, its map) and top_k result cells."""
    return grid_size([2] + [2 if kind == "pair" else 1] * top_k, num_rows)


def explain_ranked_lists(explainer: Explainer, query, gallery, dist: torch.Tensor, path: str, num_rows: int,
                         top_k: int) -> tuple[str, float]:
    """The first num_rows queries (chip records) with their top_k gallery records under `dist`, with maps and the
    distances of `dist`. Returns the path and the largest gap between those and the model's own distances (large
    when the ranked features are not this model's plain test features: other weights, TEST.FUSION...)."""
    num_rows, top_k = min(num_rows, len(query)), min(top_k, len(gallery))
    values, indices = ranked_order(dist, num_rows, top_k)
    rows, gap = [], 0.0
    for r in range(num_rows):
        q = explainer.load(query[r].path, query[r].modality, query[r].pid)
        chosen = [gallery[int(i)] for i in indices[r]]
        gs = [explainer.load(g.path, g.modality, g.pid) for g in chosen]
        maps = explainer.explain_row(q, gs)
        gap = max(gap, float((torch.tensor(maps.distances) - values[r].cpu().double()).abs().max()))
        rows.append(explainer.row_cells(q, gs, maps, distance_labels(values[r])))
    return draw_cells(rows, path), gap
