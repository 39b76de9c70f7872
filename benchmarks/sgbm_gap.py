"""Where the dense-view gap to SGBM lies on a real pair: occlusions, depth edges, or plain surfaces?

    .venv/bin/python benchmarks/sgbm_gap.py [CHECKPOINT] [--set motorcycle|aloe] [--scales 1 2] [--local-search PX]
                                            [--out FILE.md]

The dense view of ``stereonet-evaluate`` (ours as the node computes it, ``StereoProcessor.infer`` at
each ``inference_scale``; SGBM with stereo_image_proc's parameters, its holes filled the KITTI devkit
way; the same ``numDisparities``), split into three regions of the scored pixels (finite ground truth
below the checkpoint's ``max_disparity``):

- **occluded or out of view**: no match in the right image by the ground truth (a pixel further right
  lands more than ``OCCLUSION_TOLERANCE_PX`` left of its match, so a nearer surface hides it, or the
  match lies left of the image): no matcher can see these, and SGBM leaves them as holes. Approximate:
  against the exact masks of six synthetic pairs (``generate_sample(SyntheticConfig(photometric=False),
  900, 0..5)``) it found 90-97 % of the occluded pixels, and 69-94 % of what it marked was occluded;
- **visible, near a depth edge**: within ``NEAR_EDGE_PX`` of a ground-truth jump of more than 1 px;
- **visible, elsewhere**: plain and slanted surfaces; also split into quartiles of texture (the left
  image's mean Sobel gradient over 15x15 px, stereo_image_proc's SGBM block).

Per region: share of the pixels, EPE and bad-3 of each method, and the region's part of the EPE gap
(share x EPE difference; the three regions' parts add up to the whole gap, the quartiles' to the third's).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import publish  # noqa: E402
from benchmarks.refiner_image_use import depth_edges  # noqa: E402
from stereonet_ros.evaluation.evaluate import REFERENCE, covering_range, load_set  # noqa: E402
from stereonet_ros.evaluation.metrics import disparity_metrics  # noqa: E402
from stereonet_ros.evaluation.views import fill_holes  # noqa: E402
from stereonet_ros.geometry import hidden_from_right_view  # noqa: E402
from stereonet_ros.sgbm import STEREO_IMAGE_PROC_SGBM, sgbm_disparity, to_gray_u8  # noqa: E402
from stereonet_ros.inference import Predictor, PreliminaryCheckpointWarning  # noqa: E402
from stereonet_ros.processing import StereoProcessor  # noqa: E402

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
OCCLUSION_TOLERANCE_PX = 0.5
NEAR_EDGE_PX = 4
TEXTURE_WINDOW_PX = 15


def occluded(truth: F32) -> Mask:
    """Left pixels with no match in the right image by ``truth`` (non-finite = unknown, occludes nothing):
    :func:`~stereonet_ros.geometry.hidden_from_right_view` within ``OCCLUSION_TOLERANCE_PX``."""
    return hidden_from_right_view(truth, OCCLUSION_TOLERANCE_PX)


def regions_of(truth: F32, scored: Mask, gray: F32) -> dict[str, Mask]:
    """The three regions, the last also split into quartiles of :func:`texture` (it is where SGBM is best)."""
    regions = {'occluded or out of view': scored & occluded(truth)}
    visible = scored & ~regions['occluded or out of view']
    near = depth_edges(truth, 1.0, NEAR_EDGE_PX)
    regions[f'visible, within {NEAR_EDGE_PX} px of a depth edge'] = visible & near
    elsewhere = regions['visible, elsewhere'] = visible & ~near
    strength = texture(gray)
    bounds = [-np.inf, *np.percentile(strength[elsewhere], (25, 50, 75)), np.inf]
    for quartile in range(4):
        regions[f'... texture quartile {quartile + 1} of 4'] = \
            elsewhere & (strength >= bounds[quartile]) & (strength < bounds[quartile + 1])
    regions['all scored'] = scored
    return regions


def texture(gray: F32) -> F32:
    """Mean Sobel gradient magnitude over a ``TEXTURE_WINDOW_PX`` window (stereo_image_proc's SGBM block)."""
    magnitude = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return cv2.blur(magnitude, (TEXTURE_WINDOW_PX, TEXTURE_WINDOW_PX))


def gap_rows(ours: F32, sgbm: F32, truth: F32, scored: Mask, regions: dict[str, Mask]) -> list[str]:
    rows = []
    for name, region in regions.items():
        share = region.sum() / scored.sum()
        mine, theirs = (disparity_metrics(method, truth, region) for method in (ours, sgbm))
        rows.append(f'| {name} | {100.0 * share:.1f} % | {mine.epe:.2f} / {mine.bad3:.1f} '
                    f'| {theirs.epe:.2f} / {theirs.bad3:.1f} | {share * (mine.epe - theirs.epe):+.3f} |')
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint', nargs='?', help='default: the bundled one')
    parser.add_argument('--set', choices=('motorcycle', 'aloe'), default='motorcycle',
                        help="the real pair (stereonet-evaluate's sets of that name)")
    parser.add_argument('--scales', nargs='+', type=float, default=[1.0, 2.0], help='inference_scale values')
    parser.add_argument('--local-search', type=int, default=0, metavar='PX',
                        help="the node's local_search_px after ours (default 0: the network alone)")
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', type=Path)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', PreliminaryCheckpointWarning)
        predictor = Predictor.from_checkpoint(arguments.checkpoint, device='cpu')
    processor = StereoProcessor(predictor)
    max_disparity = float(predictor.contract.max_disparity)
    frame, = load_set(arguments.set, 0, max_disparity, predictor.contract.channels)
    truth = frame.disparity
    scored = np.isfinite(truth) & (truth < max_disparity)
    regions = regions_of(truth, scored, to_gray_u8(frame.left).astype(np.float32))
    sgbm = fill_holes(sgbm_disparity(frame.left, frame.right, STEREO_IMAGE_PROC_SGBM, covering_range([frame])))
    lines = [f'`benchmarks/sgbm_gap.py {" ".join(sys.argv[1:])}` (torch {torch.__version__}); {frame.name} '
             f'{truth.shape[1]}x{truth.shape[0]}, dense view, {REFERENCE} holes filled', '']
    for scale in arguments.scales:
        ours, _, _ = processor.infer(frame.left, frame.right, scale, local_search=arguments.local_search)
        searched = f', local search {arguments.local_search} px' if arguments.local_search else ''
        lines += [f'**{arguments.checkpoint or "bundled default"}, `inference_scale` {scale:g}{searched}** '
                  '(EPE px / bad-3 %; part of the gap = share x EPE difference, px)', '',
                  f'| region | share of pixels | ours | {REFERENCE} | part of the EPE gap |',
                  '| --- | --- | --- | --- | --- |', *gap_rows(ours, sgbm, truth, scored, regions), '']
    publish('\n'.join(lines), arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
