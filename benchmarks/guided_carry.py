"""How a network without refiners carries its soft argmin up: ``guided_to``'s sharpness and floor on the real pairs.

    .venv/bin/python benchmarks/guided_carry.py [--checkpoint PATH] [--sets motorcycle,aloe] [--scales 1,2]
        [--carries 0:0,12.5:0.01,25:0.01,50:0.01,100:0.01] [--out benchmarks/results/FILE.md]

The node's ``refine`` false answers with the cost volume's soft argmin carried to the input size by
``stereonet_ros.model.stereonet.guided_to``: each pixel a weighted mean of the 3x3 nearest cells, weighted by
the bilinear resize's weight plus a floor, times ``exp(-sharpness * |image - cell mean|)``. Sharpness 0 with
floor 0 is the bilinear resize itself (the test suite pins that). This runs ``Predictor.infer`` without the
refiner (the one path the node, the CLIs and the evaluators share) once per ``sharpness:floor`` of
``--carries`` at every scale, with ``guided_to`` given those values for the run, and prints the dense EPE
and bad-3 of each (every pixel with ground truth scored). The shipped values are
``GUIDE_SHARPNESS``:``GUIDE_FLOOR``; a run that includes them checks that the shipped path answers the same.
"""
from __future__ import annotations

import argparse
import functools
import platform
import sys
import warnings
from datetime import date
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', help='default: the bundled checkpoint (its refiners dropped)')
    parser.add_argument('--sets', default='motorcycle,aloe', help='comma-separated: motorcycle, aloe')
    parser.add_argument('--scales', default='1,2', help='inference_scale values, comma-separated')
    parser.add_argument('--carries', default='0:0,12.5:0.01,25:0.01,50:0.01,100:0.01',
                        help='sharpness:floor pairs, comma-separated (0:0 = the bilinear resize)')
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()

    import numpy as np
    import torch

    from stereonet_ros.evaluation.metrics import disparity_metrics
    from stereonet_ros.inference import Predictor
    from stereonet_ros.model import stereonet
    from stereonet_ros.opencv_data import OpenCvDataError
    from stereonet_ros.samples import PAIRS

    try:
        carries = [tuple(float(value) for value in text.split(':')) for text in arguments.carries.split(',')]
        scales = [float(text) for text in arguments.scales.split(',')]
        if any(len(carry) != 2 for carry in carries):
            raise ValueError('each carry is sharpness:floor')
        samples = {name: PAIRS[name]() for name in arguments.sets.split(',')}
    except (ValueError, KeyError, OpenCvDataError) as err:
        print(f'guided_carry: {err}', file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a preliminary checkpoint's warning is not news here
        predictor = Predictor.from_checkpoint(arguments.checkpoint, device='cpu', refine=False)
    shipped = (stereonet.GUIDE_SHARPNESS, stereonet.GUIDE_FLOOR)
    reference = {(name, scale): predictor.infer(sample.left, sample.right, scale=scale).disparity
                 for name, sample in samples.items() for scale in scales}
    original = stereonet.guided_to
    rows = []
    try:
        for sharpness, floor in carries:
            # StereoNet._at_input_size calls the module's guided_to: this run's values for every pass below.
            stereonet.guided_to = functools.partial(original, sharpness=sharpness, floor=floor)
            cells = []
            for name, sample in samples.items():
                for scale in scales:
                    with torch.inference_mode():
                        disparity = predictor.infer(sample.left, sample.right, scale=scale).disparity
                    if (sharpness, floor) == shipped and not np.array_equal(disparity, reference[name, scale]):
                        raise AssertionError(f'{name} at {scale:g}: the shipped carry answered differently')
                    metrics = disparity_metrics(disparity, sample.disparity)
                    cells.append(f'{metrics.epe:.3f} / {metrics.bad3:.2f}')
            label = 'bilinear' if (sharpness, floor) == (0.0, 0.0) else f'{sharpness:g} : {floor:g}'
            rows.append([label + (' (shipped)' if (sharpness, floor) == shipped else ''), *cells])
    finally:
        stereonet.guided_to = original
    header = ['sharpness : floor', *[f'{name} at {scale:g}' for name in samples for scale in scales]]
    lines = [f'`refine` false, dense EPE px / bad-3 %; {date.today().isoformat()}, {platform.machine()}, '
             f'checkpoint {arguments.checkpoint or "bundled default"}', '',
             '| ' + ' | '.join(header) + ' |', '| ' + ' | '.join('---' for _ in header) + ' |',
             *['| ' + ' | '.join(row) + ' |' for row in rows]]
    print('\n'.join(lines))
    if arguments.out:
        arguments.out.write_text('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
