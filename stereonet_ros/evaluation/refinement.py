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
from typing import Any

import numpy as np
import numpy.typing as npt

from stereonet_ros.evaluation.metrics import DisparityMetrics, disparity_metrics
from stereonet_ros.model.checkpoint import Checkpoint
from stereonet_ros.model.surgery import truncated_after, without_image_guidance

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
    config, state = checkpoint.config, checkpoint.state_dict
    variants = [truncated_after(config, state, level) for level in range(config.k_refinement_layers)]
    variants.append(dict(state))
    variants.append(without_image_guidance(config, state))
    scores = [disparity_metrics(_predict(dataclasses.replace(checkpoint, state_dict=weights), left, right,
                                         device, scale), gt)
              for weights in variants]
    return RefinementScores(levels=scores[:-1], without_guide=scores[-1])


def _predict(checkpoint: Checkpoint, left: npt.ArrayLike, right: npt.ArrayLike, device: str,
             scale: float) -> npt.NDArray[np.float32]:
    from stereonet_ros.inference import Predictor

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the preliminary / placeholder notes are not news here
        predictor = Predictor(checkpoint, device=device)
    return predictor.predict(left, right, scale=scale) if scale != 1.0 else predictor.predict(left, right)
