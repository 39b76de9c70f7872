"""Barron's general robust loss and the StereoNet training loss built on it.

Barron, "A General and Adaptive Robust Loss Function", CVPR 2019 (arXiv 1701.03077), eq. 1:

    rho(x, alpha, c) = |alpha - 2| / alpha * (((x / c)^2 / |alpha - 2| + 1)^(alpha / 2) - 1)

with its limits (eq. 2) taken exactly:

    alpha = 2     -> 0.5 (x/c)^2                      (L2)
    alpha = 1     -> sqrt((x/c)^2 + 1) - 1            (pseudo-Huber / Charbonnier)
    alpha = 0     -> log(0.5 (x/c)^2 + 1)             (Cauchy / Lorentzian)
    alpha = -inf  -> 1 - exp(-0.5 (x/c)^2)            (Welsch)
    alpha = +inf  -> exp(0.5 (x/c)^2) - 1

StereoNet (Khamis et al. 2018, sec. 3.4) trains with alpha = 1, c = 2 on every level of the disparity
pyramid; :func:`stereo_pyramid_loss` does that the way the seed implementation does.

"Adaptive" in Barron's title means learning alpha by minimising the negative log-likelihood, which adds
the log partition function log Z(alpha) (a spline in his code). That term is not implemented here: alpha
may be a tensor with gradients, but minimising rho alone over alpha drives alpha to -inf, so learn alpha
only together with a partition term.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ['LossError', 'cost_distribution_loss', 'robust_loss', 'stereo_pyramid_loss']


class LossError(ValueError):
    """Bad loss parameters (alpha, c, max_disparity) or tensors of the wrong shape."""


# Barron clamps |alpha| and |alpha - 2| to float32 machine epsilon so that the general formula never
# divides by zero; within eps of 0 or 2 the exact limits are used instead.
_EPSILON = float(torch.finfo(torch.float32).eps)
# exp(88.7) overflows float32; the +inf branch is clamped below that so gradients stay finite.
_EXP_CLAMP = 87.5


def _general(squared: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Eq. 1 for alpha away from 0 and 2, written with log1p/expm1 so that it stays exact near alpha = 0.

    ``(1 + z/b)^(a/2) - 1 = expm1(a/2 * log1p(z/b))``: the direct power loses all digits when a -> 0
    (a number near 1, minus 1, divided by a near 0).
    """
    if isinstance(alpha, torch.Tensor):
        beta = torch.clamp(torch.abs(alpha - 2.0), min=_EPSILON)
        alpha_safe = torch.where(alpha >= 0, 1.0, -1.0) * torch.clamp(torch.abs(alpha), min=_EPSILON)
        return (beta / alpha_safe) * torch.expm1(0.5 * alpha_safe * torch.log1p(squared / beta))
    beta_float = max(abs(alpha - 2.0), _EPSILON)
    alpha_float = math.copysign(max(abs(alpha), _EPSILON), alpha)
    return (beta_float / alpha_float) * torch.expm1(0.5 * alpha_float * torch.log1p(squared / beta_float))


def _check_alpha_c(alpha: float | torch.Tensor, c: float | torch.Tensor) -> None:
    if isinstance(alpha, torch.Tensor):
        if bool(torch.isnan(alpha).any()):
            raise LossError('alpha must not be NaN')
    elif math.isnan(alpha):
        raise LossError('alpha must not be NaN')
    if isinstance(c, torch.Tensor):
        if not bool((torch.isfinite(c) & (c > 0)).all()):
            raise LossError('scale c must be finite and > 0 everywhere')
    elif not (math.isfinite(c) and c > 0):
        raise LossError(f'scale c must be finite and > 0, got {c}')


def robust_loss(x: torch.Tensor, alpha: float | torch.Tensor = 1.0, c: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Barron's general robust loss rho(x, alpha, c), element-wise.

    Args:
        x: residuals, any shape, floating point (pixels for disparity).
        alpha: shape parameter in [-inf, +inf]; a float or a tensor broadcastable to ``x`` (then
            differentiable, e.g. per-pixel or learnt; see the module note on "adaptive").
        c: scale (> 0), in the units of ``x``: the residual where the loss leaves its quadratic bowl.
            A float or a tensor broadcastable to ``x``.

    Returns:
        rho, the broadcast shape of ``x``, ``alpha`` and ``c``; >= 0, zero at ``x = 0``, and
        ``d rho / d x ~ x / c^2`` near zero for every alpha. Gradients with respect to a tensor alpha
        are exact except at alpha in {0, 2, +-inf} exactly, where the closed-form limit is used and
        ``d rho / d alpha`` is reported as 0 (Barron's reference code does the same).

    Raises:
        LossError: alpha is NaN, c is not finite and positive, or ``x`` is not floating point.
    """
    if not torch.is_floating_point(x):
        raise LossError(f'x must be a floating-point tensor, got {x.dtype}')
    _check_alpha_c(alpha, c)
    squared = (x / c) ** 2  # (x/c)^2, the only way x enters
    if not isinstance(alpha, torch.Tensor):
        # A Python alpha picks one branch, so no other branch is evaluated (and none can leak NaN).
        if alpha == 2.0:
            return 0.5 * squared
        if alpha == 1.0:
            return torch.sqrt(squared + 1.0) - 1.0
        if alpha == 0.0:
            return torch.log1p(0.5 * squared)
        if alpha == -math.inf:
            return -torch.expm1(-0.5 * squared)
        if alpha == math.inf:
            return torch.expm1(torch.clamp(0.5 * squared, max=_EXP_CLAMP))
        return _general(squared, alpha)

    alpha = alpha.to(squared.dtype)
    # Every branch is evaluated for every element, so each must stay finite (with finite gradient) even
    # where it is not selected: torch.where's backward multiplies the unselected branch's gradient by
    # zero, and 0 * inf = NaN. Special alphas are replaced by a harmless 1 inside the general branch.
    special = (alpha == 0) | (alpha == 2) | torch.isinf(alpha)
    general = _general(squared, torch.where(special, torch.ones_like(alpha), alpha))
    loss = torch.where(alpha == 2, 0.5 * squared, general)
    loss = torch.where(alpha == 0, torch.log1p(0.5 * squared), loss)
    loss = torch.where(alpha == -math.inf, -torch.expm1(-0.5 * squared), loss)
    loss = torch.where(alpha == math.inf, torch.expm1(torch.clamp(0.5 * squared, max=_EXP_CLAMP)), loss)
    return loss


def _check_map(tensor: torch.Tensor, name: str, batch: int | None = None) -> None:
    if tensor.ndim != 4 or tensor.shape[1] != 1:
        raise LossError(f'{name} must be (B, 1, H, W), got shape {tuple(tensor.shape)}')
    if batch is not None and tensor.shape[0] != batch:
        raise LossError(f'{name} has batch size {tensor.shape[0]}, expected {batch}')


def _usable(gt: torch.Tensor, valid: torch.Tensor | None, max_disparity: float, valid_name: str) -> torch.Tensor:
    """Where ground truth is used (detached): finite, ``< max_disparity`` and, if given, ``valid``."""
    mask = torch.isfinite(gt) & (gt < max_disparity)
    if valid is not None:
        if valid.shape != gt.shape:
            raise LossError(f'{valid_name} has shape {tuple(valid.shape)}, expected {tuple(gt.shape)}')
        mask = mask & valid.to(torch.bool)
    return mask.detach()


def _side_loss(pyramid: Sequence[torch.Tensor], gt: torch.Tensor, valid: torch.Tensor | None, max_disparity: float,
               alpha: float | torch.Tensor, c: float | torch.Tensor, side: str) -> torch.Tensor:
    """Mean over levels of the mean robust loss over valid pixels, for one view."""
    if len(pyramid) == 0:
        raise LossError(f'pyramid_{side} is empty')
    _check_map(gt, f'gt_{side}')
    batch, _, height, width = gt.shape
    mask = _usable(gt, valid, max_disparity, f'valid_{side}')
    # NaN/inf ground truth must not enter the graph at all: rho's backward at a NaN residual is NaN, and
    # multiplying by a zero mask afterwards would still give NaN gradients.
    gt_safe = torch.where(mask, gt, torch.zeros_like(gt))
    count = mask.sum()
    levels: list[torch.Tensor] = []
    for index, level in enumerate(pyramid):
        _check_map(level, f'pyramid_{side}[{index}]', batch)
        # The predictions are already in full-resolution pixel units, so only their grid is resized.
        # align_corners=True as in the seed's training_step.
        full = level if level.shape[-2:] == (height, width) else F.interpolate(
            level, size=(height, width), mode='bilinear', align_corners=True)  # (B, 1, H, W)
        residual = torch.where(mask, full - gt_safe, torch.zeros_like(full))
        total = (robust_loss(residual, alpha, c) * mask).sum()
        # No valid pixel in the batch: contribute 0 (with a graph) rather than 0/0 = NaN.
        levels.append(total / count.clamp(min=1))
    return torch.stack(levels).mean()


def stereo_pyramid_loss(pyramid_left: Sequence[torch.Tensor], pyramid_right: Sequence[torch.Tensor] | None,
                        gt_left: torch.Tensor, gt_right: torch.Tensor | None,
                        valid_left: torch.Tensor | None, valid_right: torch.Tensor | None,
                        max_disparity: float, alpha: float | torch.Tensor = 1.0,
                        c: float | torch.Tensor = 2.0) -> torch.Tensor:
    """StereoNet's training loss over the disparity pyramid, as in the seed's ``training_step``.

    Each level is upsampled bilinearly (``align_corners=True``) to the ground truth's ``(H, W)`` - its
    values are already full-resolution pixels, so they are not rescaled. A pixel counts when its ground
    truth is finite, ``< max_disparity`` and (if given) ``valid``. Per level the robust loss is averaged
    over the counted pixels of the whole batch (pixels pooled across images, as the seed does); the
    levels are then **averaged** (every level weighs the same, whatever its resolution); the left and
    right views, when both are given, are averaged. A level with no counted pixel contributes 0.

    Args:
        pyramid_left: ``(B, 1, h_k, w_k)`` float left-view disparities, coarse to fine, pixels.
        pyramid_right: the same for the right view, or ``None``.
        gt_left: ``(B, 1, H, W)`` float left-view ground truth, pixels; NaN/inf allowed where invalid.
        gt_right: the same for the right view; ``None`` exactly when ``pyramid_right`` is ``None``.
        valid_left: ``(B, 1, H, W)`` bool mask of ground truth to use, or ``None`` (finite values).
        valid_right: the same for the right view.
        max_disparity: exclusive upper bound of usable ground truth, pixels (the cost volume's range).
        alpha, c: robust-loss shape and scale (pixels); StereoNet uses 1 and 2.

    Returns:
        A scalar tensor.

    Raises:
        LossError: shape mismatches, an empty pyramid, right-view arguments given for only one of
            prediction/ground truth, max_disparity <= 0, or a bad alpha / c.
    """
    if not max_disparity > 0:
        raise LossError(f'max_disparity must be > 0, got {max_disparity}')
    if (pyramid_right is None) != (gt_right is None):
        raise LossError('pyramid_right and gt_right must both be given or both be None')
    _check_alpha_c(alpha, c)
    loss_left = _side_loss(pyramid_left, gt_left, valid_left, max_disparity, alpha, c, 'left')
    if pyramid_right is None or gt_right is None:
        return loss_left
    if gt_right.shape != gt_left.shape:
        raise LossError(f'gt_right has shape {tuple(gt_right.shape)}, expected {tuple(gt_left.shape)}')
    loss_right = _side_loss(pyramid_right, gt_right, valid_right, max_disparity, alpha, c, 'right')
    return (loss_left + loss_right) / 2


def cost_distribution_loss(cost: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None,
                           candidates: torch.Tensor, max_disparity: float, sigma: float = 1.0,
                           max_spread: float = 2.0) -> torch.Tensor:
    """Cross-entropy of the cost volume's softmax against a unimodal target at the true disparity.

    The soft argmin (paper eq. 2) is supervised only through its mean, and a trained network's mean is
    pulled towards the candidates (docs/depth_quality.md, pixel locking). This asks for the shape too, as
    AcfNet's unimodal cost supervision does (Zhang et al., "Adaptive Unimodal Cost Volume Filtering for
    Deep Stereo Matching", AAAI 2020): per coarse cell, ``-sum_k p_k log softmax(-cost)_k`` with ``p`` a
    Gaussian of width ``sigma`` candidate spacings centred on the truth. At ``sigma`` = 1 the target's own
    mean is the truth to 1e-4 of a spacing away from the range's ends, so the target has no pull of its
    own; at 0.5 it pulls by 0.02 of a spacing (both tested).

    Cell ``(i, j)`` of the ``(h, w)`` volume stands where the network's ``align_corners=True`` resize puts
    it, input pixel ``(i (H-1)/(h-1), j (W-1)/(w-1))``; its truth is read there (bilinearly). Only cells
    whose 9x9 input-pixel neighbourhood is all valid and spans at most ``max_spread`` pixels of
    disparity count: across a depth edge a cell's answer is not one disparity, and that is the refiner's
    business.

    Args:
        cost: ``(B, D, h, w)`` filtered cost (lower = better), the soft argmin's input.
        gt: ``(B, 1, H, W)`` ground truth, input pixels; NaN/inf where unknown.
        valid: ``(B, 1, H, W)`` bool mask of ground truth to use, or ``None``.
        candidates: ``(D,)`` disparity of each cost slice, input pixels, evenly spaced.
        max_disparity: exclusive bound of usable ground truth (the loss mask of :func:`stereo_pyramid_loss`).
        sigma: the target's standard deviation, in candidate spacings (> 0).
        max_spread: the largest disparity range, pixels, of a counted cell's neighbourhood (>= 0).

    Returns:
        A scalar: the mean over counted cells (0, with a graph, when none counts).
    """
    if cost.ndim != 4:
        raise LossError(f'cost must be (B, D, h, w), got shape {tuple(cost.shape)}')
    _check_map(gt, 'gt', cost.shape[0])
    if candidates.ndim != 1 or candidates.numel() != cost.shape[1] or candidates.numel() < 2:
        raise LossError(f'candidates must be ({cost.shape[1]},) with at least 2 values, '
                        f'got shape {tuple(candidates.shape)}')
    if not (math.isfinite(sigma) and sigma > 0):
        raise LossError(f'sigma must be finite and > 0, got {sigma}')
    if not (math.isfinite(max_spread) and max_spread >= 0):
        raise LossError(f'max_spread must be finite and >= 0, got {max_spread}')
    if not max_disparity > 0:
        raise LossError(f'max_disparity must be > 0, got {max_disparity}')
    height, width = cost.shape[-2:]
    with torch.no_grad():
        mask = _usable(gt, valid, max_disparity, 'valid')
        truth = torch.where(mask, gt, torch.zeros_like(gt)).float()
        # Neighbourhood range and validity by 9x9 max pools (a min pool is a max pool of the negation).
        high = F.max_pool2d(torch.where(mask, truth, torch.full_like(truth, -math.inf)), 9, 1, 4)
        low = -F.max_pool2d(torch.where(mask, -truth, torch.full_like(truth, -math.inf)), 9, 1, 4)
        whole = -F.max_pool2d(-mask.float(), 9, 1, 4)  # 1 where every pixel of the neighbourhood counts
        counted = (whole == 1) & (high - low <= max_spread)

        def at_cells(values: torch.Tensor) -> torch.Tensor:
            return F.interpolate(values, size=(height, width), mode='bilinear', align_corners=True)

        # A cell counts when its four neighbouring input pixels (the bilinear read) all count.
        cell_counted = at_cells(counted.float()) > 1 - 1e-6
        centre = at_cells(torch.where(counted, truth, torch.zeros_like(truth)))
        grid = candidates.to(device=cost.device, dtype=torch.float32).view(1, -1, 1, 1)
        spacing = float(candidates[1] - candidates[0])
        target = torch.softmax(-0.5 * ((grid - centre) / (sigma * spacing)) ** 2, dim=1)  # (B, D, h, w)
        weight = cell_counted.to(torch.float32)
    log_probabilities = F.log_softmax(-cost.float(), dim=1)
    per_cell = -(target * log_probabilities).sum(dim=1, keepdim=True)  # (B, 1, h, w)
    return (per_cell * weight).sum() / weight.sum().clamp(min=1)
