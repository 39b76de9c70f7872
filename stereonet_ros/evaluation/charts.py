"""Small raster charts for reports, drawn with Pillow (no plotting library): histograms and line plots.

Each function returns an ``(H, W, 3)`` uint8 RGB picture, ready for :func:`stereonet_ros.image_io.write_png`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]
SERIES_COLOURS: tuple[RGB, ...] = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
_BACKGROUND: RGB = (255, 255, 255)
_INK: RGB = (40, 40, 40)
_GRID: RGB = (225, 225, 225)
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 64, 16, 34, 46


class ChartError(ValueError):
    """Data a chart cannot show (empty, non-finite only, mismatched lengths)."""


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``; whole numbers only if ``integer``."""
    if not high > low:
        return [low]
    raw = (high - low) / max(count, 1)
    if integer:
        raw = max(raw, 1.0)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int(math.floor((high - first) / step + 1e-9)) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return '0'
    if abs(value) >= 100_000 or abs(value) < 0.01:
        return f'{value:.2g}'
    return f'{value:.4g}'


class _Axes:
    """A plot area with a title, axis labels and ticks; maps data to pixel coordinates."""

    def __init__(self, size: tuple[int, int], x_range: tuple[float, float], y_range: tuple[float, float],
                 title: str, x_label: str, y_label: str, integer_x: bool = False) -> None:
        self.width, self.height = size
        self.image = Image.new('RGB', size, _BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.x0, self.x1 = float(x_range[0]), float(x_range[1])
        self.y0, self.y1 = float(y_range[0]), float(y_range[1])
        if not self.x1 > self.x0:
            self.x1 = self.x0 + 1.0
        if not self.y1 > self.y0:
            self.y1 = self.y0 + 1.0
        self.left, self.right = _MARGIN_LEFT, self.width - _MARGIN_RIGHT
        self.top, self.bottom = _MARGIN_TOP, self.height - _MARGIN_BOTTOM
        small, big = _font(11), _font(14)
        self.draw.text((self.width // 2, 8), title, fill=_INK, font=big, anchor='mt')
        for tick in _nice_ticks(self.y0, self.y1):
            y = self.py(tick)
            self.draw.line([(self.left, y), (self.right, y)], fill=_GRID)
            self.draw.text((self.left - 6, y), _label(tick), fill=_INK, font=small, anchor='rm')
        for tick in _nice_ticks(self.x0, self.x1, 6, integer=integer_x):
            x = self.px(tick)
            self.draw.line([(x, self.bottom), (x, self.bottom + 4)], fill=_INK)
            self.draw.text((x, self.bottom + 6), _label(tick), fill=_INK, font=small, anchor='mt')
        self.draw.rectangle([self.left, self.top, self.right, self.bottom], outline=_INK)
        self.draw.text(((self.left + self.right) // 2, self.height - 6), x_label, fill=_INK, font=small, anchor='mb')
        label = Image.new('RGB', (max(1, self.bottom - self.top), 16), _BACKGROUND)
        ImageDraw.Draw(label).text((label.width // 2, 8), y_label, fill=_INK, font=small, anchor='mm')
        self.image.paste(label.rotate(90, expand=True), (2, self.top))

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def legend(self, names: Sequence[str]) -> None:
        font = _font(11)
        y = self.top + 6
        for index, name in enumerate(names):
            colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
            self.draw.line([(self.right - 120, y + 6), (self.right - 100, y + 6)], fill=colour, width=3)
            self.draw.text((self.right - 94, y), name, fill=_INK, font=font)
            y += 16

    def to_array(self) -> npt.NDArray[np.uint8]:
        return np.asarray(self.image, dtype=np.uint8).copy()


def histogram_chart(counts: npt.ArrayLike, edges: npt.ArrayLike, title: str, x_label: str,
                    y_label: str = 'pixels', size: tuple[int, int] = (640, 320),
                    marks: Sequence[float] = ()) -> npt.NDArray[np.uint8]:
    """Bars of ``counts`` over bins ``edges`` (``len(edges) == len(counts) + 1``); ``marks``: dashed x lines.

    Raises:
        ChartError: lengths do not fit, or there are no bins.
    """
    values = np.asarray(counts, dtype=np.float64)
    bounds = np.asarray(edges, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or bounds.shape != (values.size + 1,):
        raise ChartError(f'histogram needs n counts and n + 1 edges, got {values.shape} and {bounds.shape}')
    top = float(values.max()) if values.max() > 0 else 1.0
    axes = _Axes(size, (float(bounds[0]), float(bounds[-1])), (0.0, top * 1.05), title, x_label, y_label)
    for count, low, high in zip(values, bounds[:-1], bounds[1:], strict=True):
        if count > 0:
            axes.draw.rectangle([axes.px(low) + 0.5, axes.py(count), max(axes.px(high) - 0.5, axes.px(low) + 1),
                                 axes.bottom], fill=SERIES_COLOURS[0])
    for mark in marks:
        x = axes.px(mark)
        for y in range(axes.top, axes.bottom, 8):
            axes.draw.line([(x, y), (x, min(y + 4, axes.bottom))], fill=SERIES_COLOURS[1], width=1)
    return axes.to_array()


def histogram_of(values: npt.ArrayLike, title: str, x_label: str, bins: int = 30,
                 size: tuple[int, int] = (640, 320), marks: Sequence[float] = ()) -> npt.NDArray[np.uint8]:
    """Histogram of the finite ``values`` over their range (``bins`` equal bins).

    Raises:
        ChartError: no finite value.
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    if data.size == 0:
        raise ChartError(f'{title}: no finite values to plot')
    low, high = float(data.min()), float(data.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(data, bins=bins, range=(low, high))
    return histogram_chart(counts, edges, title, x_label, 'frames', size, marks)


def line_chart(x: npt.ArrayLike, series: Mapping[str, npt.ArrayLike], title: str, x_label: str, y_label: str,
               size: tuple[int, int] = (640, 320), integer_x: bool = False) -> npt.NDArray[np.uint8]:
    """One line (with dots) per series over ``x``; NaN values leave gaps; ``integer_x``: whole-number x ticks.

    Raises:
        ChartError: no series, lengths differ from ``x``, or no finite value at all.
    """
    xs = np.asarray(x, dtype=np.float64)
    if not series:
        raise ChartError(f'{title}: no series to plot')
    columns = {name: np.asarray(values, dtype=np.float64) for name, values in series.items()}
    for name, values in columns.items():
        if values.shape != xs.shape:
            raise ChartError(f'{title}: series {name!r} has {values.shape} values for {xs.shape} x values')
    finite = np.concatenate([values[np.isfinite(values)] for values in columns.values()])
    if finite.size == 0 or not np.isfinite(xs).any():
        raise ChartError(f'{title}: no finite values to plot')
    low = min(0.0, float(finite.min()))
    high = float(finite.max())
    axes = _Axes(size, (float(np.nanmin(xs)), float(np.nanmax(xs))), (low, high * 1.05 if high > 0 else 1.0),
                 title, x_label, y_label, integer_x)
    for index, values in enumerate(columns.values()):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        previous: tuple[float, float] | None = None
        for xv, yv in zip(xs, values, strict=True):
            if not (math.isfinite(xv) and math.isfinite(yv)):
                previous = None
                continue
            point = (axes.px(xv), axes.py(yv))
            if previous is not None:
                axes.draw.line([previous, point], fill=colour, width=2)
            axes.draw.ellipse([point[0] - 2.5, point[1] - 2.5, point[0] + 2.5, point[1] + 2.5], fill=colour)
            previous = point
    axes.legend(list(columns))
    return axes.to_array()
