"""Tests of the real-rig augmentations: resampling conventions, edges, labels that move with the images."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from stereonet_ros.data.augment import (
    AugmentError,
    Taps,
    adjust_levels,
    clip_box,
    erase,
    misrectify,
    pixel_grid,
    unscale,
)

F64 = npt.NDArray[np.float64]

# A smooth texture known everywhere: f(x, y) = 128 + AX sin(2 pi x / PX + .3) + AY sin(2 pi y / PY + 1.1).
AX, PX, AY, PY = 50.0, 20.0, 30.0, 15.0
# Linear interpolation between samples one unit apart errs by at most max|f''| / 8 per axis.
BILINEAR_ERROR = (AX * (2 * math.pi / PX) ** 2 + AY * (2 * math.pi / PY) ** 2) / 8  # 1.27 grey levels


def texture(x: F64, y: F64) -> npt.NDArray[np.float32]:
    """The texture at points x, y (broadcastable) -> (h, w, 1) float32."""
    f = 128 + AX * np.sin(2 * math.pi * x / PX + 0.3) + AY * np.sin(2 * math.pi * y / PY + 1.1)
    return np.asarray(np.broadcast_to(f, np.broadcast(x, y).shape), np.float32)[:, :, None]


def sample_rows(image: npt.NDArray[np.float32], x: F64) -> F64:
    """Linear interpolation of ``image`` (H, W, C) along each row at columns x (H, W), clamped."""
    h, w = x.shape
    x = np.clip(x, 0, w - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
    f = (x - x0)[:, :, None]
    rows = np.arange(h)[:, None]
    return np.asarray(image[rows, x0] * (1 - f) + image[rows, x0 + 1] * f, np.float64)


# ---------------------------------------------------------------------------------------------- sampling


def test_taps_at_pixel_centres_copy_the_source_exactly() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (5, 7, 3)).astype(np.float32)
    disp = rng.uniform(0, 40, (5, 7)).astype(np.float32)
    usable = rng.random((5, 7)) < 0.7
    taps = Taps.at((5, 7), *pixel_grid((5, 7)))
    np.testing.assert_array_equal(taps.image(image), image)
    values, ok = taps.disparity(disp, usable)
    np.testing.assert_array_equal(values, disp)
    np.testing.assert_array_equal(ok, usable)
    np.testing.assert_array_equal(taps.nearest(np.arange(35).reshape(5, 7)), np.arange(35).reshape(5, 7))
    assert taps.inside.all()


def test_bilinear_reads_of_a_linear_image_and_plane_are_exact() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 11, 200)[None, :], rng.uniform(0, 7, 200)[None, :]
    gx, gy = pixel_grid((8, 12))
    image = np.asarray((3 * gx + 5 * gy + 7)[:, :, None], np.float32)
    plane = 20.0 + 0.3 * gx - 0.2 * gy  # a slanted surface: spread <= 0.5 px per block, interpolated
    taps = Taps.at((8, 12), x, y)
    np.testing.assert_allclose(taps.image(image)[0, :, 0], (3 * x + 5 * y + 7)[0], atol=1e-4)
    values, ok = taps.disparity(plane, np.ones((8, 12), bool))
    np.testing.assert_allclose(values[0], (20.0 + 0.3 * x - 0.2 * y)[0], rtol=0, atol=1e-12)
    assert ok.all()


@pytest.mark.parametrize('size', [(31, 45), (16, 24), (9, 50)])
def test_resampling_by_a_factor_matches_cv2_resize(size: tuple[int, int]) -> None:
    # unscale() uses cv2.resize's pixel-edge convention and Taps its border clamp, so a resize through
    # them is cv2's INTER_LINEAR (float32 coefficients there: agreement to ~1e-5 of the range).
    rng = np.random.default_rng(2)
    source = rng.uniform(0, 255, (20, 30, 1)).astype(np.float32)
    h, w = size
    x, y = unscale(*pixel_grid((h, w)), factors=(w / 30, h / 20))
    ours = Taps.at((20, 30), x, y).image(source)[:, :, 0]
    theirs = cv2.resize(source, (w, h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=0.01)


def test_points_off_the_image_take_border_values_and_are_flagged_outside() -> None:
    image = np.asarray([[[0.0], [10.0], [20.0]], [[100.0], [110.0], [120.0]]], np.float32)  # (2, 3, 1)
    x = np.array([[-0.5, -0.51, 2.5, 2.51, 1.0, 1.0, 1.0, 1.0, -3.0]])
    y = np.array([[0.0, 0.0, 0.0, 0.0, -0.5, -0.51, 1.5, 1.51, 9.0]])
    taps = Taps.at((2, 3), x, y)
    # On the footprint (within half a pixel of the outer centres) counts as inside; beyond does not.
    assert taps.inside[0].tolist() == [True, False, True, False, True, False, True, False, False]
    # Values clamp to the outer pixel centres: border copies, as cv2.BORDER_REPLICATE.
    assert taps.image(image)[0, :, 0].tolist() == [0.0, 0.0, 20.0, 20.0, 10.0, 10.0, 110.0, 110.0, 100.0]
    values, ok = taps.disparity(image[:, :, 0], np.ones((2, 3), bool), jump=1000.0)
    assert values[0].tolist() == [0.0, 0.0, 20.0, 20.0, 10.0, 10.0, 110.0, 110.0, 100.0]
    assert ok.all()  # inside is the caller's business: disparity() does not fold it in


def test_labels_are_interpolated_within_a_surface_and_taken_nearest_across_a_depth_edge() -> None:
    disp = np.array([[10.0, 10.5, 30.0, 30.0]] * 2, np.float32)
    usable = np.array([[True, True, True, False]] * 2)
    x = np.array([[0.5, 1.25, 1.5, 2.5, 1.75]])
    values, ok = Taps.at((2, 4), x, np.zeros_like(x)).disparity(disp, usable)
    # 0.5: one surface (spread 0.5 <= 1 px) -> 10.25; 1.25 and 1.5: an edge (spread 19.5) -> the nearest
    # label, 10.5 then 30 (halves round up); 2.5: interpolated 30 but read from an unusable pixel.
    assert values[0].tolist() == [10.25, 10.5, 30.0, 30.0, 30.0]
    assert ok[0].tolist() == [True, True, True, False, True]
    scaled, _ = Taps.at((2, 4), x, np.zeros_like(x)).disparity(disp, usable, scale=1.5)
    np.testing.assert_allclose(scaled, values * 1.5, rtol=1e-7)
    assert values.dtype == np.float32


def test_interpolated_labels_never_mix_the_two_sides_of_an_edge() -> None:
    # A fronto-parallel object (d = 40) in front of a background (d = 8): every resampled label is one of
    # the two, never an in-between value no surface has.
    gx, _ = pixel_grid((10, 40))
    disp = np.where((gx >= 13) & (gx < 27), 40.0, 8.0) * np.ones((10, 1))
    x, y = unscale(*pixel_grid((10, 53)), factors=(53 / 40, 1.0))
    values, _ = Taps.at((10, 40), x, y).disparity(disp, np.ones((10, 40), bool), scale=53 / 40)
    assert set(np.unique(values).round(9)) == {round(8 * 53 / 40, 9), round(40 * 53 / 40, 9)}


# ---------------------------------------------------------------------------------------------- scale


@pytest.mark.parametrize('factors', [(1.3, 0.85), (0.8, 1.2), (1.25, 1.25)])
def test_resampling_a_shifted_texture_multiplies_its_disparity_by_fx_only(factors: tuple[float, float]) -> None:
    # Right view = left view shifted by d = 7.25 px (left x matches right x - d). After resampling both by
    # (fx, fy) the label is d * fx exactly, whatever fy, and the right view read at x - d * fx gives the
    # left view back up to interpolation error: the resample of each view and the read along the row err
    # by at most BILINEAR_ERROR each (f'' bound; the row read's samples are fx apart: f''/fx^2 there).
    d, (fx, fy) = 7.25, factors
    gx, gy = pixel_grid((40, 120))
    left, right = texture(gx, gy), texture(gx + d, gy)
    h, w = round(40 * fy), round(120 * fx)
    taps = Taps.at((40, 120), *unscale(*pixel_grid((h, w)), factors=(fx, fy)))
    labels, ok = taps.disparity(np.full((40, 120), d), np.ones((40, 120), bool), scale=fx)
    np.testing.assert_allclose(labels, d * fx, rtol=1e-12)
    assert ok.all()
    left2, right2 = taps.image(left), taps.image(right)
    cols = np.arange(w)[None, :] - labels
    seen = (cols >= 0) & (np.arange(w)[None, :] <= w - 2)  # the match lies inside, away from clamped borders
    residual = np.abs(sample_rows(right2, cols) - left2)[seen]
    tolerance = 2 * BILINEAR_ERROR + BILINEAR_ERROR / min(fx, 1.0) ** 2
    assert residual.max() < tolerance
    # The test can fail: the unscaled disparity (off by (fx - 1) d px, or the y factor used instead)
    # leaves residuals far above the bound.
    for wrong in (d, d * fy) if fx != fy else (d,):
        if wrong == d * fx:
            continue
        bad = np.abs(sample_rows(right2, np.arange(w)[None, :] - np.full((h, w), wrong)) - left2)[seen]
        assert bad.max() > 3 * tolerance


# ---------------------------------------------------------------------------------------------- misrectify


def test_misrectify_moves_content_down_by_the_shift_and_turns_it_clockwise() -> None:
    gx, gy = pixel_grid((5, 9))
    qx, qy = misrectify(gx, gy, (5, 9), shift=0.75, rotation=0.0)
    np.testing.assert_array_equal(qx, np.broadcast_to(gx, (5, 9)))
    np.testing.assert_array_equal(qy, np.broadcast_to(gy - 0.75, (5, 9)))  # pixel y shows content from y - .75
    # 90 degrees: the pixel 2 below the centre (4, 2) shows what was 2 right of it: +x turned to +y.
    qx, qy = misrectify(np.array([4.0]), np.array([4.0]), (5, 9), shift=0.0, rotation=90.0)
    np.testing.assert_allclose([qx[0], qy[0]], [6.0, 2.0], atol=1e-12)


def test_a_misrectified_right_view_carries_its_labels_with_it() -> None:
    # Image and labels linear in x and y: bilinear reads are exact, so the warped image and the warped
    # right disparity must both equal the ideal ones at the point each pixel reads, to float precision.
    h, w, shift, rotation = 24, 40, 0.6, 0.1
    gx, gy = pixel_grid((h, w))
    image = np.asarray((2 * gx + 3 * gy + 10)[:, :, None], np.float32)
    disp_right = 20.0 + 0.1 * gx + 0.2 * gy * np.ones((1, w))
    qx, qy = misrectify(gx, gy, (h, w), shift, rotation)
    taps = Taps.at((h, w), qx, qy)
    warped = taps.image(image)[:, :, 0]
    labels, ok = taps.disparity(disp_right, np.ones((h, w), bool))
    clamped_x, clamped_y = np.clip(qx, 0, w - 1), np.clip(qy, 0, h - 1)
    # (the top row's reads are clamped to row 0: a border copy, not the content above the image)
    np.testing.assert_allclose(warped, 2 * clamped_x + 3 * clamped_y + 10, rtol=0, atol=1e-3)
    np.testing.assert_allclose(labels, 20.0 + 0.1 * clamped_x + 0.2 * clamped_y, rtol=0, atol=1e-9)
    # Edges: the content moved down 0.6 px, so the top row reads 0.6 px above the image (off the
    # footprint: a border copy, flagged) and nothing else does (the turn moves rows by < 0.04 px here).
    assert (~taps.inside).sum(axis=1).tolist() == [w] + [0] * (h - 1)
    assert ok.all()


# ---------------------------------------------------------------------------------------------- eraser, levels


def test_erase_pastes_the_mean_colour_or_a_patch_from_elsewhere_and_masks_it() -> None:
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (10, 16, 3)).astype(np.float32)
    before = image.copy()
    out, mask = erase(image, [(2, 1, 4, 3), (13, 7, 6, 6)], [(9, 5), None])
    np.testing.assert_array_equal(image, before)  # input untouched
    np.testing.assert_array_equal(out[1:4, 2:6], image[5:8, 9:13])  # patch copied from (9, 5)
    np.testing.assert_allclose(out[7:10, 13:16], np.broadcast_to(image.mean(axis=(0, 1)), (3, 3, 3)), rtol=1e-6)
    expected = np.zeros((10, 16), bool)
    expected[1:4, 2:6] = True
    expected[7:10, 13:16] = True  # the second box clipped to the image
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert clip_box((13, 7, 6, 6), (10, 16)) == (13, 7, 3, 3)
    assert clip_box((-4, -2, 3, 3), (10, 16)) == (0, 0, 0, 1)


def test_adjust_levels_scales_about_the_mean_and_adds_the_offset() -> None:
    image = np.array([[[10.0], [20.0]], [[30.0], [60.0]]], np.float32)  # mean 30
    out = adjust_levels(image, contrast=0.5, brightness=-4.0)
    np.testing.assert_allclose(out[:, :, 0], [[16.0, 21.0], [26.0, 41.0]])
    np.testing.assert_array_equal(adjust_levels(image, 1.0, 0.0), image)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(('call', 'match'), [
    (lambda: unscale(*pixel_grid((2, 2)), factors=(0.0, 1.0)), r'factors=\(0\.0, 1\.0\): must be positive'),
    (lambda: Taps.at((1, 5), *pixel_grid((1, 5))), r'shape=\(1, 5\): bilinear taps need .* 2x2'),
    (lambda: Taps.at((4, 4), np.array([np.nan]), np.array([0.0])), 'points must be finite'),
    (lambda: Taps.at((4, 4), *pixel_grid((2, 2))).image(np.zeros((4, 5, 1), np.float32)),
     r'image has shape \(4, 5, 1\), the taps read a source of \(4, 4\)'),
    (lambda: Taps.at((4, 4), *pixel_grid((2, 2))).disparity(np.zeros((4, 4)), np.ones((4, 4), bool), scale=-1.0),
     r'scale=-1\.0'),
    (lambda: erase(np.zeros((4, 4, 1), np.float32), [(0, 0, 2, 2)], []), '1 boxes but 0 sources'),
    (lambda: erase(np.zeros((4, 4, 1), np.float32), [(0, 0, 2, 2)], [(3, 0)]),
     r'source=\(3, 0\): a 2x2 patch there leaves the 4x4 image'),
])
def test_bad_arguments_raise_augment_error_naming_them(call: object, match: str) -> None:
    with pytest.raises(AugmentError, match=match):
        call()  # type: ignore[operator]
