"""The ROS-free side of ``--through-node``: conversion, the recorded-answer source, settings, node process."""
from __future__ import annotations

import math
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml

from stereonet_ros.camera import StereoCamera
from stereonet_ros.cli import eval_bag
from stereonet_ros.evaluation.replay import ReplayFrame
from stereonet_ros.evaluation.through_node import (NODE_INPUT_TOPICS, BagPlayback, NodeAnswer, NodeProcess,
                                                   NodeSource, PlaybackResult, PlaySettings, ThroughNodeError,
                                                   node_disparity_to_shift, node_input_topics, node_params,
                                                   unique_domain_id)

OFFSET = 4.0  # cx_left - cx_right


def _camera(width: int = 6, height: int = 2) -> StereoCamera:
    return StereoCamera(width=width, height=height, fx=100.0, fy=100.0, cx=2.5 + OFFSET, cy=0.5, cx_right=2.5,
                        focal=100.0, baseline=0.1, frame_id='left')


def _frame(bag: str, stamp: int, width: int = 6, height: int = 2) -> ReplayFrame:
    image = np.zeros((height, width), dtype=np.uint8)
    return ReplayFrame(bag=Path(bag), index=0, stamp_ns=stamp, spread_ns=0, left=image, right=image,
                       camera=_camera(width, height), ground_truth=None)


def test_node_disparity_becomes_the_image_shift_with_nan_where_the_node_wrote_invalid() -> None:
    # What the node publishes: d = shift - (cx_l - cx_r); invalid = min_disparity - 1.
    shift = np.array([[10.0, 50.0, 4.5], [60.0, 7.0, 100.0]], dtype=np.float32)
    valid = np.array([[True, False, True], [True, False, True]])
    for min_disparity in (0.0, 40.0):
        published = np.where(valid, shift - OFFSET, np.float32(min_disparity - 1.0)).astype(np.float32)
        published[valid & (published < min_disparity)] = min_disparity - 1.0  # the node's own rule
        result = node_disparity_to_shift(published, min_disparity, OFFSET)
        expected_valid = valid & (shift - OFFSET >= min_disparity)
        assert result.dtype == np.float32 and result.shape == shift.shape
        np.testing.assert_array_equal(np.isnan(result), ~expected_valid)
        np.testing.assert_allclose(result[expected_valid], shift[expected_valid])


def test_non_finite_node_values_are_invalid_and_the_offset_can_be_negative() -> None:
    result = node_disparity_to_shift([[np.nan, np.inf, -np.inf, 0.0, 3.0]], 0.0, -2.0)
    assert np.isnan(result[0, :3]).all()
    assert result[0, 3:].tolist() == [-2.0, 1.0]


def _playback() -> PlaybackResult:
    values = np.full((2, 6), 8.0, dtype=np.float32)
    values[0, 0] = -1.0  # invalid, min_disparity 0
    answer = NodeAnswer(stamp_ns=100, disparity=values, min_disparity=0.0, max_disparity=188.0, latency_s=0.25)
    return PlaybackResult(bags=[BagPlayback(bag='a', answers={100: answer}, left_images=2, messages=8)])


def test_the_node_source_answers_recorded_stamps_and_drops_the_rest() -> None:
    source = NodeSource(_playback(), 'the node')
    answer = source(_frame('a', 100))
    assert answer is not None
    assert answer.latency_s == 0.25 and math.isnan(answer.seconds)
    assert np.isnan(answer.shift[0, 0]) and np.all(answer.shift.ravel()[1:] == 8.0 + OFFSET)
    assert source(_frame('a', 200)) is None  # the node never answered this stamp
    assert source(_frame('b', 100)) is None  # same stamp, another bag: not this answer
    assert source(_frame('a', 100, width=7)) is None  # another size: not an answer to this pair
    assert source.description == 'the node' and 'latest-wins' in source.drop_reason


@pytest.mark.parametrize(('kwargs', 'message'), [
    ({'rate': 0.0}, r'--rate 0.0: must be a finite number > 0'),
    ({'rate': math.inf}, r'--rate inf'),
    ({'domain_id': 300}, r'--ros-domain-id 300: must be 0..232'),
    ({'answer_timeout_s': -1.0}, r'answer timeout -1.0'),
    ({'startup_timeout_s': math.nan}, r'startup timeout nan'),
    ({'image_transport': 'theora'}, r"image_transport 'theora': must be one of raw, compressed"),
])
def test_bad_play_settings_are_refused_by_name(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ThroughNodeError, match=message):
        PlaySettings(**kwargs)  # type: ignore[arg-type]


def test_the_params_file_makes_every_input_subscription_reliable_without_yaml_aliases() -> None:
    text = yaml.safe_dump(node_params())
    assert '&' not in text and '*' not in text  # rcl refuses YAML aliases
    overrides = yaml.safe_load(text)['stereonet_node']['ros__parameters']['qos_overrides']
    assert set(overrides) == set(NODE_INPUT_TOPICS)
    assert all(entry['subscription']['reliability'] == 'reliable' for entry in overrides.values())


def test_a_compressed_node_subscribes_its_images_on_the_compressed_topics_beside_the_raw_ones() -> None:
    assert node_input_topics() == NODE_INPUT_TOPICS
    assert node_input_topics('compressed') == ('/left/image_rect/compressed', '/right/image_rect/compressed',
                                               '/left/camera_info', '/right/camera_info')


def test_the_default_domain_differs_from_the_node_tests_domain_and_is_in_range(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    domain = unique_domain_id()
    assert 1 <= domain <= 100 and domain != 1 + os.getpid() % 100


@pytest.mark.parametrize('value, expected', [('0', 0), ('232', 232), (' 42 ', 42)])
def test_a_domain_set_in_the_environment_is_honoured(monkeypatch: pytest.MonkeyPatch, value: str,
                                                     expected: int) -> None:
    monkeypatch.setenv('ROS_DOMAIN_ID', value)
    assert unique_domain_id() == expected


@pytest.mark.parametrize('value', ['233', '-1', 'seven'])
def test_a_domain_in_the_environment_that_ros_refuses_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv('ROS_DOMAIN_ID', value)
    with pytest.raises(ThroughNodeError, match=f"ROS_DOMAIN_ID={value!r}: must be an integer in 0..232"):
        unique_domain_id()


def test_a_node_that_exits_is_reported_in_one_line_with_what_it_logged(tmp_path: Path) -> None:
    program = tmp_path / 'fake_node'
    program.write_text('#!/bin/sh\necho "[INFO] starting"\necho "[FATAL] [stereonet_node]: cannot load the model"\n'
                       'echo "[INFO] bye"\nexit 3\n')
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    node = NodeProcess(tmp_path, 7, None, 'cpu', executable=program)
    assert node.process.wait(timeout=30) == 3
    assert node.failure() == 'the node exited with status 3: [FATAL] [stereonet_node]: cannot load the model'
    assert '-p' in node.arguments and 'use_sim_time:=true' in node.arguments and 'device:=cpu' in node.arguments
    assert node.stop() == 3


def test_a_missing_node_program_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(ThroughNodeError, match='cannot start the node .*missing_node'):
        NodeProcess(tmp_path, 7, None, 'cpu', executable=tmp_path / 'missing_node')


@pytest.mark.parametrize(('arguments', 'message'), [
    (['--rate', '2'], '--rate needs --through-node'),
    (['--use-running-node'], '--use-running-node needs --through-node'),
    (['--through-node', '--max-frames', '2'], '--max-frames is not supported with --through-node'),
    (['--through-node', '--use-running-node', '--device', 'cpu'], 'configure a node this run starts'),
    (['--through-node', '--use-running-node', '--inference-scale', '2'], 'configure a node this run starts'),
])
def test_node_options_are_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  arguments: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        eval_bag.main([str(tmp_path / 'no_bag'), '--out', str(tmp_path / 'out'), *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists()
