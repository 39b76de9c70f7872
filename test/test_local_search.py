"""The local search of the photometric cost around the network's answer (stereonet_ros.local_search)."""
from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from stereonet_ros.geometry import hidden_from_right_view
from stereonet_ros.local_search import (_ONE_THREAD, AGGREGATION_SIGMA_PX, AUTO, DEFAULT_REACH_PX,
                                        EXTRA_WORKERS_MEMORY_BYTES, HIDDEN_TOLERANCE_PX, MAX_REACH_PX, MEDIAN_SIZE_PX,
                                        MIN_ZNCC, PROPAGATION_STEPS_PX, WINDOW_RADIUS_PX, WORKER_BYTES_PER_PIXEL,
                                        _best_window, _Correlation, _median_where_found, _searched, local_search,
                                        photometric_agreement, reach_for, workers_within_memory)


def textured_pair(shift: float, height: int = 60, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random texture as the left image and the right image it would make at ``shift`` px
    (right(x) = left(x + shift)), sampled by the same linear interpolation the search uses."""
    rng = np.random.default_rng(3)
    left = cv2.GaussianBlur(rng.uniform(0, 255, (height, width)).astype(np.float32), (0, 0), 3.0) * 6.0
    columns = np.arange(width, dtype=np.float32)[np.newaxis, :] + np.float32(shift)
    rows = np.broadcast_to(np.arange(height, dtype=np.float32)[:, np.newaxis], (height, width))
    right = cv2.remap(left, np.ascontiguousarray(np.broadcast_to(columns, (height, width))), np.ascontiguousarray(rows),
                      cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return left, right


def inner(values: np.ndarray, shift: float) -> np.ndarray:
    """Pixels whose window and match lie inside both images."""
    margin = WINDOW_RADIUS_PX + 1
    return values[margin:-margin, margin + int(np.ceil(shift)) + MAX_REACH_PX:-margin]


@pytest.mark.parametrize('error', [2.6, -3.3, 0.4])
def test_an_answer_off_by_less_than_the_reach_is_moved_to_the_true_shift(error: float) -> None:
    left, right = textured_pair(12.4)
    start = np.full(left.shape, 12.4 + error, np.float32)
    found = local_search(start, left, right, reach=4, max_disparity=192.0)
    errors = np.abs(inner(found, 12.4) - 12.4)
    # Whole offsets find the peak; the parabola through it and its neighbours stays within half a pixel of it.
    assert float(errors.max()) < 0.5 and float(np.median(errors)) < 0.1


def test_a_true_shift_beyond_the_reach_leaves_the_answer_alone() -> None:
    """The best offset at the end of the search is no peak: the true one may lie further (a chance peak of
    the texture elsewhere may still pass: at half the size this smooth texture's windows find one at 7 % of the
    pixels). The search at half the size reaches twice as far in the input's pixels: 10 px off at reach 4 lies
    beyond it (5 half-size px), 6 px off within it, and is found."""
    left, right = textured_pair(12.4)
    start = np.full(left.shape, 12.4 + 10.0, np.float32)
    found = local_search(start, left, right, reach=4, max_disparity=192.0)
    assert float((inner(found, 12.4) == inner(start, 12.4)).mean()) > 0.9
    found = local_search(np.full(left.shape, 12.4 + 6.0, np.float32), left, right, reach=4, max_disparity=192.0)
    assert float(np.abs(inner(found, 12.4) - 12.4).max()) < 0.5


@pytest.mark.parametrize(('height', 'at_half_size'), [(13, False), (14, True)])
def test_the_half_size_search_needs_a_window_of_rows_and_columns(height: int, at_half_size: bool) -> None:
    """At half the size an image must still hold a whole window (7 px: 14 px of the input) along each axis, or only
    the full-size search runs: 6 px off is then beyond the reach of 4. 13 rows give 6 at half the size, 14 give 7."""
    left, right = textured_pair(12.4, height=height)
    found = local_search(np.full(left.shape, 12.4 + 6.0, np.float32), left, right, reach=4, max_disparity=192.0)
    columns = np.s_[:, 40:140]
    if at_half_size:
        assert float(np.abs(found[columns] - 12.4).max()) < 0.5
    else:
        assert float((found[columns] == np.float32(18.4)).mean()) > 0.99


def depth_edge(near_on_the_left: bool, far_contrast: float = 1.0, height: int = 60, width: int = 200, edge: int = 80,
               near: int = 20, far: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left image, right image and true disparity of two textured fronto-parallel surfaces meeting at column
    ``edge``: the nearer (``near`` px) on one side, the farther (``far`` px, its texture's contrast scaled by
    ``far_contrast``) on the other. Near on the right, the farther surface's columns ``edge - near + far`` ..
    ``edge`` are hidden from the right camera."""
    rng = np.random.default_rng(5)
    near_texture, far_texture = (cv2.GaussianBlur(rng.uniform(0, 255, (height, width + shift)).astype(np.float32),
                                                  (0, 0), 2.0) * 6.0 for shift in (near, far))
    far_texture = far_texture * np.float32(far_contrast)
    columns = np.arange(width)
    first, second = (near_texture, far_texture) if near_on_the_left else (far_texture, near_texture)
    first_shift, second_shift = (near, far) if near_on_the_left else (far, near)
    left = np.where(columns < edge, first[:, :width], second[:, :width])
    # The right image at x' sees the surface that lands there nearest (the nearer one from edge - near on, or up
    # to it): right(x') = texture(x' + d).
    right = np.where(columns < edge - near, first[:, first_shift:first_shift + width],
                     second[:, second_shift:second_shift + width])
    truth = np.broadcast_to(np.where(columns < edge, first_shift, second_shift).astype(np.float32), (height, width))
    return left.astype(np.float32), right.astype(np.float32), truth.copy()


@pytest.mark.parametrize('band_px', [12, 28])
def test_an_answer_widened_past_the_reach_beside_a_depth_edge_takes_a_neighbours(band_px: int) -> None:
    """The coarse stage widens the nearer surface over the farther beside an edge by more than the reach (here
    answers 10 px too large); the farther surface's answer 16 px further along the row correlates best there, and
    the search around it finds the true shift. A band wider than the longest step is crossed in passes: 28 px
    takes two."""
    left, right, truth = depth_edge(near_on_the_left=True)
    start = truth.copy()
    start[:, 80:80 + band_px] = 20.0
    found = local_search(start, left, right, reach=4, max_disparity=192.0)
    margin = WINDOW_RADIUS_PX + max(PROPAGATION_STEPS_PX) // 2
    band = found[margin:-margin, 80:80 + band_px]
    assert float(np.abs(band - 10.0).max()) < 0.5
    assert float(np.abs(found - truth)[margin:-margin, 30:170].max()) < 0.5  # nothing else broke


def test_pixels_hidden_from_the_right_camera_keep_the_networks_answer_as_the_start() -> None:
    """Near on the right, the farther surface's last columns are hidden: their true shift matches nothing, and
    windows that straddle the edge correlate with the nearer surface's shift (best where the farther surface is
    plain, here a sixth of the contrast), so a neighbour's answer would widen the nearer surface over them
    (without the guard this test fails: checked by hand). The network's answer marks them hidden and
    they keep its start: the search cannot reach 20 from 10."""
    left, right, truth = depth_edge(near_on_the_left=False, far_contrast=1 / 6)
    hidden = hidden_from_right_view(truth, HIDDEN_TOLERANCE_PX)
    assert hidden[:, 72:80].all() and not hidden[:, 12:72].any() and not hidden[:, 80:].any()
    found = local_search(truth, left, right, reach=4, max_disparity=192.0)
    assert float(found[8:-8, 72:80].max()) < 15.0
    margin = WINDOW_RADIUS_PX + max(PROPAGATION_STEPS_PX) // 2
    assert float(np.abs(found - truth)[margin:-margin, 84:170].max()) < 0.5  # the nearer surface is kept


def test_each_pixel_takes_the_best_of_the_five_windows_that_hold_it() -> None:
    """Beside a depth edge the window centred on a pixel straddles it; one moved by the radius along an axis lies on
    the pixel's own side. A lone high correlation reaches exactly the pixels r away along a row or a column (and its
    own), nothing diagonal or further; at the image's border the edge value repeats."""
    r = WINDOW_RADIUS_PX
    correlation = np.full((20, 30), -0.5, np.float32)
    correlation[10, 15] = 0.95
    best = _best_window(correlation)
    reached = {tuple(int(v) for v in point) for point in np.argwhere(best == np.float32(0.95))}
    assert reached == {(10, 15), (10, 15 - r), (10, 15 + r), (10 - r, 15), (10 + r, 15)}
    assert float(best.min()) == -0.5
    border = np.full((20, 30), -0.5, np.float32)
    border[:, 0] = 0.8  # the first column, repeated beyond the border: every pixel up to r from it reaches it
    reached_columns = set(np.argwhere(_best_window(border) == np.float32(0.8))[:, 1].tolist())
    assert reached_columns == set(range(r + 1))


def test_a_plain_image_and_unusable_answers_are_kept() -> None:
    flat = np.full((40, 80), 128.0, np.float32)
    start = np.full(flat.shape, 10.0, np.float32)
    start[5, 5], start[6, 6], start[7, 7] = np.nan, 0.0, -3.0
    found = local_search(start, flat, flat, reach=4, max_disparity=192.0)
    np.testing.assert_array_equal(found, start)
    assert found is not start
    left, right = textured_pair(12.4)
    start = np.full(left.shape, 14.0, np.float32)
    start[30, 60], start[31, 61] = np.inf, 0.0  # textured around them: still not searched
    found = local_search(start, left, right, reach=4, max_disparity=192.0)
    assert found[30, 60] == np.inf and found[31, 61] == 0.0


def test_a_found_pixel_takes_the_median_around_it_and_a_pixel_not_found_keeps_its_answer() -> None:
    """Last, each pixel where a search took a peak takes the 3x3 median of the answers around it: a lone wrong
    match takes its neighbours' answer, a 2 px wide structure stays and a 1 px one goes (what a 3x3 median keeps:
    more than half of the nine). A pixel no search moved keeps its answer, wrong or not."""
    assert MEDIAN_SIZE_PX == 3
    answer = np.full((12, 16), 10.0, np.float32)
    answer[3, 3] = 30.0  # a lone wrong match
    answer[:, 8:10] = 20.0  # a 2 px pole
    answer[:, 13] = 25.0  # a 1 px one
    found = np.ones(answer.shape, bool)
    result = _median_where_found(answer, found, max_disparity=192.0)
    assert result[3, 3] == 10.0
    np.testing.assert_array_equal(result[:, 8:10], 20.0)
    np.testing.assert_array_equal(result[:, 13], 10.0)
    assert result is not answer and answer[3, 3] == 30.0  # the input is not written
    found[3, 3] = found[:, 13] = False
    kept = _median_where_found(answer, found, max_disparity=192.0)
    assert kept[3, 3] == 30.0 and kept[2, 3] == 10.0  # its found neighbours still take their median
    np.testing.assert_array_equal(kept[:, 13], 25.0)


def test_the_median_ignores_unusable_answers_and_stays_within_the_range() -> None:
    """Unusable answers (not finite, not above 0) count as 0 in the square: a found pixel among five of them keeps
    its own answer (a median of 0 is no answer); among two, the median with them as 0. Unusable answers
    are never written, and a median above max_disparity (answers the network gave above it) stops there."""
    answer = np.full((9, 9), 12.0, np.float32)
    answer[3, 3] = 14.0
    answer[2, 2:5] = np.nan
    answer[3, 2], answer[4, 2] = -1.0, 0.0  # five unusable around (3, 3)
    result = _median_where_found(answer, np.isfinite(answer) & (answer > 0), max_disparity=192.0)
    assert result[3, 3] == 14.0
    assert np.isnan(result[2, 2:5]).all() and result[3, 2] == -1.0 and result[4, 2] == 0.0
    assert result[4, 3] == 12.0  # two unusable around it: the median with them as 0
    high = np.full((5, 5), 200.0, np.float32)
    found = np.zeros(high.shape, bool)
    found[2, 2] = True
    high[2, 2] = 190.0
    assert _median_where_found(high, found, max_disparity=192.0)[2, 2] == 192.0


def test_moved_answers_stay_within_the_range() -> None:
    """A true shift above the network's range: what moves stops at max_disparity."""
    left, right = textured_pair(12.4)
    found = local_search(np.full(left.shape, 10.5, np.float32), left, right, reach=4, max_disparity=11.0)
    assert float(found.max()) <= 11.0 and float(inner(found, 12.4).min()) == 11.0


def test_auto_searches_beside_a_cpu_network_only() -> None:
    """-1 (the node's default) is 4 px where the network runs on the CPU, where the search costs a fifth to a third
    of it, and 0 beside a GPU, where the host-side search would cost more than the network."""
    assert reach_for(AUTO, 'cpu') == DEFAULT_REACH_PX == 4 and reach_for(AUTO, 'cuda') == 0
    assert reach_for(0, 'cpu') == 0 and reach_for(6, 'cuda') == 6  # a reach asked for is the reach


def test_reach_bounds_and_shapes() -> None:
    left, right = textured_pair(5.0, height=20, width=60)
    start = np.full(left.shape, 6.0, np.float32)
    np.testing.assert_array_equal(local_search(start, left, right, reach=0, max_disparity=192.0), start)
    local_search(start, left, right, reach=MAX_REACH_PX, max_disparity=192.0)  # the widest is allowed
    with pytest.raises(ValueError, match='reach 17 px is outside'):
        local_search(start, left, right, reach=MAX_REACH_PX + 1, max_disparity=192.0)
    with pytest.raises(ValueError, match='must be one'):
        local_search(start[:, 1:], left, right, reach=4, max_disparity=192.0)


def direct_zncc(left: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """Each pixel's ZNCC of its centred (2r + 1)^2 window, straight from the definition, in float64 (NaN where
    the window leaves the image)."""
    r = WINDOW_RADIUS_PX
    windows = [np.lib.stride_tricks.sliding_window_view(image.astype(np.float64), (2 * r + 1,) * 2)
               for image in (left, warped)]
    a, b = (w - w.mean(axis=(-2, -1), keepdims=True) for w in windows)
    zncc = np.full(left.shape, np.nan)
    zncc[r:-r, r:-r] = (a * b).sum(axis=(-2, -1)) / np.sqrt((a * a).sum(axis=(-2, -1)) * (b * b).sum(axis=(-2, -1)))
    return zncc


@pytest.mark.parametrize('workers', [2, 3, 16])
def test_any_number_of_workers_gives_the_one_threads_answer(workers: int) -> None:
    """The workers compute each step's maps at once and the step reads them in one thread's order: the same answer,
    bit for bit, on a pair where every step acts (an edge the start widened past the reach, noise so that some
    peaks fall below the threshold, unusable answers, a pixel hidden from the right camera), for fewer workers than
    a step's maps (9 at reach 4), and more."""
    left, right, truth = depth_edge(near_on_the_left=True, height=48, width=120, edge=60)
    right = right + np.random.default_rng(1).normal(0, 12.0, right.shape).astype(np.float32)
    start = truth + np.float32(2.7)
    start[:, 60:80] = 20.0
    start[5, :10] = np.nan
    start[6, :10] = -1.0
    alone = local_search(start, left, right, reach=4, max_disparity=192.0)
    assert float((alone != start).mean()) > 0.5  # the steps did move most pixels
    np.testing.assert_array_equal(local_search(start, left, right, reach=4, max_disparity=192.0, workers=workers),
                                  alone)


def test_workers_bounds() -> None:
    """At least one worker; any number above is taken (a thousand on a small pair: the same answer)."""
    left, right = textured_pair(5.0, height=20, width=60)
    start = np.full(left.shape, 6.0, np.float32)
    expected = local_search(start, left, right, reach=2, max_disparity=192.0, workers=1)
    np.testing.assert_array_equal(local_search(start, left, right, reach=2, max_disparity=192.0, workers=1000),
                                  expected)
    for workers in (0, -1):
        with pytest.raises(ValueError, match=f'workers {workers} must be at least 1'):
            local_search(start, left, right, reach=2, max_disparity=192.0, workers=workers)


def test_fewer_workers_on_a_large_input_so_that_they_add_at_most_the_memory_bound() -> None:
    """Each worker beyond the first adds WORKER_BYTES_PER_PIXEL a pixel: at most EXTRA_WORKERS_MEMORY_BYTES in all.
    Pinned at the sizes where one more fits and where it no longer does; the node's 4 MP budget gets 5."""
    assert workers_within_memory(4_000_000, 64) == 5
    assert workers_within_memory(1280 * 720, 64) == 21 and workers_within_memory(640 * 480, 64) == 63
    for extra in (1, 4, 20):
        largest = EXTRA_WORKERS_MEMORY_BYTES // (WORKER_BYTES_PER_PIXEL * extra)  # the most pixels for `extra`
        assert workers_within_memory(largest, 64) >= 1 + extra
        assert workers_within_memory(largest + 1, 64) == extra  # one pixel more: one worker fewer
        assert workers_within_memory(largest, 2) == 2  # never more than asked for
    assert workers_within_memory(10 ** 12, 64) == 1 and workers_within_memory(0, 3) == 3


def test_a_worker_adds_no_more_memory_than_its_bound_says() -> None:
    """WORKER_BYTES_PER_PIXEL against what tracemalloc measures (NumPy's and OpenCV's arrays both count): the peak
    with 5 workers less the peak with 1, over 4 workers and the pixels, stays within it, and above a quarter of it
    (the workers did run at once). Measured 15.5-20 bytes here on 2 cores (how many run at once varies), 25 at 3 MP
    with 9 workers."""
    import tracemalloc

    rng = np.random.default_rng(0)
    left = cv2.GaussianBlur(rng.uniform(0, 255, (400, 800)).astype(np.float32), (0, 0), 2.0) * 6.0
    right = np.ascontiguousarray(np.roll(left, -20, axis=1))
    start = np.full(left.shape, 23.0, np.float32)
    peaks = {}
    for workers in (1, 5):
        tracemalloc.start()
        try:
            local_search(start, left, right, reach=4, max_disparity=192.0, workers=workers)
            peaks[workers] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    per_worker_pixel = (peaks[5] - peaks[1]) / 4 / left.size
    assert WORKER_BYTES_PER_PIXEL / 4 < per_worker_pixel <= WORKER_BYTES_PER_PIXEL


def test_the_search_runs_on_as_many_threads_as_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each backend hands the steps after the network its own thread count (PyTorch's torch.get_num_threads(), the
    ONNX Runtime session's, 0 = every usable CPU); both searches (before and after the SGBM fallback) take it."""
    import warnings

    import torch

    import stereonet_ros.local_search as module
    from stereonet_ros.backends import open_predictor
    from stereonet_ros.inference_common import usable_cpus
    from stereonet_ros.samples import motorcycle

    calls: list[int] = []
    searching = module.local_search

    def spy(*arguments: object, workers: int = 1) -> np.ndarray:
        calls.append(workers)
        return searching(*arguments, workers=workers)  # type: ignore[arg-type]

    monkeypatch.setattr(module, 'local_search', spy)
    sample = motorcycle()
    left, right = sample.left[100:220, 200:400], sample.right[100:220, 200:400]
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch_predictor = open_predictor(None, device='cpu', backend='pytorch')
        torch_predictor.infer(left, right, local_search=4, sgbm_fallback=False)
        assert calls == [threads]
        try:
            torch.set_num_threads(3)
            calls.clear()
            torch_predictor.infer(left, right, local_search=4, sgbm_fallback=False)
            assert calls == [3]
        finally:
            torch.set_num_threads(threads)
        if importlib.util.find_spec('onnxruntime') is None:
            return
        for session_threads, expected in ((0, usable_cpus()), (2, 2), (17, 17)):
            calls.clear()
            predictor = open_predictor(None, device='cpu', backend='onnxruntime', threads=session_threads)
            predictor.infer(left, right, local_search=4)
            assert calls and set(calls) == {expected}, (session_threads, calls)


def test_the_threshold_is_the_pixels_own_correlation_at_the_smoothed_peak() -> None:
    """Noise added to the right image lowers the correlation. A search (one, without propagation) picks each
    pixel's offset on the offsets' correlation maps smoothed by a Gaussian of AGGREGATION_SIGMA_PX, and moves the
    pixel only where that offset is a strict interior peak and the pixel's own correlation there (the best of the
    five windows that hold it) is at least MIN_ZNCC: pinned here against ZNCC computed from its definition."""
    left, right = textured_pair(12.4)
    rng = np.random.default_rng(0)
    noisy = right + rng.normal(0, 28.0, right.shape).astype(np.float32)
    start = np.full(left.shape, 14.4, np.float32)
    found, _ = _searched(_Correlation(left, noisy), start, np.ones(left.shape, bool), 4, 192.0, MIN_ZNCC, _ONE_THREAD)
    r = WINDOW_RADIUS_PX
    own, smoothed = [], []
    for offset in range(-4, 5):
        columns = np.arange(left.shape[1], dtype=np.float32)[np.newaxis, :] - np.float32(14.4 + offset)
        rows = np.broadcast_to(np.arange(left.shape[0], dtype=np.float32)[:, np.newaxis], left.shape)
        warped = cv2.remap(noisy, np.ascontiguousarray(np.broadcast_to(columns, left.shape)),
                           np.ascontiguousarray(rows), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        centred = np.nan_to_num(direct_zncc(left, warped), nan=-1.0)
        best_window = centred.copy()
        for dy, dx in ((0, r), (0, -r), (r, 0), (-r, 0)):
            best_window = np.maximum(best_window, np.roll(centred, (-dy, -dx), axis=(0, 1)))
        own.append(best_window)
        smoothed.append(cv2.GaussianBlur(best_window, (0, 0), AGGREGATION_SIGMA_PX, borderType=cv2.BORDER_REPLICATE))
    own_maps, smoothed_maps = np.stack(own), np.stack(smoothed)
    best = smoothed_maps.argmax(axis=0)
    inner_best = np.clip(best, 1, 7)[np.newaxis]
    peak = np.take_along_axis(smoothed_maps, best[np.newaxis], axis=0)[0]
    curvature = (np.take_along_axis(smoothed_maps, inner_best - 1, axis=0)[0] - 2 * peak
                 + np.take_along_axis(smoothed_maps, inner_best + 1, axis=0)[0])
    own_at_best = np.take_along_axis(own_maps, best[np.newaxis], axis=0)[0]
    expected = (best > 0) & (best < 8) & (curvature < 0) & (own_at_best >= MIN_ZNCC)
    # Far enough from every border (windows, the five windows' shift, the Gaussian's 6 px, the matches' 18.4 px)
    # that the definition and the box filters see the same pixels.
    region = np.s_[2 * r + 7:-(2 * r + 7), 19 + 2 * r + 7:-(2 * r + 7)]
    moved = found[region] != 14.4
    mismatched = moved != expected[region]
    # Only where the correlation lies at the threshold within float32's error on box-filtered sums (seen: 1 pixel,
    # within 2e-5 of it).
    assert float(np.abs(own_at_best[region][mismatched] - MIN_ZNCC).max(initial=0.0)) < 1e-4
    assert int(mismatched.sum()) <= 5
    assert 0.3 < float(moved.mean()) < 0.7  # this noise leaves some pixels above it, some below
    offsets = np.rint(found[region] - 14.4)[moved & expected[region]]
    np.testing.assert_array_equal(offsets, (best[region] - 4)[moved & expected[region]])


def test_both_backends_apply_it_after_the_network_and_refuse_a_bad_reach() -> None:
    """The search is the predictors' last step, the same after PyTorch and after ONNX Runtime: on a Motorcycle crop
    it moves the bundled default's answer, and both backends' searched answers agree but at rare pixels: the
    thresholds can turn the backends' 0.0002 px into a whole pixel, the propagation and the median carry such a
    change to neighbours, and one at half the size moves a 2x2 block (seen on this crop: 11.9 % of the pixels apart
    by more than 0.01 px, 2.7 % by more than 0.1, 0.08 % by more than 1; 0.011 px apart on average)."""
    pytest.importorskip('onnxruntime')
    import warnings

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.inference_common import InputError
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    left, right = sample.left[100:300, 200:500], sample.right[100:300, 200:500]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the default is marked preliminary
        predictors = [open_predictor(None, device='cpu', backend=backend) for backend in ('pytorch', 'onnxruntime')]
    answers = []
    for predictor in predictors:
        alone = predictor.infer(left, right).disparity
        searched = predictor.infer(left, right, local_search=4, sgbm_fallback=False,
                                   fill_occlusions=False).disparity  # the steps after it: their own bounds
        assert float((np.abs(searched - alone) > 0.1).mean()) > 0.1  # it moved a good part of the crop
        answers.append(searched)
        np.testing.assert_array_equal(predictor.infer(left, right, local_search=AUTO, sgbm_fallback=False,
                                                      fill_occlusions=False).disparity, searched)  # on a CPU
        for reach in (AUTO - 1, MAX_REACH_PX + 1, 2.5, True):
            with pytest.raises(InputError, match='local search .* must be a whole number in'):
                predictor.infer(left, right, local_search=reach)  # type: ignore[arg-type]
    apart = np.abs(answers[0] - answers[1])
    assert float((apart > 0.1).mean()) < 0.04 and float((apart > 1.0).mean()) < 0.003 and float(apart.mean()) < 0.03


def test_a_pair_larger_than_the_pixel_budget_is_not_searched() -> None:
    """The search holds 2 reach + 1 maps of the input's size: past max_pixels (where the network already ran
    smaller) the network's answer is returned as it is, so the budget bounds the whole step's memory."""
    import warnings

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    left, right = sample.left[:300, :300], sample.right[:300, :300]  # 90,000 pixels
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        predictor = open_predictor(None, device='cpu', backend='pytorch')
    budget = 300 * 300
    within = predictor.infer(left, right, local_search=4, max_pixels=budget)
    assert float((within.disparity != predictor.infer(left, right, max_pixels=budget).disparity).mean()) > 0.1
    beyond = predictor.infer(left, right, local_search=4, max_pixels=budget - 1)
    np.testing.assert_array_equal(beyond.disparity, predictor.infer(left, right, max_pixels=budget - 1).disparity)


def test_photometric_agreement_maps_the_correlation_at_the_answer_to_0_1() -> None:
    """(1 + ZNCC) / 2 at each pixel's answer: about 1 at the true shift of a textured pair, well below where the shift
    is wrong by more than the texture's grain (seen: a median of 0.66, the best of five windows of a smooth texture)
    and exactly 0.5 on a plain image (a flat window correlates 0); 0 where the answer is unusable or its match lies
    outside the right image."""
    left, right = textured_pair(12.4)
    inside = np.s_[10:-10, 30:-10]  # clear of the border, the windows and the Gaussian
    true = photometric_agreement(np.full(left.shape, 12.4, np.float32), left, right)
    assert float(true[inside].min()) > 0.99 and float(true.max()) <= 1.0
    wrong = photometric_agreement(np.full(left.shape, 12.4 + 9.0, np.float32), left, right)
    assert 0.2 < float(np.median(wrong[inside])) < 0.8 and float(wrong.min()) >= 0.0
    flat = np.full((40, 80), 128.0, np.float32)
    answer = np.full(flat.shape, 10.0, np.float32)
    answer[20, 40], answer[21, 40], answer[22, 40] = np.nan, 0.0, -2.0
    plain = photometric_agreement(answer, flat, flat)
    assert plain[20:23, 40].tolist() == [0.0, 0.0, 0.0]
    plain[20:23, 40] = 0.5
    np.testing.assert_array_equal(plain[:, 20:], 0.5)
    outside = photometric_agreement(np.full(left.shape, 40.0, np.float32), left, right)
    assert float(outside[:, :30].max()) == 0.0  # column u - 40 < 0, the Gaussian's reach (6 px) short of column 40
    with pytest.raises(ValueError, match='must be one'):
        photometric_agreement(answer[:, 1:], flat, flat)


def test_a_searched_answers_confidence_is_the_networks_times_its_agreement() -> None:
    """After the search the predictors' confidence is the network's matching confidence times the photometric
    agreement of the searched answer (the one step both backends share); without the search it is the network's.
    (The SGBM fallback after it keeps that confidence: test_sgbm_fallback.)"""
    import warnings

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.inference_common import as_float_image, to_contract_color
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    left, right = sample.left[100:300, 200:500], sample.right[100:300, 200:500]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        predictor = open_predictor(None, device='cpu', backend='pytorch')
    alone = predictor.infer(left, right, with_confidence=True)
    searched = predictor.infer(left, right, with_confidence=True, local_search=4, sgbm_fallback=False,
                               fill_occlusions=False)
    assert alone.confidence is not None and searched.confidence is not None
    grey = [to_contract_color(as_float_image(image, name), 'gray')[0] for image, name in ((left, 'l'), (right, 'r'))]
    np.testing.assert_array_equal(searched.confidence,
                                  alone.confidence * photometric_agreement(searched.disparity, *grey))
    assert float(searched.confidence.min()) >= 0.0 and float(searched.confidence.max()) <= 1.0
    assert predictor.infer(left, right, local_search=4).confidence is None
