"""What the left-right check buys on the real pairs, and what it costs, at the node's CPU default settings.

    .venv/bin/python benchmarks/left_right_check.py [--checkpoint PATH] [--precision auto] [--repeats 3]
                                                    [--threads 0] [--out FILE.md]

For each real pair (Motorcycle, Aloe) the node's CPU default settings (``Predictor.infer`` at scale 1, the local
search at 4 px, the SGBM fallback and the occlusion fill, the backend and precision the node picks) run with
``left_right_check`` off and on, alternating in one process (median of ``--repeats`` each): dense EPE px / bad-3 %
over every pixel with ground truth; the pixels a ``min_confidence`` of 0.5 keeps (density, EPE, bad-3: the
answered view at that threshold); the whole call's time and the ratio of the two. ``--threads`` 0 = every usable
CPU, as the node's ``inference_threads`` default.
"""
from __future__ import annotations

import argparse
import platform
import sys
import warnings
from datetime import date
from pathlib import Path

from _report import alternating, publish

REACH_PX = 4
MIN_CONFIDENCE = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--checkpoint', type=Path, help='default: the bundled checkpoint')
    parser.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'bf16'))
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()

    import torch

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.evaluation.metrics import disparity_metrics
    from stereonet_ros.inference_common import node_inference_threads
    from stereonet_ros.processing import with_confident_only
    from stereonet_ros.samples import PAIRS

    threads = node_inference_threads(arguments.threads)
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        predictor = open_predictor(arguments.checkpoint, device='cpu', precision=arguments.precision,
                                   threads=threads)
    checkpoint = arguments.checkpoint or 'the bundled default'
    lines = [f'# The left-right check at the CPU default settings (local search {REACH_PX} px, SGBM fallback, '
             f'occlusion fill): {checkpoint}, {type(predictor).__name__} {predictor.precision} on the CPU, {threads} '
             f'thread(s); median of {arguments.repeats}, off and on alternating', '',
             f'| pair | left-right check | dense EPE px | dense bad-3 % | min_confidence {MIN_CONFIDENCE}: density | '
             'EPE px | bad-3 % | infer s | on / off |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for name, load in PAIRS.items():
        sample = load()
        predictor.infer(sample.left, sample.right, local_search=REACH_PX)  # warm-up at this size
        answers, seconds = alternating({check: (lambda check=check: predictor.infer(
            sample.left, sample.right, local_search=REACH_PX, with_confidence=True, left_right_check=check))
            for check in (False, True)}, arguments.repeats)
        for check in (False, True):
            answer = answers[check]
            dense = disparity_metrics(answer.disparity, sample.disparity, max_disparity=answer.max_disparity)
            kept = disparity_metrics(with_confident_only(answer.disparity, answer.confidence, MIN_CONFIDENCE),
                                     sample.disparity, max_disparity=answer.max_disparity)
            lines.append(f'| {name} | {str(check).lower()} | {dense.epe:.3f} | {dense.bad3:.2f} | {kept.density:.3f} '
                         f'| {kept.epe:.3f} | {kept.bad3:.2f} | {seconds[check]:.3f} | '
                         f'{seconds[check] / seconds[False]:.2f} |')
        print(lines[-2], lines[-1], sep='\n', file=sys.stderr)
    machine = (f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), '
               f'torch {torch.__version__}')
    publish('\n'.join([*lines, '', f'Measured {date.today().isoformat()} on {platform.node()} ({machine}).']),
            arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
