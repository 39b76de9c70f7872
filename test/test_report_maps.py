"""The report's pictures: error map colours that agree with the scores, colour bars, the cloud from above."""
from __future__ import annotations

import numpy as np
import pytest

from stereonet_ros.camera import StereoCamera
from stereonet_ros.evaluation.bag_eval import Showcase
from stereonet_ros.evaluation.charts import MAP_BAR_HEIGHT
from stereonet_ros.evaluation.makebag import simple_camera
from stereonet_ros.evaluation.metrics import disparity_error_counts
from stereonet_ros.evaluation.report import (BOTH_POINTS_RGB, GT_POINTS_RGB, NO_PREDICTION_RGB, NO_VALUE_RGB,
                                             PREDICTED_POINTS_RGB, _showcase_pictures, birds_eye, error_map)
from stereonet_ros.image_io import TURBO_LUT, colorize_disparity


def _count(picture: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.count_nonzero((picture == np.array(colour, np.uint8)).all(axis=-1)))


def _has_gradient(strip: np.ndarray) -> bool:
    """Some row of ``strip`` runs through turbo from its first entry to its last, in order."""
    for row in strip:
        first = np.flatnonzero((row == TURBO_LUT[0]).all(axis=1))
        last = np.flatnonzero((row == TURBO_LUT[-1]).all(axis=1))
        middle = np.flatnonzero((row == TURBO_LUT[128]).all(axis=1))
        if first.size and last.size and middle.size and first.max() < middle.min() <= middle.max() < last.min():
            return True
    return False


def test_the_error_map_paints_missing_predictions_apart_from_missing_ground_truth_as_the_scores_count_them() -> None:
    # Issue 12: a missing prediction was black under a caption saying black = "no ground truth", while the
    # scores count it as bad.
    truth = np.array([[1.0, 2.0, np.nan, 4.0], [5.0, np.inf, 7.0, 8.0]], dtype=np.float32)
    shift = np.array([[1.0, np.nan, np.nan, 4.5], [np.nan, 6.0, 7.0, 20.0]], dtype=np.float32)
    picture = error_map(shift, truth)
    missing = np.array([[False, True, False, False], [True, False, False, False]])
    no_truth = ~np.isfinite(truth)
    assert ((picture == NO_PREDICTION_RGB).all(axis=-1) == missing).all()
    assert ((picture == NO_VALUE_RGB).all(axis=-1) == no_truth).all()  # also where neither has a value
    counts = disparity_error_counts(shift, truth)
    assert _count(picture, NO_PREDICTION_RGB) == counts.valid_pixels - counts.predicted_pixels == 2
    scored = np.isfinite(truth) & np.isfinite(shift)
    np.testing.assert_array_equal(picture[scored], colorize_disparity(np.abs(shift - truth), 0.0, 8.0)[scored])
    assert not (TURBO_LUT == NO_PREDICTION_RGB).all(axis=1).any()  # never confused with an error colour


def _showcase(camera: StereoCamera) -> Showcase:
    rng = np.random.default_rng(0)
    height, width = camera.height, camera.width
    truth = rng.uniform(5.0, 30.0, size=(height, width)).astype(np.float32)
    truth[:3] = np.nan
    shift = (truth + rng.normal(0.0, 2.0, size=truth.shape)).astype(np.float32)
    shift[3:6, :10] = np.nan  # no prediction where there is ground truth
    sgbm = shift.copy()
    sgbm[:, :20] = np.nan
    left = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Showcase('t', left, shift, truth, confidence=rng.uniform(0, 1, truth.shape).astype(np.float32),
                    baseline_shift=sgbm, camera=camera)


def test_every_colour_mapped_picture_carries_its_colour_bar_and_says_what_its_other_colours_mean() -> None:
    camera = simple_camera(96, 48, focal=60.0, baseline=0.2)
    showcase = _showcase(camera)
    pictures = {stem: (caption, picture) for stem, caption, picture in _showcase_pictures(showcase)}
    assert set(pictures) == {'left', 'disparity', 'confidence', 'gt', 'error', 'sgbm', 'sgbm_error', 'birdseye'}
    maps = ('disparity', 'confidence', 'gt', 'error', 'sgbm', 'sgbm_error')
    for stem in maps:
        caption, picture = pictures[stem]
        assert picture.shape[0] == 48 + MAP_BAR_HEIGHT, stem
        assert _has_gradient(picture[48:]), stem
        assert not _has_gradient(picture[:48, 96:]), stem  # the map itself stays as it was, beside it white
    for stem in ('error', 'sgbm_error'):
        caption, picture = pictures[stem]
        bar = picture[48:]
        assert _count(bar, NO_PREDICTION_RGB) > 0 and _count(bar, NO_VALUE_RGB) > 0  # the swatches
        assert 'magenta' in caption and 'black = no ground truth' in caption
        assert _count(picture[:48], NO_PREDICTION_RGB) > 0
    # The confidence map is the source's confidence on turbo from 0 to 1.
    np.testing.assert_array_equal(pictures['confidence'][1][:48, :96],
                                  colorize_disparity(showcase.confidence, vmin=0.0, vmax=1.0))
    np.testing.assert_array_equal(pictures['disparity'][1][:48, :96],
                                  colorize_disparity(showcase.shift, 0.0, float(np.nanpercentile(showcase.gt_shift,
                                                                                                  99))))


def _plot(picture: np.ndarray) -> np.ndarray:
    """The plot area left of the legend (charts: 64 px margin on the left, 16 on the right, legend 120 wide)."""
    return picture[:, 64:picture.shape[1] - 16 - 125]


def _rows_of(picture: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.flatnonzero((_plot(picture) == np.array(colour, np.uint8)).all(axis=-1).sum(axis=1) > 10)


def test_the_cloud_from_above_puts_a_wall_at_its_range_and_shows_where_prediction_and_truth_differ() -> None:
    camera = simple_camera(64, 32, focal=50.0, baseline=0.1)  # f * T = 5 m px
    truth = np.full((32, 64), 2.5, dtype=np.float32)  # a wall 2 m ahead
    same = Showcase('wall', np.zeros((32, 64, 3), np.uint8), truth.copy(), truth, camera=camera)
    picture = birds_eye(same)
    assert picture is not None
    # Every predicted point is on a ground-truth point: only the "both" colour.
    assert _count(_plot(picture), BOTH_POINTS_RGB) > 20
    assert _count(_plot(picture), PREDICTED_POINTS_RGB) == _count(_plot(picture), GT_POINTS_RGB) == 0
    rows = _rows_of(picture, BOTH_POINTS_RGB)
    assert rows.size and rows.max() - rows.min() <= 1  # one line: a wall at one range
    farther = Showcase('wall', same.left_rgb, np.full((32, 64), 2.0, np.float32), truth, camera=camera)  # 2.5 m
    apart = birds_eye(farther)
    assert apart is not None
    predicted_rows, truth_rows = _rows_of(apart, PREDICTED_POINTS_RGB), _rows_of(apart, GT_POINTS_RGB)
    assert predicted_rows.size and truth_rows.size and _count(_plot(apart), BOTH_POINTS_RGB) == 0
    assert predicted_rows.max() < truth_rows.min()  # farther = higher up the picture (z forward is up)
    assert birds_eye(Showcase('x', same.left_rgb, truth, None, camera=None)) is None


@pytest.mark.parametrize('with_truth', [True, False])
def test_the_cloud_from_above_without_ground_truth_shows_the_prediction_alone(with_truth: bool) -> None:
    camera = simple_camera(64, 32, focal=50.0, baseline=0.1)
    shift = np.full((32, 64), 2.5, dtype=np.float32)
    picture = birds_eye(Showcase('x', np.zeros((32, 64, 3), np.uint8), shift, shift if with_truth else None,
                                 camera=camera))
    assert picture is not None
    colour = BOTH_POINTS_RGB if with_truth else PREDICTED_POINTS_RGB
    assert _count(_plot(picture), colour) > 20
    assert _count(_plot(picture), GT_POINTS_RGB) == 0
