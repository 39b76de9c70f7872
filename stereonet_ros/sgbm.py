"""OpenCV's semi-global block matcher (SGBM), as stereo_image_proc runs it: the one way this package runs it.

Three users: the evaluators' baseline (``sgbm-stereo_image_proc``, ``sgbm-tuned``), the bag evaluator's
baseline, and the answer's :mod:`~stereonet_ros.sgbm_fallback` where the network is unsure. NumPy and OpenCV
on the host, torch-free (a node running an ``.onnx`` model never imports PyTorch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from stereonet_ros.inference_common import to_contract_color

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SgbmParams:
    """OpenCV StereoSGBM settings (names as stereo_image_proc's parameters where they exist)."""

    block_size: int
    p1: int
    p2: int
    uniqueness_ratio: int
    speckle_size: int
    speckle_range: int
    prefilter_cap: int
    disp12_max_diff: int
    mode: Literal['sgbm', 'hh', '3way']


STEREO_IMAGE_PROC_SGBM = SgbmParams(block_size=15, p1=200, p2=400, uniqueness_ratio=15, speckle_size=100,
                                    speckle_range=4, prefilter_cap=31, disp12_max_diff=0, mode='sgbm')
"""stereo_image_proc's disparity node defaults with stereo_algorithm = SGBM."""


def to_gray_u8(image: F32) -> npt.NDArray[np.uint8]:
    """``(H, W)`` grey or ``(H, W, 3)`` RGB in 0..255 -> the BT.601 grey uint8 image SGBM matches on."""
    gray = to_contract_color(image, 'gray')[0]
    gray_u8: npt.NDArray[np.uint8] = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return gray_u8


def sgbm_disparity(left: F32, right: F32, params: SgbmParams, num_disparities: int) -> F32:
    """OpenCV SGBM disparity, (H, W) float32 pixels, NaN where SGBM gives none (its uniqueness, left-right
    and speckle checks, and the leftmost ``num_disparities`` columns it cannot search)."""
    import cv2

    modes = {'sgbm': cv2.STEREO_SGBM_MODE_SGBM, 'hh': cv2.STEREO_SGBM_MODE_HH,
             '3way': cv2.STEREO_SGBM_MODE_SGBM_3WAY}
    matcher = cv2.StereoSGBM_create(  # type: ignore[attr-defined]
        minDisparity=0, numDisparities=num_disparities, blockSize=params.block_size, P1=params.p1, P2=params.p2,
        disp12MaxDiff=params.disp12_max_diff, preFilterCap=params.prefilter_cap,
        uniquenessRatio=params.uniqueness_ratio, speckleWindowSize=params.speckle_size,
        speckleRange=params.speckle_range, mode=modes[params.mode])
    fixed_point = matcher.compute(to_gray_u8(left), to_gray_u8(right))  # int16, 4 fractional bits
    disparity: F32 = fixed_point.astype(np.float32) / np.float32(16.0)
    disparity[fixed_point < 0] = np.nan  # OpenCV writes (minDisparity - 1) * 16 where it has no match
    return disparity


def fitting_range(wanted: float, width: int, block_size: int) -> int:
    """SGBM numDisparities for an image ``width`` px wide: ``wanted`` rounded up to a multiple of 16, narrowed to
    the largest multiple of 16 OpenCV accepts for that width (``width - numDisparities > block_size // 2``);
    0 when not even 16 fits (SGBM cannot run on so narrow an image).

    >>> fitting_range(192.0, 640, 15), fitting_range(192.0, 64, 15), fitting_range(192.0, 20, 15)
    (192, 48, 0)
    """
    largest = (width - block_size // 2 - 1) // 16 * 16
    return max(0, min(int(16 * math.ceil(wanted / 16)), largest))
