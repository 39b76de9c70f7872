"""stereonet-train: schedule, step-indexed data, learning, exact resume, interruption, config errors."""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
import torch.nn.functional as F

from stereonet_ros.config import ConfigError, load
from stereonet_ros.data.synthetic import SyntheticConfig, SyntheticStereoDataset
from stereonet_ros.model.checkpoint import load_checkpoint, save_checkpoint
from stereonet_ros.model.stereonet import (StereoNet, StereoNetConfig, StereoOutput, disparity_candidates, guided_to,
                                           refined_level)
from stereonet_ros.training.loss import cost_distribution_loss, stereo_pyramid_loss
from stereonet_ros.precision import autocast_dtype_for
from stereonet_ros.training.train import (StepBatches, TrainConfig, _export, initial_weights, learning_rate,
                                         normalize, oracle_coarse, oracle_step, train, training_loss,
                                         update_average, uses_channels_last)

TINY = [
    'model.max_disparity=64', 'data.max_disparity=64', 'data.height=64', 'data.width=128',
    'data.disparity_range=[8, 48]', 'data.n_layers=[2, 4]', 'batch_size=2', 'workers=0',
    'validate_every=1000', 'validation_samples=1', 'score_real_pair=false', 'warmup_steps=0', 'lr=1e-3',
    'log_every=1',
]


def test_learning_rate_warms_up_then_decays_by_steps() -> None:
    config = TrainConfig(lr=1e-3, warmup_steps=100, lr_schedule='step', lr_decay_every=1000, lr_decay_gamma=0.5)
    assert learning_rate(config, 0) == pytest.approx(1e-5)
    assert learning_rate(config, 50) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert learning_rate(config, 100) == pytest.approx(1e-3)
    assert learning_rate(config, 1999) == pytest.approx(5e-4)
    assert learning_rate(config, 2000) == pytest.approx(2.5e-4)


def test_cosine_rate_is_the_peak_after_warm_up_half_way_at_the_middle_and_lr_min_at_the_end() -> None:
    config = TrainConfig(lr=1e-3, lr_min=1e-5, warmup_steps=100, steps=1100)
    assert learning_rate(config, 0) == pytest.approx(1e-5)  # warm-up from lr / 100
    assert learning_rate(config, 100) == pytest.approx(1e-3)
    assert learning_rate(config, 600) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(config, 1100) == pytest.approx(1e-5)
    assert learning_rate(config, 5000) == pytest.approx(1e-5)  # past the end: stays at lr_min
    rates = [learning_rate(config, step) for step in range(100, 1101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_the_default_recipe_decays_weights_decoupled_on_a_cosine_with_normalized_refiner_input() -> None:
    config = TrainConfig()
    assert (config.optimizer, config.lr_schedule) == ('adamw', 'cosine')
    assert config.model.refiner_disparity_unit == 32.0


def test_overriding_one_model_key_keeps_the_recipe_s_other_model_defaults() -> None:
    # It used to rebuild the section from StereoNetConfig's own (seed) defaults: the seed's grid and border.
    config = load(TrainConfig, overrides=['model.max_disparity=64', 'data.max_disparity=64',
                                          'data.disparity_range=[8, 48]'])
    assert config.model == dataclasses.replace(TrainConfig().model, max_disparity=64)
    assert (config.data.height, config.data.width) == (192, 384)


def test_lr_min_above_lr_is_refused() -> None:
    with pytest.raises(ConfigError, match=r'lr_min=0\.002: must be in \[0, lr=0\.001\]'):
        load(TrainConfig, overrides=['lr=1e-3', 'lr_min=2e-3'])


def test_starting_from_pixel_unit_weights_reparametrizes_and_revives_a_dead_refiner(tmp_path: Path) -> None:
    seedlike = load(TrainConfig, overrides=[*TINY, 'model.refiner_disparity_unit=1', 'steps=1'])
    torch.manual_seed(0)
    model = StereoNet(seedlike.model)
    state = model.state_dict()
    state['refiners.2.net.segment_0_conv_0.weight'] *= 1e-3  # decayed away, as in the first default
    weights, done = initial_weights(seedlike.model, state, load(TrainConfig, overrides=[*TINY]))
    assert len(done) == 2 and 'refiner disparity unit 1 -> 32' in done[0] and '[2] were dead' in done[1]
    key = 'refiners.0.net.segment_0_conv_0.weight'
    assert torch.allclose(weights[key][:, 1:], state[key][:, 1:] * 32.0)
    assert not weights['refiners.2.net.segment_2_conv_0.weight'].any()
    kept, nothing = initial_weights(seedlike.model, state, load(
        TrainConfig, overrides=[*TINY, 'model.refiner_disparity_unit=1', 'revive_dead_refiners=false']))
    assert nothing == [] and all(torch.equal(kept[k], state[k]) for k in state)
    with pytest.raises(ConfigError, match='has model config'):
        initial_weights(seedlike.model, state, load(TrainConfig, overrides=[*TINY, 'model.max_disparity=32',
                                                                           'data.max_disparity=32',
                                                                           'data.disparity_range=[8, 24]']))


def test_starting_without_the_cue_adds_it_exactly_and_can_reinitialize_every_refiner() -> None:
    plain = load(TrainConfig, overrides=[*TINY, 'steps=1'])
    torch.manual_seed(0)
    state = StereoNet(plain.model).state_dict()
    with_cue = load(TrainConfig, overrides=[*TINY, 'model.refiner_photometric_cue=true'])
    weights, done = initial_weights(plain.model, state, with_cue)
    assert done == ['refiners given the photometric cue with zero weights (same function)']
    key = 'refiners.1.net.segment_0_conv_0.weight'
    assert weights[key].shape[1] == 3 and not weights[key][:, 1].any()
    assert torch.equal(weights[key][:, [0, 2]], state[key])
    fresh, done = initial_weights(plain.model, state, load(
        TrainConfig, overrides=[*TINY, 'model.refiner_photometric_cue=true', 'reinitialize_refiners=true']))
    assert 'refiners [0, 1, 2] re-initialized' in done[-1]
    for index in range(3):
        assert not fresh[f'refiners.{index}.net.segment_2_conv_0.weight'].any()
        assert fresh[f'refiners.{index}.net.segment_0_conv_0.weight'][:, 1].abs().max() > 0.01  # the cue is live
    kept = [key for key in state if not key.startswith('refiners.')]
    assert kept and all(torch.equal(fresh[key], state[key]) for key in kept)  # extractor and cost filter stay


def test_reinitializing_refiners_may_change_their_count_keeping_the_rest_and_the_soft_argmin() -> None:
    cascade = load(TrainConfig, overrides=[*TINY, 'steps=1'])
    torch.manual_seed(0)
    model = StereoNet(cascade.model).eval()
    state = model.state_dict()
    single = load(TrainConfig, overrides=[*TINY, 'model.k_refinement_layers=1', 'reinitialize_refiners=true'])
    weights, done = initial_weights(cascade.model, state, single)
    assert done[0].startswith('3 refiners replaced by 1 fresh ones') and 'refiners [0] re-initialized' in done[-1]
    assert not any(key.startswith(('refiners.1.', 'refiners.2.')) for key in weights)
    assert all(torch.equal(weights[key], state[key]) for key in state if not key.startswith('refiners.'))
    # A zero last layer: the single refiner only resizes the soft argmin, the same as the old pyramid's level 0.
    rebuilt = StereoNet(single.model).eval()
    rebuilt.load_state_dict(weights)
    left, right = torch.rand(1, 1, 64, 128) * 2 - 1, torch.rand(1, 1, 64, 128) * 2 - 1
    with torch.no_grad():
        coarse = model(left, right, with_pyramid=True).pyramid[0]
        output = rebuilt(left, right)
    expected = F.relu(F.interpolate(coarse, size=(64, 128), mode='bilinear', align_corners=True))
    assert torch.allclose(output, expected, atol=1e-5)
    with pytest.raises(ConfigError, match='has model config'):  # without reinitialize_refiners: refused
        initial_weights(cascade.model, state, load(TrainConfig, overrides=[*TINY, 'model.k_refinement_layers=1']))


def test_a_log_begun_by_an_older_version_keeps_its_columns_on_resume(tmp_path: Path) -> None:
    config = load(TrainConfig, overrides=[*TINY, 'steps=2', 'checkpoint_every=1'])
    assert train(config, tmp_path, stop_after=1, progress=False) == 1
    log = tmp_path / 'log.csv'
    old_header = 'step,wall_s,samples_per_s,loss,lr,val_epe,val_bad3,real_epe,real_bad2,real_bad3'
    rows = log.read_text().splitlines()[1:]
    log.write_text('\n'.join([old_header, *(','.join(r.split(',')[:10]) for r in rows)]) + '\n')
    assert train(config, tmp_path, progress=False) == 2
    lines = log.read_text().splitlines()
    assert lines[0] == old_header and all(len(line.split(',')) == 10 for line in lines)


def test_batches_are_a_function_of_the_step_only() -> None:
    straight = list(StepBatches(0, 6, batch_size=3))
    resumed = list(StepBatches(4, 6, batch_size=3))
    assert straight[4:] == resumed
    assert straight[1] == [3, 4, 5]
    # Two processes split each step's work without overlap.
    rank0, rank1 = list(StepBatches(0, 2, 2, rank=0, world=2)), list(StepBatches(0, 2, 2, rank=1, world=2))
    assert rank0 == [[0, 1], [4, 5]] and rank1 == [[2, 3], [6, 7]]


def test_a_few_steps_on_a_fixed_batch_lower_the_loss() -> None:
    torch.manual_seed(0)
    config = StereoNetConfig(max_disparity=64, disparity_grid='exact', cost_volume_border='replicate')
    model = StereoNet(config).train()
    data = SyntheticStereoDataset(SyntheticConfig(height=64, width=128, max_disparity=64, disparity_range=(8, 48),
                                                  n_layers=(2, 4)), length=2, seed=0)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def loss_now() -> torch.Tensor:
        output = model(normalize(batch['left']), normalize(batch['right']), with_right=True)
        return stereo_pyramid_loss(output.pyramid, output.right_pyramid, batch['disp_left'], batch['disp_right'],
                                   None, None, 64.0)
    losses = []
    for _ in range(15):
        loss = loss_now()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_the_cost_term_adds_its_weight_times_both_views_mean_and_not_on_an_oracle_step() -> None:
    torch.manual_seed(0)
    plain = load(TrainConfig, overrides=[*TINY])
    weighted = load(TrainConfig, overrides=[*TINY, 'loss_cost_weight=0.5'])
    model = StereoNet(plain.model).train()
    data = SyntheticStereoDataset(plain.data, length=2, seed=0)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    output = model(normalize(batch['left']), normalize(batch['right']), with_right=True)
    gt_left, gt_right = batch['disp_left'], batch['disp_right']
    assert output.cost is not None and output.right_cost is not None
    terms = [cost_distribution_loss(cost, gt, None, disparity_candidates(plain.model), 64.0)
             for cost, gt in ((output.cost, gt_left), (output.right_cost, gt_right))]
    assert all(term.item() > 0 for term in terms) and terms[0].item() != terms[1].item()
    base = training_loss(plain, output, gt_left, gt_right, None, None, oracle=False)
    total = training_loss(weighted, output, gt_left, gt_right, None, None, oracle=False)
    assert total.item() == pytest.approx(base.item() + 0.5 * (terms[0].item() + terms[1].item()) / 2, rel=1e-6)
    assert training_loss(weighted, output, gt_left, gt_right, None, None, oracle=True).item() == pytest.approx(
        training_loss(plain, output, gt_left, gt_right, None, None, oracle=True).item(), rel=1e-6)


def test_the_guided_answer_term_scores_what_a_network_without_refiners_answers() -> None:
    """A near surface left of column 27 and a far one from it, the image dark and bright on either side, and
    a coarse level whose cell over the edge holds a blend: resized bilinearly it misses the edge by 30 px over
    a cell, carried up by guided_to it is the truth (test_model). With ``loss_guided_answer`` that answer is one
    more level, weighted as the coarse one, so the loss is about half; the right view the same way, guided by
    the right image."""
    plain = load(TrainConfig, overrides=[*TINY, 'model.k_refinement_layers=0'])
    guided = load(TrainConfig, overrides=[*TINY, 'model.k_refinement_layers=0', 'loss_guided_answer=true'])
    columns = torch.arange(64)
    truth = torch.where(columns < 27, 40.0, 10.0).expand(1, 1, 64, 64).contiguous()
    image = torch.where(columns < 27, -0.8, 0.6).expand(1, 1, 64, 64).contiguous()
    level = torch.tensor([40.0, 40.0, 40.0, 25.0, 10.0, 10.0, 10.0, 10.0]).expand(1, 1, 8, 8).contiguous()
    answer = guided_to(level, image, 8, align_corners=True)
    output = StereoOutput(disparity=answer, pyramid=[level], right_pyramid=[level])
    base = training_loss(plain, output, truth, truth, None, None, oracle=False)
    total = training_loss(guided, output, truth, truth, None, None, oracle=False, right_image=image)
    answer_alone = stereo_pyramid_loss([answer], None, truth, None, None, None, 64.0, c=guided.loss_c)
    assert base.item() > 0.1 and answer_alone.item() < 0.01 * base.item()
    assert total.item() == pytest.approx((base.item() + answer_alone.item()) / 2, rel=1e-5)
    with pytest.raises(ConfigError, match='right image'):
        training_loss(guided, output, truth, truth, None, None, oracle=False)
    with pytest.raises(ConfigError, match='k_refinement_layers=0'):
        load(TrainConfig, overrides=[*TINY, 'model.k_refinement_layers=1', 'loss_guided_answer=true'])


def _state(folder: Path) -> dict[str, object]:
    state: dict[str, object] = torch.load(folder / 'state.pt', weights_only=True)
    return state


def test_resume_after_an_interruption_gives_the_same_steps_as_a_straight_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the same thread count in both runs, for bitwise-equal reductions
    try:
        config = load(TrainConfig, overrides=[*TINY, 'steps=4', 'checkpoint_every=1'])
        assert train(config, tmp_path / 'straight', progress=False) == 4
        assert train(config, tmp_path / 'resumed', stop_after=2, progress=False) == 2
        assert _state(tmp_path / 'resumed')['step'] == 2
        first_session_s = float(_state(tmp_path / 'resumed')['wall_s'])  # type: ignore[arg-type]
        assert train(config, tmp_path / 'resumed', progress=False) == 4
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    straight, resumed = _state(tmp_path / 'straight'), _state(tmp_path / 'resumed')
    for key, tensor in straight['model'].items():  # type: ignore[attr-defined]
        assert torch.equal(tensor, resumed['model'][key]), key  # type: ignore[index]
    rows = {int(row['step']): float(row['loss']) for row in csv.DictReader((tmp_path / 'straight' / 'log.csv').open())
            if row['loss']}
    resumed_rows = {int(row['step']): float(row['loss'])
                    for row in csv.DictReader((tmp_path / 'resumed' / 'log.csv').open()) if row['loss']}
    assert rows[3] == resumed_rows[3] and rows[4] == resumed_rows[4]  # the step after the resume, and the next
    # The log's wall clock keeps counting across the interruption instead of starting again from 0.
    walls = [float(row['wall_s']) for row in csv.DictReader((tmp_path / 'resumed' / 'log.csv').open())]
    assert walls == sorted(walls) and walls[-1] > first_session_s > 0
    exported = load_checkpoint(tmp_path / 'straight' / 'model_latest.safetensors')
    assert exported.provenance['steps'] == 4 and exported.provenance['trained'] is True
    assert exported.config == config.model and exported.contract.pad_multiple == 8
    assert (tmp_path / 'straight' / 'config.yaml').read_text().startswith('model:')


def test_the_moving_average_moves_by_one_minus_decay_and_copies_the_batch_count() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    average = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    before = {key: value.clone() for key, value in average.state_dict().items()}
    model[1].num_batches_tracked.fill_(7)
    model[1].running_mean.fill_(4.0)
    update_average(average, model, 0.75)
    for key, value in average.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * before[key] + 0.25 * model.state_dict()[key], rtol=0, atol=1e-7)
    assert int(average[1].num_batches_tracked) == 7 and float(average[1].running_mean[0]) == 0.25 * 4.0
    update_average(average, model, 0.0)  # decay 0: the weights themselves
    for key, value in average.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_the_moving_average_follows_every_step_never_feeds_back_is_scored_and_resumes_exactly(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the same thread count in every run, for bitwise-equal reductions
    plain = load(TrainConfig, overrides=[*TINY, 'steps=3', 'checkpoint_every=1'])
    averaged = load(TrainConfig, overrides=[*TINY, 'steps=3', 'checkpoint_every=1', 'ema_decay=0.75'])
    try:
        weights = []
        for _ in range(3):  # the weights after each step, without an average
            train(plain, tmp_path / 'plain', stop_after=1, progress=False)
            weights.append(_state(tmp_path / 'plain')['model'])
        assert train(averaged, tmp_path / 'straight', progress=False) == 3
        assert train(averaged, tmp_path / 'resumed', stop_after=2, progress=False) == 2
        assert train(averaged, tmp_path / 'resumed', progress=False) == 3
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(plain.seed)
    expected = StereoNet(plain.model).state_dict()  # the run's initial weights
    for after_step in weights:
        expected = {key: 0.75 * value + 0.25 * after_step[key] if value.is_floating_point() else after_step[key]
                    for key, value in expected.items()}
    straight, resumed = _state(tmp_path / 'straight'), _state(tmp_path / 'resumed')
    for key, value in weights[-1].items():  # type: ignore[attr-defined]
        assert torch.equal(straight['model'][key], value), key  # type: ignore[index]
    for key, value in expected.items():
        torch.testing.assert_close(straight['ema'][key].float(), value.float(), rtol=0, atol=1e-6)  # type: ignore[index]
        assert torch.equal(resumed['ema'][key], straight['ema'][key]), key  # type: ignore[index]
    exported = load_checkpoint(tmp_path / 'straight' / 'model_ema.safetensors')
    assert 'moving average' in exported.provenance['weights'] and '0.75' in exported.provenance['weights']
    for key, value in exported.state_dict.items():
        assert torch.equal(value, straight['ema'][key].contiguous()), key  # type: ignore[index]
    last = list(csv.DictReader((tmp_path / 'straight' / 'log.csv').open()))[-1]
    best = load_checkpoint(tmp_path / 'straight' / 'model_ema_best.safetensors')
    assert float(last['ema_val_epe']) == round(best.provenance['validation']['val_epe'], 4)
    assert math.isfinite(float(last['val_epe'])) and 'weights' not in load_checkpoint(
        tmp_path / 'straight' / 'model_latest.safetensors').provenance


def test_resuming_with_another_config_is_refused(tmp_path: Path) -> None:
    config = load(TrainConfig, overrides=[*TINY, 'steps=1'])
    train(config, tmp_path, progress=False)
    other = load(TrainConfig, overrides=[*TINY, 'steps=1', 'lr=5e-4'])
    with pytest.raises(ConfigError, match=r"another config \(differs in \['lr'\]\)"):
        train(other, tmp_path, progress=False)


def test_a_run_begun_before_a_field_existed_resumes_while_the_field_is_at_its_default(tmp_path: Path) -> None:
    config = load(TrainConfig, overrides=[*TINY, 'steps=2', 'checkpoint_every=1'])
    assert train(config, tmp_path, stop_after=1, progress=False) == 1
    saved = tmp_path / 'config.yaml'
    older = yaml.safe_load(saved.read_text())
    del older['memory_format'], older['data']['extra_photos']  # as written before these fields existed
    saved.write_text(yaml.safe_dump(older, sort_keys=False))
    other = load(TrainConfig, overrides=[*TINY, 'steps=2', 'checkpoint_every=1', 'memory_format=contiguous'])
    with pytest.raises(ConfigError, match=r"another config \(differs in \['memory_format'\]\)"):
        train(other, tmp_path, progress=False)
    assert train(config, tmp_path, progress=False) == 2


@pytest.mark.parametrize('overrides, message', [
    (['lr=-1'], r'lr=-1\.0: must be > 0'),
    (['batch_size=0'], r'batch_size=0: must be >= 1'),
    (['steps=many'], r"steps='many': must be an integer"),
    (['model.max_disp=3'], r"unknown key\(s\) \['model\.max_disp'\]"),
    (['optimizer=sgd'], r"optimizer='sgd': must be one of \['rmsprop', 'adamw'\]"),
    (['memory_format=nhwc'], r"memory_format='nhwc': must be one of \['auto', 'channels_last', 'contiguous'\]"),
    (['model.in_channels=3'], r'model.in_channels=3 but data.channels=1'),
    (['data.height=-5'], r'data: SyntheticConfig.height=-5'),
    (['lr'], r"override 'lr': expected key=value"),
    (['ema_decay=1'], r'ema_decay=1\.0: must be in \[0, 1\)'),
    (['ema_decay=-0.001'], r'ema_decay=-0\.001: must be in \[0, 1\)'),
    (['loss_cost_weight=-0.1'], r'loss_cost_weight=-0\.1: must be >= 0'),
    (['loss_cost_sigma=0'], r'loss_cost_sigma=0\.0: must be > 0'),
])
def test_bad_config_values_are_refused_naming_them(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(TrainConfig, overrides=overrides)


def test_config_file_and_overrides_merge(tmp_path: Path) -> None:
    path = tmp_path / 'run.yaml'
    path.write_text('lr: 0.0005\ndata:\n  height: 96\n  width: 192\n')
    config = load(TrainConfig, path, ['data.width=256'])
    assert config.lr == 5e-4 and config.data.height == 96 and config.data.width == 256
    assert config.data.max_disparity == 192.0  # untouched defaults stay
    with pytest.raises(ConfigError, match='cannot read config file'):
        load(TrainConfig, tmp_path / 'missing.yaml')


def test_cli_ctrl_c_saves_the_state_and_exits_130(tmp_path: Path) -> None:
    program = Path(sys.executable).parent / 'stereonet-train'
    process = subprocess.Popen([str(program), '--no-progress', '--output-dir', str(tmp_path), *TINY, 'steps=500',
                                'checkpoint_every=1000'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / 'log.csv'
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:  # header + two steps done
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert 'state saved' in stderr
    logged = [int(row['step']) for row in csv.DictReader(log.open()) if row['step']]
    assert _state(tmp_path)['step'] >= max(logged) >= 2  # nothing done before Ctrl-C is lost


def test_cli_bad_override_exits_2_with_one_line(tmp_path: Path) -> None:
    program = Path(sys.executable).parent / 'stereonet-train'
    result = subprocess.run([str(program), '--output-dir', str(tmp_path), 'lr=-1'], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == 'stereonet-train: error: lr=-1.0: must be > 0'


def test_torchrun_ddp_on_cpu_trains_with_two_processes(tmp_path: Path) -> None:
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
               str(29500 + os.getpid() % 1000), '-m', 'stereonet_ros.training.train', '--no-progress',
               '--output-dir', str(tmp_path), *TINY, 'steps=2', 'batch_size=1', 'threads=1']
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = _state(tmp_path)
    assert state['step'] == 2
    assert not any(key.startswith('module.') for key in state['model'])  # type: ignore[attr-defined]
    exported = load_checkpoint(tmp_path / 'model_latest.safetensors')
    assert exported.provenance['samples_seen'] == 2 * 1 * 2  # steps x batch x processes


@pytest.mark.parametrize(('precision', 'device', 'native', 'expected'), [
    ('bf16', 'cuda', False, torch.bfloat16), ('fp16', 'cuda', False, torch.float16), ('fp32', 'cuda', True, None),
    ('bf16', 'cpu', True, torch.bfloat16),  # oneDNN computes bfloat16 natively: worth it
    ('bf16', 'cpu', False, None),  # emulated bfloat16 is slower than float32
    ('fp16', 'cpu', True, None), ('fp32', 'cpu', True, None)])
def test_autocast_precision_per_device(precision: str, device: str, native: bool, expected: torch.dtype | None) -> None:
    assert autocast_dtype_for(precision, device, native) == expected


@pytest.mark.parametrize(('memory_format', 'device', 'expected'), [
    ('auto', 'cpu', True), ('auto', 'cuda', False),  # oneDNN's fast layout; NCHW on a GPU until a burst measures
    ('channels_last', 'cpu', True), ('channels_last', 'cuda', True),
    ('contiguous', 'cpu', False), ('contiguous', 'cuda', False)])
def test_memory_format_per_device(memory_format: str, device: str, expected: bool) -> None:
    config = load(TrainConfig, overrides=[f'memory_format={memory_format}'])
    assert uses_channels_last(config, torch.device(device)) is expected


def test_a_contiguous_run_on_the_cpu_trains_and_records_its_layout(tmp_path: Path) -> None:
    config = load(TrainConfig, overrides=[*TINY, 'steps=2', 'memory_format=contiguous'])
    assert train(config, tmp_path, progress=False) == 2
    checkpoint = load_checkpoint(tmp_path / 'model_latest.safetensors')
    assert checkpoint.provenance['steps'] == 2
    assert checkpoint.provenance['train_config']['memory_format'] == 'contiguous'


def test_bf16_autocast_keeps_the_disparity_in_float32() -> None:
    """Under autocast the soft argmin and every pyramid level stay float32 (bf16 would round 100 px to 0.5 px)."""
    torch.manual_seed(0)
    model = StereoNet(StereoNetConfig(max_disparity=64)).train()
    left, right = torch.randn(1, 1, 64, 96), torch.randn(1, 1, 64, 96)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        output = model(left, right, with_right=True)
    assert all(level.dtype == torch.float32 for level in output.pyramid + output.right_pyramid)


def test_a_run_started_from_another_records_the_whole_lineage_and_keeps_it_on_resume(tmp_path: Path) -> None:
    first = load(TrainConfig, overrides=[*TINY, 'steps=2', 'checkpoint_every=1'])
    assert train(first, tmp_path / 'first', progress=False) == 2
    start = tmp_path / 'first' / 'model_latest.safetensors'
    second = load(TrainConfig, overrides=[*TINY, 'steps=3', 'checkpoint_every=1', 'lr=1e-4',
                                          f'init_checkpoint={start}'])
    assert train(second, tmp_path / 'second', stop_after=1, progress=False) == 1
    assert train(second, tmp_path / 'second', progress=False) == 3  # resumed: the lineage comes from state.pt
    provenance = load_checkpoint(tmp_path / 'second' / 'model_latest.safetensors').provenance
    assert (provenance['steps'], provenance['steps_total']) == (3, 5)
    assert provenance['samples_seen_total'] == 5 * first.batch_size
    lineage = provenance['initialized_from']
    assert lineage['checkpoint'] == str(start) and lineage['steps_total'] == 2
    assert lineage['train_config']['lr'] == first.lr and lineage['initialized_from'] is None
    # Its first step started from the first run's weights, not from a fresh initialization.
    fresh = load(TrainConfig, overrides=[*TINY, 'steps=1', 'lr=1e-4'])
    assert train(fresh, tmp_path / 'fresh', progress=False) == 1
    started = load_checkpoint(tmp_path / 'second' / 'model_latest.safetensors').state_dict
    unrelated = load_checkpoint(tmp_path / 'fresh' / 'model_latest.safetensors').state_dict
    weights = load_checkpoint(start).state_dict
    key = 'feature_extractor.net.segment_0_conv_0.weight'
    assert (started[key] - weights[key]).abs().max() < (unrelated[key] - weights[key]).abs().max()


def test_validation_uses_the_clean_generator_while_training_draws_rig_augmentations(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import stereonet_ros.training.train as training

    seen: list[SyntheticConfig] = []

    class Recording(SyntheticStereoDataset):
        def __init__(self, config: SyntheticConfig, *args: object, **kwargs: object) -> None:
            seen.append(config)
            super().__init__(config, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, 'SyntheticStereoDataset', Recording)
    config = load(TrainConfig, overrides=[*TINY, 'steps=1'])
    assert config.data.eraser_probability > 0  # training itself is augmented
    training.validate(StereoNet(config.model).eval(), config, torch.device('cpu'))
    assert seen == [config.data.without_rig_augmentation()]


def test_validation_logs_the_synthetic_guide_rise_on_the_networks_own_coarse_output(tmp_path: Path) -> None:
    import stereonet_ros.training.train as training

    config = load(TrainConfig, overrides=[*TINY, 'steps=1', 'validate_every=1', 'validation_samples=2'])
    torch.manual_seed(0)
    model = StereoNet(config.model).eval()
    seeing = training.validate(model, config, torch.device('cpu'))
    assert math.isfinite(seeing['val_guide_rise']) and seeing['val_guide_rise'] != 0.0  # random refiners see the image
    for refiner in model.refiners:  # a zero last layer: each refiner only resizes, the image cannot matter
        torch.nn.init.zeros_(refiner.net[-1].weight)
        torch.nn.init.zeros_(refiner.net[-1].bias)
    blind = training.validate(model, config, torch.device('cpu'))
    assert blind['val_guide_rise'] == 0.0 and blind['val_epe'] > 0
    assert train(config, tmp_path, progress=False) == 1
    rows = list(csv.DictReader((tmp_path / 'log.csv').open()))
    assert list(rows[0])[-1] == 'val_guide_rise' and math.isfinite(float(rows[-1]['val_guide_rise']))


def test_a_resume_from_an_older_state_drops_the_log_rows_after_it(tmp_path: Path) -> None:
    # A SIGKILL between a log row and the next state save leaves rows past the saved step: resuming
    # must not log those steps twice (issue 11: 34 rows for 30 steps).
    config = load(TrainConfig, overrides=[*TINY, 'steps=4', 'checkpoint_every=100'])
    assert train(config, tmp_path, stop_after=2, progress=False) == 2
    saved = (tmp_path / 'state.pt').read_bytes()
    assert train(config, tmp_path, stop_after=1, progress=False) == 3
    (tmp_path / 'state.pt').write_bytes(saved)  # as if killed before step 3's state reached the disk
    assert train(config, tmp_path, progress=False) == 4
    steps = [int(row['step']) for row in csv.DictReader((tmp_path / 'log.csv').open())]
    assert steps == [1, 2, 3, 4]


def test_a_time_limit_returns_cleanly_with_the_state_and_the_log_of_the_step_reached(tmp_path: Path) -> None:
    config = load(TrainConfig, overrides=[*TINY, 'steps=10000', 'log_every=1000', 'checkpoint_every=1000'])
    start = time.monotonic()
    reached = train(config, tmp_path / 'run', progress=False, time_limit_s=1.0)
    assert 1 <= reached < 10000 and time.monotonic() - start < 60
    assert _state(tmp_path / 'run')['step'] == reached
    assert load_checkpoint(tmp_path / 'run' / 'model_latest.safetensors').provenance['steps'] == reached
    rows = list(csv.DictReader((tmp_path / 'run' / 'log.csv').open()))
    assert int(rows[-1]['step']) == reached and float(rows[-1]['samples_per_s']) > 0  # logged though 1000 is far
    assert train(config, tmp_path / 'run', progress=False, stop_after=1) == reached + 1  # and it resumes there


@pytest.mark.parametrize('parts, frozen_prefixes', [
    ('refiners', ('feature_extractor.', 'cost_volumizer.')),
    ('backbone', ('refiners.',)),
])
def test_training_some_parts_leaves_the_others_and_their_statistics_as_they_were(
        tmp_path: Path, parts: str, frozen_prefixes: tuple[str, ...]) -> None:
    start = load(TrainConfig, overrides=[*TINY, 'steps=1'])
    torch.manual_seed(3)
    initial = StereoNet(start.model)
    for module in initial.modules():  # statistics a train-mode forward would move
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    init_path = tmp_path / 'init.safetensors'
    save_checkpoint(init_path, _export(initial, start, step=0))
    config = load(TrainConfig, overrides=[*TINY, 'steps=2', f'train_parts={parts}', f'init_checkpoint={init_path}'])
    assert train(config, tmp_path / 'run', progress=False) == 2
    before = load_checkpoint(init_path).state_dict
    after = load_checkpoint(tmp_path / 'run' / 'model_latest.safetensors').state_dict
    frozen = [key for key in before if key.startswith(frozen_prefixes)]
    trained = [key for key in before if key not in frozen]
    assert any('running_mean' in key for key in frozen) and any('running_mean' in key for key in trained)
    assert all(torch.equal(before[key], after[key]) for key in frozen)
    assert any(not torch.equal(before[key], after[key]) for key in trained if key.endswith('.weight'))
    assert any(not torch.equal(before[key], after[key]) for key in trained if 'running_mean' in key)
    with pytest.raises(ConfigError, match='train_parts'):
        load(TrainConfig, overrides=[*TINY, 'train_parts=head'])


def test_the_oracle_coarse_input_is_the_truth_averaged_over_the_cost_volume_cells() -> None:
    truth = torch.arange(2 * 16 * 20, dtype=torch.float32).reshape(2, 1, 16, 20)
    coarse = oracle_coarse(truth, 8)
    assert coarse.shape == (2, 1, 2, 2)  # 20 / 8 = 2.5: the last, partial cell is left out, as the cost volume does
    assert coarse[1, 0, 1, 0] == truth[1, 0, 8:16, 0:8].mean()
    assert torch.equal(coarse, torch.nn.functional.avg_pool2d(truth, 8))  # all known: exactly the plain mean
    block = truth[0, 0, :8, :8].clone()
    truth[0, 0, 0, 0], truth[0, 0, 0, 1] = float('nan'), float('inf')  # unknown truth is left out of its cell
    assert torch.isclose(oracle_coarse(truth, 8)[0, 0, 0, 0], block.flatten()[2:].mean())
    truth[1, 0, :8, 8:16] = float('inf')  # a cell with no known value at all: the fallback's, else 0
    fallback = torch.full((2, 1, 2, 2), 7.5)
    assert oracle_coarse(truth, 8)[1, 0, 0, 1] == 0.0 and oracle_coarse(truth, 8, fallback)[1, 0, 0, 1] == 7.5
    assert oracle_coarse(truth, 8, fallback)[1, 0, 1, 1] == truth[1, 0, 8:16, 8:16].mean()  # known cells keep theirs


def test_a_given_coarse_input_is_refined_as_the_network_refines_its_own_and_skips_the_backbone() -> None:
    config = load(TrainConfig, overrides=[*TINY, 'model.k_refinement_layers=2']).model
    torch.manual_seed(0)
    model = StereoNet(config).eval()
    left, right = torch.randn(1, 1, 32, 64), torch.randn(1, 1, 32, 64)
    coarse_left, coarse_right = torch.rand(1, 1, 4, 8) * 20, torch.rand(1, 1, 4, 8) * 20
    calls: list[str] = []
    model.feature_extractor.register_forward_hook(lambda *_: calls.append('features'))
    model.cost_volumizer.register_forward_hook(lambda *_: calls.append('cost'))
    with torch.no_grad():
        output = model(left, right, with_right=True, coarse=(coarse_left, coarse_right))
        expected = [coarse_left]
        for refiner, size in zip(model.refiners, model.refinement_sizes(32, 64), strict=True):
            expected.append(refined_level(refiner, left, right, expected[-1], size, 'left', config.align_corners))
        mirrored = refined_level(model.refiners[0], right, left, coarse_right, model.refinement_sizes(32, 64)[0],
                                 'right', config.align_corners)
    assert calls == [] and output.cost is None
    assert len(output.pyramid) == 3 and all(torch.equal(a, b) for a, b in zip(output.pyramid, expected, strict=True))
    assert output.right_pyramid[0] is coarse_right and torch.equal(output.right_pyramid[1], mirrored)


def test_training_on_the_oracle_coarse_input_moves_the_refiners_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="coarse_input='oracle' trains the refiners alone"):
        load(TrainConfig, overrides=[*TINY, 'coarse_input=oracle'])
    config = load(TrainConfig, overrides=[*TINY, 'steps=2', 'train_parts=refiners', 'coarse_input=oracle'])
    torch.manual_seed(config.seed)
    initial = StereoNet(config.model).state_dict()
    assert train(config, tmp_path, progress=False) == 2
    after = load_checkpoint(tmp_path / 'model_latest.safetensors').state_dict
    assert all(torch.equal(initial[key], after[key]) for key in initial if not key.startswith('refiners.'))
    assert any(not torch.equal(initial[key], after[key]) for key in initial if key.startswith('refiners.'))
    rows = list(csv.DictReader((tmp_path / 'log.csv').open()))
    assert len(rows) == 2 and all(math.isfinite(float(row['loss'])) for row in rows)


def test_an_oracle_stage_logs_its_refiners_epe_and_guide_rise_on_the_oracle_input(tmp_path: Path) -> None:
    import stereonet_ros.training.train as training

    config = load(TrainConfig, overrides=[*TINY, 'steps=2', 'validate_every=2', 'validation_samples=2',
                                          'train_parts=refiners', 'coarse_input=oracle'])
    torch.manual_seed(0)
    model = StereoNet(config.model).eval()
    dataset = SyntheticStereoDataset(config.data.without_rig_augmentation(), length=2, seed=config.validation_seed)
    scores = training.oracle_scores(model, config, dataset, torch.device('cpu'))
    # A refiner with a zero last layer adds nothing: the output is the oracle upsampled, with or without guide
    for refiner in model.refiners:
        torch.nn.init.zeros_(refiner.net[-1].weight)
        torch.nn.init.zeros_(refiner.net[-1].bias)
    untouched = training.oracle_scores(model, config, dataset, torch.device('cpu'))
    assert untouched['oracle_guide_rise'] == 0.0 and untouched['oracle_epe'] > 0
    assert math.isfinite(scores['oracle_epe']) and scores['oracle_guide_rise'] != 0.0  # a random refiner sees the image
    assert train(config, tmp_path, progress=False) == 2
    rows = list(csv.DictReader((tmp_path / 'log.csv').open()))
    assert list(rows[0])[-3:-1] == ['oracle_epe', 'oracle_guide_rise'] and rows[-1]['oracle_epe'] != ''


def test_a_mixed_coarse_input_draws_the_oracle_on_a_share_of_steps_the_same_way_on_every_run() -> None:
    config = load(TrainConfig, overrides=[*TINY, 'train_parts=refiners', 'coarse_input=mixed', 'oracle_fraction=0.25'])
    draws = [oracle_step(config, step) for step in range(2000)]
    assert draws == [oracle_step(config, step) for step in range(2000)]  # a resume draws the same
    assert 0.22 < sum(draws) / len(draws) < 0.28
    for fraction, expected in (('0', False), ('1', True)):  # the bounds are exact: never, always
        bound = load(TrainConfig, overrides=[*TINY, 'train_parts=refiners', 'coarse_input=mixed',
                                             f'oracle_fraction={fraction}'])
        assert {oracle_step(bound, step) for step in range(200)} == {expected}
    plain = load(TrainConfig, overrides=[*TINY])
    assert not any(oracle_step(plain, step) for step in range(50))
    with pytest.raises(ConfigError, match="coarse_input='mixed' trains the refiners alone"):
        load(TrainConfig, overrides=[*TINY, 'coarse_input=mixed'])
    with pytest.raises(ConfigError, match=r'oracle_fraction=1\.5: must be in \[0, 1\]'):
        load(TrainConfig, overrides=[*TINY, 'train_parts=refiners', 'coarse_input=mixed', 'oracle_fraction=1.5'])


def test_a_mixed_stage_trains_the_refiners_alone_and_logs_the_oracle_scores(tmp_path: Path) -> None:
    config = load(TrainConfig, overrides=[*TINY, 'steps=4', 'validate_every=4', 'validation_samples=1',
                                          'train_parts=refiners', 'coarse_input=mixed'])
    draws = {oracle_step(config, step) for step in range(4)}
    assert draws == {True, False}  # this seed's four steps take both inputs
    torch.manual_seed(config.seed)
    initial = StereoNet(config.model).state_dict()
    assert train(config, tmp_path, progress=False) == 4
    after = load_checkpoint(tmp_path / 'model_latest.safetensors').state_dict
    assert all(torch.equal(initial[key], after[key]) for key in initial if not key.startswith('refiners.'))
    rows = list(csv.DictReader((tmp_path / 'log.csv').open()))
    assert rows[-1]['oracle_guide_rise'] != '' and all(math.isfinite(float(row['loss'])) for row in rows)
