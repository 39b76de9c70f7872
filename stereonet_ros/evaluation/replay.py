"""Read stereo pairs and ground truth from rosbag2 bags (mcap or sqlite3), paired as the node pairs them.

A bag is read with ``rosbags`` (no ROS install) in log-time order. The four inputs (left/right image,
left/right camera_info) go through :class:`~stereonet_ros.sync.StereoSynchronizer` with the node's
parameters (exact stamps by default; ``approximate_sync`` as stereo_image_proc), keyed by
``header.stamp``. At the end of a bag the approximate policy's last candidate is released (the node
would hold it until a next message that a bag never brings). Each pair is decoded with the node's
codecs (:mod:`stereonet_ros.image_codec`, :mod:`stereonet_ros.camera`).

Ground truth (optional, ``gt_topic``) is matched to a pair by **exactly equal** ``header.stamp`` (the
left image's, which is what stereo_image_proc stamps its disparity with), and may be:

- ``stereo_msgs/DisparityImage``: values in its convention (principal-point offset removed); a value
  below the message's ``min_disparity`` or not finite is invalid;
- ``sensor_msgs/Image`` depth (REP 118): ``32FC1`` metres (NaN, +-inf or <= 0 = none) or ``16UC1`` /
  ``mono16`` millimetres (0 = none), turned into disparity with the camera model, ``d = f * T / Z``.

**Which disparity is compared.** The network predicts the left-view *image shift* (CONVENTIONS.md); a
DisparityImage carries ``d = shift - (cx_left - cx_right)``. Ground truth is converted to the image shift
(``shift = d + (cx_left - cx_right)``), so scores are in the network's own units and equal those of
``stereonet-infer`` against a shift ground truth (e.g. Middlebury's). For rigs with ``cx_left ==
cx_right`` the two conventions coincide. Depth ground truth is kept in metres for the depth metrics
(from a disparity ground truth it is ``f * T / d``).

**Compressed images.** An image topic may be ``sensor_msgs/CompressedImage`` (PNG or JPEG, as
image_transport's compressed plugin records them): given ``/left/image_rect``, a bag without that topic
but with ``/left/image_rect/compressed`` is read from the latter (a bag with both: the raw one), and a
CompressedImage topic named directly is read as such. Each image is decoded into its original encoding
(:func:`~stereonet_ros.image_compression.decompress`) and then as a raw one: a PNG pair gives exactly the
raw pair's frames.

A pair that cannot be used (bad encoding, a compressed image that cannot be decoded, camera infos that do
not describe a stereo pair, image size different from camera_info) is yielded as a :class:`SkippedPair`
with the reason; ground truth that
cannot be used for a pair (another size, an encoding that is not depth) leaves the frame unscored with
the reason in :attr:`ReplayFrame.gt_note`. Problems with the bag itself (missing, corrupt, truncated, a
topic missing or of the wrong type) raise :class:`ReplayError`.
"""
from __future__ import annotations

import math
import sqlite3
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError
from rosbags.serde import SerdeError

from stereonet_ros.camera import CameraModelError, StereoCamera, check_image_size, from_camera_infos
from stereonet_ros.evaluation.bagio import CAMERA_INFO, COMPRESSED_IMAGE, DISPARITY_IMAGE, IMAGE, TYPESTORE
from stereonet_ros.geometry import depth_to_disparity, disparity_to_depth
from stereonet_ros.image_codec import ImageCodecError, canonical_encoding, image_to_array, to_model_input
from stereonet_ros.image_compression import compressed_topic, decompress
from stereonet_ros.sync import (LEFT_IMAGE, LEFT_INFO, RIGHT_IMAGE, RIGHT_INFO, MatchedSet, StereoSynchronizer,
                                SyncError, stamp_to_ns)

F32 = npt.NDArray[np.float32]

# stereo_image_proc's input names (relative to the node's namespace), as recorded from the root namespace.
DEFAULT_LEFT_TOPIC = '/left/image_rect'
DEFAULT_RIGHT_TOPIC = '/right/image_rect'
DEFAULT_LEFT_INFO_TOPIC = '/left/camera_info'
DEFAULT_RIGHT_INFO_TOPIC = '/right/camera_info'
DEFAULT_QUEUE_SIZE = 5  # stereo_image_proc's queue_size default


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged bag raises inside rosbags and the storage libraries under it."""
    errors: list[type[BaseException]] = [AnyReaderError, ReaderError, SerdeError, sqlite3.Error, OSError, EOFError]
    try:  # rosbags reads sqlite3 bags through apsw when it is installed (it is, requirements.txt)
        import apsw
    except ImportError:  # pragma: no cover
        pass
    else:
        errors.append(apsw.Error)
    return tuple(errors)


_READ_ERRORS = _read_errors()
_GRAY_ENCODINGS = frozenset({'mono8', 'mono16', '32FC1'})
_END_OF_BAG = object()  # stands for the messages after the bag's end, never a real message
_END_OF_BAG_NS = 10**15  # ~11.6 days after the last input: far beyond any sync tolerance


class ReplayError(Exception):
    """A bag cannot be replayed: missing, corrupt or truncated, a topic missing or of the wrong type,
    or a replay setting out of range. The message names the bag and says why."""


class GroundTruthError(ValueError):
    """A ground-truth message cannot be used for its pair (size, encoding); the frame is left unscored."""


def resolve_image_topics(bag_topics: Mapping[str, str], input_topics: Sequence[str]) -> tuple[str, str, str, str]:
    """The four inputs as a bag holds them: an image topic the bag lacks is replaced by its ``/compressed``
    sibling when the bag has that as a CompressedImage (recorded through image_transport's compressed plugin).

    Args:
        bag_topics: the bag's topic -> message type.
        input_topics: the four inputs asked for, absolute, in STEREO_TOPICS order.
    """
    topics = list(input_topics)
    for index in (0, 1):
        if topics[index] not in bag_topics and bag_topics.get(compressed_topic(topics[index])) == COMPRESSED_IMAGE:
            topics[index] = compressed_topic(topics[index])
    return topics[0], topics[1], topics[2], topics[3]


def normalize_topic(name: str) -> str:
    """Bag topics are absolute: ``left/image_rect`` -> ``/left/image_rect``."""
    name = name.strip()
    return name if name.startswith('/') else '/' + name


@dataclass(frozen=True)
class ReplayConfig:
    """Topics and pairing rules of a replay; defaults are the node's.

    Raises:
        ReplayError: (on construction) an empty or repeated topic, ``queue_size < 1``, or a negative or
            non-finite tolerance; the message names the field.
    """

    left_topic: str = DEFAULT_LEFT_TOPIC  # sensor_msgs/Image, rectified left view
    right_topic: str = DEFAULT_RIGHT_TOPIC  # sensor_msgs/Image, rectified right view
    left_info_topic: str = DEFAULT_LEFT_INFO_TOPIC  # sensor_msgs/CameraInfo of the left camera
    right_info_topic: str = DEFAULT_RIGHT_INFO_TOPIC  # sensor_msgs/CameraInfo of the right camera
    gt_topic: str | None = None  # DisparityImage or depth Image; None = no ground truth
    approximate_sync: bool = False  # stereo_image_proc's approximate_sync
    sync_tolerance_s: float = 0.0  # approximate_sync_tolerance_seconds; 0 = unbounded
    queue_size: int = DEFAULT_QUEUE_SIZE  # stereo_image_proc's queue_size

    def __post_init__(self) -> None:
        names = {'left_topic': self.left_topic, 'right_topic': self.right_topic,
                 'left_info_topic': self.left_info_topic, 'right_info_topic': self.right_info_topic}
        if self.gt_topic is not None:
            names['gt_topic'] = self.gt_topic
        for key, value in names.items():
            if not value.strip('/ '):
                raise ReplayError(f'ReplayConfig.{key}={value!r}: a topic name is needed')
        normalized = [normalize_topic(value) for value in names.values()]
        if len(set(normalized)) != len(normalized):
            raise ReplayError(f'ReplayConfig topics must differ, got {", ".join(normalized)}')
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ReplayError(f'ReplayConfig.queue_size={self.queue_size!r}: must be an integer >= 1')
        if not (math.isfinite(self.sync_tolerance_s) and self.sync_tolerance_s >= 0.0):
            raise ReplayError(f'ReplayConfig.sync_tolerance_s={self.sync_tolerance_s!r}: must be finite and >= 0')

    @property
    def input_topics(self) -> tuple[str, str, str, str]:
        """The four inputs, absolute, in :data:`~stereonet_ros.sync.STEREO_TOPICS` order."""
        return (normalize_topic(self.left_topic), normalize_topic(self.right_topic),
                normalize_topic(self.left_info_topic), normalize_topic(self.right_info_topic))

    @property
    def ground_truth_topic(self) -> str | None:
        return None if self.gt_topic is None else normalize_topic(self.gt_topic)


# --- conversions (pure) ----------------------------------------------------------------------------

def disparity_message_to_shift(values: npt.ArrayLike, min_disparity: float, principal_offset: float) -> F32:
    """DisparityImage values -> left-view image shift, pixels: ``shift = d + (cx_left - cx_right)``.

    Args:
        values: ``(H, W)`` DisparityImage pixels (offset removed).
        min_disparity: the message's ``min_disparity``; values below it are invalid.
        principal_offset: ``cx_left - cx_right``, pixels (:attr:`StereoCamera.principal_offset`).

    Returns:
        ``(H, W)`` float32 image shift; NaN where the value is invalid (below ``min_disparity`` or not
        finite).
    """
    d = np.asarray(values, dtype=np.float32)
    valid = np.isfinite(d) & (d >= np.float32(min_disparity))
    return np.where(valid, d + np.float32(principal_offset), np.float32(np.nan)).astype(np.float32)


def depth_to_shift(depth_m: npt.ArrayLike, camera: StereoCamera) -> F32:
    """Depth (metres, REP 118) -> left-view image shift: ``f * T / Z + (cx_left - cx_right)``.

    Returns ``(H, W)`` float32 pixels; NaN where the depth is not finite or ``<= 0`` (no depth, or +inf
    "too far", which has no finite disparity to score).
    """
    disparity = depth_to_disparity(depth_m, camera.focal, camera.baseline)  # (H, W), NaN = none
    return (disparity + np.float32(camera.principal_offset)).astype(np.float32)


def shift_to_depth(shift: npt.ArrayLike, camera: StereoCamera) -> F32:
    """Left-view image shift -> depth in metres, ``Z = f * T / (shift - (cx_left - cx_right))``; NaN where
    the disparity is not positive or not finite."""
    disparity = np.asarray(shift, dtype=np.float32) - np.float32(camera.principal_offset)
    return disparity_to_depth(disparity, camera.focal, camera.baseline)


# --- frames ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroundTruth:
    """One frame's reference, in the two forms the metrics need."""

    kind: str  # 'disparity', 'depth-32FC1' or 'depth-16UC1': what the bag carried
    shift: F32  # (H, W) float32 left-view image shift, pixels; NaN = no ground truth
    depth: F32  # (H, W) float32 depth, metres; NaN = no ground truth


@dataclass(frozen=True)
class ReplayFrame:
    """A synchronized, decoded pair, ready for the network."""

    bag: Path
    index: int  # pair index within its bag, from 0
    stamp_ns: int  # the left image's header.stamp
    spread_ns: int  # latest minus earliest stamp of the four inputs (0 for exact sync)
    left: npt.NDArray[Any]  # (H, W) gray or (H, W, 3) RGB, dtype of the encoding (uint8, uint16, float32)
    right: npt.NDArray[Any]  # like left
    camera: StereoCamera
    ground_truth: GroundTruth | None
    gt_note: str | None = None  # why the frame has no ground truth although a gt_topic was given


@dataclass(frozen=True)
class SkippedPair:
    """A synchronized pair that could not be used; ``reason`` says why."""

    bag: Path
    index: int
    stamp_ns: int
    reason: str


@dataclass(frozen=True)
class ReplayCounters:
    """What happened to a bag's messages (filled in as :meth:`BagReplay.frames` runs)."""

    pairs: int = 0  # synchronized pairs (frames + skipped)
    input_messages: int = 0  # messages on the four input topics
    unpaired_messages: int = 0  # of those, never paired (rejected, overflow, unmatched, left waiting at the end)
    gt_messages: int = 0
    gt_matched: int = 0


def model_image(msg: Any, compressed: bool = False) -> npt.NDArray[Any]:
    """An Image (or, ``compressed``, a CompressedImage) message as the network takes it: ``(H, W)`` for
    one-channel encodings, else ``(H, W, 3)`` RGB.

    Raises:
        EncodingError, MalformedImageError: as :func:`~stereonet_ros.image_codec.to_model_input`.
        CompressedImageError: as :func:`~stereonet_ros.image_compression.decompress`.
    """
    image = decompress(msg) if compressed else msg
    return to_model_input(image, 'gray' if canonical_encoding(str(image.encoding)) in _GRAY_ENCODINGS else 'rgb')


def decode_ground_truth(msg: Any, msgtype: str, camera: StereoCamera) -> GroundTruth:
    """Decode a DisparityImage or depth Image into a :class:`GroundTruth` for an image of ``camera``'s size.

    Raises:
        GroundTruthError: its size differs from the camera's, or the encoding is not a disparity/depth one.
    """
    image = msg.image if msgtype == DISPARITY_IMAGE else msg
    try:
        encoding = canonical_encoding(str(image.encoding))
        values = image_to_array(image)
    except ImageCodecError as err:
        raise GroundTruthError(f'ground truth: {err}') from err
    if values.shape[:2] != (camera.height, camera.width):
        raise GroundTruthError(f'ground truth is {values.shape[1]}x{values.shape[0]} but the images are '
                               f'{camera.width}x{camera.height}')
    if msgtype == DISPARITY_IMAGE:
        if encoding != '32FC1':
            raise GroundTruthError(f'ground truth DisparityImage has encoding {image.encoding}, expected 32FC1')
        min_disparity = float(msg.min_disparity)
        shift = disparity_message_to_shift(values, min_disparity, camera.principal_offset)
        disparity = np.where(np.isfinite(shift), values, np.float32(np.nan))
        depth = disparity_to_depth(disparity, camera.focal, camera.baseline, min_disparity)
        return GroundTruth('disparity', shift, depth)
    if encoding == '32FC1':
        depth = values.astype(np.float32)
        kind = 'depth-32FC1'
    elif encoding == 'mono16':
        # REP 118: 16UC1 millimetres, 0 = no depth.
        depth = np.where(values > 0, values.astype(np.float32) / np.float32(1000.0), np.float32(np.nan))
        kind = 'depth-16UC1'
    else:
        raise GroundTruthError(f'ground truth image has encoding {image.encoding}; a depth image is 32FC1 '
                               '(metres) or 16UC1 (millimetres)')
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype(np.float32)
    return GroundTruth(kind, depth_to_shift(depth, camera), depth)


class BagReplay:
    """One rosbag2 bag (folder, or its ``.mcap`` / ``.db3`` file) opened for replay.

    >>> with BagReplay('run.mcap', ReplayConfig(gt_topic='/ground_truth/disparity')) as replay:  # doctest: +SKIP
    ...     for item in replay.frames():
    ...         ...

    Raises:
        ReplayError: (on entering) the bag is missing, corrupt or truncated, or a topic is missing or
            has the wrong type (the message lists the topics the bag has).
    """

    def __init__(self, path: str | Path, config: ReplayConfig) -> None:
        self.path = Path(path)
        self.config = config
        self._reader: AnyReader | None = None
        self.counters = ReplayCounters()
        self.input_topics: tuple[str, str, str, str] = config.input_topics
        """The four inputs as read from this bag (an image topic may be its ``/compressed`` sibling)."""
        self.compressed = (False, False)
        """Whether the left and right images are sensor_msgs/CompressedImage in this bag."""

    def __enter__(self) -> BagReplay:
        if not self.path.exists():
            raise ReplayError(f'bag {self.path}: no such file or folder')
        try:
            reader = AnyReader([self.path], default_typestore=TYPESTORE)
            reader.open()
        except _READ_ERRORS as err:  # FileNotFoundError is an OSError
            raise ReplayError(f'bag {self.path} cannot be opened (corrupt, truncated or not a rosbag2 bag): '
                              f'{_one_line(err)}') from err
        self._reader = reader
        try:
            self._check_topics()
        except ReplayError:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            try:
                reader.close()
            except _READ_ERRORS:
                pass

    @property
    def reader(self) -> AnyReader:
        if self._reader is None:
            raise ReplayError(f'bag {self.path} is not open (use it in a with block)')
        return self._reader

    @property
    def topics(self) -> dict[str, str]:
        """Topic -> message type, for every topic in the bag."""
        return {name: str(info.msgtype) for name, info in sorted(self.reader.topics.items())}

    def _check_topics(self) -> None:
        have = self.topics
        listing = ', '.join(f'{name} ({msgtype})' for name, msgtype in have.items()) or 'none'
        topics = resolve_image_topics(have, self.config.input_topics)
        wanted = dict(zip(('left image', 'right image', 'left camera_info', 'right camera_info'), topics, strict=True))
        kinds: dict[str, tuple[str, ...]] = {'left image': (IMAGE, COMPRESSED_IMAGE),
                                             'right image': (IMAGE, COMPRESSED_IMAGE),
                                             'left camera_info': (CAMERA_INFO,), 'right camera_info': (CAMERA_INFO,)}
        gt_topic = self.config.ground_truth_topic
        if gt_topic is not None:
            wanted['ground truth'] = gt_topic
            kinds['ground truth'] = (DISPARITY_IMAGE, IMAGE)
        missing = [f'{topic} ({role})' for role, topic in wanted.items() if topic not in have]
        if missing:
            raise ReplayError(f'bag {self.path} has no topic {", ".join(missing)}; the bag has: {listing}')
        for role, topic in wanted.items():
            if have[topic] not in kinds[role]:
                raise ReplayError(f'bag {self.path}: topic {topic} ({role}) is {have[topic]}, expected '
                                  f'{" or ".join(kinds[role])}')
        self.input_topics = topics
        self.compressed = (have[topics[0]] == COMPRESSED_IMAGE, have[topics[1]] == COMPRESSED_IMAGE)

    @property
    def expected_pairs(self) -> int:
        """An upper bound on the pairs: the fewer of the left and right image messages."""
        topics = self.reader.topics
        left, right = self.input_topics[:2]
        return min(topics[left].msgcount, topics[right].msgcount)

    def frames(self) -> Iterator[ReplayFrame | SkippedPair]:
        """Pairs in stamp order: decoded frames, or skipped pairs with the reason.

        Raises:
            ReplayError: the bag turns out corrupt or truncated while reading.
        """
        reader = self.reader
        config = self.config
        try:
            sync: StereoSynchronizer[Any] = StereoSynchronizer.from_parameters(
                config.queue_size, config.approximate_sync, config.sync_tolerance_s)
        except SyncError as err:
            raise ReplayError(f'sync settings: {err}') from err
        role_of = {topic: role for role, topic in enumerate(self.input_topics)}
        gt_topic = config.ground_truth_topic
        gt_type = reader.topics[gt_topic].msgtype if gt_topic is not None else None
        wanted = [c for c in reader.connections if c.topic in role_of or c.topic == gt_topic]
        pending: deque[MatchedSet[Any]] = deque()
        gt_by_stamp: dict[int, Any] = {}
        gt_latest: int | None = None
        latest: int | None = None  # newest input stamp
        counts = {'pairs': 0, 'inputs': 0, 'gt': 0, 'gt_matched': 0}

        def release(final: bool) -> Iterator[ReplayFrame | SkippedPair]:
            # A pair waits until its ground truth arrived or the ground-truth stream moved past its stamp.
            while pending:
                stamp = pending[0].stamp_ns
                ready = (gt_topic is None or final or stamp in gt_by_stamp
                         or (gt_latest is not None and gt_latest > stamp))
                if not ready:
                    return
                matched = pending.popleft()
                gt_msg = gt_by_stamp.pop(stamp, None)
                for old in [s for s in gt_by_stamp if s < stamp]:
                    del gt_by_stamp[old]  # older than every pair still to come: never matched
                counts['gt_matched'] += gt_msg is not None
                yield self._decode(counts['pairs'], matched, gt_msg, gt_type)
                counts['pairs'] += 1

        messages = reader.messages(connections=wanted)
        while True:
            try:
                item = next(messages, None)
                if item is None:
                    break
                connection, _, raw = item
                msg: Any = reader.deserialize(raw, connection.msgtype)
            except _READ_ERRORS as err:
                raise ReplayError(f'bag {self.path} is corrupt or truncated: {_one_line(err)}') from err
            stamp = stamp_to_ns(msg.header.stamp)
            if connection.topic == gt_topic:
                counts['gt'] += 1
                gt_by_stamp[stamp] = msg
                gt_latest = stamp if gt_latest is None else max(gt_latest, stamp)
            else:
                counts['inputs'] += 1
                latest = stamp if latest is None else max(latest, stamp)
                pending.extend(sync.add(role_of[connection.topic], stamp, msg))
            yield from release(final=False)
            self._update_counters(sync, counts)
        if config.approximate_sync and latest is not None:
            # ApproximateTime holds its last candidate until a later message proves it optimal; a bag has
            # no later message, so offer each topic one far in the future and keep only real pairs.
            for role in range(len(config.input_topics)):
                closing = sync.add(role, latest + _END_OF_BAG_NS, _END_OF_BAG)
                pending.extend(s for s in closing if _END_OF_BAG not in s.messages)
        yield from release(final=True)
        self._update_counters(sync, counts, final=True)

    def _update_counters(self, sync: StereoSynchronizer[Any], counts: dict[str, int], final: bool = False) -> None:
        c = sync.counters
        # At the end of the bag, messages still waiting for a partner will never get one.
        waiting = sync.pending if final else 0
        self.counters = ReplayCounters(pairs=counts['pairs'], input_messages=counts['inputs'],
                                       unpaired_messages=c.rejected + c.overflow + c.unmatched + waiting,
                                       gt_messages=counts['gt'], gt_matched=counts['gt_matched'])

    def _decode(self, index: int, matched: MatchedSet[Any], gt_msg: Any,
                gt_type: str | None) -> ReplayFrame | SkippedPair:
        stamp = matched.stamp_ns
        try:
            camera = from_camera_infos(matched[LEFT_INFO], matched[RIGHT_INFO])
            left = model_image(matched[LEFT_IMAGE], self.compressed[0])
            right = model_image(matched[RIGHT_IMAGE], self.compressed[1])
            for side, image in (('left', left), ('right', right)):
                try:
                    check_image_size(camera, image.shape[0], image.shape[1])
                except CameraModelError as err:
                    raise CameraModelError(f'{side} {err}') from err
        except (CameraModelError, ImageCodecError) as err:
            return SkippedPair(self.path, index, stamp, _one_line(err))
        ground_truth = None
        note = None
        if gt_type is not None:
            if gt_msg is None:
                note = 'no ground truth with this stamp'
            else:
                try:
                    ground_truth = decode_ground_truth(gt_msg, gt_type, camera)
                except GroundTruthError as err:
                    note = _one_line(err)
        return ReplayFrame(bag=self.path, index=index, stamp_ns=stamp, spread_ns=matched.spread_ns, left=left,
                           right=right, camera=camera, ground_truth=ground_truth, gt_note=note)


def _one_line(err: BaseException) -> str:
    return ' '.join(str(err).split()) or type(err).__name__


