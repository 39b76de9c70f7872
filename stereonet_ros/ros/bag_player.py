"""Play rosbag2 bags into a running ``stereonet_node`` over DDS and record its ``disparity`` answers.

The DDS side of ``stereonet-eval-bag --through-node`` (the evaluation side, without ROS, is
:mod:`stereonet_ros.evaluation.through_node`). Like ``ros2 bag play --clock``, a :class:`BagPlayer`:

- reads the bag's four input topics with ``rosbags`` (no ROS install) in log-time order and publishes
  each message at its recorded time, scaled by ``rate`` (``rate = 0.5``: half as fast), on the node's
  input names (:data:`~stereonet_ros.evaluation.through_node.NODE_INPUT_TOPICS`) with reliable QoS;
  compressed images (``PlaySettings.image_transport``) as CompressedImage on ``<image topic>/compressed``,
  where a node with ``image_transport`` ``compressed`` reads them;
- publishes ``rosgraph_msgs/Clock`` on ``/clock`` (the bag's log time, at least every 25 ms and before
  every message), for a node running with ``use_sim_time``;
- subscribes to the node's ``/disparity`` (reliable) and keeps every DisparityImage with its receive
  time, keyed by ``header.stamp``; and ``/diagnostics`` for what the node says about itself.

Messages are converted field by field from ``rosbags`` classes to rclpy classes; byte and double
arrays go in as ``array.array`` (one copy). A bag whose stamps do not come after the previous bag's
(two bags recorded from the same start, as ``stereonet-make-bag`` writes them) is played with every
stamp moved forward by a constant, :attr:`BagPlayback.stamp_offset_ns`: the node, like any stamp-ordered
synchronizer, would refuse stamps that go back by less than its 1 s loop threshold. Answers are keyed
by the bag's own stamps again.

Publishing happens on the calling thread; an executor thread receives the answers, so their receive
time is not delayed by a publish in progress.
"""
from __future__ import annotations

import array
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.utilities import try_shutdown
from rosbags.highlevel import AnyReader
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from stereo_msgs.msg import DisparityImage

from stereonet_ros.evaluation.bagio import COMPRESSED_IMAGE, TYPESTORE
from stereonet_ros.evaluation.replay import ReplayConfig, ReplayError, resolve_image_topics
from stereonet_ros.evaluation.through_node import (NODE_DISPARITY_TOPIC, NODE_NAME, BagPlayback, NodeAnswer,
                                                   PlaybackResult, PlaySettings, ThroughNodeError, node_input_topics)
from stereonet_ros.image_codec import ImageCodecError, image_to_array
from stereonet_ros.sync import stamp_to_ns

MessageT = TypeVar('MessageT')

CLOCK_PERIOD = 0.025
"""Seconds between two ``/clock`` messages while waiting (ros2 bag play's default is 40 Hz)."""
SETTLE_SECONDS = 1.0
"""After the node's endpoints matched ours: time for the node to see our ``/disparity`` subscription too
(the node skips a pair nobody listens to)."""
IDENTITY_KEYS = frozenset({'checkpoint', 'checkpoint provenance', 'device', 'precision', 'placeholder'})
"""The ``/diagnostics`` values kept: what model the node runs, where."""
BAG_GAP_NS = 2_000_000_000
"""When a bag's stamps must be moved forward: the gap left after the previous bag's last stamp."""


def to_ros_message(source: Any, kind: type[MessageT]) -> MessageT:
    """A ``rosbags`` message -> the rclpy message class ``kind``, field by field.

    Raises:
        ThroughNodeError: a field type this copier does not handle (a sequence of messages).
    """
    message = kind()
    fields: dict[str, str] = kind.get_fields_and_field_types()  # type: ignore[attr-defined]
    for name, field_type in fields.items():
        value = getattr(source, name)
        if field_type == 'sequence<uint8>':
            setattr(message, name, array.array('B', np.ascontiguousarray(value, dtype=np.uint8).tobytes()))
        elif field_type == 'sequence<double>':
            setattr(message, name, array.array('d', np.ascontiguousarray(value, dtype=np.float64).tobytes()))
        elif field_type.startswith('double['):
            setattr(message, name, np.asarray(value, dtype=np.float64))
        elif field_type.startswith('sequence<') or '[' in field_type:
            raise ThroughNodeError(f'{kind.__name__}.{name}: field type {field_type} is not copied')
        elif '/' in field_type:  # a nested message: std_msgs/Header, builtin_interfaces/Time, ...
            setattr(message, name, to_ros_message(value, type(getattr(message, name))))
        else:
            setattr(message, name, value)
    return message


def _qos(depth: int, reliable: bool = True) -> QoSProfile:
    profile: QoSProfile = QoSProfile(depth=depth)  # type: ignore[no-untyped-call]
    profile.reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    return profile


def _set_stamp(message: Any, stamp_ns: int) -> None:
    message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)


class BagPlayer:
    """One rclpy context and node that plays bags into the stereonet node; use as a context manager.

    Args:
        settings: rate, domain, waits.
        config: the bag's topic names (the four inputs are read from these).
        node_failure: returns ``None`` while the node runs, else one line saying why it stopped (checked
            while waiting); ``None`` = no such check (a node this process did not start).

    Raises:
        ThroughNodeError: rclpy cannot start on the domain.
    """

    def __init__(self, settings: PlaySettings, config: ReplayConfig,
                 node_failure: Callable[[], str | None] | None = None) -> None:
        self.settings = settings
        self.config = config
        self._node_failure = node_failure
        self._lock = threading.Lock()
        self._answers: dict[int, tuple[DisparityImage, float]] = {}  # played stamp -> (message, receive time)
        self._last_answer = 0.0
        self.diagnostics: dict[str, str] = {}
        self._clock_ns = 0
        self._last_played_ns: int | None = None
        self.context = Context()
        saved = os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')
        if settings.localhost_only:
            os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'  # read by rcl at init
        try:
            rclpy.init(context=self.context, domain_id=settings.domain_id)
        except Exception as err:  # noqa: BLE001 - rclpy's RCLError is not importable by a stable name
            raise ThroughNodeError(f'cannot start rclpy on ROS domain {settings.domain_id}: {err}') from err
        finally:
            if settings.localhost_only:
                if saved is None:
                    os.environ.pop('ROS_AUTOMATIC_DISCOVERY_RANGE', None)
                else:
                    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = saved
        self.node = rclpy.create_node('stereonet_bag_player', context=self.context)
        reliable = _qos(10)
        image = CompressedImage if settings.image_transport == 'compressed' else Image
        kinds: Sequence[type[Any]] = (image, image, CameraInfo, CameraInfo)
        self.input_topics = node_input_topics(settings.image_transport)
        self.publishers = [self.node.create_publisher(kind, topic, reliable)
                           for topic, kind in zip(self.input_topics, kinds, strict=True)]
        self.kinds = list(kinds)
        self.clock_publisher = self.node.create_publisher(Clock, '/clock', _qos(1))
        self.disparity_subscription = self.node.create_subscription(
            DisparityImage, NODE_DISPARITY_TOPIC, self._on_disparity,
            _qos(50))
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name='stereonet_bag_player_spin', daemon=True)
        self._spinner.start()

    def __enter__(self) -> BagPlayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._spinner.join(timeout=5.0)
        self.node.destroy_node()  # type: ignore[no-untyped-call]
        try_shutdown(context=self.context)

    # ------------------------------------------------------------------ executor thread

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def _on_disparity(self, message: DisparityImage) -> None:
        received = time.monotonic()
        with self._lock:
            self._answers[stamp_to_ns(message.header.stamp)] = (message, received)
            self._last_answer = received

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.startswith(f'/{NODE_NAME}') or status.name.startswith(NODE_NAME):
                # Only what identifies the node's model: its counters are paced by its (simulated) clock,
                # so with a slow --rate the last report may predate most of the playback.
                values = {item.key: item.value for item in status.values if item.key in IDENTITY_KEYS}
                with self._lock:
                    self.diagnostics = values

    def latest_diagnostics(self) -> dict[str, str]:
        """The node's last :data:`IDENTITY_KEYS` values on ``/diagnostics`` (empty if none arrived)."""
        with self._lock:
            return dict(self.diagnostics)

    # ------------------------------------------------------------------ playing

    def _check_node(self) -> None:
        if self._node_failure is not None:
            failure = self._node_failure()
            if failure is not None:
                raise ThroughNodeError(failure)

    def _publish_clock(self, clock_ns: int) -> None:
        self._clock_ns = max(self._clock_ns, clock_ns)  # sim time never goes back within a run
        message = Clock()
        message.clock.sec, message.clock.nanosec = divmod(self._clock_ns, 1_000_000_000)
        self.clock_publisher.publish(message)

    def wait_for_node(self) -> None:
        """Wait (bounded) until the node subscribes to all four inputs and publishes ``/disparity`` to us.

        Raises:
            ThroughNodeError: the node died, or did not match within ``settings.startup_timeout_s``.
        """
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while True:
            self._check_node()
            missing = [topic for topic, publisher in zip(self.input_topics, self.publishers, strict=True)
                       if publisher.get_subscription_count() == 0]
            if self.disparity_subscription.get_publisher_count() == 0:
                missing.append(f'{NODE_DISPARITY_TOPIC} (publisher)')
            if not missing:
                break
            if time.monotonic() > deadline:
                domain = 'the environment\'s' if self.settings.domain_id is None else str(self.settings.domain_id)
                hint = (' (the bags\' images are compressed: the node needs image_transport compressed)'
                        if self.settings.image_transport == 'compressed' else '')
                raise ThroughNodeError(f'no stereonet node matched within {self.settings.startup_timeout_s:g} s on '
                                       f'ROS domain {domain}: nothing on {", ".join(missing)}{hint}')
            time.sleep(0.05)
        settle = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < settle:
            self._check_node()
            time.sleep(0.05)

    def play(self, path: str | Path) -> BagPlayback:
        """Play one bag at ``settings.rate``, then wait for the node's last answers.

        Raises:
            ReplayError: the bag cannot be read.
            ThroughNodeError: the node died while playing.
        """
        playback = BagPlayback(bag=str(path))
        published: dict[int, float] = {}  # played stamp -> publish time of the last input with it
        left_stamps: set[int] = set()
        with self._lock:
            self._answers.clear()
        try:
            reader = AnyReader([Path(path)], default_typestore=TYPESTORE)
            reader.open()
        except Exception as err:  # noqa: BLE001 - rosbags raises several unrelated types; evaluate_bags checked it
            raise ReplayError(f'bag {path} cannot be opened: {err}') from err
        try:
            bag_topics = {name: str(info.msgtype) for name, info in reader.topics.items()}
            topics = resolve_image_topics(bag_topics, self.config.input_topics)
            compressed = [bag_topics.get(topic) == COMPRESSED_IMAGE for topic in topics[:2]]
            if any(flag != (self.settings.image_transport == 'compressed') for flag in compressed):
                raise ThroughNodeError(f'bag {path}: its images ({", ".join(topics[:2])}) do not fit the node\'s '
                                       f'image_transport {self.settings.image_transport}')
            role_of = {topic: role for role, topic in enumerate(topics)}
            connections = [c for c in reader.connections if c.topic in role_of]
            start_ns = int(reader.start_time)
            if self._last_played_ns is not None and start_ns <= self._last_played_ns + BAG_GAP_NS // 2:
                playback.stamp_offset_ns = self._last_played_ns + BAG_GAP_NS - start_ns
            offset = playback.stamp_offset_ns
            rate = self.settings.rate
            first_log: int | None = None
            wall_start = time.monotonic()
            self._publish_clock(start_ns + offset)
            for connection, log_ns, raw in reader.messages(connections=connections):
                if first_log is None:
                    first_log, wall_start = log_ns, time.monotonic()
                due = wall_start + (log_ns - first_log) / 1e9 / rate
                self._wait_until(due, first_log + offset, wall_start)
                role = role_of[connection.topic]
                message = to_ros_message(reader.deserialize(raw, connection.msgtype), self.kinds[role])
                stamp = stamp_to_ns(message.header.stamp) + offset
                _set_stamp(message, stamp)
                self._publish_clock(log_ns + offset)
                published[stamp] = time.monotonic()
                self.publishers[role].publish(message)
                playback.messages += 1
                if role == 0:
                    left_stamps.add(stamp)
                newest = max(stamp, log_ns + offset)
                if self._last_played_ns is None or newest > self._last_played_ns:
                    self._last_played_ns = newest
            playback.play_seconds = time.monotonic() - wall_start
            playback.left_images = len(left_stamps)
            self._wait_for_answers(left_stamps, (first_log or start_ns) + offset, wall_start)
        finally:
            reader.close()
        with self._lock:
            answers = dict(self._answers)
        for stamp, (message, received) in answers.items():
            if stamp not in published:
                playback.unmatched_answers += 1
                continue
            try:
                values = image_to_array(message.image).astype(np.float32, copy=False)
            except ImageCodecError:
                playback.unmatched_answers += 1
                continue
            playback.answers[stamp - offset] = NodeAnswer(
                stamp_ns=stamp - offset, disparity=np.ascontiguousarray(values), min_disparity=message.min_disparity,
                max_disparity=message.max_disparity, latency_s=received - published[stamp])
        return playback

    def _sim_now(self, clock_start_ns: int, wall_start: float) -> int:
        return clock_start_ns + round((time.monotonic() - wall_start) * self.settings.rate * 1e9)

    def _wait_until(self, due: float, clock_start_ns: int, wall_start: float) -> None:
        while True:
            self._check_node()
            remaining = due - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, CLOCK_PERIOD))
            self._publish_clock(self._sim_now(clock_start_ns, wall_start))

    def _wait_for_answers(self, left_stamps: set[int], clock_start_ns: int, wall_start: float) -> None:
        """Until the newest pair has its answer, or none came for ``answer_timeout_s`` (the rest: dropped).

        The node works through its pairs in order and keeps only the newest waiting one, so once the
        newest pair is answered no older one can still come.
        """
        quiet_since = time.monotonic()
        newest = max(left_stamps, default=None)
        while True:
            self._check_node()
            with self._lock:
                answered = newest is None or newest in self._answers
                last_answer = self._last_answer
            now = time.monotonic()
            if answered or now - max(quiet_since, last_answer) > self.settings.answer_timeout_s:
                return
            time.sleep(CLOCK_PERIOD)
            self._publish_clock(self._sim_now(clock_start_ns, wall_start))


def play_through_node(paths: Sequence[str | Path], config: ReplayConfig, settings: PlaySettings,
                      node_failure: Callable[[], str | None] | None = None) -> PlaybackResult:
    """Play ``paths`` in order into the node (waiting for it first) and return what it answered.

    Raises:
        ThroughNodeError: the node did not start, did not match, or died.
        ReplayError: a bag cannot be read.
    """
    start = time.monotonic()
    result = PlaybackResult()
    with BagPlayer(settings, config, node_failure) as player:
        player.wait_for_node()
        for path in paths:
            result.bags.append(player.play(path))
        result.node_diagnostics = player.latest_diagnostics()
    result.wall_seconds = time.monotonic() - start
    return result
