"""A classical step after the network: a local search of the photometric cost around its answer.

The network's answer is imprecise where the image is textured (its cost volume's candidates are 8 px
apart, and its refiner has learned to lean on the coarse disparity rather than the image:
docs/depth_quality.md), which is exactly where plain local matching is reliable. So, for each pixel, the
zero-mean normalized cross-correlation (ZNCC) of a small window of the left image with the right image
shifted by the network's disparity plus each whole offset in ``[-reach, reach]`` px, the best of five windows
that hold the pixel (centred on it, and moved by the window's radius left, right, up and down: so that beside
a depth edge one window lies on the pixel's own side of it, Fusiello et al.'s shiftable windows): where the best
offset is inside that interval (a true peak, not the edge of the search) and correlates at least
:data:`MIN_ZNCC`, the pixel takes it, refined to a fraction of a pixel by a parabola through the peak
and its two neighbours; elsewhere (plain surfaces, occlusions, repeated texture that matches nowhere
well) it keeps the network's answer. Windows warp by each pixel's own disparity, so a slanted surface
stays one surface.

Beyond the paper: StereoNet's answer is the network's; this is how a robot gets most of what local
matching knows for about a tenth of the network's CPU time (docs/depth_quality.md, "A local search
after the network"). NumPy and OpenCV on the host, so both backends (PyTorch, ONNX Runtime) share it.
"""
from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

WINDOW_RADIUS_PX: Final = 3
"""The correlation window is (2r + 1)^2 pixels of the input: 7x7."""

MIN_ZNCC: Final = 0.9
"""Least correlation of the best offset for a pixel to take it."""

DEFAULT_REACH_PX: Final = 4
"""The reach where the network runs on the CPU: half the cost volume's 8 px between candidates. Better than the
network alone in every view of every set measured, where 8 was worse on the synthetic set's matched bad-3
(README, local search)."""

AUTO: Final = -1
"""The node's ``local_search_px`` and the CLIs' ``--local-search`` by default: :func:`reach_for` the device."""

MAX_REACH_PX: Final = 16
"""The widest search: past it the step is no longer local, and it costs (2 reach + 1) correlations."""

_MIN_VARIANCE: Final = 1e-6
"""Floor on a window's variance (grey levels squared) so a flat window correlates 0, not 0 / 0."""


def reach_for(requested: int, device_type: str) -> int:
    """The reach to search: ``requested``, or for :data:`AUTO` :data:`DEFAULT_REACH_PX` where the network runs on
    the CPU and 0 elsewhere. The search runs on the host: beside a CPU network it costs under a tenth of its time,
    beside a GPU one it would cost more than the network (0.07 s at 640x480, 0.2 s at 1280x720 on two cores)."""
    if requested == AUTO:
        return DEFAULT_REACH_PX if device_type == 'cpu' else 0
    return requested


def _best_window(correlation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Each pixel's best correlation over the windows that hold it: centred on it and moved by the window's radius
    along each axis (the image's edge repeated beyond it)."""
    radius = WINDOW_RADIUS_PX
    height, width = correlation.shape
    padded = np.pad(correlation.astype(np.float32), radius, mode='edge')
    best = padded[radius:radius + height, radius:radius + width].copy()
    for rows, columns in ((0, radius), (0, -radius), (radius, 0), (-radius, 0)):
        np.maximum(best, padded[radius + rows:radius + rows + height, radius + columns:radius + columns + width],
                   out=best)
    return best


def local_search(disparity: npt.NDArray[np.float32], left: npt.NDArray[np.float32], right: npt.NDArray[np.float32],
                 reach: int, max_disparity: float) -> npt.NDArray[np.float32]:
    """``disparity`` moved, pixel by pixel, to the best-correlating shift within ``reach`` px of it.

    Args:
        disparity: ``(H, W)`` float32 left-view shift in pixels of the input (the network's answer).
        left, right: ``(H, W)`` float32 grey images of the pair, any affine intensity scale (ZNCC ignores it).
        reach: offsets searched, ``-reach .. reach`` whole pixels; 0 returns ``disparity`` unchanged.
        max_disparity: the largest shift the answer may take (the network's range in input pixels).

    Returns:
        A new ``(H, W)`` float32 array; a pixel not finite or not above 0 in ``disparity``, or whose search
        finds no interior peak of at least :data:`MIN_ZNCC`, keeps its value. Moved values lie in
        ``(0, max_disparity]``.

    Raises:
        ValueError: shapes differ, or ``reach`` is outside ``[0, MAX_REACH_PX]``.
    """
    if not (disparity.shape == left.shape == right.shape and disparity.ndim == 2):
        raise ValueError(f'local_search: disparity {disparity.shape}, left {left.shape} and right {right.shape} '
                         'must be one (H, W) size')
    if not 0 <= reach <= MAX_REACH_PX:
        raise ValueError(f'local_search: reach {reach} px is outside [0, {MAX_REACH_PX}]')
    answer = np.array(disparity, dtype=np.float32, copy=True)
    if reach == 0:
        return answer
    import cv2

    left32, right32 = np.ascontiguousarray(left, np.float32), np.ascontiguousarray(right, np.float32)
    usable = np.isfinite(answer) & (answer > 0)
    base = np.where(usable, answer, 0).astype(np.float32)
    height, width = base.shape
    # Where each left pixel's match lies in the right image at offset 0; the rows stay put.
    matched_columns = np.arange(width, dtype=np.float32)[np.newaxis, :] - base
    rows = np.ascontiguousarray(np.broadcast_to(np.arange(height, dtype=np.float32)[:, np.newaxis], (height, width)))
    size = (2 * WINDOW_RADIUS_PX + 1,) * 2

    def box(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return cv2.boxFilter(values, -1, size, borderType=cv2.BORDER_REFLECT_101)  # type: ignore[no-any-return]

    left_mean = box(left32)
    left_variance = np.maximum(box(left32 * left32) - left_mean * left_mean, _MIN_VARIANCE)
    offsets = np.arange(-reach, reach + 1)
    correlations = np.empty((offsets.size, height, width), np.float32)
    for index, offset in enumerate(offsets):
        source = matched_columns - np.float32(offset)
        warped = cv2.remap(right32, source, rows, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        right_mean = box(warped)
        right_variance = np.maximum(box(warped * warped) - right_mean * right_mean, _MIN_VARIANCE)
        zncc = (box(left32 * warped) - left_mean * right_mean) / np.sqrt(left_variance * right_variance)
        # A match outside the right image is no match (the replicated border would correlate with anything).
        correlations[index] = _best_window(np.where((source >= 0) & (source <= width - 1), zncc, -1.0))
    best = correlations.argmax(axis=0)
    peak = np.take_along_axis(correlations, best[np.newaxis], axis=0)[0]
    interior = (best > 0) & (best < offsets.size - 1)
    inner = np.clip(best, 1, offsets.size - 2)[np.newaxis]
    before = np.take_along_axis(correlations, inner - 1, axis=0)[0]
    after = np.take_along_axis(correlations, inner + 1, axis=0)[0]
    curvature = before - 2 * peak + after  # < 0 at a strict peak
    sharp = curvature < 0
    # The parabola's vertex; between the neighbours, within half a pixel of the peak when it is the largest.
    vertex = np.where(sharp, 0.5 * (before - after) / np.where(sharp, curvature, -1.0), 0.0).clip(-0.5, 0.5)
    moved = (base + offsets[best] + vertex).astype(np.float32)
    take = usable & interior & sharp & (peak >= MIN_ZNCC) & (moved > 0)
    answer[take] = np.minimum(moved[take], np.float32(max_disparity))
    return answer
