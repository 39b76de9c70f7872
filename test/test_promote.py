"""Promoting a trained checkpoint to the default: the preliminary flag follows the measured goal."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stereonet_ros.config import load
from stereonet_ros.inference import PreliminaryCheckpointWarning, Predictor
from stereonet_ros.model.checkpoint import load_checkpoint
from stereonet_ros.training.promote import goal_report, promote
from stereonet_ros.training.train import TrainConfig, train


def _results(ours_epe: float, ours_bad3: float, synthetic_epe: float) -> dict[str, Any]:
    def row(epe: float, bad3: float) -> dict[str, float]:
        return {'epe': epe, 'bad3': bad3}
    return {'sets': {
        'motorcycle': {'methods': {'stereonet': row(ours_epe, ours_bad3), 'sgbm-stereo_image_proc': row(1.2, 20.0),
                                   'sgbm-tuned': row(1.3, 18.0)}},
        'synthetic': {'methods': {'stereonet': row(synthetic_epe, 5.0)}},
    }}


@pytest.mark.parametrize('ours_epe, ours_bad3, synthetic_epe, met', [
    (1.0, 15.0, 0.9, True),
    (1.3, 15.0, 0.9, False),   # EPE not below SGBM
    (1.0, 25.0, 0.9, False),   # bad-3 not below SGBM
    (1.0, 15.0, 1.1, False),   # synthetic EPE above 1 px
])
def test_the_goal_needs_both_real_scores_below_sgbm_and_synthetic_epe_within_1px(
        ours_epe: float, ours_bad3: float, synthetic_epe: float, met: bool) -> None:
    verdict, summary = goal_report(_results(ours_epe, ours_bad3, synthetic_epe))
    assert verdict is met
    assert f'Motorcycle EPE {ours_epe:.2f} px' in summary and 'SGBM stereo_image_proc 1.20 px / 20.0 %' in summary


def test_promoting_a_briefly_trained_checkpoint_marks_it_preliminary(tmp_path: Path) -> None:
    config = load(TrainConfig, overrides=[
        'model.max_disparity=64', 'data.max_disparity=64', 'data.height=64', 'data.width=128',
        'data.disparity_range=[8, 48]', 'batch_size=1', 'workers=0', 'steps=1', 'validate_every=1000',
        'validation_samples=1', 'score_real_pair=false'])
    train(config, tmp_path / 'run', progress=False)
    destination = tmp_path / 'default.safetensors'
    met, _ = promote(tmp_path / 'run' / 'model_latest.safetensors', destination, synthetic_samples=1)
    assert met is False
    provenance = load_checkpoint(destination).provenance
    assert provenance['preliminary'] is True and provenance['steps'] == 1
    assert '| motorcycle (1) | sgbm-stereo_image_proc |' in provenance['evaluation_table']
    with pytest.warns(PreliminaryCheckpointWarning, match='1 training steps; Motorcycle EPE'):
        Predictor.from_checkpoint(destination, device='cpu')
