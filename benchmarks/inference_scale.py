"""Accuracy against time for the node's ``inference_scale`` and ``refine``: a real pair scored and timed.

    .venv/bin/python benchmarks/inference_scale.py [--checkpoint PATH] [--set motorcycle|aloe]
        [--scales 1,1.5,2,2.5] [--no-refine-scales 1,1.5,2] [--repeats 3] [--device cpu] [--precision fp32]
        [--local-search PX] [--out benchmarks/results/FILE.md]

Runs ``Predictor.infer`` (the one path the node, the CLIs and the evaluators share) on a real pair
(Middlebury 2014 Motorcycle at quarter scale, 741x500, or the held-out Aloe at half size, 641x555) at
every scale of ``--scales`` with the refiner, and of ``--no-refine-scales`` without it (the node's
``refine`` false: the checkpoint's soft argmin carried up), and prints one table: the
dense EPE and bad-1/2/3 of the network (every pixel scored, as the dense view of
``stereonet-evaluate``), the median seconds per pair over ``--repeats`` runs after a warm-up, and
that time as a ratio of scale 1's, measured in the same run. SGBM with stereo_image_proc's
parameters, dense (holes filled the KITTI way), is the reference row. Times depend on the machine
and on what else runs on it: compare ratios, not seconds, across machines. ``--local-search``: the node's
``local_search_px`` after the network, timed with it (default 0: the network alone).
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
    parser.add_argument('--set', choices=('motorcycle', 'aloe'), default='motorcycle', help='the real pair')
    parser.add_argument('--scales', default='1,1.5,2,2.5')
    parser.add_argument('--no-refine-scales', default='1,1.5,2', help="'' for none")
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    parser.add_argument('--local-search', type=int, default=0, metavar='PX',
                        help="the node's local_search_px (default 0: the network alone)")
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()


    from stereonet_ros.evaluation.evaluate import covering_range
    from stereonet_ros.sgbm import STEREO_IMAGE_PROC_SGBM, sgbm_disparity
    from stereonet_ros.evaluation.evaluate import Frame
    from stereonet_ros.evaluation.metrics import disparity_metrics
    from stereonet_ros.evaluation.views import fill_holes
    from stereonet_ros.inference import Predictor
    from stereonet_ros.samples import PAIRS

    runs = [(float(text), True) for text in arguments.scales.split(',') if text]
    runs += [(float(text), False) for text in arguments.no_refine_scales.split(',') if text]
    sample = PAIRS[arguments.set]()
    predictors = {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a preliminary checkpoint's warning is not news here
        for refine in {refine for _, refine in runs}:
            predictors[refine] = Predictor.from_checkpoint(arguments.checkpoint, device=arguments.device,
                                                           precision=arguments.precision, refine=refine)
    rows = []
    for scale, refine in runs:
        predictor = predictors[refine]
        predictor.infer(sample.left, sample.right, scale=scale, local_search=arguments.local_search)  # warm-up
        times, answer = [], None
        for _ in range(arguments.repeats):
            start = time.perf_counter()
            answer = predictor.infer(sample.left, sample.right, scale=scale, local_search=arguments.local_search)
            times.append(time.perf_counter() - start)
        assert answer is not None
        metrics = disparity_metrics(answer.disparity, sample.disparity)
        rows.append((scale, refine, answer.network_size, metrics, statistics.median(times)))
    frame = Frame(name=sample.name, left=sample.left, right=sample.right, disparity=sample.disparity)
    sgbm = sgbm_disparity(sample.left, sample.right, STEREO_IMAGE_PROC_SGBM, covering_range([frame]))
    sgbm_dense = disparity_metrics(fill_holes(sgbm), sample.disparity)

    base = next((seconds for scale, refine, _, _, seconds in rows if scale == 1.0 and refine), rows[0][4])
    height, width = sample.disparity.shape
    lines = [f'{sample.name} ({width}x{height}), {arguments.device} {arguments.precision}, median of '
             f'{arguments.repeats}; {date.today().isoformat()}, {platform.processor() or platform.machine()}, '
             f'checkpoint {arguments.checkpoint or "bundled default"}, local search {arguments.local_search} px; time '
             'ratio against scale 1 with the refiner',
             '',
             '| inference_scale | refiner | network size | EPE px | bad-1 % | bad-2 % | bad-3 % | s/pair '
             '| time ratio |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for scale, refine, (net_height, net_width), metrics, seconds in rows:
        lines.append(f'| {scale:g} | {"yes" if refine else "no"} | {net_width}x{net_height} | {metrics.epe:.2f} | '
                     f'{metrics.bad1:.1f} | {metrics.bad2:.1f} | {metrics.bad3:.1f} | {seconds:.2f} | '
                     f'{seconds / base:.2f}x |')
    lines.append(f'| SGBM stereo_image_proc, dense | | {width}x{height} | {sgbm_dense.epe:.2f} | '
                 f'{sgbm_dense.bad1:.1f} | {sgbm_dense.bad2:.1f} | {sgbm_dense.bad3:.1f} | | |')
    table = '\n'.join(lines)
    print(table)
    if arguments.out:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(table + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
