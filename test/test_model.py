"""StereoNet: seed reproduction stage by stage, cost volume and soft-argmin known answers, shapes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereonet_ros.model.checkpoint import load_checkpoint
from stereonet_ros.model.stereonet import (ModelConfigError, StereoNet, StereoNetConfig, StereoOutput,
                                           difference_cost_volume, disparity_candidates, fold_batchnorm,
                                           guided_to, soft_argmin, to_channels_last)

TAGS = ('96x160', '100x170')
# The fixture README's recommended tolerances (CPU, float32).
DISPARITY_TOLERANCE = 1e-3
FEATURE_TOLERANCE = 1e-4


def _max_difference(ours: torch.Tensor, reference: np.ndarray) -> float:
    assert tuple(ours.shape) == reference.shape, f'shape {tuple(ours.shape)} != {reference.shape}'
    return float((ours.detach() - torch.from_numpy(reference)).abs().max())


@pytest.fixture(scope='module')
def seed_model(seed_checkpoint_path: Path) -> StereoNet:
    return load_checkpoint(seed_checkpoint_path).build_model()


@pytest.mark.parametrize('tag', TAGS)
def test_seed_fixture_is_reproduced_at_every_stage(seed_model: StereoNet, seed_reference: dict[str, np.ndarray],
                                                    tag: str) -> None:
    model_input = torch.from_numpy(seed_reference[f'input_{tag}'])
    left, right = model_input[:, :1], model_input[:, 1:]
    with torch.no_grad():
        output = seed_model(left, right, with_right=True)
        features_left = seed_model.feature_extractor(left)
        features_right = seed_model.feature_extractor(right)
    assert isinstance(output, StereoOutput)
    assert _max_difference(features_left, seed_reference[f'features_left_{tag}']) <= FEATURE_TOLERANCE
    assert _max_difference(features_right, seed_reference[f'features_right_{tag}']) <= FEATURE_TOLERANCE
    assert output.cost is not None
    assert _max_difference(output.cost, seed_reference[f'cost_filtered_{tag}']) <= FEATURE_TOLERANCE
    assert len(output.pyramid) == 4
    for level, disparity in enumerate(output.pyramid):
        assert _max_difference(disparity, seed_reference[f'pyramid_level{level}_{tag}']) <= DISPARITY_TOLERANCE
    assert _max_difference(output.disparity, seed_reference[f'disparity_{tag}']) <= DISPARITY_TOLERANCE
    assert output.right_pyramid is not None
    assert _max_difference(output.right_pyramid[-1], seed_reference[f'disparity_right_{tag}']) <= DISPARITY_TOLERANCE


@pytest.mark.parametrize('tag', TAGS)
def test_folded_channels_last_network_matches_the_seed(seed_model: StereoNet, seed_reference: dict[str, np.ndarray],
                                                       tag: str) -> None:
    fast = to_channels_last(fold_batchnorm(seed_model))
    model_input = torch.from_numpy(seed_reference[f'input_{tag}']).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        disparity = fast(model_input[:, :1], model_input[:, 1:])
    assert _max_difference(disparity, seed_reference[f'disparity_{tag}']) <= DISPARITY_TOLERANCE


def test_fold_batchnorm_leaves_the_original_model_untouched(seed_model: StereoNet) -> None:
    before = {key: value.clone() for key, value in seed_model.state_dict().items()}
    fold_batchnorm(seed_model)
    after = seed_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


def _naive_cost_volume(reference: torch.Tensor, target: torch.Tensor, count: int, side: str,
                       border: str) -> torch.Tensor:
    # The definition, written as a loop: the oracle for the vectorized version.
    batch, channels, height, width = reference.shape
    cost = torch.zeros(batch, channels, count, height, width)
    for shift in range(count):
        for x in range(width):
            source = x - shift if side == 'left' else x + shift
            if 0 <= source < width:
                cost[:, :, shift, :, x] = reference[..., x] - target[..., source]
            elif border == 'replicate':
                edge = min(max(source, 0), width - 1)
                cost[:, :, shift, :, x] = reference[..., x] - target[..., edge]
    return cost


@pytest.mark.parametrize('side', ['left', 'right'])
@pytest.mark.parametrize('border', ['zero', 'replicate'])
def test_cost_volume_equals_its_definition(side: str, border: str) -> None:
    generator = torch.Generator().manual_seed(3)
    reference = torch.randn(2, 3, 4, 9, generator=generator)
    target = torch.randn(2, 3, 4, 9, generator=generator)
    ours = difference_cost_volume(reference, target, 12, side=side, border=border)  # type: ignore[arg-type]
    assert ours.shape == (2, 3, 12, 4, 9)
    assert torch.allclose(ours, _naive_cost_volume(reference, target, 12, side, border), atol=0)


@pytest.mark.parametrize('shift', [0, 1, 5])
def test_shifted_image_pair_gives_zero_cost_exactly_at_its_shift(shift: int) -> None:
    generator = torch.Generator().manual_seed(7)
    scene = torch.randn(1, 4, 6, 40, generator=generator)
    # A left-view point at x appears at x - shift in the right view: right[x] = scene[x + shift].
    left = scene[..., :32]
    right = scene[..., shift:shift + 32]
    cost = difference_cost_volume(left, right, 8, side='left', border='replicate')
    magnitude = cost.abs().sum(dim=1)[0]  # (D, h, w)
    inside = magnitude[:, :, 8:]  # columns where every candidate has a real partner
    assert torch.all(inside[shift] == 0)
    others = torch.cat([inside[:shift], inside[shift + 1:]])
    assert torch.all(others > 0)
    # And from the right view: right[x] = left[x + shift].
    cost_right = difference_cost_volume(right, left, 8, side='right', border='replicate')
    magnitude_right = cost_right.abs().sum(dim=1)[0][:, :, :32 - 8]
    assert torch.all(magnitude_right[shift] == 0)


def test_cost_volume_is_built_on_the_features_device_without_host_tensors() -> None:
    reference = torch.randn(1, 2, 3, 10, dtype=torch.float64)
    cost = difference_cost_volume(reference, reference.clone(), 4)
    assert cost.dtype == torch.float64 and cost.device == reference.device


@pytest.mark.parametrize('grid', ['seed_linspace', 'exact'])
@pytest.mark.parametrize('index', [0, 7, 31])
def test_soft_argmin_of_a_one_hot_cost_gives_the_candidate(grid: str, index: int) -> None:
    config = StereoNetConfig(disparity_grid=grid)  # type: ignore[arg-type]
    candidates = disparity_candidates(config)
    cost = torch.full((1, config.num_candidates, 2, 3), 100.0)
    cost[:, index] = 0.0  # the minimum sits at candidate `index`
    disparity = soft_argmin(cost, candidates)
    assert disparity.shape == (1, 1, 2, 3)
    expected = 256.0 * index / 31 if grid == 'seed_linspace' else 8.0 * index
    assert torch.allclose(disparity, torch.full_like(disparity, expected), atol=1e-4)


def test_candidate_grids_follow_seed_and_paper() -> None:
    seed = disparity_candidates(StereoNetConfig())
    assert seed.shape == (32,) and float(seed[1]) == pytest.approx(256 / 31)  # 8.258 px steps
    paper = disparity_candidates(StereoNetConfig(max_disparity=192, disparity_grid='exact'))
    assert paper.shape == (24,) and float(paper[-1]) == 184.0 and float(paper[1]) == 8.0


@pytest.mark.parametrize('height, width', [(37, 51), (64, 96), (9, 8)])
def test_any_size_in_gives_the_same_size_out(height: int, width: int) -> None:
    torch.manual_seed(0)
    model = StereoNet(StereoNetConfig(in_channels=3, max_disparity=64, disparity_grid='exact',
                                      cost_volume_border='replicate')).eval()
    left, right = torch.randn(2, 1, 3, height, width)
    with torch.no_grad():
        output = model(left, right, with_pyramid=True)
    assert output.disparity.shape == (1, 1, height, width)
    assert output.pyramid[0].shape == (1, 1, -(-height // 8), -(-width // 8))
    assert [tuple(level.shape[-2:]) for level in output.pyramid[1:]] == model.refinement_sizes(height, width)
    assert output.right_pyramid is None
    assert bool((output.disparity >= 0).all())  # the final ReLU


@pytest.mark.parametrize('height, width', [(37, 51), (64, 96)])
def test_a_network_without_refiners_answers_at_the_input_size(height: int, width: int) -> None:
    """k_refinement_layers=0 (a valid config: the seed's range is 0..6) once answered at 1/8 of the input
    size, so a Predictor cropped that map to the image's size and returned a 1/8-size disparity: its output
    is its soft argmin carried to the input size, guided by the left image (guided_to, tested below)."""
    torch.manual_seed(0)
    model = StereoNet(StereoNetConfig(max_disparity=64, k_refinement_layers=0, disparity_grid='exact')).eval()
    left, right = torch.randn(2, 1, 1, height, width)
    with torch.no_grad():
        output = model(left, right, with_pyramid=True)
        plain = model(left, right)
    assert len(output.pyramid) == 1 and output.pyramid[0].shape == (1, 1, -(-height // 8), -(-width // 8))
    carried = guided_to(output.pyramid[0], left, 8, align_corners=True)
    assert carried.shape == (1, 1, height, width)
    assert torch.equal(output.disparity, carried) and torch.equal(plain, carried)


@pytest.mark.parametrize('align_corners', [True, False])
@pytest.mark.parametrize('height, width', [(37, 51), (64, 96), (8, 9)])
def test_guided_to_an_image_without_contrast_is_the_bilinear_resize(height: int, width: int,
                                                                     align_corners: bool) -> None:
    """With no floor on the spatial weights and nothing in the image to choose by, each pixel's weights are
    the bilinear resize's: pins the cell geometry against torch's own resize, fractional sizes included."""
    torch.manual_seed(0)
    level = torch.rand(2, 1, -(-height // 8), -(-width // 8)) * 50
    image = torch.full((2, 1, height, width), 0.3)
    guided = guided_to(level, image, 8, align_corners, floor=0.0)
    bilinear = F.interpolate(level, size=(height, width), mode='bilinear', align_corners=align_corners)
    torch.testing.assert_close(guided, bilinear, atol=1e-4, rtol=0)


def test_guided_to_places_a_depth_edge_where_the_image_has_it() -> None:
    """A near surface (40 px) left of column 27 and a far one (10 px) from it, the image dark and bright on
    either side; the cost volume's cell over the edge (columns 24-31) holds a blend (25 px). The bilinear
    resize smears the edge over two cells; with the image the pixels take their own side."""
    height = width = 64
    columns = torch.arange(width)
    truth = torch.where(columns < 27, 40.0, 10.0).expand(height, width)
    image = torch.where(columns < 27, -0.8, 0.6).expand(1, 1, height, width).contiguous()
    cells = torch.tensor([40.0, 40.0, 40.0, 25.0, 10.0, 10.0, 10.0, 10.0])
    level = cells.expand(1, 1, 8, 8).contiguous()
    guided = guided_to(level, image, 8, align_corners=True)[0, 0]
    bilinear = F.interpolate(level, size=(height, width), mode='bilinear', align_corners=True)[0, 0]
    near_edge = slice(16, 40)
    assert float((guided - truth)[:, near_edge].abs().max()) < 0.5
    assert float((bilinear - truth)[:, near_edge].abs().max()) > 10.0
    # Away from the edge both are the surface itself.
    assert float((guided - truth)[:, :8].abs().max()) < 1e-4 and float((guided - truth)[:, 48:].abs().max()) < 1e-4


def test_guided_to_takes_only_the_nine_nearest_cells() -> None:
    """One cell of 100 px among zeros: a pixel whose nearest cell is two or more cells from it gets exactly 0,
    however much it looks like that cell (the image is constant), and nothing exceeds the spike."""
    level = torch.zeros(1, 1, 6, 6)
    level[0, 0, 2, 2] = 100.0
    image = torch.zeros(1, 1, 48, 48)
    guided = guided_to(level, image, 8, align_corners=True)[0, 0]
    nearest = torch.round(torch.arange(48) * 5 / 47)  # align_corners: pixel x sits at x * (6 - 1) / (48 - 1) cells
    far = ((nearest - 2).abs() >= 2)
    assert float(guided[far, :].abs().max()) == 0.0 and float(guided[:, far].abs().max()) == 0.0
    assert float(guided.max()) <= 100.0 and float(guided[~far][:, ~far].min()) > 0.0


def test_guided_to_answers_a_pixel_unlike_every_cell_near_it() -> None:
    """A one-pixel highlight far brighter than any cell mean around it: each of its nine weights alone would
    underflow to 0 in float32 (exp(-25 * 1000)); it still gets a finite answer among its cells."""
    level = torch.arange(64.0).view(1, 1, 8, 8)
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, 29, 35] = 1000.0
    guided = guided_to(level, image, 8, align_corners=False)[0, 0]
    assert bool(torch.isfinite(guided).all())
    nine = level[0, 0, 2:5, 3:6]  # the highlight's cell (3, 4) and its neighbours
    assert float(nine.min()) <= float(guided[29, 35]) <= float(nine.max())


def test_guided_to_refuses_a_level_that_is_not_the_images_grid() -> None:
    with pytest.raises(ValueError, match='cells'):
        guided_to(torch.zeros(1, 1, 5, 7), torch.zeros(1, 1, 64, 64), 8, align_corners=True)


def test_training_outputs_carry_both_pyramids_and_gradients() -> None:
    torch.manual_seed(0)
    model = StereoNet(StereoNetConfig(max_disparity=64, k_refinement_layers=2)).train()
    left, right = torch.randn(2, 2, 1, 32, 48)
    output = model(left, right, with_right=True)
    assert output.right_pyramid is not None and len(output.right_pyramid) == 3
    (output.disparity.mean() + output.right_pyramid[-1].mean()).backward()
    assert model.feature_extractor.net.segment_0_conv_0.weight.grad is not None


def test_state_dict_keys_are_the_seeds(seed_checkpoint_path: Path) -> None:
    ours = set(StereoNet(StereoNetConfig()).state_dict())
    theirs = set(load_checkpoint(seed_checkpoint_path).state_dict)
    assert ours == theirs


@pytest.mark.parametrize('change, message', [
    ({'in_channels': 2}, r'in_channels=2: must be 1 or 3'),
    ({'k_downsampling_layers': 0}, r'k_downsampling_layers=0'),
    ({'disparity_grid': 'linear'}, r"disparity_grid='linear'"),
    ({'cost_volume_border': 'wrap'}, r"cost_volume_border='wrap'"),
    ({'max_disparity': 8}, r'max_disparity=8: gives 1 candidate'),
])
def test_bad_config_values_are_refused_by_name(change: dict[str, object], message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        StereoNetConfig(**change)  # type: ignore[arg-type]


def test_config_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(ModelConfigError, match=r"unknown StereoNetConfig key\(s\) \['max_disp'\]"):
        StereoNetConfig.from_dict({'max_disp': 192})
    assert StereoNetConfig.from_dict(StereoNetConfig(max_disparity=192).to_dict()).max_disparity == 192


@pytest.mark.parametrize('left_shape, right_shape, message', [
    ((1, 3, 32, 32), (1, 1, 32, 32), r'must both be \(B, 1, H, W\)'),
    ((1, 1, 32, 32), (1, 1, 32, 40), r'must both be'),
    ((1, 1, 4, 32), (1, 1, 4, 32), r'at least 8x8'),
])
def test_bad_input_shapes_are_refused(left_shape: tuple[int, ...], right_shape: tuple[int, ...], message: str) -> None:
    model = StereoNet(StereoNetConfig()).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(left_shape), torch.zeros(right_shape))


def test_matching_confidence_is_one_for_a_decided_match_and_zero_for_a_uniform_cost() -> None:
    from stereonet_ros.model.stereonet import matching_confidence
    cost = torch.zeros(1, 24, 2, 2)
    cost[0, :, 0, 0] = 1000.0
    cost[0, 5, 0, 0] = 0.0  # one candidate takes everything
    confidence = matching_confidence(cost)
    assert confidence.shape == (1, 1, 2, 2)
    assert float(confidence[0, 0, 0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert float(confidence[0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-6)  # uniform
    cost[0, :, 0, 1] = torch.linspace(0, 3, 24)  # in between
    assert 0.0 < float(matching_confidence(cost)[0, 0, 0, 1]) < 1.0
