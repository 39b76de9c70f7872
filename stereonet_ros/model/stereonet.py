"""StereoNet (Khamis et al., "StereoNet: Guided Hierarchical Refinement for Real-Time Edge-Aware
Depth Prediction", ECCV 2018, arXiv 1807.08865) in one file.

The network, left view as reference:

1. **Feature extractor** (shared by both views): ``K`` 5x5 stride-2 convolutions, six residual
   blocks (3x3 conv, BN, leaky ReLU 0.2), a final 3x3 convolution. Output at 1/2^K resolution.
2. **Cost volume**: the *difference* of reference and shifted target features for each of ``D``
   candidate disparities at 1/2^K, filtered by four 3x3x3 convolutions (BN, leaky ReLU 0.2) and a
   last 3x3x3 convolution to one cost per candidate.
3. **Soft argmin** (paper eq. 2): ``d_i = sum_d d * softmax(-C_i)(d)`` over the candidate grid.
4. **Hierarchical refinement**: ``R`` refiners; each upsamples the disparity, concatenates the
   resized reference image, and predicts a residual with a 3x3 conv, six dilated residual blocks
   (dilations 1, 2, 4, 8, 1, 1) and a 3x3 conv to one channel; ``d <- relu(d + residual)``.

All disparities, at every pyramid level, are in pixels of the **full input resolution** (the
candidate grid is already scaled), so upsampling a level never multiplies its values.

Deviations from the paper, all chosen to load and reproduce the seed implementation
(andrewlstewart/StereoNet_PyTorch) exactly; where a choice is a config field, the paper-faithful
value is named:

- ``disparity_grid='seed_linspace'``: candidates ``linspace(0, max_disparity, D)`` (step
  ``max_disparity / (D - 1)``, 8.258 px for 256/32) instead of the paper's ``d * 2^K``
  (``'exact'``, step exactly 2^K).
- ``cost_volume_border='zero'``: where the shifted view has no pixel (x < d for the left view) the
  seed writes a zero feature difference, which looks like a perfect match. ``'replicate'`` instead
  compares with the target's edge column. The paper does not say.
- ``align_corners=True`` in every bilinear resize (the paper does not say).
- Refinement sizes are ``floor(H / 2^(R - i))`` for refiner ``i = 1..R`` (the seed's rule), so the
  last refiner always works at the input size; the soft-argmin output at ``ceil(H / 2^K)`` is
  resized to the first refiner's size. With ``R == K`` and ``H, W`` multiples of 2^K this is the
  paper's x2 cascade.
- The refiner's first 3x3 conv has no BN/activation and the output passes through a ReLU (seed).
- The seed does not pad inputs; the model accepts any size >= 2^K. Padding is an inference policy
  (see ``stereonet_ros.inference``), recorded with each checkpoint.
- The number of candidates is ``(max_disparity + 1) // 2^K`` (seed), e.g. 32 for 256, 24 for 192.

Two config fields go beyond the paper and are off in every seed checkpoint:

- ``refiner_disparity_unit`` (1 = the seed's raw pixels) divides the disparity a refiner sees.
- ``refiner_photometric_cue`` (False = the paper) also gives each refiner the reference image minus
  the target image warped by the current disparity. The paper's refiner has only the image to tell it
  where the disparity is wrong, and ours learned to ignore it; the warped difference is near zero
  where the disparity is right and shows the mismatch where it is not (the cue StereoDRNet and
  ActiveStereoNet refine with).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

# The architecture's description lives in a torch-free module (an ONNX Runtime node reads it without
# PyTorch); these names are the model's public surface too.
from stereonet_ros.model.architecture import (CostVolumeBorder, DisparityGrid, ModelConfigError,  # noqa: F401
                                              StereoNetConfig)

Side = Literal['left', 'right']

LEAKY_SLOPE = 0.2  # the paper's leaky ReLU slope, used everywhere a leaky ReLU appears
REFINER_DILATIONS = (1, 2, 4, 8, 1, 1)  # paper, section 3.3


def disparity_candidates(config: StereoNetConfig) -> torch.Tensor:
    """The disparity (full-resolution pixels) that each cost-volume slice stands for: ``(D,)`` float32."""
    count = config.num_candidates
    if config.disparity_grid == 'seed_linspace':
        return torch.linspace(0.0, float(config.max_disparity), count)
    return torch.arange(count, dtype=torch.float32) * config.downsampling_factor


class ResidualBlock(nn.Module):
    """conv-BN-leaky-conv-BN, plus the input, then leaky ReLU (He et al. 2016's original unit).

    Attribute names match the seed's ResBlock so its state_dict keys load unchanged.
    """

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.batch_norm_1 = nn.BatchNorm2d(channels)
        self.conv_2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.batch_norm_2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = F.leaky_relu(self.batch_norm_1(self.conv_1(x)), LEAKY_SLOPE, inplace=True)
        residual = self.batch_norm_2(self.conv_2(residual))
        return F.leaky_relu(residual + x, LEAKY_SLOPE, inplace=True)


class FeatureExtractor(nn.Module):
    """Image ``(B, C, H, W)`` -> features ``(B, F, ceil(H / 2^K), ceil(W / 2^K))``."""

    def __init__(self, config: StereoNetConfig) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels_in = config.in_channels
        for index in range(config.k_downsampling_layers):
            layers[f'segment_0_conv_{index}'] = nn.Conv2d(channels_in, config.feature_channels, 5, stride=2, padding=2)
            channels_in = config.feature_channels
        for index in range(6):
            layers[f'segment_1_res_{index}'] = ResidualBlock(config.feature_channels)
        layers['segment_2_conv_0'] = nn.Conv2d(config.feature_channels, config.feature_channels, 3, padding=1)
        self.net = nn.Sequential(layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net(image)
        return features


def difference_cost_volume(reference: torch.Tensor, target: torch.Tensor, num_candidates: int,
                           side: Side = 'left', border: CostVolumeBorder = 'zero') -> torch.Tensor:
    """Feature-difference cost volume, built on the features' device without a per-candidate loop.

    Args:
        reference: ``(B, F, h, w)`` features of the reference view.
        target: ``(B, F, h, w)`` features of the other view.
        num_candidates: D, candidate disparities at this resolution (slice ``i`` = shift of ``i``).
        side: 'left' when the reference is the left view: ``cost[..., i, y, x] = ref[y, x] - tgt[y, x - i]``;
            'right' when it is the right view: ``ref[y, x] - tgt[y, x + i]``.
        border: where ``x - i`` (or ``x + i``) leaves the image: 'zero' writes a zero difference (seed),
            'replicate' compares with the target's edge column.

    Returns:
        ``(B, F, D, h, w)``, contiguous.
    """
    if reference.shape != target.shape or reference.dim() != 4:
        raise ValueError(f'reference and target must be equal (B, F, h, w) shapes, got '
                         f'{tuple(reference.shape)} and {tuple(target.shape)}')
    width = reference.shape[-1]
    extra = num_candidates - 1
    # Pad the target so that every shift is a plain window of width w, then take all D windows as a
    # strided view (unfold) instead of allocating D slices one by one.
    pad = (extra, 0, 0, 0) if side == 'left' else (0, extra, 0, 0)
    padded = F.pad(target, pad, mode='replicate' if border == 'replicate' else 'constant', value=0.0)
    windows = padded.unfold(3, width, 1)  # (B, F, h, D, w): window j starts at padded column j
    if side == 'left':
        # Window j holds target[x - (D - 1 - j)]: candidate i = D - 1 - j, so reverse the window axis.
        windows = windows.flip(3)
    shifted = windows.permute(0, 1, 3, 2, 4)  # (B, F, D, h, w)
    cost = reference.unsqueeze(2) - shifted  # (B, F, D, h, w), a new contiguous tensor
    if border == 'zero':
        # The seed leaves the whole difference (not just the target) at zero outside the image.
        columns = torch.arange(width, device=reference.device)
        shifts = torch.arange(num_candidates, device=reference.device).unsqueeze(1)  # (D, 1)
        inside = columns >= shifts if side == 'left' else columns < width - shifts  # (D, w)
        cost = cost * inside.view(1, 1, num_candidates, 1, width).to(cost.dtype)
    return cost.contiguous(memory_format=_volume_memory_format(reference))


def _volume_memory_format(features: torch.Tensor) -> torch.memory_format:
    # Keep the 3-D filter in the layout the 2-D features use: channels-last features -> channels-last volume.
    if features.dim() == 4 and features.is_contiguous(memory_format=torch.channels_last) \
            and not features.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


class CostFilter(nn.Module):
    """Cost volume ``(B, F, D, h, w)`` -> filtered cost ``(B, D, h, w)`` (four 3-D conv-BN-leaky, one 3-D conv)."""

    def __init__(self, config: StereoNetConfig) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels_in = config.feature_channels
        for index in range(4):
            layers[f'segment_0_conv_{index}'] = nn.Conv3d(channels_in, config.cost_filter_channels, 3, padding=1)
            layers[f'segment_0_bn_{index}'] = nn.BatchNorm3d(config.cost_filter_channels)
            layers[f'segment_0_act_{index}'] = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
            channels_in = config.cost_filter_channels
        layers['segment_1_conv_0'] = nn.Conv3d(config.cost_filter_channels, 1, 3, padding=1)
        self.net = nn.Sequential(layers)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        filtered: torch.Tensor = self.net(volume)  # (B, 1, D, h, w)
        return filtered.squeeze(1)  # (B, D, h, w)


def soft_argmin(cost: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Paper eq. 2: the softmax(-cost)-weighted mean of the candidate disparities.

    Args:
        cost: ``(B, D, h, w)`` matching cost per candidate (lower = better).
        candidates: ``(D,)`` disparity of each candidate, pixels.

    Returns:
        ``(B, 1, h, w)`` disparity, in the candidates' units.
    """
    # In float32 even under autocast: in bfloat16 a disparity near 100 px would be rounded to 0.5 px.
    probabilities = F.softmax(-cost.float(), dim=1)  # (B, D, h, w)
    grid = candidates.to(device=cost.device, dtype=probabilities.dtype).view(1, -1, 1, 1)
    return torch.sum(probabilities * grid, dim=1, keepdim=True)


def matching_confidence(cost: torch.Tensor) -> torch.Tensor:
    """How peaked the soft-argmin distribution is: ``1 - H(p) / log(D)``, ``p = softmax(-cost)``.

    1 when one candidate takes all the probability (an unambiguous match), 0 when the distribution
    is uniform (no information: textureless or occluded). Not a calibrated probability of being
    correct; it ranks pixels by how decided the network was at the cost-volume stage.

    Args:
        cost: ``(B, D, h, w)`` filtered cost.

    Returns:
        ``(B, 1, h, w)`` in [0, 1].
    """
    log_probabilities = F.log_softmax(-cost.float(), dim=1)  # (B, D, h, w)
    entropy = -(log_probabilities.exp() * log_probabilities).sum(dim=1, keepdim=True)  # (B, 1, h, w)
    return (1.0 - entropy / math.log(cost.shape[1])).clamp(0.0, 1.0)


def warp_by_disparity(target: torch.Tensor, disparity: torch.Tensor, input_width: int, side: Side,
                      align_corners: bool) -> torch.Tensor:
    """The target view resampled at each reference pixel's match: ``(B, C, h, w)``.

    ``target`` and ``disparity`` are at one pyramid level ``(h, w)``, resized from an input
    ``input_width`` pixels wide; ``disparity`` is in input pixels. For the left view as reference a
    pixel at x matches the right view at ``x - d``; for the right view, the left view at ``x + d``.
    Bilinear, with the edge column repeated where the match falls outside the image (as
    ``cost_volume_border='replicate'`` does).
    """
    batch, _, height, width = target.shape
    # A shift of d input pixels is 2 d / (W - 1) in grid_sample's normalized coordinates when both the
    # pyramid resize and the sampling align corners, 2 d / W when neither does: independent of the level.
    span = max(input_width - 1, 1) if align_corners else input_width
    shift = disparity[:, 0].float() * (2.0 / span)  # (B, h, w)
    columns = torch.arange(width, device=target.device, dtype=torch.float32)
    rows = torch.arange(height, device=target.device, dtype=torch.float32)
    if align_corners:
        x = columns * (2.0 / max(width - 1, 1)) - 1.0
        y = rows * (2.0 / max(height - 1, 1)) - 1.0
    else:
        x = (2.0 * columns + 1.0) / width - 1.0
        y = (2.0 * rows + 1.0) / height - 1.0
    direction = -1.0 if side == 'left' else 1.0
    grid_x = x.view(1, 1, width) + direction * shift  # (B, h, w)
    grid_y = y.view(1, height, 1).expand(batch, height, width)
    grid = torch.stack((grid_x, grid_y), dim=-1).to(target.dtype)
    return F.grid_sample(target, grid, mode='bilinear', padding_mode='border', align_corners=align_corners)


class Refiner(nn.Module):
    """(resized reference image ``(B, C, h, w)``, disparity ``(B, 1, h, w)`` in input pixels[, the
    resized target warped by that disparity ``(B, C, h, w)``]) -> disparity residual ``(B, 1, h, w)``
    in input pixels.

    The first convolution takes the image channels first, then (with ``refiner_photometric_cue``)
    ``image - warped``, then the disparity divided by ``config.refiner_disparity_unit``.
    """

    def __init__(self, config: StereoNetConfig) -> None:
        super().__init__()
        self.disparity_unit = float(config.refiner_disparity_unit)
        self.photometric_cue = config.refiner_photometric_cue
        width = config.refiner_channels
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers['segment_0_conv_0'] = nn.Conv2d(config.refiner_guide_channels + 1, width, 3, padding=1)
        for index, dilation in enumerate(REFINER_DILATIONS):
            layers[f'segment_1_res_{index}'] = ResidualBlock(width, dilation=dilation)
        layers['segment_2_conv_0'] = nn.Conv2d(width, 1, 3, padding=1)
        self.net = nn.Sequential(layers)

    def forward(self, image: torch.Tensor, disparity: torch.Tensor,
                warped: torch.Tensor | None = None) -> torch.Tensor:
        if self.disparity_unit != 1.0:  # 1 = the seed's raw pixels, bit for bit
            disparity = disparity / self.disparity_unit
        if self.photometric_cue:
            if warped is None:
                raise ValueError('this refiner takes the photometric cue: pass the warped target image')
            inputs = (image, image - warped.to(image.dtype), disparity.to(image.dtype))
        else:
            inputs = (image, disparity)
        residual: torch.Tensor = self.net(torch.cat(inputs, dim=1))
        return residual


GUIDE_SHARPNESS = 25.0
"""Weight of the image in :func:`guided_to`: a neighbour cell whose mean differs from the pixel by ``delta``
(mean over channels, units of the normalized input: 127.5 grey levels in this project's contract) counts
``exp(-25 delta)`` as much, e.g. 0.14 for 10 grey levels. Chosen on Motorcycle at ``inference_scale`` 2 and on the
held-out synthetic set at 1 (12.5-100 tried: ``benchmarks/guided_carry.py``, docs/depth_quality.md)."""
GUIDE_FLOOR = 0.01
"""Floor of :func:`guided_to`'s spatial weights (bilinear weights + this): a cell the bilinear resize gives no
weight, one step further, can still win where the image says the pixel belongs to it."""


def _nearest_cells(level: torch.Tensor, dim: int, pixels: int,
                   align_corners: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Along ``dim`` of ``level``: for each of ``pixels`` output positions, the indices of the cell nearest to it
    and of its two neighbours (clamped to the grid), and each one's bilinear weight: ``max(0, 1 - |n - c|)`` for
    a cell at ``n`` and the position at ``c`` in cells, ``c`` as :func:`torch.nn.functional.interpolate` places
    it (clamped to the grid as it does), so that the weights are exactly the bilinear resize's."""
    cells = level.shape[dim]
    # The position of each output pixel in cells, placed by the resize itself: a ramp of cell indices resized.
    ramp = torch.arange(cells, device=level.device, dtype=torch.float32).view(1, 1, 1, cells)
    position = F.interpolate(ramp, size=(1, pixels), mode='bilinear', align_corners=align_corners).view(pixels)
    nearest = torch.round(position)
    indices, weights = [], []
    for offset in (-1, 0, 1):
        cell = nearest + offset
        indices.append(cell.clamp(0, cells - 1).long())
        weights.append((1 - (cell - position).abs()).clamp(min=0))  # a clamped duplicate keeps its own weight, 0
    return indices, weights


def guided_to(level: torch.Tensor, image: torch.Tensor, factor: int, align_corners: bool, *,
              sharpness: float = GUIDE_SHARPNESS, floor: float = GUIDE_FLOOR) -> torch.Tensor:
    """A coarse disparity level carried to the image's size, each pixel taking a weighted mean of the 3x3 cells
    nearest to it, weighted by the bilinear resize's weights (+ ``floor``) times how much the cell's mean image
    looks like the pixel (``exp(-sharpness * mean |image - cell mean|)``): a joint bilateral upsampling on the
    coarse grid. Where the cells around a pixel hold one surface it is the bilinear resize; across a depth edge
    a pixel takes the side its colour belongs to instead of a blend of both (a pixel on the aloe's leaf, not
    halfway to the cloth behind it). The answer is a convex combination of the nine cells: never outside them.

    Args:
        level: ``(B, 1, h, w)`` disparity on the cost volume's grid, input pixels.
        image: ``(B, C, H, W)`` the normalized reference image, ``h = ceil(H / factor)``, ``w = ceil(W / factor)``.
        factor: input pixels per cell (``2^K``): a cell's mean is over its ``factor x factor`` pixels.
        align_corners: where the cells sit, as the network's bilinear resizes place them.

    With ``floor`` 0 and an image without contrast it is exactly the bilinear resize.
    """
    height, width = image.shape[2], image.shape[3]
    if tuple(level.shape[-2:]) == (height, width):
        return level
    cell_means = F.avg_pool2d(image, factor, stride=factor, ceil_mode=True)
    if cell_means.shape[-2:] != level.shape[-2:]:
        raise ValueError(f'guided_to: a {height}x{width} image in cells of {factor} px has '
                         f'{tuple(cell_means.shape[-2:])} cells, the level {tuple(level.shape[-2:])}')
    rows, row_weights = _nearest_cells(level, 2, height, align_corners)
    columns, column_weights = _nearest_cells(level, 3, width, align_corners)
    candidates, logits = [], []
    for row, row_weight in zip(rows, row_weights, strict=True):
        level_rows, mean_rows = level.index_select(2, row), cell_means.index_select(2, row)
        for column, column_weight in zip(columns, column_weights, strict=True):
            candidates.append(level_rows.index_select(3, column))
            difference = (image - mean_rows.index_select(3, column)).abs().mean(dim=1, keepdim=True)
            spatial = torch.log(row_weight.view(height, 1) * column_weight.view(1, width) + floor)
            logits.append(spatial - sharpness * difference)
    # The softmax over the nine written out map by map: as one Softmax over a concatenated nine-channel map it
    # took a fifth of the whole network's time in ONNX Runtime at scale 2 (which moves the channel axis last to
    # take a softmax over it). Subtracting the largest logit keeps one weight at 1, so the sum is never 0.
    peak = logits[0]
    for logit in logits[1:]:
        peak = torch.maximum(peak, logit)
    numerator, total = torch.zeros_like(peak), torch.zeros_like(peak)
    for candidate, logit in zip(candidates, logits, strict=True):
        weight = torch.exp(logit - peak)
        numerator = numerator + weight * candidate
        total = total + weight
    return numerator / total


def refined_level(refiner: Refiner, reference: torch.Tensor, target: torch.Tensor, disparity: torch.Tensor,
                  size: tuple[int, int], side: Side, align_corners: bool,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """One step of the hierarchical refinement: ``disparity`` (any level, input pixels) resized to
    ``size`` and corrected by ``refiner``; float32 ``(B, 1, h, w)``.

    ``reference`` and ``target`` are the full-size normalized images (reference = the view whose
    disparity this is). ``dtype``: run the refiner in it (an exported half network); else as is.
    """
    image = F.interpolate(reference, size=size, mode='bilinear', align_corners=align_corners)
    coarse = F.interpolate(disparity, size=size, mode='bilinear', align_corners=align_corners)
    warped = None
    if refiner.photometric_cue:
        resized_target = F.interpolate(target, size=size, mode='bilinear', align_corners=align_corners)
        warped = warp_by_disparity(resized_target, coarse, reference.shape[3], side, align_corners)
    if dtype is not None:
        image, warped = image.to(dtype), None if warped is None else warped.to(dtype)
        residual = refiner(image, coarse.to(dtype), warped)
    else:
        residual = refiner(image, coarse, warped)
    # The residual is added in float32 (the coarse level's dtype) so autocast cannot round the disparity.
    return F.relu(residual.float() + coarse.float())


@dataclass
class StereoOutput:
    """What ``StereoNet.forward`` returns when asked for more than the left disparity.

    Each pyramid is coarse to fine: level 0 is the soft-argmin output at 1/2^K, the last level is
    at the input size; all in input pixels, ``(B, 1, h_l, w_l)`` float.
    """

    disparity: torch.Tensor
    """``(B, 1, H, W)`` left-view disparity: the last level of ``pyramid`` at the input size (with refiners it
    is already there; without, it is the soft argmin carried there by :func:`guided_to`)."""
    pyramid: list[torch.Tensor]
    """Left-view pyramid."""
    right_pyramid: list[torch.Tensor] | None = None
    """Right-view pyramid (reference = right image), when requested."""
    cost: torch.Tensor | None = None
    """``(B, D, h, w)`` filtered left cost (lower = better), the soft-argmin's input."""
    right_cost: torch.Tensor | None = None
    """The same for the right view, when ``right_pyramid`` was computed."""


class StereoNet(nn.Module):
    """StereoNet. ``forward(left, right)`` -> ``(B, 1, H, W)`` left disparity in input pixels.

    Inputs are normalized images ``(B, C, H, W)`` (see the checkpoint's input contract), equal
    shapes, ``H, W >= 2^K``. The state_dict keys equal the seed implementation's. Without refiners
    (``k_refinement_layers=0``) the answer is the soft argmin carried to the input size by :func:`guided_to`
    (the image decides which side of a depth edge each pixel takes).
    """

    def __init__(self, config: StereoNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else StereoNetConfig()
        self.feature_extractor = FeatureExtractor(self.config)
        self.cost_volumizer = CostFilter(self.config)
        self.refiners = nn.ModuleList(Refiner(self.config) for _ in range(self.config.k_refinement_layers))
        self.register_buffer('candidates', disparity_candidates(self.config), persistent=False)

    def _check_inputs(self, left: torch.Tensor, right: torch.Tensor) -> None:
        expected_channels = self.config.in_channels
        if left.dim() != 4 or left.shape != right.shape or left.shape[1] != expected_channels:
            raise ValueError(f'left and right must both be (B, {expected_channels}, H, W), got '
                             f'{tuple(left.shape)} and {tuple(right.shape)}')
        smallest = self.config.downsampling_factor
        if left.shape[2] < smallest or left.shape[3] < smallest:
            raise ValueError(f'images must be at least {smallest}x{smallest} pixels, got '
                             f'{left.shape[3]}x{left.shape[2]}')

    def refinement_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) at which refiner 1..R works: ``floor(H / 2^(R - i))`` (the seed's rule)."""
        levels = self.config.k_refinement_layers
        return [(height // 2 ** (levels - index), width // 2 ** (levels - index)) for index in range(1, levels + 1)]

    def _pyramid(self, reference: torch.Tensor, target: torch.Tensor, reference_features: torch.Tensor,
                 target_features: torch.Tensor, side: Side) -> tuple[list[torch.Tensor], torch.Tensor]:
        config = self.config
        volume = difference_cost_volume(reference_features, target_features, config.num_candidates,
                                        side=side, border=config.cost_volume_border)
        cost = self.cost_volumizer(volume)  # (B, D, h, w)
        candidates: torch.Tensor = self.candidates  # type: ignore[assignment]
        return self._refined(reference, target, soft_argmin(cost, candidates), side), cost

    def _at_input_size(self, level: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The answer from a pyramid's last level: the last refiner's output is at the input size already;
        without refiners the soft argmin is carried there, guided by the reference image."""
        return guided_to(level, reference, self.config.downsampling_factor, self.config.align_corners)

    def _refined(self, reference: torch.Tensor, target: torch.Tensor, coarse: torch.Tensor,
                 side: Side) -> list[torch.Tensor]:
        """``[coarse, refiner 1's level, ...]``: the hierarchical refinement of a coarse disparity."""
        pyramid = [coarse]
        sizes = self.refinement_sizes(reference.shape[2], reference.shape[3])
        for refiner, size in zip(self.refiners, sizes, strict=True):
            pyramid.append(refined_level(refiner, reference, target, pyramid[-1], size, side,
                                         self.config.align_corners))
        return pyramid

    def forward(self, left: torch.Tensor, right: torch.Tensor, *, with_right: bool = False,
                with_pyramid: bool = False, coarse: tuple[torch.Tensor, torch.Tensor] | None = None) -> Any:
        """Left disparity ``(B, 1, H, W)``; a :class:`StereoOutput` when ``with_pyramid`` or ``with_right``.

        ``with_right`` also computes the right-view disparity pyramid (reference = right image),
        reusing the features of both views, as left+right training needs.

        ``coarse``: (left, right) disparities ``(B, 1, H / 2^K, W / 2^K)``, input pixels, refined in place of
        the network's own soft-argmin output, which is then not computed (no features, no cost: ``cost`` is
        None), and the answer is always a :class:`StereoOutput`. For training the refiners on an oracle coarse
        input (``TrainConfig.coarse_input``).
        """
        self._check_inputs(left, right)
        if coarse is not None:
            pyramid = self._refined(left, right, coarse[0], 'left')
            right_pyramid = self._refined(right, left, coarse[1], 'right') if with_right else None
            return StereoOutput(disparity=self._at_input_size(pyramid[-1], left), pyramid=pyramid,
                                right_pyramid=right_pyramid)
        # One pass of the shared extractor over both views (a batch of 2B) instead of two.
        features = self.feature_extractor(torch.cat((left, right), dim=0))
        left_features, right_features = features.chunk(2, dim=0)
        pyramid, cost = self._pyramid(left, right, left_features, right_features, 'left')
        disparity = self._at_input_size(pyramid[-1], left)
        if not (with_right or with_pyramid):
            return disparity
        right_pyramid = right_cost = None
        if with_right:
            right_pyramid, right_cost = self._pyramid(right, left, right_features, left_features, 'right')
        return StereoOutput(disparity=disparity, pyramid=pyramid, right_pyramid=right_pyramid, cost=cost,
                            right_cost=right_cost)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every convolution weight channels-last (2-D) or channels-last-3d (3-D), in place.

    On CPUs oneDNN runs channels-last convolutions several times faster than NCHW ones; inputs
    passed channels-last keep the whole network in that layout.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
        elif isinstance(module, nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return model


def _fold_into_conv(conv: nn.Conv2d | nn.Conv3d, norm: nn.BatchNorm2d | nn.BatchNorm3d) -> None:
    # Eval-mode BN is y = (x - mean) / sqrt(var + eps) * gamma + beta, an affine map per channel, so
    # it folds into the preceding convolution: w' = w * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps).
    assert norm.running_mean is not None and norm.running_var is not None
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(norm.running_mean)
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight = nn.Parameter(conv.weight.detach() * scale.view(shape), requires_grad=False)
    conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias.detach(), requires_grad=False)


def fold_batchnorm(model: StereoNet) -> StereoNet:
    """An inference-only copy of ``model`` with every BatchNorm folded into its convolution.

    Same outputs as ``model.eval()`` up to float rounding, about a third less CPU time (eval-mode
    BatchNorm is a full extra pass over each activation). The copy cannot be trained, and its
    state_dict no longer matches the checkpoint's keys: save the original, never the copy.
    """
    import copy

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ResidualBlock):
            _fold_into_conv(module.conv_1, module.batch_norm_1)
            _fold_into_conv(module.conv_2, module.batch_norm_2)
            module.batch_norm_1 = nn.Identity()  # type: ignore[assignment]
            module.batch_norm_2 = nn.Identity()  # type: ignore[assignment]
        elif isinstance(module, CostFilter):
            layers = module.net
            for index in range(4):
                conv = getattr(layers, f'segment_0_conv_{index}')
                _fold_into_conv(conv, getattr(layers, f'segment_0_bn_{index}'))
                setattr(layers, f'segment_0_bn_{index}', nn.Identity())
    folded.requires_grad_(False)
    return folded
