"""Tests for stereonet_ros.geometry: depth, reprojection, colour packing and PointCloud2 layouts."""
from __future__ import annotations

import numpy as np
import pytest

from stereonet_ros.camera import StereoCamera
from stereonet_ros.geometry import (
    FLOAT32,
    GeometryError,
    PointFieldSpec,
    depth_to_disparity,
    disparity_to_depth,
    hidden_from_right_view,
    pack_rgb_float,
    pointcloud2_buffer,
    project_to_pixel,
    reproject_to_3d,
)

CAMERA = StereoCamera(width=8, height=6, fx=700.0, fy=710.0, cx=3.5, cy=2.25, cx_right=3.5, focal=700.0,
                      baseline=0.12)


def test_depth_is_focal_times_baseline_over_disparity() -> None:
    depth = disparity_to_depth(np.array([42.0, 84.0, 8.4]), focal=700.0, baseline=0.12)
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, [2.0, 1.0, 10.0], rtol=1e-6)


def test_invalid_disparities_give_nan_depth() -> None:
    d = np.array([[0.0, -1.0, np.nan], [np.inf, -np.inf, 4.999], [5.0, 10.0, 1e-3]], dtype=np.float32)
    depth = disparity_to_depth(d, focal=500.0, baseline=0.1, min_disparity=5.0)
    expected_valid = np.array([[0, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(np.isfinite(depth), expected_valid)
    np.testing.assert_allclose(depth[2, :2], [10.0, 5.0], rtol=1e-6)
    # Without a minimum, any positive finite disparity is valid; 0 and negatives never are.
    depth = disparity_to_depth(d, focal=500.0, baseline=0.1)
    np.testing.assert_array_equal(np.isfinite(depth), np.isfinite(d) & (d > 0.0))


def test_depth_to_disparity_inverts_and_marks_no_depth_nan() -> None:
    d = np.array([1.0, 12.5, 96.0], dtype=np.float32)
    z = disparity_to_depth(d, 700.0, 0.12)
    np.testing.assert_allclose(depth_to_disparity(z, 700.0, 0.12), d, rtol=1e-6)
    out = depth_to_disparity(np.array([0.0, -2.0, np.nan, np.inf]), 700.0, 0.12)
    assert out.dtype == np.float32 and np.isnan(out).all()


@pytest.mark.parametrize(('focal', 'baseline', 'match'), [
    (0.0, 0.1, r'focal must be finite and > 0, got 0\.0'),
    (np.nan, 0.1, r'focal must be finite and > 0, got nan'),
    (700.0, -0.1, r'baseline must be finite and > 0, got -0\.1'),
    (700.0, np.inf, r'baseline must be finite and > 0, got inf'),
])
def test_unusable_constants_raise(focal: float, baseline: float, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        disparity_to_depth(np.ones(3), focal, baseline)
    with pytest.raises(GeometryError, match=match):
        depth_to_disparity(np.ones(3), focal, baseline)


def test_hidden_from_right_view_by_hand() -> None:
    """Row 0: disparities 1, 1, 1, 1, 4, 4, 1, 1 land at -1, 0, 1, 2, 0, 1, 5, 6 in the right image. Column 0 lands
    left of the image (beyond half a pixel); column 3 (at 2) is hidden by column 4 (at 0) lying 2 px left of it;
    column 2 (at 1) lies exactly the tolerance (1 px) right of column 4's spot: not hidden at 1, hidden at 0."""
    d = np.array([[1, 1, 1, 1, 4, 4, 1, 1],
                  [1, 1, 1, 1, np.nan, np.inf, 1, 1],  # unknown: hides nothing, never marked
                  [0.5, 0.75, 2.75, 1, 1, 1, 1, 1]],  # land at -0.5 (in view), 0.25 (1 px right of -0.75), -0.75
                 np.float32)
    hidden = hidden_from_right_view(d, tolerance_px=1.0)
    expected = np.zeros(d.shape, bool)
    expected[0, [0, 3]] = True
    expected[1, 0] = True
    expected[2, 2] = True
    np.testing.assert_array_equal(hidden, expected)
    strict = hidden_from_right_view(d, tolerance_px=0.0)
    expected[0, 2] = True  # 0 < 1 - 0
    expected[2, [0, 1]] = True  # 2.75 at column 2 lands at -0.75, left of columns 0 (-0.5) and 1 (0.25)
    np.testing.assert_array_equal(strict, expected)


@pytest.mark.parametrize(('disparity', 'tolerance', 'match'), [
    (np.ones(5), 1.0, r'disparity must be \(H, W\), got shape \(5,\)'),
    (np.ones((2, 2)), -0.1, r'tolerance_px -0\.1: must be finite and >= 0'),
    (np.ones((2, 2)), np.nan, r'tolerance_px nan: must be finite and >= 0'),
])
def test_hidden_from_right_view_refuses_bad_input(disparity: np.ndarray, tolerance: float, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        hidden_from_right_view(disparity, tolerance)


def test_reprojection_known_point() -> None:
    d = np.full((6, 8), np.nan, dtype=np.float32)
    d[5, 7] = 42.0  # Z = 700 * 0.12 / 42 = 2
    points = reproject_to_3d(d, CAMERA)
    assert points.shape == (6, 8, 3) and points.dtype == np.float32
    x, y, z = points[5, 7]
    assert z == pytest.approx(2.0, rel=1e-6)
    assert x == pytest.approx((7 - 3.5) * 2.0 / 700.0, rel=1e-6)
    assert y == pytest.approx((5 - 2.25) * 2.0 / 710.0, rel=1e-6)


def test_reprojection_uses_left_fx_fy_for_xy_and_focal_for_z() -> None:
    camera = StereoCamera(width=4, height=3, fx=500.0, fy=400.0, cx=1.0, cy=1.0, cx_right=1.0, focal=600.0,
                          baseline=0.5)
    points = reproject_to_3d(np.full((3, 4), 10.0, dtype=np.float32), camera)
    x, y, z = points[2, 3]
    assert z == pytest.approx(600.0 * 0.5 / 10.0)
    assert x == pytest.approx((3 - 1.0) * z / 500.0) and y == pytest.approx((2 - 1.0) * z / 400.0)


def test_invalid_pixels_become_nan_points_never_the_origin() -> None:
    d = np.array([[10.0, 0.0, -3.0, np.nan], [np.inf, 2.0, 1.5, 30.0]], dtype=np.float32)
    points = reproject_to_3d(d, CAMERA, min_disparity=1.9)
    valid = np.array([[1, 0, 0, 0], [0, 1, 0, 1]], dtype=bool)
    assert np.isfinite(points[valid]).all()
    assert np.isnan(points[~valid]).all()  # all three coordinates


def test_pixel_to_3d_to_pixel_round_trip() -> None:
    rng = np.random.default_rng(0)
    height, width = 48, 64
    camera = StereoCamera(width=width, height=height, fx=520.0, fy=515.0, cx=31.7, cy=24.2, cx_right=29.0,
                          focal=520.0, baseline=0.09)
    d = rng.uniform(0.5, 120.0, (height, width)).astype(np.float32)
    points = reproject_to_3d(d, camera)
    uv = project_to_pixel(points, camera)
    v, u = np.mgrid[0:height, 0:width]
    np.testing.assert_allclose(uv[..., 0], u, atol=1e-3)
    np.testing.assert_allclose(uv[..., 1], v, atol=1e-3)
    np.testing.assert_allclose(depth_to_disparity(points[..., 2], camera.focal, camera.baseline), d, rtol=1e-5)


def test_project_to_pixel_marks_points_behind_or_at_the_camera_nan() -> None:
    uv = project_to_pixel(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, -1.0], [np.nan] * 3, [0.0, 0.0, 1.0]]), CAMERA)
    assert np.isnan(uv[:3]).all()
    np.testing.assert_allclose(uv[3], [CAMERA.cx, CAMERA.cy])


@pytest.mark.parametrize(('call', 'match'), [
    (lambda: reproject_to_3d(np.ones(5), CAMERA), r'disparity must be \(H, W\), got shape \(5,\)'),
    (lambda: reproject_to_3d(np.ones((1, 4, 5)), CAMERA), r'disparity must be \(H, W\), got shape \(1, 4, 5\)'),
    (lambda: project_to_pixel(np.ones((4, 2)), CAMERA), r'points must be \(\.\.\., 3\), got shape \(4, 2\)'),
    (lambda: pack_rgb_float(np.ones((2, 2, 3), np.float32)), r'rgb must be \(\.\.\., 3\) uint8, got float32'),
    (lambda: pack_rgb_float(np.ones((2, 2, 4), np.uint8)), r'rgb must be \(\.\.\., 3\) uint8, got uint8 \(2, 2, 4\)'),
    (lambda: pointcloud2_buffer(np.ones((2, 2, 3)), None, False),  # type: ignore[arg-type]
     r'points must be \(H, W, 3\) float32, got float64'),
    (lambda: pointcloud2_buffer(np.ones((4, 3), np.float32), None, False),
     r'points must be \(H, W, 3\) float32, got float32 \(4, 3\)'),
    (lambda: pointcloud2_buffer(np.ones((2, 2, 3), np.float32), np.ones((2, 3, 3), np.uint8), True),
     r'rgb must be \(2, 2, 3\) uint8 like points, got uint8 \(2, 3, 3\)'),
])
def test_bad_shapes_raise(call: object, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        call()  # type: ignore[operator]


def test_reprojection_rejects_a_camera_without_positive_focal_lengths() -> None:
    class Bad:
        fx, fy, cx, cy, focal, baseline = 0.0, 1.0, 0.0, 0.0, 1.0, 1.0

    with pytest.raises(GeometryError, match=r'fx and fy must be > 0, got 0\.0, 1\.0'):
        reproject_to_3d(np.ones((2, 2)), Bad())


def test_rgb_packing_known_bits() -> None:
    packed = pack_rgb_float(np.array([[255, 128, 1], [0, 0, 0], [1, 2, 3]], dtype=np.uint8))
    assert packed.dtype == np.float32 and packed.shape == (3,)
    assert packed.view(np.uint32).tolist() == [0x00FF8001, 0, 0x00010203]


# ---------------------------------------------------------------------------- PointCloud2


def cloud_inputs(height: int = 3, width: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    points = rng.standard_normal((height, width, 3)).astype(np.float32)
    points[0, 1] = np.nan  # invalid point, must travel unchanged
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return points, rgb


# stereo_image_proc point_cloud_node.cpp: (avoid_padding, colour) -> (point_step, fields)
_EXPECTED_LAYOUTS = {
    (False, False): (16, [('x', 0), ('y', 4), ('z', 8)]),
    (False, True): (32, [('x', 0), ('y', 4), ('z', 8), ('rgb', 16)]),
    (True, False): (12, [('x', 0), ('y', 4), ('z', 8)]),
    (True, True): (16, [('x', 0), ('y', 4), ('z', 8), ('rgb', 12)]),
}


@pytest.mark.parametrize(('avoid_padding', 'colour'), sorted(_EXPECTED_LAYOUTS))
def test_cloud_layouts_match_stereo_image_proc_byte_for_byte(avoid_padding: bool, colour: bool) -> None:
    points, rgb = cloud_inputs()
    buffer = pointcloud2_buffer(points, rgb if colour else None, avoid_padding)
    step, fields = _EXPECTED_LAYOUTS[(avoid_padding, colour)]
    assert buffer.point_step == step
    assert buffer.fields == [PointFieldSpec(name, offset, FLOAT32, 1) for name, offset in fields]
    raw = np.frombuffer(buffer.data, dtype=np.uint8)
    assert raw.size == 3 * 4 * step
    records = raw.reshape(3 * 4, step)  # one row of bytes per point, row-major over the image
    for name, offset in fields:
        values = np.ascontiguousarray(records[:, offset:offset + 4]).view('<f4').reshape(3, 4)
        if name == 'rgb':
            np.testing.assert_array_equal(values.view('<u4'), pack_rgb_float(rgb).view(np.uint32))
        else:
            # Bit-for-bit, NaN included.
            np.testing.assert_array_equal(values.view('<u4'), points[..., 'xyz'.index(name)].view(np.uint32))
    used = np.zeros(step, dtype=bool)
    for _, offset in fields:
        used[offset:offset + 4] = True
    if colour:
        used[[offsets for name, offsets in fields if name == 'rgb'][0] + 3] = False  # the 0x00 top byte
    assert not records[:, ~used].any(), 'padding and the rgb top byte must be zero'


def test_cloud_rgb_bytes_are_b_g_r_zero_in_memory() -> None:
    points = np.zeros((1, 1, 3), dtype=np.float32)
    buffer = pointcloud2_buffer(points, np.array([[[255, 128, 1]]], dtype=np.uint8), avoid_padding=True)
    assert bytes(buffer.data)[12:16] == bytes([1, 128, 255, 0])


def test_cloud_of_reprojected_points_keeps_nan_for_invalid_pixels() -> None:
    d = np.full((6, 8), 20.0, dtype=np.float32)
    d[2, 3] = 0.0
    buffer = pointcloud2_buffer(reproject_to_3d(d, CAMERA), None, avoid_padding=True)
    xyz = np.frombuffer(buffer.data, dtype='<f4').reshape(6, 8, 3)
    assert np.isnan(xyz[2, 3]).all()
    assert np.isfinite(np.delete(xyz.reshape(-1, 3), 2 * 8 + 3, axis=0)).all()


def test_cloud_buffer_fits_an_rclpy_point_cloud2() -> None:
    from sensor_msgs.msg import PointCloud2, PointField

    points, rgb = cloud_inputs()
    buffer = pointcloud2_buffer(points, rgb, avoid_padding=False)
    msg = PointCloud2(height=3, width=4, is_bigendian=False, is_dense=False, point_step=buffer.point_step,
                      row_step=4 * buffer.point_step,
                      fields=[PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                              for f in buffer.fields])
    msg.data = buffer.data
    assert PointField.FLOAT32 == FLOAT32
    assert len(msg.data) == msg.row_step * msg.height
    z = np.frombuffer(msg.data, dtype=np.uint8).reshape(12, 32)[:, 8:12].copy().view('<f4').reshape(3, 4)
    np.testing.assert_array_equal(z, points[..., 2])
