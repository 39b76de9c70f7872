"""What the SGBM fallback and the occlusion fill after the local search buy on the real pairs, and what they cost.

    .venv/bin/python benchmarks/sgbm_fallback.py [--checkpoint PATH] [--backend auto] [--repeats 5] [--threads 1]
                                                 [--out FILE.md]

For each real pair (Motorcycle, Aloe) the node's default settings (``Predictor.infer`` at scale 1 with the local
search at 4 px) run with ``sgbm_fallback`` and ``fill_occlusions`` both off and both on (the default), alternating in
one process (median of ``--repeats`` each):
dense EPE px / bad-3 % over every pixel with ground truth, the pixels the two steps (and the search between them)
moved by more than 1 px, the whole call's time
and the ratio of the two. The backend the node picks (``--backend auto``: the bundled default's ONNX export on a
CPU in fp32), ``--threads`` threads.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--checkpoint', type=Path, help='default: the bundled checkpoint')
    parser.add_argument('--backend', default='auto', choices=('auto', 'pytorch', 'onnxruntime'))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()

    import numpy as np
    import torch

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.evaluation.metrics import disparity_metrics
    from stereonet_ros.samples import PAIRS

    torch.set_num_threads(arguments.threads)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        predictor = open_predictor(arguments.checkpoint, device='cpu', backend=arguments.backend,
                                   threads=arguments.threads)
    checkpoint = arguments.checkpoint or 'the bundled default'
    lines = [f'# SGBM fallback and occlusion fill after the local search ({REACH_PX} px): {checkpoint}, '
             f'{type(predictor).__name__} '
             f'on the CPU, {arguments.threads} thread(s); median of {arguments.repeats}, off and on alternating', '',
             '| pair | fallback and fill | dense EPE px | dense bad-3 % | moved > 1 px | infer s | on / off |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for name, load in PAIRS.items():
        sample = load()
        predictor.infer(sample.left, sample.right, local_search=REACH_PX)  # warm-up at this size
        answers, seconds = alternating({fallback: (lambda fallback=fallback: predictor.infer(
            sample.left, sample.right, local_search=REACH_PX, sgbm_fallback=fallback,
            fill_occlusions=fallback).disparity) for fallback in (False, True)}, arguments.repeats)
        moved = float(np.mean(np.abs(answers[True] - answers[False]) > 1.0))
        for fallback in (False, True):
            metrics = disparity_metrics(answers[fallback], sample.disparity,
                                        max_disparity=float(predictor.contract.max_disparity))
            lines.append(f'| {name} | {str(fallback).lower()} | {metrics.epe:.3f} | {metrics.bad3:.2f} | '
                         f'{moved if fallback else 0.0:.2%} | {seconds[fallback]:.3f} | '
                         f'{seconds[fallback] / seconds[False]:.2f} |')
        print(lines[-2], lines[-1], sep='\n', file=sys.stderr)
    machine = (f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), '
               f'torch {torch.__version__}')
    publish('\n'.join([*lines, '', f'Measured {date.today().isoformat()} on {platform.node()} ({machine}).']),
            arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
