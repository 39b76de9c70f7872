"""The refiners' photometric cue (``StereoNetConfig.refiner_photometric_cue``): the warp it is built
on, the exact edit that adds it to trained weights, and the guide ablation that must still zero it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereonet_ros.inference import DEFAULT_CHECKPOINT
from stereonet_ros.model.checkpoint import load_checkpoint
from stereonet_ros.model.stereonet import StereoNet, StereoNetConfig, warp_by_disparity
from stereonet_ros.model.surgery import (SurgeryError, dead_refiners, reinitialized_refiners, with_photometric_cue,
                                         without_image_guidance)
from stereonet_ros.samples import motorcycle

SMALL = StereoNetConfig(in_channels=1, max_disparity=64, feature_channels=8, cost_filter_channels=8,
                        refiner_channels=8, disparity_grid='exact', cost_volume_border='replicate',
                        refiner_photometric_cue=True)


def _smooth_pair(disparity: float, width: int = 160, height: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth left image and the right view of a fronto-parallel plane at ``disparity``:
    right(x) = left(x + d), so left pixel x matches the right view at x - d."""
    y = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)

    def view(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x / 9.0) + 0.5 * torch.cos(y / 7.0)

    x = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    return view(x).expand(1, 1, height, width), view(x + disparity).expand(1, 1, height, width)


@pytest.mark.parametrize('align_corners', [True, False])
@pytest.mark.parametrize('disparity', [5.0, 2.25])  # whole and fractional pixels
def test_warping_by_the_true_disparity_recovers_the_reference_at_full_size(align_corners: bool,
                                                                          disparity: float) -> None:
    left, right = _smooth_pair(disparity)
    field = torch.full((1, 1, 96, 160), disparity)
    inner = (..., slice(8, -8))  # away from the border columns the warp repeats
    from_right = warp_by_disparity(right, field, 160, 'left', align_corners)
    from_left = warp_by_disparity(left, field, 160, 'right', align_corners)
    # Bilinear sampling of a smooth image between pixels: exact at whole pixels, close between them.
    tolerance = 1e-5 if disparity == int(disparity) else 2e-3
    assert float((from_right - left)[inner].abs().max()) <= tolerance
    assert float((from_left - right)[inner].abs().max()) <= tolerance
    assert float((right - left)[inner].abs().max()) > 0.2  # unwarped, the views differ (2.25 px: by 0.249)


@pytest.mark.parametrize('align_corners', [True, False])
def test_the_shift_is_in_input_pixels_at_every_pyramid_level(align_corners: bool) -> None:
    """A level is a resize of the input; its disparity stays in input pixels (the module's rule), so
    the warp scales it by the level's width: a 4-px disparity is 1 px at 1/4."""
    left, right = _smooth_pair(4.0)
    for size in [(48, 80), (24, 40)]:
        small_left, small_right = (F.interpolate(view, size=size, mode='bilinear', align_corners=align_corners)
                                   for view in (left, right))
        warped = warp_by_disparity(small_right, torch.full((1, 1, *size), 4.0), 160, 'left', align_corners)
        inner = (..., slice(size[1] // 8, -size[1] // 8))
        # Only the resize's own smoothing remains; the unwarped views differ by a half image unit.
        assert float((warped - small_left)[inner].abs().max()) < 0.02
        assert float((small_right - small_left)[inner].abs().max()) > 0.3


def test_a_match_outside_the_image_takes_the_edge_column() -> None:
    target = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8).expand(1, 1, 2, 8)
    warped = warp_by_disparity(target, torch.full((1, 1, 2, 8), 3.0), 8, 'left', True)
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(warped[0, 0, 0], expected, atol=1e-5)  # normalized coordinates round by ~1e-7


def test_adding_the_cue_to_trained_weights_keeps_every_level_within_1e_4_px() -> None:
    trained = load_checkpoint(DEFAULT_CHECKPOINT)
    assert not trained.config.refiner_photometric_cue
    config, state = with_photometric_cue(trained.config, trained.state_dict)
    assert config.refiner_photometric_cue and config.refiner_guide_channels == 2 * trained.config.in_channels
    sample = motorcycle()
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    pair = [torch.from_numpy((image[100:260, 200:520].astype(np.float32) @ weights - 127.5) / 127.5)[None, None]
            for image in (sample.left, sample.right)]
    pyramids = []
    for model_config, model_state in ((trained.config, trained.state_dict), (config, state)):
        model = StereoNet(model_config).eval()
        model.load_state_dict(model_state)
        with torch.no_grad():
            pyramids.append(model(*pair, with_pyramid=True).pyramid)
    for level, (old, new) in enumerate(zip(*pyramids, strict=True)):
        assert float((old - new).abs().max()) <= 1e-4, f'level {level}'
    assert float(pyramids[0][-1].max()) > 10.0  # real disparities
    with pytest.raises(SurgeryError, match='already'):
        with_photometric_cue(config, state)


def test_without_image_guidance_also_zeroes_the_cue() -> None:
    """The ablation must equal refiners given zero images: a zero target warps to zeros, 0 - 0 = 0."""
    torch.manual_seed(0)
    model = StereoNet(SMALL).eval()
    left, right = _smooth_pair(6.0, width=128, height=64)
    right = right + 0.05 * torch.randn_like(right)
    handles = [refiner.register_forward_pre_hook(
        lambda _m, args: (torch.zeros_like(args[0]), args[1], torch.zeros_like(args[2])))
        for refiner in model.refiners]
    with torch.no_grad():
        expected = model(left, right)
    for handle in handles:
        handle.remove()
    ablated_model = StereoNet(SMALL).eval()
    ablated_model.load_state_dict(without_image_guidance(SMALL, model.state_dict()))
    with torch.no_grad():
        assert torch.allclose(ablated_model(left, right), expected, atol=1e-5)
        assert not torch.allclose(model(left, right), expected, atol=1e-3)


def test_only_the_cue_can_keep_a_refiner_alive() -> None:
    """A refiner whose image weights decayed but whose cue weights did not still looks at the images."""
    state = StereoNet(SMALL).state_dict()
    key = 'refiners.1.net.segment_0_conv_0.weight'
    state[key][:, 0] = 0.0  # the image channel
    state[key][:, 1] = 0.0  # the cue channel
    assert dead_refiners(SMALL, state) == [1]
    state[key][0, 1, 1, 1] = 0.5
    assert dead_refiners(SMALL, state) == []


def test_a_refiner_with_the_cue_refuses_to_run_without_the_warped_view() -> None:
    model = StereoNet(SMALL)
    with pytest.raises(ValueError, match='warped target'):
        model.refiners[0](torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_reinitialized_refiners_with_the_cue_have_its_channels() -> None:
    revived = reinitialized_refiners(SMALL, StereoNet(SMALL).state_dict(), [0, 1, 2], seed=3)
    for index in range(3):
        assert revived[f'refiners.{index}.net.segment_0_conv_0.weight'].shape[1] == 3
    seed_like = dataclasses.replace(SMALL, refiner_photometric_cue=False)
    with pytest.raises(SurgeryError, match=r'expected \(W, 2, k, k\)'):
        dead_refiners(seed_like, revived)
