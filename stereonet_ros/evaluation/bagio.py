"""Build ROS 2 messages from arrays and write them into rosbag2 bags, with ``rosbags`` (no ROS install).

Messages are ``rosbags`` classes of the ROS 2 Jazzy type store (:data:`TYPESTORE`); array data goes
through the same codecs the node uses (:func:`~stereonet_ros.image_codec.array_to_image_fields`,
:func:`~stereonet_ros.geometry.pointcloud2_buffer`), so a bag written here carries exactly what the
node would publish.

Conventions (CONVENTIONS.md): camera infos carry rectified ``P`` matrices, ``Tx = -fx * baseline`` on the
right one; ``stereo_msgs/DisparityImage`` values have the principal-point offset removed
(``d = shift - (cx_left - cx_right)``); depth images are ``32FC1`` metres (NaN = no depth) or ``16UC1``
millimetres (0 = no depth); clouds are organized with NaN points for no depth.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_typestore

from stereonet_ros.camera import StereoCamera
from stereonet_ros.geometry import CloudBuffer
from stereonet_ros.image_codec import array_to_image_fields
from stereonet_ros.image_compression import DEFAULT_JPEG_QUALITY, Compression, compress

if TYPE_CHECKING:  # processing imports torch; bags of ground truth are written without it
    from stereonet_ros.processing import StereoOutputs, ValidWindow

Storage = Literal['mcap', 'sqlite3']
STORAGES: tuple[Storage, ...] = ('mcap', 'sqlite3')

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
"""The message definitions bags are written with (and read with when a bag carries none)."""

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
DISPARITY_IMAGE = 'stereo_msgs/msg/DisparityImage'
POINT_CLOUD2 = 'sensor_msgs/msg/PointCloud2'

DEPTH_MM_MAX = 65535
"""Largest depth a 16UC1 image holds, millimetres; farther depths are written as 0 (no depth)."""


class BagWriteError(Exception):
    """A bag cannot be written (path exists, storage unknown, I/O error) or an array does not fit a message."""


def _type(name: str) -> Any:
    return TYPESTORE.types[name]


def header(stamp_ns: int, frame_id: str) -> Any:
    """``std_msgs/Header`` for integer-nanosecond ``stamp_ns``."""
    if stamp_ns < 0:
        raise BagWriteError(f'stamp must be >= 0 ns, got {stamp_ns}')
    time = _type('builtin_interfaces/msg/Time')(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return _type('std_msgs/msg/Header')(stamp=time, frame_id=frame_id)


def image_message(array: npt.NDArray[Any], encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """``sensor_msgs/Image`` of ``array`` (``(H, W)`` or ``(H, W, C)`` in the encoding's dtype and order)."""
    fields = array_to_image_fields(array, encoding)
    return _type(IMAGE)(header=header(stamp_ns, frame_id), height=fields.height, width=fields.width,
                        encoding=fields.encoding, is_bigendian=fields.is_bigendian, step=fields.step,
                        data=np.frombuffer(fields.data, dtype=np.uint8))


def compressed_image_message(array: npt.NDArray[Any], encoding: str, compression: Compression, stamp_ns: int,
                             frame_id: str, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> Any:
    """``sensor_msgs/CompressedImage`` of ``array`` as image_transport's compressed plugin publishes it (format
    ``rgb8; png compressed bgr8`` and so on; :func:`~stereonet_ros.image_compression.compress`)."""
    fields = compress(array, encoding, compression, jpeg_quality=jpeg_quality)
    return _type(COMPRESSED_IMAGE)(header=header(stamp_ns, frame_id), format=fields.format,
                                   data=np.frombuffer(fields.data, dtype=np.uint8))


def _roi(width: int = 0, height: int = 0, x_offset: int = 0, y_offset: int = 0) -> Any:
    return _type('sensor_msgs/msg/RegionOfInterest')(x_offset=x_offset, y_offset=y_offset, height=height,
                                                      width=width, do_rectify=False)


def camera_info_messages(camera: StereoCamera, stamp_ns: int, right_frame_id: str = '') -> tuple[Any, Any]:
    """Left and right ``sensor_msgs/CameraInfo`` of a rectified pair, as a stereo driver publishes them.

    ``P_left = [fx 0 cx 0; 0 fy cy 0; 0 0 1 0]``, ``P_right = [f 0 cx_r -f*T; 0 fy cy 0; 0 0 1 0]`` (row-major
    3x4); ``K`` = the left 3x3 of ``P``, ``R`` = identity, no distortion (the images are rectified).
    :func:`stereonet_ros.camera.from_camera_infos` reads ``camera`` back from them.
    """
    infos = []
    for cx, fx, tx, frame in ((camera.cx, camera.fx, 0.0, camera.frame_id),
                              (camera.cx_right, camera.focal, -camera.focal * camera.baseline,
                               right_frame_id or camera.frame_id)):
        p = np.array([fx, 0.0, cx, tx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=np.float64)
        k = np.array([fx, 0.0, cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0], dtype=np.float64)
        infos.append(_type(CAMERA_INFO)(
            header=header(stamp_ns, frame), height=camera.height, width=camera.width, distortion_model='plumb_bob',
            d=np.zeros(5, dtype=np.float64), k=k, r=np.eye(3, dtype=np.float64).reshape(-1), p=p,
            binning_x=0, binning_y=0, roi=_roi()))
    return infos[0], infos[1]


def disparity_message(disparity: npt.NDArray[np.float32], camera: StereoCamera, stamp_ns: int,
                      min_disparity: float, max_disparity: float, delta_d: float = 1.0 / 16.0,
                      valid_window: ValidWindow | None = None) -> Any:
    """``stereo_msgs/DisparityImage``: ``disparity`` is already in its convention (offset removed).

    Args:
        disparity: ``(H, W)`` float32, pixels; values below ``min_disparity`` or NaN are invalid.
        min_disparity, max_disparity: the range searched, pixels, DisparityImage convention.
        delta_d: smallest step of the values; 1/16 as stereo_image_proc's block matchers (our values
            are continuous floats, so any consumer's division by it stays finite).
        valid_window: the region holding values, ``None`` = the whole image.
    """
    values = np.asarray(disparity, dtype=np.float32)
    if values.ndim != 2:
        raise BagWriteError(f'disparity must be (H, W), got shape {values.shape}')
    height, width = values.shape
    window = _roi(width, height) if valid_window is None else _roi(
        valid_window.width, valid_window.height, valid_window.x_offset, valid_window.y_offset)
    return _type(DISPARITY_IMAGE)(
        header=header(stamp_ns, camera.frame_id), image=image_message(values, '32FC1', stamp_ns, camera.frame_id),
        f=float(camera.focal), t=float(camera.baseline), valid_window=window,
        min_disparity=float(min_disparity), max_disparity=float(max_disparity), delta_d=float(delta_d))


def depth_message(depth_m: npt.NDArray[np.float32], stamp_ns: int, frame_id: str,
                  encoding: Literal['32FC1', '16UC1'] = '32FC1') -> Any:
    """Depth image (REP 118): ``32FC1`` metres with NaN for no depth, or ``16UC1`` millimetres with 0.

    16UC1 rounds to the nearest millimetre; depths that are not finite, ``<= 0`` or beyond
    :data:`DEPTH_MM_MAX` mm become 0 (no depth).
    """
    depth = np.asarray(depth_m, dtype=np.float32)
    if encoding == '32FC1':
        return image_message(np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype(np.float32),
                             '32FC1', stamp_ns, frame_id)
    if encoding != '16UC1':
        raise BagWriteError(f"depth encoding must be '32FC1' or '16UC1', got {encoding!r}")
    millimetres = np.rint(np.where(np.isfinite(depth), depth, 0.0).astype(np.float64) * 1000.0)
    millimetres[(millimetres <= 0) | (millimetres > DEPTH_MM_MAX)] = 0
    return image_message(millimetres.astype(np.uint16), '16UC1', stamp_ns, frame_id)


def cloud_message(cloud: CloudBuffer, height: int, width: int, stamp_ns: int, frame_id: str) -> Any:
    """An organized ``sensor_msgs/PointCloud2`` of ``height`` rows of ``width`` points, ``is_dense`` false."""
    point_field = _type('sensor_msgs/msg/PointField')
    fields = [point_field(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in cloud.fields]
    return _type(POINT_CLOUD2)(
        header=header(stamp_ns, frame_id), height=height, width=width, fields=fields, is_bigendian=False,
        point_step=cloud.point_step, row_step=cloud.point_step * width,
        data=np.frombuffer(cloud.data, dtype=np.uint8), is_dense=False)


def node_output_messages(outputs: StereoOutputs, camera: StereoCamera, stamp_ns: int) -> dict[str, Any]:
    """What the node publishes for ``outputs`` (:func:`~stereonet_ros.processing.postprocess`), as bag messages.

    Keys are the node's topics without namespace (``disparity``, ``depth``, ``points2``), present for
    the outputs that were computed; fields are filled as ``stereonet_ros.ros.messages`` fills them.
    """
    frame = camera.frame_id
    height, width = outputs.disparity.shape
    messages: dict[str, Any] = {'disparity': disparity_message(
        outputs.disparity, camera, stamp_ns, outputs.min_disparity, outputs.max_disparity, outputs.delta_d,
        outputs.valid_window)}
    if outputs.depth is not None:
        messages['depth'] = depth_message(outputs.depth, stamp_ns, frame)
    if outputs.cloud is not None:
        messages['points2'] = cloud_message(outputs.cloud, height, width, stamp_ns, frame)
    return messages


@dataclass
class BagWriter:
    """An open rosbag2 bag: ``write(topic, message, stamp_ns)``; one connection per topic, made on first use.

    Use :func:`open_bag_writer`; the bag is complete (``metadata.yaml`` written) only when it closes.
    """

    writer: Writer
    path: Path
    _connections: dict[str, Any]

    def write(self, topic: str, message: Any, stamp_ns: int) -> None:
        """Serialize ``message`` (a :data:`TYPESTORE` class) to ``topic``; the log time is ``stamp_ns``."""
        msgtype = str(message.__msgtype__)
        connection = self._connections.get(topic)
        if connection is None:
            connection = self.writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise BagWriteError(f'{self.path}: topic {topic} holds {connection.msgtype}, cannot add a {msgtype}')
        try:
            self.writer.write(connection, stamp_ns, TYPESTORE.serialize_cdr(message, msgtype))
        except (WriterError, OSError) as err:  # a full disk, a quota: say so in one line, the bag is removed
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise BagWriteError(f'cannot write bag {self.path}: {reason}') from err


@contextmanager
def open_bag_writer(path: str | os.PathLike[str], storage: Storage = 'mcap') -> Iterator[BagWriter]:
    """Create the rosbag2 bag folder ``path`` (it must not exist) in ``storage`` and yield a writer.

    On an exception inside the block the partial bag folder is removed, so that no half-written bag
    is left looking usable.

    Raises:
        BagWriteError: unknown storage, ``path`` exists, or the bag cannot be written.
    """
    if storage not in STORAGES:
        raise BagWriteError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    bag_path = Path(path)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    try:
        writer = Writer(bag_path, version=9, storage_plugin=plugin)
        writer.open()
    except (WriterError, OSError) as err:
        raise BagWriteError(f'cannot write bag {bag_path}: {err}') from err
    try:
        yield BagWriter(writer, bag_path, {})
    except BaseException:
        try:
            writer.close()
        except (WriterError, OSError):
            pass
        shutil.rmtree(bag_path, ignore_errors=True)
        raise
    try:
        writer.close()
    except (WriterError, OSError) as err:
        raise BagWriteError(f'cannot finish bag {bag_path}: {err}') from err

