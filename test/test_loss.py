"""Tests for stereonet_ros.training.loss: Barron's robust loss and the StereoNet pyramid loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stereonet_ros.model.stereonet import soft_argmin
from stereonet_ros.training.loss import LossError, cost_distribution_loss, robust_loss, stereo_pyramid_loss

X = torch.linspace(-10.0, 10.0, 201, dtype=torch.float64)


def test_alpha_2_is_half_the_squared_scaled_residual() -> None:
    torch.testing.assert_close(robust_loss(X, 2.0, 1.5), 0.5 * (X / 1.5) ** 2)


def test_alpha_1_is_pseudo_huber() -> None:
    torch.testing.assert_close(robust_loss(X, 1.0, 2.0), torch.sqrt((X / 2.0) ** 2 + 1.0) - 1.0)


def test_alpha_0_is_cauchy() -> None:
    torch.testing.assert_close(robust_loss(X, 0.0, 0.7), torch.log(0.5 * (X / 0.7) ** 2 + 1.0))


def test_alpha_minus_infinity_is_welsch() -> None:
    torch.testing.assert_close(robust_loss(X, -math.inf, 3.0), 1.0 - torch.exp(-0.5 * (X / 3.0) ** 2))


def test_alpha_plus_infinity_is_exp_minus_one() -> None:
    x = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    torch.testing.assert_close(robust_loss(x, math.inf, 1.0), torch.exp(0.5 * x ** 2) - 1.0)


@pytest.mark.parametrize('alpha', [-2.0, -0.5, 0.5, 1.5, 3.0])
def test_general_alpha_matches_equation_1(alpha: float) -> None:
    c = 1.3
    expected = abs(alpha - 2) / alpha * (((X / c) ** 2 / abs(alpha - 2) + 1) ** (alpha / 2) - 1)
    torch.testing.assert_close(robust_loss(X, alpha, c), expected)


def test_known_values() -> None:
    x = torch.tensor([2.0], dtype=torch.float64)  # (x/c)^2 = 4 with c = 1
    assert robust_loss(x, 2.0, 1.0).item() == pytest.approx(2.0)
    assert robust_loss(x, 1.0, 1.0).item() == pytest.approx(math.sqrt(5.0) - 1.0)
    assert robust_loss(x, 0.0, 1.0).item() == pytest.approx(math.log(3.0))
    assert robust_loss(x, -math.inf, 1.0).item() == pytest.approx(1.0 - math.exp(-2.0))
    assert robust_loss(x, -2.0, 1.0).item() == pytest.approx(4.0 / -2.0 * ((4.0 / 4.0 + 1.0) ** -1.0 - 1.0))  # 1
    assert robust_loss(torch.zeros(3), 0.3, 2.0).abs().max().item() == 0.0


@pytest.mark.parametrize('limit, offsets', [(0.0, [1e-3, 1e-5, 1e-7, 1e-9]), (2.0, [1e-3, 1e-5, 1e-7, 1e-9])])
def test_loss_is_continuous_near_the_special_alphas(limit: float, offsets: list[float]) -> None:
    x = torch.linspace(-2.0, 2.0, 41)  # float32, what training uses
    exact = robust_loss(x, limit, 1.0)
    for offset in offsets:
        for alpha in (limit - offset, limit + offset):
            # For |x/c| <= 2 the slope in alpha is < 0.2 near 0 and grows only like log(1/|alpha - 2|)
            # near 2 (about 16 at 1e-9), so the gap must shrink with the offset down to a few float32
            # ulps: no cancellation blows up near the limits.
            torch.testing.assert_close(robust_loss(x, alpha, 1.0), exact, atol=50 * offset + 4e-6, rtol=0.0)


def test_large_negative_alpha_approaches_welsch() -> None:
    torch.testing.assert_close(robust_loss(X, -1e6, 1.0), robust_loss(X, -math.inf, 1.0), atol=1e-4, rtol=1e-4)


def test_tensor_alpha_gives_the_same_values_as_float_alpha_including_the_limits() -> None:
    alphas = [-math.inf, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0]
    x = torch.linspace(-4.0, 4.0, 9, dtype=torch.float64)
    grid = torch.tensor(alphas, dtype=torch.float64)[:, None].expand(-1, x.numel())  # (A, N)
    batched = robust_loss(x.expand(len(alphas), -1), grid, 1.0)
    for row, alpha in enumerate(alphas):
        torch.testing.assert_close(batched[row], robust_loss(x, alpha, 1.0))


def test_gradients_are_finite_for_every_alpha_and_residual() -> None:
    alphas = torch.tensor([-math.inf, -5.0, 0.0, 1e-8, 1.0, 2.0 - 1e-7, 2.0, 3.0, math.inf])
    alpha = alphas[:, None].expand(-1, 5).clone().requires_grad_(True)
    x = torch.tensor([0.0, 1e-6, 1.0, 10.0, 300.0]).expand(len(alphas), -1).clone().requires_grad_(True)
    torch.autograd.backward(robust_loss(x, alpha, 2.0).sum())
    assert x.grad is not None and alpha.grad is not None
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(alpha.grad).all()


def test_gradient_near_zero_is_x_over_c_squared_for_every_alpha() -> None:
    for alpha in (-math.inf, -2.0, 0.0, 1.0, 2.0, 5.0):
        x = torch.tensor([1e-3], dtype=torch.float64, requires_grad=True)
        torch.autograd.backward(robust_loss(x, alpha, 2.0))
        assert x.grad is not None
        assert x.grad.item() == pytest.approx(1e-3 / 4.0, rel=1e-3)


def test_gradcheck_of_the_general_form() -> None:
    # Not at alpha = 0 or 2 exactly: there the exact limit is used, whose d/d alpha is 0 (documented).
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    alpha = torch.tensor([-1.5, 0.5, 1.0, 3.0, 0.25, 1.75], dtype=torch.float64, requires_grad=True)
    c = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: robust_loss(a, b, s), (x, alpha, c))


@pytest.mark.parametrize('alpha, c, message', [
    (float('nan'), 1.0, 'alpha must not be NaN'),
    (torch.tensor([1.0, float('nan')]), 1.0, 'alpha must not be NaN'),
    (1.0, 0.0, r'scale c must be finite and > 0, got 0\.0'),
    (1.0, -1.0, 'scale c must be finite and > 0'),
    (1.0, math.inf, 'scale c must be finite and > 0'),
    (1.0, torch.tensor([1.0, 0.0]), 'scale c must be finite and > 0 everywhere'),
])
def test_bad_alpha_or_scale_is_refused(alpha: float | torch.Tensor, c: float | torch.Tensor, message: str) -> None:
    with pytest.raises(LossError, match=message):
        robust_loss(torch.ones(2), alpha, c)


def test_integer_residuals_are_refused() -> None:
    with pytest.raises(LossError, match='floating-point tensor, got torch.int64'):
        robust_loss(torch.ones(2, dtype=torch.int64))


# --- stereo_pyramid_loss ----------------------------------------------------------------------------

B, HEIGHT, WIDTH = 2, 8, 12


def ground_truth(seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed)) * 50.0


def test_pyramid_loss_of_a_perfect_full_resolution_prediction_is_zero() -> None:
    gt = ground_truth()
    loss = stereo_pyramid_loss([gt.clone()], None, gt, None, None, None, max_disparity=192)
    assert loss.item() == 0.0


def test_pyramid_loss_averages_levels_after_bilinear_upsampling() -> None:
    gt = ground_truth()
    coarse = torch.full((B, 1, HEIGHT // 4, WIDTH // 4), 10.0)
    fine = gt + 1.0
    loss = stereo_pyramid_loss([coarse, fine], None, gt, None, None, None, max_disparity=192, alpha=1.0, c=2.0)
    # A constant map upsamples to the same constant: its values are full-resolution pixels, not rescaled.
    level_coarse = robust_loss(10.0 - gt, 1.0, 2.0).mean()
    level_fine = robust_loss(torch.ones_like(gt), 1.0, 2.0).mean()
    torch.testing.assert_close(loss, (level_coarse + level_fine) / 2)


def test_pyramid_loss_uses_align_corners_bilinear_like_the_seed() -> None:
    gt = ground_truth()
    coarse = torch.rand(B, 1, 3, 4, generator=torch.Generator().manual_seed(1)) * 50.0
    expected = robust_loss(F.interpolate(coarse, (HEIGHT, WIDTH), mode='bilinear', align_corners=True) - gt, 1.0, 2.0)
    loss = stereo_pyramid_loss([coarse], None, gt, None, None, None, max_disparity=192)
    torch.testing.assert_close(loss, expected.mean())


def test_pyramid_loss_averages_left_and_right() -> None:
    gt_left, gt_right = ground_truth(0), ground_truth(1)
    left_only = stereo_pyramid_loss([gt_left + 1.0], None, gt_left, None, None, None, max_disparity=192)
    right_only = stereo_pyramid_loss([gt_right + 3.0], None, gt_right, None, None, None, max_disparity=192)
    both = stereo_pyramid_loss([gt_left + 1.0], [gt_right + 3.0], gt_left, gt_right, None, None, max_disparity=192)
    torch.testing.assert_close(both, (left_only + right_only) / 2)


def test_masked_pixels_have_no_loss_and_no_gradient() -> None:
    gt = ground_truth()
    gt[0, 0, 0, 0] = float('nan')  # invalid ground truth, not masked by the caller
    gt[0, 0, 0, 1] = 500.0  # beyond max_disparity
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[1, 0, 2, 3] = False  # masked by the caller
    prediction = (gt.nan_to_num(0.0) + 1.0).requires_grad_(True)
    loss = stereo_pyramid_loss([prediction], None, gt, None, valid, None, max_disparity=192)
    torch.autograd.backward(loss)
    assert prediction.grad is not None
    assert torch.isfinite(prediction.grad).all()
    for index in ((0, 0, 0, 0), (0, 0, 0, 1), (1, 0, 2, 3)):
        assert prediction.grad[index].item() == 0.0
    assert (prediction.grad[valid & (gt < 192)] != 0).all()
    # Wild predictions at masked pixels change nothing.
    wild = prediction.detach().clone()
    wild[0, 0, 0, 0] = 1e6
    wild[1, 0, 2, 3] = -1e6
    again = stereo_pyramid_loss([wild], None, gt, None, valid, None, max_disparity=192)
    torch.testing.assert_close(again, loss.detach())


def test_loss_decreases_as_the_prediction_moves_towards_the_ground_truth() -> None:
    gt = ground_truth()
    start = gt + 20.0 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(3))
    losses = [stereo_pyramid_loss([gt + t * (start - gt)], None, gt, None, None, None, max_disparity=192).item()
              for t in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] == 0.0


def test_gradient_descent_on_a_prediction_reduces_the_loss() -> None:
    gt = ground_truth()
    prediction = torch.zeros_like(gt, requires_grad=True)
    optimizer = torch.optim.Adam([prediction], lr=2.0)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss = stereo_pyramid_loss([prediction], None, gt, None, None, None, max_disparity=192)
        torch.autograd.backward(loss)
        optimizer.step()
        first = loss.item() if first is None else first
    assert first is not None and loss.item() < 0.2 * first


def test_no_valid_pixel_gives_zero_loss_with_a_graph() -> None:
    gt = torch.full((B, 1, HEIGHT, WIDTH), float('nan'))
    prediction = torch.ones_like(gt, requires_grad=True)
    loss = stereo_pyramid_loss([prediction], None, gt, None, None, None, max_disparity=192)
    assert loss.item() == 0.0
    torch.autograd.backward(loss)
    assert prediction.grad is not None and (prediction.grad == 0).all()


@pytest.mark.parametrize('kwargs, message', [
    ({'pyramid_left': []}, 'pyramid_left is empty'),
    ({'pyramid_left': [torch.zeros(B, 2, HEIGHT, WIDTH)]}, r'pyramid_left\[0\] must be \(B, 1, H, W\)'),
    ({'pyramid_left': [torch.zeros(B + 1, 1, 4, 6)]}, r'pyramid_left\[0\] has batch size 3, expected 2'),
    ({'gt_left': torch.zeros(B, HEIGHT, WIDTH)}, r'gt_left must be \(B, 1, H, W\), got shape \(2, 8, 12\)'),
    ({'valid_left': torch.ones(B, 1, HEIGHT, 5, dtype=torch.bool)}, 'valid_left has shape'),
    ({'pyramid_right': [torch.zeros(B, 1, HEIGHT, WIDTH)]}, 'pyramid_right and gt_right must both be given'),
    ({'pyramid_right': [torch.zeros(B, 1, HEIGHT, WIDTH)], 'gt_right': torch.zeros(B, 1, 4, 4)},
     r'gt_right has shape \(2, 1, 4, 4\), expected \(2, 1, 8, 12\)'),
    ({'max_disparity': 0}, 'max_disparity must be > 0, got 0'),
    ({'c': -2.0}, 'scale c must be finite and > 0'),
    ({'alpha': float('nan')}, 'alpha must not be NaN'),
])
def test_pyramid_loss_errors(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        'pyramid_left': [torch.zeros(B, 1, HEIGHT, WIDTH)], 'pyramid_right': None,
        'gt_left': torch.zeros(B, 1, HEIGHT, WIDTH), 'gt_right': None, 'valid_left': None, 'valid_right': None,
        'max_disparity': 192}
    arguments.update(kwargs)
    with pytest.raises(LossError, match=message):
        stereo_pyramid_loss(**arguments)  # type: ignore[arg-type]


# --- the cost distribution loss ---------------------------------------------------------------------------

CANDIDATES = torch.arange(24, dtype=torch.float32) * 8  # the default's grid: 24 candidates 8 px apart


def _gaussian_cost(centre: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """A cost whose softmax(-cost) is the Gaussian of ``sigma`` spacings at ``centre`` ``(B, 1, h, w)``."""
    return 0.5 * ((CANDIDATES.view(1, -1, 1, 1) - centre) / (sigma * 8.0)) ** 2


def _entropy(cost: torch.Tensor) -> torch.Tensor:
    probabilities = torch.softmax(-cost, dim=1)
    return -torch.special.xlogy(probabilities, probabilities).sum(dim=1)


def test_the_unimodal_target_has_no_pull_towards_the_candidates_at_one_spacing_and_does_at_half() -> None:
    """What the loss asks of the soft argmin: at sigma 1 the target's mean is the truth (so a cost that meets
    the target is not pixel-locked); a narrow target (sigma 0.5) would itself pull by 0.02 of a spacing."""
    truth = torch.linspace(40.0, 140.0, 401).view(1, 1, 1, -1)  # sub-candidate positions, away from the ends
    for sigma, low, high in ((1.0, 0.0, 1e-4), (0.5, 0.01, 0.05)):
        error = (soft_argmin(_gaussian_cost(truth, sigma), CANDIDATES) - truth).abs().max().item() / 8
        assert low <= error < high, (sigma, error)


def test_the_loss_is_least_when_the_cost_is_the_target_read_where_the_resize_puts_each_cell() -> None:
    """A slanted plane, d = 60 + 0.2 x (a 9x9 neighbourhood spans 1.6 px): the cross-entropy equals the target's
    entropy (its minimum) for the Gaussian at the truth of input column i (W-1)/(w-1), the align_corners=True
    resize's place for cell i, and is higher for the cell centres 8 i + 3.5 that an area resize would use."""
    height, width, cells_h, cells_w = 64, 128, 8, 16
    x = torch.arange(width, dtype=torch.float32).view(1, 1, 1, -1).expand(1, 1, height, width)
    gt = 60.0 + 0.2 * x
    columns = torch.arange(cells_w, dtype=torch.float32) * (width - 1) / (cells_w - 1)
    registered = (60.0 + 0.2 * columns).view(1, 1, 1, -1).expand(1, 1, cells_h, cells_w)
    centred = (60.0 + 0.2 * (torch.arange(cells_w) * 8 + 3.5)).view(1, 1, 1, -1).expand(1, 1, cells_h, cells_w)
    best = cost_distribution_loss(_gaussian_cost(registered), gt, None, CANDIDATES, 192.0)
    assert best.item() == pytest.approx(_entropy(_gaussian_cost(registered)).mean().item(), abs=1e-5)
    assert cost_distribution_loss(_gaussian_cost(centred), gt, None, CANDIDATES, 192.0).item() > best.item() + 1e-3


def test_cells_near_a_depth_step_unknown_truth_or_the_range_s_end_do_not_count() -> None:
    height, width = 64, 128
    gt = torch.full((1, 1, height, width), 50.0)
    gt[..., 64:] = 90.0  # a depth step at column 64
    gt[..., :16, :] = float('nan')  # unknown truth in the top rows
    gt[..., 48:, :16] = 192.0  # at max_disparity: not usable
    cost = torch.zeros(1, 24, 8, 16, requires_grad=True)
    loss = cost_distribution_loss(cost, gt, None, CANDIDATES, 192.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert cost.grad is not None and torch.isfinite(cost.grad).all()
    touched = cost.grad.abs().sum(dim=1)[0] > 0  # (8, 16) cells that count
    rows = torch.arange(8).view(-1, 1) * (height - 1) / 7
    columns = torch.arange(16).view(1, -1) * (width - 1) / 15
    near_step = (columns - 63.5).abs() < 6  # within 4 px of the step, plus the bilinear read's pixel
    assert not touched[near_step.expand(8, 16)].any()
    assert not touched[(rows < 21).expand(8, 16)].any()  # the NaN rows and the 4 px below them
    assert not touched[((rows > 43) & (columns < 21))].any()
    assert touched.sum() > 20  # and the plain cells elsewhere do


def _counted_cells(gt: torch.Tensor, cells: tuple[int, int], max_spread: float) -> int:
    cost = torch.zeros(1, 24, *cells, requires_grad=True)
    cost_distribution_loss(cost, gt, None, CANDIDATES, 192.0, max_spread=max_spread).backward()
    assert cost.grad is not None
    return int((cost.grad.abs().sum(dim=1) > 0).sum())


def test_a_neighbourhood_spanning_exactly_max_spread_counts_and_a_hair_less_allowed_does_not() -> None:
    """A ramp d = 50 + x / 4: every full 9x9 neighbourhood spans exactly 2 px (float32 holds it exactly);
    at the image's left and right edges the neighbourhood is cut and spans less."""
    gt = (50.0 + torch.arange(32, dtype=torch.float32) / 4).view(1, 1, 1, -1).expand(1, 1, 32, 32)
    assert _counted_cells(gt, (4, 4), max_spread=2.0) == 16
    # Cell columns 0, 10.3, 20.7, 31: only the two at the edges read neighbourhoods cut short.
    assert _counted_cells(gt, (4, 4), max_spread=2.0 - 1e-3) == 8


def test_no_counted_cell_gives_zero_with_a_graph() -> None:
    cost = torch.zeros(1, 24, 4, 4, requires_grad=True)
    loss = cost_distribution_loss(cost, torch.full((1, 1, 32, 32), float('nan')), None, CANDIDATES, 192.0)
    assert loss.item() == 0.0
    loss.backward()
    assert cost.grad is not None and (cost.grad == 0).all()


@pytest.mark.parametrize('kwargs, message', [
    ({'cost': torch.zeros(1, 24, 4)}, r'cost must be \(B, D, h, w\)'),
    ({'candidates': torch.arange(23.0)}, r'candidates must be \(24,\) with at least 2 values'),
    ({'gt': torch.zeros(2, 1, 32, 32)}, 'gt has batch size 2, expected 1'),
    ({'valid': torch.ones(1, 1, 32, 31, dtype=torch.bool)}, 'valid has shape'),
    ({'sigma': 0.0}, 'sigma must be finite and > 0, got 0.0'),
    ({'max_spread': float('nan')}, 'max_spread must be finite and >= 0'),
    ({'max_disparity': -1.0}, r'max_disparity must be > 0, got -1\.0'),
])
def test_cost_distribution_loss_errors(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {'cost': torch.zeros(1, 24, 4, 4), 'gt': torch.zeros(1, 1, 32, 32),
                                    'valid': None, 'candidates': CANDIDATES, 'max_disparity': 192.0}
    arguments.update(kwargs)
    with pytest.raises(LossError, match=message):
        cost_distribution_loss(**arguments)  # type: ignore[arg-type]
