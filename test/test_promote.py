"""Promoting a trained checkpoint to the default: the preliminary flag follows the measured goal."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from stereonet_ros.config import load
from stereonet_ros.inference import DEFAULT_CHECKPOINT, PreliminaryCheckpointWarning, Predictor
from stereonet_ros.model.checkpoint import load_checkpoint, save_checkpoint
from stereonet_ros.model.surgery import without_image_guidance
from stereonet_ros import opencv_data
from stereonet_ros.training.promote import (OURS, SGBM, Check, PromotionRefused, advice, cpu_defaults_report,
                                            goal_report, main, measured_sets, motorcycle_dense_beats_sgbm, promote,
                                            remeasure)
from stereonet_ros.training.train import TrainConfig, train


def _view(epe: float, bad3: float, density: float = 1.0) -> dict[str, float]:
    return {'epe': epe, 'bad3': bad3, 'density': density}


SGBM_ROW = {'dense': _view(1.8, 10.0), 'answered': _view(1.2, 6.4, 0.854), 'matched': _view(1.2, 6.4, 0.854)}


def _results(ours_epe: float, ours_bad3: float, synthetic_epe: float = 6.0) -> dict[str, Any]:
    ours = {'dense': _view(ours_epe, ours_bad3), 'answered': _view(ours_epe, ours_bad3),
            'matched': _view(1.95, 12.2, 0.854)}
    return {'sets': {
        'motorcycle': {'methods': {'stereonet': ours, 'sgbm-stereo_image_proc': SGBM_ROW,
                                   'sgbm-tuned': {**SGBM_ROW, 'dense': _view(1.7, 9.5)}}},
        'synthetic': {'methods': {'stereonet': {'dense': _view(synthetic_epe, 30.0)}}},
    }}


@pytest.mark.parametrize('ours_epe, ours_bad3, met', [
    (1.79, 9.9, True),
    (1.8, 9.9, False),   # dense EPE equal to SGBM's: not a win
    (1.79, 10.0, False),  # dense bad-3 equal to SGBM's: not a win
    (2.5, 9.9, False),   # EPE above
    (1.79, 16.7, False),  # bad-3 above
])
def test_the_goal_is_both_dense_motorcycle_scores_strictly_below_sgbm(ours_epe: float, ours_bad3: float,
                                                                      met: bool) -> None:
    verdict, summary = goal_report(_results(ours_epe, ours_bad3))
    assert verdict is met
    assert summary.startswith(f'Motorcycle ours dense {ours_epe:.2f} px / {ours_bad3:.1f} %, ')
    assert f'(motorcycle-dense-vs-sgbm: {"met" if met else "not met"})' in summary


def test_the_summary_quotes_all_three_views_and_the_synthetic_epe_decides_nothing() -> None:
    verdict, summary = goal_report(_results(1.79, 9.9, synthetic_epe=6.26))
    assert verdict is True  # a synthetic EPE far above 1 px no longer holds the checkpoint back
    assert ('answered 1.79 px / 9.9 % at 1.000, matched 1.95 px / 12.2 % at 0.854; SGBM stereo_image_proc '
            'dense 1.80 px / 10.0 %, answered = matched 1.20 px / 6.4 % at 0.854') in summary
    assert summary.endswith('SGBM tuned dense 1.70 px / 9.5 %; held-out synthetic dense EPE 6.26 px')


def test_the_held_out_real_pair_is_quoted_and_decides_nothing() -> None:
    results = _results(1.79, 9.9)
    results['sets']['aloe'] = {'methods': {'stereonet': {'dense': _view(3.74, 22.2), 'answered': _view(3.74, 22.2),
                                                         'matched': _view(1.67, 8.8, 0.694)},
                                           'sgbm-stereo_image_proc': {'dense': _view(2.24, 13.1),
                                                                      'answered': _view(1.03, 4.3, 0.694),
                                                                      'matched': _view(1.03, 4.3, 0.694)}}}
    verdict, summary = goal_report(results)
    assert verdict is True  # behind SGBM on Aloe, ahead on Motorcycle: the goal is Motorcycle's
    assert summary.endswith('held-out synthetic dense EPE 6.00 px; held-out real Aloe ours dense 3.74 px / 22.2 %, '
                            'answered 3.74 px / 22.2 % at 1.000, matched 1.67 px / 8.8 % at 0.694; SGBM '
                            'stereo_image_proc dense 2.24 px / 13.1 %, answered = matched 1.03 px / 4.3 % at 0.694')


def test_promote_measures_aloe_only_where_the_machine_has_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    try:
        opencv_data.find()
        assert measured_sets() == ['synthetic', 'motorcycle', 'aloe']
    except opencv_data.OpenCvDataError:
        pass  # the branch below runs either way
    monkeypatch.setenv('STEREONET_ROS_DATA_DIR', str(tmp_path))
    monkeypatch.setattr(opencv_data, 'SYSTEM_FOLDER', tmp_path / 'not-installed')
    assert measured_sets() == ['synthetic', 'motorcycle']
    assert 'warning: the held-out real pair is not measured: OpenCV sample data' in capsys.readouterr().err


def test_the_cpu_default_settings_are_judged_against_the_same_sgbm_and_the_advice_says_which_falls_short() -> None:
    def results(ours_epe: float, ours_bad3: float, with_sgbm: bool) -> dict[str, Any]:
        methods: dict[str, Any] = {OURS: {'dense': _view(ours_epe, ours_bad3), 'answered': _view(ours_epe, ours_bad3),
                                          'matched': None}}
        if with_sgbm:
            methods[SGBM] = {'dense': _view(1.83, 10.1), 'answered': _view(1.2, 6.4, 0.854),
                             'matched': _view(1.2, 6.4, 0.854)}
        return {'sets': {'motorcycle': {'methods': methods}}, 'local_search': 4}

    network = results(2.25, 14.0, with_sgbm=True)
    met, clause = cpu_defaults_report(network, results(1.47, 8.9, with_sgbm=False))
    assert met and clause == ("at the node's CPU default settings (local search 4 px, SGBM fallback, occlusion fill): "
                              'Motorcycle ours dense 1.47 px / 8.9 % (motorcycle-dense-vs-sgbm: met)')
    assert not cpu_defaults_report(network, results(1.83, 8.9, with_sgbm=False))[0]  # equal EPE is not a win
    assert advice(True, True) == advice(True, False) == ''
    assert 'network alone' in advice(False, True) and 'local_search_px 4' in advice(False, True)
    assert advice(False, False) == '; short of the goal: prefer tuned SGBM or a better checkpoint'


def test_every_goal_check_must_pass() -> None:
    def failing(results: dict[str, Any]) -> Check:
        return Check('guide-ablation', False, 'guide ablation not better')

    verdict, summary = goal_report(_results(1.79, 9.9), checks=(motorcycle_dense_beats_sgbm, failing))
    assert verdict is False
    assert '(motorcycle-dense-vs-sgbm: met); guide ablation not better (guide-ablation: not met)' in summary


def test_promoting_a_briefly_trained_checkpoint_marks_it_preliminary(tmp_path: Path) -> None:
    config = load(TrainConfig, overrides=[
        'model.max_disparity=64', 'data.max_disparity=64', 'data.height=64', 'data.width=128',
        'data.disparity_range=[8, 48]', 'batch_size=1', 'workers=0', 'steps=1', 'validate_every=1000',
        'validation_samples=1', 'score_real_pair=false'])
    train(config, tmp_path / 'run', progress=False)
    destination = tmp_path / 'default.safetensors'
    # One step from random weights: whatever its guide ablation gives is noise, so that check is let through.
    met, _ = promote(tmp_path / 'run' / 'model_latest.safetensors', destination, synthetic_samples=1,
                     min_guide_rise=-math.inf)
    assert met is False
    provenance = load_checkpoint(destination).provenance
    assert provenance['preliminary'] is True and provenance['steps'] == 1
    refinement = provenance['refinement']
    assert len(refinement['levels']) == 4 and refinement['inference_scale'] == 1.0
    assert refinement['guide_rise_epe'] == pytest.approx(refinement['without_guide']['epe']
                                                         - refinement['levels'][-1]['epe'])
    assert '| motorcycle (1) | sgbm-stereo_image_proc |' in provenance['evaluation_table']
    # The node's CPU default settings measured beside the network alone: quoted, not deciding the flag.
    assert set(provenance['evaluation_cpu_defaults']) == set(provenance['evaluation'])
    assert 'local search 4 px + SGBM fallback + occlusion fill' in provenance['evaluation_cpu_defaults_table']
    assert "at the node's CPU default settings (local search 4 px, SGBM fallback, occlusion fill): Motorcycle ours " \
        "dense " in provenance['note']
    with pytest.warns(PreliminaryCheckpointWarning, match='1 training steps; Motorcycle ours dense '):
        Predictor.from_checkpoint(destination, device='cpu')
    # The exports the node runs on a CPU are written beside it, from exactly these bytes: with its refiners,
    # and without them for refine false.
    from stereonet_ros.backends import default_onnx_is_current

    assert default_onnx_is_current(None, destination)
    assert default_onnx_is_current(None, destination, refine=False)
    assert (tmp_path / 'default.onnx').is_file() and (tmp_path / 'default_norefine.onnx').is_file()
    weights = load_checkpoint(destination).state_dict
    save_checkpoint(destination, dataclasses.replace(load_checkpoint(destination), provenance={'trained': True}))
    assert not default_onnx_is_current(None, destination)  # stale once replaced
    assert not default_onnx_is_current(None, destination, refine=False)
    # Measured again in place: the figures come back, the weights and their export stay those weights.
    remeasure(destination, synthetic_samples=1)
    again = load_checkpoint(destination)
    assert all(torch.equal(again.state_dict[key], value) for key, value in weights.items())
    assert again.provenance['preliminary'] is True and 'motorcycle' in again.provenance['evaluation']
    assert 'promoted_from' not in again.provenance
    assert default_onnx_is_current(None, destination) and default_onnx_is_current(None, destination, refine=False)


def test_the_shipped_defaults_note_quotes_the_three_views() -> None:
    """The first default's note scored SGBM's holes as errors in bad-3 and ignored them in EPE ('SGBM
    stereo_image_proc 1.20 px / 20.1 %'); every note now quotes dense, answered and matched for both."""
    note = load_checkpoint(DEFAULT_CHECKPOINT).provenance['note']
    assert 'Motorcycle ours dense ' in note and 'SGBM stereo_image_proc dense ' in note, note
    assert 'answered' in note and 'matched' in note, note


def test_a_checkpoint_whose_refiners_ignore_the_image_is_refused_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Trained weights with every refiner's guide-image weights zeroed: the ablation cannot change anything.
    trained = load_checkpoint(DEFAULT_CHECKPOINT)
    blind = dataclasses.replace(trained, state_dict=without_image_guidance(trained.config, trained.state_dict))
    source, destination = tmp_path / 'blind.safetensors', tmp_path / 'default.safetensors'
    save_checkpoint(source, blind)
    with pytest.raises(PromotionRefused, match=r'raise Motorcycle EPE by 0\.000 px, less than 0\.2 px'):
        promote(source, destination, synthetic_samples=1)
    assert not destination.exists()
    assert main([str(source), '--destination', str(destination)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('python -m stereonet_ros.training.promote: error: ') and 'Traceback' not in ''.join(err)
    assert not destination.exists()
