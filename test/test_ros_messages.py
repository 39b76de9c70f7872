"""Arrays -> rclpy messages (in process, no DDS): every field copied, buffers kept byte-exact."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('rclpy')

from std_msgs.msg import Header  # noqa: E402

from stereonet_ros.camera import StereoCamera  # noqa: E402
from stereonet_ros.geometry import pointcloud2_buffer  # noqa: E402
from stereonet_ros.image_codec import image_to_array  # noqa: E402
from stereonet_ros.processing import StereoOutputs, ValidWindow  # noqa: E402
from stereonet_ros.ros.messages import (diagnostic_array, disparity_message, float_image_message,  # noqa: E402
                                        pointcloud_message, rgb_image_message)

CAMERA = StereoCamera(width=5, height=4, fx=100.0, fy=100.0, cx=2.0, cy=1.5, cx_right=2.0, focal=100.0, baseline=0.25)


def header() -> Header:
    msg = Header(frame_id='left_optical')
    msg.stamp.sec, msg.stamp.nanosec = 12, 345
    return msg


def test_disparity_message_carries_the_camera_and_the_disparity_fields() -> None:
    disparity = np.arange(20, dtype=np.float32).reshape(4, 5) - 1.0
    outputs = StereoOutputs(disparity=disparity, valid=disparity >= 0, min_disparity=0.0, max_disparity=64.0,
                            delta_d=0.001, valid_window=ValidWindow(3, 0, 2, 4))
    msg = disparity_message(outputs, CAMERA, header())
    assert (msg.f, msg.t, msg.min_disparity, msg.max_disparity) == (100.0, 0.25, 0.0, 64.0)
    assert msg.delta_d == pytest.approx(0.001)
    assert (msg.valid_window.x_offset, msg.valid_window.width, msg.valid_window.height) == (3, 2, 4)
    assert msg.header.frame_id == msg.image.header.frame_id == 'left_optical' and msg.header.stamp.nanosec == 345
    assert msg.image.encoding == '32FC1' and msg.image.step == 20
    assert np.array_equal(image_to_array(msg.image), disparity)


def test_images_round_trip_through_their_messages() -> None:
    depth = np.array([[1.5, np.nan], [np.inf, 0.25]], dtype=np.float32)
    assert np.array_equal(image_to_array(float_image_message(depth, header())), depth, equal_nan=True)
    colours = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    msg = rgb_image_message(colours, header())
    assert msg.encoding == 'rgb8' and msg.step == 6 and np.array_equal(image_to_array(msg), colours)


def test_pointcloud_message_is_organized_and_not_dense() -> None:
    points = np.full((4, 5, 3), np.nan, dtype=np.float32)
    points[1, 2] = (0.5, -0.25, 2.0)
    cloud = pointcloud2_buffer(points, None, avoid_padding=True)
    msg = pointcloud_message(cloud, 4, 5, header())
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (4, 5, 12, 60)
    assert not msg.is_dense and not msg.is_bigendian
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [('x', 0, 7, 1), ('y', 4, 7, 1),
                                                                              ('z', 8, 7, 1)]
    values = np.frombuffer(msg.data, dtype='<f4').reshape(4, 5, 3)
    assert np.array_equal(values, points, equal_nan=True)


def test_diagnostic_array_holds_one_status_with_its_values() -> None:
    msg = diagnostic_array(header().stamp, '/stereonet_node: stereo processing', 'cpu', 'WARN', 'placeholder',
                           {'device': 'cpu', 'dropped pairs (latest wins)': '3'})
    (status,) = msg.status
    assert status.level == b'\x01' and status.hardware_id == 'cpu' and status.message == 'placeholder'
    assert [(value.key, value.value) for value in status.values] == [('device', 'cpu'),
                                                                     ('dropped pairs (latest wins)', '3')]
