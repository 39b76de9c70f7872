"""Does the refinement work? Scores per pyramid level, and the guide-ablation check.

Both are measured through :class:`~stereonet_ros.inference.Predictor`, on weights edited exactly
(:mod:`stereonet_ros.model.surgery`), so they see the preprocessing, padding and folded network
users get:

- **Level** ``l`` (0 = the soft argmin at 1/2^K, R = the output): the network with refiners
  ``l..R-1`` reduced to their bilinear resize, i.e. level ``l`` carried to full resolution.
- **Guide ablation**: every refiner given a zero guide image. A network whose refiners use the
  image gets worse; one whose refiners ignore it (the defect this check exists for) does not.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from stereonet_ros.evaluation.metrics import DisparityMetrics, disparity_metrics
from stereonet_ros.model.checkpoint import Checkpoint
from stereonet_ros.model.surgery import truncated_after, without_image_guidance

if TYPE_CHECKING:  # the inference module loads torch
    from stereonet_ros.inference import Predictor

GUIDE_ABLATION_MIN_RISE_PX = 0.2
"""Issue 9: with zero guide images, Motorcycle EPE must rise by at least this, or the refiners are
not using the image and the checkpoint is not promoted."""


@dataclass(frozen=True)
class RefinementScores:
    """Per-level metrics and the guide ablation on one pair (or set), against the same ground truth."""

    levels: list[DisparityMetrics]
    """Level 0 (soft argmin) .. R (the output), each carried to full resolution."""
    without_guide: DisparityMetrics
    """The output with every refiner's guide image set to zeros."""

    @property
    def output(self) -> DisparityMetrics:
        return self.levels[-1]

    @property
    def guide_rise_epe(self) -> float:
        """EPE with zero guides minus EPE as is, pixels (positive = the refiners use the image)."""
        return self.without_guide.epe - self.output.epe

    @property
    def uses_guide(self) -> bool:
        """Whether the rise is at least :data:`GUIDE_ABLATION_MIN_RISE_PX` (exactly 0.2 passes)."""
        return self.guide_rise_epe >= GUIDE_ABLATION_MIN_RISE_PX

    def to_dict(self) -> dict[str, Any]:
        return {
            'levels': [dataclasses.asdict(level) for level in self.levels],
            'without_guide': dataclasses.asdict(self.without_guide),
            'guide_rise_epe': self.guide_rise_epe,
            'guide_rise_min': GUIDE_ABLATION_MIN_RISE_PX,
            'uses_guide': self.uses_guide,
        }


def refinement_scores(checkpoint: Checkpoint, left: npt.ArrayLike, right: npt.ArrayLike, gt: npt.ArrayLike,
                      *, device: str = 'cpu', scale: float = 1.0) -> RefinementScores:
    """Score every pyramid level of ``checkpoint`` and its guide ablation on one pair.

    Args:
        checkpoint: the weights to examine.
        left, right: the pair, as ``Predictor.predict`` takes it.
        gt: ``(H, W)`` ground-truth disparity, pixels; non-finite is unknown (Middlebury's inf).
        device: where to run.
        scale: the inference scale to run at (``Predictor.predict``'s ``scale``).
    """
    variants = [at_level(checkpoint, level) for level in range(checkpoint.config.k_refinement_layers)]
    variants += [checkpoint, guide_ablated(checkpoint)]
    scores = [disparity_metrics(_predict(variant, left, right, device, scale), gt) for variant in variants]
    return RefinementScores(levels=scores[:-1], without_guide=scores[-1])


def at_level(checkpoint: Checkpoint, level: int) -> Checkpoint:
    """``checkpoint`` whose output is pyramid level ``level`` (0 = soft argmin) carried to full size."""
    return dataclasses.replace(checkpoint, state_dict=truncated_after(checkpoint.config, checkpoint.state_dict, level))


def guide_ablated(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` with every refiner's guide image zeroed (the guide ablation)."""
    return dataclasses.replace(checkpoint, state_dict=without_image_guidance(checkpoint.config, checkpoint.state_dict))


def quiet_predictor(checkpoint: Checkpoint, device: str) -> Predictor:
    """A :class:`~stereonet_ros.inference.Predictor` for an edited checkpoint, without the preliminary /
    placeholder warnings (not news when examining variants of one)."""
    from stereonet_ros.inference import Predictor

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return Predictor(checkpoint, device=device)


def _predict(checkpoint: Checkpoint, left: npt.ArrayLike, right: npt.ArrayLike, device: str,
             scale: float) -> npt.NDArray[np.float32]:
    predictor = quiet_predictor(checkpoint, device)
    return predictor.predict(left, right, scale=scale) if scale != 1.0 else predictor.predict(left, right)
