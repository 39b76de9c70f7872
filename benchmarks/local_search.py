"""What the local search after the network buys on the real pairs, and what it costs, in one run.

    .venv/bin/python benchmarks/local_search.py [--checkpoint PATH] [--reaches 0,2,4,6,8] [--repeats 3]
                                                [--threads 1] [--out FILE.md]

For each real pair (Motorcycle, Aloe) and each of the node's settings compared (the default: scale 1 with the
refiner; scale 2 without it), the network runs once through ``Predictor.infer`` (timed, median of
``--repeats``), then :func:`stereonet_ros.local_search.local_search` at each reach (timed the same way) on its
answer: dense EPE px / bad-3 % over every pixel with ground truth, and the search's time as a fraction of the
network's. PyTorch on the CPU, ``--threads`` threads.
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

SETTINGS = (('scale 1, refiner (the default settings)', 1.0, True), ('scale 2, no refiner', 2.0, False))


def timed(function, repeats: int):  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--checkpoint', type=Path, help='default: the bundled checkpoint')
    parser.add_argument('--reaches', default='0,2,4,6,8', help='comma-separated reaches, px (0 = the network alone)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()
    reaches = [int(value) for value in arguments.reaches.split(',')]

    import numpy as np
    import torch

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.image_codec import bt601_luma
    from stereonet_ros.local_search import local_search
    from stereonet_ros.samples import PAIRS

    torch.set_num_threads(arguments.threads)
    lines = [f'# Local search after the network: {arguments.checkpoint or "the bundled default"}, PyTorch on the CPU, '
             f'{arguments.threads} thread(s); median of {arguments.repeats}',
             '', '| pair | settings | reach px | dense EPE px | dense bad-3 % | moved | network s | search s | '
             'search / network |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for label, scale, refine in SETTINGS:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            predictor = open_predictor(arguments.checkpoint, device='cpu', backend='pytorch', refine=refine)
        for name, load in PAIRS.items():
            sample = load()
            left, right = (bt601_luma(image.astype(np.float32)) for image in (sample.left, sample.right))
            answer, network_s = timed(lambda: predictor.infer(sample.left, sample.right, scale=scale),
                                      arguments.repeats)
            known = np.isfinite(sample.disparity)
            for reach in reaches:
                found, search_s = timed(lambda: local_search(answer.disparity, left, right, reach,  # noqa: B023
                                                             answer.max_disparity), arguments.repeats)
                errors = np.abs(found - sample.disparity)[known]
                moved = float((found != answer.disparity).mean())
                lines.append(f'| {name} | {label} | {reach} | {errors.mean():.3f} | {100 * (errors > 3).mean():.2f} '
                             f'| {moved:.2f} | {network_s:.3f} | {search_s:.3f} | {search_s / network_s:.2f}x |')
                print(lines[-1], flush=True)
    if arguments.out:
        header = f'{date.today().isoformat()}, {platform.processor() or platform.machine()}, torch {torch.__version__}'
        arguments.out.write_text('\n'.join([lines[0] + f' ({header})', *lines[1:]]) + '\n', encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
