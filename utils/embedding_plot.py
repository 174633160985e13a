"""A 2-D picture of test features: PCA to two dimensions, colour by identity, circle = optical, square = SAR.

Side-by-side panels (e.g. untrained vs trained) share nothing but the layout, each projected on its own.
"""
from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

PANEL, MARGIN, RADIUS, TITLE = 420, 24, 4, 18  # panel side, inner margin, marker radius, title height (pixels)


def project_2d(feats: torch.Tensor) -> np.ndarray:
    """Top-2 principal components of L2-normalised features, scaled into [0, 1]^2."""
    x = torch.nn.functional.normalize(feats.double(), dim=1)
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].t()).numpy()
    span = np.maximum(xy.max(0) - xy.min(0), 1e-12)
    return (xy - xy.min(0)) / span


def _colour(pid: int, order: dict) -> tuple[int, int, int]:
    if pid < 0:
        return (150, 150, 150)  # distractors in grey
    hue = (order[pid] * 0.618033988749895) % 1.0  # golden-ratio hues: neighbours in pid order differ
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.9))


def draw_embedding(panels: list[tuple[str, torch.Tensor]], pids, modalities, path: str) -> str:
    """One panel per (title, features); the same pids/modalities (one per row of the features) for all."""
    pids, modalities = [int(p) for p in pids], [int(m) for m in modalities]
    order = {pid: i for i, pid in enumerate(sorted({p for p in pids if p >= 0}))}
    canvas = Image.new("RGB", (PANEL * len(panels), PANEL + TITLE), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for number, (title, feats) in enumerate(panels):
        left = number * PANEL
        draw.text((left + MARGIN, 4), title, fill=(0, 0, 0))
        draw.rectangle([left + 2, TITLE, left + PANEL - 3, TITLE + PANEL - 3], outline=(200, 200, 200))
        for (x, y), pid, modality in zip(project_2d(feats), pids, modalities):
            cx = left + MARGIN + x * (PANEL - 2 * MARGIN)
            cy = TITLE + MARGIN + (1 - y) * (PANEL - 2 * MARGIN)
            box = [cx - RADIUS, cy - RADIUS, cx + RADIUS, cy + RADIUS]
            shape = draw.ellipse if modality == 0 else draw.rectangle
            shape(box, fill=_colour(pid, order), outline=(0, 0, 0))
    canvas.save(path)
    return path
