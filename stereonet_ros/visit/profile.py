"""Where a pass spends its time: the visit's operator and kernel tables, from ``torch.profiler``.

The timing tables say how fast the forward and the training step are; these say why. Each is the top rows of
``key_averages()`` over ``passes`` calls of ``call`` after one warm-up, per pass:

- ``operators``: aten operators grouped by input shapes (which layer it is), ranked by their self time on the
  device that ran them (CUDA: the time of the kernels they launched; CPU: their own CPU time);
- ``kernels`` (CUDA only): the device kernels themselves, by total time (a layout transpose, a slow cuDNN
  algorithm, a reduction that should not be there all show up by name).

``total_ms`` is the sum over every row (not only the top ones), so ``share`` says how much of the pass the
listed rows explain.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

NAME_CHARS = 96
"""Kernel names run to hundreds of characters of template arguments: the head says what they are."""


def _self_ms(event: Any, cuda: bool) -> float:
    return float(event.self_device_time_total if cuda else event.self_cpu_time_total) / 1000.0


def _rows(events: list[Any], cuda: bool, passes: int, top: int, shapes: bool) -> tuple[list[dict[str, Any]], float]:
    timed = [(event, _self_ms(event, cuda)) for event in events]
    total = sum(ms for _, ms in timed)
    ranked = sorted((pair for pair in timed if pair[1] > 0), key=lambda pair: -pair[1])[:top]
    rows = []
    for event, ms in ranked:
        row: dict[str, Any] = {'name': str(event.key)[:NAME_CHARS], 'calls_per_pass': round(event.count / passes, 2),
                               'ms_per_pass': round(ms / passes, 4),
                               'share': round(ms / total, 4) if total > 0 else None}
        if shapes:
            row['input_shapes'] = str(getattr(event, 'input_shapes', '') or '')[:NAME_CHARS]
        rows.append(row)
    return rows, total / passes


def profile_calls(call: Callable[[], Any], device: str, passes: int = 3, top: int = 12) -> dict[str, Any]:
    """Profile ``passes`` calls of ``call`` (one warm-up call first, not profiled) on ``device``.

    Returns:
        ``{'passes', 'operators': [rows], 'operators_total_ms', 'kernels': [rows], 'kernels_total_ms'}``
        (``kernels`` only on CUDA); each row ``name``, ``calls_per_pass``, ``ms_per_pass``, ``share`` of the
        table's total, and for operators ``input_shapes``.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith('cuda')
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    call()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities, record_shapes=True) as profiler:
        for _ in range(passes):
            call()
        if cuda:
            torch.cuda.synchronize()
    by_shape = profiler.key_averages(group_by_input_shape=True)
    operators = [event for event in by_shape if str(event.key).startswith('aten::')]
    result: dict[str, Any] = {'passes': passes}
    result['operators'], result['operators_total_ms'] = _rows(operators, cuda, passes, top, shapes=True)
    if cuda:
        kernels = [event for event in profiler.key_averages()
                   if getattr(event, 'device_type', None) == torch.autograd.DeviceType.CUDA]
        result['kernels'], result['kernels_total_ms'] = _rows(kernels, True, passes, top, shapes=False)
    return result
