"""The visit's steps, each run by :mod:`stereonet_ros.visit.run` in a process of its own:

    python -m stereonet_ros.visit.steps NAME CONTEXT.json

A step reads its context (device, plan, time limit, work folder) and writes ``WORK/NAME.json``: a
``status`` (``ok``, ``failed``, ``skipped``; ``partial`` while it runs, so that a step killed at its
limit leaves what it measured) and its figures. A missing module makes the step ``skipped`` with the
module's name; any other exception makes it ``failed`` with the error, and the visit goes on.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
CUDA_TEST_FILES = ('test/test_cuda.py', 'test/test_inference.py')
"""Files holding tests marked ``cuda`` that import nothing the GPU machine lacks."""


@dataclass
class Context:
    """What a step is told (the JSON the visit writes for it)."""

    name: str
    work: Path
    device: str
    rehearse: bool
    limit_s: float
    plan: dict[str, Any]

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` by which the step should be wrapping up: 85 % of its limit."""
        return self.started + 0.85 * self.limit_s

    def remaining(self) -> float:
        return self.started + self.limit_s - time.monotonic()

    def save(self, result: dict[str, Any]) -> None:
        """Write ``WORK/NAME.json`` atomically."""
        path = self.work / f'{self.name}.json'
        temporary = path.with_suffix('.tmp')
        temporary.write_text(json.dumps(result, indent=1, default=str))
        os.replace(temporary, path)


def environment(device: str) -> dict[str, Any]:
    """Versions and the device, as this process sees them."""
    import torch

    info: dict[str, Any] = {'python': sys.version.split()[0], 'torch': torch.__version__,
                            'numpy': np.__version__, 'cpu_count': os.cpu_count()}
    if device.startswith('cuda'):
        properties = torch.cuda.get_device_properties(torch.device(device))
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),  # type: ignore[no-untyped-call]
                    gpu=properties.name,
                    capability=f'{properties.major}.{properties.minor}', multiprocessors=properties.multi_processor_count,
                    memory_gib=round(properties.total_memory / 2**30, 1))
    return info


# --- (a) CUDA correctness -----------------------------------------------------------------------------

def _pytest(ctx: Context, timeout: float) -> dict[str, Any]:
    """The CUDA-marked tests under pytest, when pytest is installed: counts and the failures."""
    if importlib.util.find_spec('pytest') is None:  # also None where a test blocks it (sys.modules entry None)
        return {'status': 'skipped', 'reason': 'pytest is not installed here: the checks below ran without it'}
    files = [name for name in CUDA_TEST_FILES if (REPOSITORY / name).exists()]
    if not files:
        return {'status': 'skipped', 'reason': f'none of {CUDA_TEST_FILES} in this copy'}
    report = ctx.work / 'cuda_junit.xml'
    command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-o', 'addopts=', '-m', 'cuda',
               f'--junitxml={report}', *files]
    try:
        completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'status': 'timeout', 'reason': f'stopped after {timeout:.0f} s; the checks below ran without it'}
    print(completed.stdout[-4000:], completed.stderr[-2000:], sep='\n')
    if not report.exists():
        return {'status': 'failed', 'reason': f'pytest exited {completed.returncode} without a report: '
                                              f'{(completed.stderr or completed.stdout).strip()[-300:]}'}
    counts = {'passed': 0, 'failed': 0, 'skipped': 0}
    failures = []
    for case in ElementTree.parse(report).getroot().iter('testcase'):
        name = f'{case.get("classname", "")}::{case.get("name", "")}'
        problem = case.find('failure') if case.find('failure') is not None else case.find('error')
        if problem is not None:
            counts['failed'] += 1
            failures.append({'test': name, 'message': (problem.get('message') or '')[:300]})
        elif case.find('skipped') is not None:
            counts['skipped'] += 1
        else:
            counts['passed'] += 1
    status = 'ok' if completed.returncode in (0, 5) and not failures else 'failed'  # 5: nothing collected
    return {'status': status, 'exit_code': completed.returncode, **counts, 'failures': failures}


def cuda_tests(ctx: Context) -> dict[str, Any]:
    from stereonet_ros.visit import checks

    result: dict[str, Any] = {'status': 'partial', 'environment': environment(ctx.device)}
    result['pytest'] = _pytest(ctx, timeout=0.6 * ctx.limit_s)
    ctx.save(result)
    crop = ctx.plan.get('check_crop')
    pair = checks.real_pair(tuple(crop) if crop else None)
    # Where pytest passed them all (test_cuda.py runs each check once), only the checks with figures to report
    # run again; else (no pytest, a failure, a skip, a timeout) every check runs here.
    ran_all = result['pytest']['status'] == 'ok' and result['pytest']['passed'] >= len(checks.CHECKS)
    chosen = checks.FIGURE_CHECKS if ran_all else checks.CHECKS
    result['checks'] = checks.run_checks(ctx.device, pair, deadline=ctx.deadline, checks=chosen)
    failed = [c['name'] for c in result['checks'] if c['status'] == 'failed']
    if result['pytest']['status'] == 'failed':
        failed.append('pytest')
    result['status'] = 'failed' if failed else 'ok'
    if failed:
        result['reason'] = f'failed: {", ".join(failed)}'
    return result


# --- (b) forward benchmark ----------------------------------------------------------------------------

def forward(ctx: Context) -> dict[str, Any]:
    from stereonet_ros.visit.forward import benchmark, profile_forward

    sizes = [tuple(size) for size in ctx.plan['forward_sizes']]
    results = benchmark(ctx.device, sizes, int(ctx.plan['forward_warmup']), int(ctx.plan['forward_repeats']),
                        ctx.deadline, record=lambda partial: ctx.save({'status': 'partial', **partial}))
    statuses = [variant['status'] for size in results['sizes'].values() for table in size.values()
                for variant in table.values()]
    results['status'] = 'failed' if 'failed' in statuses else 'ok' if 'ok' in statuses else 'skipped'
    if time.monotonic() < ctx.deadline:
        try:  # where the time goes, after the timings it must not cost
            width, height = sizes[0]
            results['profile'] = profile_forward(ctx.device, width, height, int(ctx.plan['profile_passes']))
        except Exception as err:  # noqa: BLE001 - a profiler failure must not lose the timings
            results['profile'] = {'status': 'failed', 'reason': f'{type(err).__name__}: {str(err)[:300]}'}
    else:
        results['profile'] = {'status': 'skipped', 'reason': 'out of time'}
    return results


# --- (c) the node's processing, without DDS -----------------------------------------------------------

def _camera_info(width: int, height: int, right: bool) -> Any:
    """A CameraInfo-like object (the fields :func:`~stereonet_ros.camera.from_camera_infos` reads)."""
    fx, baseline = 700.0, 0.12
    return SimpleNamespace(header=SimpleNamespace(frame_id='left_optical'), width=width, height=height,
                           p=[fx, 0.0, width / 2, -fx * baseline if right else 0.0, 0.0, fx, height / 2, 0.0,
                              0.0, 0.0, 1.0, 0.0])


POST_STAGES = ('post_colours', 'post_validity', 'post_depth', 'post_cloud', 'post_colour_map')
"""The parts of ``post`` (:class:`~stereonet_ros.processing.StereoOutputs`' timings), reported each."""


def node_processing(ctx: Context) -> dict[str, Any]:
    """What the node's worker does per pair, with its own functions: decode (two colour messages),
    :class:`~stereonet_ros.processing.DeviceGuard` around :meth:`StereoProcessor.process` (inference, then
    ``postprocess``: validity, depth, cloud, confidence, colour map; the cloud's colours decoded as the
    node decodes them), every output selected. Message building and publishing need rclpy: not here."""
    from stereonet_ros.camera import from_camera_infos
    from stereonet_ros.image_codec import array_to_image_fields
    from stereonet_ros.inference import DEFAULT_CHECKPOINT, Predictor
    from stereonet_ros.local_search import AUTO, DEFAULT_REACH_PX
    from stereonet_ros.model.checkpoint import load_checkpoint
    from stereonet_ros.node_config import NodeConfig
    from stereonet_ros.processing import (DeviceGuard, OutputSelection, StereoProcessor, decode_colours,
                                          decode_pair)
    from stereonet_ros.precision import cpu_has_native_bf16
    from stereonet_ros.visit.forward import scene

    width, height = ctx.plan['node_size']
    left, right = scene(width, height)
    left_msg = array_to_image_fields(left, 'rgb8')
    right_msg = array_to_image_fields(np.ascontiguousarray(right[:, :, ::-1]), 'bgr8')  # a BGR camera too
    camera = from_camera_infos(_camera_info(width, height, False), _camera_info(width, height, True))
    outputs = OutputSelection()
    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT)
    warnings_: list[str] = []
    guard = DeviceGuard(warn=lambda kind, text: warnings_.append(text), report=warnings_.append)
    cuda = ctx.device.startswith('cuda')
    # (precision, CUDA graphs, local_search_px): the node's default reach (-1) is off beside a GPU network; the
    # last variant times the host-side search at 4 px beside it, to say whether a GPU should take it too.
    variants = ([('fp32', cuda, AUTO), ('bf16', cuda, AUTO), ('fp32', False, AUTO), ('fp32', cuda, DEFAULT_REACH_PX)]
                if cuda else [('fp32', False, AUTO)])
    if not cuda and cpu_has_native_bf16():
        variants.append(('bf16', False, AUTO))
    result: dict[str, Any] = {'status': 'partial', 'size': f'{width}x{height}', 'encoding': 'rgb8 + bgr8',
                              'outputs': outputs.describe(), 'variants': {}}
    for precision, graphs, reach in variants:
        name = f'{precision}-{"graph" if graphs else "eager"}' + (f'-search{reach}' if reach != AUTO else '')
        config = dataclasses.replace(NodeConfig(), local_search_px=reach)
        if time.monotonic() > ctx.deadline:
            result['variants'][name] = {'status': 'skipped', 'reason': 'out of time'}
            continue
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            processor = StereoProcessor(Predictor(checkpoint, device=ctx.device, precision=precision,  # type: ignore[arg-type]
                                                  cuda_graphs=graphs))
        stages: dict[str, list[float]] = {'decode': [], 'model': [], 'post': [], 'total': [],
                                          **{name: [] for name in POST_STAGES}}
        for index in range(int(ctx.plan['node_warmup']) + int(ctx.plan['node_repeats'])):
            start = time.perf_counter()
            left_array, right_array, _ = decode_pair(left_msg, right_msg, want_rgb=False)
            decoded = time.perf_counter()
            out, processor = guard.process(processor, left_array, right_array, camera, config, outputs,
                                           rgb=lambda: decode_colours(left_msg))
            done = time.perf_counter()
            if index >= int(ctx.plan['node_warmup']):
                for stage, seconds in (('decode', decoded - start), ('model', out.timings['model']),
                                       ('post', out.timings['post']), ('total', done - start),
                                       *((name, out.timings.get(name, 0.0)) for name in POST_STAGES)):
                    stages[stage].append(seconds * 1000.0)
        assert out.cloud is not None and out.depth is not None and out.disparity_color is not None
        entry: dict[str, Any] = {'status': 'ok', 'pairs': len(stages['total']),
                                 'captured_sizes': processor.predictor.captured_sizes,
                                 'valid_fraction': round(float(out.valid.mean()), 4)}
        for stage, values in stages.items():
            entry[f'{stage}_ms_median'] = round(statistics.median(values), 3)
            entry[f'{stage}_ms_p99'] = round(float(np.percentile(values, 99)), 3)
        entry['fps'] = round(1000.0 / entry['total_ms_median'], 2)
        result['variants'][name] = entry
        ctx.save(result)
        del processor
    result['device_warnings'] = warnings_
    result['status'] = 'ok'
    return result


# --- (d) training burst -------------------------------------------------------------------------------

def training(ctx: Context) -> dict[str, Any]:
    from stereonet_ros.visit.burst import burst

    plan = dict(ctx.plan['train'])
    if plan.get('workers') == 'cores':
        plan['workers'] = os.cpu_count() or 1
    margin = float(plan.get('margin_s', 15.0))  # export, worker shutdown, the JSON
    result = burst(ctx.work, ctx.device, plan, time_limit_s=ctx.limit_s - margin,
                   record=lambda partial: ctx.save({'status': 'partial', **partial}))
    result['status'] = 'ok'
    return result


# --- (e) evaluation -----------------------------------------------------------------------------------

def _guide_ablation(path: str | None, device: str, scale: float) -> dict[str, Any]:
    """Motorcycle EPE as is and with every refiner's guide image zeroed (what ``promote`` checks first),
    and per pyramid level, the network run at ``scale`` (1 on a GPU; the rehearsal's is smaller)."""
    from stereonet_ros.evaluation.refinement import GUIDE_ABLATION_MIN_RISE_PX, refinement_scores
    from stereonet_ros.inference import DEFAULT_CHECKPOINT
    from stereonet_ros.model.checkpoint import load_checkpoint
    from stereonet_ros.samples import motorcycle

    pair = motorcycle()
    scores = refinement_scores(load_checkpoint(path or DEFAULT_CHECKPOINT), pair.left, pair.right, pair.disparity,
                               device=device, scale=scale)
    return {'scale': scale, 'epe': round(scores.output.epe, 4), 'without_guide_epe': round(scores.without_guide.epe, 4),
            'rise': round(scores.guide_rise_epe, 4), 'needed': GUIDE_ABLATION_MIN_RISE_PX,
            'levels_epe': [round(level.epe, 4) for level in scores.levels]}


def evaluation(ctx: Context) -> dict[str, Any]:
    """The trained checkpoint (if the burst left one) and the one it started from (``start_checkpoint``),
    on Motorcycle and held-out synthetic, in the three views, SGBM in the same run. With a moving average of
    the weights (``ema_decay``), the average first, then the start, then the weights as time allows: on
    this project's CPU runs its Motorcycle EPE was below the weights' at 12 of 13 validations."""
    from stereonet_ros.evaluation.evaluate import evaluate, format_table

    plan = ctx.plan['evaluation']
    trained = ctx.work / 'train' / 'model_latest.safetensors'
    average = ctx.work / 'train' / 'model_ema.safetensors'
    from stereonet_ros.visit.burst import start_checkpoint

    start = start_checkpoint(ctx.plan['train'].get('overrides', []))
    candidates: list[tuple[str, str | None]] = [('start', str(start))]
    if trained.exists() and average.exists():
        candidates = [('trained_average', str(average)), ('start', str(start)), ('trained', str(trained))]
    elif trained.exists():
        candidates.insert(0, ('trained', str(trained)))
    result: dict[str, Any] = {'status': 'partial', 'sets': list(plan['sets']), 'checkpoints': {}}
    if not trained.exists():
        result['note'] = 'the training burst left no checkpoint: the starting checkpoint alone is scored'
    for label, path in candidates:
        if time.monotonic() > ctx.deadline:
            result['checkpoints'][label] = {'status': 'skipped', 'reason': 'out of time'}
            continue
        scores = evaluate(path, plan['sets'], device=ctx.device, synthetic_samples=int(plan['synthetic_samples']),
                          sgbm_tuning_samples=int(plan['sgbm_tuning_samples']), log=print)
        scores.pop('provenance', None)  # long; the checkpoint files carry it
        shown = {'trained': "model.safetensors, the burst's",
                 'trained_average': "model_ema.safetensors, the burst's moving average"}.get(label, start.name)
        result['checkpoints'][label] = {'status': 'ok', 'path': shown,
                                        'table': format_table(scores), 'results': scores,
                                        'guide': _guide_ablation(path, ctx.device, float(plan['guide_scale']))}
        ctx.save(result)
    result['status'] = 'ok'
    return result


STEPS: dict[str, Callable[[Context], dict[str, Any]]] = {
    'cuda_tests': cuda_tests, 'forward': forward, 'node_processing': node_processing, 'training': training,
    'evaluation': evaluation,
}


def run_step(ctx: Context) -> dict[str, Any]:
    """Run one step and classify how it ended; the result is also saved."""
    if ctx.rehearse:
        import torch

        torch.set_num_threads(1)  # tiny sizes on a shared CPU: threads only contend
    try:
        result = STEPS[ctx.name](ctx)
    except ModuleNotFoundError as err:
        result = {'status': 'skipped', 'reason': f'needs the module {err.name!r}, not installed here ({err})'}
    except Exception as err:  # noqa: BLE001 - a failed step is reported; the visit goes on
        result = {'status': 'failed', 'reason': f'{type(err).__name__}: {str(err)[:500]}',
                  'traceback': traceback.format_exc(limit=8)}
        print(result['traceback'], file=sys.stderr)
    result['seconds'] = round(time.monotonic() - ctx.started, 1)
    ctx.save(result)
    return result


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 2 or arguments[0] not in STEPS:
        print(f'usage: python -m stereonet_ros.visit.steps {{{",".join(STEPS)}}} CONTEXT.json', file=sys.stderr)
        return 2
    values = json.loads(Path(arguments[1]).read_text())
    ctx = Context(name=arguments[0], work=Path(values['work']), device=values['device'],
                  rehearse=bool(values['rehearse']), limit_s=float(values['limit_s']), plan=values['plan'])
    result = run_step(ctx)
    print(f'{ctx.name}: {result["status"]}' + (f' ({result["reason"]})' if result.get('reason') else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
