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
