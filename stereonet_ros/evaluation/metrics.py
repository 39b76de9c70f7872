"""Stereo and depth error metrics, defined as the public benchmarks define them (CONVENTIONS.md).

Disparity (pixels), over the pixels with valid ground truth:

- EPE: mean ``|d_pred - d_gt|``;
- bad-N (N = 1, 2, 3): percentage with ``|d_pred - d_gt| > N``;
- D1 (KITTI 2015): percentage with ``|err| > 3`` **and** ``|err| > 0.05 * d_gt``.

Which ground truth is valid is explicit: non-finite ground truth is always invalid (Middlebury's ``inf``);
``gt_zero_invalid=True`` adds KITTI's "0 = unknown"; ``max_disparity`` drops ``gt >= max_disparity``
(the usual SceneFlow protocol); ``valid`` is an extra mask ANDed with these.

Predictions without a value (NaN or +-inf) are *missing*. Every metric is over one set of pixels, those
with both ground truth and a prediction (the *answered* view of issue 9), and ``density`` (predicted /
valid) says how many those were: a hole is never an error in one metric and ignored in another (the
first version counted it as bad in bad-N and D1 while EPE skipped it). To score every pixel as the
benchmarks do, fill the holes first (:func:`stereonet_ros.evaluation.views.fill_holes`, the KITTI
devkit's rule): the *dense* view. No valid ground truth at all gives NaN
metrics with ``valid_pixels == 0`` rather than an exception, so that a sequence with a few empty frames
can still be scored; :class:`MetricAccumulator` leaves such frames out of its per-frame means.

Depth (metres), as used to score a bag against a depth reference: AbsRel = mean ``|z - z_gt| / z_gt``,
MAE = mean ``|z - z_gt|``, RMSE = ``sqrt(mean (z - z_gt)^2)``, all over pixels where both are valid, and
completeness = that count over the valid ground-truth pixels; :func:`depth_range_counts` gives them per
range bin of the ground-truth depth (stereo's depth error grows with the square of the range). Depth is
valid when finite and > 0 (REP 118: NaN or 0 = no depth, +inf = too far to measure, which has no error to
score).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Generic, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    'DEPTH_RANGE_EDGES',
    'DepthErrorCounts',
    'DepthMetricAccumulator',
    'DepthMetrics',
    'DisparityErrorCounts',
    'DisparityMetrics',
    'MetricAccumulator',
    'MetricsError',
    'check_range_edges',
    'depth_error_counts',
    'depth_metrics',
    'depth_range_counts',
    'disparity_error_counts',
    'disparity_metrics',
    'ground_truth_mask',
]

BAD_THRESHOLDS = (1.0, 2.0, 3.0)  # pixels
D1_ABSOLUTE = 3.0  # pixels
D1_RELATIVE = 0.05  # fraction of the true disparity


class MetricsError(ValueError):
    """Prediction, ground truth and mask do not have one (H, W) shape, or a parameter is out of range."""


@dataclass(frozen=True)
class DisparityMetrics:
    """Disparity metrics of one frame or a set of frames. NaN when ``valid_pixels == 0``."""

    epe: float  # mean absolute error over predicted valid pixels, pixels
    bad1: float  # percent of predicted valid pixels with error > 1 px (missing ones: only in the density)
    bad2: float  # percent, > 2 px
    bad3: float  # percent, > 3 px
    d1: float  # percent with error > 3 px and > 5 % of the ground truth (KITTI D1)
    density: float  # fraction (0..1) of valid pixels that have a finite prediction
    valid_pixels: int  # pixels with valid ground truth
    predicted_pixels: int  # of those, pixels with a finite prediction


@dataclass(frozen=True)
class DisparityErrorCounts:
    """Additive totals behind :class:`DisparityMetrics`: sum counts of many frames, then take ``metrics()``."""

    valid_pixels: int = 0
    predicted_pixels: int = 0
    abs_error_sum: float = 0.0  # pixels, over predicted valid pixels
    bad1: int = 0
    bad2: int = 0
    bad3: int = 0
    d1: int = 0

    def __add__(self, other: DisparityErrorCounts) -> DisparityErrorCounts:
        return DisparityErrorCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def metrics(self) -> DisparityMetrics:
        """The metrics of these totals (pixel-weighted over every frame added in)."""
        valid = self.valid_pixels
        nan = math.nan
        answered = self.predicted_pixels
        return DisparityMetrics(
            epe=self.abs_error_sum / answered if answered else nan,
            bad1=100.0 * self.bad1 / answered if answered else nan,
            bad2=100.0 * self.bad2 / answered if answered else nan,
            bad3=100.0 * self.bad3 / answered if answered else nan,
            d1=100.0 * self.d1 / answered if answered else nan,
            density=answered / valid if valid else nan,
            valid_pixels=valid, predicted_pixels=self.predicted_pixels)


_Maps = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]


def _as_maps(pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None) -> _Maps:
    """Check one ``(H, W)`` shape; return float64 copies (errors summed in float64) and the mask."""
    prediction = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(gt, dtype=np.float64)
    if truth.ndim != 2:
        raise MetricsError(f'ground truth must be (H, W), got shape {truth.shape}')
    if prediction.shape != truth.shape:
        raise MetricsError(f'prediction shape {prediction.shape} differs from ground truth {truth.shape}')
    if valid is None:
        mask = np.ones(truth.shape, dtype=bool)
    else:
        mask = np.asarray(valid)
        if mask.shape != truth.shape:
            raise MetricsError(f'valid mask shape {mask.shape} differs from ground truth {truth.shape}')
        if mask.dtype != np.bool_:
            raise MetricsError(f'valid mask must be bool, got {mask.dtype}')
    return prediction, truth, mask


def _ground_truth_rules(truth: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_], gt_zero_invalid: bool,
                        max_disparity: float | None) -> npt.NDArray[np.bool_]:
    if max_disparity is not None and not max_disparity > 0:
        raise MetricsError(f'max_disparity must be > 0, got {max_disparity}')
    mask = mask & np.isfinite(truth)
    if gt_zero_invalid:
        mask &= truth != 0  # KITTI PNGs store 0 for "no ground truth"
    if max_disparity is not None:
        mask &= truth < max_disparity
    return mask


def ground_truth_mask(gt: npt.ArrayLike, valid: npt.ArrayLike | None = None, *, gt_zero_invalid: bool = False,
                      max_disparity: float | None = None) -> npt.NDArray[np.bool_]:
    """``(H, W)`` bool: the pixels :func:`disparity_metrics` scores (same arguments, same rules).

    Raises:
        MetricsError: ``gt`` is not ``(H, W)``, the mask is not a bool ``(H, W)``, max_disparity <= 0.
    """
    truth = np.asarray(gt, dtype=np.float64)
    _, truth, mask = _as_maps(truth, truth, valid)
    return _ground_truth_rules(truth, mask, gt_zero_invalid, max_disparity)


def disparity_error_counts(pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None = None, *,
                           gt_zero_invalid: bool = False,
                           max_disparity: float | None = None) -> DisparityErrorCounts:
    """Error totals of one frame; see :func:`disparity_metrics` for the arguments."""
    prediction, truth, mask = _as_maps(pred, gt, valid)
    mask = _ground_truth_rules(truth, mask, gt_zero_invalid, max_disparity)
    truth_valid = truth[mask]
    prediction_valid = prediction[mask]
    predicted = np.isfinite(prediction_valid)
    # Only answered pixels have an error; the missing ones show in the density alone.
    error = np.abs(prediction_valid[predicted] - truth_valid[predicted])
    bad = [int(np.count_nonzero(error > threshold)) for threshold in BAD_THRESHOLDS]
    # D1 is an AND: a 4 px error on a 100 px disparity (4 %) is not an outlier.
    d1 = int(np.count_nonzero((error > D1_ABSOLUTE) & (error > D1_RELATIVE * np.abs(truth_valid[predicted]))))
    return DisparityErrorCounts(
        valid_pixels=int(truth_valid.size), predicted_pixels=int(np.count_nonzero(predicted)),
        abs_error_sum=float(error.sum()), bad1=bad[0], bad2=bad[1], bad3=bad[2], d1=d1)


def disparity_metrics(pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None = None, *,
                      gt_zero_invalid: bool = False, max_disparity: float | None = None) -> DisparityMetrics:
    """EPE, bad-1/2/3, D1 and density of one disparity map (rules in the module docstring).

    Args:
        pred: ``(H, W)`` predicted left-view disparity, pixels; NaN/inf = no prediction.
        gt: ``(H, W)`` ground-truth disparity, pixels; non-finite is always invalid.
        valid: optional ``(H, W)`` bool mask of ground truth to score (ANDed with the rules below).
        gt_zero_invalid: also treat ``gt == 0`` as invalid (KITTI's convention).
        max_disparity: also drop ``gt >= max_disparity`` (pixels), if given.

    Raises:
        MetricsError: shapes differ or are not ``(H, W)``, the mask is not bool, max_disparity <= 0.
    """
    return disparity_error_counts(pred, gt, valid, gt_zero_invalid=gt_zero_invalid,
                                  max_disparity=max_disparity).metrics()


_Metrics = TypeVar('_Metrics', 'DisparityMetrics', 'DepthMetrics')


def _mean_of(kind: type[_Metrics], frames: list[_Metrics], summed: tuple[str, ...]) -> _Metrics:
    values: dict[str, Any] = {}
    for f in fields(kind):
        column = [getattr(frame, f.name) for frame in frames]
        if f.name in summed:
            values[f.name] = int(sum(column))
        else:
            # A frame's EPE is NaN when it has ground truth but no prediction; skip it for EPE only.
            finite = [value for value in column if not math.isnan(value)]
            values[f.name] = float(np.mean(finite)) if finite else math.nan
    return kind(**values)


_MetricsT_co = TypeVar('_MetricsT_co', covariant=True)


class _ErrorCounts(Protocol[_MetricsT_co]):
    """Additive per-frame totals that turn into metrics (``DisparityErrorCounts``, ``DepthErrorCounts``)."""

    def __add__(self, other: Self) -> Self: ...

    def metrics(self) -> _MetricsT_co: ...


class _Accumulator(Generic[_Metrics]):
    """Frames' error totals summed (``total()``, pixel-weighted) and their metrics kept (``per_frame_mean()``)."""

    def __init__(self, empty: _ErrorCounts[_Metrics], kind: type[_Metrics]) -> None:
        self._kind: type[_Metrics] = kind
        self._totals: _ErrorCounts[_Metrics] = empty
        self.frames: list[_Metrics] = []

    def _counts(self, pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None) -> _ErrorCounts[_Metrics]:
        raise NotImplementedError

    def add(self, pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None = None) -> _Metrics:
        """Score one frame with the accumulator's rules, record it and return its metrics."""
        return self.add_counts(self._counts(pred, gt, valid))

    def add_counts(self, counts: _ErrorCounts[_Metrics]) -> _Metrics:
        """Record one frame already scored (its error totals, from this accumulator's rules); return its metrics."""
        self._totals = self._totals + counts
        frame = counts.metrics()
        self.frames.append(frame)
        return frame

    def __len__(self) -> int:
        return len(self.frames)

    def total(self) -> _Metrics:
        """Pixel-weighted metrics over all frames (NaN when no frame had a valid pixel)."""
        return self._totals.metrics()

    def per_frame_mean(self) -> _Metrics:
        """Mean of each metric over the frames with valid ground truth; counts are summed. NaN if there are none."""
        scored = [frame for frame in self.frames if frame.valid_pixels > 0]
        return _mean_of(self._kind, scored, ('valid_pixels', 'predicted_pixels'))


class MetricAccumulator(_Accumulator[DisparityMetrics]):
    """Aggregates disparity metrics over frames.

    ``total()`` is pixel-weighted (every valid pixel of every frame counts once, as the KITTI and
    SceneFlow tables are computed); ``per_frame_mean()`` averages the frames' own metrics (each frame
    counts once, as Middlebury's per-image averages). Frames without valid pixels are kept in ``frames``
    but left out of the per-frame mean.
    """

    def __init__(self, *, gt_zero_invalid: bool = False, max_disparity: float | None = None) -> None:
        super().__init__(DisparityErrorCounts(), DisparityMetrics)
        self.gt_zero_invalid = gt_zero_invalid
        self.max_disparity = max_disparity

    def _counts(self, pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None) -> DisparityErrorCounts:
        return disparity_error_counts(pred, gt, valid, gt_zero_invalid=self.gt_zero_invalid,
                                      max_disparity=self.max_disparity)


# --- depth -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DepthMetrics:
    """Depth metrics of one frame or a set of frames. NaN where the count they divide by is 0."""

    abs_rel: float  # mean |z - z_gt| / z_gt over pixels where both are valid (unitless)
    rmse: float  # sqrt(mean (z - z_gt)^2) over the same pixels, metres
    mae: float  # mean |z - z_gt| over the same pixels, metres
    completeness: float  # fraction (0..1) of valid ground-truth pixels that have a valid prediction
    valid_pixels: int  # pixels with valid ground truth
    predicted_pixels: int  # of those, pixels with a valid prediction


@dataclass(frozen=True)
class DepthErrorCounts:
    """Additive totals behind :class:`DepthMetrics`."""

    valid_pixels: int = 0
    predicted_pixels: int = 0
    abs_rel_sum: float = 0.0
    squared_error_sum: float = 0.0  # square metres
    abs_error_sum: float = 0.0  # metres

    def __add__(self, other: DepthErrorCounts) -> DepthErrorCounts:
        return DepthErrorCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def metrics(self) -> DepthMetrics:
        """The metrics of these totals (pixel-weighted)."""
        n = self.predicted_pixels
        return DepthMetrics(
            abs_rel=self.abs_rel_sum / n if n else math.nan,
            rmse=math.sqrt(self.squared_error_sum / n) if n else math.nan,
            mae=self.abs_error_sum / n if n else math.nan,
            completeness=n / self.valid_pixels if self.valid_pixels else math.nan,
            valid_pixels=self.valid_pixels, predicted_pixels=n)


def depth_error_counts(pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None = None, *,
                       max_depth: float | None = None) -> DepthErrorCounts:
    """Error totals of one depth frame; see :func:`depth_metrics`."""
    prediction, truth, mask = _as_maps(pred, gt, valid)
    if max_depth is not None and not max_depth > 0:
        raise MetricsError(f'max_depth must be > 0, got {max_depth}')
    # Depth 0 is "no depth" (REP 118, 16UC1) and +inf is "too far": neither has an error to score.
    mask = mask & np.isfinite(truth) & (truth > 0)
    if max_depth is not None:
        mask &= truth <= max_depth
    truth_valid = truth[mask]
    prediction_valid = prediction[mask]
    predicted = np.isfinite(prediction_valid) & (prediction_valid > 0)
    difference = prediction_valid[predicted] - truth_valid[predicted]  # metres
    return DepthErrorCounts(
        valid_pixels=int(truth_valid.size), predicted_pixels=int(np.count_nonzero(predicted)),
        abs_rel_sum=float((np.abs(difference) / truth_valid[predicted]).sum()),
        squared_error_sum=float((difference ** 2).sum()), abs_error_sum=float(np.abs(difference).sum()))


def depth_metrics(pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None = None, *,
                  max_depth: float | None = None) -> DepthMetrics:
    """AbsRel, RMSE and MAE (metres) and completeness of one depth map.

    Args:
        pred: ``(H, W)`` predicted depth, metres; valid when finite and > 0.
        gt: ``(H, W)`` reference depth, metres; valid when finite and > 0.
        valid: optional ``(H, W)`` bool mask ANDed with the ground-truth rule.
        max_depth: also drop ground truth beyond this range, metres, if given.

    Raises:
        MetricsError: shapes differ or are not ``(H, W)``, the mask is not bool, max_depth <= 0.
    """
    return depth_error_counts(pred, gt, valid, max_depth=max_depth).metrics()


class DepthMetricAccumulator(_Accumulator[DepthMetrics]):
    """Aggregates depth metrics over frames: ``total()`` pixel-weighted, ``per_frame_mean()`` per frame."""

    def __init__(self, *, max_depth: float | None = None) -> None:
        super().__init__(DepthErrorCounts(), DepthMetrics)
        self.max_depth = max_depth

    def _counts(self, pred: npt.ArrayLike, gt: npt.ArrayLike, valid: npt.ArrayLike | None) -> DepthErrorCounts:
        return depth_error_counts(pred, gt, valid, max_depth=self.max_depth)


DEPTH_RANGE_EDGES: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0, math.inf)
"""Default range bins of :func:`depth_range_counts`, metres: near bins narrow (a robot's workspace), the
last open-ended."""


def check_range_edges(edges: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """``edges`` as a tuple if they are at least two, >= 0 and strictly increasing (the last may be +inf).

    Raises:
        MetricsError: fewer than two edges, a negative or NaN edge, or edges not strictly increasing.
    """
    values = tuple(float(edge) for edge in edges)
    if len(values) < 2:
        raise MetricsError(f'depth range bins need at least two edges, got {list(values)}')
    if any(math.isnan(edge) or edge < 0 for edge in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise MetricsError(f'depth range edges must be >= 0 and strictly increasing, got {list(values)}')
    return values


def depth_range_counts(pred: npt.ArrayLike, gt: npt.ArrayLike,
                       edges: tuple[float, ...] = DEPTH_RANGE_EDGES) -> list[DepthErrorCounts]:
    """Depth error totals per range bin ``[edges[i], edges[i + 1])`` of the *ground-truth* depth.

    Binned by the reference, so that each bin's completeness says how much of what is really at that
    range got a depth (a prediction that is missing or wrong stays in its true range's bin).

    Args:
        pred: ``(H, W)`` predicted depth, metres; valid when finite and > 0.
        gt: ``(H, W)`` reference depth, metres; valid when finite and > 0.
        edges: bin edges, metres (:func:`check_range_edges`); ground truth outside them is not counted.

    Returns:
        ``len(edges) - 1`` :class:`DepthErrorCounts`, nearest bin first.

    Raises:
        MetricsError: shapes differ or are not ``(H, W)``, or the edges are unusable.

    >>> [c.valid_pixels for c in depth_range_counts(np.ones((1, 3)), np.array([[0.5, 1.5, 7.0]]), (0.0, 1.0, 5.0))]
    [1, 1]
    """
    bounds = check_range_edges(edges)
    truth = np.asarray(gt, dtype=np.float64)
    with np.errstate(invalid='ignore'):  # NaN ground truth falls in no bin
        return [depth_error_counts(pred, truth, (truth >= low) & (truth < high))
                for low, high in zip(bounds[:-1], bounds[1:])]
