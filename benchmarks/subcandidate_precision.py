"""How precise is the disparity between the cost volume's candidates? A textured fronto-parallel plane.

    .venv/bin/python benchmarks/subcandidate_precision.py [CHECKPOINT ...] [--magnification 1]
                                                         [--step 1] [--out FILE.md]

The cost volume compares 1/2^K-resolution features at whole cells, so its candidates lie 2^K input
pixels apart (8 for K = 3) and the soft argmin interpolates between them. A plane facing the camera,
textured with a photo and shifted by exactly ``d`` px between the views, has one right answer
everywhere; scoring it over two candidate periods of ``d`` shows whether the answer is pulled towards
the candidates (pixel locking: too small just above a candidate, too large just below) and by how much.

Photos: scikit-image's camera, brick, grass and gravel (among the generator's textures, so this is a
diagnostic of precision, not a held-out score), 256x512, ``d`` from 2 to 4 candidate periods. Scored
from column ``MARGIN_PX + d`` on (the left columns have no match). Per checkpoint: the mean absolute error
of the soft argmin (carried up as the network carries it) and of the output, and their mean signed
error per ``d``.
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
from stereonet_ros.model.checkpoint import load_checkpoint  # noqa: E402
from stereonet_ros.model.stereonet import StereoNet  # noqa: E402
from stereonet_ros.training.train import normalize  # noqa: E402

F32 = npt.NDArray[np.float32]
DEFAULT_CHECKPOINT = ROOT / 'stereonet_ros' / 'checkpoints' / 'stereonet_default.safetensors'
PHOTOS = ('camera', 'brick', 'grass', 'gravel')
HEIGHT, WIDTH = 256, 512
MARGIN_PX = 64


def photos() -> list[F32]:
    import skimage.data

    return [np.asarray(getattr(skimage.data, name)(), np.float32) for name in PHOTOS]


def plane_pair(photo: F32, disparity: float, magnification: float) -> tuple[F32, F32]:
    """Left and right views of ``photo`` on a fronto-parallel plane: right(x) = left(x + disparity)."""
    source = photo if magnification >= 1.0 else cv2.GaussianBlur(photo, (0, 0), 0.5 / magnification)
    columns, rows = np.meshgrid(np.arange(WIDTH, dtype=np.float32), np.arange(HEIGHT, dtype=np.float32))
    period_x, period_y = source.shape[1] - 1, source.shape[0] - 1

    def view(shift: float) -> F32:
        map_x = ((columns + shift) / magnification) % period_x
        map_y = (rows / magnification) % period_y
        return cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR)
    return view(0.0), view(disparity)


def measure(network: StereoNet, pictures: list[F32], disparities: list[float],
            magnification: float) -> dict[float, tuple[float, float, float, float]]:
    """Per disparity: (soft argmin signed, abs, output signed, abs) mean errors over the photos, px."""
    results = {}
    for disparity in disparities:
        sums = np.zeros(4)
        for photo in pictures:
            left, right = (normalize(torch.from_numpy(np.ascontiguousarray(view))[None, None])
                           for view in plane_pair(photo, disparity, magnification))
            with torch.no_grad():
                output = network(left, right, with_pyramid=True)
            coarse = F.interpolate(output.pyramid[0], size=(HEIGHT, WIDTH), mode='bilinear',
                                   align_corners=network.config.align_corners)
            first = MARGIN_PX + int(np.ceil(disparity))
            for index, level in enumerate((coarse, output.disparity)):
                error = level[0, 0, :, first:].numpy() - disparity
                sums[2 * index:2 * index + 2] += (error.mean(), np.abs(error).mean())
        results[disparity] = tuple(sums / len(pictures))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoints', nargs='*', type=Path, default=[DEFAULT_CHECKPOINT])
    parser.add_argument('--magnification', type=float, default=1.0, help='output px per photo px (0.25..4)')
    parser.add_argument('--step', type=float, default=1.0, help='disparity step, px (0.25..4)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', type=Path)
    arguments = parser.parse_args()
    if not 0.25 <= arguments.magnification <= 4.0 or not 0.25 <= arguments.step <= 4.0:
        parser.error('--magnification and --step must be in 0.25..4')
    torch.set_num_threads(arguments.threads)
    pictures = photos()
    lines = [f'`benchmarks/subcandidate_precision.py {" ".join(sys.argv[1:])}` (torch {torch.__version__}, float32); '
             f'photos {", ".join(PHOTOS)}, magnification {arguments.magnification:g}', '']
    summary = ['| checkpoint | candidates px apart | soft argmin EPE | output EPE | output EPE at candidates | '
               'elsewhere |', '| --- | --- | --- | --- | --- | --- |']
    for path in arguments.checkpoints:
        checkpoint = load_checkpoint(path)
        network = checkpoint.build_model()
        period = checkpoint.config.downsampling_factor
        disparities = [float(d) for d in np.arange(2 * period, 4 * period, arguments.step)]
        results = measure(network, pictures, disparities, arguments.magnification)
        at_candidate = [results[d][3] for d in disparities if d % period == 0]
        between = [results[d][3] for d in disparities if d % period != 0]
        summary.append(f'| {path} | {period} | {np.mean([r[1] for r in results.values()]):.3f} '
                       f'| {np.mean([r[3] for r in results.values()]):.3f} | {np.mean(at_candidate):.3f} '
                       f'| {np.mean(between) if between else float("nan"):.3f} |')
        lines += [f'**{path}**: mean error over the photos, px', '',
                  '| d px | soft argmin signed | abs | output signed | abs |', '| --- | --- | --- | --- | --- |',
                  *(f'| {d:g} | {r[0]:+.3f} | {r[1]:.3f} | {r[2]:+.3f} | {r[3]:.3f} |' for d, r in results.items()),
                  '']
    publish('\n'.join([*lines, 'Summary:', '', *summary]), arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
