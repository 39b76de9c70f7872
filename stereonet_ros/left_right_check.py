"""The left-right check: where the right view's answer disagrees, the left answer is unsure.

StereoNet answers for the left view only. Run on the mirrored pair (the right image mirrored as the left, the left
mirrored as the right) the same network and the same steps after it answer for the right view, mirrored; a left
pixel at column ``x`` with disparity ``d`` lands at ``x - d`` in the right view, whose answer there should be ``d``
again. Where it is not (by more than :data:`TOLERANCE_PX`), or the pixel lands outside the right image, one of the
two answers is wrong or the pixel is hidden from the right camera: the classic consistency check of stereo matchers
(OpenCV's ``disp12MaxDiff``, stereo_image_proc's ``disp12_max_diff``), which there makes holes. Here nothing is
removed: such a pixel's confidence is multiplied by :data:`CONFIDENCE_FACTOR` (so none of them is above 0.5, and
``min_confidence`` above 0.5 removes them all), and the occlusion fill takes the disagreement as its mask of
hidden pixels instead of the one the left answer's geometry gives (:mod:`~stereonet_ros.occlusion_fill`). Figures
and the alternatives compared: docs/depth_quality.md, "The left-right check". Beyond the paper; NumPy on the host.
"""
from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

TOLERANCE_PX: Final = 1.0
"""Largest difference, pixels, between the left answer and the right view's answer at its match that still agrees:
as OpenCV's stereo_match sample sets ``disp12MaxDiff``; 0.5 and 2 px each did better in some views and worse in others
(docs/depth_quality.md)."""

CONFIDENCE_FACTOR: Final = 0.5
"""A disagreeing pixel's confidence is multiplied by this: at most 0.5 whatever it was (the occlusion fill's
threshold), and still ranked among the other disagreeing pixels by its own confidence. Halving only, or only the fill,
each did less (docs/depth_quality.md)."""


def mirrored(image: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """``image`` (``(H, W)`` or ``(H, W, C)``) mirrored left to right, contiguous."""
    return np.ascontiguousarray(image[:, ::-1])


def right_view_disagrees(left_disparity: npt.NDArray[np.float32], right_disparity: npt.NDArray[np.float32],
                         tolerance_px: float = TOLERANCE_PX) -> npt.NDArray[np.bool_]:
    """Where the left answer fails the check: the right view's answer at the pixel's match differs by more than
    ``tolerance_px``, the match lies outside the right image, or either answer is not finite there.

    Args:
        left_disparity: ``(H, W)`` left-view answer, pixels.
        right_disparity: ``(H, W)`` right-view answer (not mirrored: its pixel ``x`` is the right image's column
            ``x``), pixels.
        tolerance_px: finite and >= 0; a difference of exactly this much agrees.

    Returns:
        ``(H, W)`` bool, True where the left answer disagrees. The match is the nearest column to ``x - d``
        (halves round up); ``x - d`` below -0.5 or at or above ``W - 0.5`` is outside the image.

    Raises:
        ValueError: the shapes differ or are not ``(H, W)``, or ``tolerance_px`` is negative or not finite.
    """
    left = np.asarray(left_disparity, dtype=np.float64)
    right = np.asarray(right_disparity, dtype=np.float64)
    if left.shape != right.shape or left.ndim != 2:
        raise ValueError(f'right_view_disagrees: left {left.shape} and right {right.shape} must be one (H, W) size')
    if not (np.isfinite(tolerance_px) and tolerance_px >= 0):
        raise ValueError(f'right_view_disagrees: tolerance_px {tolerance_px}: must be finite and >= 0')
    width = left.shape[1]
    known = np.isfinite(left)
    match = np.floor(np.arange(width, dtype=np.float64)[np.newaxis, :] - np.where(known, left, 0.0) + 0.5)
    inside = known & (match >= 0) & (match < width)
    column = np.where(inside, match, 0).astype(np.intp)
    back = np.take_along_axis(right, column, axis=1)
    with np.errstate(invalid='ignore'):  # a non-finite right answer compares False: it disagrees
        agrees = inside & (np.abs(back - left) <= tolerance_px)
    return ~agrees


def checked_confidence(confidence: npt.NDArray[np.float32], disagrees: npt.NDArray[np.bool_]
                       ) -> npt.NDArray[np.float32]:
    """``confidence`` times :data:`CONFIDENCE_FACTOR` where ``disagrees``, float32, as it was elsewhere."""
    values = np.asarray(confidence, dtype=np.float32)
    return np.where(disagrees, values * np.float32(CONFIDENCE_FACTOR), values).astype(np.float32, copy=False)
