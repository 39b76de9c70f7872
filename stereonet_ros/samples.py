"""Real stereo pairs with ground truth that a machine without internet access can get (nothing is committed).

- :func:`motorcycle`: the Middlebury 2014 Motorcycle pair at quarter scale, which comes with scikit-image
  (``skimage.data.stereo_motorcycle``): RGB, 741x500, ground-truth left disparity in pixels of image
  shift, ``inf`` where unknown.
- :func:`aloe`: the Middlebury 2006 Aloe pair at half size, from OpenCV's sample data in Debian's
  ``opencv-doc`` package (:mod:`stereonet_ros.opencv_data` fetches it): RGB, 641x555, the same
  conventions. Never used to choose a checkpoint, so it is the held-out real pair.

    python -m stereonet_ros.samples OUT_DIR [--pair aloe]   # writes left.png, right.png, disparity_gt.pfm
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class StereoSample:
    left: npt.NDArray[np.uint8]
    """(H, W, 3) RGB."""
    right: npt.NDArray[np.uint8]
    """(H, W, 3) RGB."""
    disparity: npt.NDArray[np.float32]
    """(H, W) left-view disparity, pixels; ``inf`` = no ground truth."""
    name: str


def motorcycle() -> StereoSample:
    """Middlebury 2014 Motorcycle, quarter scale, from scikit-image."""
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()  # type: ignore[no-untyped-call]
    return StereoSample(left=np.ascontiguousarray(left, dtype=np.uint8),
                        right=np.ascontiguousarray(right, dtype=np.uint8),
                        disparity=np.ascontiguousarray(disparity, dtype=np.float32), name='middlebury2014-motorcycle-Q')


def half_size(left: npt.NDArray[np.uint8], right: npt.NDArray[np.uint8], disparity: npt.NDArray[np.uint8],
              name: str) -> StereoSample:
    """A full-size pair and its 8-bit ground truth (pixels, 0 = unknown) at half size.

    Images: the mean of each 2x2 block, rounded (area resampling, as ``cv2.INTER_AREA`` at exactly 1/2).
    Ground truth: each block's top-left value, halved (nearest resampling: averaging would invent depths
    between two surfaces where a block straddles a depth edge); 0 -> ``inf``. An odd last row or column
    is dropped.

    Raises:
        ValueError: the three arrays do not share one (H, W), or an image is not (H, W, 3).
    """
    height, width = disparity.shape[:2]
    if disparity.ndim != 2 or left.shape != (height, width, 3) or right.shape != left.shape:
        raise ValueError(f'expected two (H, W, 3) images and an (H, W) disparity, got {left.shape}, {right.shape} '
                         f'and {disparity.shape}')
    height, width = height // 2 * 2, width // 2 * 2

    def blocks(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        quads = image[:height, :width].astype(np.float32).reshape(height // 2, 2, width // 2, 2, 3)
        return np.ascontiguousarray(np.rint(quads.mean(axis=(1, 3))), dtype=np.uint8)

    truth = disparity[:height:2, :width:2].astype(np.float32) / 2.0
    truth[disparity[:height:2, :width:2] == 0] = np.inf
    return StereoSample(left=blocks(left), right=blocks(right), disparity=np.ascontiguousarray(truth), name=name)


def aloe() -> StereoSample:
    """Middlebury 2006 Aloe at half size (641x555, disparities 21.5-105.5 px), from OpenCV's sample data.

    Raises:
        stereonet_ros.opencv_data.OpenCvDataError: the data is not on this machine (says how to fetch it).
    """
    from stereonet_ros import opencv_data
    from stereonet_ros.image_io import read_image

    paths = opencv_data.find(opencv_data.ALOE_FILES)
    left, right, truth = (read_image(paths[name]) for name in ('aloeL.jpg', 'aloeR.jpg', 'aloeGT.png'))
    return half_size(left.astype(np.uint8), right.astype(np.uint8), truth.astype(np.uint8), 'middlebury2006-aloe-H')


def write_sample(sample: StereoSample, folder: Path) -> tuple[Path, Path, Path]:
    """Write ``left.png``, ``right.png`` and ``disparity_gt.pfm`` into ``folder`` (created)."""
    from stereonet_ros.image_io import write_png
    from stereonet_ros.pfm import write_pfm

    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / 'left.png', folder / 'right.png', folder / 'disparity_gt.pfm'
    write_png(paths[0], sample.left)
    write_png(paths[1], sample.right)
    write_pfm(paths[2], sample.disparity)
    return paths


PAIRS = {'motorcycle': motorcycle, 'aloe': aloe}


def main(argv: Sequence[str] | None = None) -> int:
    from stereonet_ros.image_io import ImageReadError, ImageWriteError
    from stereonet_ros.opencv_data import OpenCvDataError
    from stereonet_ros.pfm import PfmError

    parser = argparse.ArgumentParser(prog='python -m stereonet_ros.samples', description=__doc__.splitlines()[0])
    parser.add_argument('folder', type=Path, help='where to write left.png, right.png, disparity_gt.pfm')
    parser.add_argument('--pair', choices=sorted(PAIRS), default='motorcycle', help='which pair (default: motorcycle)')
    arguments = parser.parse_args(argv)
    try:
        sample = PAIRS[arguments.pair]()
        left, right, truth = write_sample(sample, arguments.folder)
    except (OpenCvDataError, ImageReadError, ImageWriteError, PfmError, OSError) as err:
        print(f'python -m stereonet_ros.samples: {err}', file=sys.stderr)
        return 1
    print(f'{sample.name}: {left}, {right}, ground truth {truth}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
