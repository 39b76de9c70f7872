"""stereonet-evaluate: SGBM baselines, set loading, and scores that agree with direct inference."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stereonet_ros.evaluation.evaluate import (STEREO_IMAGE_PROC_SGBM, EvaluationError, Frame, covering_range,
                                               evaluate, load_set, sgbm_candidates, sgbm_disparity)
from stereonet_ros.evaluation.metrics import disparity_metrics
from stereonet_ros.inference import Predictor
from stereonet_ros.pfm import write_pfm


def _shifted_pair(shift: int, height: int = 64, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, size=(height, width + shift)).astype(np.float32)
    scene = (scene + np.roll(scene, 1, axis=1) + np.roll(scene, 1, axis=0)) / 3  # a little smoother than noise
    # A left pixel at x is at x - shift in the right image: right[u] = left[u + shift].
    return scene[:, :width], scene[:, shift:]


def test_sgbm_finds_a_constant_shift() -> None:
    left, right = _shifted_pair(7)
    disparity = sgbm_disparity(left, right, sgbm_candidates()[2], num_disparities=32)
    inner = disparity[10:-10, 40:-10]
    assert np.nanmedian(inner) == pytest.approx(7.0, abs=0.1)
    assert np.isfinite(inner).mean() > 0.9


def test_sgbm_marks_missing_matches_nan() -> None:
    left, right = _shifted_pair(7)
    disparity = sgbm_disparity(left, right, STEREO_IMAGE_PROC_SGBM, num_disparities=32)
    assert np.isnan(disparity[:, :20]).all()  # no match where the right view has no pixel (x < range)


def test_covering_range_is_a_multiple_of_16_above_the_ground_truth() -> None:
    frame = Frame('a', np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32),
                  np.array([[np.inf, 47.5], [3.0, np.nan]], np.float32))
    assert covering_range([frame]) == 64
    frame = Frame('b', frame.left, frame.right, np.array([[np.inf, 48.0], [3.0, 1.0]], np.float32))
    assert covering_range([frame]) == 64


def test_stereonet_scores_equal_direct_inference(seed_checkpoint_path: Path, tmp_path: Path) -> None:
    # A pair folder with ground truth: the evaluation must score exactly what Predictor.predict gives.
    left, right = _shifted_pair(5)
    truth = np.full(left.shape, 5.0, np.float32)
    truth[:, :3] = np.inf
    for folder in ('left', 'right', 'disparity'):
        (tmp_path / folder).mkdir()
    Image.fromarray(left.astype(np.uint8)).save(tmp_path / 'left' / 'p.png')
    Image.fromarray(right.astype(np.uint8)).save(tmp_path / 'right' / 'p.png')
    write_pfm(tmp_path / 'disparity' / 'p.pfm', truth)
    results = evaluate(str(seed_checkpoint_path), [f'folder:{tmp_path}'], device='cpu', with_sgbm=False,
                       log=lambda _: None)
    scored = results['sets'][f'folder:{tmp_path}']['methods']['stereonet']
    predictor = Predictor.from_checkpoint(seed_checkpoint_path, device='cpu')
    direct = disparity_metrics(predictor.predict(left.astype(np.uint8), right.astype(np.uint8)), truth,
                               max_disparity=256.0)
    # The folder loader gives RGB (gray repeated) and BT.601 weights sum to 1 only up to float rounding.
    assert scored['epe'] == pytest.approx(direct.epe, abs=1e-4)
    assert scored['bad3'] == pytest.approx(direct.bad3, abs=1e-9)
    assert scored['valid_pixels'] == direct.valid_pixels == truth.size - 3 * truth.shape[0]


def test_synthetic_set_is_held_out_and_deterministic() -> None:
    first = load_set('synthetic', 2, 192.0, 1)
    again = load_set('synthetic', 2, 192.0, 1)
    assert len(first) == 2 and first[0].left.shape == (256, 512)
    assert np.array_equal(first[1].disparity, again[1].disparity)
    assert np.nanmax(first[0].disparity) < 192.0 * 1.2


@pytest.mark.parametrize('spec, message', [
    ('imagenet', r"unknown set 'imagenet'"),
    ('middlebury2014', r"unknown set 'middlebury2014'"),
    ('folder:/nonexistent/place', r'/nonexistent/place'),
])
def test_bad_sets_are_refused_with_a_reason(spec: str, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        load_set(spec, 1, 192.0, 1)


def test_cli_writes_json_and_a_table(seed_checkpoint_path: Path, tmp_path: Path) -> None:
    program = Path(sys.executable).parent / 'stereonet-evaluate'
    out = tmp_path / 'results.json'
    result = subprocess.run([str(program), '--checkpoint', str(seed_checkpoint_path), '--sets', 'synthetic',
                             '--synthetic-samples', '2', '--device', 'cpu', '--out', str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert '| synthetic (2) | stereonet |' in result.stdout
    assert '| synthetic (2) | sgbm-stereo_image_proc |' in result.stdout
    assert '| synthetic (2) | sgbm-tuned |' in result.stdout
    written = json.loads(out.read_text())
    assert set(written['sets']['synthetic']['methods']) == {'stereonet', 'sgbm-stereo_image_proc', 'sgbm-tuned'}
    assert written['sgbm_tuned_params']['block_size'] in (3, 5, 7, 9)


def test_cli_unknown_set_exits_nonzero_with_one_line(seed_checkpoint_path: Path) -> None:
    program = Path(sys.executable).parent / 'stereonet-evaluate'
    result = subprocess.run([str(program), '--checkpoint', str(seed_checkpoint_path), '--sets', 'nope', '--no-sgbm'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("stereonet-evaluate: error: unknown set 'nope'")
