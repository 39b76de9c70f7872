"""``summary.md`` from the visit's summary: what ran where, each step's status and figures, as tables."""
from __future__ import annotations

from typing import Any

from stereonet_ros.visit.steps import POST_STAGES

STEP_TITLES = {
    'cuda_tests': '(a) CUDA correctness',
    'forward': '(b) Forward, batch 1',
    'node_processing': "(c) The node's processing per pair, without DDS",
    'training': '(d) Training burst',
    'evaluation': '(e) Evaluation',
}


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return '-'
    if isinstance(value, (int, float)):
        return f'{value:.{digits}f}' if isinstance(value, float) else str(value)
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join('---' for _ in header) + ' |',
            *('| ' + ' | '.join(row) + ' |' for row in rows)]


def _figures(figures: dict[str, Any]) -> str:
    """A check's figures in one cell."""
    parts = []
    for key, value in figures.items():
        if key in ('pair', 'device', 'finite'):
            continue
        if isinstance(value, dict):
            parts.append(f'{key}: mean {value.get("mean_px", 0):.4f} px, max {value.get("max_px", 0):.4f} px')
        elif isinstance(value, float):
            parts.append(f'{key} {value:.4g}')
        else:
            parts.append(f'{key}: {value}')
    return '; '.join(parts) or '-'


def _cuda_tests(step: dict[str, Any]) -> list[str]:
    lines = []
    environment = step.get('environment', {})
    if environment.get('gpu'):
        lines.append(f'GPU {environment["gpu"]} (compute {environment.get("capability")}, '
                     f'{environment.get("multiprocessors")} SMs, {environment.get("memory_gib")} GiB), '
                     f'CUDA {environment.get("cuda")}, cuDNN {environment.get("cudnn")}, torch {environment.get("torch")}.')
    pytest = step.get('pytest', {})
    if pytest:
        if pytest.get('status') in ('skipped', 'timeout'):
            lines.append(f'pytest: {pytest["status"]}: {pytest.get("reason")}')
        else:
            lines.append(f'pytest (tests marked cuda): {pytest.get("passed", 0)} passed, {pytest.get("failed", 0)} '
                         f'failed, {pytest.get("skipped", 0)} skipped' + (f' ({pytest["reason"]})'
                                                                           if pytest.get('reason') else ''))
            for failure in pytest.get('failures', []):
                lines.append(f'- FAILED {failure["test"]}: {failure["message"]}')
    checks = step.get('checks', [])
    if checks:
        lines += ['', *_table(['check', 'status', 'figures / reason', 's'],
                              [[c['name'], c['status'], c.get('reason') or _figures(c.get('figures', {})),
                                _number(c.get('seconds'), 1)] for c in checks])]
    return lines


def _profile(title: str, profile: dict[str, Any] | None) -> list[str]:
    """The operator and kernel tables of :mod:`stereonet_ros.visit.profile`, per pass."""
    if not profile:
        return []
    if profile.get('status') != 'ok':
        return ['', f'{title}: {profile.get("status")}: {profile.get("reason", "")}']
    lines = ['', f'{title} ({profile.get("passes")} profiled passes; ms per pass; share of the table\'s total, '
             f'{_number(profile.get("operators_total_ms"), 3)} ms of operators'
             + (f', {_number(profile.get("kernels_total_ms"), 3)} ms of kernels)' if 'kernels' in profile else ')'),
             '', *_table(['operator', 'input shapes', 'calls', 'ms', 'share'],
                         [[row['name'], row.get('input_shapes', ''), _number(row['calls_per_pass']),
                           _number(row['ms_per_pass'], 3), _number(row['share'], 3)] for row in profile['operators']])]
    if 'kernels' in profile:
        lines += ['', *_table(['kernel', 'calls', 'ms', 'share'],
                              [[row['name'], _number(row['calls_per_pass']), _number(row['ms_per_pass'], 3),
                                _number(row['share'], 3)] for row in profile['kernels']])]
    return lines


def _forward(step: dict[str, Any]) -> list[str]:
    lines = [f'{step.get("warmup")} warm-up calls, then {step.get("repeats")} timed ones. `device`: images on the '
             'device to disparity on the device; `host`: uint8 host arrays to the float32 host answer '
             '(Predictor.infer). seed-eager-fp32: build_model().eval(), NCHW, BatchNorm unfolded, torch defaults.']
    for size, measures in step.get('sizes', {}).items():
        for measure, table in measures.items():
            rows = []
            for name, variant in table.items():
                if variant.get('status') != 'ok':
                    rows.append([name, variant.get('status', '?'), variant.get('reason', ''), '', '', '', ''])
                    continue
                rows.append([name, _number(variant['median_ms'], 3), _number(variant['p99_ms'], 3),
                             _number(variant['fps'], 1), _number(variant.get('peak_mib'), 0),
                             _number(variant.get('vs_seed'), 3), str(variant['calls'])])
            lines += ['', f'**{size}, {measure}**', '',
                      *_table(['variant', 'median ms', 'p99 ms', 'fps', 'peak MiB', 'vs seed', 'calls'], rows)]
    profile = step.get('profile')
    if profile:
        lines += _profile(f'**Profile: {profile.get("variant", "?")} at {profile.get("size", "?")}**', profile)
    return lines


def _node(step: dict[str, Any]) -> list[str]:
    lines = [f'{step.get("size")} {step.get("encoding")}, outputs {step.get("outputs")}; medians in ms '
             '(model = upload, network, copy back; post = validity, depth, cloud with colours, colour map).', '']
    rows = []
    for name, variant in step.get('variants', {}).items():
        if variant.get('status') != 'ok':
            rows.append([name, variant.get('status', '?'), variant.get('reason', ''), '', '', '', '', ''])
            continue
        rows.append([name, _number(variant['decode_ms_median']), _number(variant['model_ms_median']),
                     _number(variant['post_ms_median']), _number(variant['total_ms_median']),
                     _number(variant['total_ms_p99']), _number(variant['fps'], 1),
                     ', '.join(f'{w}x{h}' for h, w in variant.get('captured_sizes', [])) or 'none'])
    lines += _table(['variant', 'decode', 'model', 'post', 'total', 'total p99', 'fps', 'captured'], rows)
    parts = [(name, variant) for name, variant in step.get('variants', {}).items()
             if variant.get('status') == 'ok' and 'post_validity_ms_median' in variant]
    if parts:
        lines += ['', 'Post, by stage (medians, ms): the colours fetched for the cloud, validity (and the mask), '
                  'depth, cloud (reprojection and PointCloud2 buffer), colour map.', '',
                  *_table(['variant', *(stage.removeprefix('post_') for stage in POST_STAGES)],
                          [[name, *(_number(variant.get(f'{stage}_ms_median')) for stage in POST_STAGES)]
                           for name, variant in parts])]
    if step.get('device_warnings'):
        lines += ['', 'Device warnings: ' + '; '.join(step['device_warnings'])]
    return lines


def _training(step: dict[str, Any]) -> list[str]:
    lines = [f'Recipe: {step["recipe"]}; crops {step.get("crop")}, {step.get("precision", "bf16 autocast")} on '
             f'{step.get("device")}.'] \
        if 'recipe' in step else []
    generator = step.get('generator')
    if generator:
        lines.append(f'Generator: {generator["samples_per_s"]:.1f} samples/s with {generator["workers"]} workers '
                     f'(start {generator["startup_s"]} s, timed {generator["timed_s"]} s).')
    rates = step.get('gpu', [])
    if rates:
        lines += ['', *_table(['layout', 'batch', 'step ms', 'training samples/s on the device'],
                              [[str(r.get('layout', '-')), str(r['batch_size']), _number(r.get('step_ms')),
                                'out of memory' if r.get('out_of_memory') else _number(r.get('samples_per_s'))]
                               for r in rates]), '']
    if 'batch_size' in step:
        lines.append(f'Batch {step["batch_size"]}, {step.get("layout", "-")}: {step.get("batch_reason")}.')
    profile = step.get('step_profile')
    if profile:
        lines += _profile(f'**Profile: one training step, batch {profile.get("batch_size")}, '
                          f'{profile.get("layout")}**', profile) + ['']
    if 'steps' in step:
        log = step.get('log', {})
        names = ('checkpoint_file', 'ema_checkpoint_file', 'log_csv_file')
        files = ', '.join(step[key] for key in names if key in step)
        lines.append(f'{step["steps"]} steps, {step["samples"]} samples in {step["train_s"]} s: '
                     f'{step["samples_per_s"]} samples/s overall, {log.get("samples_per_s_logged", "-")} in the '
                     f'logged windows; bound by the {step.get("bound_by")} ({step.get("of_bound")} of its rate). '
                     f'Loss {_number(log.get("first_loss"), 4)} -> {_number(log.get("last_loss"), 4)}. Files: '
                     f'{files or "-"}.')
    return lines


def _evaluation(step: dict[str, Any]) -> list[str]:
    lines = [f'Sets: {", ".join(step.get("sets", []))}.'] + ([step['note']] if step.get('note') else [])
    for label, entry in step.get('checkpoints', {}).items():
        if entry.get('status') != 'ok':
            lines += ['', f'**{label}**: {entry.get("status")}: {entry.get("reason", "")}']
            continue
        lines += ['', f'**{label}** ({entry.get("path")})', '', entry['table']]
        guide = entry.get('guide')
        if guide:
            at = f' (network at scale {guide["scale"]:g})' if guide.get('scale', 1.0) != 1.0 else ''
            lines += ['', f'Guide ablation on Motorcycle{at}: EPE {guide["epe"]:.3f} px as is, {guide["without_guide_epe"]:.3f} '
                      f'with every guide image zeroed (rise {guide["rise"]:+.3f} px; promote needs {guide["needed"]}); '
                      'by level, soft argmin to output: ' + ', '.join(f'{epe:.3f}' for epe in guide['levels_epe'])
                      + ' px.']
    return lines


RENDERERS = {'cuda_tests': _cuda_tests, 'forward': _forward, 'node_processing': _node, 'training': _training,
             'evaluation': _evaluation}


def render(summary: dict[str, Any]) -> str:
    """The whole ``summary.md``."""
    visit = summary['visit']
    kind = 'REHEARSAL on the CPU (tiny sizes: the figures test the code, they measure nothing)' \
        if visit.get('rehearse') else 'GPU visit'
    lines = [f'# {kind}, {visit.get("started_utc")}', '',
             f'Device {visit.get("device")}; {visit.get("nvidia_smi") or "no nvidia-smi"}; python {visit.get("python")}, '
             f'torch {visit.get("torch")} (CUDA {visit.get("cuda")}), {visit.get("cpu_count")} CPU cores; source '
             f'{visit.get("git_sha")}, fingerprint {visit.get("source_fingerprint")}; budget {visit.get("budget_s")} s, '
             f'wall {visit.get("wall_s") or "(still running)"} s.', '']
    rows = [[STEP_TITLES[name], summary[name].get('status', '?'), _number(summary[name].get('seconds'), 0),
             _number(summary[name].get('limit_s'), 0), str(summary[name].get('reason', ''))[:160]]
            for name in STEP_TITLES if name in summary]
    lines += _table(['step', 'status', 's', 'limit s', 'note'], rows)
    for name, title in STEP_TITLES.items():
        step = summary.get(name)
        if not step:
            continue
        lines += ['', f'## {title}: {step.get("status")}', '']
        if step.get('status') in ('skipped',) and step.get('reason'):
            lines.append(step['reason'])
            continue
        if step.get('reason'):
            lines += [f'Note: {step["reason"]}', '']
        lines += RENDERERS[name](step)
    return '\n'.join(lines) + '\n'
