"""StereoNet forward time: our inference path against a plain eager float32 NCHW forward, same run.

    .venv/bin/python benchmarks/model_forward.py [--checkpoint PATH] [--repeats 5] [--rounds 2]

Each configuration runs in a fresh subprocess, so that one's allocator settings cannot help the
other: the baseline is the network as the seed runs it (``model.eval()``, NCHW, BatchNorm unfolded,
glibc's default allocator, ``torch.no_grad``); ours is ``Predictor.run`` (BatchNorm folded,
channels-last, allocator tuned, ``torch.inference_mode``). Both use the same weights and inputs.
Rounds alternate baseline and ours; the table gives the median forward over all rounds, the ratio
ours / baseline, and each process's peak resident memory. ``ours-bf16`` (``precision=bf16``) is added on a
CPU with native bfloat16 and on a GPU, ``ours-fp16`` on a GPU; on a GPU machine, CUDA rows are added.
"""
from __future__ import annotations

import argparse
import functools
import sys

from _workers import alternate, median, run_worker

SIZES = ((960, 544), (640, 480))

WORKER = r'''
import json, resource, statistics, sys, time, warnings
import torch
variant, device, checkpoint = sys.argv[1], sys.argv[2], sys.argv[6]
width, height, repeats = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
warnings.simplefilter('ignore')
from stereonet_ros.inference import Predictor, DEFAULT_CHECKPOINT, placeholder_checkpoint
from stereonet_ros.model.checkpoint import load_checkpoint
if checkpoint == 'default':
    loaded = load_checkpoint(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.exists() else placeholder_checkpoint()
else:
    loaded = load_checkpoint(checkpoint)
generator = torch.Generator().manual_seed(0)
channels = loaded.config.in_channels
left = torch.randn(1, channels, height, width, generator=generator)
right = torch.randn(1, channels, height, width, generator=generator)
synchronize = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
if variant == 'baseline':
    model = loaded.build_model().to(device)
    left, right = left.to(device), right.to(device)
    def forward():
        with torch.no_grad():
            return model(left, right)
else:
    predictor = Predictor(loaded, device=device, precision=variant.removeprefix('ours-') if '-' in variant else 'fp32')
    left, right = left.to(device), right.to(device)
    def forward():
        return predictor.run(left, right)
forward(); synchronize()  # warm-up: first-touch allocation, oneDNN/cuDNN kernel choice
times = []
for _ in range(repeats):
    start = time.perf_counter(); forward(); synchronize(); times.append(time.perf_counter() - start)
peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if device.startswith('cuda') else 0.0
print(json.dumps({'times': times, 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'peak_cuda_mib': peak_cuda}))
'''


def measure(variant: str, device: str, size: tuple[int, int], repeats: int, checkpoint: str) -> dict[str, object]:
    width, height = size
    return run_worker(WORKER, [variant, device, width, height, repeats, checkpoint])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--checkpoint', default='default', help="checkpoint to time (default: the bundled one)")
    parser.add_argument('--repeats', type=int, default=5, help='timed forwards per process')
    parser.add_argument('--rounds', type=int, default=2, help='alternating baseline/ours processes per row')
    arguments = parser.parse_args()

    import torch

    from stereonet_ros.precision import cpu_has_native_bf16
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    print(f'# StereoNet forward, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, '
          f'checkpoint {arguments.checkpoint}; median of {arguments.repeats} x {arguments.rounds} forwards')
    print('| device | size | variant | median s | ratio vs baseline | peak RSS MiB | peak CUDA MiB |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for device in devices:
        variants = ['baseline', 'ours'] + (['ours-bf16'] if device == 'cuda' or cpu_has_native_bf16() else []) + (
            ['ours-fp16'] if device == 'cuda' else [])
        for size in SIZES:
            pooled = alternate(variants, arguments.rounds, functools.partial(
                measure, device=device, size=size, repeats=arguments.repeats, checkpoint=arguments.checkpoint))
            baseline = median(pooled['baseline']['times'])
            for variant in variants:
                seconds = median(pooled[variant]['times'])
                print(f'| {device} | {size[0]}x{size[1]} | {variant} | {seconds:.3f} | {seconds / baseline:.2f}x | '
                      f'{pooled[variant]["peak_rss_mib"]:.0f} | {pooled[variant]["peak_cuda_mib"]:.0f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
