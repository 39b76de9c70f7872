"""gpu_run: everything a visit to a lent GPU should do, in one command, within a time budget.

    bash scripts/gpu_run --out DIR [--budget-s 540] [--rehearse]

Steps, in this order, each in a process of its own with its own time limit (:mod:`stereonet_ros.visit.steps`):

(a) ``cuda_tests``: the CUDA-marked tests under pytest, i.e. the checks of :mod:`stereonet_ros.visit.checks`:
    CUDA fp32 against CPU fp32 on Motorcycle (<= 0.01 px), bf16 and fp16 against fp32 (reported), graph
    replay against eager, no host synchronization in the pass, uint8 upload against the float path; the
    step runs them itself where pytest is missing or fails, and the first two always, for their figures;
(b) ``forward``: the forward timing of :mod:`stereonet_ros.visit.forward` at 960x544 and 640x480 (and, last, of
    ``refine`` false at ``inference_scale`` 2, the README's setting for better depth);
(c) ``node_processing``: the node's decode, inference and post-processing per pair at 960x540;
(d) ``training``: a burst of the current recipe from its latest best (``burst.start_checkpoint``) (:mod:`stereonet_ros.visit.burst`),
    with whatever time (a)-(c) left but the evaluation's share;
(e) ``evaluation``: that checkpoint and its start on Motorcycle and held-out synthetic, three views (and on
    the held-out real pair, Aloe, where its files came along: ``held_out_real_pair``);

then DIR gets ``summary.json`` (one key per step, each with a ``status``), ``summary.md``,
``model.safetensors`` and ``log.csv`` (the burst's; ``model_ema.safetensors`` too, its moving average, when
``--train-override ema_decay=...`` keeps one) and ``visit.log`` (every step's output): at most
8 files, each under 16 MiB. ``--rehearse`` runs the same code on the CPU with tiny sizes and budgets
(the test suite runs it). Exit status: 0 when no step failed, 1 when one failed or ran out of time,
2 for bad arguments; errors are one line.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stereonet_ros.visit.steps import STEPS

PROGRAM = 'gpu_run'
REPOSITORY = Path(__file__).resolve().parents[2]
STEP_NAMES = tuple(STEPS)
DEFAULT_BUDGET_S = 540.0
"""The device call's 600 s limit less a minute for start-up, the summary and the copy back."""
REHEARSAL_BUDGET_S = 150.0
SHARES = {'cuda_tests': 0.15, 'forward': 0.2, 'node_processing': 0.06, 'evaluation': 0.2}
"""Each step's limit as a fraction of the budget; training takes what the others leave. The evaluation's:
the 2026-11-29 visit scored two checkpoints in 57 s; with a moving average there are three."""
SUMMARY_SHARE = 0.02
OUTPUT_FILES = ('summary.json', 'summary.md', 'model.safetensors', 'model_ema.safetensors', 'log.csv', 'visit.log')
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
MIN_STEP_S = 10.0
"""A step with less time than this left is not started (rehearsal: a tenth)."""


class VisitError(RuntimeError):
    """The visit cannot start (bad output folder, no CUDA without --rehearse); the message says why.

    ``status``: the exit status it means (2: bad arguments).
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def plan(rehearse: bool) -> dict[str, Any]:
    """Sizes and counts of every step: the issue's on a GPU, tiny ones for the CPU rehearsal."""
    if rehearse:
        return {
            'check_crop': [96, 160],
            'forward_sizes': [[96, 64], [64, 48]], 'forward_warmup': 1, 'forward_repeats': 2, 'profile_passes': 1,
            'node_size': [96, 64], 'node_warmup': 1, 'node_repeats': 2,
            'train': {'data': {'height': 64, 'width': 256, 'disparity_range': (8.0, 48.0), 'n_layers': (2, 4)},
                      'workers': 1, 'calibration_batch': 2, 'generator_seconds': 0.5, 'batch_candidates': [1, 2],
                      # A slow 2-core CPU (AVX2, no native bfloat16, 3-D convolutions on PyTorch's slow path) takes
                      # 1.7-2.6 s a step even at this size: two warm-ups for each of the four calibrations, as on the
                      # GPU, outlasted a 20 s step there, and the run's end (a validation, the export) a 3 s margin.
                      'calibration_steps': 1, 'calibration_warmup': 1, 'calibration_limit_s': 25, 'profile_steps': 1,
                      'checkpoint_every': 1000, 'log_every': 1, 'max_s': 45, 'margin_s': 10, 'min_train_s': 2,
                      'validation_samples': 1},
            'evaluation': {'sets': ['motorcycle', 'synthetic'], 'synthetic_samples': 1, 'sgbm_tuning_samples': 1,
                           'guide_scale': 0.25},
        }
    return {
        'check_crop': None,
        'forward_sizes': [[960, 544], [640, 480]], 'forward_warmup': 10, 'forward_repeats': 50, 'profile_passes': 5,
        'node_size': [960, 540], 'node_warmup': 5, 'node_repeats': 30,
        'train': {'data': {}, 'workers': 'cores', 'calibration_batch': 16, 'generator_seconds': 8.0,
                  'batch_candidates': [4, 8, 16, 32, 64], 'calibration_steps': 5, 'calibration_warmup': 2,
                  'calibration_limit_s': 70,
                  'profile_steps': 2, 'checkpoint_every': 500, 'log_every': 10, 'max_s': None, 'margin_s': 15,
                  'min_train_s': 20, 'validation_samples': 16},
        'evaluation': {'sets': ['motorcycle', 'synthetic', *held_out_real_pair()], 'synthetic_samples': 32,
                       'sgbm_tuning_samples': 12, 'guide_scale': 1.0},
    }


def held_out_real_pair() -> list[str]:
    """``['aloe']`` where the visit has its files (the GPU machine has no package registry: carry them, and
    point ``STEREONET_ROS_DATA_DIR`` there), else nothing."""
    from stereonet_ros.opencv_data import missing

    return [] if missing() else ['aloe']


def step_limit(name: str, budget_s: float, remaining_s: float, train_max_s: float | None,
               selected: Sequence[str] = STEP_NAMES) -> float:
    """Seconds step ``name`` may take: its share, or for training what is left after the later steps'
    shares; never more than leaves the later ``selected`` steps theirs and the summary its own."""
    later = [step for step in STEP_NAMES[STEP_NAMES.index(name) + 1:] if step in selected]
    reserved = sum(SHARES.get(step, 0.0) for step in later) * budget_s + SUMMARY_SHARE * budget_s
    available = remaining_s - reserved
    if name == 'training':
        return available if train_max_s is None else min(available, train_max_s)
    return min(SHARES[name] * budget_s, available)


def source_fingerprint() -> str:
    """sha256 over the package's Python files (path and content): which code ran, where no git is."""
    digest = hashlib.sha256()
    for path in sorted((REPOSITORY / 'stereonet_ros').rglob('*.py')):
        digest.update(str(path.relative_to(REPOSITORY)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _git_sha() -> str:
    try:
        completed = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPOSITORY, capture_output=True, text=True,
                                   timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 'unknown (no git)'
    return completed.stdout.strip() if completed.returncode == 0 else 'unknown (not a git checkout)'


def _nvidia_smi() -> str | None:
    try:
        completed = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                                    '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise VisitError(f'--out {out}: exists and is not a folder', status=2)
    if out.is_dir():
        foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in OUTPUT_FILES)
        if foreign:
            raise VisitError(f'--out {out}: holds {", ".join(foreign[:3])}{" ..." if len(foreign) > 3 else ""}; '
                             'give an empty or new folder', status=2)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VisitError(f'--out {out}: cannot create it ({err.strerror})', status=2) from err


def _run_step(name: str, limit_s: float, kill_after_s: float, device: str, rehearse: bool,
              step_plan: dict[str, Any], work: Path, log_path: Path) -> dict[str, Any]:
    """The step in its own process (and process group, so its data workers go with it); its result."""
    context = work / f'{name}.context.json'
    context.write_text(json.dumps({'work': str(work), 'device': device, 'rehearse': rehearse, 'limit_s': limit_s,
                                   'plan': step_plan}))
    environment = dict(os.environ, PYTHONUNBUFFERED='1')
    environment['PYTHONPATH'] = os.pathsep.join([str(REPOSITORY), *filter(None, [os.environ.get('PYTHONPATH')])])
    started = time.monotonic()
    with log_path.open('a') as log:
        log.write(f'\n===== {name} (limit {limit_s:.0f} s) {datetime.datetime.now(datetime.UTC):%H:%M:%S} UTC\n')
        log.flush()
        process = subprocess.Popen([sys.executable, '-m', 'stereonet_ros.visit.steps', name, str(context)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY, env=environment,
                                   start_new_session=True)
        killed = False
        try:
            process.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            killed = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    result_path = work / f'{name}.json'
    result: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {}
    seconds = round(time.monotonic() - started, 1)
    if killed:
        result.update(status='timeout', reason=f'killed after {kill_after_s:.0f} s (limit {limit_s:.0f} s)')
    elif not result or result.get('status') == 'partial':
        result.update(status='failed', reason=f'the step process exited {process.returncode} without a result '
                                              f'(see visit.log)')
    result['seconds'] = seconds
    result['limit_s'] = round(limit_s, 1)
    return result


def _environment(device: str, rehearse: bool, budget_s: float) -> dict[str, Any]:
    import platform

    import torch

    return {'rehearse': rehearse, 'device': device, 'budget_s': budget_s, 'python': platform.python_version(),
            'torch': torch.__version__, 'cuda': torch.version.cuda, 'cpu_count': os.cpu_count(),
            'host': platform.node(), 'nvidia_smi': _nvidia_smi(), 'git_sha': _git_sha(),
            'source_fingerprint': source_fingerprint()}


def _copy_outputs(out: Path, training: dict[str, Any]) -> None:
    for key, name in (('checkpoint', 'model.safetensors'), ('ema_checkpoint', 'model_ema.safetensors'),
                      ('log_csv', 'log.csv')):
        source = training.get(key)
        if source and Path(source).exists():
            shutil.copyfile(source, out / name)
            training[f'{key}_file'] = name


def _fit_outputs(out: Path) -> None:
    """At most :data:`MAX_FILES` files, each under :data:`MAX_FILE_BYTES`: the log keeps its end."""
    log = out / 'visit.log'
    if log.exists() and log.stat().st_size >= MAX_FILE_BYTES:
        tail = log.read_bytes()[-(MAX_FILE_BYTES // 2):]
        log.write_bytes(b'[... the beginning was cut to keep the file under 16 MiB ...]\n' + tail)
    files = [entry for entry in out.iterdir() if entry.is_file()]
    oversized = [entry.name for entry in files if entry.stat().st_size >= MAX_FILE_BYTES]
    if len(files) > MAX_FILES or oversized:
        raise VisitError(f'{out} holds {len(files)} files, oversized: {oversized}')


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    """summary.json and summary.md as they stand (after every step: a visit cut short keeps its results)."""
    from stereonet_ros.visit.report import render

    (out / 'summary.json').write_text(json.dumps(summary, indent=1, default=str))
    (out / 'summary.md').write_text(render(summary))


def check_train_overrides(overrides: Sequence[str]) -> list[str]:
    """Refuse, before anything runs, ``--train-override`` values that ``TrainConfig`` would refuse; returns
    them with an ``init_checkpoint`` made absolute (the steps run in the repository root).

    Raises:
        VisitError: status 2, naming the bad value.
    """
    from stereonet_ros.config import ConfigError, load
    from stereonet_ros.training.train import TrainConfig

    try:
        config = load(TrainConfig, overrides=list(overrides))
    except ConfigError as err:
        raise VisitError(f'--train-override: {err}', status=2) from None
    if config.init_checkpoint and not Path(config.init_checkpoint).is_file():
        raise VisitError(f'--train-override: init_checkpoint={config.init_checkpoint}: no such file (carry it to '
                         'the GPU machine with the run)', status=2)
    return [f'init_checkpoint={Path(item.split("=", 1)[1]).resolve()}' if item.startswith('init_checkpoint=')
            and item.split('=', 1)[1] else item for item in overrides]


def visit(out: Path, budget_s: float, rehearse: bool, echo: Any = print,
          train_overrides: Sequence[str] = (), only: Sequence[str] = STEP_NAMES) -> dict[str, Any]:
    """Run every step (or those in ``only``) into ``out``; returns the summary (also written there).

    ``train_overrides``: ``TrainConfig`` KEY=VALUE applied to the burst's recipe (default: the defaults),
    e.g. the refiner stage ``train_parts=refiners coarse_input=oracle``. ``only``: a second call of a visit
    that needs the burst and its evaluation alone skips the rest (reported as skipped, not asked for).

    Raises:
        VisitError: ``out`` cannot be used, an override is refused, or there is no CUDA device and this
            is not a rehearsal.
    """
    train_overrides = check_train_overrides(train_overrides)
    started = time.monotonic()
    started_utc = datetime.datetime.now(datetime.UTC)
    _check_output_dir(out)
    import torch

    if rehearse:
        device = 'cpu'
    elif torch.cuda.is_available():
        device = 'cuda'
    else:
        raise VisitError('no CUDA device here (torch.cuda.is_available() is False); on a CPU, run --rehearse')
    steps_plan = plan(rehearse)
    steps_plan['train']['overrides'] = list(train_overrides)
    summary: dict[str, Any] = {'visit': {'started_utc': started_utc.isoformat(timespec='seconds'),
                                         **_environment(device, rehearse, budget_s), 'plan': steps_plan}}
    log_path = out / 'visit.log'
    log_path.write_text(f'{PROGRAM} {started_utc:%Y-%m-%d %H:%M:%S} UTC, budget {budget_s:.0f} s, device {device}'
                        f'{", rehearsal" if rehearse else ""}\n')
    smallest = MIN_STEP_S / 10 if rehearse else MIN_STEP_S
    work = Path(tempfile.mkdtemp(prefix='gpu_run_'))
    try:
        for index, name in enumerate(STEP_NAMES, 1):
            if name not in only:
                summary[name] = {'status': 'skipped', 'reason': 'not asked for (--only)'}
                continue
            remaining = budget_s - (time.monotonic() - started)
            limit = step_limit(name, budget_s, remaining, steps_plan['train']['max_s'], only)
            if limit < smallest:
                summary[name] = {'status': 'skipped', 'reason': f'out of budget ({limit:.0f} s left for it)'}
                echo(f'{PROGRAM}: [{index}/{len(STEP_NAMES)}] {name}: skipped, out of budget')
                continue
            grace = max(5.0, 0.05 * limit)
            kill_after = min(limit + grace, remaining - 0.5 * SUMMARY_SHARE * budget_s)
            echo(f'{PROGRAM}: [{index}/{len(STEP_NAMES)}] {name} (limit {limit:.0f} s) ...')
            result = _run_step(name, limit, kill_after, device, rehearse, steps_plan, work, log_path)
            if name == 'training':
                _copy_outputs(out, result)
            summary[name] = result
            _write_summary(out, summary)
            echo(f'{PROGRAM}: [{index}/{len(STEP_NAMES)}] {name}: {result["status"]} in {result["seconds"]:.0f} s'
                 + (f' ({result["reason"]})' if result.get('reason') else ''))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary['visit']['wall_s'] = round(time.monotonic() - started, 1)
    summary['visit']['finished_utc'] = datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')
    _write_summary(out, summary)
    _fit_outputs(out)
    summary['visit']['files'] = sorted(entry.name for entry in out.iterdir())
    _write_summary(out, summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--out', type=Path, required=True, help='folder for the results (empty or new)')
    parser.add_argument('--budget-s', type=float, default=None,
                        help=f'seconds for the whole visit (default {DEFAULT_BUDGET_S:g}; '
                             f'{REHEARSAL_BUDGET_S:g} with --rehearse)')
    parser.add_argument('--rehearse', action='store_true', help='the same steps on the CPU, tiny sizes')
    parser.add_argument('--train-override', action='append', default=[], metavar='KEY=VALUE',
                        help="the burst's TrainConfig (repeatable; default: the recipe's defaults)")
    parser.add_argument('--only', default=','.join(STEP_NAMES), metavar='STEP,...',
                        help=f'run these steps only (of {",".join(STEP_NAMES)}; default all)')
    arguments = parser.parse_args(argv)
    only = [name.strip() for name in arguments.only.split(',') if name.strip()]
    unknown = [name for name in only if name not in STEP_NAMES]
    if unknown or not only:
        print(f'{PROGRAM}: --only {arguments.only!r}: name steps of {", ".join(STEP_NAMES)}', file=sys.stderr)
        return 2
    budget = arguments.budget_s
    if budget is None:
        budget = REHEARSAL_BUDGET_S if arguments.rehearse else DEFAULT_BUDGET_S
    if not (math.isfinite(budget) and budget >= 30):
        print(f'{PROGRAM}: --budget-s {budget:g}: must be at least 30', file=sys.stderr)
        return 2
    try:
        summary = visit(arguments.out, budget, arguments.rehearse, train_overrides=arguments.train_override,
                        only=only)
    except VisitError as err:
        print(f'{PROGRAM}: {err}', file=sys.stderr)
        return err.status
    print((arguments.out / 'summary.md').read_text())
    bad = [name for name in STEP_NAMES if summary.get(name, {}).get('status') in ('failed', 'timeout')]
    if bad:
        print(f'{PROGRAM}: {", ".join(bad)} did not finish well: see {arguments.out / "summary.md"}', file=sys.stderr)
        return 1
    return 0
