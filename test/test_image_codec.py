"""Tests for stereonet_ros.image_codec: sensor_msgs/Image fields <-> arrays."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stereonet_ros.image_codec import (
    SUPPORTED_ENCODINGS,
    EncodingError,
    ImageFields,
    MalformedImageError,
    array_to_image_fields,
    bt601_luma,
    bytes_per_pixel,
    canonical_encoding,
    image_to_array,
    to_model_input,
)


@dataclass
class FakeImage:
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: Any


def from_fields(fields: ImageFields) -> FakeImage:
    return FakeImage(fields.height, fields.width, fields.encoding, fields.is_bigendian, fields.step,
                     bytes(fields.data))


# encoding -> (dtype, channels)
_LAYOUT: dict[str, tuple[type[np.generic], int]] = {
    'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1), 'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3),
    'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4), '32FC1': (np.float32, 1),
    '8UC1': (np.uint8, 1), '16UC1': (np.uint16, 1), '8UC3': (np.uint8, 3),
}


def random_image(encoding: str, height: int = 5, width: int = 7, seed: int = 0) -> npt.NDArray[Any]:
    rng = np.random.default_rng(seed)
    dtype, channels = _LAYOUT[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32)
    top = int(np.iinfo(np.dtype(dtype)).max)
    return rng.integers(0, top, shape, endpoint=True).astype(dtype)


def test_every_supported_encoding_has_a_layout_here() -> None:
    assert set(SUPPORTED_ENCODINGS) == set(_LAYOUT)


@pytest.mark.parametrize('encoding', sorted(_LAYOUT))
def test_round_trip_through_fields_for_every_encoding(encoding: str) -> None:
    array = random_image(encoding)
    fields = array_to_image_fields(array, encoding)
    assert (fields.height, fields.width, fields.encoding, fields.is_bigendian) == (5, 7, encoding, 0)
    assert fields.step == 7 * bytes_per_pixel(encoding)
    assert len(fields.data) == fields.step * fields.height
    decoded = image_to_array(from_fields(fields))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(('encoding', 'bpp'), [('mono8', 1), ('mono16', 2), ('rgb8', 3), ('bgra8', 4),
                                               ('32FC1', 4), ('8UC3', 3), ('16UC1', 2)])
def test_bytes_per_pixel(encoding: str, bpp: int) -> None:
    assert bytes_per_pixel(encoding) == bpp


@pytest.mark.parametrize(('alias', 'canonical'), [('8UC1', 'mono8'), ('16UC1', 'mono16'), ('8UC3', 'bgr8'),
                                                  ('rgb8', 'rgb8')])
def test_aliases_read_as_cv_bridge_reads_them(alias: str, canonical: str) -> None:
    assert canonical_encoding(alias) == canonical


def test_fields_are_little_endian_bytes_with_known_values() -> None:
    fields = array_to_image_fields(np.array([[0x0102, 0xA0B0]], dtype=np.uint16), 'mono16')
    assert bytes(fields.data) == b'\x02\x01\xb0\xa0'
    fields = array_to_image_fields(np.array([[1.5]], dtype=np.float32), '32FC1')
    assert bytes(fields.data) == struct.pack('<f', 1.5)


def test_non_native_byte_order_arrays_are_encoded_by_value() -> None:
    values = np.array([[1, 2, 65535]], dtype='>u2')
    fields = array_to_image_fields(values, 'mono16')
    assert bytes(fields.data) == b'\x01\x00\x02\x00\xff\xff'


def test_big_endian_mono16_is_decoded_to_native_values() -> None:
    msg = FakeImage(1, 3, 'mono16', 1, 6, b'\x01\x02\x00\x05\xff\x00')
    decoded = image_to_array(msg)
    assert decoded.dtype == np.dtype(np.uint16) and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, [[0x0102, 5, 0xFF00]])


def test_big_endian_32fc1_is_decoded_to_native_values() -> None:
    values = [1.5, -2.25, float('inf'), 1e-3]
    msg = FakeImage(2, 2, '32FC1', 1, 8, struct.pack('>4f', *values))
    decoded = image_to_array(msg)
    assert decoded.dtype == np.dtype(np.float32) and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, np.array(values, dtype=np.float32).reshape(2, 2))


def test_is_bigendian_does_not_matter_for_8_bit_encodings() -> None:
    msg = FakeImage(1, 2, 'rgb8', 1, 6, bytes([1, 2, 3, 4, 5, 6]))
    np.testing.assert_array_equal(image_to_array(msg), [[[1, 2, 3], [4, 5, 6]]])


@pytest.mark.parametrize(('encoding', 'padding'), [('mono8', 3), ('rgb8', 5), ('bgra8', 1), ('mono16', 6),
                                                   ('32FC1', 12)])
def test_row_padding_in_step_is_skipped(encoding: str, padding: int) -> None:
    array = random_image(encoding, height=4, width=3, seed=1)
    row = array.reshape(4, -1).astype(array.dtype.newbyteorder('<')).view(np.uint8)  # (H, W * bpp) bytes
    padded = np.concatenate([row, np.full((4, padding), 0xAB, dtype=np.uint8)], axis=1)
    msg = FakeImage(4, 3, encoding, 0, row.shape[1] + padding, padded.tobytes())
    np.testing.assert_array_equal(image_to_array(msg), array)


def test_extra_bytes_after_the_last_row_are_ignored() -> None:
    msg = FakeImage(1, 2, 'mono8', 0, 2, b'\x07\x08\x09\x0a')
    np.testing.assert_array_equal(image_to_array(msg), [[7, 8]])


def test_decoded_array_is_a_writable_copy() -> None:
    data = bytearray([1, 2, 3, 4])
    decoded = image_to_array(FakeImage(2, 2, 'mono8', 0, 2, data))
    decoded[0, 0] = 99
    assert data[0] == 1
    assert decoded.flags.c_contiguous and decoded.flags.writeable


def test_colour_channel_order_is_the_encodings_own() -> None:
    bgr = FakeImage(1, 1, 'bgr8', 0, 3, bytes([10, 20, 30]))
    np.testing.assert_array_equal(image_to_array(bgr), [[[10, 20, 30]]])  # B, G, R as sent
    np.testing.assert_array_equal(to_model_input(bgr, 'rgb'), [[[30, 20, 10]]])
    bgra = FakeImage(1, 1, 'bgra8', 0, 4, bytes([10, 20, 30, 40]))
    np.testing.assert_array_equal(to_model_input(bgra, 'rgb'), [[[30, 20, 10]]])
    rgba = FakeImage(1, 1, 'rgba8', 0, 4, bytes([10, 20, 30, 40]))
    np.testing.assert_array_equal(to_model_input(rgba, 'rgb'), [[[10, 20, 30]]])


@pytest.mark.parametrize(('pixel', 'gray'), [
    ((255, 0, 0), 76.245),
    ((0, 255, 0), 149.685),
    ((0, 0, 255), 29.07),
    ((255, 255, 255), 255.0),
    ((0, 0, 0), 0.0),
    ((100, 150, 200), 140.75),  # 29.9 + 88.05 + 22.8: would round to 141, it must not
])
def test_gray_from_colour_is_unrounded_float_bt601_luma(pixel: tuple[int, int, int], gray: float) -> None:
    r, g, b = pixel
    for encoding, data in [('rgb8', [r, g, b]), ('bgr8', [b, g, r]), ('rgba8', [r, g, b, 7]),
                           ('bgra8', [b, g, r, 255])]:
        msg = FakeImage(1, 1, encoding, 0, len(data), bytes(data))
        result = to_model_input(msg, 'gray')
        assert result.dtype == np.float32 and result.shape == (1, 1)
        assert result[0, 0] == pytest.approx(gray, abs=1e-4), encoding


def test_gray_from_colour_is_bit_for_bit_what_the_predictor_computes_from_the_same_rgb() -> None:
    from stereonet_ros.inference import as_float_image, to_contract_color

    array = random_image('rgb8', height=13, width=17, seed=5)
    decoded = to_model_input(from_fields(array_to_image_fields(array, 'rgb8')), 'gray')
    bgr = to_model_input(from_fields(array_to_image_fields(np.ascontiguousarray(array[:, :, ::-1]), 'bgr8')), 'gray')
    predictor_gray = to_contract_color(as_float_image(array, 'left'), 'gray')[0]
    assert np.array_equal(decoded, predictor_gray) and np.array_equal(bgr, predictor_gray)
    assert np.array_equal(bt601_luma(array.astype(np.float32)), predictor_gray)
    assert not np.array_equal(decoded, np.rint(decoded))  # not quantized to gray levels


def test_mono_asked_as_rgb_is_replicated_and_keeps_its_dtype() -> None:
    for encoding in ('mono8', 'mono16', '32FC1'):
        array = random_image(encoding, seed=2)
        msg = from_fields(array_to_image_fields(array, encoding))
        rgb = to_model_input(msg, 'rgb')
        assert rgb.shape == (5, 7, 3) and rgb.dtype == array.dtype and rgb.flags.c_contiguous
        for channel in range(3):
            np.testing.assert_array_equal(rgb[:, :, channel], array)
        np.testing.assert_array_equal(to_model_input(msg, 'gray'), array)


def test_model_input_rgb_from_rgb8_is_unchanged_and_contiguous() -> None:
    array = random_image('rgb8', seed=3)
    result = to_model_input(from_fields(array_to_image_fields(array, 'rgb8')), 'rgb')
    assert result.flags.c_contiguous
    np.testing.assert_array_equal(result, array)


@pytest.mark.parametrize(('encoding', 'order'), [('rgb8', [0, 1, 2]), ('bgr8', [2, 1, 0]), ('rgba8', [0, 1, 2]),
                                               ('bgra8', [2, 1, 0])])
@pytest.mark.parametrize('padding', [0, 3])
def test_model_input_rgb_is_a_contiguous_copy_in_rgb_order_for_every_colour_encoding(
        encoding: str, order: list[int], padding: int) -> None:
    array = random_image(encoding, height=6, width=9, seed=11)
    channels = array.shape[2]
    step = 9 * channels + padding  # rows padded with junk bytes after the pixels
    rows = np.full((6, step), 0xAB, dtype=np.uint8)
    rows[:, :9 * channels] = array.reshape(6, -1)
    data = bytearray(rows.tobytes())
    result = to_model_input(FakeImage(6, 9, encoding, 0, step, data), 'rgb')
    assert result.shape == (6, 9, 3) and result.dtype == np.uint8
    assert result.flags.c_contiguous and result.flags.writeable
    np.testing.assert_array_equal(result, np.stack([array[:, :, c] for c in order], axis=2))
    result[...] = 0  # a copy: the message keeps its bytes
    assert bytes(data) == rows.tobytes()


# ---------------------------------------------------------------------------- errors


def test_unsupported_encoding_is_named() -> None:
    msg = FakeImage(2, 2, 'yuv422', 0, 4, bytes(8))
    with pytest.raises(EncodingError, match=r"unsupported image encoding 'yuv422'; supported: mono8"):
        image_to_array(msg)
    with pytest.raises(EncodingError, match=r"unsupported image encoding '32FC3'"):
        array_to_image_fields(np.zeros((2, 2, 3), np.float32), '32FC3')
    with pytest.raises(EncodingError, match=r"unsupported image encoding 'bayer_rggb8'"):
        bytes_per_pixel('bayer_rggb8')


@pytest.mark.parametrize(('msg', 'match'), [
    (FakeImage(0, 4, 'mono8', 0, 4, b''), r'mono8 image has zero size: height 0, width 4'),
    (FakeImage(3, 0, 'rgb8', 0, 0, b''), r'rgb8 image has zero size: height 3, width 0'),
    (FakeImage(2, 4, 'rgb8', 0, 11, bytes(24)),
     r'rgb8 image step 11 is smaller than width 4 x 3 bytes per pixel = 12'),
    (FakeImage(2, 4, 'mono16', 0, 9, bytes(18)), r'mono16 image step 9 is not a multiple of the 2-byte element'),
    (FakeImage(2, 2, '32FC1', 0, 10, bytes(20)), r'32FC1 image step 10 is not a multiple of the 4-byte element'),
    (FakeImage(3, 4, 'mono8', 0, 4, bytes(11)),
     r'mono8 image data has 11 bytes, fewer than step 4 x height 3 = 12'),
    (FakeImage(2, 2, '16UC1', 0, 4, bytes(7)), r'16UC1 image data has 7 bytes, fewer than step 4 x height 2 = 8'),
])
def test_malformed_images_raise_naming_the_values(msg: FakeImage, match: str) -> None:
    with pytest.raises(MalformedImageError, match=match):
        image_to_array(msg)
    with pytest.raises(MalformedImageError, match=match):
        to_model_input(msg, 'gray')


@pytest.mark.parametrize(('array', 'encoding', 'match'), [
    (np.zeros((2, 2), np.float64), 'mono8', r'mono8 needs a uint8 array, got float64'),
    (np.zeros((2, 2), np.uint8), 'mono16', r'mono16 needs a uint16 array, got uint8'),
    (np.zeros((2, 2), np.int16), '16UC1', r'16UC1 needs a uint16 array, got int16'),
    (np.zeros((2, 2), np.uint8), 'rgb8', r'rgb8 needs an array of shape \(H, W, 3\), got \(2, 2\)'),
    (np.zeros((2, 2, 3), np.uint8), 'rgba8', r'rgba8 needs an array of shape \(H, W, 4\), got \(2, 2, 3\)'),
    (np.zeros((2, 2, 1), np.uint8), 'mono8', r'mono8 needs an array of shape \(H, W\), got \(2, 2, 1\)'),
    (np.zeros((0, 2), np.float32), '32FC1', r'cannot encode an empty array of shape \(0, 2\)'),
])
def test_arrays_that_do_not_fit_the_encoding_raise(array: npt.NDArray[Any], encoding: str, match: str) -> None:
    with pytest.raises(EncodingError, match=match):
        array_to_image_fields(array, encoding)


def test_model_input_rejects_an_unknown_want() -> None:
    msg = FakeImage(1, 1, 'mono8', 0, 1, b'\x00')
    with pytest.raises(EncodingError, match=r"want must be 'gray' or 'rgb', got 'bgr'"):
        to_model_input(msg, 'bgr')  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- real messages


def test_rclpy_image_messages_fit_and_round_trip() -> None:
    from sensor_msgs.msg import Image

    array = random_image('bgr8', height=6, width=9, seed=4)
    fields = array_to_image_fields(array, 'bgr8')
    msg = Image(height=fields.height, width=fields.width, encoding=fields.encoding,
                is_bigendian=fields.is_bigendian, step=fields.step)
    msg.data = fields.data  # an array.array('B'), the type rclpy stores uint8[] in
    np.testing.assert_array_equal(image_to_array(msg), array)
    np.testing.assert_array_equal(to_model_input(msg, 'rgb'), array[:, :, ::-1])

    big = Image(height=1, width=2, encoding='mono16', is_bigendian=1, step=6)
    big.data = b'\x12\x34\xab\xcd\x00\x00'  # padded row, big-endian
    np.testing.assert_array_equal(image_to_array(big), [[0x1234, 0xABCD]])


def test_rosbags_image_messages_fit() -> None:
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS2_JAZZY).types
    header = types['std_msgs/msg/Header'](stamp=types['builtin_interfaces/msg/Time'](sec=0, nanosec=0),
                                          frame_id='left')
    array = random_image('32FC1', seed=5)
    fields = array_to_image_fields(array, '32FC1')
    msg = types['sensor_msgs/msg/Image'](header=header, height=fields.height, width=fields.width,
                                         encoding=fields.encoding, is_bigendian=fields.is_bigendian,
                                         step=fields.step, data=np.frombuffer(fields.data, np.uint8))
    np.testing.assert_array_equal(image_to_array(msg), array)  # type: ignore[arg-type]
