"""Pictures of explanation maps: rows of framed cells, each cell one or more chip tiles side by side (a chip with
its map overlaid in a jet colour scale, blue = 0, red = 1) and two caption lines. The tiles, frames, colours
and captions are those of the ranked-list pictures (utils/ranked_list.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .ranked_list import BORDER, CAPTION, GAP, HIT, LINE, MISS, TEXT, TILE_H, TILE_W

SEP = 2                    # frame-coloured space between the tiles of one cell (pixels)
ALPHA = 0.45               # weight of the map's colour over the chip
UNKNOWN = (150, 150, 150)  # frame when an identity is unknown (a chip name without one)


@dataclass
class Cell:
    tiles: list            # uint8 H x W x 3 pictures, any size (resized to the tile)
    frame: tuple
    lines: list            # caption lines (two fit)


def overlay(pixels: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The chip with a [0, 1] map of its size blended over it in the jet colour scale."""
    if heat.shape != pixels.shape[:2]:
        raise ValueError(f"map {heat.shape} and chip {pixels.shape[:2]} differ in size")
    colour = cv2.applyColorMap(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return np.round((1 - ALPHA) * pixels + ALPHA * colour).astype(np.uint8)


def identity_frame(query_pid: Optional[int], pid: Optional[int]) -> tuple:
    if query_pid is None or pid is None:
        return UNKNOWN
    return HIT if pid == query_pid else MISS


def cell_width(num_tiles: int) -> int:
    return num_tiles * TILE_W + (num_tiles - 1) * SEP + 2 * BORDER


def grid_size(row_tiles: list[int], num_rows: int) -> tuple[int, int]:
    """(width, height) of a picture of `num_rows` rows whose cells hold `row_tiles` tiles each."""
    width = GAP + sum(cell_width(n) + GAP for n in row_tiles)
    return width, GAP + num_rows * (TILE_H + 2 * BORDER + CAPTION)


def draw_cells(rows: list[list[Cell]], path: str) -> str:
    """Draw rows of cells (every row with the same number of tiles per cell) and save a PNG at `path`."""
    layout = [len(cell.tiles) for cell in rows[0]]
    if any([len(cell.tiles) for cell in row] != layout for row in rows):
        raise ValueError("every row of an explanation picture needs the same cells")
    canvas = Image.new("RGB", grid_size(layout, len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = GAP + r * (TILE_H + 2 * BORDER + CAPTION)
        x = GAP
        for cell in row:
            width = cell_width(len(cell.tiles))
            draw.rectangle([x, y, x + width - 1, y + TILE_H + 2 * BORDER - 1], fill=cell.frame)
            for t, tile in enumerate(cell.tiles):
                picture = Image.fromarray(tile).resize((TILE_W, TILE_H), Image.BILINEAR)
                canvas.paste(picture, (x + BORDER + t * (TILE_W + SEP), y + BORDER))
            for i, line in enumerate(cell.lines[:2]):
                draw.text((x, y + TILE_H + 2 * BORDER + 1 + i * LINE), line, fill=TEXT)
            x += width + GAP
    canvas.save(path)
    return path
