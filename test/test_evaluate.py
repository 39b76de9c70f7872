"""stereonet-evaluate: SGBM baselines, set loading, and scores that agree with direct inference."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stereonet_ros.evaluation.evaluate import (OURS, REFERENCE, EvaluationError, Frame, covering_range, evaluate,
                                               format_table, load_set, score_set, sgbm_candidates)
from stereonet_ros.data.synthetic import SyntheticConfig
from stereonet_ros.sgbm import STEREO_IMAGE_PROC_SGBM, sgbm_disparity
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
    # Ours answers everywhere: the dense and answered views agree; without SGBM there is no density to match.
    assert scored['dense'] == scored['answered'] and scored['dense']['density'] == 1.0
    assert scored['matched'] is None
    assert results['inference_scale'] == 1.0


def test_min_confidence_leaves_ours_holes_where_the_node_would(seed_checkpoint_path: Path, tmp_path: Path) -> None:
    """With the node's min_confidence, ours answers exactly where its confidence reaches the threshold (a pixel at
    it is kept), so its answered view has a density below 1 and its dense view fills the holes as SGBM's are."""
    from stereonet_ros.processing import StereoProcessor

    left, right = _shifted_pair(5)
    truth = np.full(left.shape, 5.0, np.float32)
    for folder in ('left', 'right', 'disparity'):
        (tmp_path / folder).mkdir()
    Image.fromarray(left.astype(np.uint8)).save(tmp_path / 'left' / 'p.png')
    Image.fromarray(right.astype(np.uint8)).save(tmp_path / 'right' / 'p.png')
    write_pfm(tmp_path / 'disparity' / 'p.pfm', truth)
    predictor = Predictor.from_checkpoint(seed_checkpoint_path, device='cpu')
    [frame] = load_set(f'folder:{tmp_path}', 1, float(predictor.contract.max_disparity), predictor.contract.channels)
    _, confidence, _ = StereoProcessor(predictor).infer(frame.left, frame.right, with_confidence=True)
    assert confidence is not None
    threshold = float(np.sort(confidence.ravel())[confidence.size // 2])  # a value some pixel holds exactly
    results = evaluate(str(seed_checkpoint_path), [f'folder:{tmp_path}'], device='cpu', with_sgbm=False,
                       min_confidence=threshold, log=lambda _: None)
    scored = results['sets'][f'folder:{tmp_path}']['methods']['stereonet']
    assert scored['answered']['scored_pixels'] == int(np.count_nonzero(confidence >= np.float32(threshold)))
    assert 0.3 < scored['answered']['density'] < 0.7 and scored['dense']['density'] == 1.0
    assert results['min_confidence'] == threshold
    assert f'min confidence {threshold:g}' in format_table(results)
    with pytest.raises(EvaluationError, match=r'min confidence 1.5: must be in \[0, 1\]'):
        evaluate(str(seed_checkpoint_path), [f'folder:{tmp_path}'], device='cpu', with_sgbm=False,
                 min_confidence=1.5, log=lambda _: None)


NAN = float('nan')


def _frame(name: str, truth: list[list[float]]) -> Frame:
    gray = np.zeros((len(truth), len(truth[0])), np.float32)
    return Frame(name, gray, gray, np.array(truth, np.float32))


def test_ours_is_thinned_to_the_reference_density_of_each_frame() -> None:
    frames = [_frame('a', [[10.0, 10.0, 10.0, 10.0]]), _frame('b', [[20.0, 20.0], [20.0, np.inf]])]
    # The reference answers 2 of 4 valid pixels on 'a' (error 1 and 3) and 1 of 3 on 'b' (error 0).
    sparse = {'a': np.array([[NAN, 11.0, NAN, 13.0]], np.float32),
              'b': np.array([[20.0, NAN], [NAN, NAN]], np.float32)}
    # Ours: errors 4, 0.5, 2, 3 on 'a' (most confident: 0.5 and 2) and 1, 5, 0 on 'b' (most confident: 5).
    dense = {'a': (np.array([[14.0, 10.5, 12.0, 13.0]], np.float32), np.array([[0.1, 0.9, 0.8, 0.8]], np.float32)),
             'b': (np.array([[21.0, 25.0], [20.0, 7.0]], np.float32), np.array([[0.2, 0.7], [0.2, 1.0]], np.float32))}
    scores = score_set(frames, lambda f: dense[f.name], [(REFERENCE, lambda f: sparse[f.name])], 192.0, False)
    assert list(scores) == [OURS, REFERENCE]
    reference = scores[REFERENCE].views
    assert reference['answered'].metrics().density == pytest.approx(3 / 7)
    assert reference['answered'].metrics().epe == pytest.approx(4 / 3)
    assert reference['matched'] == reference['answered']
    # Filled 'a': [11, 11, min(11, 13), 13], errors 1, 1, 1, 3; 'b': [20, 20 | left only], [0 (empty row), -]
    assert reference['dense'].metrics().epe == pytest.approx((1 + 1 + 1 + 3 + 0 + 0 + 20) / 7)
    assert reference['dense'].metrics().bad3 == pytest.approx(100 / 7)  # 3 px is not bad-3; the 20 px is
    ours = scores[OURS].views
    # 'a' keeps 0.9 then the first of the tied 0.8s (column 2): errors 0.5, 2. 'b' keeps column 1 (error 5):
    # (1, 1) has confidence 1.0 but no ground truth, so it is not eligible.
    matched = ours['matched'].metrics()
    assert (matched.scored_pixels, matched.valid_pixels) == (3, 7)
    assert matched.epe == pytest.approx(7.5 / 3) and matched.bad3 == pytest.approx(100 / 3)
    assert ours['dense'] == ours['answered'] and ours['dense'].metrics().epe == pytest.approx(15.5 / 7)


def test_table_has_the_three_views_and_records_how_ours_ran() -> None:
    row = {'dense': {'epe': 1.5, 'bad3': 10.0, 'density': 1.0},
           'answered': {'epe': 1.25, 'bad3': 6.25, 'density': 0.75}, 'matched': None, 'seconds_per_frame': 0.5}
    table = format_table({'precision': 'bf16', 'inference_scale': 0.5,
                          'sets': {'motorcycle': {'frames': 1, 'methods': {OURS: row}}}})
    assert table.splitlines()[0].startswith('| set | method | dense EPE px | dense bad-3 % | answered EPE px |')
    assert table.splitlines()[2] == ('| motorcycle (1) | stereonet (bf16, scale 0.5) | 1.50 | 10.0 | 1.25 | 6.2 '
                                     '| 0.750 | - | - | - | 0.500 |')
    # The SGBM fallback runs only after the local search, so the label names it only there.
    sets = {'motorcycle': {'frames': 1, 'methods': {OURS: row}}}
    labels = {(reach, fallback): format_table({'local_search': reach, 'sgbm_fallback': fallback,
                                               'sets': sets}).splitlines()[2].split(' | ')[1]
              for reach in (0, 4) for fallback in (False, True)}
    assert labels == {(0, False): 'stereonet (fp32, scale 1)', (0, True): 'stereonet (fp32, scale 1)',
                      (4, False): 'stereonet (fp32, scale 1, local search 4 px)',
                      (4, True): 'stereonet (fp32, scale 1, local search 4 px + SGBM fallback)'}
    filled = format_table({'local_search': 4, 'sgbm_fallback': True, 'fill_occlusions': True, 'sets': sets})
    assert 'stereonet (fp32, scale 1, local search 4 px + SGBM fallback + occlusion fill)' in filled
    checked = format_table({'local_search': 4, 'sgbm_fallback': True, 'fill_occlusions': True,
                            'left_right_check': True, 'sets': sets})
    assert 'stereonet (fp32, scale 1, local search 4 px + SGBM fallback + occlusion fill + left-right check)' in checked
    unsearched = format_table({'local_search': 0, 'left_right_check': True, 'sets': sets})
    assert 'stereonet (fp32, scale 1) |' in unsearched  # without the search the check does not run


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
                             '--synthetic-samples', '2', '--device', 'cpu', '--inference-scale', '0.5',
                             '--no-sgbm-fallback', '--no-fill-occlusions', '--out', str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert '| synthetic (2) | stereonet (fp32, scale 0.5) |' in result.stdout
    assert '| synthetic (2) | sgbm-stereo_image_proc |' in result.stdout
    assert '| synthetic (2) | sgbm-tuned |' in result.stdout
    written = json.loads(out.read_text())
    assert set(written['sets']['synthetic']['methods']) == {'stereonet', 'sgbm-stereo_image_proc', 'sgbm-tuned'}
    assert written['sgbm_tuned_params']['block_size'] in (3, 5, 7, 9)
    assert written['inference_scale'] == 0.5 and written['sgbm_fallback'] is False
    assert written['fill_occlusions'] is False and written['left_right_check'] is False
    methods = written['sets']['synthetic']['methods']
    for name, method in methods.items():
        assert set(method) >= {'dense', 'answered', 'matched', 'epe', 'bad3', 'seconds_per_frame'}, name
        assert method['epe'] == method['dense']['epe'] and method['dense']['density'] == 1.0
    # Ours thinned to exactly the pixels stereo_image_proc's SGBM answered.
    assert methods['stereonet']['matched']['scored_pixels'] == methods[REFERENCE]['answered']['scored_pixels']


def test_min_confidence_is_checked_against_the_confidence_s_range_ends_included() -> None:
    from stereonet_ros.inference import InputError, check_min_confidence

    assert check_min_confidence(0) == 0.0 and check_min_confidence(1) == 1.0 and check_min_confidence(0.7) == 0.7
    for outside in (-1e-9, 1.0 + 1e-9, float('nan'), float('inf')):
        with pytest.raises(InputError, match=r'must be in \[0, 1\]'):
            check_min_confidence(outside)


@pytest.mark.parametrize(('option', 'value', 'message'), [
    ('--inference-scale', '0.0999', '--inference-scale 0.0999: must be in [0.1, 2.5]'),  # the node's range
    ('--inference-scale', '2.5001', '--inference-scale 2.5001: must be in [0.1, 2.5]'),
    ('--inference-scale', 'nan', '--inference-scale nan: must be in [0.1, 2.5]'),
    ('--min-confidence', '-0.0001', '--min-confidence: min confidence -0.0001: must be in [0, 1]'),
    ('--min-confidence', '1.0001', '--min-confidence: min confidence 1.0001: must be in [0, 1]'),
    ('--min-confidence', 'nan', '--min-confidence: min confidence nan: must be in [0, 1]'),
])
def test_cli_refuses_a_value_outside_the_node_s_range(seed_checkpoint_path: Path, option: str, value: str,
                                                      message: str) -> None:
    program = Path(sys.executable).parent / 'stereonet-evaluate'
    result = subprocess.run([str(program), '--checkpoint', str(seed_checkpoint_path), option, value],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'stereonet-evaluate: error: {message}']


def test_cli_unknown_set_exits_nonzero_with_one_line(seed_checkpoint_path: Path) -> None:
    program = Path(sys.executable).parent / 'stereonet-evaluate'
    result = subprocess.run([str(program), '--checkpoint', str(seed_checkpoint_path), '--sets', 'nope', '--no-sgbm'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("stereonet-evaluate: error: unknown set 'nope'")


def test_the_held_out_synthetic_set_is_the_clean_generator_s_so_scores_compare_across_recipes() -> None:
    # The rig augmentations (eraser boxes, misrectification, scale) are for training only.
    from stereonet_ros.data.synthetic import generate_sample
    from stereonet_ros.evaluation.evaluate import HELD_OUT_SEED, load_set

    frames = load_set('synthetic', 3, 192.0, 1)
    for index, frame in enumerate(frames):
        sample = generate_sample(SyntheticConfig(height=256, width=512, max_disparity=192.0,
                                                 disparity_range=(24.0, 180.0)).without_rig_augmentation(),
                                 HELD_OUT_SEED, index)
        assert np.array_equal(frame.left, sample.left[:, :, 0]) and np.array_equal(frame.right, sample.right[:, :, 0])
        assert not sample.erased_right.any()
