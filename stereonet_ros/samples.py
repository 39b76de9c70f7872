"""Sample stereo data that ships with our dependencies (nothing is downloaded or committed).

The Middlebury 2014 Motorcycle pair at quarter scale comes with scikit-image
(``skimage.data.stereo_motorcycle``): RGB, 741x500, ground-truth left disparity in pixels of image
shift, ``inf`` where unknown.

    python -m stereonet_ros.samples OUT_DIR   # writes left.png, right.png, disparity_gt.pfm
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m stereonet_ros.samples', description=__doc__.splitlines()[0])
    parser.add_argument('folder', type=Path, help='where to write left.png, right.png, disparity_gt.pfm')
    arguments = parser.parse_args(argv)
    sample = motorcycle()
    left, right, truth = write_sample(sample, arguments.folder)
    print(f'{sample.name}: {left}, {right}, ground truth {truth}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
