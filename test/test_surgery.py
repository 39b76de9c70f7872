"""Exact weight edits (stereonet_ros.model.surgery) and the refinement checks built on them."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereonet_ros.inference import DEFAULT_CHECKPOINT
from stereonet_ros.model.checkpoint import Checkpoint, load_checkpoint
from stereonet_ros.model.stereonet import ModelConfigError, StereoNet, StereoNetConfig
from stereonet_ros.model.surgery import (DEAD_REFINER_WEIGHT, SurgeryError, dead_refiners, reinitialized_refiners,
                                         truncated_after, with_disparity_unit, without_image_guidance)
from stereonet_ros.samples import motorcycle

SMALL = StereoNetConfig(in_channels=1, max_disparity=64, feature_channels=8, cost_filter_channels=8,
                        refiner_channels=8, disparity_grid='exact', cost_volume_border='replicate')


@pytest.fixture(scope='module')
def trained() -> Checkpoint:
    """Trained weights (the bundled default, whichever it is): real magnitudes, not random ones."""
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope='module')
def real_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 160x320 crop of Middlebury Motorcycle (gray, normalized as our checkpoints take it)."""
    sample = motorcycle()

    def tensor(image: np.ndarray) -> torch.Tensor:
        gray = image[100:260, 200:520].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return torch.from_numpy((gray - 127.5) / 127.5)[None, None]

    return tensor(sample.left), tensor(sample.right)


def _pyramid(config: StereoNetConfig, state: dict[str, torch.Tensor],
             pair: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    model = StereoNet(config).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        return list(model(*pair, with_pyramid=True).pyramid)


def test_a_new_disparity_unit_keeps_every_level_within_1e_4_px(trained, real_pair) -> None:
    config, state = trained.config, trained.state_dict
    before = _pyramid(config, state, real_pair)
    for unit in (config.refiner_disparity_unit * 32.0, config.refiner_disparity_unit / 3.0):
        new_config, new_state = with_disparity_unit(config, state, unit)
        assert new_config.refiner_disparity_unit == unit
        after = _pyramid(new_config, new_state, real_pair)
        for level, (old, new) in enumerate(zip(before, after, strict=True)):
            assert float((old - new).abs().max()) <= 1e-4, f'level {level}'
    assert float(before[-1].max()) > 10.0  # real disparities: the unit matters numerically


def test_the_unit_scales_only_the_disparity_channel_of_the_first_refiner_layer(trained) -> None:
    config, state = trained.config, trained.state_dict
    new_config, new_state = with_disparity_unit(config, state, config.refiner_disparity_unit * 4.0)
    changed = sorted(key for key in state if not torch.equal(state[key], new_state[key]))
    assert changed == [f'refiners.{i}.net.segment_0_conv_0.weight' for i in range(config.k_refinement_layers)]
    for key in changed:
        assert torch.equal(new_state[key][:, :config.in_channels], state[key][:, :config.in_channels])
        assert torch.allclose(new_state[key][:, config.in_channels:], state[key][:, config.in_channels:] * 4.0)
    assert torch.equal(state[changed[0]], trained.state_dict[changed[0]])  # the input is not edited


@pytest.mark.parametrize('unit', [0.0, -1.0, float('nan'), float('inf')])
def test_a_unit_that_is_not_finite_and_positive_is_refused(unit: float) -> None:
    with pytest.raises(ModelConfigError, match='refiner_disparity_unit'):
        StereoNetConfig(refiner_disparity_unit=unit)


def test_unit_one_is_the_seed_behaviour_bit_for_bit(real_pair) -> None:
    torch.manual_seed(0)
    model = StereoNet(SMALL).eval()
    with torch.no_grad():
        image, coarse = real_pair[0][:, :, :40, :80], torch.rand(1, 1, 40, 80) * 50
        refiner = model.refiners[0]
        expected = refiner.net(torch.cat((image, coarse), dim=1))  # the seed's concatenation, raw pixels
        assert torch.equal(refiner(image, coarse), expected)


def test_a_refiner_is_dead_below_the_threshold_and_alive_at_it() -> None:
    torch.manual_seed(0)
    state = StereoNet(SMALL).state_dict()
    key = 'refiners.1.net.segment_0_conv_0.weight'
    state[key] = torch.full_like(state[key], DEAD_REFINER_WEIGHT * 0.999)
    assert dead_refiners(SMALL, state) == [1]
    state[key][3, 1, 2, 0] = 5.0  # the disparity channel does not count: its scale is the unit's
    assert dead_refiners(SMALL, state) == [1]
    state[key][3, 0, 2, 0] = -DEAD_REFINER_WEIGHT  # one image weight exactly at the threshold: alive
    assert dead_refiners(SMALL, state) == []


def test_a_revived_refiner_is_alive_and_starts_as_the_identity(real_pair) -> None:
    torch.manual_seed(0)
    state = StereoNet(SMALL).state_dict()
    rng_before = torch.random.get_rng_state()
    revived = reinitialized_refiners(SMALL, state, [2], seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert dead_refiners(SMALL, revived) == []
    first = revived['refiners.2.net.segment_0_conv_0.weight']
    assert not torch.equal(first, state['refiners.2.net.segment_0_conv_0.weight'])
    assert torch.equal(revived['refiners.2.net.segment_2_conv_0.weight'],
                       torch.zeros_like(revived['refiners.2.net.segment_2_conv_0.weight']))
    # A zero last layer: the output is refiner 1's level resized, as with the refiner cut off.
    pair = (real_pair[0][:, :, :64, :128], real_pair[1][:, :, :64, :128])
    assert torch.equal(_pyramid(SMALL, revived, pair)[-1], _pyramid(SMALL, truncated_after(SMALL, state, 2), pair)[-1])
    assert torch.equal(reinitialized_refiners(SMALL, state, [2], seed=7)[
        'refiners.2.net.segment_0_conv_0.weight'], first)  # seeded
    with pytest.raises(SurgeryError, match='refiner 3'):
        reinitialized_refiners(SMALL, state, [3])


def test_without_image_guidance_equals_zero_guide_images(real_pair) -> None:
    torch.manual_seed(0)
    model = StereoNet(SMALL).eval()
    pair = (real_pair[0][:, :, :64, :128], real_pair[1][:, :, :64, :128])
    handles = [refiner.register_forward_pre_hook(lambda _m, args: (torch.zeros_like(args[0]), args[1]))
               for refiner in model.refiners]
    with torch.no_grad():
        expected = model(*pair)
    for handle in handles:
        handle.remove()
    ablated = _pyramid(SMALL, without_image_guidance(SMALL, model.state_dict()), pair)[-1]
    assert torch.allclose(ablated, expected, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(*pair), expected, atol=1e-3)  # the guide did matter


def test_truncation_carries_a_level_to_full_size_by_bilinear_resizes(real_pair) -> None:
    torch.manual_seed(0)
    model = StereoNet(SMALL).eval()
    state = model.state_dict()
    pair = (real_pair[0][:, :, :64, :128], real_pair[1][:, :, :64, :128])
    pyramid = _pyramid(SMALL, state, pair)
    assert torch.equal(_pyramid(SMALL, truncated_after(SMALL, state, SMALL.k_refinement_layers), pair)[-1],
                       pyramid[-1])
    level = pyramid[0]
    for size in model.refinement_sizes(64, 128):
        level = F.relu(F.interpolate(level, size=size, mode='bilinear', align_corners=True))
    assert torch.allclose(_pyramid(SMALL, truncated_after(SMALL, state, 0), pair)[-1], level, atol=1e-5)
    with pytest.raises(SurgeryError, match='level 4'):
        truncated_after(SMALL, state, 4)


def test_weights_that_do_not_match_the_config_are_refused() -> None:
    state = StereoNet(SMALL).state_dict()
    rgb = dataclasses.replace(SMALL, in_channels=3)
    with pytest.raises(SurgeryError, match=r'expected \(W, 4, k, k\)'):
        without_image_guidance(rgb, state)


@pytest.mark.parametrize('ablated_epe, uses', [(2.7, True), (2.6999, False), (2.4, False)])
def test_the_guide_check_passes_a_rise_of_exactly_0_2_px(ablated_epe: float, uses: bool) -> None:
    from stereonet_ros.evaluation.metrics import DisparityMetrics
    from stereonet_ros.evaluation.refinement import GUIDE_ABLATION_MIN_RISE_PX, RefinementScores

    assert GUIDE_ABLATION_MIN_RISE_PX == 0.2  # issue 9's threshold

    def metrics(epe: float) -> DisparityMetrics:
        return DisparityMetrics(epe=epe, bad1=0, bad2=0, bad3=0, d1=0, density=1.0, valid_pixels=1, predicted_pixels=1)

    scores = RefinementScores(levels=[metrics(3.0), metrics(2.5)], without_guide=metrics(ablated_epe))
    assert scores.uses_guide is uses
    assert scores.to_dict()['uses_guide'] is uses and scores.to_dict()['levels'][0]['epe'] == 3.0
