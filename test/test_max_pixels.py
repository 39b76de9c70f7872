"""max_pixels: a pair the network would run on with more pixels runs smaller, or is refused; memory is given back
after a rare large frame (issue 11: an 8000x6000 pair was OOM-killed; a 2000x1500 one left RSS 1.0 GB)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stereonet_ros.image_io import write_png
from stereonet_ros.inference import (DEFAULT_MAX_PIXELS, MIN_INFERENCE_SCALE, InputError, Predictor, fitted_scale,
                                     scaled_size)
from stereonet_ros.model.checkpoint import Checkpoint, InputContract
from stereonet_ros.model.stereonet import StereoNet, StereoNetConfig
from stereonet_ros.node_config import NodeConfig, NodeConfigError


def _pixels(height: int, width: int, scale: float) -> int:
    h, w = scaled_size(height, width, scale)
    return h * w


def test_a_pair_exactly_at_the_budget_keeps_its_scale_and_one_pixel_over_runs_smaller() -> None:
    assert fitted_scale(480, 640, 1.0, 480 * 640) == 1.0
    smaller = fitted_scale(480, 640, 1.0, 480 * 640 - 1)
    assert smaller < 1.0 and _pixels(480, 640, smaller) <= 480 * 640 - 1
    assert _pixels(480, 640, smaller / 0.99) > 480 * 640 - 1 or smaller / 0.99 >= 1.0  # the largest that fits
    # A robot camera at the largest test-time scale: 1280x720 x 2.5 = 5.76 MP > 4 MP.
    fitted = fitted_scale(720, 1280, 2.5, DEFAULT_MAX_PIXELS)
    assert 2.0 < fitted < 2.5 and _pixels(720, 1280, fitted) <= DEFAULT_MAX_PIXELS
    assert fitted_scale(37, 53, 1.37, 10_000) == 1.37  # fractional sizes below the budget are left alone


def test_a_pair_too_large_even_at_the_smallest_scale_is_refused_naming_the_budget() -> None:
    assert fitted_scale(6000, 8000, 1.0, DEFAULT_MAX_PIXELS) == pytest.approx(0.2887, abs=1e-3)
    with pytest.raises(InputError, match=r'8000x6000 image is too large: even at scale 0.1 the network would run on '
                                         r'480000 pixels, more than max_pixels 100000'):
        fitted_scale(6000, 8000, 1.0, 100_000)
    assert fitted_scale(6000, 8000, 1.0, 480_000) == pytest.approx(MIN_INFERENCE_SCALE, rel=1e-2)


def _small_predictor() -> Predictor:
    config = StereoNetConfig(in_channels=1, k_downsampling_layers=2, k_refinement_layers=2, feature_channels=4,
                             cost_filter_channels=4, refiner_channels=4, max_disparity=31, disparity_grid='exact',
                             cost_volume_border='replicate')
    torch.manual_seed(0)
    contract = InputContract(color='gray', left_mean=(127.5,), left_std=(127.5,), right_mean=(127.5,),
                             right_std=(127.5,), max_disparity=31.0, pad_multiple=4)
    return Predictor(Checkpoint(config=config, contract=contract, state_dict=StereoNet(config).state_dict()),
                     device='cpu')


def test_infer_runs_a_pair_over_the_budget_smaller_and_answers_at_the_input_size() -> None:
    predictor = _small_predictor()
    pair = np.random.default_rng(0).integers(0, 256, (2, 64, 96), dtype=np.uint8)
    full = predictor.infer(pair[0], pair[1], max_pixels=64 * 96)
    assert full.scale == 1.0 and full.network_size == (64, 96)
    limited = predictor.infer(pair[0], pair[1], max_pixels=64 * 96 - 1)
    assert limited.scale < 1.0 and limited.network_size[0] * limited.network_size[1] <= 64 * 96 - 1
    assert limited.disparity.shape == (64, 96)
    assert limited.max_disparity == pytest.approx(31.0 * 96 / limited.network_size[1])


def test_the_node_parameter_takes_its_declared_range() -> None:
    assert NodeConfig().max_pixels == DEFAULT_MAX_PIXELS
    assert NodeConfig(max_pixels=65_536).max_pixels == 65_536
    with pytest.raises(NodeConfigError, match=r'max_pixels=65535: must be in \[65536, 50000000\]'):
        NodeConfig(max_pixels=65_535)


def test_a_large_frame_s_memory_is_given_back_before_the_next_small_one() -> None:
    # In a fresh process: RSS after a 2000x1500 pair that followed a 320x240 one stays far below its peak.
    script = '''
import warnings, numpy as np
warnings.simplefilter('ignore')
from stereonet_ros.inference import Predictor
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
predictor = Predictor.from_checkpoint(device='cpu')
rng = np.random.default_rng(0)
small, big = rng.integers(0, 256, (240, 320), dtype=np.uint8), rng.integers(0, 256, (1500, 2000), dtype=np.uint8)
predictor.infer(small, small); before = rss()
predictor.infer(big, big); after = rss()
import resource; peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(before, after, peak)
'''
    completed = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    before, after, peak = map(float, completed.stdout.split())
    assert peak > before + 600  # the large pair really took memory (about 1.4 GB here)
    assert after < before + 0.25 * (peak - before), (before, after, peak)


def test_stereonet_infer_warns_in_one_line_when_max_pixels_shrinks_the_pair(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    left, right = (tmp_path / 'l.png', tmp_path / 'r.png')
    write_png(left, rng.integers(0, 256, (120, 160), dtype=np.uint8))
    write_png(right, rng.integers(0, 256, (120, 160), dtype=np.uint8))
    program = Path(sys.executable).parent / 'stereonet-infer'
    completed = subprocess.run([str(program), str(left), str(right), '--out', str(tmp_path / 'd.npy'), '--device',
                                'cpu', '--max-pixels', '10000'], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    warnings = [line for line in completed.stderr.splitlines() if 'instead of' in line]
    assert warnings == ['stereonet-infer: warning: 160x120 pair run at inference scale 0.720 instead of 1: more '
                        'than --max-pixels 10000'], completed.stderr
    assert np.load(tmp_path / 'd.npy').shape == (120, 160)
    refused = subprocess.run([str(program), str(left), str(right), '--out', str(tmp_path / 'e.npy'), '--device',
                              'cpu', '--max-pixels', '100'], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
        'stereonet-infer: error: 160x120 image is too large: even at scale 0.1 the network would run on 192 pixels, '
        'more than max_pixels 100')
    assert not (tmp_path / 'e.npy').exists()
