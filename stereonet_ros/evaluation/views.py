"""Three views that compare a method with holes (SGBM) and a dense one (ours) fairly (CONVENTIONS.md).

Scoring a hole as an error in bad-N but leaving it out of EPE (what :mod:`.metrics` does, as the
benchmarks' tables do for a single method) flatters a sparse method's EPE and punishes its bad-N. Here
every view scores one set of pixels with every metric:

1. **dense** (the headline, as the KITTI devkit does): holes filled by :func:`fill_holes`, then every
   pixel with valid ground truth is scored;
2. **answered**: each method scored only where it answered (a finite value), with ``density`` the
   fraction of valid-ground-truth pixels that is;
3. **matched**: the dense method keeps its most confident pixels (:func:`keep_most_confident`) down to
   the sparse method's density, then both are scored on what they answered.

In every view EPE, bad-N and D1 are over the *scored* pixels (so a view has no missing predictions)
and ``density`` = scored / valid-ground-truth pixels. Which ground truth is valid follows
:func:`.metrics.ground_truth_mask` (non-finite always; optionally KITTI's 0 and ``>= max_disparity``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stereonet_ros.evaluation.metrics import (DisparityErrorCounts, MetricsError, disparity_error_counts,
                                              ground_truth_mask)

__all__ = ['VIEWS', 'ViewCounts', 'ViewMetrics', 'answered_density', 'dense_method_views', 'fill_holes',
           'keep_most_confident', 'three_views', 'view_counts']

VIEWS = ('dense', 'answered', 'matched')
EMPTY_ROW_FILL = 0.0
"""Disparity, pixels, given to every pixel of a row with no valid value at all (see :func:`fill_holes`)."""


def fill_holes(disparity: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Fill holes as the KITTI devkit's ``interpolateBackground`` does along rows.

    A hole (NaN or +-inf) takes the *smaller* of the nearest valid values to its left and right on its
    row (the background side of an occlusion: holes are mostly occluded background); with a valid value
    on one side only (a hole at the row's start or end), that value. A row with no valid value at all
    takes :data:`EMPTY_ROW_FILL` (0 px, infinitely far: it scores as an error wherever the truth is not
    0). The devkit instead copies the nearest filled row above or below into such rows at the image's
    top and bottom only; SGBM leaves no such rows on our sets, and 0 keeps the fill a per-row rule.

    Args:
        disparity: ``(H, W)`` disparity, pixels; NaN or +-inf = a hole.

    Returns:
        ``(H, W)`` float32, pixels, finite everywhere; valid input values are unchanged.

    Raises:
        MetricsError: the input is not ``(H, W)``.

    >>> fill_holes(np.array([[np.nan, 4.0, np.nan, np.nan, 2.0, np.nan]])).tolist()
    [[4.0, 4.0, 2.0, 2.0, 2.0, 2.0]]
    """
    values = np.asarray(disparity, dtype=np.float32)
    if values.ndim != 2:
        raise MetricsError(f'disparity must be (H, W), got shape {values.shape}')
    height, width = values.shape
    valid = np.isfinite(values)
    columns = np.broadcast_to(np.arange(width), (height, width))  # (H, W)
    # Column of the nearest valid pixel at or left of each pixel (-1: none), and at or right of it (W: none).
    left_index = np.maximum.accumulate(np.where(valid, columns, -1), axis=1)  # (H, W)
    right_index = np.minimum.accumulate(np.where(valid, columns, width)[:, ::-1], axis=1)[:, ::-1]  # (H, W)
    has_left, has_right = left_index >= 0, right_index < width
    rows = np.arange(height)[:, np.newaxis]  # (H, 1)
    left_value = np.where(has_left, values[rows, np.clip(left_index, 0, width - 1)], np.inf)
    right_value = np.where(has_right, values[rows, np.clip(right_index, 0, width - 1)], np.inf)
    nearest = np.minimum(left_value, right_value)  # inf only where the row has no valid value
    filled = np.where(valid, values, np.where(has_left | has_right, nearest, np.float32(EMPTY_ROW_FILL)))
    return np.ascontiguousarray(filled, dtype=np.float32)


def keep_most_confident(confidence: npt.ArrayLike, eligible: npt.ArrayLike, density: float) -> npt.NDArray[np.bool_]:
    """The ``round(density * eligible.sum())`` most confident eligible pixels (rounded half up).

    Ties in confidence are broken in raster order (the earlier row, then the earlier column, is kept),
    so exactly that many pixels are kept. NaN confidence ranks below every number.

    Args:
        confidence: ``(H, W)`` confidence, higher = more trusted (ours: [0, 1]).
        eligible: ``(H, W)`` bool, the pixels that may be kept (e.g. valid ground truth).
        density: the fraction of the eligible pixels to keep, in [0, 1].

    Returns:
        ``(H, W)`` bool mask, a subset of ``eligible``.

    Raises:
        MetricsError: shapes differ or are not ``(H, W)``, ``eligible`` is not bool, density outside [0, 1].

    >>> keep_most_confident(np.array([[0.2, 0.9, 0.5, 0.9]]), np.ones((1, 4), bool), 0.5).tolist()
    [[False, True, False, True]]
    """
    scores = np.asarray(confidence, dtype=np.float64)
    mask = np.asarray(eligible)
    if scores.ndim != 2:
        raise MetricsError(f'confidence must be (H, W), got shape {scores.shape}')
    if mask.shape != scores.shape:
        raise MetricsError(f'eligible mask shape {mask.shape} differs from confidence {scores.shape}')
    if mask.dtype != np.bool_:
        raise MetricsError(f'eligible mask must be bool, got {mask.dtype}')
    if not 0.0 <= density <= 1.0:  # also refuses NaN
        raise MetricsError(f'density must be in [0, 1], got {density}')
    candidates = np.flatnonzero(mask)  # raster order
    count = min(int(math.floor(density * candidates.size + 0.5)), candidates.size)
    ranked = -scores.ravel()[candidates]
    ranked[np.isnan(ranked)] = np.inf  # NaN confidence last
    order = np.argsort(ranked, kind='stable')  # most confident first; equal values keep raster order
    kept = np.zeros(scores.size, dtype=bool)
    kept[candidates[order[:count]]] = True
    return kept.reshape(scores.shape)


@dataclass(frozen=True)
class ViewMetrics:
    """The metrics of one view. NaN where the count divided by is 0."""

    epe: float  # mean |d - d_gt| over the scored pixels, pixels
    bad1: float  # percent of the scored pixels with error > 1 px
    bad2: float  # percent, > 2 px
    bad3: float  # percent, > 3 px
    d1: float  # percent with error > 3 px and > 5 % of the ground truth (KITTI D1)
    density: float  # scored / valid-ground-truth pixels (0..1)
    scored_pixels: int
    valid_pixels: int  # pixels with valid ground truth


@dataclass(frozen=True)
class ViewCounts:
    """Additive totals of one view: sum frames, then ``metrics()`` (pixel-weighted)."""

    scored: DisparityErrorCounts = DisparityErrorCounts()  # over the scored pixels only
    valid_pixels: int = 0  # valid-ground-truth pixels, scored or not

    def __add__(self, other: ViewCounts) -> ViewCounts:
        return ViewCounts(self.scored + other.scored, self.valid_pixels + other.valid_pixels)

    def metrics(self) -> ViewMetrics:
        s, n = self.scored, self.scored.valid_pixels
        nan = math.nan
        return ViewMetrics(
            epe=s.abs_error_sum / n if n else nan,
            bad1=100.0 * s.bad1 / n if n else nan, bad2=100.0 * s.bad2 / n if n else nan,
            bad3=100.0 * s.bad3 / n if n else nan, d1=100.0 * s.d1 / n if n else nan,
            density=n / self.valid_pixels if self.valid_pixels else nan,
            scored_pixels=n, valid_pixels=self.valid_pixels)


def view_counts(pred: npt.ArrayLike, gt: npt.ArrayLike, scored: npt.ArrayLike | None = None, *,
                gt_zero_invalid: bool = False, max_disparity: float | None = None) -> ViewCounts:
    """Score ``pred`` on the valid-ground-truth pixels where it is finite (and ``scored``, if given).

    Args:
        pred: ``(H, W)`` disparity, pixels; NaN/inf = no answer (never scored).
        gt: ``(H, W)`` ground truth, pixels; validity as :func:`.metrics.ground_truth_mask`.
        scored: optional ``(H, W)`` bool mask of the pixels the method keeps.
        gt_zero_invalid, max_disparity: as :func:`.metrics.disparity_metrics`.

    Raises:
        MetricsError: shapes differ or are not ``(H, W)``, the mask is not bool, max_disparity <= 0.
    """
    truth_valid = ground_truth_mask(gt, gt_zero_invalid=gt_zero_invalid, max_disparity=max_disparity)
    prediction = np.asarray(pred, dtype=np.float64)
    if prediction.shape != truth_valid.shape:
        raise MetricsError(f'prediction shape {prediction.shape} differs from ground truth {truth_valid.shape}')
    mask = truth_valid & np.isfinite(prediction)
    if scored is not None:
        keep = np.asarray(scored)
        if keep.shape != mask.shape or keep.dtype != np.bool_:
            raise MetricsError(f'scored mask must be bool {mask.shape}, got {keep.dtype} {keep.shape}')
        mask &= keep
    return ViewCounts(disparity_error_counts(prediction, gt, mask), int(np.count_nonzero(truth_valid)))


def three_views(pred: npt.ArrayLike, gt: npt.ArrayLike, keep: npt.ArrayLike | None = None, *,
                gt_zero_invalid: bool = False, max_disparity: float | None = None) -> dict[str, ViewCounts]:
    """One frame's ``dense``, ``answered`` and ``matched`` counts (module doc).

    Args:
        pred: ``(H, W)`` disparity, pixels; NaN/inf = a hole.
        gt: ``(H, W)`` ground truth, pixels.
        keep: ``(H, W)`` bool, the pixels a dense method keeps for the matched view
            (:func:`keep_most_confident`); ``None``: the method keeps what it answered (matched = answered).
        gt_zero_invalid, max_disparity: as :func:`.metrics.disparity_metrics`.
    """
    rules = {'gt_zero_invalid': gt_zero_invalid, 'max_disparity': max_disparity}
    answered = view_counts(pred, gt, **rules)
    return {'dense': view_counts(fill_holes(pred), gt, **rules), 'answered': answered,
            'matched': answered if keep is None else view_counts(pred, gt, keep, **rules)}


def answered_density(counts: ViewCounts) -> float:
    """The fraction of valid-ground-truth pixels a view scored (a sparse method's answered density); 0 when the
    frame has no valid ground truth."""
    return counts.scored.valid_pixels / counts.valid_pixels if counts.valid_pixels else 0.0


def dense_method_views(pred: npt.ArrayLike, gt: npt.ArrayLike, confidence: npt.ArrayLike | None,
                       reference: ViewCounts | None, *, gt_zero_invalid: bool = False,
                       max_disparity: float | None = None) -> dict[str, ViewCounts]:
    """A dense method's three views on one frame beside a sparse one's (module doc).

    Its ``matched`` view keeps its most confident pixels (:func:`keep_most_confident`, among those with
    valid ground truth and a finite prediction) down to the :func:`answered_density` of ``reference`` on
    the same frame, a fraction of the valid-ground-truth pixels: where the method itself left holes (ours under
    ``min_confidence``) it keeps as many pixels as the reference answered, or every one it answered if fewer.
    Without ``reference`` or ``confidence`` there is nothing to match: the result has no ``matched`` key.

    Args:
        pred: ``(H, W)`` disparity, pixels; NaN/inf = no answer.
        gt: ``(H, W)`` ground truth, pixels.
        confidence: ``(H, W)`` the dense method's confidence, higher = more trusted; or None.
        reference: the sparse method's ``answered`` counts on this frame (:func:`three_views`), or None.
        gt_zero_invalid, max_disparity: as :func:`.metrics.disparity_metrics`.

    Raises:
        MetricsError: shapes differ or are not ``(H, W)``.
    """
    rules = {'gt_zero_invalid': gt_zero_invalid, 'max_disparity': max_disparity}
    prediction = np.asarray(pred, dtype=np.float32)
    if reference is None or confidence is None:
        counts = three_views(prediction, gt, **rules)
        del counts['matched']
        return counts
    truth_valid = ground_truth_mask(gt, **rules)
    eligible = truth_valid & np.isfinite(prediction)
    answered = int(np.count_nonzero(eligible))
    # The reference's density is of the valid pixels; keep_most_confident's fraction is of the eligible ones.
    wanted = answered_density(reference) * int(np.count_nonzero(truth_valid))
    fraction = min(1.0, wanted / answered) if answered else 0.0
    keep = keep_most_confident(confidence, eligible, fraction)
    return three_views(prediction, gt, keep, **rules)
