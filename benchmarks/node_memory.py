"""The node's memory with each backend: ONNX Runtime (the CPU default, no PyTorch) against PyTorch.

    .venv/bin/python benchmarks/node_memory.py [--minutes 1] [--rate 2] [--width 640 --height 480]
        [--out benchmarks/results/FILE.md]

For each backend the node runs as its console script on the CPU with the bundled default
(``backend:=onnxruntime``, then ``backend:=pytorch``), fed reliable stereo sets at ``--rate`` Hz for
``--minutes`` (``soak.py``'s loop). Reported per backend: resident memory at the end of each minute,
the peak (``VmHWM``), whether ``libtorch`` was mapped into the process, sets answered, and latency. The
ratio column is against PyTorch, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import date
from pathlib import Path

from _report import publish
from soak import soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--minutes', type=float, default=1.0)
    parser.add_argument('--rate', type=float, default=2.0)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--out', type=Path, help='also write the table here')
    arguments = parser.parse_args()
    from stereonet_ros.evaluation.through_node import unique_domain_id

    results = {backend: soak(arguments.minutes, arguments.rate, arguments.width, arguments.height, True,
                             unique_domain_id(salt=79 + index), backend=backend)
               for index, backend in enumerate(('onnxruntime', 'pytorch'))}
    base = results['pytorch']
    lines = [f'Node memory by backend, {date.today().isoformat()}, {platform.processor() or platform.machine()}, '
             f'{os.cpu_count()} CPUs: {arguments.width}x{arguments.height} rgb8 sets at {arguments.rate:g} Hz for '
             f'{arguments.minutes:g} min, reliable inputs, device cpu, bundled default.', '',
             '| backend (as diagnostics say) | RSS at end MiB | peak RSS MiB | ratio to PyTorch | libtorch mapped | '
             'answered / sent | latency p50 ms |', '| --- | --- | --- | --- | --- | --- | --- |']
    for result in results.values():
        lines.append(f'| {result["backend"]} | {result["minutes"][-1]["rss_mib"]:.0f} | {result["peak_rss_mib"]:.0f} | '
                     f'{result["peak_rss_mib"] / base["peak_rss_mib"]:.2f} | '
                     f'{"yes" if result["torch_loaded"] else "no"} | {result["answered"]} / {result["sent"]} | '
                     f'{result["latency_p50_ms"]:.0f} |')
    text = '\n'.join(lines)
    publish(text, arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
