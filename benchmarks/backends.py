"""PyTorch (our Predictor path) against ONNX Runtime (an exported model, OnnxPredictor) on the CPU, same run.

    .venv/bin/python benchmarks/backends.py [--checkpoint PATH] [--onnx MODEL.onnx] [--no-refine] [--scale S]
                                            [--threads N] [--repeats 5] [--rounds 2]

Without ``--onnx`` the checkpoint is exported first (``stereonet-export``'s function, parity-checked)
into a temporary folder; with ``--no-refine`` without its refiners, and PyTorch runs the checkpoint without
them too (the node's ``refine`` false). ``--scale``: the network on the pair resized by S
(``inference_scale``). ``--threads``: each backend's CPU threads (0: its default, every core). Each
backend runs in a fresh subprocess per round (rounds alternate the two), timing :meth:`infer` end to end
on the Motorcycle pair resized to each size (uint8 RGB in, disparity out: colour conversion,
normalization, padding and the network included) after one untimed warm-up. The table gives the median
over all rounds, the ratio against PyTorch, each process's peak resident memory, and the largest
disparity difference between the two backends on that pair.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

from _workers import alternate, median, run_worker

SIZES = ((960, 544), (640, 480))

WORKER = r'''
import json, resource, sys, time, warnings
import cv2, numpy as np
warnings.simplefilter('ignore')
from stereonet_ros.inference import Predictor
from stereonet_ros.samples import motorcycle
backend, path, width, height, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
refine, scale, threads = sys.argv[7] == 'refine', float(sys.argv[8]), int(sys.argv[9])
sample = motorcycle()
left = cv2.resize(sample.left, (width, height), interpolation=cv2.INTER_AREA)
right = cv2.resize(sample.right, (width, height), interpolation=cv2.INTER_AREA)
from stereonet_ros.backends import open_predictor
predictor = open_predictor(path, device='cpu', threads=threads, refine=refine or backend == 'onnxruntime')
assert (type(predictor).__name__ == 'OnnxPredictor') == (backend == 'onnxruntime'), type(predictor)
disparity = predictor.predict(left, right, scale)  # warm-up
times = []
for _ in range(repeats):
    start = time.perf_counter(); predictor.predict(left, right, scale); times.append(time.perf_counter() - start)
np.save(sys.argv[6], disparity)
print(json.dumps({'times': times, 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def measure(backend: str, paths: dict[str, str], size: tuple[int, int], repeats: int, folder: Path, refine: bool,
            scale: float, threads: int) -> dict[str, object]:
    width, height = size
    return run_worker(WORKER, [backend, paths[backend], width, height, repeats, folder / f'{backend}.npy',
                               'refine' if refine else 'no-refine', scale, threads])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--checkpoint', type=Path, help='checkpoint to time (default: the bundled one)')
    parser.add_argument('--onnx', type=Path, help='its ONNX export (default: exported now)')
    parser.add_argument('--no-refine', action='store_true', help="without the refiners (the node's refine false)")
    parser.add_argument('--scale', type=float, default=1.0, help="the node's inference_scale")
    parser.add_argument('--threads', type=int, default=0, help='CPU threads of each backend (0: every core)')
    parser.add_argument('--repeats', type=int, default=5, help='timed calls per process')
    parser.add_argument('--rounds', type=int, default=2, help='alternating PyTorch/ONNX Runtime processes per size')
    arguments = parser.parse_args()

    import warnings

    import numpy as np
    import onnxruntime
    import torch

    from stereonet_ros.inference import DEFAULT_CHECKPOINT, without_refiners
    from stereonet_ros.model.checkpoint import load_checkpoint
    from stereonet_ros.model.onnx_export import export_onnx

    checkpoint = arguments.checkpoint or DEFAULT_CHECKPOINT
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        onnx_path = arguments.onnx
        if onnx_path is None:
            onnx_path = folder / 'model.onnx'
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                network = load_checkpoint(checkpoint)
                export_onnx(without_refiners(network) if arguments.no_refine else network, onnx_path, source=checkpoint)
        paths = {'pytorch': str(checkpoint), 'onnxruntime': str(onnx_path)}
        threads = arguments.threads or torch.get_num_threads()
        print(f'# Backends on the CPU: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {threads} '
              f'thread(s) each; {checkpoint.name}{" without refiners" if arguments.no_refine else ""}, '
              f'inference_scale {arguments.scale:g}; predict on Motorcycle resized, median of {arguments.repeats} x '
              f'{arguments.rounds} calls')
        print('| size | backend | median s | ratio vs PyTorch | peak RSS MiB | max |diff| px |')
        print('| --- | --- | --- | --- | --- | --- |')
        for size in SIZES:
            pooled = alternate(list(paths), arguments.rounds, functools.partial(
                measure, paths=paths, size=size, repeats=arguments.repeats, folder=folder,
                refine=not arguments.no_refine, scale=arguments.scale, threads=arguments.threads))
            difference = float(np.abs(np.load(folder / 'pytorch.npy') - np.load(folder / 'onnxruntime.npy')).max())
            reference = median(pooled['pytorch']['times'])
            for backend in paths:
                seconds = median(pooled[backend]['times'])
                print(f'| {size[0]}x{size[1]} | {backend} | {seconds:.3f} | {seconds / reference:.2f}x | '
                      f'{pooled[backend]["peak_rss_mib"]:.0f} | {difference:.2g} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
