"""Write a bag evaluation's report: ``metrics.json``, ``per_frame.csv``, ``report.md``, ``report.html``, pictures.

Everything is first written into a staging folder inside the output folder and moved into place only
when complete (:class:`ReportFolder`), ``metrics.json`` last; a run that fails leaves no new report
file behind (and a previous report, if any, untouched).

``report.html`` is self-contained: its pictures are embedded as base64 PNGs. ``report.md`` links the
same pictures in ``pictures/``. Every colour-mapped picture carries its colour bar, with the colours it
uses outside the scale (black: no ground truth, or no value; magenta: no prediction where there is ground
truth, which the scores leave out of every error and show in the density).
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from stereonet_ros.evaluation.bag_eval import (ERROR_HISTOGRAM_EDGES, ERROR_MAP_MAX, OUTPUT_TOPICS,
                                               EvaluationResult, FrameResult, Showcase)
from stereonet_ros.evaluation.charts import (RGB, ChartError, histogram_chart, histogram_of, line_chart, point_chart,
                                             with_colour_bar)
from stereonet_ros.evaluation.evaluate import OURS, REFERENCE
from stereonet_ros.evaluation.metrics import DepthMetrics, DisparityMetrics
from stereonet_ros.evaluation.views import VIEWS
from stereonet_ros.geometry import reproject_to_3d
from stereonet_ros.image_io import ImageWriteError, colorize_disparity, write_png

REPORT_FILES = ('pictures', 'per_frame.csv', 'report.md', 'report.html', 'metrics.json')
"""What a report consists of, in the order it is moved into place (``metrics.json`` last)."""
OUTPUT_BAG_NAME = 'output_bag'
"""Folder name of the ``--write-bag`` output (a rosbag2 bag, mcap storage) inside the report folder."""
PICTURE_MAX_WIDTH = 640

CSV_COLUMNS = ('bag', 'index', 'stamp_ns', 'width', 'height', 'status', 'gt_kind', 'model_ms', 'epe', 'bad1',
               'bad2', 'bad3', 'd1', 'density', 'valid_pixels', 'abs_rel', 'rmse_m', 'completeness', 'note',
               'latency_ms', 'mae_m')
NO_VALUE_RGB: RGB = (0, 0, 0)
"""Pictures' colour for "nothing here": no ground truth (error map, ground truth), no value (disparity maps)."""
NO_PREDICTION_RGB: RGB = (255, 0, 255)
"""Error maps' colour for a pixel with ground truth but no prediction: scored as bad (bad-N, D1), so shown
apart from "no ground truth". Magenta is no turbo colour."""
GT_POINTS_RGB: RGB = (160, 160, 160)
PREDICTED_POINTS_RGB: RGB = (214, 39, 40)
BOTH_POINTS_RGB: RGB = (31, 119, 180)
BAG_METHOD_NAMES = {OURS: 'stereonet', REFERENCE: "SGBM (stereo_image_proc's parameters)"}


class ReportError(Exception):
    """The report cannot be written (output folder unusable, disk error)."""


@dataclass(frozen=True)
class RunInfo:
    """What produced the numbers; shown at the top of every report."""

    checkpoint: str  # path given, or 'bundled default'
    checkpoint_note: str  # provenance note ('' if none)
    placeholder: bool  # the untrained placeholder network ran: disparities are meaningless
    device: str
    command: str
    git_sha: str
    created: str  # ISO 8601, UTC
    precision: str = 'fp32'  # inference precision (the Predictor's / the node's parameter)


STAGING_PREFIX = '.partial-report-'
"""Staging folders are ``.partial-report-<pid>-<random>``: the pid tells whether their writer still runs."""


def _remove_abandoned_staging(folder: Path) -> None:
    """Remove staging folders whose writer died (SIGKILL, power loss) before it could clean up.

    A folder whose pid is alive is another run's and is left alone; one without a pid (an older
    version's) or with a dead pid is abandoned.
    """
    for staging in folder.glob(f'{STAGING_PREFIX}*'):
        pid_text = staging.name[len(STAGING_PREFIX):].partition('-')[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    except (OverflowError, OSError):
        return False
    return True


class ReportFolder:
    """Stage a report inside ``folder`` and publish it atomically per file on :meth:`publish`.

    >>> with ReportFolder(out) as staging:          # doctest: +SKIP
    ...     write_report(result, info, staging.path)
    ...     staging.publish()

    Leaving the block without :meth:`publish` (an error) removes the staging folder.

    Raises:
        ReportError: ``folder`` exists and is not a folder, or cannot be created.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._staging: Path | None = None

    def __enter__(self) -> ReportFolder:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_staging(self.folder)
            self._staging = Path(tempfile.mkdtemp(prefix=f'{STAGING_PREFIX}{os.getpid()}-', dir=self.folder))
        except (FileExistsError, NotADirectoryError) as err:
            raise ReportError(f'--out {self.folder}: exists and is not a folder') from err
        except OSError as err:
            raise ReportError(f'--out {self.folder}: cannot create: {err.strerror or err}') from err
        return self

    @property
    def path(self) -> Path:
        if self._staging is None:
            raise ReportError('ReportFolder is not open')
        return self._staging

    def publish(self, extra: tuple[str, ...] = ()) -> None:
        """Move the staged files into the folder, replacing a previous report; ``metrics.json`` goes last."""
        staging = self.path
        names = [name for name in (*extra, *REPORT_FILES) if (staging / name).exists()]
        try:
            for name in (*extra, *REPORT_FILES):
                target = self.folder / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
            for name in names:
                os.replace(staging / name, self.folder / name)
        except OSError as err:
            raise ReportError(f'cannot move the report into {self.folder}: {err}') from err

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


# --- numbers -----------------------------------------------------------------------------------------

def _finite(value: float) -> float | None:
    """JSON has no NaN: NaN and inf become null."""
    return float(value) if math.isfinite(value) else None


def timing_summary(result: EvaluationResult) -> dict[str, float | int | None]:
    """Model time per frame (ms: p50, p95, mean, max), model throughput and end-to-end throughput (fps);
    through the node, end-to-end latency per answered pair (ms: p50, p95, mean, max) instead of model time."""
    latencies = np.asarray(result.latency_ms, dtype=np.float64)
    latency: dict[str, float | int | None] = {'frames_with_latency': int(latencies.size)}
    for name, value in (('p50', 50.0), ('p95', 95.0)):
        latency[f'latency_ms_{name}'] = float(np.percentile(latencies, value)) if latencies.size else None
    latency['latency_ms_mean'] = float(latencies.mean()) if latencies.size else None
    latency['latency_ms_max'] = float(latencies.max()) if latencies.size else None
    times = np.asarray(result.model_ms, dtype=np.float64)
    frames_run = int(times.size)
    if frames_run == 0:
        return {'frames_timed': 0, 'model_ms_p50': None, 'model_ms_p95': None, 'model_ms_mean': None,
                'model_ms_max': None, 'model_fps': None, 'end_to_end_fps': None, 'wall_seconds': result.wall_seconds,
                **latency}
    total_s = float(times.sum()) / 1e3
    return {'frames_timed': frames_run,
            'model_ms_p50': float(np.percentile(times, 50)), 'model_ms_p95': float(np.percentile(times, 95)),
            'model_ms_mean': float(times.mean()), 'model_ms_max': float(times.max()),
            'model_fps': frames_run / total_s if total_s > 0 else None,
            'end_to_end_fps': frames_run / result.wall_seconds if result.wall_seconds > 0 else None,
            'wall_seconds': result.wall_seconds, **latency}


def _scores(disparity: DisparityMetrics | None, depth: DepthMetrics | None) -> dict[str, Any]:
    """The score keys of ``metrics.json``, for the total and for each bag (null where not scored)."""
    return {
        'epe': _finite(disparity.epe) if disparity else None,
        'bad1': _finite(disparity.bad1) if disparity else None,
        'bad2': _finite(disparity.bad2) if disparity else None,
        'bad3': _finite(disparity.bad3) if disparity else None,
        'd1': _finite(disparity.d1) if disparity else None,
        'density': _finite(disparity.density) if disparity else None,
        'valid_pixels': disparity.valid_pixels if disparity else 0,
        'depth_abs_rel': _finite(depth.abs_rel) if depth else None,
        'depth_mae_m': _finite(depth.mae) if depth else None,
        'depth_rmse_m': _finite(depth.rmse) if depth else None,
        'depth_completeness': _finite(depth.completeness) if depth else None,
    }


def _json_values(values: dict[str, Any]) -> dict[str, Any]:
    return {key: (_finite(value) if isinstance(value, float) else value) for key, value in values.items()}


def depth_by_range_document(result: EvaluationResult) -> dict[str, Any] | None:
    """``metrics.json``'s ``depth_by_range``: per method, one entry per bin of the ground-truth depth."""
    if not result.depth_by_range:
        return None
    edges = result.depth_edges
    methods = {}
    for method, bins in result.depth_by_range.items():
        rows = []
        for low, high, counts in zip(edges[:-1], edges[1:], bins, strict=True):
            scores = counts.metrics()
            rows.append({'min_m': low, 'max_m': _finite(high), 'valid_pixels': scores.valid_pixels,
                         'predicted_pixels': scores.predicted_pixels, 'completeness': _finite(scores.completeness),
                         'mae_m': _finite(scores.mae), 'rmse_m': _finite(scores.rmse),
                         'abs_rel': _finite(scores.abs_rel)})
        methods[method] = rows
    return {'binned_by': 'ground-truth depth, metres; a bin is [min_m, max_m), max_m null = open-ended',
            'edges_m': [_finite(edge) for edge in edges], 'methods': methods}


def baseline_document(result: EvaluationResult) -> dict[str, Any] | None:
    """``metrics.json``'s ``baseline``: what ran, and each method's three views over the scored frames."""
    if result.baseline is None:
        return None
    views = {}
    for method, scores in result.views.items():
        views[method] = {view: _json_values(asdict(scores.views[view].metrics())) if view in scores.views else None
                         for view in VIEWS}
    sgbm = result.views.get(REFERENCE)
    return {**result.baseline, 'views': views,
            'sgbm_ms_mean': (sgbm.seconds * 1e3 / sgbm.frames) if sgbm is not None and sgbm.frames else None,
            'view_rules': {'dense': 'holes filled (KITTI devkit: row-wise min of the nearest valid neighbours), every '
                                    'valid-ground-truth pixel scored',
                           'answered': 'each method scored where it answered; density = answered / valid',
                           'matched': f'{OURS} thinned to its most confident pixels down to {REFERENCE}\'s density on '
                                      'each frame (null without confidence, e.g. through the node)'}}


def metrics_document(result: EvaluationResult, info: RunInfo) -> dict[str, Any]:
    """The content of ``metrics.json`` (NaN written as null)."""
    skipped = [{'bag': f.bag, 'index': f.index, 'stamp_ns': f.stamp_ns, 'status': f.status, 'reason': f.note}
               for f in result.frames if f.status in ('skipped', 'dropped') or (f.status == 'no-gt' and f.note)]
    document: dict[str, Any] = {
        'frames': len(result.frames),
        'frames_evaluated': result.count('scored') + result.count('no-gt'),
        'frames_scored': result.count('scored'),
        'frames_skipped': result.count('skipped'),
        'frames_dropped': result.count('dropped'),
        **_scores(result.disparity, result.depth),
        'per_frame_mean': ({k: (_finite(v) if isinstance(v, float) else v)
                            for k, v in asdict(result.disparity_per_frame).items()}
                           if result.disparity_per_frame else None),
        'timing': timing_summary(result),
        'units': {'disparity': 'pixels of left-view image shift (the network output; DisparityImage values plus '
                               'cx_left - cx_right)',
                  'epe': 'pixels', 'bad1': 'percent', 'd1': 'percent', 'depth_rmse_m': 'metres',
                  'depth_mae_m': 'metres',
                  'depth_completeness': 'fraction of ground-truth pixels with a predicted depth'},
        'depth_by_range': depth_by_range_document(result),
        'baseline': baseline_document(result),
        'source': result.source,
        'checkpoint': {'path': info.checkpoint, 'placeholder': info.placeholder, 'note': info.checkpoint_note},
        'device': info.device,
        'precision': info.precision,
        'bags': [{'path': b.path, 'topics': b.topics, **asdict(b.counters), 'frames_scored': b.frames_scored,
                  **_scores(b.disparity, b.depth)} for b in result.bags],
        'replay': asdict(result.config),
        'skipped': skipped,
        'command': info.command,
        'git_sha': info.git_sha,
        'created': info.created,
    }
    document.update(result.extra)
    return document


def _csv_value(value: float | int | str | None) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return '' if not math.isfinite(value) else f'{value:.6g}'
    return str(value)


def _frame_row(frame: FrameResult) -> list[str]:
    d, z = frame.disparity, frame.depth
    values: list[float | int | str | None] = [
        frame.bag, frame.index, frame.stamp_ns, frame.width, frame.height, frame.status, frame.gt_kind,
        frame.model_ms, d.epe if d else None, d.bad1 if d else None, d.bad2 if d else None, d.bad3 if d else None,
        d.d1 if d else None, d.density if d else None, d.valid_pixels if d else None,
        z.abs_rel if z else None, z.rmse if z else None, z.completeness if z else None, frame.note,
        frame.latency_ms, z.mae if z else None]
    return [_csv_value(v) for v in values]


# --- pictures ------------------------------------------------------------------------------------------

def _fit_width(picture: npt.NDArray[np.uint8], nearest: bool) -> npt.NDArray[np.uint8]:
    height, width = picture.shape[:2]
    if width <= PICTURE_MAX_WIDTH:
        return picture
    size = (PICTURE_MAX_WIDTH, max(1, round(height * PICTURE_MAX_WIDTH / width)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(picture).resize(size, resample), dtype=np.uint8).copy()


def error_map(shift: npt.ArrayLike, gt_shift: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """``|prediction - ground truth|`` coloured with turbo from 0 px to :data:`ERROR_MAP_MAX` px (and beyond);
    black (:data:`NO_VALUE_RGB`) where there is no ground truth, magenta (:data:`NO_PREDICTION_RGB`) where
    there is ground truth but no prediction (left out of every error, shown in the density). ``(H, W, 3)`` uint8.

    The pixels are those of :func:`~stereonet_ros.evaluation.metrics.disparity_error_counts` (default rules):
    scored = finite ground truth; missing = a non-finite prediction there.
    """
    prediction = np.asarray(shift, dtype=np.float32)
    truth = np.asarray(gt_shift, dtype=np.float32)
    error = np.abs(prediction - truth)  # NaN = none
    picture = colorize_disparity(error, vmin=0.0, vmax=ERROR_MAP_MAX)
    picture[np.isfinite(truth) & ~np.isfinite(prediction)] = NO_PREDICTION_RGB
    return picture


ERROR_SWATCHES: tuple[tuple[RGB, str], ...] = ((NO_VALUE_RGB, 'no ground truth'),
                                               (NO_PREDICTION_RGB, 'no prediction'))


def _disparity_picture(shift: npt.ArrayLike, vmax: float, none: str) -> npt.NDArray[np.uint8]:
    return with_colour_bar(_fit_width(colorize_disparity(shift, vmin=0.0, vmax=vmax), nearest=True), 0.0, vmax,
                           'disparity (px)', ((NO_VALUE_RGB, none),))


def _error_picture(shift: npt.ArrayLike, truth: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    return with_colour_bar(_fit_width(error_map(shift, truth), nearest=True), 0.0, ERROR_MAP_MAX,
                           f'|error| (px, >= {ERROR_MAP_MAX:g} at the end)', ERROR_SWATCHES)


def birds_eye(showcase: Showcase) -> npt.NDArray[np.uint8] | None:
    """The predicted point cloud seen from above (x right, z forward, metres, left optical frame) against the
    ground truth's, on the pixels that have ground truth (all predicted pixels without it); None without a
    camera or without a finite point."""
    camera = showcase.camera
    if camera is None:
        return None
    predicted = reproject_to_3d(showcase.shift - np.float32(camera.principal_offset), camera)  # (H, W, 3)
    series: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {}
    reference = predicted
    truth = showcase.gt_shift
    if truth is not None and np.isfinite(truth).any():
        truth_points = reproject_to_3d(truth - np.float32(camera.principal_offset), camera)  # (H, W, 3)
        known = np.isfinite(truth_points[:, :, 2])  # (H, W)
        series['ground truth only'] = (truth_points[known][:, 0], truth_points[known][:, 2])
        predicted = predicted[known]  # (N, 3): the same pixels
        reference = truth_points[known]
    predicted = predicted.reshape(-1, 3)  # (N, 3)
    series['prediction only' if series else 'prediction'] = (predicted[:, 0], predicted[:, 2])
    reference = reference.reshape(-1, 3)
    reference = reference[np.isfinite(reference[:, 2])]
    if reference.shape[0] == 0:
        return None
    # The view covers both clouds (a prediction off the truth shows), but never more than twice the truth's
    # extent: a few wild points must not shrink the scene to a dot.
    shown = predicted[np.isfinite(predicted[:, 2])]
    x_low, x_high = (float(v) for v in np.percentile(reference[:, 0], (1.0, 99.0)))
    z_high = float(np.percentile(reference[:, 2], 99.0))
    if shown.shape[0]:
        width = x_high - x_low
        x_low = max(min(x_low, float(np.percentile(shown[:, 0], 1.0))), x_low - width / 2)
        x_high = min(max(x_high, float(np.percentile(shown[:, 0], 99.0))), x_high + width / 2)
        z_high = min(max(z_high, float(np.percentile(shown[:, 2], 99.0))), 2.0 * z_high)
    z_high *= 1.1
    if not (z_high > 0 and x_high > x_low):
        return None
    colours = (GT_POINTS_RGB, PREDICTED_POINTS_RGB) if len(series) == 2 else (PREDICTED_POINTS_RGB,)
    try:
        return point_chart(series, 'Point cloud from above', 'x, right (m)', 'z, forward (m)', (x_low, x_high),
                           (0.0, z_high), colours=colours,
                           overlap=(BOTH_POINTS_RGB, 'both') if len(series) == 2 else None)
    except ChartError:
        return None


def _showcase_pictures(showcase: Showcase) -> list[tuple[str, str, npt.NDArray[np.uint8]]]:
    """(file stem, caption, picture) for one showcased frame."""
    truth = showcase.gt_shift
    reference = truth if truth is not None and np.isfinite(truth).any() else showcase.shift
    finite = reference[np.isfinite(reference)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    pictures = [('left', 'left input', _fit_width(showcase.left_rgb, nearest=False)),
                ('disparity', f'predicted disparity (turbo, 0 to {vmax:.0f} px; black = none)',
                 _disparity_picture(showcase.shift, vmax, 'none'))]
    if showcase.confidence is not None:
        pictures.append(('confidence', 'matching confidence of the prediction (0 to 1; the matched view keeps the '
                         'most confident pixels)',
                         with_colour_bar(_fit_width(colorize_disparity(showcase.confidence, vmin=0.0, vmax=1.0),
                                                    nearest=True), 0.0, 1.0, 'confidence')))
    if truth is not None:
        pictures.append(('gt', 'ground truth (same scale; black = none)',
                         _disparity_picture(truth, vmax, 'no ground truth')))
        pictures.append(('error', f'|error| (0 px blue to >= {ERROR_MAP_MAX:.0f} px red; black = no ground truth; '
                         'magenta = no prediction: not in EPE or bad-N, it lowers the density)',
                         _error_picture(showcase.shift, truth)))
    if showcase.baseline_shift is not None:
        pictures.append(('sgbm', "SGBM with stereo_image_proc's parameters (same scale; black = no match)",
                         _disparity_picture(showcase.baseline_shift, vmax, 'no match')))
        if truth is not None:
            pictures.append(('sgbm_error', 'SGBM |error| (same scale; black = no ground truth; magenta = no match '
                             'where there is ground truth: a hole, filled in the dense view, left out of the answered '
                             'one)',
                             _error_picture(showcase.baseline_shift, truth)))
    view = birds_eye(showcase)
    if view is not None:
        with_truth = truth is not None and np.isfinite(truth).any()
        pictures.append(('birdseye', 'point cloud seen from above (x right, z forward, metres, left optical frame): '
                         + ('gray = ground truth only, red = prediction only, blue = both in the same plot '
                            'pixel; on the pixels with ground truth'
                            if with_truth else 'the prediction'), view))
    return pictures


@dataclass(frozen=True)
class _Picture:
    path: str  # relative to the report folder
    caption: str


def _write_pictures(result: EvaluationResult, folder: Path) -> tuple[list[tuple[str, list[_Picture]]], list[_Picture]]:
    """Write every picture; return the showcased frames' pictures and the charts."""
    pictures = folder / 'pictures'
    pictures.mkdir()
    frames: list[tuple[str, list[_Picture]]] = []
    for number, showcase in enumerate(result.showcases):
        entries = []
        for stem, caption, picture in _showcase_pictures(showcase):
            name = f'pictures/frame{number}_{stem}.png'
            write_png(folder / name, picture)
            entries.append(_Picture(name, caption))
        title = showcase.title + (f' (EPE {showcase.epe:.2f} px)' if math.isfinite(showcase.epe) else '')
        frames.append((title, entries))
    charts: list[_Picture] = []

    def chart(name: str, caption: str, picture: npt.NDArray[np.uint8]) -> None:
        write_png(folder / f'pictures/{name}.png', picture)
        charts.append(_Picture(f'pictures/{name}.png', caption))

    scored = [f for f in result.frames if f.disparity is not None]
    if result.disparity is not None:
        chart('error_histogram', 'Absolute disparity error over every scored pixel (last bin: >= 16 px); '
              'dashed: the bad-1/2/3 thresholds',
              histogram_chart(result.error_histogram, ERROR_HISTOGRAM_EDGES, 'Disparity error histogram',
                              '|prediction - ground truth| (px)', marks=(1.0, 2.0, 3.0)))
        x = np.arange(len(scored), dtype=np.float64)
        chart('per_frame_epe', 'EPE per scored frame, in replay order',
              line_chart(x, {'EPE': [f.disparity.epe for f in scored if f.disparity]}, 'EPE per frame',
                         'scored frame', 'EPE (px)', integer_x=True))
        chart('per_frame_bad', 'bad-1/2/3 and D1 per scored frame',
              line_chart(x, {'bad-1': [f.disparity.bad1 for f in scored if f.disparity],
                             'bad-2': [f.disparity.bad2 for f in scored if f.disparity],
                             'bad-3': [f.disparity.bad3 for f in scored if f.disparity],
                             'D1': [f.disparity.d1 for f in scored if f.disparity]},
                         'Outliers per frame', 'scored frame', 'percent of pixels', integer_x=True))
    times = result.model_ms
    if times:
        run = [f for f in result.frames if math.isfinite(f.model_ms)]
        chart('per_frame_time', 'Model time per frame, in replay order',
              line_chart(np.arange(len(run), dtype=np.float64), {'model time': [f.model_ms for f in run]},
                         'Model time per frame', 'frame', 'ms', integer_x=True))
        try:
            chart('timing_histogram', 'Model time per frame (warm-up runs excluded)',
                  histogram_of(times, 'Model time histogram', 'model time per frame (ms)', bins=20))
        except ChartError:
            pass
    latencies = result.latency_ms
    if latencies:
        answered = [f for f in result.frames if math.isfinite(f.latency_ms)]
        chart('per_frame_latency', 'End-to-end latency per answered pair (input published to disparity received), '
              'in replay order',
              line_chart(np.arange(len(answered), dtype=np.float64), {'latency': [f.latency_ms for f in answered]},
                         'Latency through the node', 'answered pair', 'ms', integer_x=True))
    return frames, charts


# --- documents ----------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 2, suffix: str = '') -> str:
    return '-' if value is None or not math.isfinite(value) else f'{value:.{digits}f}{suffix}'


def _summary_rows(result: EvaluationResult, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    timing = metrics['timing']
    rows = [('frames (pairs)', str(metrics['frames'])),
            ('evaluated / scored against ground truth', f"{metrics['frames_evaluated']} / {metrics['frames_scored']}"),
            ('skipped / dropped', f"{metrics['frames_skipped']} / {metrics['frames_dropped']}")]
    if result.disparity is not None:
        rows += [('EPE', _fmt(metrics['epe'], 3, ' px')), ('bad-1', _fmt(metrics['bad1'], 2, ' %')),
                 ('bad-2', _fmt(metrics['bad2'], 2, ' %')), ('bad-3', _fmt(metrics['bad3'], 2, ' %')),
                 ('D1', _fmt(metrics['d1'], 2, ' %')),
                 ('density (predicted / ground-truth pixels)', _fmt(metrics['density'], 4)),
                 ('pixels with ground truth', str(metrics['valid_pixels'])),
                 ('depth AbsRel', _fmt(metrics['depth_abs_rel'], 4)),
                 ('depth MAE', _fmt(metrics['depth_mae_m'], 3, ' m')),
                 ('depth RMSE', _fmt(metrics['depth_rmse_m'], 3, ' m')),
                 ('depth completeness', _fmt(metrics['depth_completeness'], 4))]
    if timing['frames_timed']:
        rows += [('model time p50 / p95',
                  f"{_fmt(timing['model_ms_p50'], 1)} / {_fmt(timing['model_ms_p95'], 1)} ms"),
                 ('throughput: model / end to end',
                  f"{_fmt(timing['model_fps'], 2)} / {_fmt(timing['end_to_end_fps'], 2)} frames/s")]
    if timing['frames_with_latency']:
        rows += [('end-to-end latency p50 / p95 (through the node)',
                  f"{_fmt(timing['latency_ms_p50'], 1)} / {_fmt(timing['latency_ms_p95'], 1)} ms"),
                 ('answered / dropped by the node',
                  f"{timing['frames_with_latency']} / {metrics['frames_dropped']}")]
    return rows


@dataclass(frozen=True)
class _Table:
    title: str
    caption: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]


def _range_label(low: float | None, high: float | None) -> str:
    return f'{low:g} m and beyond' if high is None else f'{low:g} to {high:g} m'


def _tables(result: EvaluationResult, metrics: dict[str, Any]) -> list[_Table]:
    """The per-bag breakdown (several bags), depth by range and the three views beside the baseline."""
    tables = []
    if len(metrics['bags']) > 1 and result.disparity is not None:
        header = ('bag', 'pairs scored', 'EPE px', 'bad-1 %', 'bad-3 %', 'D1 %', 'density', 'depth AbsRel',
                  'depth MAE m', 'depth RMSE m', 'depth completeness')

        def row(name: str, scored: int, m: dict[str, Any]) -> tuple[str, ...]:
            return (name, str(scored), _fmt(m['epe'], 3), _fmt(m['bad1'], 2), _fmt(m['bad3'], 2), _fmt(m['d1'], 2),
                    _fmt(m['density'], 4), _fmt(m['depth_abs_rel'], 4), _fmt(m['depth_mae_m'], 3),
                    _fmt(m['depth_rmse_m'], 3), _fmt(m['depth_completeness'], 4))

        rows = [row(Path(b['path']).name, b['frames_scored'], b) for b in metrics['bags']]
        rows.append(row('all (pixel-weighted)', metrics['frames_scored'], metrics))
        tables.append(_Table('Per bag', 'Each bag scored on its own pixels; the last row weighs every pixel of '
                             'every bag once (the summary above).', header, rows))
    by_range = metrics.get('depth_by_range')
    if by_range and result.disparity is not None:
        methods = list(by_range['methods'])
        header = ('ground-truth depth', 'pixels with ground truth')
        for method in methods:
            prefix = '' if len(methods) == 1 else f'{BAG_METHOD_NAMES.get(method, method).split(" ")[0]} '
            header += (f'{prefix}completeness', f'{prefix}MAE m', f'{prefix}RMSE m', f'{prefix}AbsRel')
        rows = []
        for index, first in enumerate(by_range['methods'][methods[0]]):
            if not first['valid_pixels']:
                continue
            cells: tuple[str, ...] = (_range_label(first['min_m'], first['max_m']), str(first['valid_pixels']))
            for method in methods:
                b = by_range['methods'][method][index]
                cells += (_fmt(b['completeness'], 4), _fmt(b['mae_m'], 3), _fmt(b['rmse_m'], 3),
                          _fmt(b['abs_rel'], 4))
            rows.append(cells)
        tables.append(_Table(
            'Depth by range', 'Binned by the ground-truth depth (`Z = f * T / d` with the camera infos\' f and T); '
            'completeness: the fraction of those pixels with a predicted depth; MAE / RMSE in metres over the pixels '
            'with both. A stereo depth error grows with the square of the range for a given disparity error. Bins '
            'without ground truth are left out (`metrics.json` has them all).', header, rows))
    baseline = metrics.get('baseline')
    if baseline:
        header = ('method', 'view', 'EPE px', 'bad-1 %', 'bad-2 %', 'bad-3 %', 'D1 %', 'density', 'pixels scored')
        rows = []
        for method, views in baseline['views'].items():
            for view in VIEWS:
                v = views.get(view)
                if v is None:
                    rows.append((BAG_METHOD_NAMES.get(method, method), view, *(['-'] * 7)))
                    continue
                rows.append((BAG_METHOD_NAMES.get(method, method), view, _fmt(v['epe'], 3), _fmt(v['bad1'], 2),
                             _fmt(v['bad2'], 2), _fmt(v['bad3'], 2), _fmt(v['d1'], 2), _fmt(v['density'], 4),
                             str(v['scored_pixels'])))
        params = baseline['params']
        ranges = ', '.join(str(n) for n in baseline['num_disparities']) or '-'
        tables.append(_Table(
            'Beside SGBM (stereo_image_proc\'s parameters)',
            'Both on the same pairs and ground-truth pixels, every metric over one set of pixels per view: **dense** '
            '(the headline): holes filled as the KITTI devkit does (row-wise, the smaller of the nearest valid values '
            'left and right), every pixel scored; **answered**: each method where it answered, with its density; '
            '**matched**: ours keeps its most confident pixels down to SGBM\'s density on each frame (`-` without '
            f'a confidence, e.g. through the node). SGBM: OpenCV StereoSGBM on the gray images, block '
            f'{params["block_size"]}, P1 {params["p1"]}, P2 {params["p2"]}, uniqueness {params["uniqueness_ratio"]}, '
            f'speckle window {params["speckle_size"]} / range {params["speckle_range"]}, prefilter cap '
            f'{params["prefilter_cap"]}, disp12MaxDiff {params["disp12_max_diff"]}, disparities 0 to {ranges} '
            f'(the network\'s range, narrowed to fit narrow images); '
            f'{_fmt(baseline["sgbm_ms_mean"], 1)} ms per pair on average.', header, rows))
    return tables


def _markdown_table(table: _Table) -> list[str]:
    return (['', f'## {table.title}', '', table.caption, '', '| ' + ' | '.join(table.header) + ' |',
             '|' + ' --- |' * len(table.header)] + ['| ' + ' | '.join(row) + ' |' for row in table.rows])


def _html_table(table: _Table) -> str:
    head = ''.join(f'<th>{html.escape(cell)}</th>' for cell in table.header)
    rows = ''.join('<tr>' + ''.join(f'<td>{html.escape(cell)}</td>' for cell in row) + '</tr>' for row in table.rows)
    return (f'<h2>{html.escape(table.title)}</h2><p>{_inline_markdown(table.caption)}</p>'
            f'<table><tr>{head}</tr>{rows}</table>')


def _notes(result: EvaluationResult, info: RunInfo) -> list[str]:
    notes = []
    if info.placeholder:
        notes.append('**The network is the UNTRAINED placeholder (random weights): its disparities are meaningless '
                     'and so are these scores.** Pass a trained checkpoint with `--checkpoint`.')
    if result.disparity is None:
        notes.append('No ground truth was scored (no `--gt-topic`, or none matched): the error parts are left out.')
    notes += result.notes
    notes.append('Disparity is compared as the left-view image shift in pixels (what the network predicts); '
                 'DisparityImage values are that minus `cx_left - cx_right`. Depth is `f * T / d` from the camera '
                 'infos. EPE, bad-N (percentage with error above N px) and D1 (above 3 px and 5 %) are over the '
                 'ground-truth pixels that have a prediction; density is the share of ground-truth pixels that do.')
    return notes


def _skipped_lines(metrics: dict[str, Any], limit: int = 50) -> list[str]:
    lines = [f"{Path(s['bag']).name} #{s['index']} (stamp {s['stamp_ns']}): {s['status']}, {s['reason']}"
             for s in metrics['skipped']]
    if len(lines) > limit:
        lines = lines[:limit] + [f'... and {len(lines) - limit} more (per_frame.csv has them all)']
    return lines


def _bag_lines(metrics: dict[str, Any]) -> list[str]:
    return [f"{b['path']}: {b['pairs']} pair{'s' if b['pairs'] != 1 else ''} from {b['input_messages']} input messages "
            f"({b['unpaired_messages']} unpaired), ground truth {b['gt_matched']} of {b['gt_messages']} matched"
            for b in metrics['bags']]


def _markdown(result: EvaluationResult, info: RunInfo, metrics: dict[str, Any],
              frames: list[tuple[str, list[_Picture]]], charts: list[_Picture], output_bag: str | None) -> str:
    lines = ['# Stereo depth on recorded bags', '']
    lines += [f'- {note}' for note in _notes(result, info)]
    lines += ['', '## Run', '',
              f'- Source: {result.source}', f'- Device: `{info.device}`, precision `{info.precision}`',
              f'- Checkpoint: `{info.checkpoint}`' + (f' ({info.checkpoint_note})' if info.checkpoint_note else ''),
              f'- Command: `{info.command}`', f'- Git: `{info.git_sha}`; created {info.created}']
    lines += [f'- Bag: {line}' for line in _bag_lines(metrics)]
    if output_bag:
        lines.append(f'- Output bag: `{output_bag}` (mcap: {", ".join(OUTPUT_TOPICS.values())})')
    lines += ['', '## Summary', '', '| | |', '| --- | --- |']
    lines += [f'| {name} | {value} |' for name, value in _summary_rows(result, metrics)]
    for table in _tables(result, metrics):
        lines += _markdown_table(table)
    skipped = _skipped_lines(metrics)
    if skipped:
        lines += ['', '## Skipped', ''] + [f'- {line}' for line in skipped]
    for title, pictures in frames:
        lines += ['', f'## {title}', '']
        lines += [f'![{p.caption}]({p.path})  ' + '\n' + f'*{p.caption}*' + '\n' for p in pictures]
    if charts:
        lines += ['', '## Charts', '']
        lines += [f'![{p.caption}]({p.path})' + '\n' + f'*{p.caption}*' + '\n' for p in charts]
    lines += ['', 'Per-frame numbers: `per_frame.csv`; all numbers: `metrics.json`.', '']
    return '\n'.join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em}.frames{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0}figcaption{font-size:85%;color:#555;max-width:640px}img{max-width:100%}code{background:#f4f4f4}"""


def _inline_markdown(text: str) -> str:
    """The little markdown the notes use (``code`` and **bold**) as HTML, everything else escaped."""
    escaped = html.escape(text)
    parts = escaped.split('`')
    escaped = ''.join(f'<code>{part}</code>' if i % 2 else part for i, part in enumerate(parts))
    parts = escaped.split('**')
    return ''.join(f'<b>{part}</b>' if i % 2 else part for i, part in enumerate(parts))


def _html(result: EvaluationResult, info: RunInfo, metrics: dict[str, Any], folder: Path,
          frames: list[tuple[str, list[_Picture]]], charts: list[_Picture], output_bag: str | None) -> str:
    def image(picture: _Picture) -> str:
        data = base64.b64encode((folder / picture.path).read_bytes()).decode('ascii')
        caption = html.escape(picture.caption)
        return (f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                f'<figcaption>{caption}</figcaption></figure>')

    esc = html.escape
    body = ['<h1>Stereo depth on recorded bags</h1>']
    for note in _notes(result, info):
        css = ' class="warn"' if 'UNTRAINED' in note else ''
        body.append(f'<p{css}>{_inline_markdown(note)}</p>')
    run = [f'Source: {esc(result.source)}',
           f'Device: <code>{esc(info.device)}</code>, precision <code>{esc(info.precision)}</code>',
           f'Checkpoint: <code>{esc(info.checkpoint)}</code> {esc(info.checkpoint_note)}',
           f'Command: <code>{esc(info.command)}</code>',
           f'Git: <code>{esc(info.git_sha)}</code>; created {esc(info.created)}']
    run += [f'Bag: {esc(line)}' for line in _bag_lines(metrics)]
    if output_bag:
        run.append(f'Output bag: <code>{esc(output_bag)}</code> (mcap: {esc(", ".join(OUTPUT_TOPICS.values()))})')
    body.append('<h2>Run</h2><ul>' + ''.join(f'<li>{item}</li>' for item in run) + '</ul>')
    body.append('<h2>Summary</h2><table>' + ''.join(
        f'<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>' for name, value in _summary_rows(result, metrics))
        + '</table>')
    body += [_html_table(table) for table in _tables(result, metrics)]
    skipped = _skipped_lines(metrics)
    if skipped:
        body.append('<h2>Skipped</h2><ul>' + ''.join(f'<li>{esc(line)}</li>' for line in skipped) + '</ul>')
    for title, pictures in frames:
        body.append(f'<h2>{esc(title)}</h2><div class="frames">' + ''.join(image(p) for p in pictures) + '</div>')
    if charts:
        body.append('<h2>Charts</h2><div class="frames">' + ''.join(image(p) for p in charts) + '</div>')
    body.append('<p>Per-frame numbers: <code>per_frame.csv</code>; all numbers: <code>metrics.json</code>.</p>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>stereonet bag evaluation</title>'
            f'<style>{_CSS}</style></head><body>\n' + '\n'.join(body) + '\n</body></html>\n')


def write_report(result: EvaluationResult, info: RunInfo, folder: str | os.PathLike[str],
                 output_bag: str | None = None) -> dict[str, Any]:
    """Write the report files (:data:`REPORT_FILES`) into ``folder`` (normally a :class:`ReportFolder`'s
    staging path) and return the ``metrics.json`` document.

    Raises:
        ReportError: a file cannot be written.
    """
    target = Path(folder)
    metrics = metrics_document(result, info)
    try:
        frames, charts = _write_pictures(result, target)
        with open(target / 'per_frame.csv', 'w', newline='', encoding='utf-8') as stream:
            writer = csv.writer(stream)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(_frame_row(frame) for frame in result.frames)
        (target / 'report.md').write_text(_markdown(result, info, metrics, frames, charts, output_bag),
                                          encoding='utf-8')
        (target / 'report.html').write_text(_html(result, info, metrics, target, frames, charts, output_bag),
                                            encoding='utf-8')
        (target / 'metrics.json').write_text(json.dumps(metrics, indent=2, allow_nan=False) + '\n', encoding='utf-8')
    except (OSError, ImageWriteError) as err:
        raise ReportError(f'cannot write the report in {target}: {err}') from err
    return metrics
