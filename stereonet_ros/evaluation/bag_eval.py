"""Score disparity on recorded bags: replay, run a disparity source, accumulate metrics and timing.

The source of disparity is a :class:`DisparitySource`: :class:`PredictorSource` runs the network in this
process; :class:`~stereonet_ros.evaluation.through_node.NodeSource` serves what the ROS node published
when the bag was played into it over DDS (``None`` = the pair got no answer: dropped, counted as such).

Timing is the model time per frame, measured around :meth:`~stereonet_ros.inference.Predictor.infer`
(preprocessing, resizing to the inference scale, padding, forward, unpadding, resizing back, copy back)
with ``time.perf_counter``; the first pair of every image size is run once untimed first (warm-up:
allocator, kernels), so that p50/p95 describe the steady state. Throughput is frames per second of model
time, and end to end (reading, decoding, scoring and writing included) over the wall time.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from stereonet_ros.evaluation.bagio import BagWriter, camera_info_messages, image_message, node_output_messages
from stereonet_ros.evaluation.metrics import (DepthMetricAccumulator, DepthMetrics, DisparityMetrics,
                                              MetricAccumulator)
from stereonet_ros.evaluation.replay import (BagReplay, ReplayConfig, ReplayCounters, ReplayError, ReplayFrame,
                                             SkippedPair, shift_to_depth)
from stereonet_ros.inference import Predictor, check_inference_scale
from stereonet_ros.node_config import NodeConfig
from stereonet_ros.processing import OutputSelection, postprocess

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
    """The network run directly on each pair at ``scale``, timed around :meth:`Predictor.infer`.

    Raises:
        InputError: (on construction) ``scale`` is outside the predictor's range.
    """

    def __init__(self, predictor: Predictor | OnnxPredictor, warmup: bool = True, scale: float = 1.0) -> None:
        self.predictor = predictor
        self.warmup = warmup
        self.scale = check_inference_scale(scale)
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
        answer = self.predictor.infer(frame.left, frame.right, scale=self.scale)
        return SourceResult(answer.disparity, time.perf_counter() - start, max_shift=answer.max_disparity)


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


@dataclass(frozen=True)
class BagSummary:
    path: str
    topics: dict[str, str]
    counters: ReplayCounters


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
                  max_frames: int | None = None,
                  on_frame: Callable[[FrameResult], None] | None = None) -> EvaluationResult:
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

    Raises:
        ReplayError: a bag cannot be replayed (checked for every bag before the first frame runs), or no
            pair could be evaluated at all.
    """
    from tqdm import tqdm

    expected = check_bags(paths, config)
    if max_frames is not None:
        expected = min(expected, max_frames)
    result = EvaluationResult(source=source.description, config=config)
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
                for item in replay.frames():
                    frame_result, showcase = _evaluate_item(item, source, disparity_scores, depth_scores,
                                                            result.error_histogram, output_bag, max_disparity)
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
                            worst = Showcase(f'{Path(path).name}, pair #{frame_result.index}: largest EPE',
                                             showcase.left_rgb, showcase.shift, showcase.gt_shift, showcase.epe)
                    if max_frames is not None and len(result.frames) >= max_frames:
                        break
                result.bags.append(BagSummary(str(path), replay.topics, replay.counters))
    result.wall_seconds = time.perf_counter() - start
    if worst is not None and all(s.shift is not worst.shift for s in result.showcases):
        result.showcases.append(worst)
    if not any(frame.status in ('scored', 'no-gt') for frame in result.frames):
        reasons = sorted({frame.note for frame in result.frames if frame.note})
        detail = f': {"; ".join(reasons[:3])}' if reasons else ' (no synchronized pair in the bags)'
        raise ReplayError(f'no stereo pair could be evaluated{detail}')
    if len(disparity_scores.frames) and disparity_scores.total().valid_pixels > 0:
        result.disparity = disparity_scores.total()
        result.disparity_per_frame = disparity_scores.per_frame_mean()
        result.depth = depth_scores.total()
    return result


def _evaluate_item(item: ReplayFrame | SkippedPair, source: DisparitySource, disparity_scores: MetricAccumulator,
                   depth_scores: DepthMetricAccumulator, histogram: npt.NDArray[np.int64],
                   output_bag: BagWriter | None, max_disparity: float) -> tuple[FrameResult, Showcase | None]:
    bag = str(item.bag)
    if isinstance(item, SkippedPair):
        return FrameResult(bag, item.index, item.stamp_ns, 0, 0, 'skipped', item.reason, '', math.nan, None,
                           None), None
    height, width = item.left.shape[:2]
    answer = source(item)
    if answer is None:
        return FrameResult(bag, item.index, item.stamp_ns, width, height, 'dropped', source.drop_reason,
                           '', math.nan, None, None), None
    shift = answer.shift
    if output_bag is not None:
        max_shift = answer.max_shift if math.isfinite(answer.max_shift) else max_disparity
        write_frame_outputs(output_bag, item, shift, max_shift)
    truth = item.ground_truth
    showcase = Showcase('', display_rgb(item.left), shift, truth.shift if truth is not None else None)
    latency_ms = answer.latency_s * 1e3
    if truth is None:
        return FrameResult(bag, item.index, item.stamp_ns, width, height, 'no-gt', item.gt_note or '', '',
                           answer.seconds * 1e3, None, None, latency_ms), showcase
    scores = disparity_scores.add(shift, truth.shift)
    depth = depth_scores.add(shift_to_depth(shift, item.camera), truth.depth)
    valid = np.isfinite(truth.shift) & np.isfinite(shift)
    error = np.abs(shift[valid] - truth.shift[valid]).astype(np.float64)
    counts, _ = np.histogram(np.minimum(error, ERROR_HISTOGRAM_EDGES[-1]), bins=ERROR_HISTOGRAM_EDGES)
    histogram += counts
    showcase.epe = scores.epe
    return FrameResult(bag, item.index, item.stamp_ns, width, height, 'scored', '', truth.kind,
                       answer.seconds * 1e3, scores, depth, latency_ms), showcase
