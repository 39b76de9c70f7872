"""Forward timing for the visit: ours (eager and CUDA graph, fp32 / bf16 / fp16) against the seed-style forward.

Batch 1, the bundled default checkpoint, the Motorcycle pair resized to each size (real texture, not
zeros). Two measures:

- ``device``: images already on the device to disparity on the device, synchronized after each call
  (a robot's frame latency). Ours: :meth:`~stereonet_ros.inference.Predictor.device_pass` (uint8 in,
  normalization included) eagerly, or the :meth:`~stereonet_ros.inference.Predictor.capture`\\ d graph's
  replay. The reference ``seed-eager-fp32`` is the network as the seed runs it: ``build_model().eval()``,
  BatchNorm unfolded, NCHW, float32 inputs normalized beforehand, ``torch.no_grad``, torch's default
  backend flags (on CUDA: no cuDNN autotuning, and TF32 convolutions allowed, torch's default; ours in
  fp32 runs without TF32).
- ``host``: :meth:`~stereonet_ros.inference.Predictor.infer` from uint8 host arrays to the float32 host
  answer (uploads and copy back included), eagerly or through the captured graph (what the node sees).

Times come from CUDA events around each call after warm-up calls (``time.perf_counter`` on the CPU);
median, p99, frames per second (1 / median) and, on CUDA, the peak memory allocated during the timed calls.
"""
from __future__ import annotations

import gc
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

PRECISIONS = ('fp32', 'bf16', 'fp16')


@dataclass(frozen=True)
class Timing:
    """One variant's timed calls."""

    median_ms: float
    p99_ms: float
    fps: float
    peak_mib: float | None
    calls: int

    def as_dict(self) -> dict[str, Any]:
        return {'median_ms': round(self.median_ms, 4), 'p99_ms': round(self.p99_ms, 4), 'fps': round(self.fps, 2),
                'peak_mib': None if self.peak_mib is None else round(self.peak_mib, 1), 'calls': self.calls}


def scene(width: int, height: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """The Motorcycle pair resized to ``width`` x ``height`` (area when shrinking), uint8 RGB."""
    import cv2

    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    interpolation = cv2.INTER_AREA if width <= sample.left.shape[1] else cv2.INTER_LINEAR
    left, right = (np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=interpolation),
                                        dtype=np.uint8) for image in (sample.left, sample.right))
    return left, right


def time_calls(call: Callable[[], Any], device: str, warmup: int, repeats: int) -> Timing:
    """``call()`` ``warmup`` times, then ``repeats`` timed calls, each waited for."""
    import torch

    cuda = device.startswith('cuda')
    for _ in range(warmup):
        call()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times_ms = []
    for _ in range(repeats):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            call()
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            call()
            times_ms.append((time.perf_counter() - began) * 1000.0)
    median = statistics.median(times_ms)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return Timing(median_ms=median, p99_ms=float(np.percentile(times_ms, 99)), fps=1000.0 / median, peak_mib=peak,
                  calls=repeats)


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _variants(device: str, left: npt.NDArray[np.uint8], right: npt.NDArray[np.uint8],
              measure: str) -> list[tuple[str, Callable[[], Callable[[], Any]]]]:
    """(name, setup) in the order they are timed; ``setup()`` builds the variant and returns its call."""
    import torch

    from stereonet_ros.inference import DEFAULT_CHECKPOINT, Predictor, without_refiners
    from stereonet_ros.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT)
    variants: list[tuple[str, Callable[[], Callable[[], Any]]]] = []

    def predictor(precision: str, cuda_graphs: bool) -> Predictor:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # preliminary checkpoint: said elsewhere
            return Predictor(checkpoint, device=device, precision=precision,  # type: ignore[arg-type]
                             cuda_graphs=cuda_graphs)

    if measure == 'device':
        def seed() -> Callable[[], Any]:
            model = checkpoint.build_model().to(device).eval()
            reference = predictor('fp32', False)
            normalized = [t.float().to(device) for t in reference.preprocess(left, right)]  # (1, C, H, W) NCHW

            def call() -> Any:
                with torch.no_grad():
                    return model(*normalized)
            return call
        variants.append(('seed-eager-fp32', seed))
        for precision in PRECISIONS:
            def eager(precision: str = precision) -> Callable[[], Any]:
                ours = predictor(precision, False)
                uploaded = ours.upload(left, right)
                return lambda: ours.device_pass(*uploaded)

            def graph(precision: str = precision) -> Callable[[], Any]:
                return predictor(precision, True).capture(left, right).replay
            variants += [(f'ours-eager-{precision}', eager), (f'ours-graph-{precision}', graph)]
    else:
        for precision in PRECISIONS:
            for mode in ('eager', 'graph'):
                def host(precision: str = precision, mode: str = mode) -> Callable[[], Any]:
                    ours = predictor(precision, mode == 'graph')
                    return lambda: ours.infer(left, right)
                variants.append((f'ours-{mode}-{precision}', host))
        # The README's setting for better depth, refine false at inference_scale 2: what it costs on the device.
        for precision in PRECISIONS:
            for mode in ('eager', 'graph'):
                def unrefined(precision: str = precision, mode: str = mode) -> Callable[[], Any]:
                    with warnings.catch_warnings():
                        warnings.simplefilter('ignore')
                        ours = Predictor(without_refiners(checkpoint), device=device,
                                         precision=precision, cuda_graphs=mode == 'graph')  # type: ignore[arg-type]
                    return lambda: ours.infer(left, right, scale=2.0)
                variants.append((f'ours-{mode}-norefine-scale2-{precision}', unrefined))
    return variants


def _applicable(name: str, device: str) -> str | None:
    """Why ``name`` cannot run on ``device``, or None."""
    from stereonet_ros.precision import cpu_has_native_bf16

    if device.startswith('cuda'):
        return None
    if '-graph-' in name:
        return 'CUDA graphs need CUDA'
    if name.endswith('fp16'):
        return 'fp16 runs on CUDA only'
    if name.endswith('bf16') and not cpu_has_native_bf16():
        return 'bf16 on this CPU would be emulated'
    return None


def benchmark(device: str, sizes: list[tuple[int, int]], warmup: int, repeats: int, deadline: float,
              record: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every variant at every ``(width, height)``, ``device`` measures first, then ``host``; variants not
    started by ``deadline`` (``time.monotonic()``) are skipped. ``record`` gets the results so far after
    each variant (a step killed at its limit keeps them)."""
    results: dict[str, Any] = {'sizes': {}, 'warmup': warmup, 'repeats': repeats}
    for measure in ('device', 'host'):
        for width, height in sizes:
            left, right = scene(width, height)
            table = results['sizes'].setdefault(f'{width}x{height}', {}).setdefault(measure, {})
            for name, setup in _variants(device, left, right, measure):
                reason = _applicable(name, device)
                if reason is None and time.monotonic() > deadline:
                    reason = 'out of time'
                if reason is not None:
                    table[name] = {'status': 'skipped', 'reason': reason}
                    continue
                try:
                    timing = time_calls(setup(), device, warmup, repeats)
                    table[name] = {'status': 'ok', **timing.as_dict()}
                except Exception as err:  # noqa: BLE001 - one variant failing must not lose the others
                    table[name] = {'status': 'failed', 'reason': f'{type(err).__name__}: {str(err)[:300]}'}
                finally:
                    _release()
                seed = table.get('seed-eager-fp32', {})
                if table[name].get('status') == 'ok' and seed.get('status') == 'ok':
                    table[name]['vs_seed'] = round(table[name]['median_ms'] / seed['median_ms'], 4)
                record(results)
    return results


def profile_forward(device: str, width: int, height: int, passes: int) -> dict[str, Any]:
    """Operator (and on CUDA kernel) tables of our eager device pass at ``width`` x ``height``
    (:func:`~stereonet_ros.visit.profile.profile_calls`): bf16 where it runs natively, else fp32. Eager, not
    the captured graph: a replay is one opaque launch to the profiler, and its kernels are the eager ones."""
    from stereonet_ros.visit.profile import profile_calls

    left, right = scene(width, height)
    variants = dict(_variants(device, left, right, 'device'))
    precision = 'bf16' if _applicable('ours-eager-bf16', device) is None else 'fp32'
    try:
        call = variants[f'ours-eager-{precision}']()
        return {'status': 'ok', 'size': f'{width}x{height}', 'variant': f'ours-eager-{precision}',
                **profile_calls(call, device, passes=passes)}
    finally:
        _release()
