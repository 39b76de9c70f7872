"""``sensor_msgs/CompressedImage`` <-> image fields, as image_transport's ``compressed`` plugin writes and reads them.

Nothing here imports ROS: messages are read by field name (:class:`CompressedImageLike`), so rclpy and
rosbags messages both fit. OpenCV (``cv2``) does the PNG and JPEG work, as in the plugin itself
(ros-perception/image_transport_plugins, ``compressed_image_transport``); it is imported on first use,
so that raw-image users do not need it.

The ``format`` field, as the plugin's publisher writes it (``<encoding>; <codec> compressed <target>``):

===============  ===================================  ======================================================
original         JPEG                                 PNG
===============  ===================================  ======================================================
rgb8, bgr8, ...  ``rgb8; jpeg compressed bgr8``       ``rgb8; png compressed bgr8``
mono8            ``mono8; jpeg compressed mono8``     ``mono8; png compressed `` (nothing after, as written)
mono16           ``mono16; jpeg compressed mono8``    ``mono16; png compressed `` (16-bit PNG, lossless)
===============  ===================================  ======================================================

Colour is compressed as B, G, R (alpha dropped); the JPEG of a 16-bit image holds ``rint(x * 255 / 65535)``
(cv_bridge's depth conversion) and is read back times 256. Older publishers wrote only ``jpeg`` or ``png``:
the image is then mono8 (one channel), mono16 (one 16-bit channel), bgr8 or bgra8, as decoded.

:func:`decompress` gives the original encoding's fields, so the node and the bag tools decode the result
with the same code as a raw image (:func:`~stereonet_ros.image_codec.to_model_input`): a PNG gives
exactly the pixels of the raw image, a JPEG its lossy approximation. It follows the plugin's subscriber
(decode unchanged; "compressed bgr" means B, G, R data, otherwise R, G, B; JPEG of a 16-bit encoding
times 256), and is stricter where the subscriber would pass garbage on: the data must start with the
signature of the codec the format names, decode to a non-empty image and fit the encoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from stereonet_ros.image_codec import (EncodingError, ImageCodecError, ImageFields, array_to_image_fields,
                                       canonical_encoding)

Compression = Literal['png', 'jpeg']
COMPRESSIONS: tuple[Compression, ...] = ('png', 'jpeg')

TRANSPORTS: tuple[str, ...] = ('raw', 'compressed')
"""image_transport's names for the transports this package reads: ``raw`` (sensor_msgs/Image on the
base topic) and ``compressed`` (sensor_msgs/CompressedImage on ``<base topic>/compressed``)."""
COMPRESSED_SUFFIX = '/compressed'

DEFAULT_JPEG_QUALITY = 95
"""compressed_image_transport's ``jpeg_quality`` default (1..100)."""
DEFAULT_PNG_LEVEL = 3
"""compressed_image_transport's ``png_level`` default (0..9; lossless at every level)."""

_SIGNATURES: dict[Compression, bytes] = {'png': b'\x89PNG\r\n\x1a\n', 'jpeg': b'\xff\xd8\xff'}
_COMPRESSIBLE = ('mono8', 'mono16', 'rgb8', 'bgr8', 'rgba8', 'bgra8')
_COLOUR_ORDER = {'rgb8': 'rgb', 'bgr8': 'bgr', 'rgba8': 'rgb', 'bgra8': 'bgr'}


class CompressedImageError(ImageCodecError):
    """A compressed image cannot be decoded (format string, corrupt data, a layout that does not fit)."""


class CompressedImageLike(Protocol):
    """The ``sensor_msgs/CompressedImage`` fields used here (header is not needed)."""

    @property
    def format(self) -> str: ...

    @property
    def data(self) -> Any:
        """Any buffer of bytes: ``bytes``, ``array.array('B')`` (rclpy), uint8 ndarray (rosbags)."""
        ...


@dataclass(frozen=True)
class CompressedFormat:
    """A parsed ``format`` field.

    Attributes:
        encoding: the original image's encoding (before ``;``), or None for the older plain formats.
        compression: ``png`` or ``jpeg``.
        bgr: colour data is stored B, G, R ("compressed bgr..."); else R, G, B. Ignored for one channel.
    """

    encoding: str | None
    compression: Compression
    bgr: bool


@dataclass(frozen=True)
class CompressedFields:
    """Field values for a ``sensor_msgs/CompressedImage`` (header aside)."""

    format: str
    data: bytes


def compressed_topic(image_topic: str) -> str:
    """The topic image_transport's ``compressed`` plugin uses for ``image_topic``: ``<image_topic>/compressed``."""
    return image_topic.rstrip('/') + COMPRESSED_SUFFIX


def _opencv() -> ModuleType:
    try:
        import cv2
    except ImportError as err:
        raise CompressedImageError('compressed images need OpenCV: pip install opencv-python-headless (or apt '
                                   f'install python3-opencv): {err}') from err
    return cv2


def require_codec() -> None:
    """Check that the codec library is importable (the node calls it at start-up with ``compressed``).

    Raises:
        CompressedImageError: OpenCV is missing; the message says how to install it.
    """
    _opencv()


def parse_format(text: str) -> CompressedFormat:
    """Parse a ``CompressedImage.format`` (see the module doc for the forms).

    Raises:
        CompressedImageError: not a PNG or JPEG of the ``compressed`` transport (e.g. ``compressedDepth``,
            TIFF, an empty string).
    """
    value = str(text).strip()
    encoding: str | None = None
    if ';' in value:
        encoding, rest = (part.strip() for part in value.split(';', 1))
        words = rest.split()
        if not encoding:
            raise CompressedImageError(f'compressed image format {text!r} names no encoding before ";"')
        if words[:1] == ['compressedDepth'] or 'compressedDepth' in words:
            raise CompressedImageError(f"compressed image format {text!r} is image_transport's compressedDepth "
                                       "transport (depth images); only 'compressed' (PNG, JPEG) is read")
        if len(words) not in (2, 3) or words[1] != 'compressed':
            raise CompressedImageError(f'compressed image format {text!r}: expected "<encoding>; <jpeg|png> '
                                       'compressed [<target>]"')
        codec = words[0].lower()
        bgr = len(words) == 3 and words[2].startswith('bgr')
    else:
        codec, bgr = value.lower(), True  # older plain formats: OpenCV's own order
    if codec == 'jpg':
        codec = 'jpeg'
    if codec not in COMPRESSIONS:
        raise CompressedImageError(f'compressed image format {text!r}: codec {codec!r} is not read here; '
                                   f'supported: {", ".join(COMPRESSIONS)}')
    compression: Compression = 'png' if codec == 'png' else 'jpeg'
    return CompressedFormat(encoding=encoding, compression=compression, bgr=bgr)


def decompress(msg: CompressedImageLike) -> ImageFields:
    """Decode a compressed image into the fields of the raw image it was made from.

    Returns:
        :class:`~stereonet_ros.image_codec.ImageFields` in the original encoding (canonical name, e.g.
        ``8UC3`` -> ``bgr8``), little-endian, unpadded rows: decode them as any raw image.

    Raises:
        CompressedImageError: bad format string, no data, data that is not the named codec's, corrupt or
            truncated data, or a decoded layout (channels, bit depth) that does not fit the encoding.
        EncodingError: the original encoding is not one the node reads (e.g. rgb16, bayer_rggb8).
    """
    fmt = parse_format(str(msg.format))
    data = np.frombuffer(msg.data, dtype=np.uint8)
    what = f'{fmt.compression} image ({data.size} bytes, format {str(msg.format).strip()!r})'
    if data.size == 0:
        raise CompressedImageError(f'{what} has no data')
    signature = _SIGNATURES[fmt.compression]
    if data[:len(signature)].tobytes() != signature:
        raise CompressedImageError(f'{what}: the data does not start with the {fmt.compression.upper()} '
                                   'signature (corrupt, or another codec than the format says)')
    cv2 = _opencv()
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise CompressedImageError(f'{what} cannot be decoded: {" ".join(str(err).split())}') from err
    if decoded is None or decoded.size == 0:
        raise CompressedImageError(f'{what} cannot be decoded (corrupt or truncated)')
    encoding, values = _as_encoding(np.asarray(decoded), fmt, what)
    return array_to_image_fields(values, encoding)


def _as_encoding(decoded: npt.NDArray[Any], fmt: CompressedFormat, what: str) -> tuple[str, npt.NDArray[Any]]:
    """OpenCV's decoded array -> (encoding, array in that encoding's layout)."""
    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[:, :, 0]  # (H, W, 1) -> (H, W)
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if decoded.dtype not in (np.uint8, np.uint16) or channels not in (1, 3, 4):
        raise CompressedImageError(f'{what} decodes to {channels}-channel {decoded.dtype}, which no image '
                                   'encoding read here holds')
    if fmt.encoding is None:  # older plain formats: what OpenCV decoded
        if channels == 1:
            return ('mono16' if decoded.dtype == np.uint16 else 'mono8'), decoded
        if decoded.dtype != np.uint8:
            raise CompressedImageError(f'{what} decodes to 16-bit colour, which no image encoding read here holds')
        return ('bgr8' if channels == 3 else 'bgra8'), decoded
    encoding = canonical_encoding(fmt.encoding)
    if encoding not in _COMPRESSIBLE:
        raise CompressedImageError(f'{what}: encoding {fmt.encoding} is not carried by compressed images '
                                   '(8- and 16-bit only)')
    want = np.uint16 if encoding == 'mono16' else np.uint8
    if fmt.compression == 'jpeg' and want == np.uint16 and decoded.dtype == np.uint8:
        decoded = decoded.astype(np.uint16) * np.uint16(256)  # as the plugin's subscriber: 8-bit JPEG back to 16
    if decoded.dtype != want:
        raise CompressedImageError(f'{what} decodes to {decoded.dtype} but {fmt.encoding} is '
                                   f'{np.dtype(want).name}')
    if encoding in ('mono8', 'mono16'):
        if channels != 1:
            raise CompressedImageError(f'{what} decodes to {channels} channels but {fmt.encoding} has one')
        return encoding, decoded
    if channels == 1:
        raise CompressedImageError(f'{what} decodes to one channel but {fmt.encoding} is colour')
    order = [2, 1, 0] if fmt.bgr else [0, 1, 2]
    rgb = decoded[:, :, order]  # (H, W, 3) R, G, B
    if _COLOUR_ORDER[encoding] == 'bgr':
        rgb = rgb[:, :, ::-1]  # (H, W, 3) B, G, R
    if encoding in ('rgba8', 'bgra8'):
        alpha = decoded[:, :, 3:4] if channels == 4 else np.full(decoded.shape[:2] + (1,), 255, dtype=np.uint8)
        rgb = np.concatenate([rgb, alpha], axis=2)  # (H, W, 4)
    return encoding, np.ascontiguousarray(rgb)


def compress(array: npt.NDArray[Any], encoding: str, compression: Compression,
             jpeg_quality: int = DEFAULT_JPEG_QUALITY, png_level: int = DEFAULT_PNG_LEVEL) -> CompressedFields:
    """Compress an image as compressed_image_transport's publisher does (format string included).

    Args:
        array: ``(H, W)`` or ``(H, W, C)`` in ``encoding``'s dtype and channel order.
        encoding: mono8, mono16, rgb8, bgr8, rgba8 or bgra8 (or an alias of one).
        compression: ``png`` (lossless) or ``jpeg``.
        jpeg_quality: 1..100, the plugin's ``jpeg_quality``.
        png_level: 0..9, the plugin's ``png_level``.

    Raises:
        EncodingError: the array does not fit the encoding, or the encoding is not compressible (32FC1).
        CompressedImageError: a bad codec, quality or level, or OpenCV failed.
    """
    if compression not in COMPRESSIONS:
        raise CompressedImageError(f'compression must be one of {", ".join(COMPRESSIONS)}, got {compression!r}')
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise CompressedImageError(f'jpeg_quality must be an integer in [1, 100], got {jpeg_quality!r}')
    if isinstance(png_level, bool) or not isinstance(png_level, int) or not 0 <= png_level <= 9:
        raise CompressedImageError(f'png_level must be an integer in [0, 9], got {png_level!r}')
    canonical = canonical_encoding(encoding)
    if canonical not in _COMPRESSIBLE:
        raise EncodingError(f'{encoding} images cannot be compressed: the compressed transport carries '
                            f'{", ".join(_COMPRESSIBLE)}')
    array_to_image_fields(array, encoding)  # checks dtype, rank and channels against the encoding
    values = np.ascontiguousarray(array)
    if canonical in _COLOUR_ORDER:
        bgr = values[:, :, :3] if _COLOUR_ORDER[canonical] == 'bgr' else values[:, :, 2::-1]  # (H, W, 3) B, G, R
        image, target = np.ascontiguousarray(bgr), 'bgr8'
    elif compression == 'jpeg':
        # cv_bridge's mono16 -> mono8 depth conversion (rounded, as OpenCV's convertTo).
        image = values if canonical == 'mono8' else np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        target = 'mono8'
    else:
        image, target = values, ''  # the publisher names no target for a gray PNG
    cv2 = _opencv()
    if compression == 'jpeg':
        extension, parameters = '.jpg', [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    else:
        extension, parameters = '.png', [cv2.IMWRITE_PNG_COMPRESSION, png_level]
    try:
        ok, buffer = cv2.imencode(extension, image, parameters)
    except cv2.error as err:
        raise CompressedImageError(f'{compression} encoding failed: {" ".join(str(err).split())}') from err
    if not ok:
        raise CompressedImageError(f'{compression} encoding of a {image.shape} {image.dtype} image failed')
    return CompressedFields(format=f'{encoding}; {compression} compressed {target}', data=buffer.tobytes())
