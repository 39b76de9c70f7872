"""Where do the refiners use the image, and how salient are depth edges in the images they see?

    .venv/bin/python benchmarks/refiner_image_use.py CHECKPOINT [CHECKPOINT ...] [--real motorcycle|aloe]
                                                   [--synthetic-samples 8] [--palette-spread 15] [--out FILE.md]

The promote check (``guide_rise``) is one number for the whole Motorcycle pair. This splits it by
distance to a depth edge (a ground-truth jump of more than 1 px between neighbours, widened by 4 px),
on a real pair (Motorcycle, or the held-out Aloe with ``--real aloe``) and on held-out synthetic pairs
(the clean generator, the evaluation's seed), each with the
network's own coarse output: EPE of the soft argmin carried to full size, of the output, and of the
output with every guide image zeroed. A refiner that uses the image on synthetic edges but not on real
ones points at the generator, not at the refiner.

Then the same with a better coarse input than the network's: the ground truth averaged over 8x8
cells (what a perfect cost volume gives; the refiner-stage's oracle) and over 16x16 cells (edges up
to twice as far off), cells with no known truth taking the network's value; the pair is cropped to a
multiple of 16 and run through the network itself. A refiner that uses the image on the real pair with
these inputs but not with the network's own is held back by the coarse stage, not by the images.

Then the images alone: the median image gradient (Sobel, grey levels per pixel) on depth edges (jumps of
more than 2 px, widened by 1 px) against the 90th percentile of the gradient elsewhere, on Motorcycle,
the generator's clean scenes and the same scenes with ``data.palette_probability=1`` (every layer's
mean level near one scene level). A refiner that learns "a strong edge is a depth edge" on scenes where
the ratio is high finds it false where it is low.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import publish  # noqa: E402
from stereonet_ros.data.synthetic import SyntheticConfig, generate_sample  # noqa: E402
from stereonet_ros.evaluation.evaluate import HELD_OUT_SEED  # noqa: E402
from stereonet_ros.image_codec import bt601_luma  # noqa: E402
from stereonet_ros.evaluation.refinement import at_level, guide_ablated, quiet_predictor  # noqa: E402
from stereonet_ros.inference import Predictor  # noqa: E402
from stereonet_ros.model.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from stereonet_ros.model.stereonet import StereoNet  # noqa: E402
from stereonet_ros.samples import PAIRS  # noqa: E402
from stereonet_ros.training.train import normalize, oracle_coarse  # noqa: E402

F32 = npt.NDArray[np.float32]
Pair = tuple[str, F32, F32, F32]  # name, left, right (H, W) gray 0..255, left ground truth (non-finite = none)
NEAR_EDGE_PX = 4
ORACLE_CELLS = (8, 16)


def held_out_config(max_disparity: float) -> SyntheticConfig:
    """The evaluation's held-out generator (``stereonet-evaluate --sets synthetic``)."""
    return SyntheticConfig(height=256, width=512, channels=1, max_disparity=max_disparity,
                           disparity_range=(24.0, min(180.0, 0.95 * max_disparity))).without_rig_augmentation()


def pairs(synthetic_samples: int, config: SyntheticConfig, real: str = 'motorcycle') -> Iterator[Pair]:
    sample = PAIRS[real]()  # RGB; the gray network sees its BT.601 luma, and so does the gradient here
    left, right = (bt601_luma(image.astype(np.float32)) for image in (sample.left, sample.right))
    yield real, left, right, sample.disparity
    for index in range(synthetic_samples):
        synthetic = generate_sample(config, HELD_OUT_SEED, index)
        yield 'synthetic', synthetic.left[:, :, 0], synthetic.right[:, :, 0], synthetic.disp_left


def depth_edges(truth: F32, jump: float, widen: int) -> npt.NDArray[np.bool_]:
    """Pixels within ``widen`` px of a ground-truth jump of more than ``jump`` px between 4-neighbours."""
    known = np.nan_to_num(truth, nan=0.0, posinf=0.0, neginf=0.0)
    edge = np.zeros(truth.shape, np.bool_)
    edge[:, 1:] |= np.abs(np.diff(known, axis=1)) > jump
    edge[1:, :] |= np.abs(np.diff(known, axis=0)) > jump
    kernel = np.ones((2 * widen + 1, 2 * widen + 1), np.uint8)
    return cv2.dilate(edge.astype(np.uint8), kernel).astype(np.bool_)


def variants(checkpoint: Checkpoint) -> dict[str, Predictor]:
    """The output, the soft argmin carried to full size and the output with zero guides, as predictors."""
    edited = {'soft argmin': at_level(checkpoint, 0), 'output': checkpoint, 'zero guides': guide_ablated(checkpoint)}
    return {name: quiet_predictor(variant, 'cpu') for name, variant in edited.items()}


def split_rise(checkpoint: Checkpoint, synthetic_samples: int, real: str) -> list[str]:
    """Table rows: per set and region, pixels, EPE of each variant and the rise with zero guides."""
    predictors = variants(checkpoint)
    names = list(predictors)
    sums: dict[tuple[str, str], npt.NDArray[np.float64]] = {}
    for name, left, right, truth in pairs(synthetic_samples, held_out_config(checkpoint.config.max_disparity), real):
        scored = np.isfinite(truth) & (truth < checkpoint.config.max_disparity)
        near = depth_edges(truth, 1.0, NEAR_EDGE_PX)
        errors = [np.abs(predictor.predict(left, right) - truth) for predictor in predictors.values()]
        for region, mask in (('near edges', scored & near), ('elsewhere', scored & ~near)):
            row = np.array([mask.sum(), *(float(error[mask].sum()) for error in errors)], np.float64)
            sums[(name, region)] = sums.get((name, region), 0) + row
    rows = []
    for name in (real, 'synthetic'):
        total = sum(sums[(name, region)][0] for region in ('near edges', 'elsewhere'))
        for region in ('near edges', 'elsewhere'):
            count, *error_sums = sums[(name, region)]
            epe = dict(zip(names, (value / count for value in error_sums)))
            rise = epe['zero guides'] - epe['output']
            rows.append(f'| {name} | {region} | {count / total:.2f} | {epe["soft argmin"]:.3f} | {epe["output"]:.3f} | '
                        f'{epe["zero guides"]:.3f} | {rise:+.3f} | {rise * count / total:+.3f} |')
    return rows


def coarse_inputs(network: StereoNet, left: torch.Tensor, right: torch.Tensor,
                  truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """The network's own coarse output and the oracles of :data:`ORACLE_CELLS`, all on its 1/8 grid."""
    own = network(left, right, with_pyramid=True).pyramid[0]
    inputs = {"network's own": own}
    for cells in ORACLE_CELLS:
        ratio = cells // network.config.downsampling_factor
        oracle = oracle_coarse(truth, cells, F.avg_pool2d(own, ratio) if ratio > 1 else own)
        inputs[f'truth over {cells}x{cells} cells'] = F.interpolate(oracle, scale_factor=ratio, mode='nearest')
    return inputs


def oracle_rise(checkpoint: Checkpoint, synthetic_samples: int, real: str) -> list[str]:
    """Table rows: per set and coarse input, EPE of the output and its rise with zero guides, overall,
    near depth edges and elsewhere."""
    networks = []
    for variant in (checkpoint, guide_ablated(checkpoint)):
        network = StereoNet(variant.config)
        network.load_state_dict(variant.state_dict)
        networks.append(network.eval())
    sums: dict[tuple[str, str, str], npt.NDArray[np.float64]] = {}
    for name, left, right, truth in pairs(synthetic_samples, held_out_config(checkpoint.config.max_disparity), real):
        height, width = (size // max(ORACLE_CELLS) * max(ORACLE_CELLS) for size in truth.shape)
        left, right, truth = left[:height, :width], right[:height, :width], truth[:height, :width]
        scored = np.isfinite(truth) & (truth < checkpoint.config.max_disparity)
        near = depth_edges(truth, 1.0, NEAR_EDGE_PX)
        images = [normalize(torch.from_numpy(np.ascontiguousarray(image))[None, None]) for image in (left, right)]
        with torch.no_grad():
            inputs = coarse_inputs(networks[0], *images, torch.from_numpy(truth)[None, None])
            for coarse_name, coarse in inputs.items():
                errors = [np.abs(network(*images, coarse=(coarse, coarse)).disparity[0, 0].numpy() - truth)
                          for network in networks]
                for region, mask in (('all', scored), ('near edges', scored & near), ('elsewhere', scored & ~near)):
                    row = np.array([mask.sum(), *(float(error[mask].sum()) for error in errors)], np.float64)
                    sums[(name, coarse_name, region)] = sums.get((name, coarse_name, region), 0) + row
    rows = []
    for (name, coarse_name, region), (count, trained, ablated) in sums.items():
        if region == 'all':
            cells = [f'{trained / count:.3f} / {(ablated - trained) / count:+.3f}']
            for part in ('near edges', 'elsewhere'):
                part_count, part_trained, part_ablated = sums[(name, coarse_name, part)]
                cells.append(f'{part_trained / part_count:.3f} / {(part_ablated - part_trained) / part_count:+.3f}')
            rows.append(f'| {name} | {coarse_name} | ' + ' | '.join(cells) + ' |')
    return rows


def edge_saliency(left: F32, truth: F32) -> tuple[float, float]:
    """(median gradient on depth edges, 90th percentile elsewhere), grey levels per pixel."""
    gx = cv2.Sobel(left, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(left, cv2.CV_32F, 0, 1, ksize=3) / 8
    magnitude = np.hypot(gx, gy)
    known = np.isfinite(truth)
    edges = depth_edges(truth, 2.0, 1)
    return float(np.median(magnitude[edges & known])), float(np.percentile(magnitude[~edges & known], 90))


def saliency_rows(synthetic_samples: int, palette_spread: float, real: str) -> list[str]:
    clean = held_out_config(192.0)
    sources = {
        f'{real} (real)': [edge_saliency(left, truth) for _, left, _, truth in pairs(0, clean, real)],
        'generator, clean': [edge_saliency(left, truth) for _, left, _, truth in
                             list(pairs(synthetic_samples, clean))[1:]],
        f'generator, palette on every scene (spread {palette_spread:g})': [
            edge_saliency(left, truth) for _, left, _, truth in
            list(pairs(synthetic_samples, dataclasses.replace(clean, palette_probability=1.0,
                                                              palette_spread=palette_spread)))[1:]],
    }
    rows = []
    for name, values in sources.items():
        edge, elsewhere = np.mean(values, axis=0)
        rows.append(f'| {name} | {len(values)} | {edge:.1f} | {elsewhere:.1f} | {edge / elsewhere:.2f} |')
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoints', nargs='+')
    parser.add_argument('--real', choices=('motorcycle', 'aloe'), default='motorcycle', help='the real pair')
    parser.add_argument('--synthetic-samples', type=int, default=8)
    parser.add_argument('--palette-spread', type=float, default=15.0)
    parser.add_argument('--out', type=Path)
    arguments = parser.parse_args()
    lines = [f'`benchmarks/refiner_image_use.py {" ".join(sys.argv[1:])}`', '']
    for path in arguments.checkpoints:
        checkpoint = load_checkpoint(path)
        lines += [f'**{path}**', '',
                  '| set | region | share of pixels | EPE soft argmin | EPE output | EPE zero guides | rise | '
                  'rise x share |', '| --- | --- | --- | --- | --- | --- | --- | --- |',
                  *split_rise(checkpoint, arguments.synthetic_samples, arguments.real), '',
                  'Given a coarse input (EPE of the output / its rise with zero guides, px):', '',
                  '| set | coarse input | all pixels | near edges | elsewhere |', '| --- | --- | --- | --- | --- |',
                  *oracle_rise(checkpoint, arguments.synthetic_samples, arguments.real), '']
    lines += ['Depth-edge saliency (mean over pairs):', '',
              '| images | pairs | median gradient on depth edges | 90th percentile elsewhere | ratio |',
              '| --- | --- | --- | --- | --- |', *saliency_rows(arguments.synthetic_samples, arguments.palette_spread,
                                                                   arguments.real)]
    publish('\n'.join(lines), arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
