"""The visit's training burst: continue the current recipe from its latest best (:func:`start_checkpoint`), as fast
as the machine allows.

The recipe is :class:`~stereonet_ros.training.train.TrainConfig`'s defaults; the burst changes only what a
machine decides: the device, the data workers (all cores), the batch size, and how often it saves and logs
(no mid-run validation: the visit's evaluation step scores the result on the same sets).

The batch size: first measured, the generator's rate ``G`` (samples/s with every worker, after its start
and its prefetched batches) and the device's (GPU's) training rate ``R(B)`` (samples/s of full steps on random
crops, bf16 autocast) for each candidate ``B``. The burst takes the largest ``B`` whose ``R(B) <= G``, the
largest batch the generator still keeps fed; when even the smallest outruns the generator, the smallest
(the GPU waits whatever the batch, and the recipe's batch of 4 gives the most steps).

The layout: ``R(B)`` is measured in both memory formats (:data:`LAYOUTS`, ``TrainConfig.memory_format``), and
the burst trains in the one whose chosen batch feeds the most samples/s. Then one step at that batch and layout
is profiled (:mod:`stereonet_ros.visit.profile`): the operators and kernels that take its time.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


CONTINUE_FROM = 'stereonet_v3_candidate.safetensors'
"""The checkpoint in ``stereonet_ros/checkpoints/`` that a burst without ``init_checkpoint`` continues from
when it is there: the latest best of ``TrainConfig``'s own recipe (three refiners, disparity in 32 px
units), which the bundled default no longer has (since 2026-11-30 it is the single image-guided refiner
of the staged recipe: continue it with ``init_checkpoint=`` and that recipe's model overrides, as the
README's visit command does). Without it the burst starts from the bundled default."""


def start_checkpoint(overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Where the burst starts: an ``init_checkpoint=`` among the ``--train-override`` values (a run carried to the
    GPU machine, e.g. a refiner stage to continue), else :data:`CONTINUE_FROM` if present, else the bundled
    default."""
    from stereonet_ros.inference import DEFAULT_CHECKPOINT

    given = [item.split('=', 1)[1] for item in overrides if item.startswith('init_checkpoint=')]
    if given and given[-1]:
        return Path(given[-1])
    candidate = DEFAULT_CHECKPOINT.parent / CONTINUE_FROM
    return candidate if candidate.is_file() else DEFAULT_CHECKPOINT


def generator_rate(data: Any, workers: int, batch_size: int, seconds: float, seed: int) -> dict[str, Any]:
    """Samples/s the synthetic generator delivers through a DataLoader with ``workers`` processes, timed
    for about ``seconds`` after the workers' start and the batches they prefetched meanwhile."""
    from stereonet_ros.data.synthetic import SyntheticStereoDataset, worker_init_fn
    from stereonet_ros.training.train import StepBatches

    dataset = SyntheticStereoDataset(data, length=2**62, seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepBatches(0, 10**9, batch_size),
                                         num_workers=workers, worker_init_fn=worker_init_fn if workers else None)
    iterator = iter(loader)
    try:
        started = time.monotonic()
        for _ in range(1 + 2 * workers):  # the first batch waits for the workers; 2 per worker were prefetched
            next(iterator)
        warm = time.monotonic()
        batches = 0
        while batches < 2 or time.monotonic() - warm < seconds:
            next(iterator)
            batches += 1
        elapsed = time.monotonic() - warm
    finally:
        del iterator  # stops the workers
    return {'samples_per_s': batches * batch_size / elapsed, 'workers': workers, 'batch_size': batch_size,
            'timed_s': round(elapsed, 2), 'startup_s': round(warm - started, 2)}


def training_step(config: Any, weights: dict[str, torch.Tensor], device: torch.device,
                  batch_size: int) -> Callable[[], None]:
    """One full training step as ``train`` takes it (left+right forward under autocast, loss, backward,
    clipping, AdamW) at ``batch_size``, on random crops already on the device, in ``config.memory_format``'s
    layout and with cuDNN autotuning on CUDA, the parts ``config.train_parts`` freezes frozen and the coarse
    input of ``config.coarse_input``, as ``train`` sets them ('mixed' is timed on the network's input: its
    slower steps)."""
    from stereonet_ros.model.stereonet import StereoNet, to_channels_last
    from stereonet_ros.precision import autocast_dtype_for, cpu_has_native_bf16
    from stereonet_ros.training.train import frozen_parts, oracle_coarse, training_loss, uses_channels_last

    model = StereoNet(config.model)
    model.load_state_dict(weights)
    model = model.to(device).train()
    channels_last = uses_channels_last(config, device)
    if channels_last:
        to_channels_last(model)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    for module in frozen_parts(model, config.train_parts):
        module.requires_grad_(False)
        module.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    dtype = autocast_dtype_for(config.precision, device.type, device.type == 'cpu' and cpu_has_native_bf16())
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, config.model.in_channels, config.data.height, config.data.width)
    left, right = (torch.rand(shape, generator=generator).to(device) * 2 - 1 for _ in range(2))
    truth = [(torch.rand((batch_size, 1, *shape[2:]), generator=generator) * 0.8 * config.model.max_disparity)
             .to(device) for _ in range(2)]
    if channels_last:
        left, right = (t.contiguous(memory_format=torch.channels_last) for t in (left, right))

    oracle = config.coarse_input == 'oracle'
    coarse = tuple(oracle_coarse(t, config.model.downsampling_factor) for t in truth) if oracle else None

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model(left, right, with_right=True, coarse=coarse)
        loss = training_loss(config, output, truth[0], truth[1], None, None, oracle)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
        optimizer.step()
    return step


def gpu_step_rate(config: Any, weights: dict[str, torch.Tensor], device: torch.device, batch_size: int,
                  steps: int, warmup: int = 2) -> dict[str, Any]:
    """Samples/s of :func:`training_step` at ``batch_size`` after ``warmup`` warm-up steps (cuDNN's autotuning
    and the allocator settle in the first)."""
    step = training_step(config, weights, device, batch_size)

    def synchronize() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    synchronize()
    start = time.monotonic()
    for _ in range(steps):
        step()
    synchronize()
    seconds = (time.monotonic() - start) / steps
    return {'batch_size': batch_size, 'layout': config.memory_format, 'step_ms': round(seconds * 1000.0, 2),
            'samples_per_s': round(batch_size / seconds, 2)}


def choose_batch(generator_samples_per_s: float, rates: list[dict[str, Any]]) -> tuple[int, str]:
    """The largest measured batch whose GPU rate the generator still meets (module doc), and why."""
    fed = [rate for rate in rates if rate['samples_per_s'] <= generator_samples_per_s]
    if fed:
        chosen = max(fed, key=lambda rate: rate['batch_size'])
        return chosen['batch_size'], (f'the largest batch the generator keeps fed: the device trains '
                                      f'{chosen["samples_per_s"]:.1f} samples/s <= generator {generator_samples_per_s:.1f}')
    smallest = min(rates, key=lambda rate: rate['batch_size'])
    return smallest['batch_size'], (f'the device outruns the generator ({generator_samples_per_s:.1f} samples/s) even '
                                    f'at batch {smallest["batch_size"]} ({smallest["samples_per_s"]:.1f} samples/s): '
                                    'the smallest batch gives the most steps')


LAYOUTS = ('contiguous', 'channels_last')
"""The layouts the calibration measures (``TrainConfig.memory_format``), the default's first: it keeps a tie."""


def choose_layout(generator_samples_per_s: float, rates: list[dict[str, Any]]) -> tuple[str, int, str]:
    """The layout whose chosen batch (:func:`choose_batch`) trains the most samples/s with this generator
    (the device's rate, capped at the generator's), that batch, and why."""
    best: tuple[float, str, int, str] | None = None
    for layout in LAYOUTS:
        measured = [rate for rate in rates if rate.get('layout') == layout and 'samples_per_s' in rate]
        if not measured:
            continue
        batch, why = choose_batch(generator_samples_per_s, measured)
        fed = min(generator_samples_per_s, next(r for r in measured if r['batch_size'] == batch)['samples_per_s'])
        if best is None or fed > best[0]:
            best = (fed, layout, batch, why)
    if best is None:
        raise RuntimeError(f'no batch size could be measured: {rates}')
    return best[1], best[2], f'{best[1]}, {best[3]}'


def log_summary(log_path: Path) -> dict[str, Any]:
    """First and last logged loss, and the rows' mean samples/s (the first row, which includes the
    workers' start, left out when there are others)."""
    rows = [row for row in csv.DictReader(log_path.open()) if row.get('loss')]
    if not rows:
        return {'rows': 0}
    rates = [float(row['samples_per_s']) for row in rows]
    steady = rates[1:] or rates
    return {'rows': len(rows), 'first_loss': float(rows[0]['loss']), 'last_loss': float(rows[-1]['loss']),
            'last_step': int(rows[-1]['step']), 'samples_per_s_logged': round(sum(steady) / len(steady), 2)}


def burst(work: Path, device_name: str, plan: dict[str, Any], time_limit_s: float,
          record: Any) -> dict[str, Any]:
    """Calibrate, choose the batch, train until ``time_limit_s`` (from the call) is spent. Returns what
    was measured and where the checkpoint and log are (``work/train``)."""
    from stereonet_ros.inference import resolve_device
    from stereonet_ros.model.checkpoint import load_checkpoint
    from stereonet_ros.config import load
    from stereonet_ros.precision import autocast_dtype_for, cpu_has_native_bf16
    from stereonet_ros.training.train import TrainConfig, initial_weights, train
    from stereonet_ros.visit.profile import profile_calls

    began = time.monotonic()
    device = resolve_device(device_name)
    overrides = list(plan.get('overrides', []))
    recipe = load(TrainConfig, overrides=overrides)
    start = start_checkpoint(overrides)
    sizes: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value
                             for key, value in plan.get('data', {}).items()}
    data = dataclasses.replace(recipe.data, **sizes)  # (JSON made the pairs lists)
    workers = int(plan['workers'])
    base = dataclasses.replace(recipe, data=data, device=str(device), precision='bf16', workers=workers,
                               init_checkpoint=str(start), validate_every=10**9,
                               checkpoint_every=int(plan['checkpoint_every']), log_every=int(plan['log_every']),
                               # The run's last step validates (twice with a moving average); the evaluation
                               # step scores the result properly, so the rehearsal keeps this one small.
                               validation_samples=int(plan['validation_samples']), score_real_pair=False)
    described = f'TrainConfig defaults with {" ".join(overrides)}' if overrides else 'TrainConfig defaults'
    # What the steps run in: the same rule as training_step's (bf16 where the device computes it natively).
    autocast = autocast_dtype_for(base.precision, device.type, device.type == 'cpu' and cpu_has_native_bf16())
    result: dict[str, Any] = {'recipe': f'{described}, from {start.name}',
                              'device': str(device), 'crop': f'{data.width}x{data.height}',
                              'precision': 'float32 (no native bfloat16 here)' if autocast is None else 'bf16 autocast'}
    generator = generator_rate(data, workers, int(plan['calibration_batch']), float(plan['generator_seconds']),
                               seed=recipe.seed + 7919)
    result['generator'] = generator
    record(result)
    initial = load_checkpoint(start)
    weights, _ = initial_weights(initial.config, initial.state_dict, base)
    rates: list[dict[str, Any]] = []
    for layout in LAYOUTS:
        for batch_size in plan['batch_candidates']:
            if time.monotonic() - began > float(plan['calibration_limit_s']):
                break
            try:
                rates.append(gpu_step_rate(dataclasses.replace(base, memory_format=layout), weights, device,
                                           int(batch_size), int(plan['calibration_steps']),
                                           int(plan['calibration_warmup'])))
            except torch.OutOfMemoryError:
                rates.append({'batch_size': batch_size, 'layout': layout, 'out_of_memory': True})
                break
            finally:
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
            record({**result, 'gpu': rates})
    layout, batch_size, why = choose_layout(generator['samples_per_s'], rates)
    base = dataclasses.replace(base, memory_format=layout)
    result.update(gpu=rates, batch_size=batch_size, layout=layout, batch_reason=why)
    record(result)
    try:  # why a step takes what it takes, at the batch and layout the burst trains with
        result['step_profile'] = {'status': 'ok', 'batch_size': batch_size, 'layout': layout,
                                  **profile_calls(training_step(base, weights, device, batch_size), device.type,
                                                  passes=int(plan['profile_steps']))}
    except Exception as err:  # noqa: BLE001 - a profiler failure must not cost the burst
        result['step_profile'] = {'status': 'failed', 'reason': f'{type(err).__name__}: {str(err)[:300]}'}
    finally:
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    record(result)
    remaining = time_limit_s - (time.monotonic() - began)
    if remaining < float(plan['min_train_s']):
        raise RuntimeError(f'calibration left {remaining:.0f} s of {time_limit_s:.0f} s: no time to train')
    # The schedule fits the burst: the steps the measured rates allow in the time left (90 %), so that the
    # cosine reaches lr_min as the time runs out instead of stopping at the peak rate; warm-up a tenth of it.
    chosen_rate = next(rate for rate in rates if rate.get('layout') == layout and rate['batch_size'] == batch_size
                       and 'samples_per_s' in rate)['samples_per_s']
    expected = max(int(0.9 * remaining * min(generator['samples_per_s'], chosen_rate) / batch_size), 2)
    config = dataclasses.replace(base, batch_size=batch_size, steps=expected,
                                 warmup_steps=min(base.warmup_steps, max(expected // 10, 1)))
    result.update(planned_steps=expected, warmup_steps=config.warmup_steps)
    run_dir = work / 'train'
    train_start = time.monotonic()
    step = train(config, run_dir, progress=False, time_limit_s=remaining)
    train_seconds = time.monotonic() - train_start
    achieved = step * batch_size / train_seconds
    limit = min(generator['samples_per_s'], chosen_rate)
    result.update(steps=step, samples=step * batch_size, train_s=round(train_seconds, 1),
                  samples_per_s=round(achieved, 2),
                  bound_by='generator' if generator['samples_per_s'] < chosen_rate else 'device',
                  of_bound=round(achieved / limit, 3) if limit > 0 and math.isfinite(limit) else None,
                  log=log_summary(run_dir / 'log.csv'),
                  checkpoint=str(run_dir / 'model_latest.safetensors'), log_csv=str(run_dir / 'log.csv'))
    average = run_dir / 'model_ema.safetensors'
    if average.exists():  # written only with --train-override ema_decay=...: the weights' moving average
        result['ema_checkpoint'] = str(average)
    return result
