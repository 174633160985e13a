"""Ranked-list pictures: each row is a query chip followed by its top-k gallery chips, framed green for the
same identity and red otherwise. Under each chip: its identity and modality, and under each result its distance
to the query with enough digits to tell neighbours apart (SAR drawn with the configured radiometry)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

TILE_W, TILE_H = 64, 128          # every chip is resized to this portrait tile
BORDER, GAP, CAPTION = 3, 6, 26   # frame width, space between tiles, caption height: two lines (pixels)
LINE = 12                         # caption line height (pixels, PIL's default 10 px font)
MIN_DIGITS, MAX_DIGITS = 4, 9     # significant digits of the distances shown
QUERY_FRAME, HIT, MISS, TEXT = (40, 90, 220), (30, 170, 60), (210, 40, 40), (20, 20, 20)
MODALITY_LABEL = {0: "OPT", 1: "SAR"}


def _tile(pixels: np.ndarray, colour) -> Image.Image:
    framed = Image.new("RGB", (TILE_W + 2 * BORDER, TILE_H + 2 * BORDER), colour)
    framed.paste(Image.fromarray(pixels).resize((TILE_W, TILE_H), Image.BILINEAR), (BORDER, BORDER))
    return framed


def chip_label(record, query: bool = False) -> str:
    """The identity line under a chip: "Q" for the query, the pid as written in the file name (-1 = distractor;
    "?" when the name gives none: a chip explained by tools/explain.py), and the modality."""
    pid = "?" if record.pid is None else record.pid
    return f"{'Q ' if query else ''}id {pid} {MODALITY_LABEL[record.modality]}"


def distance_labels(distances) -> list[str]:
    """Distances of one ranked row as text: MIN_DIGITS significant digits, more where two consecutive distances
    that differ would otherwise print the same (up to MAX_DIGITS)."""
    values = [float(d) for d in distances]
    for digits in range(MIN_DIGITS, MAX_DIGITS + 1):
        labels = [f"{v:#.{digits}g}" for v in values]
        if all(a != b for a, b, x, y in zip(labels, labels[1:], values, values[1:]) if x != y):
            return labels
    return labels


def grid_size(num_rows: int, top_k: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture with `num_rows` queries and `top_k` results each."""
    cell_w, cell_h = TILE_W + 2 * BORDER + GAP, TILE_H + 2 * BORDER + CAPTION
    return GAP + (top_k + 1) * cell_w + GAP, GAP + num_rows * cell_h


def ranked_order(dist: torch.Tensor, num_rows: int, top_k: int):
    """(distances, gallery indices) of the top_k results of the first num_rows queries, (num_rows, top_k) each;
    ties keep gallery order."""
    order = torch.sort(dist[:num_rows], dim=1, stable=True)
    return order.values[:, :top_k], order.indices[:, :top_k]


def draw_ranked_lists(query, gallery, dist: torch.Tensor, decode, path: str, num_rows: int = 8,
                      top_k: int = 10) -> str:
    """`query`/`gallery`: chip records; `dist`: (num_query x num_gallery); `decode(record) -> uint8 pixels`.

    Draws the first `num_rows` queries (in order) and saves a PNG at `path`.
    """
    num_rows, top_k = min(num_rows, len(query)), min(top_k, len(gallery))
    width, height = grid_size(num_rows, top_k)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    cell_w, cell_h = TILE_W + 2 * BORDER + GAP, TILE_H + 2 * BORDER + CAPTION
    values, indices = ranked_order(dist, num_rows, top_k)
    for row in range(num_rows):
        y = GAP + row * cell_h
        caption_y = y + TILE_H + 2 * BORDER + 1
        q = query[row]
        canvas.paste(_tile(decode(q), QUERY_FRAME), (GAP, y))
        draw.text((GAP, caption_y), chip_label(q, query=True), fill=TEXT)
        for rank, distance in enumerate(distance_labels(values[row])):
            g = gallery[int(indices[row, rank])]
            x = GAP + (rank + 1) * cell_w
            canvas.paste(_tile(decode(g), HIT if g.pid == q.pid else MISS), (x, y))
            draw.text((x, caption_y), chip_label(g), fill=TEXT)
            draw.text((x, caption_y + LINE), distance, fill=TEXT)
    canvas.save(path)
    return path
