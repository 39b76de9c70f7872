"""scripts/gpu_run: the GPU visit rehearsed on the CPU (tiny sizes), with what the GPU machine lacks made
unimportable; the orchestration's limits, timeouts and one-line errors."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stereonet_ros.model.checkpoint import load_checkpoint
from stereonet_ros.visit import run as visit_run

REPOSITORY = Path(__file__).resolve().parents[1]
NOT_ON_THE_GPU_MACHINE = (
    'rclpy', 'rcl_interfaces', 'sensor_msgs', 'stereo_msgs', 'diagnostic_msgs', 'builtin_interfaces', 'std_msgs',
    'geometry_msgs', 'launch', 'launch_ros', 'ament_index_python', 'rosidl_runtime_py', 'rosidl_parser', 'rpyutils',
    'rosbags', 'ruamel', 'lz4', 'apsw', 'backports', 'pytest', '_pytest', 'pluggy', 'iniconfig', 'tensorboard',
    'catkin_pkg', 'colcon_core', 'em', 'lark', 'onnx',
)
"""Installed here (requirements.txt), absent there: the GPU machine has torch, numpy, opencv-python-headless,
scikit-image (with its own needs: pillow, imageio, scipy, ...), safetensors, pyyaml, tqdm, onnxruntime (not onnx)."""
STEPS = ('cuda_tests', 'forward', 'node_processing', 'training', 'evaluation')


def gpu_run(arguments: list[str], tmp_path: Path, blocked: tuple[str, ...] = (),
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``bash scripts/gpu_run ARGUMENTS`` with this Python; ``blocked`` modules fail to import as if not
    installed (a sitecustomize on PYTHONPATH sets them to None in sys.modules; children inherit it)."""
    environment = dict(os.environ, PYTHON=sys.executable)
    environment.pop('PYTHONPATH', None)
    if blocked:
        site = tmp_path / 'blocked_site'
        site.mkdir()
        (site / 'sitecustomize.py').write_text(
            'import sys\nfor name in ' + repr(blocked) + ':\n    sys.modules[name] = None  # "not installed"\n')
        environment['PYTHONPATH'] = str(site)
    return subprocess.run(['bash', str(REPOSITORY / 'scripts' / 'gpu_run'), *arguments], capture_output=True,
                          text=True, env=environment, timeout=timeout)


@pytest.mark.timeout(300)
def test_the_rehearsal_runs_every_step_on_the_cpu_without_ros_rosbags_or_pytest(tmp_path: Path) -> None:
    out = tmp_path / 'visit'
    completed = gpu_run(['--rehearse', '--out', str(out)], tmp_path, blocked=NOT_ON_THE_GPU_MACHINE)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    files = {path.name: path.stat().st_size for path in out.iterdir()}
    assert set(files) == {'summary.json', 'summary.md', 'model.safetensors', 'log.csv', 'visit.log'}
    assert all(size < 16 * 2**20 for size in files.values())
    summary = json.loads((out / 'summary.json').read_text())
    assert {name: summary[name]['status'] for name in STEPS} == dict.fromkeys(STEPS, 'ok'), completed.stdout
    assert summary['visit']['rehearse'] is True and summary['visit']['device'] == 'cpu'

    cuda = summary['cuda_tests']
    assert cuda['pytest']['status'] == 'skipped' and 'pytest is not installed' in cuda['pytest']['reason']
    outcomes = {check['name']: check for check in cuda['checks']}
    assert outcomes['cuda_fp32_matches_cpu_fp32']['status'] == 'passed'
    assert outcomes['captured_graph_equals_eager']['status'] == 'skipped'
    assert outcomes['uint8_upload_equals_the_float_path']['figures']['max_px'] <= 1e-4
    # The shipped export under ONNX Runtime (its CPU provider here; CUDA on the day), without the onnx package.
    onnx_runtime = outcomes['onnx_runtime_matches_pytorch']
    assert onnx_runtime['status'] == 'passed', onnx_runtime
    assert onnx_runtime['figures']['provider'] == 'CPUExecutionProvider' and onnx_runtime['figures']['max_px'] <= 0.01

    for size in ('96x64', '64x48'):
        device = summary['forward']['sizes'][size]['device']
        assert device['seed-eager-fp32']['status'] == 'ok' and device['seed-eager-fp32']['median_ms'] > 0
        assert device['ours-eager-fp32']['vs_seed'] > 0
        assert device['ours-graph-fp32'] == {'status': 'skipped', 'reason': 'CUDA graphs need CUDA'}
        host = summary['forward']['sizes'][size]['host']
        assert host['ours-eager-fp32']['status'] == 'ok'
        # refine false at inference_scale 2 (the README's setting for better depth) is timed too
        assert host['ours-eager-norefine-scale2-fp32']['status'] == 'ok'
        assert host['ours-graph-norefine-scale2-fp32'] == {'status': 'skipped', 'reason': 'CUDA graphs need CUDA'}

    # Where the time goes: the eager pass's operators (here the CPU's; on CUDA also the kernels), by input shape.
    profile = summary['forward']['profile']
    assert profile['status'] == 'ok' and profile['size'] == '96x64' and 'kernels' not in profile
    names = [row['name'] for row in profile['operators']]
    assert any('conv' in name for name in names), names
    assert all(row['input_shapes'].startswith('[') for row in profile['operators'])
    shares = [row['share'] for row in profile['operators']]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-6
    assert '**Profile: ours-eager-' in (out / 'summary.md').read_text()

    node = summary['node_processing']['variants']['fp32-eager']
    assert node['status'] == 'ok' and node['pairs'] == 2 and node['valid_fraction'] > 0
    assert node['total_ms_median'] >= node['model_ms_median'] > 0
    assert node['post_cloud_ms_median'] > 0 and node['post_colour_map_ms_median'] > 0  # post, stage by stage
    assert 'Post, by stage' in (out / 'summary.md').read_text()

    training = summary['training']
    assert training['steps'] >= 1 and training['batch_size'] in (1, 2) and training['generator']['samples_per_s'] > 0
    # Both layouts measured at every candidate batch; the burst trains in the one it chose, profiled.
    assert sorted((rate['layout'], rate['batch_size']) for rate in training['gpu']) == [
        ('channels_last', 1), ('channels_last', 2), ('contiguous', 1), ('contiguous', 2)]
    assert training['layout'] in ('contiguous', 'channels_last')
    step_profile = training['step_profile']
    assert step_profile['status'] == 'ok' and step_profile['layout'] == training['layout']
    assert any('backward' in row['name'].lower() or 'conv' in row['name'] for row in step_profile['operators'])
    trained = load_checkpoint(out / 'model.safetensors')
    assert trained.provenance['steps'] == training['steps']
    # From the latest best of the recipe (the candidate kept beside the default), not the default itself.
    from stereonet_ros.visit.burst import start_checkpoint
    assert trained.provenance['initialized_from']['checkpoint'] == str(start_checkpoint())
    assert start_checkpoint().name == 'stereonet_v3_candidate.safetensors'
    rows = list(csv.DictReader((out / 'log.csv').open()))
    assert int(rows[-1]['step']) == training['steps']

    checkpoints = summary['evaluation']['checkpoints']
    assert set(checkpoints) == {'trained', 'start'}
    for entry in checkpoints.values():  # promote's first check, per checkpoint
        guide = entry['guide']
        assert guide['needed'] == 0.2 and guide['epe'] == guide['levels_epe'][-1] > 0
        assert abs(guide['rise'] - (guide['without_guide_epe'] - guide['epe'])) < 2e-4
    for entry in checkpoints.values():
        for spec in ('motorcycle', 'synthetic'):
            ours = entry['results']['sets'][spec]['methods']['stereonet']
            assert all(ours[view] is not None for view in ('dense', 'answered', 'matched'))
    report = (out / 'summary.md').read_text()
    assert 'Guide ablation on Motorcycle' in report
    assert report.startswith('# REHEARSAL on the CPU') and '## (d) Training burst: ok' in report
    assert report in completed.stdout  # printed last, for the device call's output tail


def test_the_cuda_step_runs_the_cuda_marked_tests_under_pytest_where_it_is_installed(tmp_path: Path) -> None:
    from stereonet_ros.visit.steps import Context, cuda_tests

    context = Context(name='cuda_tests', work=tmp_path, device='cpu', rehearse=True, limit_s=120,
                      plan={'check_crop': [64, 128]})
    result = cuda_tests(context)
    pytest_result = result['pytest']
    assert pytest_result['status'] == 'ok' and pytest_result['exit_code'] == 0, pytest_result
    assert pytest_result['skipped'] >= 6 and pytest_result['passed'] == 0 == pytest_result['failed']


def test_training_takes_what_the_other_steps_leave_and_every_limit_fits_the_budget() -> None:
    budget = 540.0
    limits = {name: visit_run.step_limit(name, budget, budget, None) for name in STEPS}
    assert limits['cuda_tests'] == pytest.approx(0.15 * budget) and limits['forward'] == pytest.approx(0.2 * budget)
    assert limits['training'] == pytest.approx(budget * (1 - 0.2 - 0.02))  # all of it when nothing ran before
    # After the first three steps used their whole shares, the limits add up to the budget less the summary's.
    used = sum(visit_run.SHARES[name] * budget for name in ('cuda_tests', 'forward', 'node_processing'))
    left = budget - used
    training = visit_run.step_limit('training', budget, left, None)
    evaluation = visit_run.step_limit('evaluation', budget, left - training, None)
    assert used + training + evaluation == pytest.approx(budget * (1 - visit_run.SUMMARY_SHARE))
    assert visit_run.step_limit('training', budget, left, 20.0) == 20.0  # the rehearsal's cap
    assert visit_run.step_limit('forward', budget, 20.0, None) < 0  # overrun: the visit skips it


def test_a_step_past_its_limit_is_killed_and_reported_as_a_timeout(tmp_path: Path) -> None:
    plan = visit_run.plan(rehearse=True)
    plan['node_size'], plan['node_repeats'] = [960, 540], 1000  # far more than 6 s of work
    # The limit leaves the step's imports well inside its deadline (85 % of it), so that it is in the middle of
    # its pairs when the kill comes; with a limit of 1 s a loaded machine could spend the deadline importing,
    # skip every variant and end 'ok' just before the kill.
    result = visit_run._run_step('node_processing', limit_s=30.0, kill_after_s=6.0, device='cpu', rehearse=True,
                                 step_plan=plan, work=tmp_path, log_path=tmp_path / 'log')
    assert result['status'] == 'timeout', result
    assert result['reason'].startswith('killed after 6 s (limit 30 s)')
    assert result['seconds'] < 15


def test_bad_arguments_and_a_missing_gpu_give_one_line_and_no_traceback(tmp_path: Path) -> None:
    occupied = tmp_path / 'occupied'
    occupied.mkdir()
    (occupied / 'notes.txt').write_text('mine')
    completed = gpu_run(['--rehearse', '--out', str(occupied)], tmp_path)
    assert completed.returncode == 2
    assert completed.stderr == f'gpu_run: --out {occupied}: holds notes.txt; give an empty or new folder\n'
    completed = gpu_run(['--out', str(tmp_path / 'new'), '--budget-s', '5'], tmp_path)
    assert (completed.returncode, completed.stderr) == (2, 'gpu_run: --budget-s 5: must be at least 30\n')
    import torch

    if not torch.cuda.is_available():
        completed = gpu_run(['--out', str(tmp_path / 'new')], tmp_path)
        assert completed.returncode == 1
        assert completed.stderr == ('gpu_run: no CUDA device here (torch.cuda.is_available() is False); on a CPU, '
                                    'run --rehearse\n')


def test_the_burst_takes_the_largest_batch_the_generator_keeps_fed() -> None:
    from stereonet_ros.visit.burst import choose_batch

    rates = [{'batch_size': 4, 'samples_per_s': 100.0}, {'batch_size': 8, 'samples_per_s': 180.0},
             {'batch_size': 16, 'samples_per_s': 300.0}]
    assert choose_batch(200.0, rates)[0] == 8
    assert choose_batch(1000.0, rates)[0] == 16  # the device is the limit at every batch: the largest
    batch, why = choose_batch(50.0, rates)
    assert batch == 4 and why.startswith('the device outruns the generator (50.0 samples/s) even at batch 4')


def test_the_burst_trains_in_the_layout_that_feeds_the_most_samples() -> None:
    from stereonet_ros.visit.burst import choose_layout

    rates = [{'layout': 'contiguous', 'batch_size': 4, 'samples_per_s': 100.0},
             {'layout': 'contiguous', 'batch_size': 8, 'samples_per_s': 150.0},
             {'layout': 'channels_last', 'batch_size': 4, 'samples_per_s': 120.0},
             {'layout': 'channels_last', 'batch_size': 8, 'samples_per_s': 210.0},
             {'layout': 'channels_last', 'batch_size': 16, 'out_of_memory': True}]
    assert choose_layout(500.0, rates)[:2] == ('channels_last', 8)
    # The generator caps both at 150 samples/s: the channels-last batch 8 (210) outruns it, its batch 4 gives
    # 120 < 150 from contiguous batch 8. Exactly at the cap (150 <= 150) contiguous batch 8 counts as fed.
    assert choose_layout(150.0, rates)[:2] == ('contiguous', 8)
    # A tie keeps the first layout (the default's).
    tie = [{'layout': 'contiguous', 'batch_size': 4, 'samples_per_s': 90.0},
           {'layout': 'channels_last', 'batch_size': 4, 'samples_per_s': 90.0}]
    assert choose_layout(50.0, tie)[0] == 'contiguous'
    with pytest.raises(RuntimeError, match='no batch size could be measured'):
        choose_layout(50.0, [{'layout': 'contiguous', 'batch_size': 4, 'out_of_memory': True}])


@pytest.mark.timeout(300)
def test_the_burst_can_run_another_recipe_such_as_the_oracle_refiner_stage(tmp_path: Path) -> None:
    """--train-override reaches the burst: calibration, profile and training all run the refiner stage (no
    backbone gradients: the frozen parts stay as they were)."""
    from stereonet_ros.visit.burst import burst, start_checkpoint

    plan = dict(visit_run.plan(rehearse=True)['train'], workers=0, batch_candidates=[1],
                overrides=['train_parts=refiners', 'coarse_input=oracle', 'reinitialize_refiners=true',
                           'model.k_refinement_layers=1', 'model.refiner_disparity_unit=128'])
    result = burst(tmp_path, 'cpu', plan, time_limit_s=60, record=lambda partial: None)
    assert result['recipe'].startswith('TrainConfig defaults with train_parts=refiners coarse_input=oracle')
    assert result['step_profile']['status'] == 'ok' and result['steps'] >= 1
    trained = load_checkpoint(tmp_path / 'train' / 'model_latest.safetensors')
    assert trained.config.k_refinement_layers == 1 and trained.provenance['train_config']['coarse_input'] == 'oracle'
    start = load_checkpoint(start_checkpoint()).state_dict
    assert all(torch.equal(start[key], value) for key, value in trained.state_dict.items()
               if key.startswith(('feature_extractor.', 'cost_volumizer.')))


def test_an_init_checkpoint_override_is_where_the_burst_and_the_evaluation_start(tmp_path: Path) -> None:
    from stereonet_ros.inference import DEFAULT_CHECKPOINT
    from stereonet_ros.visit.burst import start_checkpoint

    assert start_checkpoint(['lr=1e-4', f'init_checkpoint={DEFAULT_CHECKPOINT}']) == DEFAULT_CHECKPOINT
    assert start_checkpoint(['init_checkpoint=']) == start_checkpoint()  # empty: the usual start
    relative = os.path.relpath(DEFAULT_CHECKPOINT)
    assert visit_run.check_train_overrides(['lr=1e-4', f'init_checkpoint={relative}']) == [
        'lr=1e-4', f'init_checkpoint={DEFAULT_CHECKPOINT.resolve()}']
    with pytest.raises(visit_run.VisitError, match='init_checkpoint=nowhere.safetensors: no such file') as refused:
        visit_run.check_train_overrides(['init_checkpoint=nowhere.safetensors'])
    assert refused.value.status == 2


def test_a_bad_train_override_is_refused_in_one_line_before_anything_runs(tmp_path: Path) -> None:
    completed = gpu_run(['--rehearse', '--out', str(tmp_path / 'visit'), '--train-override', 'coarse_input=psychic'],
                        tmp_path)
    assert completed.returncode == 2 and not (tmp_path / 'visit').exists()
    assert completed.stderr.startswith("gpu_run: --train-override: coarse_input='psychic': must be one of")
    assert completed.stderr.count('\n') == 1 and 'Traceback' not in completed.stderr


@pytest.mark.timeout(300)
def test_only_the_steps_asked_for_run_and_the_others_are_reported_as_not_asked_for(tmp_path: Path) -> None:
    out = tmp_path / 'visit'
    completed = gpu_run(['--rehearse', '--out', str(out), '--only', 'node_processing'], tmp_path)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['node_processing']['status'] == 'ok'
    for name in STEPS:
        if name != 'node_processing':
            assert summary[name] == {'status': 'skipped', 'reason': 'not asked for (--only)'}
    assert {path.name for path in out.iterdir()} == {'summary.json', 'summary.md', 'visit.log'}
    # With the steps after it left out, a step may use the whole budget but the summary's share.
    assert visit_run.step_limit('training', 540.0, 540.0, None, ['training']) == pytest.approx(540.0 * 0.98)
    bad = gpu_run(['--rehearse', '--out', str(tmp_path / 'other'), '--only', 'training,lunch'], tmp_path)
    assert bad.returncode == 2 and bad.stderr == ("gpu_run: --only 'training,lunch': name steps of cuda_tests, "
                                                  'forward, node_processing, training, evaluation\n')


@pytest.mark.timeout(300)
def test_a_burst_that_keeps_a_moving_average_brings_it_back_and_scores_it_first(tmp_path: Path) -> None:
    out = tmp_path / 'visit'
    completed = gpu_run(['--rehearse', '--out', str(out), '--only', 'training,evaluation',
                         '--train-override', 'ema_decay=0.5'], tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert {path.name for path in out.iterdir()} == {'summary.json', 'summary.md', 'model.safetensors',
                                                     'model_ema.safetensors', 'log.csv', 'visit.log'}
    summary = json.loads((out / 'summary.json').read_text())
    average, weights = load_checkpoint(out / 'model_ema.safetensors'), load_checkpoint(out / 'model.safetensors')
    assert 'moving average' in average.provenance['weights'] and 'weights' not in weights.provenance
    assert average.provenance['steps'] == weights.provenance['steps'] == summary['training']['steps']
    assert any(not torch.equal(value, weights.state_dict[key]) for key, value in average.state_dict.items())
    checkpoints = summary['evaluation']['checkpoints']
    assert list(checkpoints) == ['trained_average', 'start', 'trained']
    assert checkpoints['trained_average']['status'] == 'ok'
    assert checkpoints['trained_average']['path'] == "model_ema.safetensors, the burst's moving average"
    assert 'model.safetensors, model_ema.safetensors, log.csv.' in (out / 'summary.md').read_text()


def test_the_visit_scores_the_held_out_pair_only_where_its_files_came_along(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from stereonet_ros import opencv_data

    try:
        found = opencv_data.find()  # this machine's copy, if scripts/setup could fetch it
    except opencv_data.OpenCvDataError:
        found = None
    monkeypatch.setattr(opencv_data, 'SYSTEM_FOLDER', tmp_path / 'not-installed')
    monkeypatch.setenv('STEREONET_ROS_DATA_DIR', str(tmp_path / 'nothing'))
    assert visit_run.plan(rehearse=False)['evaluation']['sets'] == ['motorcycle', 'synthetic']
    if found is None:
        pytest.skip('Aloe not on this machine: the carried case needs its files')
    carried = tmp_path / 'carried'  # what `run(carry=[...])` brings: the three files, nothing else
    (carried / 'opencv-samples').mkdir(parents=True)
    for name, path in found.items():
        (carried / 'opencv-samples' / name).write_bytes(path.read_bytes())
    monkeypatch.setenv('STEREONET_ROS_DATA_DIR', str(carried))
    assert visit_run.plan(rehearse=False)['evaluation']['sets'] == ['motorcycle', 'synthetic', 'aloe']
