"""Tests of the synthetic stereo generator: exact geometry, determinism, config errors, dataset contract."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from stereonet_ros.data.synthetic import (
    SyntheticConfig,
    SyntheticConfigError,
    SyntheticStereoDataset,
    generate_sample,
    save_sample_pngs,
    worker_init_fn,
)

# Small frames keep the suite fast; the disparity range still spans a third of the width.
SMALL = SyntheticConfig(height=96, width=192, disparity_range=(6.0, 64.0), max_disparity=72.0)
EXACT = dataclasses.replace(SMALL, photometric=False)


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


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_arrays() -> None:
    a = generate_sample(SMALL, seed=3, index=5)
    b = generate_sample(SMALL, seed=3, index=5)
    for field in ('left', 'right', 'disp_left', 'disp_right', 'valid_left', 'valid_right'):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.layers == b.layers


def test_different_indices_and_seeds_give_different_samples() -> None:
    base = generate_sample(SMALL, seed=3, index=5)
    for other in (generate_sample(SMALL, seed=3, index=6), generate_sample(SMALL, seed=4, index=5)):
        assert not np.array_equal(base.left, other.left)
        assert not np.array_equal(base.disp_left, other.disp_left)


@pytest.mark.timeout(60)  # a deadlocked worker must fail fast, not stall the suite
def test_dataloader_workers_reproduce_the_samples_of_the_main_process() -> None:
    dataset = SyntheticStereoDataset(dataclasses.replace(SMALL, height=48, width=96, disparity_range=(4.0, 40.0),
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
    cfg = dataclasses.replace(SMALL, channels=channels)
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
    ],
)
def test_config_rejects_a_bad_value_naming_key_and_value(changes: dict[str, object], match: str) -> None:
    with pytest.raises(SyntheticConfigError, match=match):
        SyntheticConfig(**changes)  # type: ignore[arg-type]
