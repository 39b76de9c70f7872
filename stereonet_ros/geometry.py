"""Stereo geometry in numpy: disparity <-> depth, reprojection, and PointCloud2 point buffers.

Conventions (docs CONVENTIONS.md): disparity is in the ``stereo_msgs/DisparityImage`` convention
(principal-point offset already removed, see :meth:`StereoCamera.principal_offset`), so depth is
``Z = f * T / d`` with ``f`` the right camera's ``P[0]`` and ``T`` the baseline. Pixel ``(u, v)`` is
column ``u``, row ``v``, pixel centres at integer coordinates (OpenCV / image_geometry). Points are
in the left camera's optical frame (REP 103: x right, y down, z forward), in the unit of ``T``.

A disparity is *invalid* when it is not finite, below ``min_disparity``, or ``<= 0`` (no finite
positive depth); invalid pixels give NaN depth and NaN points, never 0 or the origin.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

# sensor_msgs/PointField datatype constant for float32.
FLOAT32 = 7


class GeometryError(ValueError):
    """An input has the wrong shape or dtype, or a camera constant is unusable."""


class StereoGeometry(Protocol):
    """What the math needs from a camera; :class:`stereonet_ros.camera.StereoCamera` fits."""

    @property
    def fx(self) -> float: ...

    @property
    def fy(self) -> float: ...

    @property
    def cx(self) -> float: ...

    @property
    def cy(self) -> float: ...

    @property
    def focal(self) -> float: ...

    @property
    def baseline(self) -> float: ...


def _check_constants(focal: float, baseline: float) -> None:
    if not (np.isfinite(focal) and focal > 0.0):
        raise GeometryError(f'focal must be finite and > 0, got {focal}')
    if not (np.isfinite(baseline) and baseline > 0.0):
        raise GeometryError(f'baseline must be finite and > 0, got {baseline}')


def disparity_to_depth(disparity: npt.ArrayLike, focal: float, baseline: float,
                       min_disparity: float = 0.0) -> npt.NDArray[np.float32]:
    """Depth ``Z = focal * baseline / d``.

    Args:
        disparity: any shape, pixels (DisparityImage convention).
        focal: ``f``, pixels, > 0.
        baseline: ``T``, > 0; depth comes out in its unit (metres for ROS camera infos).
        min_disparity: values below it are invalid (DisparityImage ``min_disparity``).

    Returns:
        float32 array of ``disparity``'s shape; NaN where the disparity is invalid (non-finite,
        ``< min_disparity`` or ``<= 0``).

    Raises:
        GeometryError: ``focal`` or ``baseline`` not finite and positive.
    """
    _check_constants(focal, baseline)
    d = np.asarray(disparity, dtype=np.float32)
    valid = np.isfinite(d) & (d >= min_disparity) & (d > 0.0)
    depth = np.full(d.shape, np.nan, dtype=np.float32)
    np.divide(np.float32(focal * baseline), d, out=depth, where=valid)
    return depth


def depth_to_disparity(depth: npt.ArrayLike, focal: float, baseline: float) -> npt.NDArray[np.float32]:
    """Disparity ``d = focal * baseline / Z``, the inverse of :func:`disparity_to_depth`.

    Args:
        depth: any shape, in the unit of ``baseline``.

    Returns:
        float32 array of ``depth``'s shape, pixels; NaN where the depth is not finite or ``<= 0``
        (REP 118's NaN "no depth" and +Inf "too far" both have no valid disparity).

    Raises:
        GeometryError: ``focal`` or ``baseline`` not finite and positive.
    """
    _check_constants(focal, baseline)
    z = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(z) & (z > 0.0)
    disparity = np.full(z.shape, np.nan, dtype=np.float32)
    np.divide(np.float32(focal * baseline), z, out=disparity, where=valid)
    return disparity


def hidden_from_right_view(disparity: npt.ArrayLike, tolerance_px: float) -> npt.NDArray[np.bool_]:
    """Left-view pixels the right camera cannot see, by ``disparity``: a pixel at column ``x`` lands at
    ``x - d`` in the right image; a pixel further along its row that lands left of that spot by more than
    ``tolerance_px`` is nearer and hides it, and a spot left of the image (by more than half a pixel) is out
    of view.

    Args:
        disparity: ``(H, W)`` left-view disparity, pixels; a non-finite value is unknown: it hides nothing and
            is not marked.
        tolerance_px: how far (>= 0) a landing spot may lie left of a farther one before it hides it.

    Returns:
        ``(H, W)`` bool, True where hidden or out of view.

    Raises:
        GeometryError: ``disparity`` is not 2-D, or ``tolerance_px`` is negative or not finite.
    """
    d = np.asarray(disparity, dtype=np.float64)
    if d.ndim != 2:
        raise GeometryError(f'disparity must be (H, W), got shape {d.shape}')
    if not (np.isfinite(tolerance_px) and tolerance_px >= 0):
        raise GeometryError(f'tolerance_px {tolerance_px}: must be finite and >= 0')
    known = np.isfinite(d)
    landing = np.where(known, np.arange(d.shape[1], dtype=np.float64)[np.newaxis, :] - np.where(known, d, 0.0),
                       np.inf)
    smallest_further_along = np.minimum.accumulate(landing[:, ::-1], axis=1)[:, ::-1]
    hidden = np.zeros(d.shape, np.bool_)
    hidden[:, :-1] = smallest_further_along[:, 1:] < landing[:, :-1] - tolerance_px
    return known & (hidden | (landing < -0.5))


def reproject_to_3d(disparity: npt.ArrayLike, camera: StereoGeometry,
                    min_disparity: float = 0.0) -> npt.NDArray[np.float32]:
    """Organized 3D points from a disparity image (stereo_image_proc's PointCloudNode math).

    ``Z = f*T/d``, ``X = (u - cx) * Z / fx``, ``Y = (v - cy) * Z / fy`` with the left camera's
    ``fx, fy, cx, cy`` (image_geometry's ``projectDisparityTo3d`` / the ``Q`` matrix agree).

    Args:
        disparity: ``(H, W)`` pixels, DisparityImage convention.
        camera: the stereo model (:class:`~stereonet_ros.camera.StereoCamera`).
        min_disparity: values below it are invalid.

    Returns:
        ``(H, W, 3)`` float32 ``(X, Y, Z)`` in the baseline's unit, left optical frame; all three
        NaN where the disparity is invalid.

    Raises:
        GeometryError: ``disparity`` is not 2-D, or the camera's constants are unusable.
    """
    d = np.asarray(disparity, dtype=np.float32)
    if d.ndim != 2:
        raise GeometryError(f'disparity must be (H, W), got shape {d.shape}')
    if not (camera.fx > 0.0 and camera.fy > 0.0):
        raise GeometryError(f'fx and fy must be > 0, got {camera.fx}, {camera.fy}')
    z = disparity_to_depth(d, camera.focal, camera.baseline, min_disparity)  # (H, W), NaN invalid
    height, width = d.shape
    u = np.arange(width, dtype=np.float32) - np.float32(camera.cx)  # (W,)
    v = np.arange(height, dtype=np.float32) - np.float32(camera.cy)  # (H,)
    points = np.empty((height, width, 3), dtype=np.float32)
    # NaN in z propagates to X and Y, so invalid pixels need no extra mask.
    np.multiply(z, u[np.newaxis, :] / np.float32(camera.fx), out=points[:, :, 0])
    np.multiply(z, v[:, np.newaxis] / np.float32(camera.fy), out=points[:, :, 1])
    points[:, :, 2] = z
    return points


def project_to_pixel(points: npt.ArrayLike, camera: StereoGeometry) -> npt.NDArray[np.float64]:
    """Project left-frame points to left-image pixels: ``u = fx X/Z + cx``, ``v = fy Y/Z + cy``.

    Args:
        points: ``(..., 3)`` ``(X, Y, Z)``.

    Returns:
        ``(..., 2)`` float64 ``(u, v)``, pixels; NaN where ``Z`` is not finite or ``<= 0``.
        The disparity of a point is ``depth_to_disparity(Z, focal, baseline)``.

    Raises:
        GeometryError: the last axis is not 3.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] != 3:
        raise GeometryError(f'points must be (..., 3), got shape {p.shape}')
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    valid = np.isfinite(z) & (z > 0.0)
    inv_z = np.full(z.shape, np.nan)
    np.divide(1.0, z, out=inv_z, where=valid)
    return np.stack([camera.fx * x * inv_z + camera.cx, camera.fy * y * inv_z + camera.cy], axis=-1)


def pack_rgb_float(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Pack colours into float32 values whose bits are ``0x00RRGGBB`` (PCL's / ROS's ``rgb``).

    stereo_image_proc writes the bytes B, G, R, 0 (little-endian) into the float32 ``rgb``
    field; reading that float's bits as uint32 gives ``0x00RRGGBB``. Never arithmetic on the
    result: the values are tiny or subnormal floats and only their bits mean anything.

    Args:
        rgb: ``(..., 3)`` uint8, R, G, B.

    Returns:
        ``rgb.shape[:-1]`` float32.

    Raises:
        GeometryError: not uint8 or the last axis is not 3.
    """
    colours = np.asarray(rgb)
    if colours.dtype != np.uint8 or colours.ndim < 1 or colours.shape[-1] != 3:
        raise GeometryError(f'rgb must be (..., 3) uint8, got {colours.dtype} {colours.shape}')
    c = colours.astype(np.uint32)
    bits = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    return bits.view(np.float32)


@dataclass(frozen=True)
class PointFieldSpec:
    """One ``sensor_msgs/PointField`` (a dataclass: a NamedTuple field may not be named ``count``)."""

    name: str
    offset: int
    datatype: int = FLOAT32
    count: int = 1


class CloudBuffer(NamedTuple):
    """The data of an organized ``sensor_msgs/PointCloud2``: ``row_step = width * point_step``.

    ``data`` is an ``array.array('B')``, the type rclpy stores ``uint8[]`` fields in: assign it with
    ``msg.data = buffer.data`` (rclpy copies it with one memcpy, or keeps it as is when field checks
    are on; a ``bytes`` value would then be checked byte by byte in Python). It is a buffer:
    ``np.frombuffer(buffer.data, np.uint8)`` views it (rosbags) and ``bytes(buffer.data)`` copies it.
    """

    data: array.array[int]
    point_step: int
    fields: list[PointFieldSpec]


# stereo_image_proc PointCloudNode layouts (bytes):
#   padding,    no colour: x0 y4 z8 _12                 16 (setPointCloud2FieldsByString(1, "xyz"))
#   padding,    colour:    x0 y4 z8 _12 rgb16 _20 _24 _28  32 (setPointCloud2FieldsByString(2, "xyz", "rgb"))
#   no padding, no colour: x0 y4 z8                      12 (setPointCloud2Fields(3, x, y, z))
#   no padding, colour:    x0 y4 z8 rgb12                16 (setPointCloud2Fields(4, x, y, z, rgb))
# Pad bytes are zero, as the message's resized (zero-filled) data vector leaves them.
_LAYOUTS: dict[tuple[bool, bool], tuple[int, int | None]] = {
    # (avoid_padding, colour): (point_step, rgb offset)
    (False, False): (16, None),
    (False, True): (32, 16),
    (True, False): (12, None),
    (True, True): (16, 12),
}


def _point_dtype(point_step: int, rgb_offset: int | None) -> np.dtype[np.void]:
    names = ['x', 'y', 'z']
    formats = ['<f4', '<f4', '<f4']
    offsets = [0, 4, 8]
    if rgb_offset is not None:
        # The float32 rgb holds 0x00RRGGBB; little-endian that is the bytes B, G, R, 0, which is
        # how stereo_image_proc's uint8 iterators "b", "g", "r" write it.
        names += ['b', 'g', 'r']
        formats += ['u1', 'u1', 'u1']
        offsets += [rgb_offset, rgb_offset + 1, rgb_offset + 2]
    return np.dtype({'names': names, 'formats': formats, 'offsets': offsets, 'itemsize': point_step})


def pointcloud2_buffer(points: npt.NDArray[np.float32], rgb: npt.NDArray[np.uint8] | None,
                       avoid_padding: bool) -> CloudBuffer:
    """Serialize organized points (and colours) in stereo_image_proc's exact PointCloud2 layout.

    Args:
        points: ``(H, W, 3)`` float32 X, Y, Z (NaN for invalid, as :func:`reproject_to_3d`).
        rgb: ``(H, W, 3)`` uint8 R, G, B of the left image, or ``None`` for no ``rgb`` field
            (``use_color: false``).
        avoid_padding: stereo_image_proc's ``avoid_point_cloud_padding``.

    Returns:
        :class:`CloudBuffer`: little-endian point data (``is_bigendian = false``), row-major
        (``height = H``, ``width = W``), ``point_step`` bytes per point, and the fields.

    Raises:
        GeometryError: a shape or dtype is wrong, or ``rgb``'s size differs from ``points``'.
    """
    xyz = np.asarray(points)
    if xyz.dtype != np.float32 or xyz.ndim != 3 or xyz.shape[2] != 3:
        raise GeometryError(f'points must be (H, W, 3) float32, got {xyz.dtype} {xyz.shape}')
    height, width = xyz.shape[:2]
    if rgb is not None and (rgb.dtype != np.uint8 or rgb.shape != (height, width, 3)):
        raise GeometryError(f'rgb must be ({height}, {width}, 3) uint8 like points, got {rgb.dtype} {rgb.shape}')
    point_step, rgb_offset = _LAYOUTS[(bool(avoid_padding), rgb is not None)]
    # A structured array over the message bytes: one record per point, zeros in the pads. Field
    # copies move float32 bits unchanged (NaN payloads included); no per-point Python.
    # Zero-filled by repetition, which also touches every page up front: filling a calloc'ed
    # np.zeros buffer and copying it out with tobytes() measured ~6x slower at 960x540x32 bytes.
    data = array.array('B', b'\0') * (height * width * point_step)
    cloud = np.frombuffer(data, dtype=_point_dtype(point_step, rgb_offset)).reshape(height, width)  # (H, W) records
    for axis, name in enumerate('xyz'):
        cloud[name] = xyz[:, :, axis]
    fields = [PointFieldSpec('x', 0), PointFieldSpec('y', 4), PointFieldSpec('z', 8)]
    if rgb is not None and rgb_offset is not None:
        for channel, name in enumerate('rgb'):
            cloud[name] = rgb[:, :, channel]
        fields.append(PointFieldSpec('rgb', rgb_offset))
    return CloudBuffer(data=data, point_step=point_step, fields=fields)
