"""Seconds per training step: ours against a plain eager float32 NCHW step of the same model, same run.

    .venv/bin/python benchmarks/train_step.py [--crop 192x384] [--batch 4] [--steps 4] [--rounds 2]

A step = forward of both views' pyramids, the robust pyramid loss, backward, RMSprop update, on a
fixed synthetic batch (so data generation is not timed). Each variant runs in a fresh subprocess:
``baseline`` = NCHW, glibc's default allocator, fp32 (the way the seed trains on a CPU); ``ours`` =
what ``stereonet-train`` does: channels-last, the allocator tuned, and bf16 autocast on a GPU and on a
CPU that computes bfloat16 natively (the table's ``autocast`` column says which ran).
Rounds alternate the variants; the table gives medians and the ratio against the baseline.
"""
from __future__ import annotations

import argparse
import functools
import sys

from _workers import alternate, median, run_worker

WORKER = r'''
import json, resource, sys, time
import torch
variant, device, height, width, batch, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
if variant != 'baseline' and device == 'cpu':
    from stereonet_ros.cpu_allocator import tune_allocator_for_inference
    tune_allocator_for_inference()
from stereonet_ros.data.synthetic import SyntheticConfig, SyntheticStereoDataset
from stereonet_ros.model.stereonet import StereoNet, to_channels_last
from stereonet_ros.training.loss import stereo_pyramid_loss
from stereonet_ros.precision import autocast_dtype_for, cpu_has_native_bf16
from stereonet_ros.training.train import TrainConfig, normalize
config = TrainConfig()
torch.manual_seed(0)
model = StereoNet(config.model).to(device).train()
channels_last = variant != 'baseline'
if channels_last:
    to_channels_last(model)
data = SyntheticStereoDataset(SyntheticConfig(height=height, width=width), length=batch, seed=0)
sample = torch.utils.data.default_collate([data[i] for i in range(batch)])
left, right = normalize(sample['left']).to(device), normalize(sample['right']).to(device)
if channels_last:
    left = left.contiguous(memory_format=torch.channels_last)
    right = right.contiguous(memory_format=torch.channels_last)
gt_left, gt_right = sample['disp_left'].to(device), sample['disp_right'].to(device)
optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4)
autocast_dtype = (autocast_dtype_for(config.precision, device, device == 'cpu' and cpu_has_native_bf16())
                  if variant == 'ours' else None)
synchronize = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
def step():
    with torch.autocast(device_type=device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        output = model(left, right, with_right=True)
    loss = stereo_pyramid_loss([p.float() for p in output.pyramid], [p.float() for p in output.right_pyramid],
                               gt_left, gt_right, None, None, 192.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
step(); synchronize()
times = []
for _ in range(steps):
    start = time.perf_counter(); step(); synchronize(); times.append(time.perf_counter() - start)
print(json.dumps({'times': times, 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'autocast': str(autocast_dtype or torch.float32).removeprefix('torch.')}))
'''


def measure(variant: str, device: str, crop: tuple[int, int], batch: int, steps: int) -> dict[str, object]:
    return run_worker(WORKER, [variant, device, crop[0], crop[1], batch, steps])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--crop', default='192x384', help='HxW of the training crop')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--steps', type=int, default=4, help='timed steps per process')
    parser.add_argument('--rounds', type=int, default=2)
    arguments = parser.parse_args()
    height, width = (int(v) for v in arguments.crop.lower().split('x'))

    import torch
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    print(f'# StereoNet training step, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, '
          f'crop {height}x{width}, batch {arguments.batch}; median of {arguments.steps} x {arguments.rounds} steps')
    print('| device | variant | autocast | median s/step | samples/s | ratio vs baseline | peak RSS MiB |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for device in devices:
        variants = ['baseline', 'ours']
        pooled = alternate(variants, arguments.rounds, functools.partial(
            measure, device=device, crop=(height, width), batch=arguments.batch, steps=arguments.steps))
        baseline = median(pooled['baseline']['times'])
        for variant in variants:
            seconds = median(pooled[variant]['times'])
            print(f'| {device} | {variant} | {pooled[variant]["autocast"]} | {seconds:.3f} | '
                  f'{arguments.batch / seconds:.2f} | {seconds / baseline:.2f}x | '
                  f'{pooled[variant]["peak_rss_mib"]:.0f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
