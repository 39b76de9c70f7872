"""``stereonet_node``: synchronized rectified stereo in; DisparityImage, PointCloud2, depth out.

A drop-in for image_pipeline's stereo_image_proc (its DisparityNode and PointCloudNode in one):

Subscriptions (relative names, so namespaces and remapping work; sensor-data QoS by default):
    ``left/image_rect``, ``right/image_rect`` (sensor_msgs/Image), ``left/camera_info``,
    ``right/camera_info`` (sensor_msgs/CameraInfo), paired by exact or approximate stamps; optionally
    ``left/image_rect_color``, the cloud's colours (by exact stamp; else the left image's). With the
    ``image_transport`` parameter ``compressed``, the three image inputs are sensor_msgs/CompressedImage on
    ``<topic>/compressed`` (as image_transport's compressed plugin publishes them), decoded on the worker.
Publications (reliable, depth 1; each computed only while it has a subscriber):
    ``disparity`` (stereo_msgs/DisparityImage), ``points2`` (sensor_msgs/PointCloud2, organized),
    ``depth`` (REP 118, 32FC1 metres, NaN invalid), ``confidence`` (32FC1 in [0, 1]),
    ``disparity/image_color`` (rgb8, for viewers), and ``/diagnostics``.

Threads: the executor (``rclpy.spin``) receives and pairs messages and answers parameter changes;
one worker thread decodes, runs the network and publishes. Between them a slot of one: a pair that
arrives while the worker is busy replaces the waiting one (counted as dropped), so the outputs
follow the newest input however slow the device. With no subscriber at all nothing is decoded and
the model does not run.

Every QoS is overridable with the standard ``qos_overrides`` parameters, e.g. (a params file)::

    /**:
      ros__parameters:
        qos_overrides:
          /left/image_rect:
            subscription:
              reliability: reliable

Measured on one machine between processes, best-effort delivery lost most ~1 MB images (0 of 12
641x555 rgb8 images arrived) while reliable delivered them: with large images and a reliable
publisher, override the subscriptions to reliable.
"""
from __future__ import annotations

import functools
import math
import queue
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data, qos_profile_system_default
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from stereo_msgs.msg import DisparityImage
from diagnostic_msgs.msg import DiagnosticArray

from stereonet_ros.camera import CameraModelError, from_camera_infos
from stereonet_ros.config import ConfigError
from stereonet_ros.geometry import GeometryError
from stereonet_ros.image_codec import ImageCodecError, ImageLike
from stereonet_ros.image_compression import CompressedImageError, compressed_topic, decompress, require_codec
from stereonet_ros.backends import open_predictor
from stereonet_ros.inference_common import InputError, UntrainedPlaceholderWarning, node_inference_threads
from stereonet_ros.local_search import reach_for
from stereonet_ros.model.checkpoint import CheckpointError
from stereonet_ros.node_config import (DIAGNOSTICS_TOPIC, MODEL_KEYS, OUTPUT_TOPICS, PARAMETER_SPECS,
                                       STEREO_IMAGE_PROC_BLOCK_MATCHING, SYNC_KEYS, NodeConfig)
from stereonet_ros.node_runtime import (InputWatch, LatestSlot, NodeStatistics, StampedCache, WarningThrottle,
                                        camera_info_topic, overall_status, problem_kind, unmatched_warning)
from stereonet_ros.processing import (DeviceGuard, OutputSelection, StereoInputError, StereoProcessor,
                                      decode_colours, decode_pair)
from stereonet_ros.ros.messages import (diagnostic_array, disparity_message, float_image_message,
                                        pointcloud_message, rgb_image_message)
from stereonet_ros.sync import MatchedSet, StereoSynchronizer, SyncError, stamp_to_ns

if TYPE_CHECKING:
    from stereonet_ros.inference import Predictor
    from stereonet_ros.onnx_backend import OnnxPredictor

NODE_NAME = 'stereonet_node'
INPUT_TOPICS = ('left/image_rect', 'right/image_rect', 'left/camera_info', 'right/camera_info')
"""In :data:`stereonet_ros.sync.STEREO_TOPICS` order."""
COLOR_TOPIC = 'left/image_rect_color'
"""Optional, as stereo_image_proc's point cloud node reads it: the cloud's rgb comes from the image on this
topic with the set's exact stamp when there is one, else from ``left/image_rect``."""
WARNING_PERIOD = 5.0
"""Seconds between two warnings of the same kind."""
CLOCK_JUMP_NS = 1_000_000_000
"""A stamp this much older than its topic's previous one means time went back (a bag loop)."""

MESSAGE_CLASSES: dict[str, type[Any]] = {'stereo_msgs/msg/DisparityImage': DisparityImage,
                                          'sensor_msgs/msg/PointCloud2': PointCloud2, 'sensor_msgs/msg/Image': Image}
"""The classes of :data:`~stereonet_ros.node_config.OUTPUT_TOPICS`' message types."""

# Problems with one input pair: logged (throttled), the pair dropped, the node goes on.
BAD_INPUT_ERRORS = (ImageCodecError, CameraModelError, StereoInputError, InputError, GeometryError)


class StartupError(RuntimeError):
    """The node cannot start (bad parameter at start-up, unusable checkpoint or device)."""


_Result = TypeVar('_Result')

WARM_UP_SIZE = 64
"""Pixels (square) of the blank pair every newly loaded model runs before the node takes it on."""
MODEL_LOAD_TIMEOUT = 60.0
"""Seconds a run-time model switch may take (load, build, warm-up) before it is refused. The parameter
callback waits on the executor thread, so a slow path (a hung network mount) delays other callbacks by
this much at most; the bundled default loads in under a second."""


def _backend_name(predictor: Predictor | OnnxPredictor) -> str:
    """'PyTorch', or 'ONNX Runtime (<provider>)': what the start-up line and the diagnostics say."""
    provider = getattr(predictor, 'provider', None)
    return 'PyTorch' if provider is None else f'ONNX Runtime ({provider})'


def warm_up(predictor: Predictor | OnnxPredictor) -> None:
    """Run a blank :data:`WARM_UP_SIZE` pair (confidence included where the model has it) as the node runs pairs.

    Weights can pass every check on the file and still break every pair (e.g. so large that each
    activation overflows): that shows here, before the model replaces a working one.

    Raises:
        CheckpointError: the run failed, or gave a non-finite disparity or confidence.
    """
    blank = np.zeros((WARM_UP_SIZE, WARM_UP_SIZE), dtype=np.uint8)
    size = f'{WARM_UP_SIZE}x{WARM_UP_SIZE}'
    try:
        result = predictor.infer(blank, blank, with_confidence=predictor.has_confidence)
    except Exception as err:  # noqa: BLE001 - whatever a blank pair trips, every real pair would trip too
        raise CheckpointError(f'the model fails a {size} warm-up pair: {type(err).__name__}: {err}') from err
    for name, values in (('disparity', result.disparity), ('confidence', result.confidence)):
        broken = 0 if values is None else int(np.count_nonzero(~np.isfinite(values)))
        if broken:
            raise CheckpointError(f'the model gives non-finite {name} on a {size} warm-up pair ({broken} of '
                                  f'{WARM_UP_SIZE * WARM_UP_SIZE} pixels): its weights are unusable')


def call_with_timeout(function: Callable[[], _Result], timeout: float, what: str) -> _Result:
    """``function()`` on a thread of its own, waited for at most ``timeout`` seconds.

    A call still running then is left to finish on its (daemon) thread and its result dropped: a
    blocked read cannot be interrupted, but the caller (the executor) goes on.

    Raises:
        CheckpointError: ``what`` took longer than ``timeout``; else whatever ``function`` raised.
    """
    outcome: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            outcome.put((True, function()))
        except BaseException as err:  # noqa: BLE001 - handed to the waiting caller, which re-raises it
            outcome.put((False, err))

    threading.Thread(target=target, name='stereonet_model_load', daemon=True).start()
    try:
        succeeded, value = outcome.get(timeout=timeout)
    except queue.Empty:
        raise CheckpointError(f'{what} took longer than {timeout:g} s; gave up on it') from None
    if not succeeded:
        raise value
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Job:
    matched: MatchedSet[Any]
    formed: float  # time.monotonic() when the set was formed


def _descriptor(name: str, value: Any) -> ParameterDescriptor:
    spec = PARAMETER_SPECS[name]
    descriptor = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only,
                                     additional_constraints=spec.constraints)
    if spec.low is not None and spec.high is not None:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
        elif isinstance(value, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                                  to_value=float(spec.high), step=0.0)]
    if isinstance(value, float):
        # An integer is taken too (NodeConfig converts it and checks the range): stereo_image_proc declares
        # min_disparity as an integer, so its launch arguments and params files pass ints.
        descriptor.dynamic_typing = True
    return descriptor


class StereoNetNode(Node):
    """The node; see the module doc. Construct after ``rclpy.init``; call :meth:`close` before destroying."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lock = threading.Lock()
        self._throttle = WarningThrottle(WARNING_PERIOD)
        self._stats = NodeStatistics()
        self._model_runs = 0
        defaults = NodeConfig()
        try:
            for name in PARAMETER_SPECS:
                value = getattr(defaults, name)
                self.declare_parameter(name, value, _descriptor(name, value))
            self._config = NodeConfig.from_mapping({name: self.get_parameter(name).value for name in PARAMETER_SPECS})
            ignored_descriptor = ParameterDescriptor(
                description="stereo_image_proc's block-matcher parameter: accepted and ignored (a network has no "
                            'block matcher)', dynamic_typing=True)
            for name in STEREO_IMAGE_PROC_BLOCK_MATCHING:
                self.declare_parameter(name, None, ignored_descriptor)
        except (ConfigError, rclpy.exceptions.ParameterException) as err:
            raise StartupError(f'bad parameter: {err}') from err
        self._log_ignored([name for name in STEREO_IMAGE_PROC_BLOCK_MATCHING
                           if self.get_parameter(name).type_ != Parameter.Type.NOT_SET])
        config = self._config
        self._compressed = config.image_transport == 'compressed'
        if self._compressed:
            try:
                require_codec()
            except CompressedImageError as err:
                raise StartupError(f'image_transport compressed: {err}') from err
        try:
            self._processor = StereoProcessor(self._load_predictor(config))
        except (CheckpointError, InputError) as err:
            raise StartupError(f'cannot load the model: {err}') from err
        self._synchronizer: StereoSynchronizer[Any] = self._make_synchronizer(config)
        self._last_stamps: list[int | None] = [None] * len(INPUT_TOPICS)

        # stereo_image_proc subscribes with SensorDataQoS (best effort) unless use_system_default_qos.
        input_qos = qos_profile_system_default if config.use_system_default_qos else qos_profile_sensor_data
        overrides = QoSOverridingOptions.with_default_policies()
        image_kind = CompressedImage if self._compressed else Image
        self._subscriptions_in = []
        for index, (topic, kind) in enumerate(zip(self._input_topic_names(),
                                                  (image_kind, image_kind, CameraInfo, CameraInfo), strict=True)):
            self._subscriptions_in.append(self.create_subscription(
                kind, topic, functools.partial(self._on_message, index), input_qos,
                qos_overriding_options=overrides))
        # Held a little longer than the synchronizer's queue: the colour image may trail its set.
        self._colour_images: StampedCache[Any] = StampedCache(2 * config.queue_size + 2)
        colour_topic = self.resolve_topic_name(COLOR_TOPIC)
        self._subscription_colour = self.create_subscription(
            image_kind, compressed_topic(colour_topic) if self._compressed else colour_topic, self._on_colour_image,
            input_qos, qos_overriding_options=overrides)
        self._watch = InputWatch([sub.topic_name for sub in self._subscriptions_in],
                                 patience=2.0 * config.diagnostics_period_seconds, now=time.monotonic())

        output_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        publishers = {topic: self.create_publisher(MESSAGE_CLASSES[kind], topic, output_qos,
                                                   qos_overriding_options=overrides)
                      for topic, kind in OUTPUT_TOPICS.items()}
        self._pub_disparity, self._pub_points = publishers['disparity'], publishers['points2']
        self._pub_depth, self._pub_confidence = publishers['depth'], publishers['confidence']
        self._pub_color = publishers['disparity/image_color']
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, QoSProfile(depth=10),
                                                      qos_overriding_options=overrides)

        self._slot: LatestSlot[_Job] = LatestSlot()
        # A CUDA error: a throttled warning and one retry; twice in a row: the CPU, an ERROR in diagnostics.
        self._device_guard = DeviceGuard(warn=self._warn, report=lambda text: self.get_logger().error(text))
        self._worker = threading.Thread(target=self._work, name='stereonet_inference', daemon=True)
        self._worker.start()
        self._diagnostics_timer = self.create_timer(config.diagnostics_period_seconds, self._on_diagnostics)
        # Registered after declaring, so that declaration does not run it.
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f'ready: {self._describe_model()}; sync {"approximate" if config.approximate_sync else "exact"} '
            f'(queue_size {config.queue_size}); image_transport {config.image_transport}; inputs '
            f'{", ".join(s.topic_name for s in self._subscriptions_in)}')

    def _input_topic_names(self) -> list[str]:
        """The four inputs, resolved. Each camera_info is the sibling of its remapped image topic, as
        image_transport derives it on Jazzy (``/cam/left/image_rect`` -> ``/cam/left/camera_info``),
        unless the camera_info itself is remapped (Humble's way, which the launch file uses). With the
        compressed transport the images come on ``<image topic>/compressed``; the camera_infos stay beside
        the image topic (``/cam/left/camera_info``), as image_transport's camera subscriber has them."""
        left_image, right_image = (self.resolve_topic_name(topic) for topic in INPUT_TOPICS[:2])
        infos = []
        for image, info in ((left_image, INPUT_TOPICS[2]), (right_image, INPUT_TOPICS[3])):
            remapped = self.resolve_topic_name(info) != self.resolve_topic_name(info, only_expand=True)
            infos.append(self.resolve_topic_name(info) if remapped else camera_info_topic(image))
        if self._compressed:
            left_image, right_image = compressed_topic(left_image), compressed_topic(right_image)
        return [left_image, right_image, *infos]

    def _raw_image(self, msg: Any, index: int) -> ImageLike:
        """An image input as raw image fields: the message itself, or with ``compressed`` its decoded image.

        Raises:
            ImageCodecError: the compressed image cannot be decoded (the message names the topic).
        """
        if not self._compressed:
            return msg  # type: ignore[no-any-return]
        try:
            return decompress(msg)
        except ImageCodecError as err:
            topic = self._subscriptions_in[index].topic_name if index >= 0 else self._subscription_colour.topic_name
            raise CompressedImageError(f'{topic}: {err}') from err

    # ------------------------------------------------------------------ model and config

    def _load_predictor(self, config: NodeConfig) -> Predictor | OnnxPredictor:
        """Load the configured checkpoint and run one warm-up pair on it (:func:`warm_up`); the untrained
        placeholder's warning is logged loudly.

        Raises:
            CheckpointError: any failure to load, build or run the model, as one line.
            InputError: a device or precision the machine cannot run.
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', UntrainedPlaceholderWarning)
            source = config.checkpoint or 'the bundled default checkpoint'
            try:
                predictor = open_predictor(config.checkpoint or None, device=config.device,
                                           precision=config.precision, backend=config.backend,
                                           threads=node_inference_threads(config.inference_threads),
                                           refine=config.refine)
            except (CheckpointError, InputError):
                raise
            except Exception as err:  # noqa: BLE001 - e.g. device memory: no file check foresees it, the node must live
                raise CheckpointError(f'{source}: cannot set up the model: {type(err).__name__}: {err}') from err
            try:
                warm_up(predictor)
            except CheckpointError as err:
                raise CheckpointError(f'{source}: {err}') from err
        for warning in caught:
            if issubclass(warning.category, UntrainedPlaceholderWarning):
                self.get_logger().warning(
                    '*** UNTRAINED PLACEHOLDER CHECKPOINT: no trained default checkpoint is bundled; the '
                    'disparities, depth and points are MEANINGLESS. Set the checkpoint parameter to a trained '
                    'checkpoint. ***')
            else:
                self.get_logger().warning(f'loading the model: {warning.message}')
        return predictor

    def _describe_model(self) -> str:
        predictor = self._processor.predictor
        source = self._config.checkpoint or 'bundled default'
        placeholder = ' (UNTRAINED PLACEHOLDER)' if predictor.is_placeholder else ''
        reach = predictor.contract.max_disparity
        scale = self._config.inference_scale
        # The network's range is in its own pixels: at inference_scale 2 a camera sees half of it.
        at_scale = f', {reach / scale:g} px of the input at scale {scale:g}' if scale != 1.0 else ''
        reach_text = f'{reach:g} px{at_scale}'
        return (f'checkpoint {source}{placeholder}, {predictor.contract.color} input, max disparity {reach_text}, '
                f'{predictor.config.k_refinement_layers} refiner(s), device {predictor.device}, {predictor.precision}, '
                f'{_backend_name(predictor)}')

    @staticmethod
    def _make_synchronizer(config: NodeConfig) -> StereoSynchronizer[Any]:
        return StereoSynchronizer.from_parameters(config.queue_size, config.approximate_sync,
                                                  config.approximate_sync_tolerance_seconds)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Validate run-time changes as a whole; apply them, or refuse with the reason and keep the old values."""
        changes = {p.name: p.value for p in parameters if p.name in PARAMETER_SPECS}
        self._log_ignored([p.name for p in parameters if p.name in STEREO_IMAGE_PROC_BLOCK_MATCHING])
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = self._config.with_changes(changes)
        except ConfigError as err:
            self._warn(problem_kind(err), f'parameter change refused: {err}')
            return SetParametersResult(successful=False, reason=str(err))
        changed = self._config.changed_keys(new)
        processor = self._processor
        if changed & MODEL_KEYS:
            try:
                # Off the executor thread, waited for with a limit: a slow path must not hold it for ever.
                predictor = call_with_timeout(functools.partial(self._load_predictor, new), MODEL_LOAD_TIMEOUT,
                                              f'loading {new.checkpoint or "the bundled default checkpoint"}')
                processor = StereoProcessor(predictor)
            except (CheckpointError, InputError, OSError) as err:
                reason = f'cannot switch the model ({", ".join(sorted(changed & MODEL_KEYS))}): {err}'
                self._warn(problem_kind(err), f'parameter change refused, keeping the current model: {reason}')
                return SetParametersResult(successful=False, reason=reason)
        try:
            synchronizer = self._make_synchronizer(new) if changed & SYNC_KEYS else None
        except SyncError as err:
            return SetParametersResult(successful=False, reason=str(err))
        with self._lock:
            self._config = new
            self._processor = processor
            if synchronizer is not None:
                self._synchronizer = synchronizer
                self._last_stamps = [None] * len(INPUT_TOPICS)
                self._watch.reset(time.monotonic())
        if changed:
            summary = ', '.join(f'{key}={getattr(new, key)!r}' for key in sorted(changed))
            self.get_logger().info(f'parameters changed: {summary}'
                                   + (f'; now {self._describe_model()}'
                                      if changed & (MODEL_KEYS | {'inference_scale'}) else ''))
        return SetParametersResult(successful=True)

    def _subscription_names(self) -> list[str]:
        return [subscription.topic_name for subscription in self._subscriptions_in]

    def _log_ignored(self, names: list[str]) -> None:
        if names:
            self.get_logger().info(f"ignoring stereo_image_proc's block-matcher parameter(s) {', '.join(names)}: "
                                   'a network has no block matcher (min_disparity and disparity_range do apply)')

    # ------------------------------------------------------------------ inputs (executor thread)

    def _outputs(self) -> OutputSelection:
        return OutputSelection(disparity=self._pub_disparity.get_subscription_count() > 0,
                               depth=self._pub_depth.get_subscription_count() > 0,
                               points=self._pub_points.get_subscription_count() > 0,
                               confidence=self._pub_confidence.get_subscription_count() > 0,
                               disparity_color=self._pub_color.get_subscription_count() > 0)

    def _on_colour_image(self, msg: Image) -> None:
        try:
            self._colour_images.put(stamp_to_ns(msg.header.stamp), msg)
        except Exception as err:  # noqa: BLE001 - a malformed header must not stop the executor
            self._warn('colour-image', f'{COLOR_TOPIC} message ignored: {err}')

    def _cloud_colours(self, left_image: ImageLike, stamp_ns: int, height: int,
                       width: int) -> npt.NDArray[np.uint8]:
        """The cloud's colours: the colour image of this stamp when one came and fits, else the left image."""
        colour_msg = self._colour_images.get(stamp_ns)
        if colour_msg is not None:
            try:
                colours = decode_colours(self._raw_image(colour_msg, -1))
                if colours.shape[:2] == (height, width):
                    return colours
                problem = f'is {colours.shape[1]}x{colours.shape[0]}, the pair {width}x{height}'
            except ImageCodecError as err:
                problem = str(err)
            self._warn('colour-image', f'{COLOR_TOPIC} at stamp {stamp_ns} not used for points2 ({problem}); '
                       'colouring from left/image_rect')
        return decode_colours(left_image)

    def _on_message(self, index: int, msg: Any) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        now = time.monotonic()
        with self._lock:
            last = self._last_stamps[index]
            if last is not None and stamp < last - CLOCK_JUMP_NS:
                # Time went back (a bag played in a loop, a restarted simulator): start pairing afresh.
                self.get_logger().info(f'{INPUT_TOPICS[index]} stamp went back by {(last - stamp) / 1e9:.3f} s: '
                                       'resetting the synchronizer')
                self._synchronizer.reset()
                self._colour_images.clear()
                self._last_stamps = [None] * len(INPUT_TOPICS)
            self._last_stamps[index] = stamp
            self._watch.message(index, stamp, now)
            before = self._synchronizer.counters
            matched_sets = self._synchronizer.add(index, stamp, msg)
            after = self._synchronizer.counters
            if matched_sets:
                self._watch.matched(now)
        lost = (after.unmatched - before.unmatched) + (after.overflow - before.overflow)
        rejected = after.rejected - before.rejected
        if lost > 0:
            self._warn(*unmatched_warning(lost, before, after, self._subscription_names(),
                                          self._config.approximate_sync))
        if rejected > 0:
            self._warn('sync-rejected', f'{INPUT_TOPICS[index]} message at stamp {stamp} refused: not newer than '
                       'an earlier message of that topic (duplicate or out of order)')
        for matched in matched_sets:
            self._stats.record_set()
            if not self._outputs().any:
                self._stats.record_skipped()  # nobody listens: no decode, no model
                continue
            if self._slot.put(_Job(matched, now)):
                self._stats.record_dropped()

    # ------------------------------------------------------------------ processing (worker thread)

    def _work(self) -> None:
        while True:
            job = self._slot.take()
            if job is None:
                return
            try:
                self._process(job)
            except BAD_INPUT_ERRORS as err:
                self._stats.record_bad_input()
                self._warn(problem_kind(err), f'stereo pair at stamp {job.matched.stamp_ns} dropped: {err}')
            except Exception:  # noqa: BLE001 - the worker must outlive any one pair; the traceback is logged
                if not self.context.ok():
                    # SIGTERM or Ctrl-C mid-pair: rclpy has shut the context down, so publishing failed.
                    # That is the shutdown, not a problem with the pair: stop quietly.
                    return
                self._stats.record_bad_input()
                self._warn('unexpected', f'stereo pair at stamp {job.matched.stamp_ns} failed:\n'
                           f'{traceback.format_exc()}')

    def _process(self, job: _Job) -> None:
        outputs = self._outputs()
        if not outputs.any:
            self._stats.record_skipped()
            return
        with self._lock:
            processor, config = self._processor, self._config
        left_msg, right_msg, left_info, right_info = job.matched.messages
        camera = from_camera_infos(left_info, right_info)
        left_image = self._raw_image(left_msg, 0)
        left, right, _ = decode_pair(left_image, self._raw_image(right_msg, 1), want_rgb=False)
        height, width = left.shape[:2]
        result, used = self._device_guard.process(
            processor, left, right, camera, config, outputs,
            rgb=functools.partial(self._cloud_colours, left_image, job.matched.stamp_ns, height, width))
        if used is not processor:  # the device failed twice: from now on the CPU, unless a model switch came between
            with self._lock:
                if self._processor is processor:
                    self._processor = used
        self._model_runs += 1
        if result.network_scale < config.inference_scale:
            self._warn('max-pixels', f'{width}x{height} pair run at scale {result.network_scale:.3f} instead of '
                       f'inference_scale {config.inference_scale:g}: more than max_pixels {config.max_pixels}')
        header = left_msg.header  # outputs are in the left camera's optical frame, at its stamp
        if outputs.disparity:
            self._pub_disparity.publish(disparity_message(result, camera, header))
        if result.cloud is not None:
            self._pub_points.publish(pointcloud_message(result.cloud, camera.height, camera.width, header))
        if result.depth is not None:
            self._pub_depth.publish(float_image_message(result.depth, header))
        if result.confidence is not None:
            self._pub_confidence.publish(float_image_message(result.confidence, header))
        if result.disparity_color is not None:
            self._pub_color.publish(rgb_image_message(result.disparity_color, header))
        self._stats.record_processed(time.monotonic() - job.formed, result.timings['model'])

    # ------------------------------------------------------------------ warnings and diagnostics

    def _warn(self, kind: str, text: str) -> None:
        admitted, suppressed = self._throttle.admit(kind, time.monotonic())
        if admitted:
            more = f' ({suppressed} similar warning(s) suppressed)' if suppressed else ''
            self.get_logger().warning(text + more)

    def _on_diagnostics(self) -> None:
        now = time.monotonic()
        with self._lock:
            config, processor = self._config, self._processor
            problem = self._watch.problem(now, config.approximate_sync)
            sync = self._synchronizer.counters
        if problem is not None:
            self._warn(problem[0], problem[1])
        snapshot = self._stats.snapshot(now)
        predictor = processor.predictor
        # Every current problem, the worst level first: a checkpoint note must not hide a missing input.
        problems: list[tuple[str, str]] = []
        if processor.fallback_reason is not None:
            problems.append(('ERROR', processor.fallback_reason))
        if problem is not None:
            problems.append(('WARN', problem[1]))
        if predictor.is_placeholder:
            problems.append(('WARN', 'UNTRAINED placeholder checkpoint: outputs are meaningless'))
        elif predictor.checkpoint.provenance.get('preliminary'):
            # Trained, but short of its accuracy goal: say so where operators look, with the figures.
            problems.append(('WARN', f'PRELIMINARY checkpoint: {predictor.checkpoint.provenance.get("note", "")}'))
        idle = 'waiting for synchronized stereo input' if snapshot.processed == 0 and snapshot.sets == 0 else 'running'
        level, message = overall_status(problems, idle)

        def number(value: float) -> str:
            return 'n/a' if math.isnan(value) else f'{value:.1f}'

        # The steps after the search pick their pixels by the confidence: they run with the search, where there is one.
        after_search = predictor.has_confidence and reach_for(config.local_search_px, predictor.device.type) > 0

        values = {
            'input sets/s': number(snapshot.input_rate),
            'output sets/s': number(snapshot.output_rate),
            'latency p50 (ms)': number(snapshot.latency_p50_ms),
            'latency p95 (ms)': number(snapshot.latency_p95_ms),
            'model time p50 (ms)': number(snapshot.model_p50_ms),
            'sets formed': str(snapshot.sets),
            'sets processed': str(snapshot.processed),
            'model runs': str(self._model_runs),
            'dropped pairs (latest wins)': str(snapshot.dropped),
            'skipped (no subscriber)': str(snapshot.skipped_no_subscriber),
            'bad input pairs': str(snapshot.bad_inputs),
            'sync unmatched messages': str(sync.unmatched + sync.overflow),
            'sync rejected messages': str(sync.rejected),
            'sets lacking a message, by input': ', '.join(
                f'{name}: {count}' for name, count in zip(self._subscription_names(), sync.missing, strict=True))
            or 'n/a (approximate sync)',
            'outputs subscribed': self._outputs().describe(),
            'device': str(predictor.device),
            'backend': _backend_name(predictor),
            'inference threads': str(node_inference_threads(config.inference_threads)),
            'device errors retried': str(self._device_guard.retries),
            'captured input sizes': ', '.join(f'{w}x{h}' for h, w in predictor.captured_sizes) or 'none',
            'precision': predictor.precision,
            'refiners': str(predictor.config.k_refinement_layers),
            'local search px': str(reach_for(config.local_search_px, predictor.device.type)),
            'sgbm fallback': str(config.sgbm_fallback and after_search).lower(),
            'occlusion fill': str(config.fill_occlusions and after_search).lower(),
            'left-right check': str(config.left_right_check and after_search).lower(),
            'checkpoint': config.checkpoint or 'bundled default',
            'checkpoint provenance': repr(predictor.checkpoint.provenance),
            'placeholder': str(predictor.is_placeholder).lower(),
        }
        self._pub_diagnostics.publish(diagnostic_array(self.get_clock().now().to_msg(),
                                                       f'{self.get_fully_qualified_name()}: stereo processing',
                                                       str(predictor.device), level, message, values))

    def close(self) -> None:
        """Stop the worker thread (waits for the pair in progress, up to 10 s)."""
        self._slot.close()
        self._worker.join(timeout=10.0)


def main(args: list[str] | None = None) -> int:
    """``stereonet_node`` console script: ``stereonet_node --ros-args -p checkpoint:=... --params-file ...``."""
    try:
        rclpy.init(args=args)
    except _rclpy.RCLError as err:  # e.g. an unreadable --params-file: one line, not a traceback
        print(f'{NODE_NAME}: cannot start: {err}'.splitlines()[0], file=sys.stderr)
        return 2
    node: StereoNetNode | None = None
    try:
        node = StereoNetNode()
        rclpy.spin(node)
    except StartupError as err:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(err))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
