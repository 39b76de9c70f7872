"""Where the answer says the right camera cannot see a pixel and is unsure of it, the background beside it.

A pixel hidden from the right camera by a nearer surface has no match: nothing the network, the local search or
SGBM computes there is measured, only guessed, and the truth is the farther surface the pixel lies on. The answer
itself says which pixels are hidden (:func:`~stereonet_ros.geometry.hidden_from_right_view`: another pixel further
along the row lands left of its match); where such a pixel's confidence is also below :data:`BELOW_CONFIDENCE`, it
takes the lesser of the nearest kept answers left and right on its row, the background side of the occlusion (the
rule the KITTI devkit fills a matcher's holes by, :func:`~stereonet_ros.evaluation.views.fill_holes`). With the
left-right check, the pixels the right view's answer disagrees with are the hidden ones instead
(:mod:`~stereonet_ros.left_right_check`): a better mask, from a second answer. The confidence stays as it was,
below the threshold, so ``min_confidence`` at or above it removes every filled pixel. Figures and the thresholds
compared: docs/depth_quality.md, "SGBM where the network is unsure". Beyond the paper;
NumPy on the host, so both backends share it.
"""
from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from stereonet_ros.evaluation.views import fill_holes
from stereonet_ros.geometry import hidden_from_right_view
# The local search asks the same question (which pixels the right camera cannot see) with the same tolerance.
from stereonet_ros.local_search import HIDDEN_TOLERANCE_PX

BELOW_CONFIDENCE: Final = 0.5
"""Only hidden pixels whose confidence is below this are filled: 0.3 and 0.7 each gained less on three of the four
sets measured (docs/depth_quality.md)."""


def background_where_hidden(disparity: npt.NDArray[np.float32], confidence: npt.NDArray[np.float32],
                            hidden: npt.NDArray[np.bool_] | None = None
                            ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """``disparity`` with the pixels it says are hidden, and whose ``confidence`` is below :data:`BELOW_CONFIDENCE`,
    filled from their row's background (module doc).

    Args:
        disparity: ``(H, W)`` float32 left-view answer, pixels of the input.
        confidence: ``(H, W)`` its confidence in [0, 1].
        hidden: ``(H, W)`` bool, the pixels to take as hidden (the left-right check's disagreement); ``None`` =
            those ``disparity`` itself says the right camera cannot see.

    Returns:
        A new ``(H, W)`` float32 answer, and the ``(H, W)`` mask of the pixels filled. A row with no kept (finite,
        not filled) answer at all is left as it was: there is no background to take; a non-finite input value is
        never filled.

    Raises:
        ValueError: the shapes differ or are not ``(H, W)``.
    """
    if (np.shape(disparity) != np.shape(confidence) or np.ndim(disparity) != 2
            or (hidden is not None and np.shape(hidden) != np.shape(disparity))):
        raise ValueError(f'background_where_hidden: disparity {np.shape(disparity)}, confidence '
                         f'{np.shape(confidence)} and hidden {None if hidden is None else np.shape(hidden)} must be '
                         'one (H, W) size')
    answer = np.array(disparity, dtype=np.float32, copy=True)
    if hidden is None:
        hidden = hidden_from_right_view(answer, HIDDEN_TOLERANCE_PX)
    # float32, as min_confidence compares (processing.confident)
    filled = np.asarray(hidden, dtype=np.bool_) & (confidence < np.float32(BELOW_CONFIDENCE)) & np.isfinite(answer)
    # Only from a kept answer on the same row: fill_holes would give a row without one 0 px (infinitely far).
    filled &= (np.isfinite(answer) & ~filled).any(axis=1, keepdims=True)
    if filled.any():
        background = fill_holes(np.where(filled, np.nan, answer))  # non-finite answers are holes to it already
        answer[filled] = background[filled]
    return answer, filled
