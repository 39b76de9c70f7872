"""Tests for stereonet_ros.image_io: image modes, 16-bit PNGs, the turbo colour map, disparity files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stereonet_ros.image_io import (
    TURBO_LUT,
    DisparityFileError,
    ImageReadError,
    ImageWriteError,
    colorize_disparity,
    read_disparity,
    read_image,
    turbo_colormap,
    write_disparity,
    write_png,
)
from stereonet_ros.pfm import write_pfm

RNG = np.random.default_rng(1234)


def random_image(shape: tuple[int, ...], dtype: type[np.unsignedinteger]) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


# --- reading and writing images ---------------------------------------------------------------------

@pytest.mark.parametrize('shape, dtype', [((5, 7), np.uint8), ((5, 7, 3), np.uint8),
                                          ((5, 7), np.uint16), ((5, 7, 3), np.uint16)])
def test_write_png_then_read_image_returns_the_same_values_and_dtype(tmp_path: Path, shape: tuple[int, ...],
                                                                     dtype: type[np.unsignedinteger]) -> None:
    image = random_image(shape, dtype)
    path = tmp_path / 'image.png'
    write_png(path, image)
    back = read_image(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, image)


def test_sixteen_bit_gray_png_keeps_values_above_255(tmp_path: Path) -> None:
    image = np.array([[0, 1, 256], [4095, 65534, 65535]], dtype=np.uint16)
    write_png(tmp_path / 'depth.png', image)
    back = read_image(tmp_path / 'depth.png')
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, image)


def test_sixteen_bit_rgb_png_is_rgb_not_bgr(tmp_path: Path) -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint16)
    image[..., 0] = 60000  # red only
    write_png(tmp_path / 'red.png', image)
    back = read_image(tmp_path / 'red.png')
    np.testing.assert_array_equal(back[..., 0], 60000)
    np.testing.assert_array_equal(back[..., 1:], 0)


def test_sixteen_bit_rgba_png_drops_alpha_and_keeps_sixteen_bits(tmp_path: Path) -> None:
    cv2 = pytest.importorskip('cv2')
    rgba = random_image((3, 4, 4), np.uint16)
    cv2.imwrite(str(tmp_path / 'rgba16.png'), rgba[..., [2, 1, 0, 3]])  # OpenCV takes BGRA
    back = read_image(tmp_path / 'rgba16.png')
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, rgba[..., :3])


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgba = random_image((4, 5, 4), np.uint8)
    Image.fromarray(rgba, mode='RGBA').save(tmp_path / 'rgba.png')
    back = read_image(tmp_path / 'rgba.png')
    assert back.shape == (4, 5, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, rgba[..., :3])


def test_gray_alpha_png_becomes_gray(tmp_path: Path) -> None:
    la = random_image((4, 5, 2), np.uint8)
    Image.fromarray(la, mode='LA').save(tmp_path / 'la.png')
    back = read_image(tmp_path / 'la.png')
    assert back.shape == (4, 5)
    np.testing.assert_array_equal(back, la[..., 0])


def test_palette_png_becomes_its_palette_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode='L').convert('P')
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    image.save(tmp_path / 'palette.png')
    back = read_image(tmp_path / 'palette.png')
    expected = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(back, expected)


def test_palette_png_with_transparency_becomes_rgb(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode='L').convert('P')
    image.putpalette([10, 20, 30, 40, 50, 60] + [0] * (254 * 3))
    image.info['transparency'] = 0
    image.save(tmp_path / 'transparent.png', transparency=0)
    back = read_image(tmp_path / 'transparent.png')
    np.testing.assert_array_equal(back, [[[10, 20, 30], [40, 50, 60]]])


def test_one_bit_image_becomes_0_and_255(tmp_path: Path) -> None:
    Image.fromarray(np.array([[True, False]])).save(tmp_path / 'bits.png')
    back = read_image(tmp_path / 'bits.png')
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, [[255, 0]])


def test_cmyk_tiff_becomes_pillows_rgb(tmp_path: Path) -> None:
    cmyk = Image.fromarray(random_image((3, 4, 4), np.uint8), mode='CMYK')
    cmyk.save(tmp_path / 'cmyk.tif')
    back = read_image(tmp_path / 'cmyk.tif')
    np.testing.assert_array_equal(back, np.asarray(cmyk.convert('RGB')))


def test_32_bit_integer_image_in_range_becomes_uint16(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [65535, 7]], dtype=np.int32)
    Image.fromarray(values, mode='I').save(tmp_path / 'int.tif')
    back = read_image(tmp_path / 'int.tif')
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, values)


def test_32_bit_integer_image_out_of_range_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[70000]], dtype=np.int32), mode='I').save(tmp_path / 'big.tif')
    with pytest.raises(ImageReadError, match=r'big\.tif.*outside 0\.\.65535'):
        read_image(tmp_path / 'big.tif')


def test_float_image_is_refused_with_a_pointer_to_read_disparity(tmp_path: Path) -> None:
    Image.fromarray(np.ones((2, 2), dtype=np.float32), mode='F').save(tmp_path / 'float.tif')
    with pytest.raises(ImageReadError, match=r"float\.tif.*unsupported image mode 'F'.*read_disparity"):
        read_image(tmp_path / 'float.tif')


def test_missing_image_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r'cannot read image .*nothing\.png: no such file'):
        read_image(tmp_path / 'nothing.png')


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match='is a directory'):
        read_image(tmp_path)


def test_garbage_file_is_not_a_recognised_image(tmp_path: Path) -> None:
    (tmp_path / 'garbage.png').write_bytes(b'this is not an image at all')
    with pytest.raises(ImageReadError, match=r'garbage\.png: not a recognised image format'):
        read_image(tmp_path / 'garbage.png')


def test_truncated_png_is_reported_as_unreadable(tmp_path: Path) -> None:
    write_png(tmp_path / 'full.png', random_image((64, 64, 3), np.uint8))
    data = (tmp_path / 'full.png').read_bytes()
    (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match=r'cannot read image .*cut\.png'):
        read_image(tmp_path / 'cut.png')


def test_read_image_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        read_image(tmp_path / 'missing.png')


@pytest.mark.parametrize('array, message', [
    (np.zeros((2, 2), dtype=np.float32), 'uint8 or uint16, got float32'),
    (np.zeros((2, 2, 4), dtype=np.uint8), r'\(H, W\) or \(H, W, 3\), got shape \(2, 2, 4\)'),
    (np.zeros((2,), dtype=np.uint8), r'got shape \(2,\)'),
    (np.zeros((0, 3), dtype=np.uint8), 'empty image'),
])
def test_write_png_refuses_other_dtypes_and_shapes(tmp_path: Path, array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageWriteError, match=message):
        write_png(tmp_path / 'bad.png', array)


def test_write_png_into_a_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageWriteError, match=r'cannot write .*no_folder'):
        write_png(tmp_path / 'no_folder' / 'x.png', np.zeros((2, 2), dtype=np.uint8))


# --- colour map -------------------------------------------------------------------------------------

def test_turbo_lut_is_256_rgb_entries_none_of_them_black() -> None:
    assert TURBO_LUT.shape == (256, 3) and TURBO_LUT.dtype == np.uint8
    assert not np.any(TURBO_LUT.sum(axis=1) == 0)
    # Turbo runs from dark blue through green to dark red (the polynomial's first entry is near-black).
    assert TURBO_LUT[0].max() < 60
    assert TURBO_LUT[25, 2] > TURBO_LUT[25, 0]
    assert TURBO_LUT[128, 1] > 200
    assert TURBO_LUT[255, 0] > TURBO_LUT[255, 2]
    np.testing.assert_allclose(turbo_colormap(0.0), [0.13572138, 0.09140261, 0.10667330])


def test_colorize_maps_vmin_to_the_first_and_vmax_to_the_last_colour() -> None:
    disparity = np.array([[10.0, 20.0, 30.0]], dtype=np.float32)
    colours = colorize_disparity(disparity, vmin=10.0, vmax=30.0)
    assert colours.shape == (1, 3, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0, 0], TURBO_LUT[0])
    np.testing.assert_array_equal(colours[0, 1], TURBO_LUT[128])  # 0.5 * 255 = 127.5 rounds to 128
    np.testing.assert_array_equal(colours[0, 2], TURBO_LUT[255])


def test_colorize_clips_values_outside_the_range() -> None:
    colours = colorize_disparity(np.array([[0.0, 100.0]], dtype=np.float32), vmin=10.0, vmax=30.0)
    np.testing.assert_array_equal(colours[0, 0], TURBO_LUT[0])
    np.testing.assert_array_equal(colours[0, 1], TURBO_LUT[255])


def test_colorize_makes_nan_inf_and_negative_pixels_black() -> None:
    disparity = np.array([[np.nan, np.inf, -np.inf, -1.0, 5.0]], dtype=np.float32)
    colours = colorize_disparity(disparity, vmin=0.0, vmax=10.0)
    np.testing.assert_array_equal(colours[0, :4], 0)
    assert colours[0, 4].sum() > 0


def test_colorize_defaults_to_robust_percentiles_so_an_outlier_does_not_flatten_the_rest() -> None:
    disparity = np.concatenate([np.linspace(0.0, 10.0, 999), [1e6]]).astype(np.float32).reshape(20, 50)
    colours = colorize_disparity(disparity)
    flat = colours.reshape(-1, 3)
    np.testing.assert_array_equal(flat[0], TURBO_LUT[0])
    np.testing.assert_array_equal(flat[-1], TURBO_LUT[255])
    np.testing.assert_array_equal(flat[500], TURBO_LUT[128])  # the middle value stays mid-scale


def test_colorize_constant_and_all_invalid_maps() -> None:
    np.testing.assert_array_equal(colorize_disparity(np.full((2, 2), 7.0))[1, 1], TURBO_LUT[0])
    np.testing.assert_array_equal(colorize_disparity(np.full((2, 2), np.nan)), 0)


def test_colorize_refuses_bad_bounds_and_shapes() -> None:
    with pytest.raises(ValueError, match='vmin <= vmax'):
        colorize_disparity(np.ones((2, 2)), vmin=5.0, vmax=1.0)
    with pytest.raises(ValueError, match='finite'):
        colorize_disparity(np.ones((2, 2)), vmin=float('nan'))
    with pytest.raises(ValueError, match=r'\(H, W\) array, got shape \(2, 2, 1\)'):
        colorize_disparity(np.ones((2, 2, 1)))


# --- disparity files --------------------------------------------------------------------------------

@pytest.mark.parametrize('suffix', ['.npy', '.pfm', '.PFM'])
def test_disparity_round_trip_keeps_values_nan_and_inf(tmp_path: Path, suffix: str) -> None:
    disparity = RNG.uniform(0.0, 200.0, size=(6, 9)).astype(np.float32)
    disparity[0, 0] = np.nan
    disparity[1, 1] = np.inf
    path = tmp_path / f'disp{suffix}'
    write_disparity(path, disparity)
    back = read_disparity(path)
    assert back.dtype == np.float32 and back.shape == (6, 9)
    np.testing.assert_array_equal(back, disparity)


def test_read_disparity_reads_a_pfm_written_elsewhere(tmp_path: Path) -> None:
    write_pfm(tmp_path / 'other.pfm', np.array([[1.5, 2.5]], dtype=np.float32))
    np.testing.assert_array_equal(read_disparity(tmp_path / 'other.pfm'), [[1.5, 2.5]])


def test_unsupported_disparity_extension_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(DisparityFileError, match=r"disp\.png: unsupported disparity file extension '\.png'"):
        read_disparity(tmp_path / 'disp.png')
    with pytest.raises(DisparityFileError, match='unsupported disparity file extension'):
        write_disparity(tmp_path / 'disp.exr', np.zeros((2, 2)))


def test_disparity_must_be_two_dimensional(tmp_path: Path) -> None:
    with pytest.raises(DisparityFileError, match=r'expected \(H, W\), got shape \(2, 2, 3\)'):
        write_disparity(tmp_path / 'disp.npy', np.zeros((2, 2, 3)))
    np.save(tmp_path / 'volume.npy', np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(DisparityFileError, match=r'volume\.npy.*got shape \(2, 2, 2\)'):
        read_disparity(tmp_path / 'volume.npy')
    write_pfm(tmp_path / 'colour.pfm', np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(DisparityFileError, match=r'colour\.pfm.*got shape \(2, 2, 3\)'):
        read_disparity(tmp_path / 'colour.pfm')


def test_missing_or_corrupt_disparity_files_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(DisparityFileError, match=r'cannot read disparity .*absent\.npy'):
        read_disparity(tmp_path / 'absent.npy')
    (tmp_path / 'broken.pfm').write_bytes(b'P6\n1 1\n255\n\0\0\0')
    with pytest.raises(DisparityFileError, match=r'broken\.pfm.*not a PFM'):
        read_disparity(tmp_path / 'broken.pfm')


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / 'objects.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DisparityFileError, match=r'objects\.npy'):
        read_disparity(tmp_path / 'objects.npy')
