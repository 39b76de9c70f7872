"""The rectified stereo camera model, from the two ``sensor_msgs/CameraInfo`` messages.

Only the rectified projection matrices ``P`` are used, as image_geometry's ``StereoCameraModel``
does for disparity and reprojection (``K`` describes the unrectified camera). ``P`` is row-major
3x4::

    P = [fx'  0   cx'  Tx]     Tx = -fx' * B for the right camera (B = baseline), 0 for the left
        [ 0  fy'  cy'  Ty]
        [ 0   0    1    0]

so ``P[0] = fx``, ``P[2] = cx``, ``P[3] = Tx``, ``P[5] = fy``, ``P[6] = cy``. Fields are read by name
(:class:`CameraInfoLike`), so rclpy and rosbags messages and plain dataclasses fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


_FLOAT32_MAX = float(np.finfo(np.float32).max)


class CameraModelError(ValueError):
    """The camera infos do not describe a usable rectified stereo pair, or an image does not fit it."""


class HeaderLike(Protocol):
    @property
    def frame_id(self) -> str: ...


class CameraInfoLike(Protocol):
    """The ``sensor_msgs/CameraInfo`` fields used here."""

    @property
    def header(self) -> HeaderLike: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def p(self) -> Any:
        """12 numbers, row-major 3x4: a sequence or float64 ndarray (rclpy, rosbags)."""
        ...


@dataclass(frozen=True)
class StereoCamera:
    """A rectified stereo pair as stereo_image_proc sees it; pixels unless stated.

    Attributes:
        width, height: image size both cameras share, pixels.
        fx, fy, cx, cy: left camera's rectified intrinsics (left ``P[0], P[5], P[2], P[6]``).
        cx_right: right camera's principal point column (right ``P[2]``).
        focal: ``f`` of ``Z = f * T / d``: the right camera's ``P[0]`` (image_geometry's choice).
        baseline: ``T = -P_right[3] / P_right[0]``, in the unit of ``P`` (metres in practice), > 0.
        frame_id: the left camera's optical frame; outputs carry it.

    Raises:
        CameraModelError: (on construction) a size is not positive or a value is not finite, or a
            focal length or the baseline is not positive.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    cx_right: float
    focal: float
    baseline: float
    frame_id: str = ''

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise CameraModelError(f'image size must be positive, got {self.width}x{self.height}')
        values = {'fx': self.fx, 'fy': self.fy, 'cx': self.cx, 'cy': self.cy, 'cx_right': self.cx_right,
                  'focal': self.focal, 'baseline': self.baseline}
        for name, value in values.items():
            if not math.isfinite(value):
                raise CameraModelError(f'{name} must be finite, got {value}')
        for name in ('fx', 'fy', 'focal'):
            if values[name] <= 0.0:
                raise CameraModelError(f'focal length {name} must be > 0, got {values[name]}')
        if self.baseline <= 0.0:
            # A negative T means the right camera sits left of the left one: the inputs are
            # swapped, and a network trained on left-view (positive) disparity cannot serve them.
            raise CameraModelError(f'baseline must be > 0, got {self.baseline} (left and right swapped?)')
        # Depth, clouds and the DisparityImage fields are computed and published in float32: a value
        # fine in float64 can be 0 or inf there (Tx -1e-50 gave depth 0, Tx -1e39 infinite depth).
        derived = {**values, 'focal * baseline': self.focal * self.baseline, 'cx - cx_right': self.principal_offset,
                   'width / fx': self.width / self.fx, 'height / fy': self.height / self.fy}
        for name, value in derived.items():
            single = np.float32(value) if abs(value) <= _FLOAT32_MAX else np.float32(np.inf)
            if not np.isfinite(single):
                raise CameraModelError(f'{name} = {value:g} is not finite in float32, as depth and clouds are published')
            if name in ('fx', 'fy', 'focal', 'baseline', 'focal * baseline') and single == 0.0:
                raise CameraModelError(f'{name} = {value:g} is 0 in float32, as depth and clouds are published')

    @property
    def principal_offset(self) -> float:
        """``cx_left - cx_right``, pixels: subtract it from the image shift to get the disparity
        ``stereo_msgs/DisparityImage`` carries (``d = shift - (cx_l - cx_r)``, so ``Z = f*T/d``).
        Zero for most rigs; Middlebury's ``doffs``."""
        return self.cx - self.cx_right

    def shift_to_disparity(self, shift: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Network output (left-view image shift, pixels) -> DisparityImage convention, float32."""
        return (np.asarray(shift, dtype=np.float32) - np.float32(self.principal_offset)).astype(np.float32)


def _projection(info: CameraInfoLike, side: str) -> npt.NDArray[np.float64]:
    """``P`` as a (12,) float64 array; raises if missing, mis-sized, non-finite or all zero."""
    raw = getattr(info, 'p', None)
    if raw is None:
        raise CameraModelError(f'{side} camera_info has no P matrix')
    try:
        p = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise CameraModelError(f'{side} camera_info P is not numeric: {raw!r}') from err
    if p.size != 12:
        raise CameraModelError(f'{side} camera_info P has {p.size} values, expected 12')
    if not np.all(np.isfinite(p)):
        raise CameraModelError(f'{side} camera_info P has non-finite values: {p.tolist()}')
    if not np.any(p):
        raise CameraModelError(f'{side} camera_info P is all zeros: the camera is not calibrated')
    return p


def _reduced(info: CameraInfoLike, p: npt.NDArray[np.float64], side: str) -> tuple[npt.NDArray[np.float64], int, int]:
    """``(P, width, height)`` of the image the driver actually sends, as image_geometry computes them.

    A camera_info describes the full-resolution calibration; with ``binning_x/y > 1`` or a region of
    interest the image is smaller: ``P`` row 0 becomes ``(fx / bx, 0, (cx - roi.x_offset) / bx, Tx / bx)``,
    row 1 likewise with ``by`` and ``roi.y_offset``, and the size ``roi size / binning`` (the whole
    image when the ROI is all zeros). Binning 0 means 1, as in the message definition.
    """
    binning_x = max(int(getattr(info, 'binning_x', 0) or 0), 1)
    binning_y = max(int(getattr(info, 'binning_y', 0) or 0), 1)
    roi = getattr(info, 'roi', None)
    x_offset = int(getattr(roi, 'x_offset', 0) or 0)
    y_offset = int(getattr(roi, 'y_offset', 0) or 0)
    roi_width = int(getattr(roi, 'width', 0) or 0)
    roi_height = int(getattr(roi, 'height', 0) or 0)
    width, height = int(info.width), int(info.height)
    if roi_width == 0 and roi_height == 0 and x_offset == 0 and y_offset == 0:
        roi_width, roi_height = width, height  # all zeros = the full image
    elif roi_width <= 0 or roi_height <= 0 or x_offset + roi_width > width or y_offset + roi_height > height:
        raise CameraModelError(f'{side} camera_info roi (x_offset {x_offset}, y_offset {y_offset}, {roi_width}x'
                               f'{roi_height}) does not lie inside the {width}x{height} image')
    if binning_x == 1 and binning_y == 1 and (roi_width, roi_height) == (width, height):
        return p, width, height
    reduced = p.copy()
    reduced[0], reduced[2], reduced[3] = p[0] / binning_x, (p[2] - x_offset) / binning_x, p[3] / binning_x
    reduced[5], reduced[6], reduced[7] = p[5] / binning_y, (p[6] - y_offset) / binning_y, p[7] / binning_y
    return reduced, roi_width // binning_x, roi_height // binning_y


def from_camera_infos(left: CameraInfoLike, right: CameraInfoLike) -> StereoCamera:
    """Build the stereo model from the left and right camera infos of a rectified pair.

    Binning and a region of interest are applied as image_geometry applies them (:func:`_reduced`):
    the model describes the images as they arrive.

    Raises:
        CameraModelError: P missing, mis-sized or all zeros; ``P_right[3] == 0`` (zero baseline:
            not a stereo pair, or the right camera's info is the left one's); a focal length
            ``<= 0``; a negative baseline; the two sizes differ or are zero; an ROI outside the image.
    """
    p_left, width_left, height_left = _reduced(left, _projection(left, 'left'), 'left')
    p_right, width_right, height_right = _reduced(right, _projection(right, 'right'), 'right')
    size_left = (width_left, height_left)
    size_right = (width_right, height_right)
    if size_left != size_right:
        raise CameraModelError(f'left camera_info is {size_left[0]}x{size_left[1]} but right is '
                               f'{size_right[0]}x{size_right[1]}')
    if size_left[0] <= 0 or size_left[1] <= 0:
        raise CameraModelError(f'camera_info size is {size_left[0]}x{size_left[1]}: width and height must be set')
    fx, fy, focal = float(p_left[0]), float(p_left[5]), float(p_right[0])
    for name, value in (('left P[0] (fx)', fx), ('left P[5] (fy)', fy), ('right P[0] (fx)', focal)):
        if value <= 0.0:
            raise CameraModelError(f'{name} must be > 0, got {value}')
    if p_right[3] == 0.0:
        raise CameraModelError('right camera_info P[3] (Tx) is 0: zero baseline, not a rectified stereo pair')
    return StereoCamera(
        width=size_left[0], height=size_left[1],
        fx=fx, fy=fy, cx=float(p_left[2]), cy=float(p_left[6]),
        cx_right=float(p_right[2]), focal=focal,
        baseline=-float(p_right[3]) / focal,
        frame_id=str(left.header.frame_id),
    )


def check_image_size(camera: StereoCamera, height: int, width: int) -> None:
    """Check that an image of ``height`` x ``width`` pixels matches the camera infos.

    Raises:
        CameraModelError: the sizes differ (both are named).
    """
    if (int(height), int(width)) != (camera.height, camera.width):
        raise CameraModelError(f'image is {width}x{height} (WxH) but camera_info says '
                               f'{camera.width}x{camera.height}')
