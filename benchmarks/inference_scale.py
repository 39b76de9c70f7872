"""Accuracy against time for the node's ``inference_scale``: Motorcycle scored and timed at each scale.

    .venv/bin/python benchmarks/inference_scale.py [--checkpoint PATH] [--scales 1,1.5,2,2.5] [--repeats 3]
        [--device cpu] [--precision fp32] [--out benchmarks/results/FILE.md]

Runs ``Predictor.infer`` (the one path the node, the CLIs and the evaluators share) on the real
Middlebury 2014 Motorcycle pair (quarter scale, 741x500) at every scale, and prints one table: the
dense EPE and bad-1/2/3 of the network (every pixel scored, as the dense view of
``stereonet-evaluate``), the median seconds per pair over ``--repeats`` runs after a warm-up, and
that time as a ratio of scale 1's, measured in the same run. SGBM with stereo_image_proc's
parameters, dense (holes filled the KITTI way), is the reference row. Times depend on the machine
and on what else runs on it: compare ratios, not seconds, across machines.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', help='default: the bundled checkpoint')
    parser.add_argument('--scales', default='1,1.5,2,2.5')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()


    from stereonet_ros.evaluation.evaluate import STEREO_IMAGE_PROC_SGBM, covering_range, sgbm_disparity
    from stereonet_ros.evaluation.evaluate import Frame
    from stereonet_ros.evaluation.metrics import disparity_metrics
    from stereonet_ros.evaluation.views import fill_holes
    from stereonet_ros.inference import Predictor
    from stereonet_ros.samples import motorcycle

    scales = [float(text) for text in arguments.scales.split(',')]
    sample = motorcycle()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a preliminary checkpoint's warning is not news here
        predictor = Predictor.from_checkpoint(arguments.checkpoint, device=arguments.device,
                                              precision=arguments.precision)
    rows = []
    for scale in scales:
        predictor.infer(sample.left, sample.right, scale=scale)  # warm-up: allocation, kernel choice
        times, answer = [], None
        for _ in range(arguments.repeats):
            start = time.perf_counter()
            answer = predictor.infer(sample.left, sample.right, scale=scale)
            times.append(time.perf_counter() - start)
        assert answer is not None
        metrics = disparity_metrics(answer.disparity, sample.disparity)
        rows.append((scale, answer.network_size, metrics, statistics.median(times)))
    frame = Frame(name=sample.name, left=sample.left, right=sample.right, disparity=sample.disparity)
    sgbm = sgbm_disparity(sample.left, sample.right, STEREO_IMAGE_PROC_SGBM, covering_range([frame]))
    sgbm_dense = disparity_metrics(fill_holes(sgbm), sample.disparity)

    base = next((seconds for scale, _, _, seconds in rows if scale == 1.0), rows[0][3])
    lines = [f'Motorcycle (quarter scale, 741x500), {arguments.device} {arguments.precision}, median of '
             f'{arguments.repeats}; {date.today().isoformat()}, {platform.processor() or platform.machine()}, '
             f'checkpoint {arguments.checkpoint or "bundled default"}',
             '',
             '| inference_scale | network size | EPE px | bad-1 % | bad-2 % | bad-3 % | s/pair | time ratio |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |']
    for scale, (height, width), metrics, seconds in rows:
        lines.append(f'| {scale:g} | {width}x{height} | {metrics.epe:.2f} | {metrics.bad1:.1f} | {metrics.bad2:.1f} | '
                     f'{metrics.bad3:.1f} | {seconds:.2f} | {seconds / base:.2f}x |')
    lines.append(f'| SGBM stereo_image_proc, dense | 741x500 | {sgbm_dense.epe:.2f} | {sgbm_dense.bad1:.1f} | '
                 f'{sgbm_dense.bad2:.1f} | {sgbm_dense.bad3:.1f} | | |')
    table = '\n'.join(lines)
    print(table)
    if arguments.out:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(table + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
