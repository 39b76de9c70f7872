"""Image and disparity files for the command-line tools, and a disparity colour map.

Images are returned as numpy arrays in one of four layouts, so that callers handle exactly these:

- ``(H, W)`` uint8 or uint16: gray;
- ``(H, W, 3)`` uint8 or uint16: RGB (channel order R, G, B; never BGR).

Alpha is dropped, palette / CMYK / YCbCr images become RGB, and 16-bit PNGs stay uint16. Pillow reads
and writes everything except 16-bit *colour* PNGs: Pillow truncates those to 8 bits on load and cannot
write them, so for those (and only those) OpenCV is imported lazily.

Disparity files hold ``(H, W)`` float32 pixels (left-view disparity, see CONVENTIONS.md): ``.npy``
(``np.save``) or ``.pfm``; NaN / inf are kept as stored (they mean "no disparity").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from stereonet_ros.pfm import PfmError, read_pfm, write_pfm

__all__ = [
    'TURBO_LUT',
    'DisparityFileError',
    'ImageReadError',
    'ImageWriteError',
    'colorize_disparity',
    'read_disparity',
    'read_image',
    'turbo_colormap',
    'write_disparity',
    'write_png',
]

PathLike = str | os.PathLike[str]


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt, or in a mode we do not convert."""


class ImageWriteError(ValueError):
    """An array cannot be written as a PNG (dtype, shape) or the file cannot be written."""


class DisparityFileError(ValueError):
    """A disparity file has an unsupported extension, a bad shape, or cannot be read/written."""


# Pillow modes -> what we turn them into. 'L'-like modes give gray, colour modes give RGB.
_GRAY8_MODES = frozenset({'1', 'L', 'LA', 'La'})
_GRAY16_MODES = frozenset({'I;16', 'I;16L', 'I;16B', 'I;16N'})
# LAB and HSV are left out on purpose: Pillow's convert('RGB') copies their channels without a colour
# transform, which would silently give wrong colours.
_RGB_MODES = frozenset({'RGB', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr', 'P', 'PA'})

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _png_is_16bit_color(path: Path) -> bool:
    """True when ``path`` is a PNG with 16-bit samples and more than one channel.

    PNG colour types (IHDR byte 25): 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA. Pillow keeps 16-bit
    only for type 0, so types 2, 4, 6 at bit depth 16 are routed to OpenCV.
    """
    try:
        with path.open('rb') as stream:
            head = stream.read(29)
    except OSError:
        return False  # the Pillow path below reports the error with its reason
    if len(head) < 29 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b'IHDR':
        return False
    bit_depth, colour_type = head[24], head[25]
    return bit_depth == 16 and colour_type in (2, 4, 6)


def _import_cv2(path: Path, action: str) -> Any:
    """OpenCV, imported only for 16-bit colour PNGs; a named error when it is not installed."""
    try:
        import cv2
    except ImportError as err:
        raise (ImageReadError if action == 'read' else ImageWriteError)(
            f'{path}: {action}ing a 16-bit colour PNG needs opencv-python (Pillow truncates it to 8 bits)'
        ) from err
    return cv2


def _read_png_16bit_color(path: Path) -> npt.NDArray[np.uint16]:
    """Read a 16-bit RGB / RGBA / gray+alpha PNG as ``(H, W, 3)`` RGB or ``(H, W)`` gray uint16."""
    cv2 = _import_cv2(path, 'read')
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(f'{path}: cannot decode 16-bit PNG (corrupt or truncated)')
    values = np.asarray(array)
    if values.ndim == 2:
        return values.astype(np.uint16, copy=False)
    if values.shape[2] == 2:  # gray + alpha
        return np.ascontiguousarray(values[:, :, 0]).astype(np.uint16, copy=False)
    # OpenCV returns BGR(A); we promise RGB.
    return np.ascontiguousarray(values[:, :, 2::-1]).astype(np.uint16, copy=False)


def read_image(path: PathLike) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """Read an image file as gray ``(H, W)`` or RGB ``(H, W, 3)``, uint8 or uint16.

    Conversions: alpha dropped (``RGBA``/``LA``); 1-bit -> uint8 0/255; palette, CMYK, YCbCr -> RGB
    uint8; 16-bit gray (``I;16*``) and 16-bit colour PNGs -> uint16; 32-bit integer images
    (``I``) -> uint16 when every value lies in 0..65535.

    Raises:
        ImageReadError: the file is missing or unreadable, not an image / corrupt, or its mode has no
            faithful conversion (float images: use :func:`read_disparity`).
    """
    path = Path(path)
    if not path.is_file():
        reason = 'is a directory' if path.is_dir() else 'no such file'
        raise ImageReadError(f'cannot read image {path}: {reason}')
    if _png_is_16bit_color(path):
        return _read_png_16bit_color(path)
    try:
        with Image.open(path) as image:
            image.load()
            return _pillow_to_array(image, path)
    except ImageReadError:
        raise
    except UnidentifiedImageError as err:
        raise ImageReadError(f'cannot read image {path}: not a recognised image format') from err
    except Image.DecompressionBombError as err:
        raise ImageReadError(f'cannot read image {path}: {err}') from err
    except OSError as err:
        # Pillow raises OSError for truncated or corrupt data and for permission problems.
        raise ImageReadError(f'cannot read image {path}: {err}') from err
    except (ValueError, SyntaxError) as err:
        # Some decoders (e.g. PNG chunk checks) raise SyntaxError / ValueError for broken files.
        raise ImageReadError(f'cannot read image {path}: corrupt data ({err})') from err


def _pillow_to_array(image: Image.Image, path: Path) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """Convert a loaded Pillow image to our gray/RGB uint8/uint16 layouts."""
    mode = image.mode
    if mode in _GRAY16_MODES:
        # 'I;16B' arrays come out big-endian: astype gives native uint16.
        return np.asarray(image).astype(np.uint16)
    if mode in _GRAY8_MODES:
        gray = image.convert('L') if mode != 'La' else image.convert('LA').getchannel('L')
        return np.asarray(gray, dtype=np.uint8).copy()
    if mode in _RGB_MODES:
        rgb = image if mode == 'RGB' else image.convert('RGB')
        return np.asarray(rgb, dtype=np.uint8).copy()
    if mode == 'I':
        values = np.asarray(image)
        if values.size and (int(values.min()) < 0 or int(values.max()) > np.iinfo(np.uint16).max):
            raise ImageReadError(f'cannot read image {path}: 32-bit integer values outside 0..65535')
        return values.astype(np.uint16)
    raise ImageReadError(f'cannot read image {path}: unsupported image mode {mode!r} '
                         '(float images are disparities: use read_disparity)')


def write_png(path: PathLike, array: npt.NDArray[Any]) -> None:
    """Write a gray ``(H, W)`` or RGB ``(H, W, 3)`` uint8 / uint16 array as a PNG (lossless).

    uint16 RGB goes through OpenCV (Pillow cannot write 16-bit colour PNGs).

    Raises:
        ImageWriteError: another dtype or shape, or the file cannot be written.
    """
    path = Path(path)
    values = np.asarray(array)
    if values.dtype not in (np.uint8, np.uint16):
        raise ImageWriteError(f'cannot write {path}: PNG needs uint8 or uint16, got {values.dtype}')
    if not (values.ndim == 2 or (values.ndim == 3 and values.shape[2] == 3)):
        raise ImageWriteError(f'cannot write {path}: PNG needs (H, W) or (H, W, 3), got shape {values.shape}')
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ImageWriteError(f'cannot write {path}: empty image of shape {values.shape}')
    values = np.ascontiguousarray(values)
    if values.dtype == np.uint16 and values.ndim == 3:
        cv2 = _import_cv2(path, 'write')
        # OpenCV writes BGR; the file stores RGB as PNG requires.
        ok = cv2.imwrite(str(path), np.ascontiguousarray(values[:, :, ::-1]))
        if not ok:
            raise ImageWriteError(f'cannot write {path}: OpenCV failed to write the PNG')
        return
    try:
        Image.fromarray(values).save(path, format='PNG')
    except OSError as err:
        raise ImageWriteError(f'cannot write {path}: {err}') from err


# --- Turbo colour map --------------------------------------------------------------------------------
# Turbo (Mikhailov, Google AI blog 2019) is perceptually smoother than jet and, unlike viridis, keeps
# near and far disparities far apart in hue. Its published polynomial approximation: each channel is a
# degree-5 polynomial in t in [0, 1] (coefficients for 1, t, t^2, t^3, t^4, t^5).
_TURBO_COEFFICIENTS = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],  # red
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],  # green
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],  # blue
], dtype=np.float64)


def turbo_colormap(t: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Turbo colours for ``t`` in [0, 1] (clipped): shape ``t.shape + (3,)``, float64 RGB in [0, 1]."""
    x = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([x ** k for k in range(6)], axis=-1)  # (..., 6)
    return np.clip(powers @ _TURBO_COEFFICIENTS.T, 0.0, 1.0)  # (..., 3)


TURBO_LUT: npt.NDArray[np.uint8] = np.round(turbo_colormap(np.linspace(0.0, 1.0, 256)) * 255.0).astype(np.uint8)
"""(256, 3) uint8 RGB: entry 0 is the colour of ``vmin``, entry 255 the colour of ``vmax``."""
TURBO_LUT.setflags(write=False)
_INVALID_ENTRY = 256
_TURBO_LUT_WITH_BLACK = np.vstack((TURBO_LUT, np.zeros((1, 3), np.uint8)))  # row 256: invalid pixels

_DEFAULT_PERCENTILES = (1.0, 99.0)


def colorize_disparity(disparity: npt.ArrayLike, vmin: float | None = None,
                       vmax: float | None = None) -> npt.NDArray[np.uint8]:
    """Colour a disparity map with turbo for viewing.

    Args:
        disparity: ``(H, W)`` float, pixels. NaN, +-inf and negative values are invalid.
        vmin, vmax: disparities mapped to the first / last turbo colour; values outside are clipped.
            Each defaults to the 1st / 99th percentile of the valid values, so that a few outliers do
            not flatten the picture. When ``vmax == vmin`` every valid pixel gets the first colour.

    Returns:
        ``(H, W, 3)`` uint8 RGB; invalid pixels are black ``(0, 0, 0)`` (no turbo entry is black).

    Raises:
        ValueError: ``disparity`` is not 2-D, or ``vmin > vmax``, or a bound is not finite.
    """
    values = np.asarray(disparity, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f'colorize_disparity needs an (H, W) array, got shape {values.shape}')
    valid = np.isfinite(values) & (values >= 0.0)
    if not valid.any():
        return np.zeros(values.shape + (3,), dtype=np.uint8)
    valid_values = values[valid]
    low = float(np.percentile(valid_values, _DEFAULT_PERCENTILES[0])) if vmin is None else float(vmin)
    high = float(np.percentile(valid_values, _DEFAULT_PERCENTILES[1])) if vmax is None else float(vmax)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f'colorize_disparity bounds must be finite, got vmin={low}, vmax={high}')
    if vmin is None and vmax is not None:
        low = min(low, high)  # a default must not contradict an explicit bound
    elif vmax is None and vmin is not None:
        high = max(low, high)
    if low > high:
        raise ValueError(f'colorize_disparity needs vmin <= vmax, got vmin={low}, vmax={high}')
    span = high - low
    # Whole-image arithmetic in one scratch array and one lookup in a table whose extra last row is black
    # for the invalid pixels: the same colours as scaling the valid values alone and scattering them.
    # In place, a 16-bit index and np.take rather than fancy indexing (which gathered 3-byte rows 4x
    # slower): 8.3 ms -> 2.6 ms at 960x540 (benchmarks/node_pipeline.py measures the node's post).
    scaled = np.empty_like(values)
    with np.errstate(invalid='ignore'):
        if span > 0:
            np.divide(np.subtract(values, low, out=scaled), span, out=scaled)
        else:
            scaled.fill(0.0)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        np.rint(np.multiply(scaled, 255.0, out=scaled), out=scaled)
        index = scaled.astype(np.int16)  # NaN (invalid) casts to garbage, replaced next
    # index + (256 - index) * invalid: arithmetic, branch-free (np.where or a mask took 0.7-1 ms).
    index += (np.int16(_INVALID_ENTRY) - index) * ~valid
    return np.take(_TURBO_LUT_WITH_BLACK, index, axis=0)


# --- Disparity files ---------------------------------------------------------------------------------
_DISPARITY_SUFFIXES = ('.npy', '.pfm')


def _disparity_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _DISPARITY_SUFFIXES:
        raise DisparityFileError(f'{path}: unsupported disparity file extension {path.suffix!r} '
                                 f'(expected one of {", ".join(_DISPARITY_SUFFIXES)})')
    return suffix


def read_disparity(path: PathLike) -> npt.NDArray[np.float32]:
    """Read an ``(H, W)`` float32 disparity map (pixels) from ``.npy`` or ``.pfm``.

    Values are returned as stored: NaN / inf mark pixels without disparity.

    Raises:
        DisparityFileError: unsupported extension, missing or corrupt file, or not a 2-D array.
    """
    path = Path(path)
    suffix = _disparity_suffix(path)
    if suffix == '.pfm':
        try:
            values = read_pfm(path)
        except PfmError as err:
            raise DisparityFileError(f'cannot read disparity {path}: {err}') from err
    else:
        try:
            # allow_pickle=False: a disparity file must never be able to run code.
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DisparityFileError(f'cannot read disparity {path}: {err}') from err
        if not isinstance(loaded, np.ndarray):
            raise DisparityFileError(f'cannot read disparity {path}: holds an archive, not one array')
        if not (np.issubdtype(loaded.dtype, np.floating) or np.issubdtype(loaded.dtype, np.integer)):
            raise DisparityFileError(f'cannot read disparity {path}: dtype {loaded.dtype} is not numeric')
        values = loaded.astype(np.float32)
    if values.ndim != 2:
        raise DisparityFileError(f'cannot read disparity {path}: expected (H, W), got shape {values.shape}')
    return values


def write_disparity(path: PathLike, disparity: npt.ArrayLike) -> None:
    """Write an ``(H, W)`` disparity map (pixels) as float32 ``.npy`` or ``.pfm``; NaN / inf are kept.

    Raises:
        DisparityFileError: unsupported extension, not a 2-D array, or the file cannot be written.
    """
    path = Path(path)
    suffix = _disparity_suffix(path)
    values = np.asarray(disparity, dtype=np.float32)
    if values.ndim != 2:
        raise DisparityFileError(f'cannot write disparity {path}: expected (H, W), got shape {values.shape}')
    try:
        if suffix == '.pfm':
            write_pfm(path, values)
        else:
            # np.save would append '.npy' to a name without it; the suffix check rules that out.
            np.save(path, values, allow_pickle=False)
    except (OSError, PfmError) as err:
        raise DisparityFileError(f'cannot write disparity {path}: {err}') from err
