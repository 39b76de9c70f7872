"""Score disparity on recorded bags: replay, run a disparity source, accumulate metrics and timing.

The source of disparity is a :class:`DisparitySource`: :class:`PredictorSource` runs the network in this
process; :class:`~stereonet_ros.evaluation.through_node.NodeSource` serves what the ROS node published
when the bag was played into it over DDS (``None`` = the pair got no answer: dropped, counted as such).

Timing is the model time per frame, measured around :meth:`~stereonet_ros.inference.Predictor.infer`
(preprocessing, resizing to the inference scale, padding, forward, unpadding, resizing back, copy back)
with ``time.perf_counter``; the first pair of every image size is run once untimed first (warm-up:
allocator, kernels), so that p50/p95 describe the steady state. Throughput is frames per second of model
time, and end to end (reading, decoding, scoring and writing included) over the wall time. The model time
includes the matching confidence (asked for with the disparity, in the same pass), which the report shows.

Besides the pixel-weighted total, scores are kept per bag, and depth errors per range bin of the
ground-truth depth (:func:`~stereonet_ros.evaluation.metrics.depth_range_counts`). With a
:class:`SgbmBaseline`, OpenCV SGBM with stereo_image_proc's parameters runs on the same pairs and both
methods are scored in the three views of :mod:`~stereonet_ros.evaluation.views` (dense with KITTI hole
filling, answered with density, matched density: ours thinned by its confidence to SGBM's density).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from stereonet_ros.evaluation.bagio import BagWriter, camera_info_messages, image_message, node_output_messages
from stereonet_ros.evaluation.evaluate import OURS, REFERENCE, MethodScores
from stereonet_ros.evaluation.metrics import (DEPTH_RANGE_EDGES, DepthErrorCounts, DepthMetricAccumulator,
                                              DepthMetrics, DisparityErrorCounts, DisparityMetrics, MetricAccumulator,
                                              check_range_edges, depth_error_counts, depth_range_counts,
                                              disparity_error_counts)
from stereonet_ros.evaluation.replay import (BagReplay, ReplayConfig, ReplayCounters, ReplayError, ReplayFrame,
                                             SkippedPair, shift_to_depth)
from stereonet_ros.evaluation.views import dense_method_views, three_views
from stereonet_ros.camera import StereoCamera
from stereonet_ros.inference import (InputError, Predictor, check_inference_scale, check_local_search,
                                     check_min_confidence)
from stereonet_ros.node_config import NodeConfig
from stereonet_ros.processing import OutputSelection, postprocess, with_confident_only
from stereonet_ros.sgbm import STEREO_IMAGE_PROC_SGBM, SgbmParams, fitting_range, sgbm_disparity

if TYPE_CHECKING:
    from stereonet_ros.onnx_backend import OnnxPredictor

F32 = npt.NDArray[np.float32]

ERROR_HISTOGRAM_EDGES: npt.NDArray[np.float64] = np.linspace(0.0, 16.0, 65)
"""Bins of the absolute disparity error histogram, pixels (0.25 px wide); larger errors go in the last bin."""
ERROR_MAP_MAX = 8.0
"""Error maps colour 0 px blue to >= this many pixels red."""

# Output topics of --write-bag: the node's outputs, plus the left view for context in a viewer.
OUTPUT_TOPICS = {'disparity': '/disparity', 'points2': '/points2', 'depth': '/depth',
                 'left_image': '/left/image_rect', 'left_info': '/left/camera_info'}


@dataclass(frozen=True)
class SourceResult:
    """A source's answer for one pair."""

    shift: F32  # (H, W) float32 left-view image shift, pixels; NaN = no value
    seconds: float  # time the disparity took (model time), seconds; NaN when the source cannot tell
    latency_s: float = math.nan  # input published -> output received (through the node), seconds; NaN = n/a
    max_shift: float = math.nan  # the largest shift the source can express, input pixels; NaN = the run's default
    confidence: F32 | None = None  # (H, W) float32 in [0, 1], higher = more trusted; None = the source has none


class DisparitySource(Protocol):
    """Turns a replayed pair into disparity; ``None`` means the pair got no answer (dropped)."""

    @property
    def description(self) -> str:
        """One line for the report: what produced the disparity."""
        ...

    @property
    def drop_reason(self) -> str:
        """Why a pair answered with ``None`` got no disparity (the per-frame note of a dropped pair)."""
        ...

    def __call__(self, frame: ReplayFrame) -> SourceResult | None: ...


class PredictorSource:
    """The network run directly on each pair at ``scale`` (and the local search within ``local_search`` px, then the
    SGBM fallback and the occlusion fill unless ``sgbm_fallback`` / ``fill_occlusions`` is false, and the left-right
    check with ``left_right_check``), timed around
    :meth:`Predictor.infer`, with its matching confidence when the predictor has one (an ONNX model only when
    exported with it); with ``min_confidence`` > 0, a hole where the confidence is below it (the node's rule,
    :func:`~stereonet_ros.processing.confident`).

    Raises:
        InputError: (on construction) ``scale`` or ``local_search`` is outside the predictor's range,
            ``min_confidence`` outside [0, 1], or above 0 for a model without confidence.
    """

    def __init__(self, predictor: Predictor | OnnxPredictor, warmup: bool = True, scale: float = 1.0,
                 local_search: int = 0, min_confidence: float = 0.0, sgbm_fallback: bool = True,
                 fill_occlusions: bool = True, left_right_check: bool = False) -> None:
        self.predictor = predictor
        self.left_right_check = left_right_check
        self.sgbm_fallback = sgbm_fallback
        self.fill_occlusions = fill_occlusions
        self.warmup = warmup
        self.scale = check_inference_scale(scale)
        self.local_search = check_local_search(local_search)
        self.min_confidence = check_min_confidence(min_confidence)
        if self.min_confidence > 0.0 and not predictor.has_confidence:
            raise InputError(f'min confidence {min_confidence} needs a model with a confidence output (an ONNX '
                             'model exported with --confidence)')
        self._warm_sizes: set[tuple[int, int]] = set()

    drop_reason = 'no disparity for this pair'

    @property
    def description(self) -> str:
        at_scale = f' at inference scale {self.scale:g}' if self.scale != 1.0 else ''
        return f'model run directly (Predictor.infer){at_scale} on {self.predictor.device}'

    def __call__(self, frame: ReplayFrame) -> SourceResult:
        size = frame.left.shape[:2]
        if self.warmup and size not in self._warm_sizes:
            self.predictor.infer(frame.left, frame.right, scale=self.scale)  # untimed warm-up for this size
            self._warm_sizes.add(size)
        start = time.perf_counter()
        answer = self.predictor.infer(frame.left, frame.right, scale=self.scale,
                                      with_confidence=self.predictor.has_confidence, local_search=self.local_search,
                                      sgbm_fallback=self.sgbm_fallback, fill_occlusions=self.fill_occlusions,
                                      left_right_check=self.left_right_check)
        disparity = with_confident_only(answer.disparity, answer.confidence, self.min_confidence)
        return SourceResult(disparity, time.perf_counter() - start, max_shift=answer.max_disparity,
                            confidence=answer.confidence)


class SgbmBaseline:
    """OpenCV SGBM with stereo_image_proc's parameters (:data:`~stereonet_ros.sgbm.STEREO_IMAGE_PROC_SGBM`), run on the
    gray left and right images of every pair the source answered (``--baseline sgbm``).

    Its search range is the network's (``max_disparity``, image-shift pixels of the input) rounded up to a
    multiple of 16, narrowed where the image is too narrow for OpenCV (:func:`~stereonet_ros.sgbm.fitting_range`); it
    searches shifts from 0, as stereo_image_proc with ``min_disparity`` 0.
    """

    name = REFERENCE

    def __init__(self, max_disparity: float, params: SgbmParams = STEREO_IMAGE_PROC_SGBM) -> None:
        self.max_disparity = float(max_disparity)
        self.params = params
        self.ranges: set[int] = set()  # numDisparities used, for the report

    def range_for(self, width: int) -> int:
        return fitting_range(self.max_disparity, width, self.params.block_size)

    def __call__(self, left_rgb: npt.NDArray[np.uint8], right_rgb: npt.NDArray[np.uint8]) -> tuple[F32, float]:
        """``(H, W)`` shift (NaN = no match) and seconds, from :func:`display_rgb` images; all NaN (and NaN
        seconds) where the image is too narrow for SGBM to run."""
        height, width = left_rgb.shape[:2]
        disparities = self.range_for(width)
        if disparities == 0:
            return np.full((height, width), np.nan, dtype=np.float32), math.nan
        self.ranges.add(disparities)
        start = time.perf_counter()
        shift = sgbm_disparity(left_rgb.astype(np.float32), right_rgb.astype(np.float32), self.params, disparities)
        return shift, time.perf_counter() - start

    def describe(self) -> dict[str, Any]:
        """What ran, for ``metrics.json``."""
        return {'method': self.name, 'params': dataclasses.asdict(self.params),
                'num_disparities': sorted(self.ranges), 'min_disparity': 0,
                'input': 'gray images (the luma of colour pairs), as stereo_image_proc matches'}


@dataclass(frozen=True)
class FrameResult:
    """One row of ``per_frame.csv``."""

    bag: str
    index: int  # pair index within the bag
    stamp_ns: int
    width: int
    height: int
    status: str  # 'scored', 'no-gt' (evaluated, not scored), 'skipped' (pair unusable), 'dropped' (no answer)
    note: str  # why not scored / skipped, else ''
    gt_kind: str  # 'disparity', 'depth-32FC1', 'depth-16UC1' or ''
    model_ms: float  # NaN when the pair was not run
    disparity: DisparityMetrics | None
    depth: DepthMetrics | None
    latency_ms: float = math.nan  # through the node: input published -> disparity received; NaN = n/a


@dataclass
class Showcase:
    """Arrays for the report's pictures of one frame."""

    title: str
    left_rgb: npt.NDArray[np.uint8]  # (H, W, 3)
    shift: F32  # (H, W) prediction, image shift px
    gt_shift: F32 | None  # (H, W) ground truth, image shift px, NaN = none
    epe: float = math.nan
    confidence: F32 | None = None  # (H, W) in [0, 1]; None = the source gave none
    baseline_shift: F32 | None = None  # (H, W) SGBM's shift, px, NaN = no match; None = no baseline
    camera: StereoCamera | None = None  # for the point cloud seen from above


@dataclass(frozen=True)
class BagSummary:
    path: str
    topics: dict[str, str]
    counters: ReplayCounters
    frames_scored: int = 0
    disparity: DisparityMetrics | None = None  # pixel-weighted over this bag's scored frames; None = none scored
    depth: DepthMetrics | None = None


@dataclass
class EvaluationResult:
    """Everything the report shows."""

    source: str
    config: ReplayConfig
    frames: list[FrameResult] = field(default_factory=list)
    bags: list[BagSummary] = field(default_factory=list)
    disparity: DisparityMetrics | None = None  # pixel-weighted over scored frames; None without ground truth
    disparity_per_frame: DisparityMetrics | None = None  # mean of the frames' own metrics
    depth: DepthMetrics | None = None
    error_histogram: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(len(ERROR_HISTOGRAM_EDGES) - 1, dtype=np.int64))
    showcases: list[Showcase] = field(default_factory=list)
    depth_edges: tuple[float, ...] = DEPTH_RANGE_EDGES  # metres, range bins of the ground-truth depth
    depth_by_range: dict[str, list[DepthErrorCounts]] = field(default_factory=dict)  # method -> one per bin
    views: dict[str, MethodScores] = field(default_factory=dict)  # with a baseline: method -> three views
    baseline: dict[str, Any] | None = None  # what the baseline ran (SgbmBaseline.describe()); None = no baseline
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # extra lines for the report's notes (markdown)
    extra: dict[str, Any] = field(default_factory=dict)  # extra metrics.json sections (JSON values)

    @property
    def model_ms(self) -> list[float]:
        return [frame.model_ms for frame in self.frames if math.isfinite(frame.model_ms)]

    @property
    def latency_ms(self) -> list[float]:
        return [frame.latency_ms for frame in self.frames if math.isfinite(frame.latency_ms)]

    def count(self, status: str) -> int:
        return sum(frame.status == status for frame in self.frames)


def display_rgb(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """A model input image (gray or RGB; uint8, uint16 or float 0..255) as ``(H, W, 3)`` uint8 for pictures."""
    values = np.asarray(image)
    if values.dtype == np.uint16:
        values = values.astype(np.float32) * np.float32(255.0 / 65535.0)
    rgb = np.clip(np.rint(values), 0, 255).astype(np.uint8) if values.dtype != np.uint8 else values
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, np.newaxis], 3, axis=2)  # (H, W, 3)
    return np.ascontiguousarray(rgb[:, :, :3])


BAG_OUTPUTS = OutputSelection(disparity=True, depth=True, points=True, confidence=False, disparity_color=False)


def write_frame_outputs(bag: BagWriter, frame: ReplayFrame, shift: F32, max_shift: float,
                        node_config: NodeConfig | None = None) -> None:
    """Write one frame's ``/disparity``, ``/points2`` (coloured), ``/depth`` and left view at its stamp.

    The outputs are what the node publishes with ``node_config`` (default: its default parameters): the
    same :func:`~stereonet_ros.processing.postprocess`, so validity, ``valid_window`` and the message fields
    match. ``min_confidence`` cannot apply (a replayed shift has no confidence).
    """
    camera = frame.camera
    config = node_config if node_config is not None else NodeConfig()
    stamp = frame.stamp_ns
    rgb = display_rgb(frame.left)
    outputs = postprocess(shift, None, max_shift, camera, config, BAG_OUTPUTS, rgb)
    messages = node_output_messages(outputs, camera, stamp)
    for key in ('disparity', 'points2', 'depth'):
        bag.write(OUTPUT_TOPICS[key], messages[key], stamp)
    encoding = 'rgb8' if frame.left.ndim == 3 else 'mono8'
    left = rgb if encoding == 'rgb8' else rgb[:, :, 0]
    bag.write(OUTPUT_TOPICS['left_image'], image_message(np.ascontiguousarray(left), encoding, stamp, camera.frame_id),
              stamp)
    bag.write(OUTPUT_TOPICS['left_info'], camera_info_messages(camera, stamp)[0], stamp)


def check_bags(paths: Sequence[str | Path], config: ReplayConfig) -> int:
    """Open every bag and check its topics before any work; return the expected number of pairs.

    Raises:
        ReplayError: the first bag that cannot be replayed (message says why).
    """
    if not paths:
        raise ReplayError('no bag given')
    total = 0
    for path in paths:
        with BagReplay(path, config) as replay:
            total += replay.expected_pairs
    return total


def bags_image_transport(paths: Sequence[str | Path], config: ReplayConfig) -> str:
    """``raw`` when every bag's left and right images are sensor_msgs/Image, ``compressed`` when all are
    CompressedImage: the ``image_transport`` a node must have to be played these bags.

    Raises:
        ReplayError: a bag cannot be opened, or the bags (or one bag's two sides) mix the two.
    """
    seen: dict[str, str] = {}
    for path in paths:
        with BagReplay(path, config) as replay:
            for topic, compressed in zip(replay.input_topics[:2], replay.compressed, strict=True):
                seen[f'{path}: {topic}'] = 'compressed' if compressed else 'raw'
    kinds = set(seen.values())
    if len(kinds) > 1:
        listing = ', '.join(f'{name} ({kind})' for name, kind in seen.items())
        raise ReplayError(f'the bags mix raw and compressed images, which one node with one image_transport cannot '
                          f'read: {listing}')
    return kinds.pop() if kinds else 'raw'


def evaluate_bags(paths: Sequence[str | Path], config: ReplayConfig, source: DisparitySource, *,
                  max_disparity: float = 192.0, output_bag: BagWriter | None = None, progress: bool | None = None,
                  max_frames: int | None = None, on_frame: Callable[[FrameResult], None] | None = None,
                  baseline: SgbmBaseline | None = None,
                  depth_edges: Sequence[float] = DEPTH_RANGE_EDGES) -> EvaluationResult:
    """Replay ``paths`` in order, run ``source`` on every pair, score against ground truth where there is some.

    Args:
        paths: rosbag2 bags (folders or their ``.mcap`` / ``.db3`` files).
        config: topics and pairing rules.
        source: what computes the disparity.
        max_disparity: the model's range, image-shift pixels of the input (DisparityImage bounds in the output
            bag), for sources whose answers do not give their own (``SourceResult.max_shift``).
        output_bag: where to write ``/disparity``, ``/points2``, ``/depth`` per frame, if given.
        progress: tqdm progress bar on stderr; ``None`` = only on a terminal.
        max_frames: stop after this many pairs (all bags together), if given.
        on_frame: called with each frame's result as it is done.
        baseline: also run this matcher on every answered pair and score both in the three views.
        depth_edges: range bins of the ground-truth depth, metres (``result.depth_by_range``).

    Raises:
        ReplayError: a bag cannot be replayed (checked for every bag before the first frame runs), or no
            pair could be evaluated at all.
        MetricsError: ``depth_edges`` are unusable (:func:`~.metrics.check_range_edges`).
    """
    from tqdm import tqdm

    edges = check_range_edges(list(depth_edges))
    expected = check_bags(paths, config)
    if max_frames is not None:
        expected = min(expected, max_frames)
    result = EvaluationResult(source=source.description, config=config, depth_edges=edges)
    disparity_scores = MetricAccumulator()
    depth_scores = DepthMetricAccumulator()
    worst: Showcase | None = None
    start = time.perf_counter()
    with tqdm(total=expected, unit='pair', desc='stereonet-eval-bag', disable=(not progress) if progress is not None
              else None, leave=False) as bar:
        for path in paths:
            if max_frames is not None and len(result.frames) >= max_frames:
                break
            with BagReplay(path, config) as replay:
                first_of_bag = True
                bag_disparity, bag_depth = MetricAccumulator(), DepthMetricAccumulator()
                for item in replay.frames():
                    frame_result, showcase, counts = _evaluate_item(item, source, baseline, result, output_bag,
                                                                    max_disparity)
                    if counts is not None:  # the total and this bag's, from one scoring of the frame
                        disparity_scores.add_counts(counts[0])
                        bag_disparity.add_counts(counts[0])
                        depth_scores.add_counts(counts[1])
                        bag_depth.add_counts(counts[1])
                    result.frames.append(frame_result)
                    if on_frame is not None:
                        on_frame(frame_result)
                    bar.update(1)
                    if showcase is not None:
                        if first_of_bag:
                            showcase.title = f'{Path(path).name}, first pair (#{frame_result.index})'
                            result.showcases.append(showcase)
                            first_of_bag = False
                        if math.isfinite(showcase.epe) and (worst is None or showcase.epe > worst.epe):
                            worst = dataclasses.replace(
                                showcase, title=f'{Path(path).name}, pair #{frame_result.index}: largest EPE')
                    if max_frames is not None and len(result.frames) >= max_frames:
                        break
                scored = len(bag_disparity.frames)
                result.bags.append(BagSummary(
                    str(path), replay.topics, replay.counters, frames_scored=scored,
                    disparity=bag_disparity.total() if scored else None, depth=bag_depth.total() if scored else None))
    result.wall_seconds = time.perf_counter() - start
    if worst is not None and all(s.shift is not worst.shift for s in result.showcases):
        result.showcases.append(worst)
    if baseline is not None:
        result.baseline = baseline.describe()
    if not any(frame.status in ('scored', 'no-gt') for frame in result.frames):
        reasons = sorted({frame.note for frame in result.frames if frame.note})
        detail = f': {"; ".join(reasons[:3])}' if reasons else ' (no synchronized pair in the bags)'
        raise ReplayError(f'no stereo pair could be evaluated{detail}')
    if len(disparity_scores.frames) and disparity_scores.total().valid_pixels > 0:
        result.disparity = disparity_scores.total()
        result.disparity_per_frame = disparity_scores.per_frame_mean()
        result.depth = depth_scores.total()
    return result


def _evaluate_item(item: ReplayFrame | SkippedPair, source: DisparitySource, baseline: SgbmBaseline | None,
                   result: EvaluationResult, output_bag: BagWriter | None, max_disparity: float,
                   ) -> tuple[FrameResult, Showcase | None, tuple[DisparityErrorCounts, DepthErrorCounts] | None]:
    """Run and score one pair; add its histogram, range bins and views into ``result``; return its row, its
    pictures' arrays and (when scored) its disparity and depth error totals for the accumulators."""
    bag = str(item.bag)
    if isinstance(item, SkippedPair):
        return FrameResult(bag, item.index, item.stamp_ns, 0, 0, 'skipped', item.reason, '', math.nan, None,
                           None), None, None
    height, width = item.left.shape[:2]
    answer = source(item)
    if answer is None:
        return FrameResult(bag, item.index, item.stamp_ns, width, height, 'dropped', source.drop_reason,
                           '', math.nan, None, None), None, None
    shift = answer.shift
    if output_bag is not None:
        max_shift = answer.max_shift if math.isfinite(answer.max_shift) else max_disparity
        write_frame_outputs(output_bag, item, shift, max_shift)
    truth = item.ground_truth
    left_rgb = display_rgb(item.left)
    baseline_shift, baseline_seconds = (None, math.nan) if baseline is None else baseline(left_rgb,
                                                                                           display_rgb(item.right))
    showcase = Showcase('', left_rgb, shift, truth.shift if truth is not None else None,
                        confidence=answer.confidence, baseline_shift=baseline_shift, camera=item.camera)
    latency_ms = answer.latency_s * 1e3
    if truth is None:
        return FrameResult(bag, item.index, item.stamp_ns, width, height, 'no-gt', item.gt_note or '', '',
                           answer.seconds * 1e3, None, None, latency_ms), showcase, None
    disparity_counts = disparity_error_counts(shift, truth.shift)  # the accumulators' (default) rules
    depth = shift_to_depth(shift, item.camera)
    depth_counts = depth_error_counts(depth, truth.depth)
    valid = np.isfinite(truth.shift) & np.isfinite(shift)
    error = np.abs(shift[valid] - truth.shift[valid]).astype(np.float64)
    counts, _ = np.histogram(np.minimum(error, ERROR_HISTOGRAM_EDGES[-1]), bins=ERROR_HISTOGRAM_EDGES)
    result.error_histogram += counts
    depths = {OURS: depth}
    if baseline_shift is not None:
        reference = three_views(baseline_shift, truth.shift)
        ours = dense_method_views(shift, truth.shift, answer.confidence, reference['answered'])
        seconds = answer.seconds if math.isfinite(answer.seconds) else 0.0  # through the node: not known
        for name, views, taken in ((OURS, ours, seconds), (REFERENCE, reference, baseline_seconds)):
            result.views.setdefault(name, MethodScores({})).add(views, taken if math.isfinite(taken) else 0.0)
        depths[REFERENCE] = shift_to_depth(baseline_shift, item.camera)
    for name, method_depth in depths.items():
        bins = depth_range_counts(method_depth, truth.depth, result.depth_edges)
        totals = result.depth_by_range.get(name)
        result.depth_by_range[name] = bins if totals is None else [a + b for a, b in zip(totals, bins, strict=True)]
    scores = disparity_counts.metrics()
    showcase.epe = scores.epe
    return FrameResult(bag, item.index, item.stamp_ns, width, height, 'scored', '', truth.kind,
                       answer.seconds * 1e3, scores, depth_counts.metrics(), latency_ms), showcase, (
                           disparity_counts, depth_counts)
