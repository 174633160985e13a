"""Ranked-list pictures: each row is a query chip followed by its top-k gallery chips, framed green for the
same identity and red otherwise, with modality and distance under each chip (SAR drawn with the configured
radiometry)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

TILE_W, TILE_H = 48, 128          # every chip is resized to this portrait tile
BORDER, GAP, CAPTION = 3, 6, 24   # frame width, space between tiles, caption height (pixels)
QUERY_FRAME, HIT, MISS, TEXT = (40, 90, 220), (30, 170, 60), (210, 40, 40), (20, 20, 20)
MODALITY_LABEL = {0: "OPT", 1: "SAR"}


def _tile(pixels: np.ndarray, colour) -> Image.Image:
    framed = Image.new("RGB", (TILE_W + 2 * BORDER, TILE_H + 2 * BORDER), colour)
    framed.paste(Image.fromarray(pixels).resize((TILE_W, TILE_H), Image.BILINEAR), (BORDER, BORDER))
    return framed


def grid_size(num_rows: int, top_k: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture with `num_rows` queries and `top_k` results each."""
    cell_w, cell_h = TILE_W + 2 * BORDER + GAP, TILE_H + 2 * BORDER + CAPTION
    return GAP + (top_k + 1) * cell_w + GAP, GAP + num_rows * cell_h


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
    order = torch.sort(dist[:num_rows], dim=1, stable=True)
    for row in range(num_rows):
        y = GAP + row * cell_h
        q = query[row]
        canvas.paste(_tile(decode(q), QUERY_FRAME), (GAP, y))
        draw.text((GAP, y + TILE_H + 2 * BORDER + 2), f"Q {MODALITY_LABEL[q.modality]}", fill=TEXT)
        for rank in range(top_k):
            g = gallery[int(order.indices[row, rank])]
            x = GAP + (rank + 1) * cell_w
            canvas.paste(_tile(decode(g), HIT if g.pid == q.pid else MISS), (x, y))
            draw.text((x, y + TILE_H + 2 * BORDER + 2),
                      f"{MODALITY_LABEL[g.modality]}  {float(order.values[row, rank]):.2f}", fill=TEXT)
    canvas.save(path)
    return path
