"""A line chart drawn with PIL: per curve a mean line with dots and a translucent band from min to max, axes with
round ticks, a title and a legend below the plot."""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# distinct on white, in order (Okabe-Ito, then darker tones)
PALETTE = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
           (120, 120, 120), (0, 0, 0), (150, 60, 40), (60, 90, 30)]
BAND_ALPHA = 60
WIDTH, PLOT_HEIGHT = 960, 480
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 30, 50, 60
LEGEND_LINE = 22


@dataclass
class Curve:
    label: str
    xs: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]


def nice_step(span: float, target: int = 6) -> float:
    """1, 2 or 5 times a power of ten, near span / target."""
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def ticks(low: float, high: float, integer: bool = False) -> list[float]:
    step = nice_step(high - low)
    if integer:
        step = max(1, round(step))
    first = math.floor(low / step) * step
    count = int(math.ceil((high - first) / step - 1e-9))
    return [round(first + i * step, 10) for i in range(count + 1)]


@dataclass
class Frame:
    """Where data coordinates land in the image: the plot area's pixel box and the axes' ranges."""
    left: int
    top: int
    right: int
    bottom: int
    x_ticks: list[float]
    y_ticks: list[float]

    def px(self, x: float, y: float) -> tuple[float, float]:
        x0, x1, y0, y1 = self.x_ticks[0], self.x_ticks[-1], self.y_ticks[0], self.y_ticks[-1]
        return (self.left + (x - x0) / (x1 - x0) * (self.right - self.left),
                self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top))


def frame_for(curves: list[Curve]) -> Frame:
    xs = [x for c in curves for x in c.xs]
    ys = [y for c in curves for y in c.low + c.high + c.mean]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = min(ys), max(ys)
    if y_high - y_low < 1:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    return Frame(MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, MARGIN_TOP + PLOT_HEIGHT,
                 ticks(x_low, x_high, integer=True), ticks(y_low, y_high))


def _label(value: float) -> str:
    return f"{value:g}" if abs(value - round(value)) > 1e-9 else str(int(round(value)))


def draw_band_plot(curves: list[Curve], path: str, title: str, xlabel: str, ylabel: str) -> str:
    if not curves:
        raise ValueError("draw_band_plot needs at least one curve")
    frame = frame_for(curves)
    height = frame.bottom + MARGIN_BOTTOM + LEGEND_LINE * len(curves)
    image = Image.new("RGBA", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    draw.text((WIDTH / 2, 16), title, fill="black", font=font, anchor="mm")
    for x in frame.x_ticks:
        px, _ = frame.px(x, frame.y_ticks[0])
        draw.line([(px, frame.top), (px, frame.bottom)], fill=(235, 235, 235))
        draw.text((px, frame.bottom + 6), _label(x), fill="black", font=small, anchor="mt")
    for y in frame.y_ticks:
        _, py = frame.px(frame.x_ticks[0], y)
        draw.line([(frame.left, py), (frame.right, py)], fill=(235, 235, 235))
        draw.text((frame.left - 6, py), _label(y), fill="black", font=small, anchor="rm")
    draw.rectangle([frame.left, frame.top, frame.right, frame.bottom], outline="black")
    draw.text(((frame.left + frame.right) / 2, frame.bottom + 28), xlabel, fill="black", font=font, anchor="mt")
    draw.text((frame.left, frame.top - 6), ylabel, fill="black", font=small, anchor="lb")

    bands = Image.new("RGBA", image.size, (0, 0, 0, 0))
    band_draw = ImageDraw.Draw(bands)
    for i, curve in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        upper = [frame.px(x, y) for x, y in zip(curve.xs, curve.high)]
        lower = [frame.px(x, y) for x, y in zip(curve.xs, curve.low)]
        if len(curve.xs) == 1:
            (x, top), (_, bottom) = upper[0], lower[0]
            band_draw.rectangle([x - 5, top, x + 5, bottom], fill=colour + (BAND_ALPHA,))
        else:
            band_draw.polygon(upper + lower[::-1], fill=colour + (BAND_ALPHA,))
    image = Image.alpha_composite(image, bands)
    draw = ImageDraw.Draw(image)
    for i, curve in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        points = [frame.px(x, y) for x, y in zip(curve.xs, curve.mean)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        legend_y = frame.bottom + MARGIN_BOTTOM + LEGEND_LINE * i + LEGEND_LINE / 2
        draw.line([(frame.left, legend_y), (frame.left + 30, legend_y)], fill=colour, width=3)
        draw.text((frame.left + 40, legend_y), curve.label, fill="black", font=small, anchor="lm")
    image.convert("RGB").save(path)
    return path
