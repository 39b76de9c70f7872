"""Arrays -> ROS messages: DisparityImage, PointCloud2, Image and DiagnosticArray.

All the math and byte layout lives in the pure modules (``processing``, ``geometry``,
``image_codec``); this file only copies fields. Byte buffers are ``array.array('B')`` and are
assigned to ``msg.data`` directly: rclpy then copies them with one memcpy, where ``bytes`` would
be checked element by element.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from stereonet_ros.camera import StereoCamera
from stereonet_ros.geometry import CloudBuffer
from stereonet_ros.image_codec import ImageFields, array_to_image_fields
from stereonet_ros.processing import StereoOutputs


def image_message(fields: ImageFields, header: Header) -> Image:
    """``sensor_msgs/Image`` from :func:`~stereonet_ros.image_codec.array_to_image_fields` output."""
    msg = Image()
    msg.header = header
    msg.height = fields.height
    msg.width = fields.width
    msg.encoding = fields.encoding
    msg.is_bigendian = fields.is_bigendian
    msg.step = fields.step
    msg.data = fields.data
    return msg


def float_image_message(array: npt.NDArray[np.float32], header: Header) -> Image:
    """``(H, W)`` float32 -> a ``32FC1`` Image (depth in metres, confidence, ...)."""
    return image_message(array_to_image_fields(array, '32FC1'), header)


def rgb_image_message(array: npt.NDArray[np.uint8], header: Header) -> Image:
    """``(H, W, 3)`` uint8 RGB -> an ``rgb8`` Image."""
    return image_message(array_to_image_fields(array, 'rgb8'), header)


def disparity_message(outputs: StereoOutputs, camera: StereoCamera, header: Header) -> DisparityImage:
    """``stereo_msgs/DisparityImage`` as stereo_image_proc fills it.

    ``f`` = the right camera's ``P[0]``, ``t`` = ``-P_right[3] / P_right[0]`` (so ``Z = f * t / d``);
    header (and the image's) = the left image's; ``image`` is ``32FC1`` at the input resolution.
    """
    msg = DisparityImage()
    msg.header = header
    msg.image = float_image_message(outputs.disparity, header)
    msg.f = float(camera.focal)
    msg.t = float(camera.baseline)
    window = outputs.valid_window
    msg.valid_window = RegionOfInterest(x_offset=window.x_offset, y_offset=window.y_offset,
                                        width=window.width, height=window.height, do_rectify=False)
    msg.min_disparity = float(outputs.min_disparity)
    msg.max_disparity = float(outputs.max_disparity)
    msg.delta_d = float(outputs.delta_d)
    return msg


def pointcloud_message(cloud: CloudBuffer, height: int, width: int, header: Header) -> PointCloud2:
    """An organized ``sensor_msgs/PointCloud2`` (``height`` rows of ``width`` points), ``is_dense`` false."""
    msg = PointCloud2()
    msg.header = header
    msg.height = height
    msg.width = width
    msg.fields = [PointField(name=spec.name, offset=spec.offset, datatype=spec.datatype, count=spec.count)
                  for spec in cloud.fields]
    msg.is_bigendian = False
    msg.point_step = cloud.point_step
    msg.row_step = width * cloud.point_step
    msg.data = cloud.data
    msg.is_dense = False  # invalid pixels are NaN points
    return msg


LEVELS = {'OK': DiagnosticStatus.OK, 'WARN': DiagnosticStatus.WARN, 'ERROR': DiagnosticStatus.ERROR,
          'STALE': DiagnosticStatus.STALE}


def diagnostic_array(stamp: Time, name: str, hardware_id: str, level: str, message: str,
                     values: Mapping[str, str]) -> DiagnosticArray:
    """A ``diagnostic_msgs/DiagnosticArray`` holding one status (level: 'OK', 'WARN', 'ERROR', 'STALE')."""
    status = DiagnosticStatus(level=LEVELS[level], name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=key, value=value) for key, value in values.items()])
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array
