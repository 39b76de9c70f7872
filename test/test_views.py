"""The three comparison views (dense, answered, matched), with answers computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from stereonet_ros.evaluation.metrics import MetricsError
from stereonet_ros.evaluation.views import ViewCounts, fill_holes, keep_most_confident, three_views, view_counts

NAN, INF = float('nan'), float('inf')

# An SGBM-like answer with holes at a row's start and end, and its ground truth ((1, 3) unknown).
GT = np.array([[10.0, 10.0, 10.0, 10.0], [20.0, 20.0, 20.0, INF]])
SPARSE = np.array([[NAN, 13.0, NAN, 9.0], [21.0, NAN, 26.0, NAN]])
# Filled: row 0 [13 (right only), 13, min(13, 9), 9]; row 1 [21, min(21, 26), 26, 26 (left only)].
# Errors on the 7 valid pixels: 3 (exactly the bad-3 threshold), 3, 1, 1 | 1, 1, 6.


def test_holes_take_the_smaller_neighbour_and_row_ends_the_one_they_have() -> None:
    filled = fill_holes(SPARSE)
    assert filled.dtype == np.float32
    assert filled.tolist() == [[13.0, 13.0, 9.0, 9.0], [21.0, 21.0, 26.0, 26.0]]


def test_a_row_without_any_value_is_filled_with_zero_and_others_are_untouched() -> None:
    disparity = np.array([[NAN, INF, -INF], [4.0, NAN, 2.5]])
    assert fill_holes(disparity).tolist() == [[0.0, 0.0, 0.0], [4.0, 2.5, 2.5]]


def test_a_long_hole_takes_one_value_over_its_whole_run() -> None:
    row = np.array([[7.0, NAN, NAN, NAN, NAN, 30.0, NAN, 8.0]])
    assert fill_holes(row).tolist() == [[7.0, 7.0, 7.0, 7.0, 7.0, 30.0, 8.0, 8.0]]


def test_fill_holes_refuses_a_map_that_is_not_2d() -> None:
    with pytest.raises(MetricsError, match=r'must be \(H, W\), got shape \(4,\)'):
        fill_holes(np.zeros(4))


def test_dense_view_scores_the_filled_map_on_every_valid_pixel() -> None:
    dense = three_views(SPARSE, GT)['dense'].metrics()
    assert (dense.scored_pixels, dense.valid_pixels, dense.density) == (7, 7, 1.0)
    assert dense.epe == pytest.approx(16 / 7)
    assert dense.bad1 == pytest.approx(100 * 3 / 7)  # 3, 3, 6; an error of exactly 1 is not bad-1
    assert dense.bad2 == pytest.approx(100 * 3 / 7)
    assert dense.bad3 == pytest.approx(100 * 1 / 7)  # only 6: the two errors of exactly 3 are not bad-3
    assert dense.d1 == pytest.approx(100 * 1 / 7)  # 6 px is also 30 % of 20


def test_answered_view_scores_only_the_answered_pixels_with_their_density() -> None:
    answered = three_views(SPARSE, GT)['answered'].metrics()
    # Answered with ground truth: (0, 1) err 3, (0, 3) err 1, (1, 0) err 1, (1, 2) err 6.
    assert (answered.scored_pixels, answered.valid_pixels) == (4, 7)
    assert answered.density == pytest.approx(4 / 7)
    assert answered.epe == pytest.approx(11 / 4)
    assert answered.bad1 == pytest.approx(50.0)
    assert answered.bad3 == pytest.approx(25.0)


def test_without_a_keep_mask_the_matched_view_is_the_answered_view() -> None:
    views = three_views(SPARSE, GT)
    assert views['matched'] == views['answered']


def test_a_dense_method_is_the_same_in_all_views_but_matched_keeps_only_the_mask() -> None:
    dense_prediction = GT + np.array([[0.5, 4.0, 3.0, 1.0], [2.0, 0.0, 1.0, 0.0]])
    keep = np.array([[True, False, True, True], [True, True, False, True]])  # (1, 3) has no ground truth
    views = three_views(dense_prediction, GT, keep)
    assert views['dense'] == views['answered']
    assert views['dense'].metrics().epe == pytest.approx(11.5 / 7)
    matched = views['matched'].metrics()
    assert (matched.scored_pixels, matched.valid_pixels) == (5, 7)  # errors 0.5, 3, 1, 2, 0
    assert matched.epe == pytest.approx(6.5 / 5)
    assert matched.bad2 == pytest.approx(20.0) and matched.bad3 == 0.0


def test_view_counts_follow_the_ground_truth_rules() -> None:
    gt = np.array([[0.0, 5.0, 200.0, NAN]])
    pred = np.array([[1.0, 5.0, 150.0, 3.0]])
    counts = view_counts(pred, gt, gt_zero_invalid=True, max_disparity=192.0)
    assert (counts.scored.valid_pixels, counts.valid_pixels) == (1, 1)  # only gt 5 is scored
    assert counts.metrics().epe == 0.0


def test_frames_add_up_pixel_weighted() -> None:
    first = view_counts(np.array([[1.0, NAN]]), np.array([[2.0, 2.0]]))  # 1 of 2 answered, error 1
    second = view_counts(np.array([[2.0, 2.0, 6.0, 2.0]]), np.full((1, 4), 2.0))  # errors 0, 0, 4, 0
    total = (ViewCounts() + first + second).metrics()
    assert (total.scored_pixels, total.valid_pixels) == (5, 6)
    assert total.epe == pytest.approx(5 / 5)
    assert total.bad3 == pytest.approx(20.0) and total.density == pytest.approx(5 / 6)


def test_a_view_with_nothing_scored_is_nan_not_an_error() -> None:
    metrics = view_counts(np.full((2, 2), NAN), np.full((2, 2), 3.0)).metrics()
    assert metrics.scored_pixels == 0 and metrics.density == 0.0 and np.isnan(metrics.epe)
    assert np.isnan(ViewCounts().metrics().density)


def test_view_counts_refuse_mismatched_shapes_and_masks() -> None:
    with pytest.raises(MetricsError, match=r'prediction shape \(1, 3\) differs from ground truth \(1, 2\)'):
        view_counts(np.zeros((1, 3)), np.zeros((1, 2)))
    with pytest.raises(MetricsError, match='scored mask must be bool'):
        view_counts(np.zeros((1, 2)), np.ones((1, 2)), np.ones((1, 2)))


CONFIDENCE = np.array([[0.9, 0.5, 0.5], [0.5, 0.1, 0.9]])


def test_keep_most_confident_breaks_ties_in_raster_order() -> None:
    # Half of 6 = 3: both 0.9s, then the first of the three tied 0.5s.
    kept = keep_most_confident(CONFIDENCE, np.ones((2, 3), bool), 0.5)
    assert kept.tolist() == [[True, True, False], [False, False, True]]


def test_keep_most_confident_keeps_only_eligible_pixels_rounding_half_up() -> None:
    eligible = np.array([[False, True, True], [True, True, True]])  # 5 pixels: 2.5 rounds up to 3
    kept = keep_most_confident(CONFIDENCE, eligible, 0.5)
    assert kept.tolist() == [[False, True, True], [False, False, True]]


@pytest.mark.parametrize('density, count', [(0.0, 0), (1.0, 6), (0.25, 2), (0.24, 1)])
def test_keep_most_confident_keeps_the_rounded_count(density: float, count: int) -> None:
    # 0.25 * 6 = 1.5 rounds up to 2; 0.24 * 6 = 1.44 rounds down to 1.
    assert np.count_nonzero(keep_most_confident(CONFIDENCE, np.ones((2, 3), bool), density)) == count


def test_nan_confidence_ranks_last() -> None:
    kept = keep_most_confident(np.array([[NAN, 0.0, 0.2]]), np.ones((1, 3), bool), 2 / 3)
    assert kept.tolist() == [[False, True, True]]


@pytest.mark.parametrize('confidence, eligible, density, message', [
    (np.zeros((2, 2)), np.ones((2, 2), bool), 1.5, r'density must be in \[0, 1\], got 1.5'),
    (np.zeros((2, 2)), np.ones((2, 2), bool), NAN, r'density must be in \[0, 1\], got nan'),
    (np.zeros((2, 2)), np.ones((2, 3), bool), 0.5, r'eligible mask shape \(2, 3\) differs'),
    (np.zeros((2, 2)), np.ones((2, 2)), 0.5, 'eligible mask must be bool'),
    (np.zeros(4), np.ones(4, bool), 0.5, r'confidence must be \(H, W\)'),
])
def test_keep_most_confident_refuses_bad_arguments(confidence: np.ndarray, eligible: np.ndarray, density: float,
                                                   message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        keep_most_confident(confidence, eligible, density)


def test_a_dense_method_beside_a_sparse_one_is_matched_to_its_density_on_the_frame() -> None:
    from stereonet_ros.evaluation.views import answered_density, dense_method_views

    truth = np.array([[1.0, 2.0, 3.0, 4.0, np.nan]], dtype=np.float32)
    dense = np.array([[1.0, 5.0, 3.5, 4.0, 1.0]], dtype=np.float32)
    confidence = np.array([[0.9, 0.1, 0.5, 0.8, 1.0]], dtype=np.float32)
    sparse = np.array([[1.0, np.nan, np.nan, 4.0, 2.0]], dtype=np.float32)
    reference = three_views(sparse, truth)['answered']
    assert answered_density(reference) == 0.5
    counts = dense_method_views(dense, truth, confidence, reference)
    matched = counts['matched'].metrics()
    assert (matched.scored_pixels, matched.density, matched.epe) == (2, 0.5, 0.0)  # pixels 0 and 3 kept
    assert counts['answered'] == three_views(dense, truth)['answered']
    assert set(dense_method_views(dense, truth, None, reference)) == {'dense', 'answered'}
    assert set(dense_method_views(dense, truth, confidence, None)) == {'dense', 'answered'}
    assert answered_density(three_views(sparse, np.full((1, 5), np.nan))['answered']) == 0.0


def test_a_method_with_its_own_holes_is_matched_to_the_reference_density_of_the_valid_pixels() -> None:
    """Ours under min_confidence leaves holes: the matched view still keeps as many pixels as the reference answered
    (a fraction of the valid-ground-truth pixels, not of ours' answered ones), and every one ours answered when that
    is fewer."""
    from stereonet_ros.evaluation.views import answered_density, dense_method_views

    truth = np.arange(1.0, 11.0, dtype=np.float32)[np.newaxis, :]  # 10 valid pixels
    ours = truth.copy()
    ours[0, 7:] = np.nan  # 7 answered
    confidence = np.linspace(1.0, 0.1, 10, dtype=np.float32)[np.newaxis, :]
    sparse = truth.copy()
    sparse[0, 6:] = np.nan  # the reference answered 6 of 10
    reference = three_views(sparse, truth)['answered']
    assert answered_density(reference) == 0.6
    matched = dense_method_views(ours, truth, confidence, reference)['matched'].metrics()
    assert (matched.scored_pixels, matched.density) == (6, 0.6)  # 6 of the 10, not 0.6 x 7 = 4
    fewer = truth.copy()
    fewer[0, 4:] = np.nan  # ours answered 4, fewer than the reference's 6
    matched = dense_method_views(fewer, truth, confidence, reference)['matched'].metrics()
    assert (matched.scored_pixels, matched.density) == (4, 0.4)
    nothing = np.full(truth.shape, np.nan, np.float32)
    assert dense_method_views(nothing, truth, confidence, reference)['matched'].metrics().scored_pixels == 0
