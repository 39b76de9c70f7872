"""What more threads buy the steps after the network (local search, SGBM fallback, occlusion fill), in one run.

    .venv/bin/python benchmarks/search_threads.py [--threads 1,2] [--repeats 5] [--out FILE.md]

For each real pair (Motorcycle, Aloe), the node's backend on the CPU (``open_predictor``, the bundled default's
ONNX export in fp32) answers once without the steps; then :func:`stereonet_ros.inference_common.searched` runs
the node's CPU default steps (local search at 4 px, SGBM fallback, occlusion fill) on that answer at each thread
count, alternating (median of ``--repeats`` each), and the whole ``infer`` call of a predictor opened with that
many threads (network and steps; the network's own threads change too). Every thread count must give the same
answer, bit for bit (checked). Ratios against the first thread count of the list, from the same run. Close other
work first: a thread count above the free cores measures contention, not the steps.
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

from _report import publish

REACH_PX = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--threads', default='1,2', help='comma-separated thread counts; the first is the baseline')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()
    counts = [int(value) for value in arguments.threads.split(',')]

    import numpy as np

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.inference_common import searched, usable_cpus
    from stereonet_ros.samples import PAIRS

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        predictors = {count: open_predictor(None, device='cpu', threads=count) for count in counts}
    first = predictors[counts[0]]
    lines = [f'# The steps after the network on more threads: the bundled default, {type(first).__name__} on the '
             f'CPU (fp32); median of {arguments.repeats}, thread counts alternating', '',
             '| pair | threads | steps s | steps ratio | infer s | infer ratio |',
             '| --- | --- | --- | --- | --- | --- |']
    for name, load in PAIRS.items():
        sample = load()
        network = first.infer(sample.left, sample.right, with_confidence=True)
        steps: dict[int, list[float]] = {count: [] for count in counts}
        whole: dict[int, list[float]] = {count: [] for count in counts}
        answers = {}
        for count in counts:  # warm-up at this size
            predictors[count].infer(sample.left, sample.right, local_search=REACH_PX)
        for _ in range(arguments.repeats):
            for count in counts:
                start = time.perf_counter()
                answers[count] = searched(network, sample.left, sample.right, REACH_PX, 'cpu', 10 ** 9,
                                          threads=count).disparity
                steps[count].append(time.perf_counter() - start)
                start = time.perf_counter()
                predictors[count].infer(sample.left, sample.right, local_search=REACH_PX)
                whole[count].append(time.perf_counter() - start)
        for count in counts:
            if not np.array_equal(answers[count], answers[counts[0]], equal_nan=True):
                print(f'search_threads: {count} threads answered {name} unlike {counts[0]}', file=sys.stderr)
                return 1
        base_steps, base_whole = statistics.median(steps[counts[0]]), statistics.median(whole[counts[0]])
        for count in counts:
            step_s, whole_s = statistics.median(steps[count]), statistics.median(whole[count])
            lines.append(f'| {name} | {count} | {step_s:.3f} | {base_steps / step_s:.2f}x | {whole_s:.3f} | '
                         f'{base_whole / whole_s:.2f}x |')
            print(lines[-1], file=sys.stderr)
    lines += ['', 'Ratio = the first thread count\'s time / this one\'s (above 1: faster). Every thread count gave '
              'the same answers.', '', f'Measured {date.today().isoformat()} on {platform.node()} '
              f'({platform.processor() or platform.machine()}, {usable_cpus()} usable CPUs).']
    publish('\n'.join(lines), arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
