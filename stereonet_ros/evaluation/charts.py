"""Small raster charts for reports, drawn with Pillow (no plotting library): histograms, line plots, point
clouds seen from above, and colour bars under colour-mapped images.

Each function returns an ``(H, W, 3)`` uint8 RGB picture, ready for :func:`stereonet_ros.image_io.write_png`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from stereonet_ros.image_io import TURBO_LUT

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

    def legend(self, names: Sequence[str], colours: Sequence[RGB] = SERIES_COLOURS) -> None:
        font = _font(11)
        y = self.top + 6
        for index, name in enumerate(names):
            colour = colours[index % len(colours)]
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


MAP_BAR_HEIGHT = 52
"""Height of the strip :func:`with_colour_bar` adds under a colour-mapped image, pixels."""
MAP_BAR_MIN_WIDTH = 420
"""A map narrower than this is shown on a canvas this wide, so that the bar's labels fit."""
_BAR_TOP, _BAR_THICKNESS, _BAR_INSET = 4, 12, 10


def colour_bar(width: int, vmin: float, vmax: float, label: str,
               swatches: Sequence[tuple[RGB, str]] = ()) -> npt.NDArray[np.uint8]:
    """A horizontal turbo colour bar, ``(MAP_BAR_HEIGHT, width, 3)`` uint8: the gradient from ``vmin`` (left)
    to ``vmax`` (right) exactly as :func:`stereonet_ros.image_io.colorize_disparity` maps values (the 256
    turbo entries, nearest), round ticks under it, then ``label`` and a patch per ``swatches`` entry
    (the colours a map uses for what the scale does not cover: "no ground truth", "no prediction").

    Raises:
        ChartError: ``width`` too small for a gradient, or the bounds are not finite with ``vmin < vmax``.
    """
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmin < vmax):
        raise ChartError(f'colour bar needs finite vmin < vmax, got {vmin}, {vmax}')
    if width < 4 * _BAR_INSET:
        raise ChartError(f'colour bar needs a width of at least {4 * _BAR_INSET} px, got {width}')
    image = Image.new('RGB', (width, MAP_BAR_HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, right = _BAR_INSET, width - _BAR_INSET  # gradient columns [left, right)
    fraction = np.linspace(0.0, 1.0, right - left)
    gradient = TURBO_LUT[np.rint(fraction * 255.0).astype(np.intp)]  # (n, 3): value -> entry as colorize_disparity
    strip = np.repeat(gradient[np.newaxis], _BAR_THICKNESS, axis=0)  # (thickness, n, 3)
    image.paste(Image.fromarray(np.ascontiguousarray(strip)), (left, _BAR_TOP))
    small = _font(11)
    bottom = _BAR_TOP + _BAR_THICKNESS
    for tick in _nice_ticks(vmin, vmax, 5):
        x = left + (tick - vmin) / (vmax - vmin) * (right - 1 - left)
        draw.line([(x, bottom), (x, bottom + 3)], fill=_INK)
        draw.text((x, bottom + 4), _label(tick), fill=_INK, font=small, anchor='mt')
    text_y = MAP_BAR_HEIGHT - 16
    draw.text((left, text_y), label, fill=_INK, font=small)
    x = left + int(draw.textlength(label, font=small)) + 14
    for colour, meaning in swatches:
        draw.rectangle([x, text_y + 1, x + 11, text_y + 12], fill=colour, outline=_INK)
        draw.text((x + 16, text_y), meaning, fill=_INK, font=small)
        x += 16 + int(draw.textlength(meaning, font=small)) + 14
    return np.asarray(image, dtype=np.uint8).copy()


def with_colour_bar(picture: npt.ArrayLike, vmin: float, vmax: float, label: str,
                    swatches: Sequence[tuple[RGB, str]] = ()) -> npt.NDArray[np.uint8]:
    """``picture`` (``(H, W, 3)`` uint8, a colour-mapped image) with :func:`colour_bar` under it, on a white
    canvas at least :data:`MAP_BAR_MIN_WIDTH` wide (the picture at its top left, unscaled).

    Raises:
        ChartError: as :func:`colour_bar`, or ``picture`` is not ``(H, W, 3)``.
    """
    pixels = np.asarray(picture, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ChartError(f'with_colour_bar needs an (H, W, 3) picture, got shape {pixels.shape}')
    height, width = pixels.shape[:2]
    canvas_width = max(width, MAP_BAR_MIN_WIDTH)
    canvas = np.full((height + MAP_BAR_HEIGHT, canvas_width, 3), 255, dtype=np.uint8)  # (H + bar, W', 3)
    canvas[:height, :width] = pixels
    canvas[height:] = colour_bar(canvas_width, vmin, vmax, label, swatches)
    return canvas


def point_chart(series: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]], title: str, x_label: str, y_label: str,
                x_range: tuple[float, float], y_range: tuple[float, float], size: tuple[int, int] = (640, 480),
                colours: Sequence[RGB] = SERIES_COLOURS, equal_aspect: bool = True,
                overlap: tuple[RGB, str] | None = None) -> npt.NDArray[np.uint8]:
    """Points as one-pixel dots, one colour per series, drawn in order (a later series on top); points
    outside the ranges and non-finite ones are left out. ``equal_aspect``: one unit is as long on both axes
    (a map: the ranges are widened about their centres to fill the plot). ``overlap``: (colour, legend name)
    for the pixels that more than one series reaches, so that where two clouds agree shows apart from where
    only one is.

    Args:
        series: name -> (x values, y values), equal lengths.

    Raises:
        ChartError: no series, x and y of a series differ in length, or a range is empty or not finite.
    """
    if not series:
        raise ChartError(f'{title}: no series to plot')
    ranges = [tuple(float(v) for v in r) for r in (x_range, y_range)]
    if not all(math.isfinite(low) and math.isfinite(high) and high > low for low, high in ranges):
        raise ChartError(f'{title}: ranges must be finite and not empty, got {x_range}, {y_range}')
    (x0, x1), (y0, y1) = ranges
    plot_width = size[0] - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_height = size[1] - _MARGIN_TOP - _MARGIN_BOTTOM
    if equal_aspect:
        per_pixel = max((x1 - x0) / plot_width, (y1 - y0) / plot_height)  # units per pixel on both axes
        xc, yc = (x0 + x1) / 2, (y0 + y1) / 2
        x0, x1 = xc - per_pixel * plot_width / 2, xc + per_pixel * plot_width / 2
        y0, y1 = yc - per_pixel * plot_height / 2, yc + per_pixel * plot_height / 2
    axes = _Axes(size, (x0, x1), (y0, y1), title, x_label, y_label)
    pixels = np.asarray(axes.image, dtype=np.uint8).copy()  # (H, W, 3)
    reached = np.zeros(pixels.shape[:2], dtype=np.int32)  # (H, W) how many series reach each pixel
    for index, (name, (xs, ys)) in enumerate(series.items()):
        x = np.asarray(xs, dtype=np.float64).reshape(-1)
        y = np.asarray(ys, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ChartError(f'{title}: series {name!r} has {x.size} x and {y.size} y values')
        column = np.rint(axes.left + (x - x0) / (x1 - x0) * (axes.right - axes.left))
        row = np.rint(axes.bottom - (y - y0) / (y1 - y0) * (axes.bottom - axes.top))
        inside = (np.isfinite(column) & np.isfinite(row) & (column > axes.left) & (column < axes.right)
                  & (row > axes.top) & (row < axes.bottom))
        hit = np.zeros(reached.shape, dtype=bool)  # (H, W)
        hit[row[inside].astype(np.intp), column[inside].astype(np.intp)] = True
        pixels[hit] = colours[index % len(colours)]
        reached += hit
    names, legend_colours = list(series), [colours[i % len(colours)] for i in range(len(series))]
    if overlap is not None:
        pixels[reached > 1] = overlap[0]
        names.append(overlap[1])
        legend_colours.append(overlap[0])
    axes.image.paste(Image.fromarray(pixels))
    axes.draw = ImageDraw.Draw(axes.image)
    axes.legend(names, legend_colours)
    return axes.to_array()
