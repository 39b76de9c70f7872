"""A classical step after the network: a local search of the photometric cost around its answer.

The network's answer is imprecise where the image is textured (its cost volume's candidates are 8 px
apart, and its refiner has learned to lean on the coarse disparity rather than the image:
docs/depth_quality.md), which is exactly where plain local matching is reliable. So, for each pixel, the
zero-mean normalized cross-correlation (ZNCC) of a small window of the left image with the right image
shifted by the network's disparity plus each whole offset in ``[-reach, reach]`` px, the best of five windows
that hold the pixel (centred on it, and moved by the window's radius left, right, up and down: so that beside
a depth edge one window lies on the pixel's own side of it, Fusiello et al.'s shiftable windows). Each offset's
map is smoothed (a Gaussian of :data:`AGGREGATION_SIGMA_PX`: neighbours' curves vote, which steadies the peak on
textured surfaces) before the best offset is chosen: where it is inside that interval (a true peak, not the edge
of the search) and the pixel's own correlation there is at least :data:`MIN_ZNCC` (:data:`HALF_SIZE_MIN_ZNCC` at
half the size), the pixel takes it, refined to a fraction of a pixel by a parabola through the peak and its two
neighbours; elsewhere (plain surfaces, occlusions, repeated texture that matches nowhere well) it keeps the
network's answer. Windows warp by each pixel's own disparity, so a slanted surface stays one surface.

Beside a depth edge the network's answer is often off by more than the reach (its coarse stage works at an
eighth of the size), while a pixel a few steps further inside the same surface holds the right one. So after
that search each pixel also tries the answers of its neighbours :data:`PROPAGATION_STEPS_PX` away along its
row and column and keeps the one that correlates best, :data:`PROPAGATION_PASSES` times over (PatchMatch's
propagation, all pixels at once); a second search runs around that map, and a pixel takes its peak only
where it correlates higher than the first search's. Pixels that the network's answer says the right camera
cannot see take no neighbour's answer: there the windows that straddle the nearer surface would correlate
best with its shift and widen it over the hidden background. Last, each pixel that took a peak takes the median
of the :data:`MEDIAN_SIZE_PX` square around it, so that a lone wrong match takes its neighbours' answer; a pixel
that took none keeps the network's answer, as plain surfaces and occlusions must.

All of that runs twice: first on the pair at half the size (each 2x2 averaged), where a window covers four times
the area (plain surfaces match better) and the same reach twice the input's pixels, starting from the network's
answer halved; then at the full size, starting from the half size's answers doubled where it found one.

The correlation maps of one step (a search's offsets, a propagation pass's candidates) do not depend on each other,
so ``workers`` threads compute them at once (OpenCV and NumPy let go of the interpreter's lock while they work; on
these sizes OpenCV itself keeps to one core); each step then reads them in the order one thread would have, so the
answer is the same whatever the number of workers.

Beyond the paper: StereoNet's answer is the network's; this is how a robot gets most of what local
matching knows for a fraction of the network's CPU time (docs/depth_quality.md, "A local search
after the network"). NumPy and OpenCV on the host, so both backends (PyTorch, ONNX Runtime) share it.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

from stereonet_ros.geometry import hidden_from_right_view

WINDOW_RADIUS_PX: Final = 3
"""The correlation window is (2r + 1)^2 pixels of the input: 7x7."""

MIN_ZNCC: Final = 0.85
"""Least correlation of the best offset for a pixel to take it at the full size (docs/depth_quality.md for the
thresholds compared)."""

HALF_SIZE_MIN_ZNCC: Final = 0.9
"""The same at half the size, stricter: there a window covers four times the area, so one that straddles a depth
edge more often matches the nearer surface's shift beside it (at 0.85 it widened the nearer surface over the plain
farther one in the hidden-pixel test)."""

DEFAULT_REACH_PX: Final = 4
"""The reach where the network runs on the CPU: half the cost volume's 8 px between candidates. Better than the
network alone in every view of every set measured, where 8 was worse on the synthetic set's matched bad-3
(README, local search)."""

AUTO: Final = -1
"""The node's ``local_search_px`` and the CLIs' ``--local-search`` by default: :func:`reach_for` the device."""

PROPAGATION_STEPS_PX: Final = (4, 16)
"""How far along the row and the column (each way) the neighbours whose answers a pixel tries lie: eight
candidates, up to two of the coarse stage's 8 px cells away (docs/depth_quality.md for the steps compared)."""

PROPAGATION_PASSES: Final = 3
"""Each pass lets an answer travel one more step; each costs 1 + 4 len(steps) correlation maps."""

AGGREGATION_SIGMA_PX: Final = 1.5
"""The Gaussian that smooths each offset's correlation map before a search picks its peak (at either size)."""

HIDDEN_TOLERANCE_PX: Final = 1.0
"""How far a landing spot must lie left of a farther one for the network's answer to call that pixel hidden
from the right camera (:func:`~stereonet_ros.geometry.hidden_from_right_view`): no propagation into it."""

MAX_REACH_PX: Final = 16
"""The widest search: past it the step is no longer local; each of the two searches costs 2 reach + 1
correlation maps (the propagation 1 + 4 len(steps) a pass), at each size (half the size: a quarter of the
time)."""

MEDIAN_SIZE_PX: Final = 3
"""The square whose median a pixel that took a peak takes last. A k x k median erases what is narrower than
(k + 1) / 2 px: 3 keeps a 2 px pole or cable, where 5 (a little better on the synthetic set and Motorcycle, level on
Aloe) would erase it."""

WORKER_BYTES_PER_PIXEL: Final = 28
"""Memory each worker beyond the first adds to the search, per pixel of the input: the map it computes and that
map's temporaries, about six float32 maps (measured by tracemalloc: up to 22 bytes at 0.3-0.5 MP with 5 workers, 25
at 3 MP with 9; the search itself holds about 140 on one thread)."""

EXTRA_WORKERS_MEMORY_BYTES: Final = 512 * 2 ** 20
"""The most memory the workers beyond the first may add: at 4 MP (the node's pixel budget) that allows 5 workers,
at 1280x720 21, at 640x480 63 (more than a step's maps: 9 at the default reach)."""

_MIN_VARIANCE: Final = 1e-6
"""Floor on a window's variance (grey levels squared) so a flat window correlates 0, not 0 / 0."""

_WINDOW_CENTRES: Final = np.zeros((2 * WINDOW_RADIUS_PX + 1,) * 2, np.uint8)
"""Where the five windows that hold a pixel are centred, relative to it: on it and the window's radius away along
each axis."""
_WINDOW_CENTRES[WINDOW_RADIUS_PX, [0, WINDOW_RADIUS_PX, 2 * WINDOW_RADIUS_PX]] = 1
_WINDOW_CENTRES[[0, 2 * WINDOW_RADIUS_PX], WINDOW_RADIUS_PX] = 1


def reach_for(requested: int, device_type: str) -> int:
    """The reach to search: ``requested``, or for :data:`AUTO` :data:`DEFAULT_REACH_PX` where the network runs on
    the CPU and 0 elsewhere. The search runs on the host: beside a CPU network it costs a fifth to a third of its
    time, beside a GPU one more than the network (0.4 s at 640x480, 1.2 s at 1280x720 on two cores)."""
    if requested == AUTO:
        return DEFAULT_REACH_PX if device_type == 'cpu' else 0
    return requested


def workers_within_memory(pixels: int, workers: int) -> int:
    """``workers``, or fewer where the extra ones would hold more than :data:`EXTRA_WORKERS_MEMORY_BYTES` on an
    input of ``pixels`` pixels (:data:`WORKER_BYTES_PER_PIXEL` each); at least 1."""
    return max(1, min(workers, 1 + EXTRA_WORKERS_MEMORY_BYTES // (WORKER_BYTES_PER_PIXEL * max(pixels, 1))))


def _best_window(correlation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Each pixel's best correlation over the windows that hold it: centred on it and moved by the window's radius
    along each axis (the image's edge repeated beyond it)."""
    import cv2

    # A grey dilation by the five centres: the same maximum as five shifted copies, in a fifth of the time.
    return cv2.dilate(np.ascontiguousarray(correlation, np.float32), _WINDOW_CENTRES,
                      borderType=cv2.BORDER_REPLICATE)  # type: ignore[no-any-return]


_Input = TypeVar('_Input')
_Output = TypeVar('_Output')


class _Maps:
    """Computes a step's maps: in this thread, or ``workers`` at once on a pool (module doc)."""

    def __init__(self, pool: Executor | None, workers: int) -> None:
        self._pool, self._workers = pool, workers

    def each(self, function: Callable[[_Input], _Output], inputs: Sequence[_Input]) -> Iterator[_Output]:
        """``function`` of each input, in the inputs' order. On a pool at most ``workers`` are computed ahead of
        the one being read, so that only as many maps as there are workers are held besides what the caller keeps.
        """
        if self._pool is None:
            yield from map(function, inputs)
            return
        pending: deque[Future[_Output]] = deque()
        for item in inputs:
            pending.append(self._pool.submit(function, item))
            if len(pending) > self._workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_ONE_THREAD: Final = _Maps(None, 1)


class _Correlation:
    """Each pixel's ZNCC of its window in the left image with the right image warped by a disparity map, the best
    of the five windows that hold it (:func:`_best_window`); -1 where the match lies outside the right image
    (the replicated border would correlate with anything)."""

    def __init__(self, left: npt.NDArray[np.float32], right: npt.NDArray[np.float32]) -> None:
        import cv2

        self._cv2 = cv2
        self._left, self._right = np.ascontiguousarray(left, np.float32), np.ascontiguousarray(right, np.float32)
        height, width = self._left.shape
        self._columns = np.arange(width, dtype=np.float32)[np.newaxis, :]
        self._rows = np.ascontiguousarray(np.broadcast_to(np.arange(height, dtype=np.float32)[:, np.newaxis],
                                                          (height, width)))
        self._left_mean = self._box(self._left)
        self._left_variance = np.maximum(self._box(self._left * self._left) - self._left_mean * self._left_mean,
                                         _MIN_VARIANCE)

    def _box(self, values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        size = (2 * WINDOW_RADIUS_PX + 1,) * 2
        return self._cv2.boxFilter(values, -1, size, borderType=self._cv2.BORDER_REFLECT_101)  # type: ignore

    def __call__(self, disparity: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        # 45 of these per pair at reach 4: written in place, the same operations in the same order as the plain
        # formula (zncc = (box(l w) - mean_l mean_w) / sqrt(var_l var_w)), a tenth less time than with temporaries.
        cv2 = self._cv2
        source = np.ascontiguousarray(self._columns - disparity, np.float32)
        warped = cv2.remap(self._right, source, self._rows, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        right_mean = self._box(warped)
        right_variance = self._box(warped * warped)
        right_variance -= right_mean * right_mean
        np.maximum(right_variance, _MIN_VARIANCE, out=right_variance)
        zncc = self._box(self._left * warped)
        right_mean *= self._left_mean
        zncc -= right_mean
        right_variance *= self._left_variance
        zncc /= np.sqrt(right_variance, out=right_variance)
        np.copyto(zncc, np.float32(-1.0), where=(source < 0) | (source > self._right.shape[1] - 1))
        return _best_window(zncc)


def _smoothed(correlation: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A correlation map smoothed by the Gaussian of :data:`AGGREGATION_SIGMA_PX` (the image's edge repeated beyond
    it): how the search smooths each offset's map, and how :func:`photometric_agreement` smooths its one."""
    import cv2

    return cv2.GaussianBlur(correlation, (0, 0), AGGREGATION_SIGMA_PX, borderType=cv2.BORDER_REPLICATE)


def _check_one_size(function: str, disparity: npt.NDArray[np.float32], left: npt.NDArray[np.float32],
                    right: npt.NDArray[np.float32]) -> None:
    """Raises ValueError (naming ``function``) unless the three are one ``(H, W)`` size."""
    if not (disparity.shape == left.shape == right.shape and disparity.ndim == 2):
        raise ValueError(f'{function}: disparity {disparity.shape}, left {left.shape} and right {right.shape} '
                         'must be one (H, W) size')


def _searched(correlation: _Correlation, start: npt.NDArray[np.float32], usable: npt.NDArray[np.bool_], reach: int,
              max_disparity: float, min_zncc: float,
              maps: _Maps) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The search around ``start``: each pixel's moved answer (clamped to ``max_disparity``) and its own correlation
    at the peak where it takes one; ``start`` and -inf elsewhere. The peak and its parabola are the smoothed maps'
    (:data:`AGGREGATION_SIGMA_PX`); the threshold ``min_zncc`` is on the pixel's own correlation."""
    offsets = np.arange(-reach, reach + 1)
    smoothed = np.empty((offsets.size, *start.shape), np.float32)
    # The peak's offset and the pixel's own correlation there, kept as the peak rises (strictly: argmax's first
    # maximum), so that only the smoothed maps (and those the workers are computing) are held.
    highest = np.full(start.shape, -np.inf, np.float32)
    own_peak = np.full(start.shape, -np.inf, np.float32)
    best = np.zeros(start.shape, np.intp)  # argmax's index along the offsets, as it rises

    def own_and_smoothed(offset: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        own = correlation(start + np.float32(offset))
        return own, _smoothed(own)

    for index, (own, smoothed_own) in enumerate(maps.each(own_and_smoothed, offsets.tolist())):
        smoothed[index] = smoothed_own
        higher = smoothed_own > highest
        # copyto(where=) rather than boolean indexing: no index arrays, and the lock let go (module doc).
        np.copyto(highest, smoothed_own, where=higher)
        np.copyto(own_peak, own, where=higher)
        np.copyto(best, index, where=higher)
    peak = highest  # the smoothed maps' value at ``best``
    interior = (best > 0) & (best < offsets.size - 1)
    inner = np.clip(best, 1, offsets.size - 2)[np.newaxis]
    before = np.take_along_axis(smoothed, inner - 1, axis=0)[0]
    after = np.take_along_axis(smoothed, inner + 1, axis=0)[0]
    curvature = before - 2 * peak + after  # < 0 at a strict peak
    sharp = curvature < 0
    # The parabola's vertex; between the neighbours, within half a pixel of the peak when it is the largest.
    vertex = np.where(sharp, 0.5 * (before - after) / np.where(sharp, curvature, -1.0), 0.0).clip(-0.5, 0.5)
    moved = (start + offsets[best] + vertex).astype(np.float32)
    take = usable & interior & sharp & (own_peak >= min_zncc) & (moved > 0)
    answer = np.where(take, np.minimum(moved, np.float32(max_disparity)), start).astype(np.float32)
    return answer, np.where(take, own_peak, -np.inf).astype(np.float32)


def _propagated(correlation: _Correlation, start: npt.NDArray[np.float32], movable: npt.NDArray[np.bool_],
                maps: _Maps) -> npt.NDArray[np.float32]:
    """``start`` where each ``movable`` pixel took the answer of the neighbour (:data:`PROPAGATION_STEPS_PX` away
    along its row or column, the image's edge repeated beyond it) that correlates best, if better than its own."""
    pad = max(PROPAGATION_STEPS_PX)
    height, width = start.shape
    padded = np.pad(start, pad, mode='edge')
    shifts = [(rows, columns) for step in PROPAGATION_STEPS_PX
              for rows, columns in ((0, step), (0, -step), (step, 0), (-step, 0))]

    def scored(shift: tuple[int, int]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        rows, columns = shift
        candidate = np.ascontiguousarray(padded[pad + rows:pad + rows + height, pad + columns:pad + columns + width])
        return candidate, correlation(candidate)

    answers = maps.each(scored, [(0, 0), *shifts])
    _, best = next(answers)  # the start's own
    answer = start.copy()
    for candidate, score in answers:
        better = movable & (candidate > 0) & (score > best)
        np.copyto(answer, candidate, where=better)
        np.copyto(best, score, where=better)
    return answer


def _median_where_found(answer: npt.NDArray[np.float32], found: npt.NDArray[np.bool_],
                        max_disparity: float) -> npt.NDArray[np.float32]:
    """``answer`` where each ``found`` pixel took the median of the :data:`MEDIAN_SIZE_PX` square around it (the
    image's edge repeated beyond it; unusable answers count as 0 there, and a median not above 0 is not taken).
    Why only there: the search's answers are the ones it measured, and a pixel it did not move keeps the network's
    answer for the rest of the pipeline to judge (docs/depth_quality.md, "A median, a search at half the size, the
    threshold")."""
    import cv2

    usable = np.isfinite(answer) & (answer > 0)
    median = cv2.medianBlur(np.where(usable, answer, 0).astype(np.float32), MEDIAN_SIZE_PX)
    take = found & (median > 0)
    result = answer.copy()
    result[take] = np.minimum(median[take], np.float32(max_disparity))
    return result


def _one_size(start: npt.NDArray[np.float32], usable: npt.NDArray[np.bool_], left: npt.NDArray[np.float32],
              right: npt.NDArray[np.float32], reach: int, max_disparity: float, min_zncc: float,
              maps: _Maps) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """The search, propagation, second search and median at one size (module doc): the answer and where a search
    took a peak. ``start`` holds 0 where not ``usable``; elsewhere the answer is ``start`` where nothing was found."""
    correlation = _Correlation(left, right)
    searched, peak = _searched(correlation, start, usable, reach, max_disparity, min_zncc, maps)
    movable = usable & ~hidden_from_right_view(np.where(usable, start, np.nan), HIDDEN_TOLERANCE_PX)
    propagated = searched
    for _ in range(PROPAGATION_PASSES):
        propagated = _propagated(correlation, propagated, movable, maps)
    changed = propagated != searched
    if changed.any():
        from_neighbours, neighbours_peak = _searched(correlation, propagated, changed, reach, max_disparity,
                                                     min_zncc, maps)
        better = changed & (neighbours_peak > peak)
        searched = np.where(better, from_neighbours, searched)
        peak = np.where(better, neighbours_peak, peak)
    found = usable & (peak > -np.inf)
    return _median_where_found(searched, found, max_disparity), found


def _from_half_size(start: npt.NDArray[np.float32], usable: npt.NDArray[np.bool_], left: npt.NDArray[np.float32],
                    right: npt.NDArray[np.float32], reach: int, max_disparity: float,
                    maps: _Maps) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """``start`` where the search at half the size (images averaged 2x2, each pixel's start the top-left one of its
    2x2 halved) found an answer, that answer doubled on the 2x2 it came from; and where it did. Nothing found
    where the half-size image is too small for a window."""
    import cv2

    height, width = start.shape
    half = (width // 2, height // 2)
    if min(half) < 2 * WINDOW_RADIUS_PX + 1:
        return start, np.zeros(start.shape, bool)
    half_start = cv2.resize(start, half, interpolation=cv2.INTER_NEAREST) / np.float32(2)
    half_usable = cv2.resize(usable.astype(np.uint8), half, interpolation=cv2.INTER_NEAREST).astype(bool)
    half_left, half_right = (cv2.resize(image, half, interpolation=cv2.INTER_AREA) for image in (left, right))
    answer, found = _one_size(half_start, half_usable, half_left, half_right, reach, max_disparity / 2,
                              HALF_SIZE_MIN_ZNCC, maps)
    up_found = cv2.resize(found.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    up_found &= usable
    up_answer = cv2.resize(answer, (width, height), interpolation=cv2.INTER_NEAREST) * np.float32(2)
    return np.where(up_found, up_answer, start).astype(np.float32), up_found


def local_search(disparity: npt.NDArray[np.float32], left: npt.NDArray[np.float32], right: npt.NDArray[np.float32],
                 reach: int, max_disparity: float, *, workers: int = 1) -> npt.NDArray[np.float32]:
    """``disparity`` moved, pixel by pixel, to the best-correlating shift near it or near its neighbours' answers,
    first at half the size and then at the full one (module doc).

    Args:
        disparity: ``(H, W)`` float32 left-view shift in pixels of the input (the network's answer).
        left, right: ``(H, W)`` float32 grey images of the pair, any affine intensity scale (ZNCC ignores it).
        reach: offsets searched, ``-reach .. reach`` whole pixels of each size (so up to ``2 reach`` px of the input
            at half the size); 0 returns ``disparity`` unchanged.
        max_disparity: the largest shift the answer may take (the network's range in input pixels).
        workers: threads that compute each step's correlation maps at once (module doc): the same answer for any
            number, in less time where there are cores for them; fewer on a large input
            (:func:`workers_within_memory`).

    Returns:
        A new ``(H, W)`` float32 array; a pixel not finite or not above 0 in ``disparity``, or where no search
        found an interior peak of at least :data:`MIN_ZNCC` (:data:`HALF_SIZE_MIN_ZNCC` at half the size), keeps
        its value. Moved values lie in ``(0, max_disparity]``.

    Raises:
        ValueError: shapes differ, ``reach`` is outside ``[0, MAX_REACH_PX]`` or ``workers`` is below 1.
    """
    _check_one_size('local_search', disparity, left, right)
    if not 0 <= reach <= MAX_REACH_PX:
        raise ValueError(f'local_search: reach {reach} px is outside [0, {MAX_REACH_PX}]')
    if workers < 1:
        raise ValueError(f'local_search: workers {workers} must be at least 1')
    answer = np.array(disparity, dtype=np.float32, copy=True)
    if reach == 0:
        return answer
    left, right = np.ascontiguousarray(left, np.float32), np.ascontiguousarray(right, np.float32)
    usable = np.isfinite(answer) & (answer > 0)
    start = np.where(usable, answer, 0).astype(np.float32)
    workers = workers_within_memory(answer.size, workers)
    with ThreadPoolExecutor(workers, thread_name_prefix='local_search') if workers > 1 else nullcontext() as pool:
        maps = _Maps(pool, workers) if pool is not None else _ONE_THREAD
        start, found_at_half = _from_half_size(start, usable, left, right, reach, max_disparity, maps)
        searched, found = _one_size(start, usable, left, right, reach, max_disparity, MIN_ZNCC, maps)
    moved = found | found_at_half
    answer[moved] = searched[moved]
    return answer


def photometric_agreement(disparity: npt.NDArray[np.float32], left: npt.NDArray[np.float32],
                          right: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """How well each pixel's answer matches the images: ``(1 + ZNCC) / 2`` of its window at that answer (the best of
    the five that hold it, smoothed as the search smooths its maps), in ``[0, 1]``: 1 = the windows match exactly,
    0.5 = no relation (a plain window correlates 0), 0 = one is the other inverted or the match lies outside the right
    image. 0 where the answer is not finite or not above 0.

    Why: the network's matching confidence cannot tell a good answer from one the search left wrong; the windows can,
    except on repeated texture, where a whole period off still matches (docs/depth_quality.md, "The search's
    confidence").

    Raises:
        ValueError: shapes differ or are not ``(H, W)``.
    """
    _check_one_size('photometric_agreement', disparity, left, right)
    usable = np.isfinite(disparity) & (disparity > 0)
    correlation = _Correlation(left, right)(np.where(usable, disparity, 0).astype(np.float32))
    agreement = np.clip((1 + _smoothed(correlation)) / 2, 0, 1).astype(np.float32)
    agreement[~usable] = 0
    return agreement
