"""Where does ``inference_scale``'s gain come from: the coarse stage or the refiners?

    .venv/bin/python benchmarks/scale_split.py [CHECKPOINT ...] [--set motorcycle|aloe] [--scales 1 1.5 2 2.5]
                                              [--out FILE.md]

On a real pair (Middlebury Motorcycle at quarter scale, or the held-out Aloe at half size with ``--set aloe``;
cropped to a multiple of 16 px), each checkpoint (default: the
bundled one) runs its coarse stage (features, cost volume, soft argmin) on the pair enlarged by ``s``
(bilinear, as the node enlarges) and its refiners on the pair enlarged by ``r``, for every ``s`` and
``r`` of ``--scales``: the coarse disparity is converted to the refiners' pixels and handed to them as
``StereoNet.forward``'s ``coarse`` input (resized to their grid as any coarse level is). The output is
brought back to the input size (area) and pixels, and scored against the ground truth, with the soft
argmin alone (carried to full size bilinearly, as the network carries a level) beside it. ``s = r`` is
the network at that scale.

Then EPE per ground-truth disparity band, and per coarse cell (2^K x 2^K input pixels) by the spread
of the truth within it, soft argmin and output, at the smallest and the largest scale: whether the
gain is at small disparities, at cells that mix depths, or on plain surfaces.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import publish  # noqa: E402
from stereonet_ros.evaluation.metrics import disparity_metrics  # noqa: E402
from stereonet_ros.image_codec import bt601_luma  # noqa: E402
from stereonet_ros.model.checkpoint import load_checkpoint  # noqa: E402
from stereonet_ros.samples import PAIRS  # noqa: E402
from stereonet_ros.training.train import normalize  # noqa: E402

F32 = npt.NDArray[np.float32]
DEFAULT_CHECKPOINT = ROOT / 'stereonet_ros' / 'checkpoints' / 'stereonet_default.safetensors'
BANDS = ((0.0, 15.0), (15.0, 25.0), (25.0, 35.0), (35.0, 45.0), (45.0, np.inf))
"""Ground-truth disparity bands, px (Motorcycle at quarter scale spans 7.2-59.9 px, Aloe at half size 21.5-105.5)."""
SPREADS = ((0.0, 2.0), (2.0, 8.0), (8.0, np.inf))
"""Spread of the truth within a coarse cell, px: a surface, a slanted or gently curved one, a depth edge."""
CROP = 16


def enlarged(image: F32, scale: float) -> torch.Tensor:
    """``image`` (H, W) resized by ``scale`` to a multiple of 8 px, normalized, ``(1, 1, h, w)``."""
    height, width = (int(round(size * scale / 8)) * 8 for size in image.shape)
    resized = image if (height, width) == image.shape else cv2.resize(image, (width, height),
                                                                       interpolation=cv2.INTER_LINEAR)
    return normalize(torch.from_numpy(np.ascontiguousarray(resized))[None, None])


def at_input_size(disparity: torch.Tensor, size: tuple[int, int], network_width: int, align_corners: bool) -> F32:
    """A disparity ``(1, 1, h, w)`` of a network that ran ``network_width`` px wide (its levels are all in
    the pixels of the network's input) -> ``(H, W)`` in input pixels."""
    ratio = size[1] / network_width
    if disparity.shape[2] >= size[0]:  # an enlarged pair's output: averaged down, as the node shrinks
        resized = F.interpolate(disparity, size=size, mode='area')
    else:  # a coarse level: carried up as the network carries it (its config's align_corners)
        resized = F.interpolate(disparity, size=size, mode='bilinear', align_corners=align_corners)
    return (resized[0, 0] * ratio).numpy()


def errors(disparity: F32, truth: F32, known: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """EPE px and bad-3 % of ``disparity`` where ``known``, by the evaluation's own rules."""
    metrics = disparity_metrics(disparity, truth, known)
    return metrics.epe, metrics.bad3


def split(path: Path, scales: list[float], pair: str) -> list[str]:
    checkpoint = load_checkpoint(path)
    network = checkpoint.build_model()
    sample = PAIRS[pair]()
    height, width = (size // CROP * CROP for size in sample.disparity.shape)
    left, right = (bt601_luma(image.astype(np.float32))[:height, :width] for image in (sample.left, sample.right))
    truth = sample.disparity[:height, :width]
    known = np.isfinite(truth) & (truth > 0)
    pairs = {scale: (enlarged(left, scale), enlarged(right, scale)) for scale in scales}
    with torch.no_grad():
        coarse = {scale: network(*pair, with_pyramid=True).pyramid[0] for scale, pair in pairs.items()}
        corners = checkpoint.config.align_corners
        soft_argmin = {scale: at_input_size(level, (height, width), pairs[scale][0].shape[3], corners)
                       for scale, level in coarse.items()}
        outputs = {}
        for coarse_scale in scales:
            for refiner_scale in scales:
                left_r, right_r = pairs[refiner_scale]
                handed = coarse[coarse_scale] * (left_r.shape[3] / pairs[coarse_scale][0].shape[3])
                refined = network(left_r, right_r, coarse=(handed, handed)).disparity
                outputs[coarse_scale, refiner_scale] = at_input_size(refined, (height, width), left_r.shape[3], corners)
    rows = [f'**{path}** ({checkpoint.config.k_refinement_layers} refiner(s)); {sample.name} {width}x{height}, '
            'EPE px / bad-3 % (bold: the whole network at one scale)', '', '| coarse stage at | soft argmin | ' +
            ' | '.join(f'refiners at {scale:g}' for scale in scales) + ' |', '| --- ' * (len(scales) + 2) + '|']
    for coarse_scale in scales:
        cells = [f'{coarse_scale:g}', '%.3f / %.1f' % errors(soft_argmin[coarse_scale], truth, known)]
        for refiner_scale in scales:
            epe, bad3 = errors(outputs[coarse_scale, refiner_scale], truth, known)
            cell = f'{epe:.3f} / {bad3:.1f}'
            cells.append(f'**{cell}**' if coarse_scale == refiner_scale else cell)
        rows.append('| ' + ' | '.join(cells) + ' |')
    low, high = min(scales), max(scales)
    compared = (soft_argmin[low], soft_argmin[high], outputs[low, low], outputs[high, high])
    header = f'share of pixels | share of the error at {low:g} | soft argmin at {low:g} | at {high:g} | ' \
             f'output at {low:g} | at {high:g} |'
    cell = checkpoint.config.downsampling_factor
    spread = cell_spread(truth, known, cell)
    regions = [(f'{lowest:g}-{highest:g}', known & (truth >= lowest) & (truth < highest)) for lowest, highest in BANDS]
    rows += ['', f'EPE px per ground-truth band, the network at scale {low:g} and at {high:g}:', '',
             f'| truth px | {header}', '| --- ' * 7 + '|', *region_rows(regions, compared, truth, known), '',
             f'The same per {cell}x{cell} cell of the input (one cell of the coarse grid at scale 1), by the spread '
             '(largest - smallest) of its known truth:', '',
             f'| truth spread in the cell, px | {header}', '| --- ' * 7 + '|',
             *region_rows([(f'{lowest:g}-{highest:g}', known & (spread >= lowest) & (spread < highest))
                           for lowest, highest in SPREADS], compared, truth, known)]
    return rows + ['']


def cell_spread(truth: F32, known: npt.NDArray[np.bool_], cell: int) -> F32:
    """Per pixel: the largest minus the smallest known truth of its ``cell`` x ``cell`` cell (0 if none known)."""
    height, width = truth.shape
    cells = np.where(known, truth, np.nan).reshape(height // cell, cell, width // cell, cell)
    empty = ~known.reshape(height // cell, cell, width // cell, cell).any(axis=(1, 3))
    filled = np.where(empty[:, None, :, None], 0.0, cells)  # no all-NaN cell reaches nanmax
    spread = np.nanmax(filled, axis=(1, 3)) - np.nanmin(filled, axis=(1, 3))
    return np.repeat(np.repeat(spread, cell, axis=0), cell, axis=1).astype(np.float32)


def region_rows(regions: list[tuple[str, npt.NDArray[np.bool_]]], compared: tuple[F32, ...], truth: F32,
                known: npt.NDArray[np.bool_]) -> list[str]:
    """Rows of: share of pixels, share of the first map's error, then each map's EPE within each region."""
    total_error = errors(compared[0], truth, known)[0] * known.sum()  # the first map's summed error
    rows = []
    for name, region in regions:
        if not region.any():
            continue
        share_of_error = errors(compared[0], truth, region)[0] * region.sum() / total_error
        cells = [name, f'{100.0 * region.sum() / known.sum():.0f} %', f'{100.0 * share_of_error:.0f} %']
        cells += [f'{errors(disparity, truth, region)[0]:.2f}' for disparity in compared]
        rows.append('| ' + ' | '.join(cells) + ' |')
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoints', nargs='*', type=Path, default=[DEFAULT_CHECKPOINT])
    parser.add_argument('--set', choices=('motorcycle', 'aloe'), default='motorcycle', help='the real pair')
    parser.add_argument('--scales', nargs='+', type=float, default=[1.0, 1.5, 2.0, 2.5])
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', type=Path)
    arguments = parser.parse_args()
    if any(not 0.25 <= scale <= 4.0 for scale in arguments.scales):
        parser.error('--scales: each must be in 0.25..4')
    torch.set_num_threads(arguments.threads)
    lines = [f'`benchmarks/scale_split.py {" ".join(sys.argv[1:])}` (torch {torch.__version__}, float32)', '']
    for path in arguments.checkpoints:
        lines += split(path, sorted(set(arguments.scales)), arguments.set)
    publish('\n'.join(lines), arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
