"""A 2-D picture of test features: PCA to two dimensions, colour by identity, circle = optical, square = SAR.

Side-by-side panels (e.g. untrained vs trained) share nothing but the layout, each projected on its own; each
panel's axes say how much of its features' variance they hold. A legend under the panels explains the markers
and the colours.
"""
from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

PANEL, MARGIN, RADIUS, TITLE = 420, 24, 4, 18  # panel width, inner margin, marker radius, title height (pixels)
AXIS = 16                                      # room for an axis label, left of and under the plot (pixels)
LINE = 14                                      # legend line height (pixels, PIL's default 10 px font)
LEGEND = 2 * LINE + 8                          # legend strip under the panels: markers, then colours
PLOT = PANEL - AXIS - 4                        # side of the square plot frame (pixels)
BLACK, GREY, FRAME = (0, 0, 0), (150, 150, 150), (200, 200, 200)


def _palette() -> list[tuple[int, int, int]]:
    """20 identity colours: 10 hues 36 degrees apart, first saturated and darker, then pale and lighter."""
    shades = ((0.9, 0.75), (0.45, 0.97))  # (saturation, value)
    return [tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(i / 10, s, v))
            for s, v in shades for i in range(10)]


PALETTE = _palette()


def pca_2d(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-2 principal components of the L2-normalised features, scaled into [0, 1]^2, and the fraction of the
    total variance each of the two holds."""
    x = torch.nn.functional.normalize(feats.double(), dim=1)
    x = x - x.mean(0, keepdim=True)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].t()).numpy()
    span = np.maximum(xy.max(0) - xy.min(0), 1e-12)
    variance = (s ** 2).numpy()
    explained = variance[:2] / max(variance.sum(), 1e-300)
    return (xy - xy.min(0)) / span, explained


def axis_labels(explained) -> tuple[str, str]:
    """(x, y) axis labels: the component and its share of the variance."""
    return tuple(f"PC{i + 1} ({100 * float(r):.1f}% of variance)" for i, r in enumerate(explained[:2]))


def identity_colour(pid: int, order: dict) -> tuple[int, int, int]:
    """Grey for distractors (pid < 0); else the palette colour of the pid's place in sorted order (cycled)."""
    if pid < 0:
        return GREY
    return PALETTE[order[pid] % len(PALETTE)]


def colour_note(num_identities: int) -> str:
    note = f"colour = identity ({num_identities} identities, {len(PALETTE)} colours"
    return note + (", repeated beyond that)" if num_identities > len(PALETTE) else ")")


def picture_size(num_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture with `num_panels` panels."""
    return PANEL * num_panels, TITLE + PLOT + AXIS + LEGEND


def _marker(draw: ImageDraw.ImageDraw, cx: float, cy: float, modality: int, colour) -> None:
    shape = draw.ellipse if modality == 0 else draw.rectangle
    shape([cx - RADIUS, cy - RADIUS, cx + RADIUS, cy + RADIUS], fill=colour, outline=BLACK)


def _vertical_text(canvas: Image.Image, text: str, left: int, centre_y: int) -> None:
    """`text` rotated to read bottom-up, centred vertically on `centre_y`."""
    strip = Image.new("RGB", (PLOT, AXIS), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    draw.text(((PLOT - draw.textlength(text)) / 2, 2), text, fill=BLACK)
    canvas.paste(strip.rotate(90, expand=True), (left, centre_y - PLOT // 2))


def _draw_panel(canvas, draw, left: int, title: str, feats: torch.Tensor, pids, modalities, order) -> None:
    xy, explained = pca_2d(feats)
    x_label, y_label = axis_labels(explained)
    frame_left, frame_right, frame_bottom = left + AXIS, left + AXIS + PLOT, TITLE + PLOT
    draw.text((frame_left + MARGIN, 4), title, fill=BLACK)
    draw.rectangle([frame_left, TITLE, frame_right - 1, frame_bottom - 1], outline=FRAME)
    draw.text((frame_left + (PLOT - draw.textlength(x_label)) / 2, frame_bottom + 2), x_label, fill=BLACK)
    _vertical_text(canvas, y_label, left, TITLE + PLOT // 2)
    for (x, y), pid, modality in zip(xy, pids, modalities):
        cx = frame_left + MARGIN + x * (PLOT - 2 * MARGIN)
        cy = TITLE + MARGIN + (1 - y) * (PLOT - 2 * MARGIN)
        _marker(draw, cx, cy, modality, identity_colour(pid, order))


def _draw_legend(draw, top: int, num_identities: int) -> None:
    x, y = AXIS + MARGIN, top + 4
    for modality, name in ((0, "optical"), (1, "SAR")):
        _marker(draw, x + RADIUS, y + LINE // 2, modality, (255, 255, 255))
        draw.text((x + 2 * RADIUS + 4, y + 1), name, fill=BLACK)
        x += 2 * RADIUS + 4 + int(draw.textlength(name)) + 16
    draw.text((x, y + 1), "grey = distractor (pid -1)", fill=BLACK)
    draw.text((AXIS + MARGIN, y + LINE + 1), colour_note(num_identities), fill=BLACK)


def draw_embedding(panels: list[tuple[str, torch.Tensor]], pids, modalities, path: str) -> str:
    """One panel per (title, features); the same pids/modalities (one per row of the features) for all."""
    pids, modalities = [int(p) for p in pids], [int(m) for m in modalities]
    order = {pid: i for i, pid in enumerate(sorted({p for p in pids if p >= 0}))}
    canvas = Image.new("RGB", picture_size(len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for number, (title, feats) in enumerate(panels):
        _draw_panel(canvas, draw, number * PANEL, title, feats, pids, modalities, order)
    _draw_legend(draw, TITLE + PLOT + AXIS, len(order))
    canvas.save(path)
    return path
