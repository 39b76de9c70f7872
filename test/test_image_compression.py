"""stereonet_ros.image_compression: CompressedImage as image_transport's compressed plugin writes and reads it."""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

cv2 = pytest.importorskip('cv2')

from stereonet_ros.image_codec import EncodingError, array_to_image_fields, image_to_array, to_model_input  # noqa: E402
from stereonet_ros.image_compression import (CompressedImageError, compress, compressed_topic,  # noqa: E402
                                             decompress, parse_format)


@dataclass
class FakeCompressed:
    format: str
    data: Any


LAYOUTS: dict[str, tuple[type[np.generic], int]] = {
    'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1), 'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3),
    'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4), '8UC1': (np.uint8, 1), '16UC1': (np.uint16, 1),
    '8UC3': (np.uint8, 3),
}


def random_image(encoding: str, height: int = 24, width: int = 40, seed: int = 0) -> npt.NDArray[Any]:
    dtype, channels = LAYOUTS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    top = int(np.iinfo(np.dtype(dtype)).max)
    return np.random.default_rng(seed).integers(0, top, shape, endpoint=True).astype(dtype)


def smooth_image(encoding: str, height: int = 48, width: int = 64) -> npt.NDArray[Any]:
    """Gradients and a soft blob: the kind of content JPEG is made for (random noise is its worst case)."""
    dtype, channels = LAYOUTS[encoding]
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    base = 0.5 + 0.3 * np.sin(u / 9.0) * np.cos(v / 7.0) + 0.15 * np.exp(-((u - 30) ** 2 + (v - 20) ** 2) / 80.0)
    planes = [np.clip(base + 0.05 * k, 0.0, 1.0) for k in range(channels)]
    values = np.stack(planes, axis=2) if channels > 1 else planes[0]
    return np.rint(values * np.iinfo(np.dtype(dtype)).max).astype(dtype)


def as_message(fields: Any, data: Any = None) -> FakeCompressed:
    return FakeCompressed(fields.format, fields.data if data is None else data)


@pytest.mark.parametrize(('encoding', 'compression', 'expected'), [
    ('rgb8', 'jpeg', 'rgb8; jpeg compressed bgr8'),
    ('bgra8', 'jpeg', 'bgra8; jpeg compressed bgr8'),
    ('mono8', 'jpeg', 'mono8; jpeg compressed mono8'),
    ('mono16', 'jpeg', 'mono16; jpeg compressed mono8'),
    ('rgb8', 'png', 'rgb8; png compressed bgr8'),
    ('mono8', 'png', 'mono8; png compressed '),  # the plugin names no target for a gray PNG
    ('mono16', 'png', 'mono16; png compressed '),
    ('8UC3', 'png', '8UC3; png compressed bgr8'),  # the encoding as the image gave it
])
def test_the_format_string_is_what_compressed_image_transport_writes(encoding: str, compression: str,
                                                                    expected: str) -> None:
    fields = compress(random_image(encoding), encoding, compression)  # type: ignore[arg-type]
    assert fields.format == expected
    signature = b'\x89PNG' if compression == 'png' else b'\xff\xd8\xff'
    assert fields.data.startswith(signature)


@pytest.mark.parametrize('encoding', sorted(LAYOUTS))
def test_png_decodes_to_exactly_what_the_raw_image_decodes_to(encoding: str) -> None:
    image = random_image(encoding, seed=3)
    raw = array_to_image_fields(image, encoding)
    decoded = decompress(as_message(compress(image, encoding, 'png')))
    for want in ('gray', 'rgb'):
        assert np.array_equal(to_model_input(decoded, want), to_model_input(raw, want)), want  # type: ignore[arg-type]
    if LAYOUTS[encoding][1] != 4:  # alpha is not carried (the plugin compresses colour as bgr8); all else is
        assert np.array_equal(image_to_array(decoded), image)


def test_alpha_is_not_carried_and_reads_back_opaque_as_the_plugin_s_subscriber_does() -> None:
    image = random_image('rgba8')
    decoded = image_to_array(decompress(as_message(compress(image, 'rgba8', 'png'))))
    assert np.array_equal(decoded[:, :, :3], image[:, :, :3]) and np.all(decoded[:, :, 3] == 255)


@pytest.mark.parametrize('encoding', ['mono8', 'rgb8', 'bgr8'])
def test_jpeg_at_the_plugin_s_default_quality_stays_within_its_loss(encoding: str) -> None:
    # Measured at quality 95 on this content: mean error 0.25 (mono8) to 0.74 (bgr8) levels, max 2; bounds 2 and 4.
    image = smooth_image(encoding)
    decoded = image_to_array(decompress(as_message(compress(image, encoding, 'jpeg'))))
    error = np.abs(decoded.astype(np.int32) - image.astype(np.int32))
    assert decoded.shape == image.shape and decoded.dtype == image.dtype
    assert error.mean() < 2.0 and error.max() <= 4
    # A lower quality loses more: the decoder really reads the lossy data.
    worse = image_to_array(decompress(as_message(compress(image, encoding, 'jpeg', jpeg_quality=10))))
    assert np.abs(worse.astype(np.int32) - image.astype(np.int32)).mean() > error.mean()


def test_a_16_bit_jpeg_holds_8_bits_and_is_read_back_times_256() -> None:
    image = smooth_image('mono16')
    fields = compress(image, 'mono16', 'jpeg')
    decoded = image_to_array(decompress(as_message(fields)))
    assert decoded.dtype == np.uint16
    eight_bit = np.rint(image * (255.0 / 65535.0))  # cv_bridge's depth conversion before JPEG
    stored = cv2.imdecode(np.frombuffer(fields.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, stored.astype(np.uint16) * 256)
    assert np.abs(stored.astype(np.float64) - eight_bit).mean() < 2.0


def test_colour_stored_r_g_b_is_read_in_that_order_when_the_format_does_not_say_bgr() -> None:
    image = random_image('rgb8')
    ok, data = cv2.imencode('.png', image)  # R, G, B bytes written as they are (no swap to B, G, R)
    assert ok
    decoded = decompress(FakeCompressed('rgb8; png compressed rgb8', data.tobytes()))
    assert np.array_equal(image_to_array(decoded), image)
    assert decoded.encoding == 'rgb8'


@pytest.mark.parametrize(('channels', 'dtype', 'encoding'), [
    (1, np.uint8, 'mono8'), (1, np.uint16, 'mono16'), (3, np.uint8, 'bgr8'), (4, np.uint8, 'bgra8')])
def test_older_plain_formats_take_the_encoding_from_what_was_decoded(channels: int, dtype: type[np.generic],
                                                                     encoding: str) -> None:
    shape = (9, 11) if channels == 1 else (9, 11, channels)
    image = np.random.default_rng(1).integers(0, np.iinfo(np.dtype(dtype)).max, shape).astype(dtype)
    ok, data = cv2.imencode('.png', image)
    assert ok
    decoded = decompress(FakeCompressed('png', data.tobytes()))
    assert decoded.encoding == encoding and np.array_equal(image_to_array(decoded), image)
    if channels == 3:
        ok, jpeg = cv2.imencode('.jpg', image)
        assert decompress(FakeCompressed('jpeg', jpeg.tobytes())).encoding == 'bgr8'


def test_every_buffer_type_a_message_may_carry_is_read() -> None:
    fields = compress(random_image('rgb8'), 'rgb8', 'png')
    expected = image_to_array(decompress(as_message(fields)))
    for data in (fields.data, array.array('B', fields.data), np.frombuffer(fields.data, np.uint8)):
        assert np.array_equal(image_to_array(decompress(as_message(fields, data))), expected)


def test_format_strings_parse_into_encoding_codec_and_channel_order() -> None:
    assert parse_format('rgb8; jpeg compressed bgr8') == parse_format(' rgb8 ;  jpeg  compressed  bgr8 ')
    parsed = parse_format('rgb8; jpeg compressed bgr8')
    assert (parsed.encoding, parsed.compression, parsed.bgr) == ('rgb8', 'jpeg', True)
    parsed = parse_format('mono16; png compressed mono16')
    assert (parsed.encoding, parsed.compression, parsed.bgr) == ('mono16', 'png', False)
    parsed = parse_format('mono8; png compressed ')
    assert (parsed.encoding, parsed.compression) == ('mono8', 'png')
    assert parse_format('jpeg').encoding is None and parse_format('PNG').compression == 'png'
    assert parse_format('jpg').compression == 'jpeg'
    assert compressed_topic('/left/image_rect') == '/left/image_rect/compressed'


def _truncated() -> FakeCompressed:
    fields = compress(random_image('rgb8'), 'rgb8', 'png')
    return FakeCompressed(fields.format, fields.data[:len(fields.data) // 2])


def _jpeg_truncated() -> FakeCompressed:
    fields = compress(random_image('rgb8'), 'rgb8', 'jpeg')
    return FakeCompressed(fields.format, fields.data[:len(fields.data) // 2])


def _png_for(format_text: str, image: npt.NDArray[Any]) -> FakeCompressed:
    ok, data = cv2.imencode('.png', image)
    assert ok
    return FakeCompressed(format_text, data.tobytes())


@pytest.mark.parametrize(('make', 'error', 'match'), [
    (lambda: FakeCompressed('rgb8; png compressed bgr8', b''), CompressedImageError, r'png image \(0 bytes.* no data'),
    (lambda: FakeCompressed('rgb8; png compressed bgr8', b'garbage bytes, not an image'), CompressedImageError,
     'does not start with the PNG signature'),
    (lambda: FakeCompressed('rgb8; jpeg compressed bgr8', compress(random_image('rgb8'), 'rgb8', 'png').data),
     CompressedImageError, 'does not start with the JPEG signature'),
    (_truncated, CompressedImageError, r'cannot be decoded \(corrupt or truncated\)'),
    (_jpeg_truncated, CompressedImageError, r'cannot be decoded \(corrupt or truncated\)'),
    (lambda: FakeCompressed('16UC1; compressedDepth png', b'\x89PNG'), CompressedImageError,
     "compressedDepth transport"),
    (lambda: FakeCompressed('rgb8; tiff compressed bgr8', b'II*'), CompressedImageError, "codec 'tiff' is not read"),
    (lambda: FakeCompressed('', b'\x89PNG'), CompressedImageError, "codec '' is not read"),
    (lambda: FakeCompressed('; png compressed bgr8', b'\x89PNG'), CompressedImageError, 'names no encoding'),
    (lambda: FakeCompressed('rgb8; png bgr8', b'\x89PNG'), CompressedImageError, 'expected'),
    (lambda: _png_for('rgb16; png compressed bgr16', random_image('rgb8')), EncodingError,
     "unsupported image encoding 'rgb16'"),
    (lambda: _png_for('32FC1; png compressed ', random_image('mono8')), CompressedImageError,
     '32FC1 is not carried by compressed images'),
    (lambda: _png_for('mono8; png compressed ', random_image('rgb8')), CompressedImageError,
     'decodes to 3 channels but mono8 has one'),
    (lambda: _png_for('rgb8; png compressed bgr8', random_image('mono8')), CompressedImageError,
     'decodes to one channel but rgb8 is colour'),
    (lambda: _png_for('mono8; png compressed ', random_image('mono16')), CompressedImageError,
     'decodes to uint16 but mono8 is uint8'),
    (lambda: _png_for('mono16; png compressed ', random_image('mono8')), CompressedImageError,
     'decodes to uint8 but mono16 is uint16'),
])
def test_an_unusable_compressed_image_raises_a_named_error_saying_why(make: Any, error: type[Exception],
                                                                      match: str) -> None:
    with pytest.raises(error, match=match):
        decompress(make())


def test_compress_refuses_what_the_plugin_cannot_carry_and_bad_settings() -> None:
    with pytest.raises(EncodingError, match='32FC1 images cannot be compressed'):
        compress(np.zeros((4, 4), np.float32), '32FC1', 'png')
    with pytest.raises(EncodingError, match='rgb8 needs an array of shape'):
        compress(np.zeros((4, 4), np.uint8), 'rgb8', 'png')
    with pytest.raises(CompressedImageError, match=r'jpeg_quality must be an integer in \[1, 100\], got 0'):
        compress(np.zeros((4, 4), np.uint8), 'mono8', 'jpeg', jpeg_quality=0)
    with pytest.raises(CompressedImageError, match=r'png_level must be an integer in \[0, 9\], got 10'):
        compress(np.zeros((4, 4), np.uint8), 'mono8', 'png', png_level=10)
    with pytest.raises(CompressedImageError, match="compression must be one of png, jpeg, got 'webp'"):
        compress(np.zeros((4, 4), np.uint8), 'mono8', 'webp')  # type: ignore[arg-type]
