"""Tests of the synthetic stereo generator: exact geometry, real-rig augmentations whose labels move with
the images, determinism, config errors, dataset contract."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from stereonet_ros.data import synthetic
from stereonet_ros.data.augment import Taps, adjust_levels, erase, misrectify, pixel_grid
from stereonet_ros.data.synthetic import (
    RIG_AUGMENTATIONS,
    RigAugmentation,
    StereoSample,
    SyntheticConfig,
    SyntheticConfigError,
    SyntheticStereoDataset,
    generate_sample,
    save_sample_pngs,
    worker_init_fn,
)

# Small frames keep the suite fast; the disparity range still spans a third of the width.
DEFAULTS = SyntheticConfig(height=96, width=192, disparity_range=(6.0, 64.0), max_disparity=72.0)
# The renderer alone (real-rig augmentations off: the generator as before them), for its exact geometry.
SMALL = DEFAULTS.without_rig_augmentation()
EXACT = dataclasses.replace(SMALL, photometric=False)
# Every real-rig augmentation on, boxes sized for the small frame.
RIGGED = dataclasses.replace(DEFAULTS, scale_probability=1.0, misrectify_probability=1.0, eraser_probability=1.0,
                             contrast_probability=1.0, brightness_probability=1.0, eraser_size_range=(8.0, 40.0))


def _sample_rows(image: npt.NDArray[np.float32], x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Linear interpolation of ``image`` (H, W, C) along rows at fractional columns x (H, W)."""
    h, w = x.shape
    x0 = np.clip(np.floor(x).astype(np.int64), 0, w - 2)
    f = (x - x0)[:, :, None]
    rows = np.arange(h)[:, None]
    return np.asarray(image[rows, x0] * (1 - f) + image[rows, x0 + 1] * f, np.float64)


def _same_layer_both_sides(ids_here: npt.NDArray[np.int16], ids_there: npt.NDArray[np.int16],
                           x: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """True where both pixels that interpolation at x mixes in the other view show this pixel's layer."""
    h, w = x.shape
    x0 = np.clip(np.floor(x).astype(np.int64), 0, w - 2)
    rows = np.arange(h)[:, None]
    out: npt.NDArray[np.bool_] = (ids_there[rows, x0] == ids_here) & (ids_there[rows, x0 + 1] == ids_here)
    return out


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize('channels', [1, 3])
def test_right_image_warped_by_left_disparity_reproduces_left_image(channels: int) -> None:
    # Away from layer edges (where linear interpolation of the right image mixes two layers) the only
    # residual is that interpolation's error on the texture itself. Measured (seed 11, 4 samples):
    # median 0.03 / 0.10, mean 0.16 / 0.67, p95 0.7 / 3.3 grey levels for gray / RGB; its tail is where
    # sharp photo texels fall between pixel centres. Bounds: median < 0.2 % and p95 < 2.4 % of 0..255.
    cfg = dataclasses.replace(EXACT, channels=channels)
    residuals = []
    for index in range(4):
        s = generate_sample(cfg, seed=11, index=index)
        x_right = np.arange(cfg.width)[None, :] - s.disp_left.astype(np.float64)
        usable = ~s.occluded_left & _same_layer_both_sides(s.layer_left, s.layer_right, x_right)
        assert usable.mean() > 0.4
        residual = np.abs(_sample_rows(s.right, x_right) - s.left).max(axis=2)
        residuals.append(residual[usable])
    res = np.concatenate(residuals)
    assert np.median(res) < 0.5
    assert res.mean() < 2.0
    assert np.percentile(res, 95) < 6.0


def test_left_and_right_disparities_agree_at_corresponding_points() -> None:
    # D_R(x - D_L(x)) = D_L(x) for visible left pixels and D_L(x + D_R(x)) = D_R(x) for visible right ones.
    # Within a plane D_R is linear in x, so interpolating it is exact up to float32; bumps add a little.
    for index in range(4):
        s = generate_sample(EXACT, seed=12, index=index)
        cols = np.arange(EXACT.width)[None, :]
        x_right = cols - s.disp_left.astype(np.float64)
        ok = ~s.occluded_left & _same_layer_both_sides(s.layer_left, s.layer_right, x_right)
        err = np.abs(_sample_rows(s.disp_right[:, :, None], x_right)[:, :, 0] - s.disp_left)[ok]
        assert np.percentile(err, 99) < 0.01 and err.max() < 0.1
        x_left = cols + s.disp_right.astype(np.float64)
        ok = ~s.occluded_right & _same_layer_both_sides(s.layer_right, s.layer_left, x_left)
        err = np.abs(_sample_rows(s.disp_left[:, :, None], x_left)[:, :, 0] - s.disp_right)[ok]
        assert np.percentile(err, 99) < 0.01 and err.max() < 0.1


def test_planar_scenes_have_float32_exact_consistency() -> None:
    cfg = dataclasses.replace(EXACT, curved_probability=0.0)
    s = generate_sample(cfg, seed=13, index=0)
    x_right = np.arange(cfg.width)[None, :] - s.disp_left.astype(np.float64)
    ok = ~s.occluded_left & _same_layer_both_sides(s.layer_left, s.layer_right, x_right)
    err = np.abs(_sample_rows(s.disp_right[:, :, None], x_right)[:, :, 0] - s.disp_left)[ok]
    assert err.max() < 1e-3
    assert not any(layer.curved for layer in s.layers)


def test_occlusion_masks_follow_their_definition() -> None:
    fractions = []
    for index in range(6):
        s = generate_sample(EXACT, seed=14, index=index)
        cols = np.arange(EXACT.width)[None, :]
        x_right = cols - s.disp_left
        # Out of the right view -> occluded.
        assert s.occluded_left[x_right < 0].all()
        assert s.occluded_right[cols + s.disp_right > EXACT.width - 1].all()
        # Hidden inside the view -> the right view shows something nearer next to the corresponding point.
        h = EXACT.height
        x0 = np.clip(np.floor(x_right).astype(np.int64), 0, EXACT.width - 2)
        rows = np.arange(h)[:, None]
        nearer = np.maximum(s.disp_right[rows, x0], s.disp_right[rows, x0 + 1]) > s.disp_left
        hidden = s.occluded_left & (x_right >= 0)
        assert nearer[hidden].all()
        # Visible -> nearly always the same layer at the nearest right pixel (not at layer edges).
        visible = ~s.occluded_left
        x_near = np.clip(np.rint(x_right).astype(np.int64), 0, EXACT.width - 1)
        assert (s.layer_right[rows, x_near] == s.layer_left)[visible].mean() > 0.95
        fractions.append(s.occluded_left.mean())
    assert 0.0 < np.mean(fractions) < 0.5
    assert min(fractions) > 0.0


def test_disparities_stay_in_the_drawn_range() -> None:
    for index in range(5):
        s = generate_sample(SMALL, seed=15, index=index)
        lo, hi = SMALL.disparity_range
        assert lo <= s.d_max <= hi and 0.0 <= s.d_min <= SMALL.min_disparity_fraction * s.d_max
        for d in (s.disp_left, s.disp_right):
            assert d.dtype == np.float32 and np.isfinite(d).all()
            assert d.min() >= s.d_min - 1e-3 and d.max() <= s.d_max + 1e-3
        # Every pixel is below max_disparity here, so validity is exactly non-occlusion.
        np.testing.assert_array_equal(s.valid_left, ~s.occluded_left)
        np.testing.assert_array_equal(s.valid_right, ~s.occluded_right)


def test_overshoot_samples_pass_the_model_range_and_are_marked_invalid() -> None:
    cfg = dataclasses.replace(SMALL, overshoot_probability=1.0, disparity_range=(6.0, 40.0), max_disparity=50.0)
    past = 0
    for index in range(4):
        s = generate_sample(cfg, seed=16, index=index)
        assert 50.0 * 1.05 <= s.d_max <= 50.0 * 1.15
        beyond = s.disp_left >= cfg.max_disparity
        assert not s.valid_left[beyond].any()
        past += int(beyond.sum())
    assert past > 0


def test_large_disparities_reach_the_top_of_the_default_range() -> None:
    cfg = SyntheticConfig(height=64, width=512, disparity_range=(170.0, 180.0), n_layers=(10, 12))
    s = generate_sample(cfg, seed=17, index=0)
    assert s.disp_left.max() > 150.0
    assert s.valid_left.any()


# ---------------------------------------------------------------------------------------------- features


def test_forced_textureless_layers_render_nearly_flat() -> None:
    cfg = dataclasses.replace(EXACT, flat_probability=1.0, shading_strength=0.0)
    s = generate_sample(cfg, seed=18, index=0)
    assert all(layer.texture == 'flat' for layer in s.layers)
    gy, gx = np.gradient(s.left[:, :, 0])
    # Inside layers (edges excluded) the image varies by a fraction of a grey level per pixel.
    interior = ndimage.binary_erosion(ndimage.sobel(s.layer_left.astype(np.float32)) == 0, iterations=2)
    grad = np.hypot(gx, gy)[interior]
    assert interior.mean() > 0.3
    assert np.percentile(grad, 95) < 1.0


def test_default_scenes_contain_flat_thin_and_repetitive_layers() -> None:
    seen: set[str] = set()
    for index in range(12):
        s = generate_sample(SMALL, seed=19, index=index)
        for i, layer in enumerate(s.layers):
            if (s.layer_left == i).sum() >= 10:
                seen.update({layer.texture, layer.shape})
    assert {'flat', 'bar', 'stripes', 'checker', 'photo'} <= seen


def test_forced_bars_render_as_thin_structures() -> None:
    cfg = dataclasses.replace(EXACT, shape_weights=(0.0, 0.0, 1.0, 0.0, 0.0))
    thin = 0
    for index in range(3):
        s = generate_sample(cfg, seed=20, index=index)
        for i, layer in enumerate(s.layers):
            region = s.layer_left == i
            if layer.shape != 'bar' or region.sum() < 30:
                continue
            assert layer.shape == 'bar'
            # Bars are at most 8 px wide: a 9x9 square fits nowhere except, rarely, where fence bars cross.
            if ndimage.binary_erosion(region, structure=np.ones((9, 9), bool)).sum() <= 0.05 * region.sum():
                thin += 1
    assert thin >= 5


def test_photometric_changes_make_the_views_differ_beyond_geometry() -> None:
    on = generate_sample(SMALL, seed=21, index=0)
    off = generate_sample(dataclasses.replace(SMALL, photometric=False), seed=21, index=0)
    np.testing.assert_array_equal(on.disp_left, off.disp_left)  # same scene, same ground truth
    assert not np.array_equal(on.left, off.left)
    np.testing.assert_array_equal(on.left, np.round(on.left))  # 8-bit quantised, as a camera
    assert on.left.min() >= 0 and on.left.max() <= 255


# ---------------------------------------------------------------------------------------------- real rigs


def _rig(cfg: SyntheticConfig, **changes: Any) -> SyntheticConfig:
    """``cfg`` (rig augmentations off) with the given rig fields changed."""
    return dataclasses.replace(cfg, **changes)


def _all_four(taps: Taps, test: Any) -> npt.NDArray[np.bool_]:
    """True where ``test(flat_index)`` holds for all four source pixels of each 2D bilinear read."""
    i, w = taps.index, taps.shape[1]
    out: npt.NDArray[np.bool_] = test(i) & test(i + 1) & test(i + w) & test(i + w + 1)
    return out


def _same_layer_2d(ids_here: npt.NDArray[np.int16], ids_there: npt.NDArray[np.int16],
                   taps: Taps) -> npt.NDArray[np.bool_]:
    """True where all four pixels a 2D bilinear read (``taps``) mixes in the other view show this layer."""
    flat = ids_there.reshape(-1)
    return _all_four(taps, lambda i: flat[i] == ids_here)


def _photo_residual(s: StereoSample, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
                    ) -> tuple[npt.NDArray[np.float64], float]:
    """|right read at (x, y) - left| (max over channels) on usable pixels: visible, same layer all round,
    read inside the right view; and the fraction of pixels that are usable."""
    taps = Taps.at(s.right.shape[:2], x, y)
    usable = ~s.occluded_left & _same_layer_2d(s.layer_left, s.layer_right, taps) & taps.inside
    residual = np.abs(taps.image(s.right).astype(np.float64) - s.left).max(axis=2)
    return residual[usable], float(usable.mean())


def test_without_rig_augmentation_switches_off_exactly_the_rig_fields() -> None:
    before, after = dataclasses.asdict(DEFAULTS), dataclasses.asdict(SMALL)
    assert {key for key in before if before[key] != after[key]} == set(RIG_AUGMENTATIONS)
    assert all(after[key] == 0.0 for key in RIG_AUGMENTATIONS)
    s = generate_sample(SMALL, seed=30, index=0)
    assert s.rig == RigAugmentation()
    assert not s.erased_right.any()
    np.testing.assert_array_equal(s.valid_right, ~s.occluded_right & (s.disp_right < SMALL.max_disparity))


@pytest.mark.parametrize('rig', ['misrectify_probability', 'eraser_probability'])
def test_a_right_view_augmentation_leaves_the_scene_the_left_view_and_its_camera_alone(rig: str) -> None:
    # Rig augmentations draw from their own streams: with camera effects on, the left view (image, labels,
    # masks) is bit for bit the one rendered without the augmentation, and so are the right labels'
    # values wherever the right view is not resampled.
    on_cfg = dataclasses.replace(SMALL, **{rig: 1.0})  # type: ignore[arg-type]
    for index in range(2):
        on, off = generate_sample(on_cfg, seed=31, index=index), generate_sample(SMALL, seed=31, index=index)
        assert on.rig != RigAugmentation()
        for field in ('left', 'disp_left', 'occluded_left', 'valid_left', 'layer_left'):
            np.testing.assert_array_equal(getattr(on, field), getattr(off, field), err_msg=field)
        assert (on.d_min, on.d_max, on.layers) == (off.d_min, off.d_max, off.layers)
        assert not np.array_equal(on.right, off.right)


def test_misrectified_right_view_and_its_labels_move_together() -> None:
    cfg = _rig(EXACT, misrectify_probability=1.0)
    h, w = cfg.height, cfg.width
    gx, gy = pixel_grid((h, w))
    residuals, naive, checked = [], [], 0
    for index in range(8):
        on, off = generate_sample(cfg, seed=32, index=index), generate_sample(EXACT, seed=32, index=index)
        shift, rotation = on.rig.shift, on.rig.rotation
        assert abs(shift) <= 1.0 and abs(rotation) <= 0.1 and on.rig.scale == (1.0, 1.0)
        np.testing.assert_array_equal(on.disp_left, off.disp_left)  # the left labels stay: the ideal geometry
        # 1. The right image and the right labels are the ideal ones read at the same points (where the
        # read lies inside the ideal view and mixes no clipped pixels: clipping comes after resampling).
        qx, qy = misrectify(gx, gy, (h, w), shift, rotation)
        taps = Taps.at((h, w), qx, qy)
        clipped = ((off.right <= 0) | (off.right >= 255)).any(axis=2).reshape(-1)
        unclipped = _all_four(taps, lambda i, clipped=clipped: ~clipped[i])
        interior = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1) & unclipped
        assert interior.mean() > 0.5
        np.testing.assert_allclose(on.right[interior], taps.image(off.right)[interior], rtol=0, atol=1e-3)
        labels, usable = taps.disparity(off.disp_right, ~off.occluded_right)
        np.testing.assert_allclose(on.disp_right[interior], labels[interior], rtol=0, atol=1e-4)
        # Out-of-frame is decided in each output frame: compare away from the right edge's reach (a read
        # mixes the next column, whose match may just leave the ideal frame).
        away = interior & (np.arange(w)[None, :] + on.disp_right < w - 4)
        np.testing.assert_array_equal(on.occluded_right[away], ~usable[away])
        # The rendered window reaches past the frame, so no pixel is a border copy.
        assert not on.erased_right.any()
        # 2. The left labels still find the left image in the misrectified right view once the known warp is
        # undone: the ideal right point (x - D_L, y) shows at c + R (q - c) + (0, shift).
        if abs(shift) < 0.5:
            continue
        checked += 1
        theta = math.radians(rotation)
        cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
        dx, dy = gx - on.disp_left.astype(np.float64) - cx, gy - cy
        px = cx + math.cos(theta) * dx - math.sin(theta) * dy
        py = cy + math.sin(theta) * dx + math.cos(theta) * dy + shift
        residuals.append(_photo_residual(on, px, py)[0])
        naive.append(_photo_residual(on, gx - on.disp_left.astype(np.float64), np.broadcast_to(gy, (h, w)))[0])
    assert checked >= 3
    res, ignored = np.concatenate(residuals), np.concatenate(naive)
    # Measured (seed 32, the 4 of 8 samples with |shift| >= 0.5): median 0.011, mean 0.89, p95 3.4 grey
    # levels (two bilinear reads of sharp texels); reading at (x - D_L, y), as if the rows were aligned:
    # median 0.24, mean 1.25, p95 5.9.
    assert np.median(res) < 0.5 and res.mean() < 2.0 and np.percentile(res, 95) < 6.0
    assert np.median(ignored) > 5 * np.median(res) and np.percentile(ignored, 95) > 1.3 * np.percentile(res, 95)


@pytest.mark.parametrize('scale_range', [(1.2, 1.25), (0.8, 0.84)])
def test_scaled_views_keep_labels_that_match_the_images(scale_range: tuple[float, float]) -> None:
    # Both views and both labels resampled by (fx, fy), fx != fy: the right view read at x - D_L still
    # gives the left view back, and the two labels still agree at corresponding points.
    cfg = _rig(EXACT, scale_probability=1.0, scale_range=scale_range, stretch_range=(0.9, 1.11))
    w = cfg.width
    gx, gy = pixel_grid((cfg.height, w))
    residuals, unscaled, consistency = [], [], []
    for index in range(4):
        s = generate_sample(cfg, seed=33, index=index)
        fx, fy = s.rig.scale
        assert scale_range[0] <= math.sqrt(fx * fy) <= scale_range[1] and fx != fy
        for d in (s.disp_left, s.disp_right):
            assert d.min() >= s.d_min - 1e-3 and d.max() <= s.d_max + 1e-3  # the range stays in output px
        np.testing.assert_array_equal(s.valid_left, ~s.occluded_left & (s.disp_left < cfg.max_disparity))
        x_right = gx - s.disp_left.astype(np.float64)
        y = np.broadcast_to(gy, x_right.shape)
        res, usable = _photo_residual(s, x_right, y)
        assert usable > 0.4
        residuals.append(res)
        # Labels that ignored the x factor would point elsewhere.
        unscaled.append(_photo_residual(s, gx - s.disp_left.astype(np.float64) / fx, y)[0])
        ok = ~s.occluded_left & _same_layer_both_sides(s.layer_left, s.layer_right, x_right)
        consistency.append(np.abs(_sample_rows(s.disp_right[:, :, None], x_right)[:, :, 0] - s.disp_left)[ok])
    res, bad, err = np.concatenate(residuals), np.concatenate(unscaled), np.concatenate(consistency)
    # Measured (seed 33, zoom in / out): median 0.07 / 0.11, mean 0.82 / 0.78, p95 2.8 / 2.7 grey levels;
    # the same seed rendered straight (rig off): median 0.06, mean 0.34, p95 1.7, so resampling adds one
    # interpolation of sharp texels. Labels not scaled by fx: mean 4.8 / 5.8, p95 18 / 21.
    assert np.median(res) < 0.5 and res.mean() < 2.0 and np.percentile(res, 95) < 6.0
    assert bad.mean() > 3 * res.mean()
    # Labels read at resampled points: exact within a plane, off at bumps and where a label came nearest
    # across an edge. Measured p99 0.057 / 0.025 px.
    assert np.percentile(err, 99) < 0.1


def test_marking_far_out_of_frame_pixels_before_resampling_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The generator marks correspondences a few scene pixels past the frame as occluded before resampling,
    # to skip their hidden-layer tests; the output frame decides anyway, so masks must equal a run with
    # no early marking at all.
    cfg = dataclasses.replace(RIGGED, photometric=False, eraser_probability=0.0, stretch_range=(0.8, 1.25))
    fast = [generate_sample(cfg, seed=37, index=index) for index in range(4)]
    monkeypatch.setattr(synthetic, '_FRAME_MARGIN', math.inf)
    for index, a in enumerate(fast):
        b = generate_sample(cfg, seed=37, index=index)
        assert a.rig == b.rig and a.rig.scale != (1.0, 1.0)
        for field in ('occluded_left', 'occluded_right', 'valid_left', 'valid_right', 'disp_left', 'right'):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_scaling_keeps_the_max_disparity_mask_right() -> None:
    cfg = _rig(SMALL, scale_probability=1.0, overshoot_probability=1.0, disparity_range=(6.0, 40.0),
               max_disparity=50.0)
    past = 0
    for index in range(4):
        s = generate_sample(cfg, seed=34, index=index)
        assert s.rig.scale != (1.0, 1.0)
        assert 50.0 * 1.05 <= s.d_max <= 50.0 * 1.15  # drawn in output pixels, whatever the scale
        for d, occluded, valid in ((s.disp_left, s.occluded_left, s.valid_left),
                                   (s.disp_right, s.occluded_right, s.valid_right)):
            np.testing.assert_array_equal(valid, ~occluded & (d >= 0) & (d < cfg.max_disparity))
            past += int((d >= cfg.max_disparity).sum())
    assert past > 0


def test_eraser_boxes_replace_right_content_and_invalidate_only_right_labels() -> None:
    cfg = _rig(EXACT, eraser_probability=1.0, eraser_size_range=(8.0, 40.0))
    kinds: set[str] = set()
    into_boxes = 0
    for index in range(6):
        on, off = generate_sample(cfg, seed=35, index=index), generate_sample(EXACT, seed=35, index=index)
        assert 1 <= len(on.rig.boxes) <= 2
        for field in ('left', 'disp_left', 'valid_left', 'disp_right', 'occluded_right'):
            np.testing.assert_array_equal(getattr(on, field), getattr(off, field), err_msg=field)
        expected, mask = erase(off.right, list(on.rig.boxes), list(on.rig.box_sources))
        np.testing.assert_array_equal(on.right, expected)
        np.testing.assert_array_equal(on.erased_right, mask)
        np.testing.assert_array_equal(on.valid_right, off.valid_right & ~mask)
        kinds.update('patch' if src is not None else 'mean' for src in on.rig.box_sources)
        # Left pixels whose match falls in a box keep their (geometrically right) labels, as RAFT-Stereo.
        x_right = np.rint(np.arange(cfg.width)[None, :] - on.disp_left).astype(np.int64)
        rows = np.arange(cfg.height)[:, None]
        lands = on.valid_left & (x_right >= 0) & mask[rows, np.clip(x_right, 0, cfg.width - 1)]
        into_boxes += int(lands.sum())
    assert kinds == {'patch', 'mean'}
    assert into_boxes > 0


def test_each_view_gets_its_own_contrast_brightness_and_gain() -> None:
    # Camera effects reduced to the ones under test, unquantised: a known answer per view.
    still = dataclasses.replace(SMALL, quantize=False, blur_probability=0.0, noise_probability=0.0,
                                jpeg_probability=0.0, gamma_probability=0.0, gain_probability=0.0)
    levels = dataclasses.replace(still, contrast_probability=1.0, brightness_probability=1.0)
    gain = dataclasses.replace(still, gain_probability=1.0)
    for index in range(3):
        plain = generate_sample(still, seed=36, index=index)
        on = generate_sample(levels, seed=36, index=index)
        (c_left, b_left), (c_right, b_right) = on.rig.levels
        assert 0.8 <= c_left <= 1.2 and -20.0 <= b_left <= 20.0 and (c_left, b_left) != (c_right, b_right)
        for view, (c, b) in (('left', on.rig.levels[0]), ('right', on.rig.levels[1])):
            expected = np.clip(adjust_levels(getattr(plain, view), c, b), 0, 255)
            np.testing.assert_allclose(getattr(on, view), expected, rtol=0, atol=1e-3)
        np.testing.assert_array_equal(on.disp_left, plain.disp_left)  # colour never moves a label
        gained = generate_sample(gain, seed=36, index=index)
        ratios = []
        for view in ('left', 'right'):
            before, after = getattr(plain, view), getattr(gained, view)
            inner = (before > 5) & (after < 250)  # neither view clipped
            ratio = after[inner] / before[inner]
            assert ratio.max() - ratio.min() < 1e-4  # one gain per view ...
            ratios.append(float(ratio.mean()))
        assert abs(ratios[0] - ratios[1]) > 1e-3  # ... drawn independently for the two views


# ---------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize('cfg', [SMALL, RIGGED], ids=['plain', 'rigged'])
def test_same_seed_and_index_give_identical_arrays(cfg: SyntheticConfig) -> None:
    a = generate_sample(cfg, seed=3, index=5)
    generate_sample(cfg, seed=3, index=4)  # another sample in between changes nothing
    b = generate_sample(cfg, seed=3, index=5)
    for field in ('left', 'right', 'disp_left', 'disp_right', 'valid_left', 'valid_right', 'occluded_left',
                  'occluded_right', 'layer_left', 'layer_right', 'erased_right'):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.layers == b.layers and a.rig == b.rig


@pytest.mark.parametrize('cfg', [SMALL, RIGGED], ids=['plain', 'rigged'])
def test_different_indices_and_seeds_give_different_samples(cfg: SyntheticConfig) -> None:
    base = generate_sample(cfg, seed=3, index=5)
    for other in (generate_sample(cfg, seed=3, index=6), generate_sample(cfg, seed=4, index=5)):
        assert not np.array_equal(base.left, other.left)
        assert not np.array_equal(base.disp_left, other.disp_left)
        assert cfg is SMALL or base.rig != other.rig


@pytest.mark.timeout(60)  # a deadlocked worker must fail fast, not stall the suite
def test_dataloader_workers_reproduce_the_samples_of_the_main_process() -> None:
    dataset = SyntheticStereoDataset(dataclasses.replace(RIGGED, height=48, width=96, disparity_range=(4.0, 40.0),
                                                         max_disparity=44.0),
                                     length=4, seed=9)
    # Forked workers (the Linux default) after the parent has rendered samples itself, as in training.
    dataset[0]
    loader = DataLoader(dataset, batch_size=2, num_workers=2, worker_init_fn=worker_init_fn)
    batches = list(loader)
    for index in range(4):
        item = dataset[index]
        batch = batches[index // 2]
        for key, value in item.items():
            assert torch.equal(batch[key][index % 2], value), key


# ---------------------------------------------------------------------------------------------- dataset


@pytest.mark.parametrize('channels', [1, 3])
def test_dataset_items_have_the_documented_shapes_and_dtypes(channels: int) -> None:
    cfg = dataclasses.replace(RIGGED, channels=channels)
    dataset = SyntheticStereoDataset(cfg, length=7, seed=1)
    assert len(dataset) == 7
    item = dataset[2]
    assert set(item) == {'left', 'right', 'disp_left', 'disp_right', 'valid_left', 'valid_right'}
    for key in ('left', 'right'):
        assert item[key].shape == (channels, cfg.height, cfg.width) and item[key].dtype == torch.float32
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) <= 255.0
    for key in ('disp_left', 'disp_right'):
        assert item[key].shape == (1, cfg.height, cfg.width) and item[key].dtype == torch.float32
    for key in ('valid_left', 'valid_right'):
        assert item[key].shape == (1, cfg.height, cfg.width) and item[key].dtype == torch.bool
    assert torch.equal(dataset[-5]['disp_left'], item['disp_left'])
    with pytest.raises(IndexError, match='index 7 out of range'):
        dataset[7]


def test_dataset_rejects_bad_length_and_seed() -> None:
    with pytest.raises(ValueError, match='length=0'):
        SyntheticStereoDataset(SMALL, length=0)
    with pytest.raises(ValueError, match='seed=-1'):
        generate_sample(SMALL, seed=-1, index=0)


def test_save_sample_pngs_writes_one_png_per_view_and_map(tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL, height=32, width=64, disparity_range=(2.0, 20.0), max_disparity=24.0)
    paths = save_sample_pngs(generate_sample(cfg, 0, 0), tmp_path / 'out', 'x')
    assert sorted(p.name for p in paths) == sorted(
        f'x_{n}.png' for n in ('left', 'right', 'disp_left', 'disp_right', 'valid_left', 'valid_right'))
    assert all(p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for p in paths)


# ---------------------------------------------------------------------------------------------- config


def test_default_config_is_valid_and_frozen() -> None:
    cfg = SyntheticConfig()
    assert (cfg.height, cfg.width, cfg.channels) == (256, 512, 1)
    assert cfg.disparity_range == (24.0, 180.0) and cfg.max_disparity >= 192.0
    # Real-rig augmentations are on by default, at moderate rates (each on at most every other sample).
    assert all(0.0 < getattr(cfg, key) <= 0.5 for key in RIG_AUGMENTATIONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.height = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ('changes', 'match'),
    [
        ({'height': 8}, r'SyntheticConfig\.height=8: must be an int >= 16'),
        ({'width': 64.0}, r'SyntheticConfig\.width=64\.0'),
        ({'channels': 2}, r'SyntheticConfig\.channels=2: must be 1 \(gray\) or 3 \(RGB\)'),
        ({'n_layers': (5, 2)}, r'SyntheticConfig\.n_layers=\(5, 2\)'),
        ({'disparity_range': (10.0, 600.0)},
         r'SyntheticConfig\.disparity_range=\(10\.0, 600\.0\): high must be < width=512'),
        ({'disparity_range': [24.0, 180.0]},
         r'SyntheticConfig\.disparity_range=\[24\.0, 180\.0\]: must be a \(low, high\) tuple'),
        ({'max_slant': 0.9}, r'SyntheticConfig\.max_slant=0\.9'),
        ({'flat_probability': -0.1}, r'SyntheticConfig\.flat_probability=-0\.1'),
        ({'shape_weights': (0.0, 0.0, 0.0, 0.0, 0.0)},
         r'SyntheticConfig\.shape_weights=\(0\.0, 0\.0, 0\.0, 0\.0, 0\.0\): must be a tuple of 5'),
        ({'texture_weights': (1.0, 1.0)}, r'SyntheticConfig\.texture_weights=\(1\.0, 1\.0\)'),
        ({'photometric': 1}, r'SyntheticConfig\.photometric=1: must be a bool'),
        ({'jpeg_quality_range': (10, 101)}, r'SyntheticConfig\.jpeg_quality_range=\(10, 101\)'),
        ({'max_disparity': 480.0}, r'SyntheticConfig\.overshoot_range=\(1\.05, 1\.15\): max_disparity \* high'),
        ({'scale_probability': 1.5}, r'SyntheticConfig\.scale_probability=1\.5: must be a number in \[0\.0, 1\.0\]'),
        ({'scale_range': (0.1, 1.0)}, r'SyntheticConfig\.scale_range=\(0\.1, 1\.0\): must satisfy 0\.25 <= low'),
        ({'stretch_range': (1.2, 0.9)}, r'SyntheticConfig\.stretch_range=\(1\.2, 0\.9\)'),
        ({'misrectify_shift': -1.0}, r'SyntheticConfig\.misrectify_shift=-1\.0: must be a number in \[0\.0, 8\.0\]'),
        ({'misrectify_rotation': 10.0}, r'SyntheticConfig\.misrectify_rotation=10\.0'),
        ({'eraser_boxes': (2, 1)}, r'SyntheticConfig\.eraser_boxes=\(2, 1\)'),
        ({'eraser_boxes': (1.0, 2.0)},
         r'SyntheticConfig\.eraser_boxes=\(1\.0, 2\.0\): must be a \(low, high\) tuple of ints'),
        ({'eraser_size_range': (0.0, 5.0)}, r'SyntheticConfig\.eraser_size_range=\(0\.0, 5\.0\)'),
        ({'eraser_texture_probability': True}, r'SyntheticConfig\.eraser_texture_probability=True'),
        ({'contrast_range': (-0.5, 1.0)}, r'SyntheticConfig\.contrast_range=\(-0\.5, 1\.0\)'),
        ({'brightness_range': (-300.0, 0.0)}, r'SyntheticConfig\.brightness_range=\(-300\.0, 0\.0\)'),
        ({'palette_probability': 1.5}, r'SyntheticConfig\.palette_probability=1\.5: must be a number in \[0'),
        ({'palette_spread': -1.0}, r'SyntheticConfig\.palette_spread=-1\.0: must be a number in \[0\.0, 128\.0\]'),
    ],
)
def test_config_rejects_a_bad_value_naming_key_and_value(changes: dict[str, object], match: str) -> None:
    with pytest.raises(SyntheticConfigError, match=match):
        SyntheticConfig(**changes)  # type: ignore[arg-type]


def _flat_layer(value: float, disparity: float, cx: float, rx: float) -> Any:
    """A fronto-parallel layer of one grey level covering the left-view columns [cx - rx, cx + rx], all rows."""
    level = np.array([value], np.float32)
    return synthetic._Layer(
        surface=synthetic._Surface(c=disparity, a=0.0, b=0.0, cx=cx, cy=16.0),
        shape=synthetic._Shape('full', 1e6), texture=synthetic._Texture('gradient', level, level),
        info=synthetic.LayerInfo('test', 'flat', False), cx=cx, cy=16.0, rx=rx, ry=1e6, cos_t=1.0, sin_t=0.0,
        cos_p=1.0, sin_p=0.0, shade=(0.0, 0.0, 0.0), d_low=disparity, d_high=disparity)


@pytest.mark.parametrize('supersample, edge_pixel', [(1, 0.0), (2, 100.0), (4, 50.0)])
def test_supersampling_weights_each_layer_by_the_share_of_the_pixel_it_covers(supersample: int,
                                                                                 edge_pixel: float) -> None:
    """A grey-200 layer whose left edge lies at x = 40.25 over a black one: pixel 40 spans [39.5, 40.5], so
    the layer covers its right quarter. Point sampling (s = 1) shows the centre's black; the s x s points at
    offsets (k + 0.5) / s - 0.5 see the layer where x >= 40.25: s = 2, x in {39.75, 40.25}: 1 of 2 -> 100;
    s = 4, x in {39.625, 39.875, 40.125, 40.375}: 1 of 4 -> 50, the true coverage. Whole pixels are 200 or
    0 either way, and the right view's edge moves by the layer's disparity (20 px: to 20.25)."""
    layers = [_flat_layer(0.0, 10.0, 32.0, 1e6), _flat_layer(200.0, 20.0, 60.25, 20.0)]
    for right, edge in ((False, 40), (True, 20)):
        image = synthetic._render_image(layers, 8, 96, 1, right, (0, 0), supersample)[4, :, 0]
        assert image[edge - 1] == 0.0 and image[edge + 1] == 200.0, (right, image[edge - 2:edge + 3])
        assert image[edge] == pytest.approx(edge_pixel), (right, image[edge - 2:edge + 3])


def test_supersampling_changes_the_images_and_keeps_every_label() -> None:
    plain = SyntheticConfig(height=64, width=128, disparity_range=(8.0, 40.0), n_layers=(4, 6), photometric=False,
                            max_disparity=64.0)
    smooth = dataclasses.replace(plain, supersample=2)
    for config in (plain, plain.without_rig_augmentation()):
        a = generate_sample(config, seed=3, index=1)
        b = generate_sample(dataclasses.replace(config, supersample=2), seed=3, index=1)
        for name in ('disp_left', 'disp_right', 'occluded_left', 'occluded_right', 'valid_left', 'layer_left'):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert not np.array_equal(a.left, b.left)
    with pytest.raises(SyntheticConfigError, match='supersample'):
        dataclasses.replace(smooth, supersample=0)


# ------------------------------------------------------------------------------------------ palette


def test_a_palette_moves_each_textures_mean_level_to_the_drawn_one_and_keeps_its_pattern() -> None:
    rng = np.random.default_rng(0)
    for flat in (False, True):
        for seed in range(12):  # every texture kind turns up, photos and procedural ones
            texture = synthetic._draw_texture(np.random.default_rng(seed), SMALL, flat)
            palette = synthetic._Palette(level=100.0, spread=0.0, rng=rng)
            moved = palette.recolour(texture)
            if texture.kind == 'photo':  # contrast * image + brightness over the whole photo
                assert moved.contrast == texture.contrast and moved.image is texture.image
                assert moved.contrast * float(moved.image.mean()) + moved.brightness == pytest.approx(100.0, abs=1e-4)
            else:
                assert float(np.mean(moved.low + moved.high)) / 2 == pytest.approx(100.0, abs=1e-4)
                np.testing.assert_allclose(moved.high - moved.low, texture.high - texture.low, atol=1e-4)
    # A draw past the clipping bounds lands exactly on them: 16 and 239 grey levels.
    gradient = synthetic._Texture('gradient', np.array([0.0], np.float32), np.array([40.0], np.float32))
    for level, bound in ((250.0, 239.0), (0.0, 16.0), (239.0, 239.0)):
        moved = synthetic._Palette(level=level, spread=0.0, rng=rng).recolour(gradient)
        assert float(moved.low[0] + moved.high[0]) / 2 == bound


def test_a_palette_changes_only_the_colours_and_dims_the_steps_at_depth_edges() -> None:
    steps = {}
    for config in (SMALL, RIGGED):
        on = dataclasses.replace(config, palette_probability=1.0)
        for index in range(6):
            a, b = generate_sample(config, seed=3, index=index), generate_sample(on, seed=3, index=index)
            for name in ('disp_left', 'disp_right', 'occluded_left', 'valid_left', 'layer_left'):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name
            assert a.rig == b.rig and not np.array_equal(a.left, b.left)
    for palette in (0.0, 1.0):
        config = dataclasses.replace(EXACT, shading_strength=0.0, palette_probability=palette, palette_spread=10.0)
        jumps = []
        for index in range(12):
            sample = generate_sample(config, seed=5, index=index)
            image, layer = sample.left[:, :, 0], sample.layer_left
            across = layer[:, 1:] != layer[:, :-1]  # horizontal neighbours on two layers: a depth edge
            jumps.append(np.abs(image[:, 1:] - image[:, :-1])[across])
        steps[palette] = float(np.median(np.concatenate(jumps)))
    assert steps[1.0] < 0.7 * steps[0.0], steps


# ------------------------------------------------------------------------------------------ photo sources


def test_extra_photos_are_the_packages_own_images_in_rgb_and_gray() -> None:
    """Each EXTRA_PHOTOS file reads as its package's own loader returns it (scikit-learn's
    load_sample_image gives RGB, so a BGR read would fail here; pywt.data.aero/ascent give 512x512 gray)."""
    import pywt.data
    from sklearn.datasets import load_sample_image

    expected = {'china.jpg': load_sample_image('china.jpg'), 'flower.jpg': load_sample_image('flower.jpg'),
                'aero.npz': pywt.data.aero(), 'ascent.npz': pywt.data.ascent()}
    for package, relative in synthetic.EXTRA_PHOTOS:
        photo = synthetic._read_extra_photo(package, relative)
        reference = np.asarray(expected[Path(relative).name])
        assert photo is not None and photo.shape == reference.shape, relative
        # JPEG decoders may differ by a grey level; the exact npz arrays may not differ at all.
        tolerance = 2 if relative.endswith('.jpg') else 0
        assert np.abs(photo.astype(np.int16) - reference.astype(np.int16)).max() <= tolerance, relative
    assert synthetic._read_extra_photo('sklearn', 'datasets/images/no_such.jpg') is None
    assert synthetic._read_extra_photo('no_such_package_here', 'x.jpg') is None


def test_face_mosaic_tiles_the_200_faces_row_by_row() -> None:
    import skimage.data

    faces = skimage.data.lfw_subset()
    mosaic = synthetic._face_mosaic()
    assert mosaic.shape == (250, 500) and mosaic.dtype == np.uint8
    for index in (0, 19, 20, 199):  # first, end of the first row, start of the second, last
        row, col = divmod(index, 20)
        tile = mosaic[row * 25:(row + 1) * 25, col * 25:(col + 1) * 25]
        assert np.array_equal(tile, np.round(faces[index] * 255.0).astype(np.uint8)), index


def test_extra_photos_widen_the_choice_and_change_only_photo_layers() -> None:
    assert len(synthetic._photo_mips(1, True)) == len(synthetic._photo_mips(1, False)) + len(synthetic.EXTRA_PHOTOS) + 1
    photos_only = dataclasses.replace(EXACT, texture_weights=(1.0, 0.0, 0.0, 0.0, 0.0), flat_probability=0.0)
    a = generate_sample(photos_only, seed=5, index=2)
    b = generate_sample(dataclasses.replace(photos_only, extra_photos=True), seed=5, index=2)
    # Same scene and labels (picking a photo takes one draw from the stream whatever the list's length:
    # numpy's bounded integers reject a draw with odds n / 2**32); some layer shows another photo.
    for name in ('disp_left', 'disp_right', 'occluded_left', 'valid_left', 'layer_left'):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.left, b.left)
    procedural = dataclasses.replace(EXACT, texture_weights=(0.0, 1.0, 1.0, 1.0, 1.0))
    assert np.array_equal(generate_sample(procedural, seed=5, index=2).left,
                          generate_sample(dataclasses.replace(procedural, extra_photos=True), seed=5, index=2).left)
    with pytest.raises(SyntheticConfigError, match=r'SyntheticConfig\.extra_photos=1: must be a bool'):
        SyntheticConfig(extra_photos=1)  # type: ignore[arg-type]


@pytest.mark.parametrize('size', [2, 3, 7])
def test_texel_indices_mirror_as_opencv_border_reflect_101_on_every_path(size: int) -> None:
    """Each of _reflect_index's paths (nothing to mirror, one reflection, whole periods) against OpenCV's own
    BORDER_REFLECT_101, at the boundaries between them: 0, size - 1, size, -size + 1, -size, the period - 1 and
    the period, and far beyond."""
    import cv2

    from stereonet_ros.data.synthetic import _reflect_index

    period = 2 * size - 2
    cases = [np.arange(size), np.array([0, size - 1, size]), np.array([-size + 1, 0, period - 1]),
             np.array([-size, size - 1]), np.array([0, period]), np.arange(-5 * period - 3, 5 * period + 4)]
    for index in cases:
        expected = [cv2.borderInterpolate(int(i), size, cv2.BORDER_REFLECT_101) for i in index]
        np.testing.assert_array_equal(_reflect_index(index.astype(np.int64), size), expected)
    assert _reflect_index(np.array([], np.int64), size).size == 0
