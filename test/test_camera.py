"""Tests for stereonet_ros.camera: the stereo model from two CameraInfo messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from stereonet_ros.camera import CameraModelError, StereoCamera, check_image_size, from_camera_infos


@dataclass
class Header:
    frame_id: str = ''


@dataclass
class Info:
    width: int = 640
    height: int = 480
    p: Any = None
    header: Header = field(default_factory=Header)


def projection(fx: float = 700.0, fy: float = 710.0, cx: float = 320.0, cy: float = 240.0,
               tx: float = 0.0) -> list[float]:
    return [fx, 0.0, cx, tx, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]


def pair(**right: float) -> tuple[Info, Info]:
    right_p = {'cx': 330.0, 'tx': -700.0 * 0.12, **right}
    return (Info(p=projection(), header=Header('left_optical')),
            Info(p=projection(**right_p), header=Header('right_optical')))


def test_model_reads_left_intrinsics_right_focal_and_baseline_from_p() -> None:
    camera = from_camera_infos(*pair())
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (700.0, 710.0, 320.0, 240.0)
    assert camera.cx_right == 330.0 and camera.focal == 700.0
    assert camera.baseline == pytest.approx(0.12, abs=1e-15)
    assert (camera.width, camera.height, camera.frame_id) == (640, 480, 'left_optical')


def test_focal_is_the_right_cameras_p0() -> None:
    camera = from_camera_infos(*pair(fx=705.0, tx=-705.0 * 0.2))
    assert camera.focal == 705.0 and camera.fx == 700.0
    assert camera.baseline == pytest.approx(0.2, abs=1e-15)


def test_principal_offset_converts_image_shift_to_message_disparity() -> None:
    # Middlebury-style rig: cx_left 320, cx_right 330 (doffs = cx_r - cx_l = 10). A point at depth
    # Z has image shift f*T/Z + (cx_l - cx_r); the message disparity d = shift - (cx_l - cx_r)
    # must give back Z = f*T/d.
    camera = from_camera_infos(*pair())
    assert camera.principal_offset == -10.0
    depth = 2.0
    shift = camera.focal * camera.baseline / depth + (camera.cx - camera.cx_right)
    disparity = camera.shift_to_disparity(np.array([shift, np.nan], dtype=np.float32))
    assert disparity.dtype == np.float32
    assert camera.focal * camera.baseline / float(disparity[0]) == pytest.approx(depth, rel=1e-6)
    assert np.isnan(disparity[1])


def test_check_image_size_accepts_the_calibrated_size_and_names_both_on_mismatch() -> None:
    camera = from_camera_infos(*pair())
    check_image_size(camera, 480, 640)
    with pytest.raises(CameraModelError, match=r'image is 320x240 \(WxH\) but camera_info says 640x480'):
        check_image_size(camera, 240, 320)
    with pytest.raises(CameraModelError, match=r'image is 480x640 \(WxH\) but camera_info says 640x480'):
        check_image_size(camera, 640, 480)  # transposed


@pytest.mark.parametrize(('left_p', 'right_p', 'match'), [
    ([0.0] * 12, None, r'left camera_info P is all zeros: the camera is not calibrated'),
    (None, [0.0] * 12, r'right camera_info P is all zeros: the camera is not calibrated'),
    ('missing', None, r'left camera_info has no P matrix'),
    (None, [700.0, 0.0, 320.0], r'right camera_info P has 3 values, expected 12'),
    (None, ['a'] * 12, r'right camera_info P is not numeric'),
    ([float('nan')] + projection()[1:], None, r'left camera_info P has non-finite values'),
    (None, projection(tx=0.0), r'right camera_info P\[3\] \(Tx\) is 0: zero baseline'),
    (projection(fx=0.0), None, r'left P\[0\] \(fx\) must be > 0, got 0\.0'),
    (projection(fy=-1.0), None, r'left P\[5\] \(fy\) must be > 0, got -1\.0'),
    (None, projection(fx=-700.0, tx=84.0), r'right P\[0\] \(fx\) must be > 0, got -700\.0'),
    (None, projection(tx=+84.0), r'baseline must be > 0, got -0\.12 \(left and right swapped\?\)'),
])
def test_unusable_projection_matrices_raise_with_the_reason(left_p: Any, right_p: Any, match: str) -> None:
    left, right = pair()
    if left_p == 'missing':
        left = Info(p=None)
    elif left_p is not None:
        left.p = left_p
    if right_p is not None:
        right.p = right_p
    with pytest.raises(CameraModelError, match=match):
        from_camera_infos(left, right)


def test_an_object_without_a_p_field_is_reported_as_missing_p() -> None:
    @dataclass
    class NoP:
        width: int = 640
        height: int = 480
        header: Header = field(default_factory=Header)

    with pytest.raises(CameraModelError, match='right camera_info has no P matrix'):
        from_camera_infos(pair()[0], NoP())  # type: ignore[arg-type]


def test_left_and_right_sizes_must_agree_and_be_set() -> None:
    left, right = pair()
    right.width = 1280
    with pytest.raises(CameraModelError, match=r'left camera_info is 640x480 but right is 1280x480'):
        from_camera_infos(left, right)
    left, right = pair()
    left.width = right.width = 0
    left.height = right.height = 0
    with pytest.raises(CameraModelError, match=r'camera_info size is 0x0: width and height must be set'):
        from_camera_infos(left, right)


@pytest.mark.parametrize(('changes', 'match'), [
    ({'width': 0}, r'image size must be positive, got 0x480'),
    ({'fy': float('inf')}, r'fy must be finite, got inf'),
    ({'focal': 0.0}, r'focal length focal must be > 0, got 0\.0'),
    ({'baseline': -0.1}, r'baseline must be > 0, got -0\.1'),
])
def test_direct_construction_is_validated(changes: dict[str, Any], match: str) -> None:
    values: dict[str, Any] = {'width': 640, 'height': 480, 'fx': 700.0, 'fy': 700.0, 'cx': 320.0, 'cy': 240.0,
                              'cx_right': 320.0, 'focal': 700.0, 'baseline': 0.1}
    values.update(changes)
    with pytest.raises(CameraModelError, match=match):
        StereoCamera(**values)


def test_rclpy_camera_info_messages_fit() -> None:
    from sensor_msgs.msg import CameraInfo

    left = CameraInfo(width=1280, height=720, p=projection(fx=1000.0, fy=1000.0, cx=640.0, cy=360.0))
    left.header.frame_id = 'stereo_left_optical_frame'
    right = CameraInfo(width=1280, height=720,
                       p=projection(fx=1000.0, fy=1000.0, cx=640.0, cy=360.0, tx=-1000.0 * 0.065))
    camera = from_camera_infos(left, right)
    assert camera.frame_id == 'stereo_left_optical_frame'
    assert camera.baseline == pytest.approx(0.065, abs=1e-12)
    assert camera.principal_offset == 0.0
    check_image_size(camera, 720, 1280)


def test_rosbags_camera_info_messages_fit() -> None:
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS2_JAZZY).types
    header = types['std_msgs/msg/Header'](stamp=types['builtin_interfaces/msg/Time'](sec=0, nanosec=0),
                                          frame_id='cam0')
    roi = types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)

    def info(p: list[float]) -> Any:
        return types['sensor_msgs/msg/CameraInfo'](
            header=header, height=480, width=640, distortion_model='plumb_bob', d=np.zeros(5),
            k=np.eye(3).reshape(-1), r=np.eye(3).reshape(-1), p=np.asarray(p), binning_x=0, binning_y=0, roi=roi)

    camera = from_camera_infos(info(projection()), info(projection(cx=330.0, tx=-70.0)))
    assert camera.frame_id == 'cam0' and camera.baseline == pytest.approx(0.1)


def test_binning_and_roi_are_applied_as_image_geometry_does() -> None:
    """A driver sending a 2x2-binned crop: the model must describe the images it sends, and depth must not change."""
    from sensor_msgs.msg import CameraInfo, RegionOfInterest

    def info(tx: float, x_offset: int) -> CameraInfo:
        msg = CameraInfo(width=1280, height=720, p=projection(fx=1000.0, fy=1000.0, cx=640.0, cy=360.0, tx=tx),
                         binning_x=2, binning_y=2)
        msg.roi = RegionOfInterest(x_offset=x_offset, y_offset=50, width=800, height=600)
        return msg

    camera = from_camera_infos(info(0.0, 100), info(-1000.0 * 0.065, 120))
    assert (camera.width, camera.height) == (400, 300)
    assert (camera.fx, camera.fy, camera.focal) == (500.0, 500.0, 500.0)
    assert (camera.cx, camera.cy, camera.cx_right) == (270.0, 155.0, 260.0)
    assert camera.baseline == pytest.approx(0.065)
    # A point 2 m away: 32.5 px apart at full resolution; in the binned crops, shifted by the ROI offsets.
    u_left, u_right = 700.0, 700.0 - 1000.0 * 0.065 / 2.0
    shift = (u_left - 100) / 2 - (u_right - 120) / 2
    disparity = camera.shift_to_disparity(np.array([[shift]], dtype=np.float32))
    assert camera.focal * camera.baseline / float(disparity[0, 0]) == pytest.approx(2.0)
    check_image_size(camera, 300, 400)

    bad = info(-65.0, 100)
    bad.roi = RegionOfInterest(x_offset=600, y_offset=0, width=800, height=600)
    with pytest.raises(CameraModelError, match='right camera_info roi .* does not lie inside the 1280x720 image'):
        from_camera_infos(info(0.0, 100), bad)


# Issue 11: constants checked in float64 but published in float32 gave zero or infinite depth.
@pytest.mark.parametrize('right, message', [
    ({'tx': -1e-50}, r'baseline .* is 0 in float32'),
    ({'tx': -1e39}, r'baseline .* is not finite in float32'),
    ({'fx': 1e39, 'tx': -1e38}, r'focal .* is not finite in float32'),
    ({'cx': 1e39}, r'cx_right .* is not finite in float32'),
])
def test_right_constants_that_are_zero_or_infinite_in_float32_are_refused(right: dict[str, float],
                                                                          message: str) -> None:
    with pytest.raises(CameraModelError, match=message):
        from_camera_infos(*pair(**right))


def test_a_left_focal_length_that_is_zero_in_float32_is_refused() -> None:
    left, right = pair()
    left.p = projection(fx=1e-46)
    with pytest.raises(CameraModelError, match=r'fx .* is 0 in float32'):
        from_camera_infos(left, right)


def test_a_depth_constant_f_times_t_that_overflows_float32_is_refused_and_the_largest_finite_one_is_kept() -> None:
    largest = float(np.finfo(np.float32).max)
    with pytest.raises(CameraModelError, match=r'focal \* baseline .* not finite in float32'):
        from_camera_infos(*pair(fx=1e30, tx=-1e30 * 1e9))
    camera = from_camera_infos(*pair(fx=1.0, tx=-largest))  # f * T == float32's largest value: finite
    assert np.isfinite(np.float32(camera.focal * camera.baseline))
