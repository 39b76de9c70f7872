"""What a StereoNet is built from: :class:`StereoNetConfig`, saved with every checkpoint.

Torch-free, so that code which only reads a checkpoint's or an ONNX model's description (the ONNX
Runtime backend, a node running without PyTorch) does not import PyTorch. The network itself is
:mod:`stereonet_ros.model.stereonet`, whose module doc says what each field means for it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

DisparityGrid = Literal['seed_linspace', 'exact']
CostVolumeBorder = Literal['zero', 'replicate']


class ModelConfigError(ValueError):
    """A StereoNetConfig field has a value the model cannot be built with."""


@dataclass(frozen=True)
class StereoNetConfig:
    """Architecture of a StereoNet. Saved with every checkpoint (``dataclasses.asdict``)."""

    in_channels: int = 1
    """Channels per image: 1 (grayscale) or 3 (RGB)."""
    k_downsampling_layers: int = 3
    """K: stride-2 convolutions in the feature extractor; the cost volume is at 1/2^K."""
    k_refinement_layers: int = 3
    """R: cascaded refiners; the last one works at the input resolution."""
    feature_channels: int = 32
    """Channels of the feature extractor (the seed's feature_extractor_filters)."""
    cost_filter_channels: int = 32
    """Channels of the 3-D cost filter (the seed's cost_volumizer_filters)."""
    refiner_channels: int = 32
    """Channels inside each refiner."""
    max_disparity: int = 256
    """Largest disparity in input pixels (the seed's candidate_disparities)."""
    disparity_grid: DisparityGrid = 'seed_linspace'
    """Candidate disparities: 'seed_linspace' (seed) or 'exact' (paper: d * 2^K)."""
    cost_volume_border: CostVolumeBorder = 'zero'
    """Cost where the shifted view has no pixel: 'zero' (seed) or 'replicate' (edge column)."""
    align_corners: bool = True
    """Bilinear resizes with align_corners (seed: True)."""
    refiner_disparity_unit: float = 1.0
    """Input pixels per unit of the disparity channel each refiner receives: the refiner sees
    ``disparity / refiner_disparity_unit`` beside the image. 1 = raw pixels (seed). Raw disparities
    are tens of pixels next to an image in [-1, 1], so the image channel's weights get tens of times
    less gradient than the disparity's and decay away; e.g. 32 puts both channels on one footing.
    The residual the refiner returns stays in input pixels either way."""
    refiner_photometric_cue: bool = False
    """Also feed each refiner ``image - warped target`` (see the module doc). False = the paper and the
    seed. The refiner's first convolution then takes ``2 * in_channels + 1`` channels."""

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ('in_channels', self.in_channels in (1, 3), 'must be 1 or 3'),
            ('k_downsampling_layers', 1 <= self.k_downsampling_layers <= 6, 'must be in 1..6'),
            ('k_refinement_layers', 0 <= self.k_refinement_layers <= 6, 'must be in 0..6'),
            ('feature_channels', self.feature_channels >= 1, 'must be >= 1'),
            ('cost_filter_channels', self.cost_filter_channels >= 1, 'must be >= 1'),
            ('refiner_channels', self.refiner_channels >= 1, 'must be >= 1'),
            ('disparity_grid', self.disparity_grid in ('seed_linspace', 'exact'),
             "must be 'seed_linspace' or 'exact'"),
            ('cost_volume_border', self.cost_volume_border in ('zero', 'replicate'),
             "must be 'zero' or 'replicate'"),
            ('refiner_disparity_unit', _positive_finite(self.refiner_disparity_unit),
             'must be a finite number > 0'),
        ]
        for name, ok, requirement in checks:
            if not ok:
                raise ModelConfigError(f'StereoNetConfig.{name}={getattr(self, name)!r}: {requirement}')
        if self.num_candidates < 2:
            factor = self.downsampling_factor
            raise ModelConfigError(
                f'StereoNetConfig.max_disparity={self.max_disparity!r}: gives {self.num_candidates} candidate(s) '
                f'at 1/{factor}; need max_disparity >= {2 * factor - 1}')

    @property
    def downsampling_factor(self) -> int:
        """2^K: the cost volume's resolution divisor."""
        return int(2 ** self.k_downsampling_layers)

    @property
    def num_candidates(self) -> int:
        """D: candidate disparities in the cost volume, (max_disparity + 1) // 2^K as in the seed."""
        return (self.max_disparity + 1) // self.downsampling_factor

    @property
    def refiner_guide_channels(self) -> int:
        """Image-derived input channels of each refiner's first convolution: the resized reference
        image, then (with the photometric cue) its difference from the warped target. The disparity
        channel follows them."""
        return self.in_channels * (2 if self.refiner_photometric_cue else 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StereoNetConfig:
        """Build from a dict, refusing unknown keys (a typo must not fall back to a default)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelConfigError(f'unknown StereoNetConfig key(s) {unknown}; known: {sorted(known)}')
        return cls(**values)


def _positive_finite(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
