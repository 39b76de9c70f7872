"""Where the network is unsure, the semi-global matcher's answer, if both the images and the network agree with it.

The network's answer after the local search is good where its confidence is high (at SGBM's density it beats SGBM
on every set) and carries most of its error where the confidence is low: thin structures beside depth edges (Aloe's
leaves), which its coarse stage, an eighth of the size, cannot resolve and which lie beyond the local search's
reach. SGBM (:data:`SGBM_PARAMS`) matches at the full size, its costs aggregated along five paths, and answers many
of those pixels well. It also aliases on repeated texture, where it answers a wrong shift with a good match (most
of its error on the synthetic sets), so a pixel takes its answer only where all of these hold:

- the searched answer's confidence is below :data:`BELOW_CONFIDENCE` (it is otherwise better than SGBM's);
- SGBM answered (its uniqueness, left-right and speckle checks passed);
- its answer's :func:`~stereonet_ros.local_search.photometric_agreement` beats the searched answer's by at least
  :data:`MIN_AGREEMENT_GAIN`;
- its answer lies within the range of the searched answers around the pixel (:data:`NEIGHBOURHOOD_RADIUS_PX`,
  widened by :data:`NEIGHBOURHOOD_SLACK_PX`): a surface the network found nearby, which an alias to a shift
  no surface there has is not.

This step leaves the confidence as it was: below :data:`BELOW_CONFIDENCE` where SGBM's answer was taken, so
``min_confidence`` at or above it removes every such answer (the search that runs again after it,
:func:`~stereonet_ros.inference_common.searched`, only lowers the confidence). Figures and the thresholds compared:
docs/depth_quality.md, "SGBM where the network is unsure". Beyond the paper; NumPy and OpenCV on the host, so both
backends share it.
"""
from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from stereonet_ros.local_search import photometric_agreement
from stereonet_ros.sgbm import SgbmParams, fitting_range, sgbm_disparity

SGBM_BLOCK_PX: Final = 5

SGBM_PARAMS: Final = SgbmParams(block_size=SGBM_BLOCK_PX, p1=8 * SGBM_BLOCK_PX ** 2, p2=32 * SGBM_BLOCK_PX ** 2,
                                uniqueness_ratio=10, speckle_size=100, speckle_range=2, prefilter_cap=63,
                                disp12_max_diff=1, mode='sgbm')
"""The SGBM the fallback runs: a 5x5 block with OpenCV's rule for the smoothness penalties (P1 = 8 and P2 = 32 times
the block's pixels, one channel), one of the evaluators' tuning grid (``sgbm_candidates``). Its answers beside depth
edges and on thin structures are finer than stereo_image_proc's 15x15 block (which widens the nearer surface): better
dense figures on all four sets measured (docs/depth_quality.md). The single-pass mode: full two-pass dynamic
programming (``hh``) holds the whole cost volume, ``H x W x numDisparities``, which a robot's images do not afford."""

BELOW_CONFIDENCE: Final = 0.7
"""Only pixels whose confidence is below this may take SGBM's answer: the ``min_confidence`` at which the answered
pixels beat SGBM's on every set (README); in the first version's probes 0.5 took a third less of the real pairs'
gain and 0.8 no more of it (docs/depth_quality.md)."""

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
    """``disparity`` with SGBM's answer (:data:`SGBM_PARAMS`) where the module doc's four rules hold.

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
    num_disparities = fitting_range(wanted, answer.shape[1], SGBM_PARAMS.block_size)
    if num_disparities == 0:
        return answer, nothing
    sgbm = sgbm_disparity(left, right, SGBM_PARAMS, num_disparities)
    low, high = neighbourhood_range(answer, NEIGHBOURHOOD_RADIUS_PX)
    with np.errstate(invalid='ignore'):  # NaN where SGBM has no answer compares False
        taken = (unsure & (sgbm <= max_disparity)
                 & (sgbm >= low - NEIGHBOURHOOD_SLACK_PX) & (sgbm <= high + NEIGHBOURHOOD_SLACK_PX))
    if taken.any():  # the agreement of SGBM's whole map: it is smoothed over neighbours, as the search's is
        taken &= photometric_agreement(sgbm, left, right) > agreement + MIN_AGREEMENT_GAIN
    answer[taken] = sgbm[taken]
    return answer, taken
