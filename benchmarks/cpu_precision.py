"""The network in bfloat16 on a CPU that has it natively, against the node's CPU default, with the steps after it.

    .venv/bin/python benchmarks/cpu_precision.py [--threads 1] [--repeats 3] [--out FILE.md]

For each real pair (Motorcycle, Aloe), three ways of running the bundled default on the CPU, alternating in one
process (median of ``--repeats`` each, after a warm-up): ONNX Runtime in float32 (what ``backend`` auto picks on a
CPU in fp32, the node's default), PyTorch in float32, and PyTorch in bfloat16 (``precision`` bf16: the
convolutions under autocast; only where oneDNN runs them natively, AVX512-BF16 or AMX, else that row says
so). Each: the network alone (``infer`` without the steps after it) and the node's CPU default (local search
4 px, SGBM fallback, occlusion fill), timed, and that answer's dense EPE px / bad-3 % over every pixel with ground
truth. Ratios against ONNX Runtime's time in the same run. ``--threads``: each backend's CPU threads (and the
search's).
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
WAYS = (('ONNX Runtime, fp32 (the node\'s CPU default)', 'onnxruntime', 'fp32'),
        ('PyTorch, fp32', 'pytorch', 'fp32'), ('PyTorch, bf16', 'pytorch', 'bf16'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()

    import torch

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.evaluation.metrics import disparity_metrics
    from stereonet_ros.precision import cpu_has_native_bf16
    from stereonet_ros.samples import PAIRS

    native = cpu_has_native_bf16()
    predictors = {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for label, backend, precision in WAYS:
            if precision == 'bf16' and not native:
                continue
            predictors[label] = open_predictor(None, device='cpu', precision=precision,  # type: ignore[arg-type]
                                               backend=backend, threads=arguments.threads)
    lines = [f'# The network in bf16 on the CPU: the bundled default, {arguments.threads} thread(s); median of '
             f'{arguments.repeats}, the ways alternating', '',
             '| pair | network | network s | ratio | with the steps s | ratio | dense EPE px / bad-3 % |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for name, load in PAIRS.items():
        sample = load()
        alone: dict[str, list[float]] = {label: [] for label in predictors}
        whole: dict[str, list[float]] = {label: [] for label in predictors}
        answers = {}
        for predictor in predictors.values():
            predictor.infer(sample.left, sample.right, local_search=REACH_PX)  # warm-up at this size
        for _ in range(arguments.repeats):
            for label, predictor in predictors.items():
                start = time.perf_counter()
                predictor.infer(sample.left, sample.right)
                alone[label].append(time.perf_counter() - start)
                start = time.perf_counter()
                answers[label] = predictor.infer(sample.left, sample.right, local_search=REACH_PX).disparity
                whole[label].append(time.perf_counter() - start)
        base = WAYS[0][0]
        for label in predictors:
            metrics = disparity_metrics(answers[label], sample.disparity,
                                        max_disparity=float(predictors[label].contract.max_disparity))
            network_s, steps_s = statistics.median(alone[label]), statistics.median(whole[label])
            lines.append(f'| {name} | {label} | {network_s:.3f} | {network_s / statistics.median(alone[base]):.2f}x '
                         f'| {steps_s:.3f} | {steps_s / statistics.median(whole[base]):.2f}x | '
                         f'{metrics.epe:.3f} / {metrics.bad3:.2f} |')
            print(lines[-1], file=sys.stderr)
        if not native:
            lines.append(f'| {name} | PyTorch, bf16 | not run: this CPU has no native bfloat16 (AVX512-BF16, AMX) | '
                         '| | | |')
    lines += ['', 'Ratio = the way\'s time / ONNX Runtime fp32\'s (below 1: faster).', '',
              f'Measured {date.today().isoformat()} on {platform.node()} ({platform.processor() or platform.machine()}'
              f', torch {torch.__version__}, native bf16: {native}).']
    publish('\n'.join(lines), arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
