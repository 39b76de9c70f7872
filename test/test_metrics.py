"""Tests for stereonet_ros.evaluation.metrics, with answers computed by hand."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from stereonet_ros.evaluation.metrics import (
    DepthMetricAccumulator,
    DisparityErrorCounts,
    DisparityMetrics,
    MetricAccumulator,
    MetricsError,
    depth_metrics,
    disparity_error_counts,
    disparity_metrics,
    ground_truth_mask,
)

NAN = float('nan')

# Errors, pixel by pixel: 0.5, 2.5, 4 (gt 100: under 5 %), 3 (gt 0), 3.5 (gt 50: over 5 %), gt NaN,
# prediction NaN, 1.0 (exactly 1: not bad-1).
GT = np.array([[10.0, 20.0, 100.0, 0.0], [50.0, NAN, 5.0, 40.0]])
PRED = np.array([[10.5, 22.5, 104.0, 3.0], [53.5, 7.0, NAN, 41.0]])


def test_hand_computed_frame_with_non_finite_ground_truth_invalid() -> None:
    metrics = disparity_metrics(PRED, GT)
    assert metrics.valid_pixels == 7 and metrics.predicted_pixels == 6
    # Every metric over the 6 answered pixels; the missing one shows in the density alone (it was bad in
    # bad-N and D1 but absent from EPE before: one hole, two rules).
    assert metrics.epe == pytest.approx(14.5 / 6)
    assert metrics.bad1 == pytest.approx(100 * 4 / 6)  # 2.5, 4, 3, 3.5
    assert metrics.bad2 == pytest.approx(100 * 4 / 6)
    assert metrics.bad3 == pytest.approx(100 * 2 / 6)  # 4, 3.5; 3.0 is not > 3
    assert metrics.d1 == pytest.approx(100 * 1 / 6)  # 3.5 on 50; 4 on 100 is 4 %
    assert metrics.density == pytest.approx(6 / 7)


def test_kitti_convention_also_drops_zero_ground_truth() -> None:
    metrics = disparity_metrics(PRED, GT, gt_zero_invalid=True)
    assert (metrics.valid_pixels, metrics.predicted_pixels) == (6, 5)
    assert metrics.epe == pytest.approx(11.5 / 5)
    assert metrics.bad1 == pytest.approx(100 * 3 / 5)  # 2.5, 4, 3.5 of the 5 answered
    assert metrics.bad3 == pytest.approx(100 * 2 / 5)
    assert metrics.d1 == pytest.approx(100 * 1 / 5)


def test_d1_needs_both_more_than_3_px_and_more_than_5_percent() -> None:
    gt = np.array([[100.0, 10.0, 10.0, 80.0]])
    pred = np.array([[104.0, 10.6, 13.5, 76.0 - 1e-9]])  # 4 px / 4 %, 0.6 px / 6 %, 3.5 px / 35 %, 4 px / 5 %+
    metrics = disparity_metrics(pred, gt)
    assert metrics.bad3 == pytest.approx(75.0)  # 4, 3.5, 4 px
    assert metrics.d1 == pytest.approx(50.0)  # only 13.5 on 10 and 4 px on 80 (just over 5 %)


def test_thresholds_are_strictly_greater_than() -> None:
    gt = np.array([[10.0, 10.0, 10.0]])
    pred = np.array([[11.0, 12.0, 13.0]])  # errors exactly 1, 2, 3 (exact in binary)
    metrics = disparity_metrics(pred, gt)
    assert metrics.bad1 == pytest.approx(100 * 2 / 3)
    assert metrics.bad2 == pytest.approx(100 * 1 / 3)
    assert metrics.bad3 == 0.0
    assert metrics.epe == pytest.approx(2.0)


def test_infinite_predictions_are_missing_like_nan() -> None:
    metrics = disparity_metrics(np.array([[np.inf, -np.inf, 10.0]]), np.array([[10.0, 10.0, 10.0]]))
    assert (metrics.valid_pixels, metrics.predicted_pixels) == (3, 1)
    assert metrics.epe == 0.0 and metrics.density == pytest.approx(1 / 3)
    assert metrics.bad1 == 0.0 and metrics.d1 == 0.0  # the one answered pixel is exact


def test_valid_mask_and_max_disparity_restrict_the_pixels() -> None:
    valid = np.array([[True, True, False, True], [True, True, True, False]])
    metrics = disparity_metrics(PRED, GT, valid, max_disparity=45.0)
    # Left: 10 (0.5), 20 (2.5), 0 (3.0) and 5 (missing); 100 masked, 50 >= 45, NaN and 40 masked.
    assert (metrics.valid_pixels, metrics.predicted_pixels) == (4, 3)
    assert metrics.epe == pytest.approx(6.0 / 3)
    assert metrics.bad2 == pytest.approx(100 * 2 / 3)  # 2.5 and 3.0 of the 3 answered
    assert metrics.bad3 == 0.0  # 3.0 is not > 3


def test_ground_truth_mask_is_the_set_of_pixels_the_metrics_score() -> None:
    valid = np.array([[True, True, False, True], [True, True, True, False]])
    mask = ground_truth_mask(GT, valid, max_disparity=50.0)  # 50 itself is dropped (gt >= max)
    assert mask.tolist() == [[True, True, False, True], [False, False, True, False]]
    assert int(mask.sum()) == disparity_metrics(PRED, GT, valid, max_disparity=50.0).valid_pixels
    kitti = ground_truth_mask(GT, gt_zero_invalid=True)
    assert kitti.tolist() == [[True, True, True, False], [True, False, True, True]]
    with pytest.raises(MetricsError, match='max_disparity must be > 0, got -1'):
        ground_truth_mask(GT, max_disparity=-1)


def test_no_valid_ground_truth_gives_nan_not_an_exception() -> None:
    metrics = disparity_metrics(np.ones((2, 2)), np.full((2, 2), NAN))
    assert metrics.valid_pixels == 0 and metrics.predicted_pixels == 0
    for value in (metrics.epe, metrics.bad1, metrics.bad2, metrics.bad3, metrics.d1, metrics.density):
        assert math.isnan(value)


def test_all_predictions_missing_gives_nan_errors_and_zero_density() -> None:
    metrics = disparity_metrics(np.full((1, 2), NAN), np.array([[5.0, 6.0]]))
    assert math.isnan(metrics.epe) and math.isnan(metrics.bad1) and math.isnan(metrics.d1)
    assert metrics.density == 0.0 and metrics.valid_pixels == 2


def test_metrics_are_frozen_and_counts_add_up() -> None:
    metrics = disparity_metrics(PRED, GT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        metrics.epe = 0.0  # type: ignore[misc]
    counts = disparity_error_counts(PRED, GT)
    assert counts + DisparityErrorCounts() == counts
    doubled = (counts + counts).metrics()
    assert doubled.valid_pixels == 14 and doubled.epe == pytest.approx(metrics.epe)


@pytest.mark.parametrize('pred, gt, valid, message', [
    (np.zeros((2, 3)), np.zeros((2, 2)), None, r'prediction shape \(2, 3\) differs from ground truth \(2, 2\)'),
    (np.zeros((2, 2, 1)), np.zeros((2, 2, 1)), None, r'ground truth must be \(H, W\), got shape \(2, 2, 1\)'),
    (np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 3), dtype=bool), r'valid mask shape \(2, 3\) differs'),
    (np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 2)), 'valid mask must be bool, got float64'),
])
def test_shape_and_mask_errors(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None, message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        disparity_metrics(pred, gt, valid)


def test_max_disparity_must_be_positive() -> None:
    with pytest.raises(MetricsError, match='max_disparity must be > 0, got 0'):
        disparity_metrics(np.zeros((1, 1)), np.zeros((1, 1)), max_disparity=0)


# --- aggregation ------------------------------------------------------------------------------------

def test_accumulator_total_is_pixel_weighted_and_per_frame_mean_counts_frames() -> None:
    accumulator = MetricAccumulator()
    first = accumulator.add(np.array([[14.0]]), np.array([[10.0]]))  # 1 pixel, error 4: all bad
    accumulator.add(np.full((1, 3), 20.0), np.full((1, 3), 20.0))  # 3 pixels, error 0
    accumulator.add(np.ones((1, 2)), np.full((1, 2), NAN))  # no ground truth: ignored by both
    assert first.bad3 == 100.0 and len(accumulator) == 3
    total = accumulator.total()
    assert (total.valid_pixels, total.epe, total.bad3, total.d1) == (4, 1.0, 25.0, 25.0)
    mean = accumulator.per_frame_mean()
    assert (mean.valid_pixels, mean.epe, mean.bad3, mean.d1) == (4, 2.0, 50.0, 50.0)


def test_accumulator_applies_its_rules_and_empty_accumulator_is_nan() -> None:
    accumulator = MetricAccumulator(gt_zero_invalid=True, max_disparity=192.0)
    assert math.isnan(accumulator.total().epe) and math.isnan(accumulator.per_frame_mean().bad1)
    accumulator.add(PRED, GT)
    assert accumulator.total() == disparity_metrics(PRED, GT, gt_zero_invalid=True, max_disparity=192.0)


def test_per_frame_mean_skips_frames_without_predictions_for_epe_only() -> None:
    accumulator = MetricAccumulator()
    accumulator.add(np.array([[12.0]]), np.array([[10.0]]))  # EPE 2, bad1 100
    accumulator.add(np.array([[NAN]]), np.array([[10.0]]))  # EPE NaN, bad1 100
    mean = accumulator.per_frame_mean()
    assert mean.epe == 2.0 and mean.bad1 == 100.0 and mean.density == 0.5
    assert isinstance(mean, DisparityMetrics)


# --- depth ------------------------------------------------------------------------------------------

def test_depth_metrics_by_hand() -> None:
    gt = np.array([[2.0, 4.0, 0.0, np.inf, 10.0, 8.0]])  # 0 and +inf have no error to score
    pred = np.array([[2.2, 3.0, 5.0, 1.0, NAN, -1.0]])  # NaN and negative are no prediction
    metrics = depth_metrics(pred, gt)
    assert (metrics.valid_pixels, metrics.predicted_pixels) == (4, 2)
    assert metrics.abs_rel == pytest.approx((0.2 / 2 + 1.0 / 4) / 2)
    assert metrics.rmse == pytest.approx(math.sqrt((0.2 ** 2 + 1.0) / 2))
    assert metrics.completeness == pytest.approx(0.5)


def test_depth_max_range_mask_and_empty_frame() -> None:
    gt = np.array([[2.0, 40.0]])
    pred = np.array([[3.0, 20.0]])
    metrics = depth_metrics(pred, gt, max_depth=20.0)
    assert (metrics.valid_pixels, metrics.rmse, metrics.abs_rel) == (1, 1.0, 0.5)
    empty = depth_metrics(pred, gt, np.zeros((1, 2), dtype=bool))
    assert empty.valid_pixels == 0 and math.isnan(empty.rmse) and math.isnan(empty.completeness)
    with pytest.raises(MetricsError, match='max_depth must be > 0, got -1'):
        depth_metrics(pred, gt, max_depth=-1)


def test_depth_accumulator_weights_pixels_in_total_and_frames_in_mean() -> None:
    accumulator = DepthMetricAccumulator()
    accumulator.add(np.array([[3.0]]), np.array([[2.0]]))  # error 1 m, rel 0.5
    accumulator.add(np.full((1, 3), 5.0), np.full((1, 3), 5.0))  # perfect, 3 pixels
    total = accumulator.total()
    assert total.rmse == pytest.approx(math.sqrt(1.0 / 4)) and total.abs_rel == pytest.approx(0.5 / 4)
    mean = accumulator.per_frame_mean()
    assert mean.rmse == pytest.approx(0.5) and mean.abs_rel == pytest.approx(0.25) and mean.completeness == 1.0
    assert len(accumulator) == 2
