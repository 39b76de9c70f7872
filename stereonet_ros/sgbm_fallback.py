"""Where the network is unsure, the semi-global matcher's answer, if both the images and the network agree with it.

The network's answer after the local search is good where its confidence is high (at SGBM's density it beats SGBM
on every set) and carries most of its error where the confidence is low: thin structures beside depth edges (Aloe's
leaves), which its coarse stage, an eighth of the size, cannot resolve and which lie beyond the local search's
reach. SGBM matches at the full size along eight paths and answers many of those pixels well (on Aloe 85 % of the
ones taken below are better for it). It also aliases on repeated texture, where it answers a wrong shift with a
good match (most of its error on the synthetic sets), so a pixel takes its answer only where all of these hold:

- the searched answer's confidence is below :data:`BELOW_CONFIDENCE` (it is otherwise better than SGBM's);
- SGBM answered (its uniqueness, left-right and speckle checks passed);
- its answer's :func:`~stereonet_ros.local_search.photometric_agreement` beats the searched answer's by at least
  :data:`MIN_AGREEMENT_GAIN`;
- its answer lies within the range of the searched answers around the pixel (:data:`NEIGHBOURHOOD_RADIUS_PX`,
  widened by :data:`NEIGHBOURHOOD_SLACK_PX`): a surface the network found nearby, which an alias to a shift
  no surface there has is not.

The pixel's confidence stays what it was: below :data:`BELOW_CONFIDENCE`, so ``min_confidence`` at or above it
removes every answer taken from SGBM. Figures and the thresholds compared: docs/depth_quality.md, "SGBM where the
network is unsure". Beyond the paper; NumPy and OpenCV on the host, so both backends share it.
"""
from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from stereonet_ros.local_search import photometric_agreement
from stereonet_ros.sgbm import STEREO_IMAGE_PROC_SGBM, fitting_range, sgbm_disparity

BELOW_CONFIDENCE: Final = 0.7
"""Only pixels whose confidence is below this may take SGBM's answer: the ``min_confidence`` at which the answered
pixels beat SGBM's on every set (README); 0.5 took a third less of the real pairs' gain, 0.8 no more of it."""

MIN_AGREEMENT_GAIN: Final = 0.02
"""How much better (in agreement, ``(1 + ZNCC) / 2``) SGBM's answer must match the images than the searched one."""

NEIGHBOURHOOD_RADIUS_PX: Final = 24
"""The square (of ``2 r + 1`` px) whose searched answers bound SGBM's: three of the coarse stage's 8 px cells."""

NEIGHBOURHOOD_SLACK_PX: Final = 4.0
"""How far beyond that range SGBM's answer may lie: the local search's reach."""


def neighbourhood_range(disparity: npt.NDArray[np.float32],
                        radius: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The least and the largest finite value of ``disparity`` in the ``2 radius + 1`` square around each pixel
    (``+inf`` and ``-inf`` where the square holds none)."""
    import cv2

    finite = np.isfinite(disparity)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    # cv2's morphology ignores nothing: non-finite values become ones that never win the min / the max.
    low = cv2.erode(np.where(finite, disparity, np.inf).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(np.where(finite, disparity, -np.inf).astype(np.float32), kernel,
                      borderType=cv2.BORDER_REPLICATE)
    return low, high


def sgbm_fallback(disparity: npt.NDArray[np.float32], confidence: npt.NDArray[np.float32],
                  agreement: npt.NDArray[np.float32], left: npt.NDArray[np.float32], right: npt.NDArray[np.float32],
                  max_disparity: float) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """``disparity`` with SGBM's answer (stereo_image_proc's parameters) where the module doc's four rules hold.

    Args:
        disparity: ``(H, W)`` float32 searched answer, pixels of the input.
        confidence: ``(H, W)`` its confidence in [0, 1].
        agreement: ``(H, W)`` its :func:`~stereonet_ros.local_search.photometric_agreement`.
        left, right: ``(H, W)`` float32 grey images in 0..255 (SGBM matches their rounded uint8 values).
        max_disparity: the network's range in input pixels: no larger answer is taken. SGBM searches up to it or
            to the largest finite answer + :data:`NEIGHBOURHOOD_SLACK_PX`, whichever is less (rounded up to 16,
            narrowed to what the width allows).

    Returns:
        A new ``(H, W)`` float32 answer, and the ``(H, W)`` mask of the pixels that took SGBM's. SGBM does not run
        when no finite answer is below :data:`BELOW_CONFIDENCE`, or on an image too narrow for 16 disparities.

    Raises:
        ValueError: the arrays' shapes differ or are not ``(H, W)``.
    """
    shapes = {np.shape(array) for array in (disparity, confidence, agreement, left, right)}
    if len(shapes) != 1 or np.ndim(disparity) != 2:
        raise ValueError(f'sgbm_fallback: disparity, confidence, agreement, left and right must be one (H, W) size, '
                         f'got {[np.shape(array) for array in (disparity, confidence, agreement, left, right)]}')
    answer = np.array(disparity, dtype=np.float32, copy=True)
    nothing = np.zeros(answer.shape, dtype=bool)
    unsure = confidence < np.float32(BELOW_CONFIDENCE)  # float32, as min_confidence compares (processing.confident)
    finite = np.isfinite(answer)
    if not (unsure & finite).any():
        return answer, nothing
    # No answer above the largest searched one + the slack can be taken, so SGBM need not search further: it then
    # answers more of the leftmost columns (it cannot search the first numDisparities) and runs sooner.
    wanted = min(float(max_disparity), float(answer[finite].max()) + NEIGHBOURHOOD_SLACK_PX)
    num_disparities = fitting_range(wanted, answer.shape[1], STEREO_IMAGE_PROC_SGBM.block_size)
    if num_disparities == 0:
        return answer, nothing
    sgbm = sgbm_disparity(left, right, STEREO_IMAGE_PROC_SGBM, num_disparities)
    low, high = neighbourhood_range(answer, NEIGHBOURHOOD_RADIUS_PX)
    with np.errstate(invalid='ignore'):  # NaN where SGBM has no answer compares False
        taken = (unsure & (sgbm <= max_disparity)
                 & (sgbm >= low - NEIGHBOURHOOD_SLACK_PX) & (sgbm <= high + NEIGHBOURHOOD_SLACK_PX))
    if taken.any():  # the agreement of SGBM's whole map: it is smoothed over neighbours, as the search's is
        taken &= photometric_agreement(sgbm, left, right) > agreement + MIN_AGREEMENT_GAIN
    answer[taken] = sgbm[taken]
    return answer, taken
