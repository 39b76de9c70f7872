"""The evaluation side of ``stereonet-eval-bag --through-node``: no ROS here, only data, process and conversion.

A bag is played into a running ``stereonet_node`` over DDS by :mod:`stereonet_ros.ros.bag_player` (the
only part that imports rclpy), which records every ``disparity`` the node publishes. What it hands back is
a :class:`PlaybackResult`: per bag, the node's answers keyed by the left image's ``header.stamp`` (the
stamp stereo_image_proc and our node give their outputs). :class:`NodeSource` then serves those answers
to :func:`~stereonet_ros.evaluation.bag_eval.evaluate_bags` as a
:class:`~stereonet_ros.evaluation.bag_eval.DisparitySource`: a pair the node answered is scored with the
same metrics code as the in-process model, a pair it did not answer is *dropped* (the node keeps only the
newest waiting pair when it is slower than the input, by design, so drops are counted, not errors).

**What is scored.** The node publishes DisparityImage values ``d = shift - (cx_left - cx_right)`` with
invalid pixels at ``min_disparity - 1`` (CONVENTIONS.md); :func:`node_disparity_to_shift` turns them back
into the network's image shift with NaN where invalid. The node marks pixels invalid that the in-process
model leaves as they are (``d <= 0``, below ``min_disparity``, a match outside the right image; see
:mod:`stereonet_ros.processing`), and the metrics count a missing prediction as bad, so the node's scores
are those of the model *after the node's validity rule*: its ``density`` is below 1.

**Latency** of a pair = the wall-clock (``time.monotonic``) receive time of its DisparityImage minus the
time the player published the last input message carrying that stamp (with exact sync: the last of the
four; with approximate sync, the last message stamped like the left image).

This module also starts and stops the node as a subprocess (:class:`NodeProcess`).
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import yaml

from stereonet_ros.evaluation.replay import disparity_message_to_shift
from stereonet_ros.image_compression import compressed_topic

if TYPE_CHECKING:  # bag_eval loads torch; this module's constants serve the CLI's --help without it
    from stereonet_ros.evaluation.bag_eval import SourceResult
    from stereonet_ros.evaluation.replay import ReplayFrame

F32 = npt.NDArray[np.float32]

NODE_INPUT_TOPICS = ('/left/image_rect', '/right/image_rect', '/left/camera_info', '/right/camera_info')
"""Where the player publishes the bag's four inputs: the node's input names in the root namespace, in
:data:`~stereonet_ros.sync.STEREO_TOPICS` order (the bag's own topic names may differ: this is a remap)."""
NODE_DISPARITY_TOPIC = '/disparity'
NODE_TRANSPORTS = ('raw', 'compressed')
"""The node's ``image_transport`` values: with ``compressed`` the images are played as CompressedImage on
``<image topic>/compressed`` (:func:`node_input_topics`)."""
NODE_NAME = 'stereonet_node'
DEFAULT_STARTUP_TIMEOUT = 120.0
"""Seconds to wait for the node's subscriptions to match the player's publishers (model loading included)."""
DEFAULT_ANSWER_TIMEOUT = 30.0
"""After a bag's last message: seconds without a new answer before the unanswered pairs count as dropped."""
STOP_TIMEOUT = 20.0
"""Seconds the node gets to exit after SIGINT before it is killed."""


class ThroughNodeError(Exception):
    """Playing through the node failed: the node would not start, died, or never matched the player.
    The message is one line and says why."""


@dataclass(frozen=True)
class NodeAnswer:
    """The node's DisparityImage for one input stamp, as plain arrays."""

    stamp_ns: int  # header.stamp as the bag recorded it (any playback offset removed)
    disparity: F32  # (H, W) float32 DisparityImage values, pixels (offset removed; invalid < min_disparity)
    min_disparity: float  # the message's min_disparity, pixels
    max_disparity: float  # the message's max_disparity, pixels (DisparityImage convention)
    latency_s: float  # receive time minus the inputs' publish time, wall clock seconds


@dataclass
class BagPlayback:
    """What happened while one bag was played."""

    bag: str  # the path as given
    answers: dict[int, NodeAnswer] = field(default_factory=dict)  # by the bag's left-image stamp
    left_images: int = 0  # left image messages published (an upper bound on the pairs)
    messages: int = 0  # input messages published
    stamp_offset_ns: int = 0  # added to every stamp while playing (0 unless an earlier bag ended later)
    play_seconds: float = 0.0  # wall time from the first message to the last one
    unmatched_answers: int = 0  # DisparityImages whose stamp the player never published (another publisher?)


@dataclass
class PlaybackResult:
    """Every bag's playback, plus what the node said about itself on ``/diagnostics`` (may be empty)."""

    bags: list[BagPlayback] = field(default_factory=list)
    node_diagnostics: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def bag(self, path: str | Path) -> BagPlayback | None:
        for playback in self.bags:
            if playback.bag == str(path):
                return playback
        return None


@dataclass(frozen=True)
class PlaySettings:
    """How the player plays (``--rate``, waits) and where (ROS domain)."""

    rate: float = 1.0  # playback speed factor: 1 = the recorded rate, 0.5 = half as fast
    domain_id: int | None = None  # None = the environment's ROS_DOMAIN_ID (or 0)
    localhost_only: bool = False  # ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST for the player
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT
    answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT
    image_transport: str = 'raw'  # the bags' images: raw Image, or CompressedImage (the node must read the same)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ThroughNodeError(f'--rate {self.rate}: must be a finite number > 0')
        if self.image_transport not in NODE_TRANSPORTS:
            raise ThroughNodeError(f'image_transport {self.image_transport!r}: must be one of '
                                   f'{", ".join(NODE_TRANSPORTS)}')
        if self.domain_id is not None and not 0 <= self.domain_id <= 232:
            raise ThroughNodeError(f'--ros-domain-id {self.domain_id}: must be 0..232')
        for name, value in (('startup timeout', self.startup_timeout_s), ('answer timeout', self.answer_timeout_s)):
            if not (math.isfinite(value) and value > 0):
                raise ThroughNodeError(f'{name} {value}: must be a finite number of seconds > 0')


# --- conversion (pure) ---------------------------------------------------------------------------------

def node_disparity_to_shift(values: npt.ArrayLike, min_disparity: float, principal_offset: float) -> F32:
    """The node's DisparityImage values -> the network's left-view image shift, NaN where invalid.

    The node writes ``d = shift - (cx_left - cx_right)`` and ``min_disparity - 1`` where a pixel is invalid
    (stereo_image_proc's convention); this undoes the offset and turns every value below ``min_disparity``
    (or not finite) into NaN, so the metrics see a missing prediction there.

    Args:
        values: ``(H, W)`` DisparityImage pixels.
        min_disparity: the message's ``min_disparity``, pixels.
        principal_offset: ``cx_left - cx_right`` of the pair's camera infos, pixels.

    Returns:
        ``(H, W)`` float32 image shift, pixels; NaN = invalid.

    >>> node_disparity_to_shift([[10.0, -1.0]], 0.0, 4.0).tolist()
    [[14.0, nan]]
    """
    return disparity_message_to_shift(values, min_disparity, principal_offset)


class NodeSource:
    """A :class:`~stereonet_ros.evaluation.bag_eval.DisparitySource` serving the node's recorded answers.

    ``__call__`` returns the answer with the frame's bag and stamp (shift with NaN where the node marked
    the pixel invalid, and its latency), or ``None`` when the node never answered that pair (dropped).
    """

    drop_reason = ('the node published no disparity with this stamp (dropped by its latest-wins slot while it '
                   'was busy, or lost)')

    def __init__(self, playback: PlaybackResult, description: str) -> None:
        self.playback = playback
        self._description = description
        self._by_bag = {item.bag: item for item in playback.bags}

    @property
    def description(self) -> str:
        return self._description

    def __call__(self, frame: ReplayFrame) -> SourceResult | None:
        from stereonet_ros.evaluation.bag_eval import SourceResult

        playback = self._by_bag.get(str(frame.bag))
        answer = None if playback is None else playback.answers.get(frame.stamp_ns)
        if answer is None:
            return None
        shift = node_disparity_to_shift(answer.disparity, answer.min_disparity, frame.camera.principal_offset)
        if shift.shape != frame.left.shape[:2]:
            return None  # not an answer to this pair (another size): treat as no answer
        return SourceResult(shift, math.nan, latency_s=answer.latency_s)


# --- the node process ----------------------------------------------------------------------------------

def default_node_executable() -> Path:
    """``stereonet_node`` beside this Python (the virtualenv's console script)."""
    return Path(sys.executable).parent / NODE_NAME


def unique_domain_id(salt: int = 37) -> int:
    """The ROS domain for a node of our own: ``ROS_DOMAIN_ID`` when the environment sets one (a user or a
    CI job that isolates its runs that way must be obeyed), else one from the process id, 1..100
    (ports stay below the ephemeral range).

    The salt keeps the pid-derived one different from the node tests' ``1 + pid % 100`` in the same process.

    Raises:
        ThroughNodeError: ``ROS_DOMAIN_ID`` is set but is not an integer in 0..232.
    """
    configured = os.environ.get('ROS_DOMAIN_ID', '').strip()
    if configured:
        if not configured.isdigit() or int(configured) > 232:
            raise ThroughNodeError(f'ROS_DOMAIN_ID={configured!r}: must be an integer in 0..232')
        return int(configured)
    return 1 + (os.getpid() + salt) % 100


def node_input_topics(image_transport: str = 'raw') -> tuple[str, str, str, str]:
    """:data:`NODE_INPUT_TOPICS` as a node with this ``image_transport`` subscribes them."""
    left, right, left_info, right_info = NODE_INPUT_TOPICS
    if image_transport == 'compressed':
        left, right = compressed_topic(left), compressed_topic(right)
    return left, right, left_info, right_info


def node_params(input_topics: Sequence[str] = NODE_INPUT_TOPICS) -> dict[str, object]:
    """The params file content: reliable subscriptions (best effort loses most large images between
    processes), a queue of 10 messages per topic."""
    # Fresh dicts per topic: a shared one would be dumped as a YAML alias, which rcl refuses.
    overrides = {topic: {'subscription': {'reliability': 'reliable', 'depth': 10}} for topic in input_topics}
    return {NODE_NAME: {'ros__parameters': {'qos_overrides': overrides}}}


class NodeProcess:
    """``stereonet_node`` started as a subprocess on its own domain, logging into a file; stop with :meth:`stop`.

    Raises:
        ThroughNodeError: (on start) the executable is missing or cannot be run.
    """

    def __init__(self, folder: Path, domain_id: int, checkpoint: str | None, device: str,
                 executable: Path | None = None, extra_parameters: Mapping[str, str] | None = None,
                 image_transport: str = 'raw') -> None:
        self.folder = folder
        self.domain_id = domain_id
        self.executable = executable or default_node_executable()
        self.log = folder / 'node.log'
        params_file = folder / 'node_params.yaml'
        params_file.write_text(yaml.safe_dump(node_params(node_input_topics(image_transport))), encoding='utf-8')
        arguments = [str(self.executable), '--ros-args', '--params-file', str(params_file),
                     '-p', 'use_sim_time:=true', '-p', f'device:={device}', '-p', f'image_transport:={image_transport}']
        if checkpoint:
            arguments += ['-p', f'checkpoint:={checkpoint}']
        for name, value in (extra_parameters or {}).items():
            arguments += ['-p', f'{name}:={value}']
        self.arguments = arguments
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
                   RCUTILS_LOGGING_BUFFERED_STREAM='0', PYTHONUNBUFFERED='1')
        try:
            with self.log.open('wb') as stream:
                self.process = subprocess.Popen(arguments, stdout=stream, stderr=subprocess.STDOUT, env=env,
                                                stdin=subprocess.DEVNULL)
        except OSError as err:
            raise ThroughNodeError(f'cannot start the node {self.executable}: {err.strerror or err}') from err

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def failure(self) -> str | None:
        """``None`` while the node runs; else one line: its exit status and the last thing it logged."""
        status = self.process.poll()
        if status is None:
            return None
        return f'the node exited with status {status}: {self.last_log_line()}'

    def last_log_line(self) -> str:
        try:
            lines = [line.strip() for line in self.log.read_text(errors='replace').splitlines() if line.strip()]
        except OSError:
            lines = []
        # Prefer what the node said about the failure over a traceback's last frame.
        for marker in ('[FATAL]', '[ERROR]', 'error:', 'cannot start'):
            for line in reversed(lines):
                if marker in line:
                    return line
        return lines[-1] if lines else f'(nothing logged; see {self.log})'

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGINT, then kill after ``timeout`` seconds; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

