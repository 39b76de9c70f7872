"""Raster charts drawn with Pillow: sizes, content and refusals."""
from __future__ import annotations

import numpy as np
import pytest

from stereonet_ros.evaluation.charts import ChartError, _nice_ticks, histogram_chart, histogram_of, line_chart

BAR_BLUE = (31, 119, 180)


def _has(picture: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.count_nonzero((picture == np.array(colour, np.uint8)).all(axis=2)))


def test_a_histogram_is_an_rgb_picture_whose_tallest_bar_reaches_the_top() -> None:
    picture = histogram_chart([0, 5, 10, 0], [0.0, 1.0, 2.0, 3.0, 4.0], 'title', 'x', size=(400, 200))
    assert picture.shape == (200, 400, 3) and picture.dtype == np.uint8
    columns = np.nonzero((picture == np.array(BAR_BLUE, np.uint8)).all(axis=2).any(axis=0))[0]
    rows = np.nonzero((picture == np.array(BAR_BLUE, np.uint8)).all(axis=2).any(axis=1))[0]
    # Two bars, over the 2nd and 3rd quarter of the x range; the taller one reaches near the plot top.
    assert 400 * 0.3 < columns.min() < 400 * 0.45 and 400 * 0.6 < columns.max() < 400 * 0.85
    assert rows.min() < 60


def test_an_empty_histogram_still_draws_axes() -> None:
    picture = histogram_chart([0, 0], [0.0, 1.0, 2.0], 'empty', 'x')
    assert _has(picture, BAR_BLUE) == 0 and (picture < 100).any()


def test_histogram_of_values_and_line_chart_plot_what_they_are_given() -> None:
    assert _has(histogram_of([1.0, 2.0, np.nan, 2.5], 'times', 'ms', bins=4), BAR_BLUE) > 0
    picture = line_chart(np.arange(5.0), {'a': [1, 2, np.nan, 4, 5], 'b': [0, 0, 0, 0, 0]}, 't', 'x', 'y',
                         integer_x=True)
    assert _has(picture, BAR_BLUE) > 0 and _has(picture, (214, 39, 40)) > 0


def test_charts_refuse_data_they_cannot_show() -> None:
    with pytest.raises(ChartError, match='n counts and n \\+ 1 edges'):
        histogram_chart([1, 2], [0.0, 1.0], 't', 'x')
    with pytest.raises(ChartError, match='no finite values'):
        histogram_of([np.nan], 'times', 'ms')
    with pytest.raises(ChartError, match="series 'a' has"):
        line_chart([0, 1], {'a': [1.0]}, 't', 'x', 'y')
    with pytest.raises(ChartError, match='no series'):
        line_chart([0, 1], {}, 't', 'x', 'y')


def test_ticks_are_round_numbers_covering_the_range() -> None:
    assert _nice_ticks(0.0, 100.0) == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    assert _nice_ticks(0.0, 3.0, 6, integer=True) == [0.0, 1.0, 2.0, 3.0]
    assert _nice_ticks(2.0, 2.0) == [2.0]


def test_a_colour_bar_runs_through_turbo_as_colorize_disparity_maps_values() -> None:
    from stereonet_ros.evaluation.charts import MAP_BAR_HEIGHT, MAP_BAR_MIN_WIDTH, colour_bar, with_colour_bar
    from stereonet_ros.image_io import colorize_disparity

    bar = colour_bar(500, 0.0, 8.0, 'px', [((255, 0, 255), 'no prediction')])
    assert bar.shape == (MAP_BAR_HEIGHT, 500, 3) and bar.dtype == np.uint8
    gradient = bar[8, 10:490]  # the strip: rows 4..15, columns [10, 490)
    values = np.linspace(0.0, 8.0, gradient.shape[0])[np.newaxis]
    np.testing.assert_array_equal(gradient, colorize_disparity(values, vmin=0.0, vmax=8.0)[0])
    assert _has(bar, (255, 0, 255)) > 0  # the swatch
    narrow = with_colour_bar(np.zeros((5, 30, 3), np.uint8), 0.0, 1.0, 'c')
    assert narrow.shape == (5 + MAP_BAR_HEIGHT, MAP_BAR_MIN_WIDTH, 3)
    assert (narrow[:5, :30] == 0).all() and (narrow[:5, 30:] == 255).all()  # the map unscaled, white beside it
    with pytest.raises(ChartError, match='finite vmin < vmax'):
        colour_bar(500, 1.0, 1.0, 'x')
    with pytest.raises(ChartError, match='needs an \\(H, W, 3\\) picture'):
        with_colour_bar(np.zeros((5, 5)), 0.0, 1.0, 'x')


def test_a_point_chart_puts_points_where_their_coordinates_say_and_marks_overlap() -> None:
    from stereonet_ros.evaluation.charts import point_chart

    size = (64 + 16 + 200, 34 + 46 + 100)  # a 200 x 100 plot area: 0.01 units per pixel on both axes
    picture = point_chart({'a': ([0.5, 1.0], [0.5, 0.25]), 'b': ([1.0, 1.5], [0.25, np.nan])}, 't', 'x', 'y',
                          (0.0, 2.0), (0.0, 1.0), size=size, colours=((10, 20, 30), (40, 50, 60)),
                          overlap=((70, 80, 90), 'both'))
    # x = 0.5 -> column 64 + 50; y = 0.5 -> row 134 - 50.
    assert tuple(picture[84, 114]) == (10, 20, 30)
    assert tuple(picture[109, 164]) == (70, 80, 90)  # (1.0, 0.25) in both series
    assert _has(picture[34:134, 64:144], (40, 50, 60)) == 0  # b's NaN point is left out
    with pytest.raises(ChartError, match='ranges must be finite'):
        point_chart({'a': ([0.0], [0.0])}, 't', 'x', 'y', (1.0, 1.0), (0.0, 1.0))
    with pytest.raises(ChartError, match="series 'a' has 2 x and 1 y"):
        point_chart({'a': ([0.0, 1.0], [0.0])}, 't', 'x', 'y', (0.0, 1.0), (0.0, 1.0))
