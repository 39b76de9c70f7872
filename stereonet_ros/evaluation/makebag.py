"""Write rosbag2 bags of rectified stereo pairs with camera_info and ground truth (``stereonet-make-bag``).

Sources: synthetic scenes of the training generator (:mod:`stereonet_ros.data.synthetic`), the Middlebury
2014 Motorcycle pair that ships with scikit-image, Middlebury-format scene folders (``im0.png``,
``im1.png``, ``calib.txt``, ``disp0.pfm``), or a folder of pairs (``left/``, ``right/``, optional
``disparity/`` with ``.pfm`` / ``.npy`` of the same stem).

Each frame is written on the input topics (defaults: the node's, :mod:`~stereonet_ros.evaluation.replay`)
with one stamp for all of its messages, ``rate_hz`` apart (with ``compression``, the images as
``sensor_msgs/CompressedImage`` on ``<image topic>/compressed``, PNG or JPEG, as image_transport's
compressed plugin records them), and the ground truth as:

- ``disparity``: ``stereo_msgs/DisparityImage`` in its convention, ``d = shift - (cx_left - cx_right)``;
  pixels without ground truth hold ``min_disparity - 1`` (what stereo_image_proc writes);
- ``depth``: ``sensor_msgs/Image`` 32FC1 metres, ``Z = f * T / d``, NaN = no depth;
- ``depth-mm``: ``sensor_msgs/Image`` 16UC1 millimetres (rounded), 0 = no depth.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from stereonet_ros.camera import CameraModelError, StereoCamera
from stereonet_ros.evaluation.bagio import (BagWriteError, Storage, camera_info_messages, compressed_image_message,
                                            depth_message, disparity_message, image_message, open_bag_writer)
from stereonet_ros.evaluation.replay import (DEFAULT_LEFT_INFO_TOPIC, DEFAULT_LEFT_TOPIC, DEFAULT_RIGHT_INFO_TOPIC,
                                             DEFAULT_RIGHT_TOPIC, normalize_topic)
from stereonet_ros.geometry import disparity_to_depth
from stereonet_ros.image_codec import ImageCodecError
from stereonet_ros.image_compression import COMPRESSIONS, DEFAULT_JPEG_QUALITY, Compression, compressed_topic

F32 = npt.NDArray[np.float32]
GroundTruthFormat = Literal['disparity', 'depth', 'depth-mm', 'none']
GT_FORMATS: tuple[GroundTruthFormat, ...] = ('disparity', 'depth', 'depth-mm', 'none')
DEFAULT_GT_TOPICS: dict[str, str] = {'disparity': '/ground_truth/disparity', 'depth': '/ground_truth/depth',
                                     'depth-mm': '/ground_truth/depth'}
DEFAULT_FRAME_ID = 'left_camera_optical_frame'
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000  # a plausible wall-clock epoch, integer ns

# The Motorcycle pair as scikit-image ships it (quarter scale; its docstring's calibration).
MOTORCYCLE_FOCAL = 994.978  # pixels
MOTORCYCLE_CX = 311.193  # left principal point x, pixels
MOTORCYCLE_CY = 254.877
MOTORCYCLE_DOFFS = 31.086  # cx_right - cx_left, pixels
MOTORCYCLE_BASELINE = 0.193001  # metres


class MakeBagError(ValueError):
    """A source cannot be turned into a bag (missing files, sizes that disagree, a bad setting)."""


@dataclass(frozen=True)
class StereoPair:
    """One rectified pair with its camera and (optional) ground truth."""

    name: str
    left: npt.NDArray[Any]  # (H, W) gray or (H, W, 3) RGB, uint8 or uint16 (gray only)
    right: npt.NDArray[Any]  # like left
    camera: StereoCamera
    gt_shift: F32 | None  # (H, W) left-view image shift, pixels; non-finite = unknown


def simple_camera(width: int, height: int, focal: float, baseline: float, doffs: float = 0.0,
                  frame_id: str = DEFAULT_FRAME_ID) -> StereoCamera:
    """A rectified pair with square pixels, principal point at the centre; ``doffs = cx_right - cx_left``.

    Raises:
        MakeBagError: a size, the focal length or the baseline is not positive.
    """
    try:
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        return StereoCamera(width=width, height=height, fx=focal, fy=focal, cx=cx, cy=cy, cx_right=cx + doffs,
                            focal=focal, baseline=baseline, frame_id=frame_id)
    except CameraModelError as err:
        raise MakeBagError(f'camera: {err}') from err


def _as_uint8(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    values: npt.NDArray[np.uint8] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return values


def synthetic_pairs(count: int, width: int = 320, height: int = 240, seed: int = 0,
                    focal: float | None = None, baseline: float = 0.12) -> Iterator[StereoPair]:
    """``count`` scenes of the training generator (gray, 8-bit, with camera effects), exact ground truth.

    The disparity range is scaled to the width (up to ``width / 3`` px, below the placeholder's 192).
    Ground truth is the left disparity where it lies in the model's range (occluded pixels included,
    as the public benchmarks score them). ``focal`` defaults to ``width`` pixels.
    """
    from stereonet_ros.data.synthetic import SyntheticConfig, generate_sample

    if count < 1:
        raise MakeBagError(f'synthetic count must be >= 1, got {count}')
    high = min(max(8.0, width / 3.0), 180.0)
    try:
        config = SyntheticConfig(height=height, width=width, channels=1, disparity_range=(min(8.0, high), high),
                                 max_disparity=192.0, overshoot_probability=0.0).without_rig_augmentation()
    except ValueError as err:
        raise MakeBagError(f'synthetic scenes: {err}') from err
    camera = simple_camera(width, height, float(focal if focal is not None else width), baseline)
    for index in range(count):
        sample = generate_sample(config, seed, index)
        truth = sample.disp_left
        gt = np.where((truth >= 0) & (truth < config.max_disparity), truth, np.float32(np.inf)).astype(np.float32)
        yield StereoPair(f'synthetic-{seed}-{index}', _as_uint8(sample.left[:, :, 0]), _as_uint8(sample.right[:, :, 0]),
                         camera, gt)


def motorcycle_pair() -> StereoPair:
    """The Middlebury 2014 Motorcycle pair (quarter scale, 741x500, RGB) from scikit-image, with its
    calibration: ``cx_right - cx_left = 31.086`` px (``doffs``), so DisparityImage values differ from
    the image shift."""
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    height, width = sample.disparity.shape
    camera = StereoCamera(width=width, height=height, fx=MOTORCYCLE_FOCAL, fy=MOTORCYCLE_FOCAL, cx=MOTORCYCLE_CX,
                          cy=MOTORCYCLE_CY, cx_right=MOTORCYCLE_CX + MOTORCYCLE_DOFFS, focal=MOTORCYCLE_FOCAL,
                          baseline=MOTORCYCLE_BASELINE, frame_id=DEFAULT_FRAME_ID)
    return StereoPair(sample.name, sample.left, sample.right, camera, sample.disparity)


def _read_pair(left_path: Path, right_path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    from stereonet_ros.image_io import ImageReadError, read_image

    try:
        left, right = read_image(left_path), read_image(right_path)
    except ImageReadError as err:
        raise MakeBagError(str(err)) from err
    if left.shape != right.shape:
        raise MakeBagError(f'{left_path} is {left.shape[1]}x{left.shape[0]} but {right_path} is '
                           f'{right.shape[1]}x{right.shape[0]}')
    return left, right


def _read_truth(path: Path, shape: tuple[int, ...]) -> F32:
    from stereonet_ros.image_io import DisparityFileError, read_disparity

    try:
        truth = read_disparity(path)
    except DisparityFileError as err:
        raise MakeBagError(str(err)) from err
    if truth.shape != shape[:2]:
        raise MakeBagError(f'{path} is {truth.shape[1]}x{truth.shape[0]} but its images are {shape[1]}x{shape[0]}')
    return truth


def middlebury_pairs(root: str | os.PathLike[str]) -> Iterator[StereoPair]:
    """Middlebury 2014 scenes: ``root`` is a scene folder (``im0.png``, ``im1.png``, ``calib.txt``,
    optional ``disp0.pfm``) or a folder of them. Baseline from calib.txt (mm) in metres."""
    from stereonet_ros.data.datasets import DatasetError, read_middlebury_calibration

    folder = Path(root)
    if not folder.is_dir():
        raise MakeBagError(f'Middlebury folder {folder}: no such folder')
    scenes = [folder] if (folder / 'im0.png').is_file() else sorted(
        scene for scene in folder.iterdir() if (scene / 'im0.png').is_file())
    if not scenes:
        raise MakeBagError(f'Middlebury folder {folder}: no scene with im0.png')
    for scene in scenes:
        try:
            calibration = read_middlebury_calibration(scene / 'calib.txt')
        except DatasetError as err:
            raise MakeBagError(str(err)) from err
        left, right = _read_pair(scene / 'im0.png', scene / 'im1.png')
        if (calibration.height, calibration.width) != left.shape[:2]:
            raise MakeBagError(f'{scene}: images are {left.shape[1]}x{left.shape[0]} but calib.txt says '
                               f'{calibration.width}x{calibration.height}')
        truth_path = next((scene / name for name in ('disp0.pfm', 'disp0GT.pfm') if (scene / name).is_file()), None)
        cam0, cam1 = calibration.cam0, calibration.cam1
        try:
            camera = StereoCamera(width=calibration.width, height=calibration.height, fx=float(cam0[0, 0]),
                                  fy=float(cam0[1, 1]), cx=float(cam0[0, 2]), cy=float(cam0[1, 2]),
                                  cx_right=float(cam1[0, 2]), focal=float(cam1[0, 0]),
                                  baseline=calibration.baseline / 1000.0, frame_id=DEFAULT_FRAME_ID)
        except CameraModelError as err:
            raise MakeBagError(f'{scene / "calib.txt"}: {err}') from err
        truth = _read_truth(truth_path, left.shape) if truth_path is not None else None
        yield StereoPair(scene.name, left, right, camera, truth)


def folder_pairs(root: str | os.PathLike[str], focal: float | None = None, baseline: float = 0.12,
                 doffs: float = 0.0) -> Iterator[StereoPair]:
    """Pairs ``root/left/NAME`` + ``root/right/NAME`` (same file names), ground truth ``root/disparity/STEM.pfm``
    or ``.npy`` when present (image shift, non-finite = unknown). The camera is :func:`simple_camera`
    (``focal`` defaults to the image width)."""
    folder = Path(root)
    left_dir, right_dir, truth_dir = folder / 'left', folder / 'right', folder / 'disparity'
    if not left_dir.is_dir() or not right_dir.is_dir():
        raise MakeBagError(f'pairs folder {folder}: needs left/ and right/ subfolders')
    names = sorted(path.name for path in left_dir.iterdir() if path.is_file())
    if not names:
        raise MakeBagError(f'pairs folder {folder}: left/ is empty')
    for name in names:
        if not (right_dir / name).is_file():
            raise MakeBagError(f'pairs folder {folder}: right/{name} is missing')
        left, right = _read_pair(left_dir / name, right_dir / name)
        stem = Path(name).stem
        truth_path = next((truth_dir / f'{stem}{suffix}' for suffix in ('.pfm', '.npy')
                           if (truth_dir / f'{stem}{suffix}').is_file()), None)
        truth = _read_truth(truth_path, left.shape) if truth_path is not None else None
        height, width = left.shape[:2]
        camera = simple_camera(width, height, float(focal if focal is not None else width), baseline, doffs)
        yield StereoPair(stem, left, right, camera, truth)


def image_encoding(image: npt.NDArray[Any]) -> str:
    """The Image encoding that carries ``image`` losslessly: mono8, mono16 or rgb8.

    Raises:
        MakeBagError: another dtype or layout (16-bit colour has no encoding the node reads).
    """
    if image.ndim == 2 and image.dtype == np.uint8:
        return 'mono8'
    if image.ndim == 2 and image.dtype == np.uint16:
        return 'mono16'
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return 'rgb8'
    raise MakeBagError(f'cannot put a {image.dtype} image of shape {image.shape} in a bag: use 8-bit gray/RGB '
                       'or 16-bit gray')


def shift_to_disparity_message_values(shift: npt.ArrayLike, camera: StereoCamera) -> tuple[F32, float]:
    """Ground-truth image shift -> DisparityImage values and ``min_disparity``.

    ``d = shift - (cx_left - cx_right)``; ``min_disparity`` is 0, or the floor of the smallest valid ``d``
    when that is negative; pixels without ground truth get ``min_disparity - 1`` (invalid).

    Returns:
        ``(H, W)`` float32 values and ``min_disparity``.
    """
    disparity = np.asarray(shift, dtype=np.float32) - np.float32(camera.principal_offset)
    valid = np.isfinite(disparity)
    lowest = float(disparity[valid].min()) if valid.any() else 0.0
    min_disparity = min(0.0, float(math.floor(lowest)))
    values = np.where(valid, disparity, np.float32(min_disparity - 1.0)).astype(np.float32)
    return values, min_disparity


@dataclass(frozen=True)
class BagTopics:
    """Topic names a bag is written with (defaults: the node's inputs)."""

    left: str = DEFAULT_LEFT_TOPIC
    right: str = DEFAULT_RIGHT_TOPIC
    left_info: str = DEFAULT_LEFT_INFO_TOPIC
    right_info: str = DEFAULT_RIGHT_INFO_TOPIC
    ground_truth: str | None = None  # None = DEFAULT_GT_TOPICS of the ground-truth format


def image_topics(topics: BagTopics, compression: Compression | None) -> tuple[str, str]:
    """The left and right image topics a bag is written with: ``<topic>/compressed`` with a compression."""
    left, right = normalize_topic(topics.left), normalize_topic(topics.right)
    return (left, right) if compression is None else (compressed_topic(left), compressed_topic(right))


def write_stereo_bag(path: str | os.PathLike[str], pairs: Iterable[StereoPair], storage: Storage = 'mcap',
                     gt: GroundTruthFormat = 'disparity', topics: BagTopics = BagTopics(), rate_hz: float = 10.0,
                     start_ns: int = DEFAULT_START_NS, compression: Compression | None = None,
                     jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> int:
    """Write ``pairs`` as a rosbag2 bag at ``path`` (a new folder); return the number of frames.

    Every message of frame ``i`` is stamped (header and log time) ``start_ns + i / rate_hz``. A pair
    without ground truth gets no ground-truth message. With ``compression`` (``png``, lossless, or ``jpeg``
    at ``jpeg_quality``) the images are ``sensor_msgs/CompressedImage`` on :func:`image_topics`.

    Raises:
        MakeBagError: bad ``gt`` / ``rate_hz`` / ``compression`` / ``jpeg_quality``, an image that cannot be
            encoded, or no pairs.
        BagWriteError: the bag cannot be written (e.g. ``path`` exists).
    """
    if gt not in GT_FORMATS:
        raise MakeBagError(f"ground truth format must be one of {', '.join(GT_FORMATS)}, got {gt!r}")
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise MakeBagError(f'rate must be > 0 Hz, got {rate_hz}')
    if compression is not None and compression not in COMPRESSIONS:
        raise MakeBagError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise MakeBagError(f'JPEG quality must be an integer in [1, 100], got {jpeg_quality!r}')
    period_ns = round(1e9 / rate_hz)
    gt_topic = normalize_topic(topics.ground_truth or DEFAULT_GT_TOPICS.get(gt, '/ground_truth'))
    left_topic, right_topic = image_topics(topics, compression)

    def image(array: npt.NDArray[Any], stamp: int, frame: str) -> Any:
        encoding = image_encoding(array)
        if compression is None:
            return image_message(array, encoding, stamp, frame)
        try:
            return compressed_image_message(array, encoding, compression, stamp, frame, jpeg_quality)
        except ImageCodecError as err:
            raise MakeBagError(f'cannot compress a {encoding} image as {compression}: {err}') from err

    count = 0
    with open_bag_writer(path, storage) as bag:
        for index, pair in enumerate(pairs):
            stamp = start_ns + index * period_ns
            camera = pair.camera
            frame = camera.frame_id
            bag.write(left_topic, image(pair.left, stamp, frame), stamp)
            bag.write(right_topic, image(pair.right, stamp, frame), stamp)
            left_info, right_info = camera_info_messages(camera, stamp)
            bag.write(normalize_topic(topics.left_info), left_info, stamp)
            bag.write(normalize_topic(topics.right_info), right_info, stamp)
            if gt != 'none' and pair.gt_shift is not None:
                values, min_disparity = shift_to_disparity_message_values(pair.gt_shift, camera)
                if gt == 'disparity':
                    message = disparity_message(values, camera, stamp, min_disparity,
                                                max_disparity=float(np.max(values, initial=min_disparity)))
                else:
                    depth = disparity_to_depth(values, camera.focal, camera.baseline, min_disparity)  # metres
                    message = depth_message(depth, stamp, frame, '32FC1' if gt == 'depth' else '16UC1')
                bag.write(gt_topic, message, stamp)
            count += 1
        if count == 0:
            raise MakeBagError(f'no stereo pairs to write into {path}')
    return count


__all__ = ['BagTopics', 'BagWriteError', 'MakeBagError', 'StereoPair', 'folder_pairs', 'image_encoding', 'image_topics',
           'middlebury_pairs', 'motorcycle_pair', 'shift_to_disparity_message_values', 'simple_camera',
           'synthetic_pairs', 'write_stereo_bag']
