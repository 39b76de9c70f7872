"""Depth error by range bins of the ground-truth depth (the report's "Depth by range"), and its edges."""
from __future__ import annotations

import math

import numpy as np
import pytest

from stereonet_ros.evaluation.metrics import (DepthErrorCounts, DepthMetricAccumulator,
                                              MetricsError, check_range_edges, depth_error_counts, depth_metrics,
                                              depth_range_counts)


def test_each_bin_scores_the_pixels_whose_true_depth_falls_in_it() -> None:
    truth = np.array([[0.5, 1.5, 1.9, 7.0, np.nan, 0.0, np.inf, 12.0]])
    pred = np.array([[0.6, 1.0, np.nan, 8.0, 3.0, 1.0, 5.0, 10.0]])
    near, middle, far = depth_range_counts(pred, truth, (0.0, 1.0, 2.0, 10.0))
    assert (near.valid_pixels, near.predicted_pixels) == (1, 1)
    assert near.metrics().mae == pytest.approx(0.1)
    assert (middle.valid_pixels, middle.predicted_pixels) == (2, 1)  # 1.9 m has no prediction
    assert middle.metrics().completeness == 0.5
    assert middle.metrics().mae == pytest.approx(0.5) and middle.metrics().rmse == pytest.approx(0.5)
    assert middle.metrics().abs_rel == pytest.approx(0.5 / 1.5)
    assert (far.valid_pixels, far.metrics().mae) == (1, pytest.approx(1.0))  # 12 m is beyond the last edge
    # NaN, 0 (no depth) and +inf (too far) ground truth are in no bin, as depth_metrics leaves them out.
    open_ended = depth_range_counts(pred, truth, (0.0, math.inf))
    assert open_ended[0] == depth_error_counts(pred, truth)
    total = sum(depth_range_counts(pred, truth), DepthErrorCounts())
    assert total == depth_error_counts(pred, truth)  # the default bins cover every valid depth once


def test_depth_mae_is_the_mean_absolute_error_in_metres() -> None:
    scores = depth_metrics(np.array([[1.0, 2.5, 4.0]]), np.array([[2.0, 2.0, 4.0]]))
    assert scores.mae == pytest.approx(0.5) and scores.rmse == pytest.approx(math.sqrt(1.25 / 3))
    accumulator = DepthMetricAccumulator()
    frame = accumulator.add_counts(depth_error_counts(np.array([[1.0]]), np.array([[3.0]])))
    assert frame.mae == 2.0 and accumulator.total().mae == 2.0 and len(accumulator) == 1


@pytest.mark.parametrize('edges, message', [((1.0,), 'at least two edges'), ((0.0, 2.0, 1.0), 'strictly increasing'),
                                            ((-1.0, 1.0), '>= 0'), ((0.0, math.nan), 'strictly increasing')])
def test_unusable_edges_are_refused(edges: tuple[float, ...], message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        check_range_edges(edges)
    with pytest.raises(MetricsError, match=message):
        depth_range_counts(np.ones((1, 1)), np.ones((1, 1)), edges)

